"""Region judges (stored labels, OCR, tiny VLM), their cache, and the region counterfactuals."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFont

from ergo_data.core.boxes import Box
from ergo_data.core.errors import RecipeError
from ergo_data.pipeline.registry import stage_registry
from ergo_train.rewards.judges import (
    JudgeCache,
    JudgeError,
    JudgeRequest,
    RegionQuery,
    StoredLabelJudge,
    Verdict,
    build_judge,
    judge_regions,
)
from ergo_train.rewards.validation import load_samples
from ergo_train.rollout.env import row_image
from ergo_train.stages.counterfactual import counterfactual_views, judge_counterfactuals
from tests.support.paths import DATA, ROOT

QUEUE_BOARD = Box(1567, 1518, 1742, 1672)  # the V* box of examples/vstar/queue_time.jpg


@pytest.fixture(scope="module")
def samples():
    return load_samples(DATA / "samples_handwritten.parquet", image_root=ROOT)


def lab(sid, ok, box):
    return {"id": sid, "region_answerable": ok, "x1": box[0], "y1": box[1], "x2": box[2], "y2": box[3]}


def test_stored_judge_rules():
    judge = StoredLabelJudge([lab("s", True, (100, 100, 200, 200)), lab("s", False, (100, 100, 200, 135)),
                              lab("t", True, (0, 0, 10, 10)), lab("t", False, (0, 0, 10, 10)),
                              lab("t", False, (0.1, 0, 10, 10)), lab("u", None, (0, 0, 10, 10))])

    def ask(sid, box):
        return judge(None, "q", ["a", "b"], "a", sample_id=sid, box=Box(*box))

    assert ask("s", (90, 90, 210, 210)).correct  # covers the answerable region
    assert ask("s", (100, 100, 200, 135)) == Verdict(False, pytest.approx(0.35), ask("s", (100, 100, 200, 135)).detail)
    assert not ask("s", (300, 300, 400, 400)).correct and ask("s", (300, 300, 400, 400)).confidence == 0.0
    v = ask("t", (0, 0, 20, 20))  # three annotators on one region, two say no: majority no
    assert not v.correct and v.confidence == pytest.approx(1 / 3)
    with pytest.raises(JudgeError, match="sample 'u' has no human region label"):
        ask("u", (0, 0, 5, 5))
    with pytest.raises(JudgeError, match="bad human box"):
        StoredLabelJudge([lab("v", True, (5, 5, 1, 1))])


def test_build_judge_errors():
    with pytest.raises(JudgeError, match="unknown judge 'gpt'; valid judges: ocr, stored, vlm"):
        build_judge("gpt")
    with pytest.raises(JudgeError, match="judge 'stored'"):
        build_judge({"type": "stored"})  # no labels


def test_cache_keys_memory_and_disk(tmp_path):
    key = JudgeCache.key("j", "sha", Box(10.2, 10, 20, 20), "q?", ["a"], "a")
    assert key == JudgeCache.key("j", "sha", Box(10.7, 10, 19.5, 20), "q?", ["a"], "a")  # same crop pixels
    others = {JudgeCache.key("j", "sha", Box(11.2, 10, 20, 20), "q?", ["a"], "a"),
              JudgeCache.key("j", "sha", Box(10, 10, 20, 20), "other?", ["a"], "a"),
              JudgeCache.key("j", "sha2", Box(10, 10, 20, 20), "q?", ["a"], "a"),
              JudgeCache.key("k", "sha", Box(10, 10, 20, 20), "q?", ["a"], "a"),
              JudgeCache.key("j", "sha", Box(10, 10, 20, 20), "q?", ["a"], "a", view="masked")}
    assert key not in others and len(others) == 5
    cache = JudgeCache(tmp_path / "v.sqlite")
    cache.put(key, Verdict(True, 0.7, "seen"))
    again = JudgeCache(tmp_path / "v.sqlite")  # a later run reads it back
    assert again.get(key) == Verdict(True, 0.7, "seen") and again.get("nope") is None
    assert (again.hits, again.misses) == (1, 1)
    small = JudgeCache(max_memory=2)
    for k in "abc":
        small.put(k, Verdict(True))
    assert list(small.memory) == ["b", "c"]


def test_judge_regions_crops_the_original_and_caches(samples):
    s = samples["examples/queue_time"]
    judge = StoredLabelJudge([lab(s["id"], True, QUEUE_BOARD.as_tuple())])
    cache = JudgeCache()
    q = RegionQuery(image=s["image"], box=QUEUE_BOARD.expand(0.1), question=s["question"], options=s["options"],
                    answer=s["answer"], answer_letter=s["answer_letter"], sample_id=s["id"])
    assert [v.correct for v in judge_regions(judge, [q, q], cache)] == [True, True]
    assert (cache.misses, cache.hits) == (1, 1)
    assert judge_regions(judge, [q], cache)[0].correct and cache.hits == 2


@pytest.mark.integration
def test_ocr_judge_reads_the_board_only_in_the_right_crop(samples):
    """Real RapidOCR on the queue_time board: the crop names '10 minutes'; a crop beside it reads nothing useful."""
    s = samples["examples/queue_time"]
    judge = build_judge("ocr")
    board = RegionQuery(image=s["image"], box=QUEUE_BOARD, question=s["question"], options=s["options"],
                        answer=s["answer"], answer_letter=s["answer_letter"], sample_id=s["id"])
    beside = RegionQuery(**{**board.__dict__, "box": Box(1917, 1518, 2092, 1672)})
    on_board, off_board = judge_regions(judge, [board, beside])
    assert on_board.correct and on_board.confidence == 1.0, on_board.detail
    assert not off_board.correct and off_board.confidence < 1.0


@pytest.mark.integration
def test_ocr_judge_open_question_on_rendered_text():
    page = Image.new("RGB", (420, 120), "white")
    ImageDraw.Draw(page).text((20, 30), "EXIT 42", fill="black", font=ImageFont.load_default(size=48))
    judge = build_judge("ocr")
    assert judge(page, "What is written?", [], "Exit 42").correct
    assert not judge(page, "What is written?", [], "Entrance").correct
    assert not judge(Image.new("RGB", (200, 100), "white"), "What is written?", [], "x").correct


def test_counterfactual_views_mask_the_region():
    img = Image.new("RGB", (2000, 1000), (10, 200, 30))
    ImageDraw.Draw(img).rectangle([500, 400, 700, 600], fill=(250, 0, 0))
    views = counterfactual_views(img, Box(500, 400, 700, 600), max_pixels=256 * 28 * 28, low_max_pixels=64 * 28 * 28)
    full, masked = np.asarray(views["full"]), np.asarray(views["masked"])
    red = (full[..., 0] > 200) & (full[..., 1] < 50)
    assert red.sum() > 0 and ((np.asarray(views["masked"])[..., 0] > 200) & (masked[..., 1] < 50)).sum() == 0
    assert np.asarray(views["crop"])[..., 0].mean() > 240  # the crop is the red square
    assert views["low"].size[0] < views["full"].size[0]


def test_counterfactual_stage_is_registered_and_checks_its_judge():
    cls = stage_registry.get("counterfactual")
    with pytest.raises(RecipeError, match="does not look at images"):
        cls(judge={"type": "stored", "labels": "x.parquet"})
    with pytest.raises(RecipeError, match="unknown judge 'gpt'"):
        cls(judge="gpt")
    with pytest.raises(RecipeError, match="keep"):
        cls(judge="ocr", keep="sometimes")


@pytest.mark.integration
def test_counterfactual_stage_keeps_the_board_question_as_needing_zoom(samples):
    """Real OCR: '10 minutes' is read in the board crop, not in the whole image at a small budget."""
    import pyarrow as pa

    s = dict(samples["examples/queue_time"])
    no_box = {**samples["examples/signicade"], "boxes": []}
    stage = stage_registry.get("counterfactual")(judge={"type": "ocr"}, max_pixels=256 * 28 * 28,
                                                 low_max_pixels=64 * 28 * 28, keep="needs_zoom")
    res = stage.process(pa.Table.from_pylist([s, no_box]))
    kept = res.kept.to_pylist()
    assert [r["id"] for r in kept] == ["examples/queue_time"]
    assert kept[0]["cf_crop"] and not kept[0]["cf_full"] and kept[0]["cf_needs_zoom"]
    assert [(r["id"], r["reason"]) for r in res.rejected] == [("examples/signicade", "no_region")]
    with pytest.raises(JudgeError, match="does not look at images"):
        judge_counterfactuals(StoredLabelJudge([lab(s["id"], True, (0, 0, 1, 1))]), s)


# ---- the VLM judge on the tiny random Qwen2.5-VL: plumbing only (its verdicts are random) ----------------
@pytest.fixture(scope="module")
def tiny_judges():
    from ergo_train.rewards.judges import VLMJudge

    batched = build_judge({"type": "vlm", "model": "tiny", "max_pixels": 64 * 28 * 28, "batch_size": 4})
    one_by_one = VLMJudge((batched.model, batched.processor), max_pixels=64 * 28 * 28, batch_size=1)
    return batched, one_by_one


@pytest.mark.integration
def test_vlm_judge_batched_equals_unbatched(tiny_judges, samples):
    batched, one_by_one = tiny_judges
    s = samples["examples/signicade"]
    img = row_image(s["image"])
    rng = np.random.default_rng(0)
    crops = [img.crop(Box(2193, 1350, 2285, 1482).integer(img.size)),
             Image.fromarray(rng.integers(0, 255, (90, 150, 3), dtype=np.uint8))]
    reqs = [JudgeRequest(c, s["question"], s["options"], s["answer"], s["answer_letter"]) for c in crops]
    reqs.append(JudgeRequest(crops[1], "What colour is it?", [], "red"))  # open question: greedy generation
    a, b = batched.judge_batch(reqs), one_by_one.judge_batch(reqs)
    for va, vb in zip(a[:2], b[:2]):
        assert va.correct == vb.correct and va.confidence == pytest.approx(vb.confidence, abs=1e-5)
        assert 0.0 < va.confidence < 1.0 and va.correct == (va.detail == "picked D")
    assert a[2].confidence is None and a[2].detail == b[2].detail
    assert batched.fingerprint == f"vlm:tiny:{64 * 28 * 28}"
