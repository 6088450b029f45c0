"""One ERGO episode as tokens, exactly as TRL's GRPO rollout builds it: the builder SFT trains on.

TRL's two-turn rollout (``GRPOTrainer`` with ``environment_factory``) concatenates, without re-tokenizing:
the prompt (``apply_chat_template`` of the turn-1 messages with the coarse view and the tool schema, plus the
generation prompt), the ids turn 1 generated (up to and including ``<|im_end|>``), the *tool suffix* (the
tool message rendered after a dummy assistant turn, trimmed at its end-of-turn token: the crop's vision
tokens, the turn-2 text, the next generation prompt) and the ids turn 2 generated. ``EpisodeRenderer``
rebuilds that sequence for a chosen zoom and answer with the same processor, template, tool schema,
``ZoomEnv`` crop and TRL helpers, so a cold-start SFT example is token for token what the rollout would
produce had the policy written it (tests/ergo_train/train/test_sft.py compares them on a real GRPO step).

>>> from PIL import Image
>>> from ergo_train.models.loaders import load_model
>>> from ergo_train.rollout.env import use_tool_chat_template
>>> _, processor = load_model("tiny", max_pixels=64 * 28 * 28)  # integration
>>> renderer = EpisodeRenderer(use_tool_chat_template(processor), 64 * 28 * 28)
>>> row = {"image": Image.new("RGB", (1200, 900)), "question": "What colour is the car?",
...        "options": ["red", "blue"], "answer": "blue", "answer_letter": "B"}
>>> ep = renderer.render(row, zoom=(0, 0, 126, 84), answer="<answer>B</answer>")
>>> [im.size for im in ep.images], ep.tool_blocks[1]["text"].splitlines()[-1]
([(252, 168), (252, 168)], "Answer with the option's letter from the given choices directly.")
>>> processor.tokenizer.decode(ep.turn1_ids)[-24:]
'}\\n</tool_call><|im_end|>'
>>> len(ep.input_ids) == len(ep.loss_mask) == ep.prompt_len + len(ep.completion_ids)
True
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ergo_train.rollout.env import ZoomEnv, build_turn1_prompt, row_source
from ergo_train.rollout.parsing import ZOOM_ARGS, ZOOM_TOOL
from ergo_train.rollout.views import shared_coarse_view

DEFAULT_REASONING = "The answer needs a closer look at one region; I zoom into it."


@dataclass
class Episode:
    """One rendered episode. ``loss_mask`` is 1 on the tokens the policy writes (both assistant turns, each up
    to and including its end-of-turn token) and 0 on the prompt and the tool's answer."""

    input_ids: list[int]
    loss_mask: list[int]
    prompt_len: int
    turn1_ids: list[int]
    suffix_ids: list[int]
    turn2_ids: list[int]
    images: list[Image.Image]  # the coarse view, then the crop: the order of their vision blocks
    tool_blocks: list[dict[str, Any]]  # what ZoomEnv.zoom returned (crop image + turn-2 text)
    turn1_text: str

    @property
    def completion_ids(self) -> list[int]:
        """What TRL calls the completion: turn 1, the tool suffix and turn 2."""
        return self.turn1_ids + self.suffix_ids + self.turn2_ids


class EpisodeRenderer:
    """Renders episodes with ``processor`` (which must carry the tool template, ``use_tool_chat_template``)."""

    def __init__(self, processor: Any, max_pixels: int) -> None:
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.max_pixels = int(max_pixels)
        self.tools = [ZoomEnv(self.max_pixels).zoom]  # the schema TRL shows the policy
        self.eos_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")

    # ---- the three parts TRL concatenates ------------------------------------------------------------
    def prompt(self, row: Mapping[str, Any], view: Image.Image) -> tuple[list[dict[str, Any]], list[int]]:
        """TRL's turn-1 messages (the ``prompt`` column with the coarse view put in) and their ids."""
        from trl.data_utils import prepare_multimodal_messages

        messages = prepare_multimodal_messages(build_turn1_prompt(row, self.max_pixels), images=[view])
        ids = self.processor.apply_chat_template(conversation=[messages], tools=self.tools, add_generation_prompt=True,
                                                 tokenize=True, return_dict=True)["input_ids"][0]
        return messages, list(ids)

    def turn1_text(self, zoom: Sequence[float], reasoning: str = DEFAULT_REASONING) -> str:
        """What the policy writes in turn 1 for ``zoom``: the reasoning and the call as the template spells it."""
        call = {"type": "function", "function": {"name": ZOOM_TOOL, "arguments": dict(zip(ZOOM_ARGS, zoom))}}
        user = [{"role": "user", "content": [{"type": "text", "text": "q"}]}]
        turn = {"role": "assistant", "content": reasoning, "tool_calls": [call]}
        before = self.processor.apply_chat_template(user, tools=self.tools, add_generation_prompt=True, tokenize=False)
        after = self.processor.apply_chat_template(user + [turn], tools=self.tools, tokenize=False)
        if not after.startswith(before) or "<|im_end|>" not in after[len(before):]:
            raise ValueError("the chat template does not render an assistant tool call after its generation prompt")
        text = after[len(before):]
        return text[: text.index("<|im_end|>") + len("<|im_end|>")]

    def tool_suffix_ids(self, tool_message: Mapping[str, Any]) -> list[int]:
        """The tool answer's ids as TRL appends them (``GRPOTrainer._get_tool_suffix_ids``): rendered after a
        dummy assistant call, everything past that call's end-of-turn token."""
        from trl.data_utils import prepare_multimodal_messages

        dummy = prepare_multimodal_messages([
            {"role": "user", "content": "dummy"},
            {"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": tool_message["name"], "arguments": {}}}]},
        ])
        tool = prepare_multimodal_messages([dict(tool_message)])
        prefix = self.processor.apply_chat_template(dummy, tokenize=True, return_dict=False)[0]
        full = self.processor.apply_chat_template(dummy + tool, add_generation_prompt=True, tokenize=True,
                                                  return_dict=False)[0]
        ends = [i for i, t in enumerate(prefix) if t == self.tokenizer.eos_token_id]
        prefix = prefix[: ends[-1] + 1] if ends else prefix
        if list(full[: len(prefix)]) != list(prefix):
            raise ValueError("unexpected tokenization: the trimmed prefix is not a prefix of the tool turn")
        return list(full[len(prefix):])

    # ---- a whole episode -----------------------------------------------------------------------------
    def render(self, row: Mapping[str, Any], zoom: Sequence[float], answer: str,
               reasoning: str = DEFAULT_REASONING) -> Episode:
        """The episode in which the policy zooms on ``zoom`` (pixels of the coarse view) and answers ``answer``
        (the whole turn-2 text, e.g. ``<answer>B</answer>``); the crop is the one ``ZoomEnv`` returns."""
        image = row_source(row["image"])
        view, _ = shared_coarse_view(row["image"], self.max_pixels)
        _, prompt_ids = self.prompt(row, view)
        text1 = self.turn1_text(zoom, reasoning)
        env = ZoomEnv(self.max_pixels)
        env.reset(**{**row, "image": image})
        blocks = env.zoom(**dict(zip(ZOOM_ARGS, zoom)))
        if not env.zoom_ok:
            raise ValueError(f"sample {row.get('id')!r}: the zoom {list(zoom)} is not usable: {env.zoom_error}")
        turn1 = self._ids(text1)
        suffix = self.tool_suffix_ids({"role": "tool", "name": ZOOM_TOOL, "content": blocks})
        turn2 = self._ids(answer + "<|im_end|>")
        ids = prompt_ids + turn1 + suffix + turn2
        mask = [0] * len(prompt_ids) + [1] * len(turn1) + [0] * len(suffix) + [1] * len(turn2)
        return Episode(ids, mask, len(prompt_ids), turn1, suffix, turn2, [view, blocks[0]["image"]], blocks, text1)

    def render_single(self, row: Mapping[str, Any], image: Image.Image, answer: str) -> Episode:
        """A one-turn episode as the evaluation's ``direct`` / ``direct_full`` / ``oracle_crop`` modes prompt it: one
        user turn (``image``, then the question with its options) with the processor's template, then ``answer``."""
        from ergo_train.rollout.env import turn2_text

        messages = [{"role": "user", "content": [{"type": "image", "image": image},
                                                 {"type": "text", "text": turn2_text(row["question"], row.get("options"))}]}]
        prompt = list(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                                         return_dict=True)["input_ids"][0])
        turn = self._ids(answer + "<|im_end|>")
        return Episode(prompt + turn, [0] * len(prompt) + [1] * len(turn), len(prompt), [], [], turn, [image], [], "")

    def _ids(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])
