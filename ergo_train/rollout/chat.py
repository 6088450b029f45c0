"""Chat backends: the one thing that differs between in-process inference and a served model.

A backend takes chat messages in the processor's layout (``{"role", "content": [{"type": "image", "image": PIL},
{"type": "text", "text": ...}]}``), optional tools (Python callables, as ``apply_chat_template`` takes them) and a
chat template (``None``: the model's own), and returns one assistant ``ChatTurn``. Prompts, coordinates and crops
are built by the caller (``ergo_train.rollout.env.two_turn_rollout``, the evaluation modes), so swapping
``TransformersChat`` for the HTTP client ``ergo_train.models.served.ServedChat`` changes nothing else.

- ``TransformersChat(model, processor)``: ``processor.apply_chat_template`` + ``model.generate``; the reply is parsed
  with TRL's ``parse_response`` (the training path), the turn text is the decoded ids.
- ``TOOL_CHAT_TEMPLATE``: TRL's qwen3_vl template (Hermes ``<tool_call>`` JSON calls, images inside tool responses,
  Qwen2.5-VL's vision tokens); Qwen2.5-VL's own template has no tool calls.

>>> turn = ChatTurn({"role": "assistant", "content": "B"}, "B", 1, 54)
>>> turn.tool_calls, turn.text
([], 'B')
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass
class ChatTurn:
    """One assistant reply: ``message`` as the rewards read it (``content`` + ``tool_calls`` with dict arguments),
    ``text`` the turn's text as written, ``generated_tokens``, and ``vision_tokens`` in the prompt (None: unknown)."""

    message: dict[str, Any]
    text: str
    generated_tokens: int
    vision_tokens: int | None = None

    @property
    def tool_calls(self) -> list[Any]:
        return list(self.message.get("tool_calls") or [])


class ChatBackend(Protocol):
    """What the rollout and the evaluation modes need from a model: one assistant turn per call."""

    name: str

    def complete(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Callable] | None = None, *,
                 chat_template: str | None = None, seed: int | None = None) -> ChatTurn: ...


def tool_chat_template() -> str:
    """TRL's qwen3_vl chat template (the tool-calling template training uses)."""
    from trl.chat_template_utils import qwen3_vl_chat_template

    return qwen3_vl_chat_template


@contextlib.contextmanager
def using_chat_template(processor, template: str | None) -> Iterator[None]:
    """``processor`` (and its tokenizer) render with ``template`` for the duration; None keeps the current one."""
    tok = getattr(processor, "tokenizer", None)
    if template is None or (processor.chat_template == template and getattr(tok, "chat_template", None) == template):
        yield
        return
    saved = (processor.chat_template, getattr(tok, "chat_template", None))
    processor.chat_template = template
    if tok is not None:
        tok.chat_template = template
    try:
        yield
    finally:
        processor.chat_template = saved[0]
        if tok is not None:
            tok.chat_template = saved[1]


def suppressed_vision_ids(tokenizer) -> list[int]:
    """Ids of the vision placeholder tokens, which a random model would sample and crash Qwen's rope index with."""
    vocab = tokenizer.get_vocab()
    return [vocab[t] for t in ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                               "<|video_pad|>") if t in vocab]


class TransformersChat:
    """In-process backend: ``apply_chat_template`` + ``model.generate`` (greedy unless ``generate_kwargs`` say else).

    One call at a time (a lock): the processor's template is swapped per call and a model on one device gains
    nothing from threads. ``seed`` seeds torch's generator for that call (sampling only).
    """

    name = "transformers"

    def __init__(self, model, processor, *, max_new_tokens: int = 256,
                 generate_kwargs: Mapping[str, Any] | None = None) -> None:
        self.model, self.processor = model, processor
        self.max_new_tokens = int(max_new_tokens)
        self.generate_kwargs: dict[str, Any] = {"do_sample": False,
                                                "suppress_tokens": suppressed_vision_ids(processor.tokenizer)}
        self.generate_kwargs.update(generate_kwargs or {})
        self._lock = threading.Lock()

    def complete(self, messages: Sequence[Mapping[str, Any]], tools: Sequence[Callable] | None = None, *,
                 chat_template: str | None = None, seed: int | None = None, max_new_tokens: int | None = None,
                 generate_kwargs: Mapping[str, Any] | None = None) -> ChatTurn:
        """One reply; ``max_new_tokens`` / ``generate_kwargs`` override the backend's for this call."""
        import torch
        from trl.chat_template_utils import add_response_schema, parse_response

        with self._lock, using_chat_template(self.processor, chat_template), torch.no_grad():
            tok = self.processor.tokenizer
            inputs = self.processor.apply_chat_template(list(messages), tools=list(tools) if tools else None,
                                                        add_generation_prompt=True, tokenize=True, return_dict=True,
                                                        return_tensors="pt").to(self.model.device)
            image_token_id = getattr(self.model.config, "image_token_id", None)
            seen = int((inputs["input_ids"] == image_token_id).sum()) if image_token_id is not None else None
            with torch.random.fork_rng(devices=[]) if seed is not None else contextlib.nullcontext():
                if seed is not None:
                    torch.manual_seed(seed)
                out = self.model.generate(**inputs, max_new_tokens=max_new_tokens or self.max_new_tokens,
                                          **{**self.generate_kwargs, **dict(generate_kwargs or {})})
            prompt_ids = inputs["input_ids"][0].tolist()
            ids = trim_at_eos(out[0, len(prompt_ids):].tolist(), set(eos_ids(self.model, tok)))
            if tools:
                if getattr(tok, "response_template", None) is None and getattr(tok, "response_schema", None) is None:
                    add_response_schema(self.processor)
                message = parse_response(tok, ids, prefix=prompt_ids, tools=list(tools) if tools else None)
            else:
                message = {"role": "assistant", "content": tok.decode(ids, skip_special_tokens=True)}
            text = tok.decode(ids, skip_special_tokens=True)
        return ChatTurn(message, text, len(ids), seen)


def trim_at_eos(ids: list[int], eos: set[int]) -> list[int]:
    """``ids`` up to and including the first end-of-sequence id."""
    for i, t in enumerate(ids):
        if t in eos:
            return ids[: i + 1]
    return ids


def eos_ids(model, tokenizer) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    ids = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    return ids or [tokenizer.eos_token_id]
