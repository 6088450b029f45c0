"""The coarse-to-fine (ERGO) rollout: turn 1 on the downsampled image, a ``zoom`` tool call, turn 2 on the crop.

Pieces, importable on their own (training, evaluation and difficulty profiling share them):

- ``turn1_text(question, seen_size)`` / ``turn2_text(question, options)``: the two user texts. Turn 1
  has the question WITHOUT options; turn 2 (the zoom tool's answer) has it WITH options and
  ``ANSWER_INSTRUCTION``.
- ``build_turn1_prompt(row, max_pixels)``: the text-only prompt column for TRL (TRL puts the row's
  ``image`` in front of it and its processor resizes it to the budget).
- ``build_turn1_messages(row, max_pixels)``: the same turn with the coarse view inside, for ``generate``.
- ``ZoomEnv``: the TRL ``environment_factory`` class. ``reset(**row)`` takes the sample; its one public
  tool ``zoom(x1, y1, x2, y2)`` maps the box from the coarse view to the original (``Box.from_model``,
  via ``ergo_train.rollout.zoom.zoom_crop``), crops at full resolution, resizes to the same budget and returns
  ``[image, text]`` blocks. It records ``vision_tokens`` per turn, ``zoom_area_frac``, ``zoom_box``.
- ``zoom_env_factory(max_pixels)``: the factory to pass as ``environment_factory``.
- ``use_tool_chat_template(processor)``: TRL's qwen3_vl template (Qwen2.5-VL's own has no tool calls).
- ``two_turn_rollout(chat, row, max_pixels)``: one sample through both turns on a chat backend
  (``ergo_train.rollout.chat``: in-process ``model.generate``, or a served model over HTTP) for inference,
  evaluation and difficulty; returns a ``TwoTurnResult`` whose ``completion`` has the message layout TRL gives
  reward functions. ``run_two_turns(model, processor, row, max_pixels)`` is the same with the in-process backend.
- ``execute_turn1(env, parsed_message)``: turn 1's action run as training runs it (any tool call, or the tag form).

>>> from PIL import Image
>>> env = ZoomEnv(max_pixels=64 * 28 * 28)
>>> env.reset(image=Image.new("RGB", (1200, 900)), question="What colour is the car?",
...           options=["red", "blue"], answer="blue")
>>> env.seen_size, env.vision_tokens
((252, 168), [54])
>>> blocks = env.zoom(0, 0, 126, 84)        # the top-left quarter of the coarse view
>>> blocks[0]["image"].size, [round(v, 6) for v in env.zoom_box.as_tuple()], env.vision_tokens
((252, 168), [0.0, 0.0, 600.0, 450.0], [54, 54])
>>> round(env.zoom_area_frac, 6)
0.25
>>> print(blocks[1]["text"])
What colour is the car?
A. red
B. blue
Answer with the option's letter from the given choices directly.
>>> env.zoom(5, 5, 1, 1)[1]["text"].splitlines()[0]
'zoom error: model box [5.0, 5.0, 1.0, 1.0] is degenerate or inverted; showing the whole image instead.'
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

from PIL import Image

from ergo_data.core.boxes import Box, Size
from ergo_data.core.imageio import ImageSource
from ergo_data.core.vision import resized_size, vision_tokens
from ergo_train.rollout.chat import ChatBackend
from ergo_train.rollout.parsing import (
    RAW_ARGUMENTS,
    ZOOM_ARGS,
    ZOOM_TOOL,
    normalize_tool_call,
    text_of,
    zoom_actions,
    zoom_arguments,
)
from ergo_train.rollout.views import SHARED, shared_coarse_view
from ergo_train.rollout.zoom import (
    DEFAULT_BUDGET_TOKENS,
    ZoomResult,
    budget_max_pixels,
    zoom_crop,
)

ANSWER_INSTRUCTION = "Answer with the option's letter from the given choices directly."
OPEN_ANSWER_INSTRUCTION = "Answer the question using a single word or phrase."
TURN1_INSTRUCTION = (
    "The image is {w}x{h} pixels. First think about which region of the image holds the answer, then call "
    "the zoom tool once with that region's box (x1, y1, x2, y2) in pixels of this image."
)
SYSTEM_PROMPT = (
    "You answer questions about high-resolution images in two steps. First you see a downsampled image and "
    "the question: think about which region holds the answer, then call the zoom tool once with that "
    "region's box. Then you see that region at full resolution with the answer options: think, then give "
    "your final answer inside <answer></answer>."
)


def turn1_text(question: str, seen_size: Size) -> str:
    """The turn-1 user text: the question WITHOUT options and the zoom instruction for an image of ``seen_size``.

    >>> turn1_text("Where is the cat?", (252, 196)).splitlines()[0]
    'Where is the cat?'
    """
    return f"{question.strip()}\n" + TURN1_INSTRUCTION.format(w=seen_size[0], h=seen_size[1])


def turn2_text(question: str, options: list[str] | None) -> str:
    """The turn-2 text (returned by the zoom tool with the crop): the question WITH lettered options.

    >>> print(turn2_text("Which?", ["x", "y"]))
    Which?
    A. x
    B. y
    Answer with the option's letter from the given choices directly.
    """
    options = list(options or [])
    if not options:
        return f"{question.strip()}\n{OPEN_ANSWER_INSTRUCTION}"
    lettered = "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))
    return f"{question.strip()}\n{lettered}\n{ANSWER_INSTRUCTION}"


def row_image(value: Any) -> Image.Image:
    """A row's ``image`` as an RGB PIL image at full resolution, EXIF-transposed.

    Accepts what a row can hold: a PIL image (``datasets`` decodes and EXIF-transposes it), the
    ``{bytes, path}`` struct of the sample schema, or a path.
    """
    from ergo_data.core.imageio import open_rgb

    if isinstance(value, Image.Image):
        return value if value.mode == "RGB" else value.convert("RGB")
    if isinstance(value, Mapping):
        if value.get("bytes"):
            return open_rgb(value["bytes"])
        if value.get("path"):
            return open_rgb(Path(value["path"]).read_bytes())
        raise ValueError("row image has neither bytes nor path")
    if isinstance(value, (str, Path)):
        return open_rgb(Path(value).read_bytes())
    if isinstance(value, (bytes, bytearray)):
        return open_rgb(bytes(value))
    raise TypeError(f"cannot read a row image from {type(value).__name__}")


def row_source(value: Any) -> ImageSource:
    """A row's ``image`` for the crop path: the header now, pixels only where a view or a crop needs them."""
    return ImageSource.open(value)


def _seen_size(row: Mapping[str, Any], max_pixels: int) -> Size:
    if row.get("width") and row.get("height"):
        return resized_size((int(row["width"]), int(row["height"])), max_pixels)
    return resized_size(row_source(row["image"]).size, max_pixels)


def build_turn1_prompt(row: Mapping[str, Any], max_pixels: int) -> list[dict[str, Any]]:
    """The ``prompt`` column for TRL: the system message and the turn-1 user text (TRL inserts the image).

    >>> [m["role"] for m in build_turn1_prompt({"question": "Q?", "width": 1200, "height": 900}, 50176)]
    ['system', 'user']
    """
    return [{"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": turn1_text(row["question"], _seen_size(row, max_pixels))}]


def build_turn1_messages(row: Mapping[str, Any], max_pixels: int) -> list[dict[str, Any]]:
    """Turn 1 with the coarse view inside, for ``processor.apply_chat_template`` + ``model.generate``."""
    view, size = shared_coarse_view(row["image"], max_pixels)
    return [{"role": "system", "content": [{"type": "text", "text": SYSTEM_PROMPT}]},
            {"role": "user", "content": [{"type": "image", "image": view},
                                         {"type": "text", "text": turn1_text(row["question"], size)}]}]


def _shown_as_coordinates(method):
    """TRL builds a tool's JSON schema from its signature and type hints: show the model the four float
    coordinates, whatever the method really accepts."""
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD, annotation=float) for n in ZOOM_ARGS]
    method.__signature__ = inspect.Signature(params, return_annotation=list[dict[str, Any]])
    method.__annotations__ = {**dict.fromkeys(ZOOM_ARGS, float), "return": list[dict[str, Any]]}
    return method


class ZoomEnv:
    """One ERGO rollout for TRL's ``environment_factory``: ``reset(**row)``, then the ``zoom`` tool.

    Every public method is a tool for TRL, so state lives in attributes: ``seen_size`` (coarse view),
    ``vision_tokens`` (per turn: [turn 1] or [turn 1, turn 2]), ``zooms`` (one ``ZoomResult`` per call),
    ``zoom_box`` / ``zoom_area_frac`` / ``zoom_ok`` / ``zoom_error`` (of the first call).
    """

    def __init__(self, max_pixels: int = budget_max_pixels(DEFAULT_BUDGET_TOKENS)) -> None:
        self.max_pixels = int(max_pixels)
        self._clear()

    def _clear(self) -> None:
        self.row: dict[str, Any] = {}
        self.image: ImageSource | None = None
        self.seen_size: Size | None = None
        self.vision_tokens: list[int] = []
        self.zooms: list[ZoomResult] = []
        self._prepared: tuple[Any, str | None, ZoomResult] | None = None

    def reset(self, **row: Any) -> None:
        """Start a rollout on ``row`` (the dataset row: image, question, options, answer, boxes...)."""
        self._clear()
        if row.get("image") is None or not row.get("question"):
            raise ValueError(f"sample {row.get('id')!r}: the rollout needs 'image' and 'question'")
        self.row = dict(row)
        self.image = SHARED.source(row["image"])  # the file read once for all rollouts; a fresh source each
        self.seen_size = resized_size(self.image.size, self.max_pixels)
        self.vision_tokens = [vision_tokens(self.image.size, self.max_pixels)]
        # the prompt column already holds turn 1

    @_shown_as_coordinates
    def zoom(self, *coords: Any, **arguments: Any) -> list[dict[str, Any]]:
        """Zoom into a region of the image: see it at full resolution, then answer the question.

        Args:
            x1: Left edge of the region, in pixels of the image you were shown.
            y1: Top edge of the region, in pixels of the image you were shown.
            x2: Right edge of the region, in pixels of the image you were shown.
            y2: Bottom edge of the region, in pixels of the image you were shown.
        """
        # TRL calls zoom(**whatever the model wrote): any shape is read by the rewards' own parser, and a call
        # that cannot be read still returns an image (the whole view) with the reason (docs/trl-pitfalls.md).
        if coords:  # a direct call, zoom(x1, y1, x2, y2)
            arguments = {**dict(zip(ZOOM_ARGS, coords)), **arguments} if len(coords) == 4 else {RAW_ARGUMENTS: coords}
        box, error = zoom_arguments(arguments)
        return self._apply_zoom(box, error)


    def _prepare_zoom(self, arguments: Mapping[str, Any]) -> Image.Image | None:
        """Make the crop that ``zoom(**arguments)`` will show, now (from any thread: the trainer makes every
        rollout's crop in parallel); the call then takes it. Returns the crop (None for a malformed call)."""
        box, error = zoom_arguments(arguments)
        result = zoom_crop(self.image, None if error else box, self.seen_size, self.max_pixels)
        self._prepared = (box, error, result)
        return result.image if result.ok else None

    def _unknown_tool(self, name: str, **arguments: Any) -> list[dict[str, Any]]:
        """A call of a tool that does not exist: the whole view and the reason (the trainer routes it here)."""
        return self._apply_zoom(None, f"unknown tool {name!r} (the only tool is {ZOOM_TOOL!r})")

    def _apply_zoom(self, xyxy: Sequence[Any] | None, parse_error: str | None = None) -> list[dict[str, Any]]:
        if self.image is None or self.seen_size is None:
            raise RuntimeError("zoom called before reset")
        prepared, self._prepared = self._prepared, None
        if prepared is not None and prepared[:2] == (xyxy, parse_error):
            result = prepared[2]
        else:
            result = zoom_crop(self.image, None if parse_error else xyxy, self.seen_size, self.max_pixels)
        if parse_error is not None:
            result = replace(result, error=parse_error)
        self.zooms.append(result)
        self.vision_tokens.append(result.vision_tokens)
        text = turn2_text(self.row["question"], self.row.get("options"))
        if not result.ok:  # still return an image: TRL needs one (docs/trl-pitfalls.md, 2); r_format scores 0
            text = f"zoom error: {result.error}; showing the whole image instead.\n{text}"
        return [{"type": "image", "image": result.image}, {"type": "text", "text": text}]

    # ---- read-outs (properties: not tools) ------------------------------------------------------
    @property
    def zoomed(self) -> bool:
        return bool(self.zooms)

    @property
    def zoom_ok(self) -> bool:
        return bool(self.zooms) and self.zooms[0].ok

    @property
    def zoom_box(self) -> Box | None:
        return self.zooms[0].box if self.zooms else None

    @property
    def zoom_error(self) -> str | None:
        return self.zooms[0].error if self.zooms else None

    @property
    def zoom_area_frac(self) -> float | None:
        return self.zooms[0].area_frac if self.zooms else None

    @property
    def crop_size(self) -> Size | None:
        return self.zooms[0].image.size if self.zooms else None


def zoom_env_factory(max_pixels: int):
    """``environment_factory`` for GRPOTrainer: builds ``ZoomEnv(max_pixels)`` (TRL calls it with no args)."""
    return partial(ZoomEnv, max_pixels=int(max_pixels))


def use_tool_chat_template(processor):
    """Give ``processor`` (and its tokenizer) TRL's qwen3_vl template: Hermes ``<tool_call>`` JSON calls and
    images inside tool responses, with Qwen2.5-VL's vision tokens. Qwen2.5-VL's own template has no tools."""
    from trl.chat_template_utils import qwen3_vl_chat_template

    processor.chat_template = qwen3_vl_chat_template
    tokenizer = getattr(processor, "tokenizer", None)
    if tokenizer is not None:
        tokenizer.chat_template = qwen3_vl_chat_template
    return processor


# ---- inference: both turns with plain generate --------------------------------------------------
@dataclass
class TwoTurnResult:
    turn1_text: str  # what the model wrote in turn 1 (reasoning + tool call as text)
    turn2_text: str | None  # the answer turn (None when the model did not zoom)
    zoom_args: list[float] | None  # [x1, y1, x2, y2] on the coarse view (None: no zoom, or malformed)
    zoom: ZoomResult | None  # the crop actually shown (None when the model did not zoom)
    vision_tokens: list[int] = field(default_factory=list)  # per turn
    completion: list[dict[str, Any]] = field(default_factory=list)  # TRL's completion message layout
    generated_tokens: int = 0

    @property
    def final_text(self) -> str:
        return self.turn2_text if self.turn2_text is not None else self.turn1_text


def execute_turn1(env: ZoomEnv, parsed: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Run turn 1's action on ``env`` as training does, or return None when turn 1 calls nothing.

    A tool call (any name, any arguments) runs like TRL runs it in training: ``zoom`` with the model's arguments,
    any other name the unknown-tool answer (the trainer routes it there too). Without a tool call, the paper's
    ``<zoom>[..]</zoom>`` tag is executed (ERGO-style checkpoints); ``<tool_call>`` text the parser could not
    read runs nothing, as in training. Returns the tool's content blocks (an image and a text).

    >>> from PIL import Image
    >>> env = ZoomEnv(64 * 28 * 28)
    >>> env.reset(image=Image.new("RGB", (1200, 900)), question="Q?", options=["a", "b"], answer="b")
    >>> call = {"type": "function", "function": {"name": "zoom", "arguments": {"bbox_2d": [0, 0, 126, 84]}}}
    >>> blocks = execute_turn1(env, {"content": "", "tool_calls": [call]}); env.zoom_ok, env.crop_size
    (True, (252, 168))
    >>> blocks = execute_turn1(env, {"content": "look <zoom>[10, 20, 30]</zoom>"}); env.zooms[-1].error
    'zoom: [10, 20, 30] is not 4 finite numbers'
    >>> execute_turn1(env, {"content": "no idea <tool_call> {broken"}) is None
    True
    """
    calls = parsed.get("tool_calls") or []
    if calls:
        fn = normalize_tool_call(calls[0])["function"]
        if fn["name"] == ZOOM_TOOL:
            return env.zoom(**fn["arguments"])
        return env._unknown_tool(fn["name"], **fn["arguments"])
    tags = [a for a in zoom_actions(text_of(parsed.get("content"))) if a[0] == "tag"]
    if not tags:
        return None
    _, coords, error = tags[0]
    return env._apply_zoom(coords, error)


def first_turn(chat: ChatBackend, row: Mapping[str, Any], max_pixels: int, *, env: ZoomEnv | None = None,
               seed: int | None = None):
    """Turn 1 alone on any chat backend: ``(messages, turn, blocks, env)``; ``blocks`` is what turn 1's action
    returned (``execute_turn1``, None when it called nothing) and ``env.zoom_ok`` whether it was a well-formed
    zoom, read as the rewards read it."""
    from ergo_train.rollout.chat import tool_chat_template

    env = env or ZoomEnv(max_pixels)
    env.reset(**row)
    messages = build_turn1_messages(row, max_pixels)
    turn1 = chat.complete(messages, [env.zoom], chat_template=tool_chat_template(), seed=seed)
    return messages, turn1, execute_turn1(env, turn1.message), env


def two_turn_rollout(chat: ChatBackend, row: Mapping[str, Any], max_pixels: int, *, env: ZoomEnv | None = None,
                     seed: int | None = None) -> TwoTurnResult:
    """One sample through turn 1, the zoom tool and turn 2 on any chat backend (in-process or served).

    The prompts, the coarse view, the zoom's mapping and the crop are built here, so a served model sees exactly
    what ``model.generate`` sees; the backend only renders (with TRL's tool template) and generates. Tool calls are
    read from the backend's parsed message (TRL's parser in process, the server's tool parser when served), the
    tag form from the text as a fallback.
    """
    from ergo_train.rollout.chat import tool_chat_template

    messages, turn1, blocks, env = first_turn(chat, row, max_pixels, env=env, seed=seed)
    parsed1 = turn1.message
    completion: list[dict[str, Any]] = [parsed1]
    if blocks is None:
        return TwoTurnResult(turn1.text, None, None, None, list(env.vision_tokens), completion,
                             turn1.generated_tokens)
    tool_msg = {"role": "tool", "name": ZOOM_TOOL, "content": blocks}
    completion.append(tool_msg)
    assistant1 = dict(parsed1)
    if not assistant1.get("tool_calls"):  # tag form: keep the text as the assistant turn
        assistant1 = {"role": "assistant", "content": turn1.text}
    turn2 = chat.complete(messages + [assistant1, tool_msg], [env.zoom], chat_template=tool_chat_template(),
                          seed=None if seed is None else seed + 1)
    completion.append({"role": "assistant", "content": turn2.text})
    zoom = env.zooms[-1]
    args = list(zoom.requested) if zoom.requested else None
    return TwoTurnResult(turn1.text, turn2.text, args, zoom, list(env.vision_tokens), completion,
                         turn1.generated_tokens + turn2.generated_tokens)


def run_two_turns(model, processor, row: Mapping[str, Any], max_pixels: int, *, max_new_tokens: int = 256,
                  generate_kwargs: Mapping[str, Any] | None = None, env: ZoomEnv | None = None) -> TwoTurnResult:
    """``two_turn_rollout`` with the in-process backend (``model.generate``; no TRL trainer).

    ``generate_kwargs`` replace the backend's defaults (greedy, vision placeholders suppressed) key by key.
    """
    from ergo_train.rollout.chat import TransformersChat

    chat = TransformersChat(model, processor, max_new_tokens=max_new_tokens,
                            generate_kwargs={"do_sample": False, **dict(generate_kwargs or {})})
    return two_turn_rollout(chat, row, max_pixels, env=env)


