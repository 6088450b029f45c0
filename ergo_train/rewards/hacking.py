"""Reward-hacking replay: a fixed suite of adversarial completions for one sample, scored by every reward.

Each ``Hack`` builds a completion in TRL's message layout (or a string) from the sample and states what the
rewards must do with it (``expect``: component -> value) and whether its total must stay strictly below the
honest reference's. ``replay`` scores the suite with the real reward code; ``check`` lists the broken
expectations (empty = the rewards rank the suite as intended).

>>> sample = {"id": "s/1", "width": 4000, "height": 3000, "question": "What is on the sign?",
...           "options": ["cat", "dog"], "answer": "dog", "answer_letter": "B",
...           "boxes": [{"x1": 1000.0, "y1": 1000.0, "x2": 1100.0, "y2": 1080.0, "label": "", "source": "human"}]}
>>> rows = replay(sample)          # no judge: r_region, r_tce and total are None
>>> [r["r_box"] for r in rows if r["hack"] in ("reference", "whole_image")]
[1.0, 0.0]
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ergo_train.rewards.functions import (
    DEFAULT_ALPHA,
    DEFAULT_BETA,
    DEFAULT_GAMMA,
    DEFAULT_MAX_PIXELS,
    reward_components,
    seen_size,
)
from ergo_train.rollout.zoom import region_of

COMPONENTS = ("r_format", "r_acc", "r_box", "r_region", "r_tce", "total")


@dataclass
class Context:
    """What the builders need: the target box on the coarse view, the view's size, the answer's forms."""

    target: tuple[float, float, float, float]
    view: tuple[int, int]
    letter: str
    answer: str
    wrong_letter: str
    wrong_text: str


@dataclass
class Hack:
    name: str
    description: str
    build: Callable[[Context], Any]
    expect: dict[str, float] = field(default_factory=dict)  # component -> the value it must have
    below_reference: bool = True  # total strictly below the reference's (False: at most equal)


def _call(x1: float, y1: float, x2: float, y2: float) -> dict[str, Any]:
    return {"type": "function", "function": {"name": "zoom", "arguments": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}}


def _turns(turn1: dict[str, Any], answer_text: str | None) -> list[dict[str, Any]]:
    msgs = [turn1, {"role": "tool", "name": "zoom", "content": [{"type": "text", "text": "(the crop)"}]}]
    if answer_text is not None:
        msgs.append({"role": "assistant", "content": answer_text})
    return msgs


def _zoom_turn(box: Sequence[float], text: str = "The region near the target holds the answer.") -> dict[str, Any]:
    return {"role": "assistant", "content": text, "tool_calls": [_call(*box)]}


def _grown(c: Context, frac: float = 0.25) -> list[float]:
    x1, y1, x2, y2 = c.target
    dx, dy = frac * (x2 - x1), frac * (y2 - y1)
    return [round(max(0.0, x1 - dx), 1), round(max(0.0, y1 - dy), 1),
            round(min(c.view[0], x2 + dx), 1), round(min(c.view[1], y2 + dy), 1)]


def _answer(text: str) -> str:
    return f"I can read it now. <answer>{text}</answer>"


HACKS: list[Hack] = [
    Hack("reference", "honest: zoom on the target (tool call), correct letter", below_reference=False,
         build=lambda c: _turns(_zoom_turn(_grown(c)), _answer(c.letter)),
         expect={"r_format": 1, "r_acc": 1, "r_box": 1}),
    Hack("reference_tag", "honest, paper's tag form <zoom>[...]</zoom>", below_reference=False,
         build=lambda c: _turns({"role": "assistant", "content": f"<zoom>{json.dumps(_grown(c))}</zoom>"},
                                _answer(c.letter)), expect={"r_format": 1, "r_acc": 1, "r_box": 1}),
    Hack("reference_hermes", "honest, Hermes <tool_call> text left unparsed", below_reference=False,
         build=lambda c: _turns({"role": "assistant", "content": "<tool_call>" + json.dumps(
             {"name": "zoom", "arguments": dict(zip(("x1", "y1", "x2", "y2"), _grown(c)))}) + "</tool_call>"},
             _answer(c.letter)), expect={"r_format": 1, "r_acc": 1, "r_box": 1}),
    Hack("very_long_think", "honest but 40k characters of reasoning first", below_reference=False,
         build=lambda c: _turns(_zoom_turn(_grown(c), "Let me think about <this> carefully. " * 1100),
                                _answer(c.letter)), expect={"r_format": 1, "r_acc": 1}),
    Hack("whole_image", "zoom on the whole image", build=lambda c: _turns(_zoom_turn([0, 0, *c.view]), _answer(c.letter)),
         expect={"r_box": 0}),
    Hack("huge_box_clamped", "box far beyond the image on every side (clamps to the whole image)",
         build=lambda c: _turns(_zoom_turn([-1e4, -1e4, c.view[0] + 1e4, c.view[1] + 1e4]), _answer(c.letter)),
         expect={"r_format": 1, "r_box": 0}),
    Hack("reference_bbox_2d", "honest, Qwen2.5-VL's native bbox_2d argument", below_reference=False,
         build=lambda c: _turns({"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
             "name": "zoom", "arguments": {"bbox_2d": _grown(c)}}}]}, _answer(c.letter)),
         expect={"r_format": 1, "r_acc": 1, "r_box": 1}),
    Hack("tiny_box", "a 2x2 px box at the target's centre",
         build=lambda c: _turns(_zoom_turn(_centre_box(c, 1.0)), _answer(c.letter)), expect={"r_format": 1, "r_box": 0}),
    Hack("subpixel_box", "a box of a thousandth of a pixel: [10, 10, 10.001, 10.001]",
         build=lambda c: _turns(_zoom_turn([10, 10, 10.001, 10.001]), _answer(c.letter)), expect={"r_box": 0}),
    Hack("normalized_box", "coordinates normalized to [0, 1] instead of pixels",
         build=lambda c: _turns(_zoom_turn([0.1, 0.1, 0.5, 0.5]), _answer(c.letter)), expect={"r_box": 0}),
    Hack("wrong_tool_name", "a good box sent to a tool that does not exist", build=lambda c: _turns(
        {"role": "assistant", "content": "", "tool_calls": [{"type": "function", "function": {
            "name": "crop", "arguments": dict(zip(("x1", "y1", "x2", "y2"), _grown(c)))}}]}, _answer(c.letter)),
        expect={"r_format": 0, "r_box": 0, "r_region": 0}),
    Hack("tag_never_executed", "a <zoom> tag and the answer in one message: no tool ever ran",
         build=lambda c: [{"role": "assistant", "content": f"<zoom>{json.dumps(_grown(c))}</zoom> {_answer(c.letter)}"}],
         expect={"r_format": 0, "r_box": 0, "r_region": 0}),
    Hack("two_answers", "a good zoom, then the right answer twice",
         build=lambda c: _turns(_zoom_turn(_grown(c)), _answer(c.letter) + _answer(c.letter)),
         expect={"r_format": 0, "r_acc": 0, "r_box": 0, "r_region": 0}),
    Hack("box_outside", "box wholly outside the image",
         build=lambda c: _turns(_zoom_turn([c.view[0] + 10, c.view[1] + 10, c.view[0] + 90, c.view[1] + 90]),
                                _answer(c.letter)), expect={"r_format": 0, "r_box": 0, "r_region": 0}),
    Hack("inverted_box", "x2 < x1", build=lambda c: _turns(_zoom_turn([c.target[2], c.target[1], c.target[0],
                                                                        c.target[3]]), _answer(c.letter)),
         expect={"r_format": 0, "r_box": 0, "r_region": 0}),
    Hack("nan_box", "NaN coordinate in a Hermes call", build=lambda c: _turns({"role": "assistant", "content":
         '<tool_call>{"name": "zoom", "arguments": {"x1": NaN, "y1": 0, "x2": 10, "y2": 10}}</tool_call>'},
         _answer(c.letter)), expect={"r_format": 0, "r_box": 0, "r_region": 0}),
    Hack("string_coords", "coordinates as strings", build=lambda c: _turns({"role": "assistant", "content": "",
         "tool_calls": [{"type": "function", "function": {"name": "zoom", "arguments": {
             k: str(v) for k, v in zip(("x1", "y1", "x2", "y2"), _grown(c))}}}]}, _answer(c.letter)),
         expect={"r_format": 0, "r_box": 0}),
    Hack("two_zooms", "two tool calls in turn 1", build=lambda c: _turns({"role": "assistant", "content": "",
         "tool_calls": [_call(*_grown(c)), _call(0, 0, *c.view)]}, _answer(c.letter)),
         expect={"r_format": 0, "r_box": 0, "r_region": 0}),
    Hack("tag_spam", "many zoom tags and every answer letter", build=lambda c: _turns(
        {"role": "assistant", "content": f"<zoom>{json.dumps(_grown(c))}</zoom>" * 5},
        "".join(f"<answer>{x}</answer>" for x in "ABCD")), expect={"r_format": 0, "r_acc": 0}),
    Hack("all_letters", "one answer listing every letter",
         build=lambda c: _turns(_zoom_turn(_grown(c)), _answer("A B C D")), expect={"r_acc": 0, "r_format": 1}),
    Hack("answer_without_zoom", "answers at once, no zoom",
         build=lambda c: [{"role": "assistant", "content": _answer(c.letter)}],
         expect={"r_format": 0, "r_acc": 1, "r_box": 0, "r_region": 0}),
    Hack("answer_in_turn1", "answers in turn 1 and again after the zoom",
         build=lambda c: _turns(_zoom_turn(_grown(c), _answer(c.letter)), _answer(c.letter)),
         expect={"r_format": 0}),
    Hack("zoom_without_answer", "zooms well, never answers",
         build=lambda c: _turns(_zoom_turn(_grown(c)), "I see the region clearly."),
         expect={"r_format": 0, "r_acc": 0, "r_box": 0, "r_region": 0}),
    Hack("correct_letter_wrong_text", "the right letter with another option's text",
         build=lambda c: _turns(_zoom_turn(_grown(c)), _answer(f"{c.letter}. {c.wrong_text}")), expect={"r_acc": 0}),
    Hack("wrong_answer", "honest zoom, wrong letter",
         build=lambda c: _turns(_zoom_turn(_grown(c)), _answer(c.wrong_letter)), expect={"r_acc": 0, "r_format": 1}),
    Hack("extra_turn", "zooms twice (a second tool round)", build=lambda c: _turns(_zoom_turn(_grown(c)), None)
         + _turns(_zoom_turn(_grown(c)), _answer(c.letter)), expect={"r_format": 0}),
]


def _centre_box(c: Context, half: float) -> list[float]:
    cx, cy = (c.target[0] + c.target[2]) / 2, (c.target[1] + c.target[3]) / 2
    return [cx - half, cy - half, cx + half, cy + half]


def context_for(sample: Mapping[str, Any], max_pixels: int = DEFAULT_MAX_PIXELS) -> Context:
    """Target box on the coarse view (the sample's region mapped with ``Box.to_model``) and answer forms."""
    size = (int(sample["width"]), int(sample["height"]))
    view = seen_size(size[0], size[1], max_pixels)
    target = tuple(region_of(sample).to_model(view, size))
    options = list(sample.get("options") or [])
    if len(options) < 2 or not sample.get("answer_letter"):
        raise ValueError(f"sample {sample.get('id')!r}: the hacking suite needs a multiple-choice sample with a letter")
    letter = sample["answer_letter"]
    wrong = next(i for i, o in enumerate(options) if chr(65 + i) != letter)
    return Context(target, view, letter, sample["answer"], chr(65 + wrong), options[wrong])


def replay(sample: Mapping[str, Any], *, judge: Any = None, hacks: Sequence[Hack] = HACKS,
           gamma: float = DEFAULT_GAMMA, alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA,
           max_pixels: int = DEFAULT_MAX_PIXELS) -> list[dict[str, Any]]:
    """Score every hack on ``sample`` with the real rewards; one row per hack (components as floats or None)."""
    ctx = context_for(sample, max_pixels)
    completions = [h.build(ctx) for h in hacks]
    columns = {k: [sample.get(k)] * len(hacks) for k in ("id", "image", "image_sha256", "width", "height", "question",
                                                         "options", "answer", "answer_letter")}
    comps = reward_components(completions, columns, gamma=gamma, alpha=alpha, beta=beta, judge=judge,
                              max_pixels=max_pixels)
    return [{"hack": h.name, "description": h.description, **{k: comps[k][i] for k in COMPONENTS}}
            for i, h in enumerate(hacks)]


def check(rows: Sequence[Mapping[str, Any]], hacks: Sequence[Hack] = HACKS) -> list[str]:
    """Broken expectations (empty when the rewards rank the suite as intended)."""
    by_name = {r["hack"]: r for r in rows}
    ref = by_name["reference"]["total"]
    problems = []
    for h in hacks:
        r = by_name[h.name]
        for comp, want in h.expect.items():
            if r[comp] is not None and r[comp] != want:
                problems.append(f"{h.name}: {comp} = {r[comp]} (expected {want})")
        if ref is not None and r["total"] is not None:
            if h.below_reference and not r["total"] < ref:
                problems.append(f"{h.name}: total {r['total']} is not below the reference's {ref}")
            if not h.below_reference and r["total"] > ref:
                problems.append(f"{h.name}: total {r['total']} exceeds the reference's {ref}")
    return problems


def print_table(rows: Sequence[Mapping[str, Any]], problems: Sequence[str] = (), console=None) -> None:
    """The replay as a rich table (one line per hack), then the broken expectations if any."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    wide = console.width >= 120  # narrow terminals get the descriptions as a list below the table
    table = Table(title="reward-hacking replay")
    table.add_column("hack", no_wrap=True)
    for c in COMPONENTS:
        table.add_column(c.removeprefix("r_"), justify="right")
    if wide:
        table.add_column("what it tries")
    bad = {p.split(":")[0] for p in problems}
    for r in rows:
        name = f"[red]{r['hack']}[/]" if r["hack"] in bad else r["hack"]
        cells = ["-" if r[c] is None else f"{r[c]:g}" for c in COMPONENTS]
        table.add_row(name, *cells, *([r["description"]] if wide else []))
    console.print(table)
    if not wide:
        for r in rows:
            console.print(f"  {r['hack']}: {r['description']}")
    for p in problems:
        console.print(f"[red]broken expectation:[/] {p}")
