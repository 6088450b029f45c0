"""The coarse-to-fine rollout: the zoom tool's geometry, its schema for TRL, and both turns with ``generate``."""

from __future__ import annotations

import inspect
import io
import json

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ergo_data.core.boxes import Box
from ergo_data.core.vision import budget_pixels, resized_size, vision_tokens
from ergo_train.models.processor import vision_token_ids
from ergo_train.models.tiny import build_tiny
from ergo_train.rollout.env import (
    ANSWER_INSTRUCTION,
    SYSTEM_PROMPT,
    ZoomEnv,
    build_turn1_messages,
    build_turn1_prompt,
    row_image,
    run_two_turns,
    turn2_text,
    use_tool_chat_template,
    zoom_env_factory,
)
from ergo_train.rollout.parsing import parse_completion
from ergo_train.rollout.zoom import fit_aspect
from tests.support.paths import EXAMPLES
from tests.support.scripted import scripted_first_turn

BUDGET = budget_pixels(64)


def _row(size=(1200, 900), **extra):
    image = Image.new("RGB", size, (40, 90, 160))
    return {"id": "t/1", "image": image, "question": "What colour is the car?", "options": ["red", "blue"],
            "answer": "blue", "answer_letter": "B", "width": size[0], "height": size[1], **extra}


def _env(size=(1200, 900)) -> ZoomEnv:
    env = zoom_env_factory(BUDGET)()
    env.reset(**_row(size))
    return env


def _expected_crop_size(xyxy, size):
    box = Box.from_model(xyxy, resized_size=resized_size(size, BUDGET), original_size=size)
    x1, y1, x2, y2 = fit_aspect(box, size).integer(size)  # slivers are widened (ergo_train.rollout.zoom)
    return box, resized_size((x2 - x1, y2 - y1), BUDGET)


def test_zoom_maps_the_box_to_the_original_and_crops_at_full_resolution():
    env = _env((4000, 3000))
    assert env.seen_size == resized_size((4000, 3000), BUDGET) and env.vision_tokens == [vision_tokens((4000, 3000),
                                                                                                       BUDGET)]
    blocks = env.zoom(10, 20, 60, 50)
    box, size = _expected_crop_size([10, 20, 60, 50], (4000, 3000))
    assert env.zoom_ok and env.zoom_box == box and env.zoom_error is None
    assert blocks[0]["type"] == "image" and blocks[0]["image"].size == size == env.crop_size
    assert env.vision_tokens[1] == size[0] * size[1] // (28 * 28)
    assert env.zoom_area_frac == pytest.approx(box.area / (4000 * 3000))
    assert blocks[1] == {"type": "text", "text": turn2_text("What colour is the car?", ["red", "blue"])}
    assert "A. red\nB. blue" in blocks[1]["text"] and blocks[1]["text"].endswith(ANSWER_INSTRUCTION)


def test_partly_outside_box_is_clamped_and_stays_well_formed():
    env = _env()
    env.zoom(-30, -30, 40, 40)
    assert env.zoom_ok and env.zoom_box.x1 == 0 and env.zoom_box.y1 == 0


@pytest.mark.parametrize("args, error", [
    ((300, 300, 400, 400), "outside"),  # wholly outside the 252 x 168 view
    ((50, 50, 10, 10), "degenerate or inverted"),
    (("left", 0, 10, 10), "not 4 finite numbers"),  # the one parser the rewards use
    ((float("nan"), 0, 10, 10), "not 4 finite numbers"),
])
def test_malformed_zoom_still_returns_the_whole_view_and_an_error(args, error):
    env = _env()
    blocks = env.zoom(*args)
    assert not env.zoom_ok and env.zoom_box is None and error in env.zoom_error
    assert blocks[0]["image"].size == env.seen_size  # an image always comes back (docs/trl-pitfalls.md, 2)
    assert blocks[1]["text"].startswith("zoom error: ") and ANSWER_INSTRUCTION in blocks[1]["text"]
    assert env.vision_tokens == [54, 54]


def test_a_sliver_zoom_is_widened_so_qwen_accepts_the_crop():
    env = _env((4000, 3000))
    blocks = env.zoom(10, 10, 10.05, 160)  # 1 px wide at full resolution: aspect ratio > 200
    w, h = blocks[0]["image"].size
    assert env.zoom_ok and max(w, h) / min(w, h) <= 100 and (w, h) == env.crop_size


def test_zoom_before_reset_and_rows_without_image_are_errors():
    with pytest.raises(RuntimeError, match="before reset"):
        ZoomEnv(BUDGET).zoom(0, 0, 1, 1)
    with pytest.raises(ValueError, match="'t/2'.*needs 'image'"):
        ZoomEnv(BUDGET).reset(id="t/2", question="Q?", image=None)


@settings(max_examples=60)
@given(w=st.integers(60, 5000), h=st.integers(60, 5000),
       box=st.lists(st.floats(-50, 400, allow_nan=False), min_size=4, max_size=4))
def test_the_tool_always_returns_an_image_within_the_budget(w, h, box):
    if max(w, h) / min(w, h) > 150:
        return
    env = ZoomEnv(BUDGET)
    env.reset(image=Image.new("RGB", (w, h)), question="Q?", options=[], answer="x")
    blocks = env.zoom(*box)
    image = blocks[0]["image"]
    assert image.size[0] % 28 == 0 and image.size[1] % 28 == 0
    assert image.size[0] * image.size[1] <= BUDGET or min(image.size) == 28  # Qwen floors a thin side at 28
    if env.zoom_ok:
        assert env.zoom_box.inside((w, h))
        assert image.size == _expected_crop_size(box, (w, h))[1]
    else:
        assert image.size == env.seen_size


def test_the_env_exposes_one_tool_with_a_schema_trl_can_read():
    from transformers.utils import get_json_schema

    tools = [n for n, _ in inspect.getmembers(ZoomEnv, predicate=inspect.isfunction)
             if n not in ("reset", "get_reward") and not n.startswith("_")]  # TRL's rule for environment tools
    assert tools == ["zoom"]
    schema = get_json_schema(ZoomEnv(BUDGET).zoom)["function"]
    assert schema["name"] == "zoom" and schema["parameters"]["required"] == ["x1", "y1", "x2", "y2"]
    assert all(schema["parameters"]["properties"][k]["type"] == "number" for k in ("x1", "y1", "x2", "y2"))


def test_row_image_reads_every_row_layout(tmp_path):
    path = EXAMPLES / "vstar" / "doll.JPG"
    data = path.read_bytes()
    from_struct = row_image({"bytes": None, "path": str(path)})
    assert from_struct.mode == "RGB"
    assert row_image({"bytes": data, "path": None}).size == from_struct.size == row_image(str(path)).size
    assert row_image(Image.open(io.BytesIO(data)).convert("L")).mode == "RGB"
    with pytest.raises(ValueError, match="neither bytes nor path"):
        row_image({"bytes": None, "path": None})
    with pytest.raises(TypeError):
        row_image(42)


def test_turn1_prompt_for_trl_and_messages_for_generate_say_the_same():
    row = _row()
    prompt = build_turn1_prompt(row, BUDGET)
    messages = build_turn1_messages(row, BUDGET)
    assert prompt[0] == {"role": "system", "content": SYSTEM_PROMPT}
    image_block, text_block = messages[1]["content"]
    assert image_block["image"].size == resized_size(row["image"].size, BUDGET)
    assert text_block["text"] == prompt[1]["content"]
    assert "252x168" in prompt[1]["content"] and "red" not in prompt[1]["content"]


# ---- both turns with the tiny model -------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny():
    from trl.chat_template_utils import supports_tool_calling

    model, processor = build_tiny(max_pixels=BUDGET)
    processor.chat_template = None
    processor.tokenizer.chat_template = None
    use_tool_chat_template(processor)
    assert supports_tool_calling(processor)
    return model, processor


def _gen(processor):
    # a random model could sample <tool_call> / <zoom>: seeded, so each test sees the same text
    torch.manual_seed(0)
    return {"do_sample": True, "suppress_tokens": vision_token_ids(processor.tokenizer)}


@pytest.mark.integration
def test_two_turns_with_a_zoom_call(tiny):
    model, processor = tiny
    call = {"name": "zoom", "arguments": {"x1": 20, "y1": 10, "x2": 120, "y2": 90}}
    script = f"I look at the car. <tool_call>\n{json.dumps(call)}\n</tool_call><|im_end|>"
    row = _row((4000, 3000))
    with scripted_first_turn(model, processor.tokenizer, [script]):
        res = run_two_turns(model, processor, row, BUDGET, max_new_tokens=64, generate_kwargs=_gen(processor))
    box, size = _expected_crop_size([20, 10, 120, 90], (4000, 3000))
    assert res.zoom_args == [20.0, 10.0, 120.0, 90.0] and res.zoom.ok and res.zoom.box == box
    assert res.zoom.image.size == size
    assert res.vision_tokens == [vision_tokens((4000, 3000), BUDGET), size[0] * size[1] // 784]
    assert [m["role"] for m in res.completion] == ["assistant", "tool", "assistant"]
    assert res.turn2_text is not None and res.final_text == res.turn2_text
    assert 0 < res.generated_tokens
    parsed = parse_completion(res.completion)  # the rewards read the inference completion the same way
    assert parsed.zoom == (20.0, 10.0, 120.0, 90.0) and parsed.zoom_error is None


@pytest.mark.integration
def test_tag_form_zoom_is_accepted(tiny):
    model, processor = tiny
    with scripted_first_turn(model, processor.tokenizer, ["<zoom>[0, 0, 126, 84]</zoom><|im_end|>"]):
        res = run_two_turns(model, processor, _row(), BUDGET, max_new_tokens=40, generate_kwargs=_gen(processor))
    assert res.zoom.ok and res.zoom.box.as_tuple() == pytest.approx((0, 0, 600, 450))
    assert res.completion[0]["role"] == "assistant" and res.completion[1]["role"] == "tool"


@pytest.mark.integration
def test_malformed_zoom_gets_the_whole_view_and_the_parser_error(tiny):
    model, processor = tiny
    with scripted_first_turn(model, processor.tokenizer, ["<zoom>[1, 2, 3]</zoom><|im_end|>"]):
        res = run_two_turns(model, processor, _row(), BUDGET, max_new_tokens=40, generate_kwargs=_gen(processor))
    assert res.zoom is not None and not res.zoom.ok and res.zoom_args is None
    assert res.zoom.image.size == (252, 168) and "not 4 finite numbers" in res.zoom.error
    assert res.completion[1]["content"][1]["text"].startswith("zoom error: zoom: [1, 2, 3]")


@pytest.mark.integration
def test_no_zoom_call_ends_after_turn_one(tiny):
    model, processor = tiny
    res = run_two_turns(model, processor, _row(), BUDGET, max_new_tokens=8, generate_kwargs=_gen(processor))
    assert res.zoom is None and res.turn2_text is None and res.final_text == res.turn1_text
    assert res.vision_tokens == [54] and len(res.completion) == 1


@pytest.mark.integration
def test_unreadable_tool_call_text_runs_no_tool_as_in_training(tiny):
    model, processor = tiny
    with scripted_first_turn(model, processor.tokenizer, ['<tool_call>\n{"name": "zoom", "argu<|im_end|>']):
        res = run_two_turns(model, processor, _row(), BUDGET, max_new_tokens=40, generate_kwargs=_gen(processor))
    assert res.zoom is None and len(res.completion) == 1
    assert parse_completion(res.completion).format_error is not None  # and the rewards give format 0
