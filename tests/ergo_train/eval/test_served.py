"""Served models: the tiny model behind a real OpenAI-compatible HTTP server gives the same per-item predictions
as in-process inference (same prompts, coordinates and crops); the client's faults are bounded and named."""

from __future__ import annotations

import json
import math

import pytest
from PIL import Image

from ergo_data.core.vision import resized_size
from ergo_train.eval.chat_server import serve_in_thread
from ergo_train.eval.evaluate import EvalSettings, evaluate, evaluate_item, in_process_chat, load_eval_model
from ergo_train.eval.loaders import BenchItem, load_bench
from ergo_train.models.served import ServedChat, ServedError
from ergo_train.rewards.judges import JudgeCache, RegionQuery, VLMJudge, judge_regions
from ergo_train.rollout.chat import TransformersChat
from tests.support.paths import EXAMPLES
from tests.support.scripted import scripted_first_turn
from tests.support.served import fault_server, reply, served_tiny_process

pytestmark = pytest.mark.integration
MAX_PIXELS = 64 * 28 * 28
SAME = ("id", "mode", "status", "correct", "pred_letter", "output", "zoom_args", "pred_box", "vision_tokens",
        "vision_tokens_turns", "options", "answer_letter")


@pytest.fixture(scope="module")
def tiny():
    return load_eval_model("tiny", MAX_PIXELS)


def test_served_tiny_model_gives_the_in_process_predictions_on_the_examples(tiny):
    settings = EvalSettings(max_pixels=MAX_PIXELS, max_new_tokens=12)
    modes = ["direct", "coarse_to_fine", "oracle_crop"]
    items = list(load_bench("vstar", EXAMPLES / "vstar", shuffle_seed=3))
    local = evaluate(items, in_process_chat(*tiny, settings), modes, settings, seed=3)
    with served_tiny_process(MAX_PIXELS) as api_base:  # a separate process on a free port of 127.0.0.1
        chat = ServedChat(api_base, "tiny", max_new_tokens=12, max_concurrency=4)
        served = evaluate(items, chat, modes, EvalSettings(max_pixels=MAX_PIXELS, max_new_tokens=12, concurrency=4),
                          seed=3)
        assert chat.requests >= len(items) * 3 and chat.retried == 0
    assert len(local) == len(served) == 8 * 3
    for a, b in zip(local, served):
        assert {k: a.get(k) for k in SAME} == {k: b.get(k) for k in SAME}, a["id"]
    assert {r["status"] for r in local} <= {"ok", "unparseable"}


def test_served_zoom_path_sends_the_same_crop_and_gets_the_same_answer(tiny):
    """A forced tool call in turn 1 (the random model never writes one): the crop travels as a data URL inside
    the tool message, turn 2 runs on the server; everything matches the in-process rollout."""
    model, processor = tiny
    item = next(i for i in load_bench("vstar", EXAMPLES / "vstar") if i.id == "vstar/signicade")
    image = item.load_image()
    seen = resized_size(image.size, MAX_PIXELS)
    x1, y1, x2, y2 = item.gt_box.to_model(seen, image.size)
    call = {"name": "zoom", "arguments": {"x1": math.floor(x1), "y1": math.floor(y1), "x2": math.ceil(x2),
                                          "y2": math.ceil(y2)}}
    script = f"Near the sign. <tool_call>\n{json.dumps(call)}\n</tool_call><|im_end|>"
    settings = EvalSettings(max_pixels=MAX_PIXELS, max_new_tokens=64)
    server, api_base = serve_in_thread(TransformersChat(model, processor), "tiny")
    try:
        with scripted_first_turn(model, processor.tokenizer, [script]):
            local = evaluate_item(item, "coarse_to_fine", in_process_chat(model, processor, settings), settings, image)
            chat = ServedChat(api_base, "tiny", max_new_tokens=64)
            served = evaluate_item(item, "coarse_to_fine", chat, settings, image)
    finally:
        server.shutdown()
    assert local["zoom_ok"] and local["zoom_args"] == list(call["arguments"].values())
    assert local["vision_tokens_turns"][1] > 0
    for k in SAME:
        assert local.get(k) == served.get(k), k
    body = chat.body([{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (56, 28))}]}])
    assert body["messages"][0]["content"][0]["image_url"]["url"].startswith("data:image/png;base64,")


def test_served_region_judge_agrees_with_the_in_process_judge(tiny):
    model, processor = tiny
    server, api_base = serve_in_thread(TransformersChat(model, processor), "tiny")
    items = [i for i in load_bench("vstar", EXAMPLES / "vstar")][:4]
    queries = [RegionQuery(it.load_image(), it.gt_box, it.question, it.options, it.answer, it.answer_letter, it.id)
               for it in items]
    try:
        local = VLMJudge((model, processor), max_pixels=MAX_PIXELS).judge_batch(
            [_request(q) for q in queries])
        served_judge = VLMJudge("tiny", api_base=api_base, max_pixels=MAX_PIXELS)
        served = judge_regions(served_judge, queries, JudgeCache())
    finally:
        server.shutdown()
    # the served judge sees the top-20 first tokens (vLLM's default --max-logprobs): where an option letter is
    # among them it picks what the in-process judge picks; where all are, the confidence is the same too
    compared = 0
    for a, b in zip(local, served):
        if b.detail.startswith("no option letter"):
            assert not b.correct and b.confidence == 0.0
            continue
        compared += 1
        assert (a.correct, b.detail.split(";")[0]) == (b.correct, a.detail)
        if "not among" not in b.detail:
            assert b.confidence == pytest.approx(a.confidence, abs=1e-4)
    assert compared >= 1


def _request(q: RegionQuery):
    from ergo_train.rewards.judges import JudgeRequest
    from ergo_train.rollout.zoom import crop_at_budget

    return JudgeRequest(crop_at_budget(q.image, q.box, MAX_PIXELS), q.question, q.options, q.answer, q.answer_letter,
                        q.sample_id, q.box)


def test_served_difficulty_profiles_every_sample(tiny):
    from ergo_data.pipeline.registry import stage_registry
    from ergo_train.stages import difficulty  # noqa: F401 - registers the stage

    model, processor = tiny
    server, api_base = serve_in_thread(TransformersChat(model, processor), "tiny")
    try:
        stage = stage_registry.get("difficulty")(model="tiny", api_base=api_base, k=2, budget_tokens=64,
                                                 max_new_tokens=8)
        it = next(iter(load_bench("vstar", EXAMPLES / "vstar")))
        row = {"id": it.id, "image": {"bytes": None, "path": it.image_path}, "question": it.question,
               "options": it.options, "answer": it.answer, "answer_letter": it.answer_letter,
               "boxes": [b.to_record("x", "annotation") for b in it.boxes]}
        out = stage.profile(row)
    finally:
        server.shutdown()
    assert out["difficulty_k"] == 2 and 0.0 <= out["acc_rate"] <= 1.0 and out["zero_variance"] in (True, False)


# ---- faults: each produced by a real server -----------------------------------------------------------
def _item():
    import io

    buf = io.BytesIO()
    Image.new("RGB", (400, 300), (200, 10, 10)).save(buf, "PNG")
    return BenchItem("t/1", "t", "What colour?", ["red", "blue"], "A", None, image_bytes=buf.getvalue())


def test_429_and_503_are_retried_with_backoff_then_answered():
    with fault_server([(429, {"error": {"message": "slow down"}}), (503, {"error": "busy"}),
                       (200, reply("A"))]) as (api_base, bodies):
        chat = ServedChat(api_base, "m", retries=3, backoff_s=0.01)
        rec = evaluate_item(_item(), "direct", chat, EvalSettings(max_pixels=MAX_PIXELS))
    assert (rec["status"], rec["correct"], chat.requests, chat.retried) == ("ok", True, 3, 2)
    assert len(bodies) == 3 and bodies[0]["model"] == "m" and bodies[0]["temperature"] == 0.0


def test_failures_count_wrong_with_their_reason():
    s = EvalSettings(max_pixels=MAX_PIXELS)
    with fault_server([(503, {"error": {"message": "overloaded"}})]) as (api_base, bodies):
        rec = evaluate_item(_item(), "direct", ServedChat(api_base, "m", retries=2, backoff_s=0.01), s)
    assert (rec["status"], rec["correct"], len(bodies)) == ("server_error", False, 3)
    assert "http_503" in rec["error"] and "after 3 tries" in rec["error"] and "overloaded" in rec["error"]
    with fault_server([(400, {"error": {"message": "bad image"}})]) as (api_base, bodies):  # not retried
        rec = evaluate_item(_item(), "direct", ServedChat(api_base, "m", retries=3), s)
    assert (rec["status"], len(bodies)) == ("server_error", 1) and "http_400" in rec["error"]
    with fault_server([(200, reply("A"))], delay_s=2.0) as (api_base, _):
        rec = evaluate_item(_item(), "direct", ServedChat(api_base, "m", retries=0, timeout_s=0.3), s)
    assert (rec["status"], rec["correct"]) == ("timeout", False) and "no reply within 0.3 s" in rec["error"]
    with fault_server([(200, {"no": "choices"})]) as (api_base, _):
        rec = evaluate_item(_item(), "direct", ServedChat(api_base, "m"), s)
    assert rec["status"] == "server_error" and "bad_response" in rec["error"]
    with pytest.raises(ServedError, match="connect"):
        ServedChat("http://127.0.0.1:9/v1", "m", retries=0).complete([{"role": "user", "content": "x"}])
