"""Strict parsing of the zoom action (TRL tool call, Hermes text, paper tag) and of <answer>."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ergo_data.core.boxes import Box, BoxError
from ergo_train.rollout.parsing import (
    answer_matches,
    normalize_answer,
    parse_answer,
    parse_completion,
    zoom_actions,
    zoom_on_original,
)


def tool_call(args, name="zoom"):
    return {"type": "function", "function": {"name": name, "arguments": args}}


def conv(turn1, answer="<answer>B</answer>", tool_role="tool"):
    msgs = [turn1, {"role": tool_role, "name": "zoom", "content": [{"type": "text", "text": "crop"}]}]
    if answer is not None:
        msgs.append({"role": "assistant", "content": answer})
    return msgs


ARGS = {"x1": 10, "y1": 20.5, "x2": 110, "y2": 70}
COORDS = (10.0, 20.5, 110.0, 70.0)


@pytest.mark.parametrize("turn1, form", [
    ({"role": "assistant", "content": "look", "tool_calls": [tool_call(ARGS)]}, "tool_call"),
    ({"role": "assistant", "content": "", "tool_calls": [tool_call(json.dumps(ARGS))]}, "tool_call"),  # JSON string
    ({"role": "assistant", "content": '<tool_call>\n{"name": "zoom", "arguments": ' + json.dumps(ARGS)
      + "}\n</tool_call>"}, "hermes"),
    ({"role": "assistant", "content": "<think>the sign</think> <zoom>[10, 20.5, 110, 70]</zoom>"}, "tag"),
    ({"role": "assistant", "content": "<zoom> [ 1e1,2.05E1 , +110., 70 ] </zoom>"}, "tag"),
    ({"role": "assistant", "content": [{"type": "text", "text": "<zoom>[10,20.5,110,70]</zoom>"}]}, "tag"),
])
def test_every_zoom_spelling_parses_to_the_same_box(turn1, form):
    p = parse_completion(conv(turn1))
    assert (p.zoom, p.form, p.answer, p.format_error) == (COORDS, form, "B", None)


def test_user_message_may_carry_the_crop_for_tag_form_checkpoints():
    p = parse_completion(conv({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>"}, tool_role="user"))
    assert p.well_formed


def test_plain_string_completion():
    assert parse_completion("think <zoom>[1,2,3,4]</zoom> then <answer>A</answer>").well_formed
    assert parse_completion("<answer>A</answer> <zoom>[1,2,3,4]</zoom>").format_error == "<answer> before the zoom"


@pytest.mark.parametrize("turn1, error", [
    ({"role": "assistant", "content": "I will not zoom"}, "no zoom"),
    ({"role": "assistant", "content": "", "tool_calls": [tool_call(ARGS, name="crop")]}, "no zoom"),
    ({"role": "assistant", "content": "", "tool_calls": [tool_call({**ARGS, "scale": 2})]}, "exactly x1"),
    ({"role": "assistant", "content": "", "tool_calls": [tool_call({"x1": 1, "y1": 2, "x2": 3})]}, "exactly x1"),
    ({"role": "assistant", "content": "", "tool_calls": [tool_call({**ARGS, "x1": "10"})]}, "finite numbers"),
    ({"role": "assistant", "content": "", "tool_calls": [tool_call({**ARGS, "x1": True})]}, "finite numbers"),
    ({"role": "assistant", "content": "", "tool_calls": [tool_call({**ARGS, "x1": float("nan")})]}, "finite"),
    ({"role": "assistant", "content": "", "tool_calls": [tool_call({**ARGS, "x1": float("inf")})]}, "finite"),
    ({"role": "assistant", "content": "", "tool_calls": [tool_call("[1, 2, 3, 4]")]}, "must be an object"),
    ({"role": "assistant", "content": "", "tool_calls": [tool_call("{not json")]}, "not JSON"),
    ({"role": "assistant", "content": '<tool_call>{"name": "zoom", "arguments": {"x1": NaN, "y1": 0, "x2": 1, '
      '"y2": 1}}</tool_call>'}, "not JSON"),
    ({"role": "assistant", "content": '<tool_call>{"name": "zoom", "arguments": {"x1": Infinity, "y1": 0, '
      '"x2": 1, "y2": 1}}</tool_call>'}, "not JSON"),
    ({"role": "assistant", "content": "<zoom>[1, 2, nan, 4]</zoom>"}, "finite numbers"),
    ({"role": "assistant", "content": "<zoom>[1, 2, 1e999, 4]</zoom>"}, "finite numbers"),
    ({"role": "assistant", "content": "<zoom>[１, 2, 3, 4]</zoom>"}, "finite numbers"),  # full-width digit
    ({"role": "assistant", "content": "<zoom>[1, 2, 3]</zoom>"}, "finite numbers"),
    ({"role": "assistant", "content": "<zoom>1, 2, 3, 4</zoom>"}, "finite numbers"),
    ({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom><zoom>[1,2,3,4]</zoom>"}, "2 zoom actions"),
    ({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>", "tool_calls": [tool_call(ARGS)]}, "2 zoom actions"),
    ({"role": "assistant", "content": "", "tool_calls": [tool_call(ARGS), tool_call(ARGS)]}, "2 zoom actions"),
    ({"role": "assistant", "content": "<zoom>[1,2,3,4]"}, "unbalanced"),
    ({"role": "assistant", "content": "<tool_call>{\"name\": \"zoom\"}"}, "unbalanced"),
    ({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom> <answer>B</answer>"}, "<answer> in turn 1"),
])
def test_malformed_turn1_has_a_format_error(turn1, error):
    p = parse_completion(conv(turn1))
    assert p.format_error is not None and error in p.format_error


@pytest.mark.parametrize("completion, error", [
    (conv({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>"}, None), "no answer turn"),
    (conv({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>"}, "I see a tiger."), "no <answer>"),
    (conv({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>"}, "<answer>A</answer><answer>B</answer>"),
     "2 <answer> tags"),
    (conv({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>"}, "<answer></answer>"), "empty"),
    (conv({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>"}, "<answer>A"), "1 <answer> tags"),
    (conv({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>"}, "</answer>A<answer>"), "before"),
    (conv({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>"}, "<answer><b>A</b></answer>"), "tags inside"),
    (conv({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>"}, "<zoom>[1,2,3,4]</zoom><answer>A</answer>"),
     "zoom in turn 2"),
    ([{"role": "assistant", "content": "<answer>A</answer>"}], "no zoom"),
    ([{"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>"}, {"role": "assistant", "content": "<answer>A</answer>"}],
     "does not follow"),
    (conv({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>"}) + [{"role": "tool", "content": "x"}],
     "after the answer"),
    ([{"role": "user", "content": "hi"}] + conv({"role": "assistant", "content": "<zoom>[1,2,3,4]</zoom>"}),
     "does not start"),
    ([], "empty completion"),
    (["not a message"], "not a message list"),
    ([{"role": "tool", "content": "x"}], "no assistant message"),
])
def test_malformed_completions(completion, error):
    p = parse_completion(completion)
    assert p.format_error is not None and error in p.format_error


def test_answer_is_read_from_the_last_assistant_turn_even_without_zoom():
    p = parse_completion([{"role": "assistant", "content": "<answer> C </answer>"}])
    assert (p.answer, p.zoom, p.well_formed) == ("C", None, False)


def test_negative_and_out_of_range_coordinates_parse_and_clamp():
    p = parse_completion(conv({"role": "assistant", "content": "<zoom>[-20, -5, 50, 900]</zoom>"}))
    assert p.zoom == (-20.0, -5.0, 50.0, 900.0) and p.well_formed
    assert p.box(seen_size=(100, 100), original_size=(1000, 2000)) == Box(0, 0, 500, 2000)
    assert zoom_on_original(p.zoom, (100, 100), (1000, 2000)) == (0.0, 0.0, 500.0, 2000.0)
    with pytest.raises(BoxError):
        parse_completion(conv({"role": "assistant", "content": "<zoom>[200, 200, 300, 300]</zoom>"})).box(
            (100, 100), (1000, 1000))


def test_other_tool_calls_and_hermes_blocks_are_not_zooms():
    actions = zoom_actions('<tool_call>{"name": "search", "arguments": {}}</tool_call>',
                           [tool_call({"q": 1}, name="search")])
    assert actions == []


@pytest.mark.parametrize("pred, ok", [
    ("B", True), ("b", True), ("(B)", True), ("B.", True), ("B)", True), ("Ｂ", True),  # full-width letter
    ("A", False), ("E", False), ("Fiji", True), (" fiji. ", True), ('"Fiji"', True), ("FIJI", True),
    ("Fi\u200bji", True),  # zero-width space
    ("B. Fiji", True), ("b) fiji", True), ("A. Fiji", False), ("B. evian", False), ("B or A", False),
    ("A B C D", False), ("Fiji water", True),  # one option named, as VLMEvalKit reads it
        ("Fiji or evian", False), ("", False), (None, False),
])
def test_answer_matching_with_options(pred, ok):
    assert answer_matches(pred, ["evian", "Fiji", "Poland Spring", "Dasani"], "Fiji", "B") is ok


def test_answer_matching_options_that_look_like_letters_and_open_questions():
    opts = ["A. Lincoln", "G. Washington"]
    assert answer_matches("A. Lincoln", opts, "A. Lincoln", "A")
    assert not answer_matches("G. Washington", opts, "A. Lincoln", "A")
    assert answer_matches("1", ["1", "2", "3"], "1", "A")  # digits are option text, not letters
    assert answer_matches("Stand-By", [], "STAND-BY") and not answer_matches("B", [], "STAND-BY")
    assert answer_matches("C", ["x", "y", "z"], "z")  # letter derived from the options when not stored


def test_parse_answer_and_normalize():
    assert parse_answer("reasoning <answer>\n  10 minutes \n</answer>") == ("10 minutes", None)
    assert parse_answer("no tags") == (None, "no <answer>")
    assert normalize_answer("  Coca‑Cola  ") == normalize_answer("coca‑cola")


finite = st.floats(allow_nan=False, allow_infinity=False, width=64)
sizes = st.tuples(st.integers(1, 10000), st.integers(1, 10000))


@given(st.tuples(finite, finite, finite, finite), sizes, sizes)
def test_plain_float_mapping_equals_the_canonical_converter(xyxy, seen, original):
    try:
        want = Box.from_model(list(xyxy), resized_size=seen, original_size=original).as_tuple()
    except BoxError:
        want = None
    assert zoom_on_original(xyxy, seen, original) == want


@given(st.tuples(finite, finite, finite, finite))
def test_the_three_spellings_agree(xyxy):
    args = dict(zip(("x1", "y1", "x2", "y2"), xyxy))
    forms = [
        {"role": "assistant", "content": "", "tool_calls": [tool_call(args)]},
        {"role": "assistant", "content": "<tool_call>" + json.dumps({"name": "zoom", "arguments": args}) + "</tool_call>"},
        {"role": "assistant", "content": "<zoom>[" + ", ".join(repr(v) for v in xyxy) + "]</zoom>"},
    ]
    parsed = [parse_completion(conv(f)) for f in forms]
    assert all(p.zoom == tuple(float(v) for v in xyxy) and p.well_formed for p in parsed)


@given(st.text(max_size=300))
def test_text_without_a_zoom_is_never_well_formed(text):
    p = parse_completion(text)
    if "<zoom>" not in text and "<tool_call>" not in text:
        assert not p.well_formed
    p2 = parse_completion(conv({"role": "assistant", "content": text}))
    if "<zoom>" not in text and "<tool_call>" not in text:
        assert not p2.well_formed and p2.zoom is None


@given(st.lists(st.sampled_from(["<zoom>", "</zoom>", "[1,2,3,4]", "<answer>", "</answer>", "A", " ",
                                 "<tool_call>", "</tool_call>", "nan", ","]), max_size=12))
def test_tag_soup_never_crashes_and_well_formed_means_one_zoom_one_answer(parts):
    text = "".join(parts)
    p = parse_completion(text)
    if p.well_formed:
        assert len(zoom_actions(text)) == 1 and text.count("<answer>") == 1
        assert all(math.isfinite(v) for v in p.zoom)
