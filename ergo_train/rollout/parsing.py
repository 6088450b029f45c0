"""Strict parsing of an ERGO completion: the zoom action of turn 1 and the ``<answer>`` of turn 2.

A zoom is accepted in three spellings, all ``[x1, y1, x2, y2]`` in pixels of the image the model saw:

- a TRL tool call ``zoom(x1, y1, x2, y2)``: a structured ``tool_calls`` entry of the assistant message
  (what TRL's ``parse_response`` yields), or its Hermes text ``<tool_call>{"name": "zoom", "arguments":
  {...}}</tool_call>`` when the parser left it in the content;
- the paper's tag form ``<zoom>[x1,y1,x2,y2]</zoom>`` (ERGO-style checkpoints).

A completion is TRL's message list (assistant / tool / assistant) or a plain string. The hot path works on
plain floats; ``ParsedCompletion.box`` converts to the canonical ``Box`` at the edge.

>>> p = parse_completion([
...     {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
...         "name": "zoom", "arguments": {"x1": 10, "y1": 20, "x2": 110, "y2": 70}}}]},
...     {"role": "tool", "name": "zoom", "content": [{"type": "text", "text": "..."}]},
...     {"role": "assistant", "content": "<answer>B</answer>"}])
>>> p.zoom, p.answer, p.well_formed, p.form
((10.0, 20.0, 110.0, 70.0), 'B', True, 'tool_call')
>>> p.box(seen_size=(200, 100), original_size=(2000, 1000))
Box(x1=100.0, y1=200.0, x2=1100.0, y2=700.0)
>>> parse_completion("<zoom>[1, 2, nan, 4]</zoom> <answer>B</answer>").format_error
'zoom: [1, 2, nan, 4] is not 4 finite numbers'
>>> answer_matches("b. Fiji", ["evian", "Fiji"], "Fiji", "B"), answer_matches("A. Fiji", ["evian", "Fiji"], "Fiji", "B")
(True, False)
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from ergo_data.core.boxes import Box, Size
from ergo_train.rollout.matching import answer_matches, normalize_answer  # noqa: F401 - the matcher's old home

ZOOM_TOOL = "zoom"
ZOOM_ARGS = ("x1", "y1", "x2", "y2")
BOX_ARGS = ("bbox_2d", "bbox")  # a list [x1, y1, x2, y2] under one of these keys is the same box
RAW_ARGUMENTS = "__raw__"  # the trainer keeps non-object arguments under this key (see train/grpo.py)
Coords = tuple[float, float, float, float]

_NUM = r"[-+]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?"  # ASCII digits only: no full-width '１'
_TAG_BODY = re.compile(rf"\s*\[\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*,\s*({_NUM})\s*\]\s*")
_TAG_ZOOM = re.compile(r"<zoom>(.*?)</zoom>", re.DOTALL)
_HERMES = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


class ParsedCompletion:
    """What a completion says, and why it is malformed if it is.

    ``zoom``: the one zoom of turn 1 as written (finite floats on the seen image), else None.
    ``answer``: the one ``<answer>`` of the LAST assistant message (what ``r_acc`` scores), else None.
    ``format_error``: None when the completion has the two-turn format (one zoom, then one answer).
    ``tool_ran``: a tool message follows turn 1 (a plain string never has one: nothing executed its zoom).
    """

    __slots__ = ("answer", "answer_error", "form", "format_error", "tool_ran", "zoom", "zoom_error")

    def __init__(self, zoom: Coords | None, zoom_error: str | None, answer: str | None,
                 answer_error: str | None, format_error: str | None, form: str | None,
                 tool_ran: bool = False) -> None:
        self.zoom, self.zoom_error, self.form = zoom, zoom_error, form
        self.answer, self.answer_error, self.format_error = answer, answer_error, format_error
        self.tool_ran = tool_ran  # a tool result follows turn 1: the zoom was really executed

    @property
    def complete(self) -> bool:
        """A whole episode: the zoom tool ran, and the answer turn holds exactly one ``<answer>``."""
        return self.tool_ran and self.answer is not None

    @property
    def well_formed(self) -> bool:
        """Structure, zoom and answer all well-formed (the box may still lie wholly outside the image)."""
        return self.format_error is None

    def box(self, seen_size: Size, original_size: Size) -> Box:
        """The zoom on the original image (canonical converter, clamped); raises BoxError if unusable."""
        if self.zoom is None:
            from ergo_data.core.boxes import BoxError

            raise BoxError(self.zoom_error or "no zoom")
        return Box.from_model(self.zoom, resized_size=seen_size, original_size=original_size)

    def __repr__(self) -> str:
        return (f"ParsedCompletion(zoom={self.zoom}, answer={self.answer!r}, format_error={self.format_error!r}, "
                f"form={self.form!r})")


# ---- zoom on the image: plain floats (hot path), mirrors Box.from_model + clamp ---------------------
def zoom_on_original(zoom: Coords, seen_size: Size, original_size: Size) -> Coords | None:
    """``Box.from_model(zoom, seen_size, original_size)`` on plain floats: the clamped box, or None if unusable.

    >>> zoom_on_original((-10.0, 0.0, 50.0, 50.0), (100, 100), (1000, 1000))
    (0.0, 0.0, 500.0, 500.0)
    >>> zoom_on_original((200.0, 0.0, 300.0, 50.0), (100, 100), (1000, 1000)) is None   # wholly outside
    True
    """
    x1, y1, x2, y2 = zoom
    if not (x1 < x2 and y1 < y2):
        return None
    w, h = original_size
    sx, sy = w / seen_size[0], h / seen_size[1]
    x1, y1, x2, y2 = x1 * sx, y1 * sy, x2 * sx, y2 * sy
    if not (math.isfinite(x1) and math.isfinite(y1) and math.isfinite(x2) and math.isfinite(y2)):
        return None  # overflow when scaling: Box.from_model rejects it too
    if not (x1 < x2 and y1 < y2):
        return None
    # clamp with comparisons: min()/max() calls were a third of this function's time in the reward benchmark
    x1 = 0.0 if x1 < 0.0 else (w if x1 > w else x1)  # noqa: FURB136
    y1 = 0.0 if y1 < 0.0 else (h if y1 > h else y1)  # noqa: FURB136
    x2 = 0.0 if x2 < 0.0 else (w if x2 > w else x2)  # noqa: FURB136
    y2 = 0.0 if y2 < 0.0 else (h if y2 > h else y2)  # noqa: FURB136
    if not (x1 < x2 and y1 < y2):
        return None
    return (x1, y1, x2, y2)


# ---- zoom actions in one assistant message ------------------------------------------------------
def zoom_arguments(args: Any) -> tuple[Coords | None, str | None]:
    """``(coords, None)`` for the arguments of a zoom call, or ``(None, why)``: the ONE reading of a call, shared
    by the tool (``ZoomEnv.zoom``, its ``zoom_ok``) and the rewards (``r_format``), so the two always agree.

    Accepted: exactly ``{x1, y1, x2, y2}``, or one list of 4 under ``bbox_2d`` (Qwen2.5-VL's grounding format)
    or ``bbox``; 4 finite JSON numbers (no strings, no booleans). A JSON text of those is read too.

    >>> zoom_arguments({"bbox_2d": [1, 2, 30, 40]})
    ((1.0, 2.0, 30.0, 40.0), None)
    >>> zoom_arguments({"x1": "1", "y1": 2, "x2": 3, "y2": 4})
    (None, "zoom arguments ['1', 2, 3, 4] are not 4 finite numbers")
    """
    if type(args) is dict and RAW_ARGUMENTS in args and len(args) == 1:
        args = args[RAW_ARGUMENTS]  # what the model wrote, kept aside by the trainer when it was not an object
    if type(args) is str:
        try:
            args = _JSON.decode(args)
        except ValueError as e:
            return None, f"zoom arguments are not JSON ({e})"
    if not isinstance(args, Mapping):
        return None, f"zoom arguments must be an object with {', '.join(ZOOM_ARGS)}, got {type(args).__name__}"
    if len(args) == 1 and next(iter(args)) in BOX_ARGS:
        values = args[next(iter(args))]
        if not isinstance(values, (list, tuple)) or len(values) != 4:
            return None, f"zoom {next(iter(args))} must be a list of 4 numbers, got {values!r}"
        x1, y1, x2, y2 = values
    else:
        x1, y1, x2, y2 = args.get("x1"), args.get("y1"), args.get("x2"), args.get("y2")
        if len(args) != 4 or x1 is None or y1 is None or x2 is None or y2 is None:
            return None, (f"zoom arguments must be exactly {', '.join(ZOOM_ARGS)} (or one of "
                          f"{', '.join(BOX_ARGS)}), got {sorted(map(str, args))}")
    for v in (x1, y1, x2, y2):
        # type(): bools and strings are not numbers; v - v == 0 only for finite v (inf - inf and nan are nan)
        if (type(v) is not float and type(v) is not int) or v - v != 0:
            return None, f"zoom arguments {[x1, y1, x2, y2]} are not 4 finite numbers"
    return (float(x1), float(y1), float(x2), float(y2)), None


def normalize_tool_call(call: Any) -> dict[str, Any]:
    """A parsed tool call in the one shape TRL executes, ``{"type": "function", "function": {"name", "arguments"}}``,
    whatever the model wrote: arguments that are not an object are kept under ``RAW_ARGUMENTS`` for the zoom tool
    to read (and reject), a missing name becomes ``""``.

    >>> normalize_tool_call({"name": "zoom", "arguments": [1, 2, 3, 4]})["function"]
    {'name': 'zoom', 'arguments': {'__raw__': [1, 2, 3, 4]}}
    """
    fn = call.get("function", call) if isinstance(call, Mapping) else None
    fn = fn if isinstance(fn, Mapping) else {"arguments": call}
    name, args = fn.get("name"), fn.get("arguments")
    if not isinstance(args, dict):
        args = {} if args is None else {RAW_ARGUMENTS: args}
    return {"type": "function", "function": {"name": name if isinstance(name, str) else "", "arguments": args}}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not a finite number")


_JSON = json.JSONDecoder(parse_constant=_reject_constant)  # one decoder: json.loads(..., hook) builds one per call


def _hermes_call(body: str) -> tuple[bool, Coords | None, str | None]:
    """``(is_zoom, coords, error)`` for the JSON inside one ``<tool_call>`` block."""
    try:
        call = _JSON.decode(body)
    except ValueError as e:
        return True, None, f"<tool_call> is not JSON ({e})"  # unreadable: counted as a (bad) zoom attempt
    if not isinstance(call, Mapping) or call.get("name") != ZOOM_TOOL:
        return False, None, None
    if set(call) - {"name", "arguments"}:
        return True, None, f"<tool_call> has unexpected keys {sorted(set(call) - {'name', 'arguments'})}"
    coords, err = zoom_arguments(call.get("arguments"))
    return True, coords, err


def _tag_zoom(body: str) -> tuple[Coords | None, str | None]:
    m = _TAG_BODY.fullmatch(body)
    if m is None:
        return None, f"zoom: {body.strip()} is not 4 finite numbers"
    coords = (float(m.group(1)), float(m.group(2)), float(m.group(3)), float(m.group(4)))
    if not all(math.isfinite(v) for v in coords):  # e.g. 1e999
        return None, f"zoom: {body.strip()} is not 4 finite numbers"
    return coords, None


def text_of(content: Any) -> str:
    """The text of a message's ``content``: a string, or the text blocks of a block list joined."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    parts = []
    for block in content:
        if isinstance(block, Mapping) and block.get("type") == "text":
            parts.append(str(block.get("text") or ""))
        elif isinstance(block, str):
            parts.append(block)
    return "".join(parts)


def zoom_actions(text: str, tool_calls: Sequence[Any] | None = None) -> list[tuple[str, Coords | None, str | None]]:
    """Every zoom attempt in one message, in any spelling: ``[(form, coords or None, error or None)]``.

    Unbalanced ``<zoom>`` / ``<tool_call>`` tags count as a malformed attempt.

    >>> zoom_actions('<tool_call>{"name": "zoom", "arguments": {"x1": 1, "y1": 2, "x2": 3, "y2": 4}}</tool_call>')
    [('hermes', (1.0, 2.0, 3.0, 4.0), None)]
    >>> zoom_actions("<zoom>[1,2,3,4]</zoom><zoom>[1,2,3,4]")[-1]
    ('tag', None, 'unbalanced <zoom> tags')
    """
    out: list[tuple[str, Coords | None, str | None]] = []
    for call in tool_calls or ():
        fn = call.get("function", call) if isinstance(call, Mapping) else None
        if not isinstance(fn, Mapping):
            out.append(("tool_call", None, f"unreadable tool call {call!r}"))
            continue
        if fn.get("name") != ZOOM_TOOL:
            continue
        coords, err = zoom_arguments(fn.get("arguments"))
        out.append(("tool_call", coords, err))
    if "<tool_call>" in text or "</tool_call>" in text:
        for body in _HERMES.findall(text):
            is_zoom, coords, err = _hermes_call(body)
            if is_zoom:
                out.append(("hermes", coords, err))
        if text.count("<tool_call>") != text.count("</tool_call>"):
            out.append(("hermes", None, "unbalanced <tool_call> tags"))
    if "<zoom>" in text or "</zoom>" in text:
        for body in _TAG_ZOOM.findall(text):
            out.append(("tag",) + _tag_zoom(body))
        if text.count("<zoom>") != text.count("</zoom>"):
            out.append(("tag", None, "unbalanced <zoom> tags"))
    return out


def parse_answer(text: str) -> tuple[str | None, str | None]:
    """The one ``<answer>…</answer>`` of ``text``, stripped: ``(answer, None)`` or ``(None, error)``.

    >>> parse_answer("I see a tiger. <answer> D </answer>")
    ('D', None)
    >>> parse_answer("<answer>A</answer><answer>B</answer>")
    (None, '2 <answer> tags')
    """
    opens = text.count("<answer>")
    if opens == 0 and "</answer>" not in text:
        return None, "no <answer>"
    if opens != 1 or text.count("</answer>") != 1:
        return None, f"{max(opens, text.count('</answer>'))} <answer> tags"
    start, end = text.find("<answer>") + 8, text.find("</answer>")
    if end < start:
        return None, "</answer> before <answer>"
    inner = text[start:end].strip()
    if not inner:
        return None, "empty <answer>"
    if "<" in inner and re.search(r"</?[A-Za-z_]+>", inner):
        return None, "tags inside <answer>"
    return inner, None


# ---- whole completions ----------------------------------------------------------------------------
def parse_completion(completion: Any) -> ParsedCompletion:
    """Parse TRL's completion (message list) or a plain string into zoom, answer and format verdict.

    Format (r_format = 1) needs: turn 1 (the first assistant message) holds exactly one zoom in any spelling
    and no ``<answer>``; then the tool's result (tool or user messages); then exactly one assistant message
    holding exactly one ``<answer>`` and no zoom. A plain string needs one zoom followed by one answer.
    """
    if type(completion) is str:
        return _parse_text_completion(completion)
    try:
        roles = [m.get("role") for m in completion]
    except (AttributeError, TypeError):
        return _malformed("not a message list")
    if roles == _EPISODE:  # the usual two-turn episode: its structure needs no further checks
        assistants, structure_error, tool_ran = _EPISODE_ASSISTANTS, None, True
    else:
        if not roles:
            return _malformed("empty completion")
        assistants = [i for i, r in enumerate(roles) if r == "assistant"]
        if not assistants:
            return _malformed("no assistant message")
        structure_error = _structure_error(roles, assistants)
        tool_ran = "tool" in roles[assistants[0] + 1:]
    first = completion[assistants[0]]
    text1 = first.get("content")
    if type(text1) is not str:
        text1 = text_of(text1)
    tool_calls = first.get("tool_calls")
    if "<" not in text1 and tool_calls and len(tool_calls) == 1:  # fast path: one structured call, no tags
        zoom, zoom_error, form = _structured_zoom(tool_calls[0])
    else:
        zoom, zoom_error, form = _one_zoom(zoom_actions(text1, tool_calls))
    last = completion[assistants[-1]]
    text2 = last.get("content")
    if type(text2) is not str:
        text2 = text_of(text2)
    answer, answer_error = parse_answer(text2)
    format_error = zoom_error
    if format_error is None and "answer>" in text1:
        format_error = "<answer> in turn 1"
    if format_error is None:
        if structure_error is not None:
            format_error = structure_error
        elif last.get("tool_calls") or (("zoom>" in text2 or "tool_call>" in text2) and zoom_actions(text2)):
            format_error = "zoom in turn 2"
        elif answer_error is not None:
            format_error = answer_error
    return ParsedCompletion(zoom, zoom_error, answer, answer_error, format_error, form, tool_ran)


_EPISODE = ["assistant", "tool", "assistant"]
_EPISODE_ASSISTANTS = (0, 2)


def _structure_error(roles: list[Any], assistants: list[int]) -> str | None:
    """Why the message roles are not turn 1, the tool's result, turn 2; None when they are."""
    second = assistants[-1]
    if assistants[0] != 0:
        return "completion does not start with the assistant's turn 1"
    if len(assistants) != 2:
        return "no answer turn after the zoom" if len(assistants) == 1 else \
            f"{len(assistants)} assistant turns (expected 2)"
    if second == 1 or any(r not in ("tool", "user") for r in roles[1:second]):
        return "turn 2 does not follow the zoom's result"
    if second != len(roles) - 1:
        return "messages after the answer turn"
    return None


def _malformed(why: str) -> ParsedCompletion:
    return ParsedCompletion(None, why, None, why, why, None)


def _structured_zoom(call: Any) -> tuple[Coords | None, str | None, str | None]:
    fn = call.get("function") if type(call) is dict else None
    if type(fn) is dict and fn.get("name") == ZOOM_TOOL:
        coords, err = zoom_arguments(fn.get("arguments"))
        return coords, err, "tool_call"
    return _one_zoom(zoom_actions("", [call]))


def _one_zoom(actions: list[tuple[str, Coords | None, str | None]]) -> tuple[Coords | None, str | None, str | None]:
    if not actions:
        return None, "no zoom", None
    if len(actions) > 1:
        return None, f"{len(actions)} zoom actions (expected 1)", actions[0][0]
    form, coords, err = actions[0]
    return coords, err, form


def _parse_text_completion(text: str) -> ParsedCompletion:
    actions = zoom_actions(text)
    zoom, zoom_error, form = _one_zoom(actions)
    answer, answer_error = parse_answer(text)
    format_error = zoom_error or answer_error
    if format_error is None:
        end_of_zoom = max(text.rfind("</zoom>"), text.rfind("</tool_call>"))
        if text.find("<answer>") < end_of_zoom:
            format_error = "<answer> before the zoom"
    return ParsedCompletion(zoom, zoom_error, answer, answer_error, format_error, form)
