"""Evaluation with the tiny Qwen2.5-VL: honest counting of failures, the three modes end to end, `ergo eval`.

A random model never writes a tool call or an answer (docs/trl-pitfalls.md, 10), so tests that need a given completion
use constrained decoding (transformers' ``prefix_allowed_tokens_fn``): the real model, processor, chat
template, generate loop and TRL parser all run; only the choice of each next token is forced.
"""

from __future__ import annotations

import io
import json
import math

import pytest
from PIL import Image
from typer.testing import CliRunner

from ergo_data.cli.app import app
from ergo_data.core.boxes import Box
from ergo_data.core.vision import crop_vision_tokens, resized_size, vision_tokens
from ergo_train.eval.evaluate import (
    EvalSettings,
    evaluate,
    evaluate_item,
    in_process_chat,
    load_eval_model,
    parse_choice,
)
from ergo_train.eval.loaders import BadItem, BenchItem, load_bench
from ergo_train.eval.report import STATUSES, summarize, write_report
from ergo_train.models.tiny import save_tiny
from ergo_train.rollout.zoom import crop_at_budget
from tests.support.paths import EXAMPLES

MAX_PIXELS = 64 * 28 * 28  # small budget: 54 tokens for a 4:3 image, fast on CPU
runner = CliRunner()


class ScriptedDecoding:
    """``prefix_allowed_tokens_fn`` that allows only the next token of ``texts[k]`` in the k-th ``generate``."""

    def __init__(self, tokenizer, texts: list[str]) -> None:
        self.end = tokenizer.convert_tokens_to_ids("<|im_end|>")
        self.scripts = [tokenizer.encode(t, add_special_tokens=False) + [self.end] for t in texts]
        self.call, self.last_len, self.start = -1, -10, 0

    def __call__(self, batch_id, input_ids) -> list[int]:
        n = int(input_ids.shape[-1])
        if n != self.last_len + 1:  # a new generate call (each step adds exactly one token)
            self.call, self.start = self.call + 1, n
        self.last_len = n
        script = self.scripts[min(self.call, len(self.scripts) - 1)]
        k = n - self.start
        return [script[k] if k < len(script) else self.end]


@pytest.fixture(scope="module")
def tiny():
    return load_eval_model("tiny", MAX_PIXELS)


def scripted(tiny, *texts: str, **kw) -> EvalSettings:
    kw.setdefault("max_new_tokens", 80)
    return EvalSettings(max_pixels=MAX_PIXELS, **kw,
                        generate_kwargs={"prefix_allowed_tokens_fn": ScriptedDecoding(tiny[1].tokenizer, list(texts))})


def run_item(tiny, item, mode, settings, image=None):
    return evaluate_item(item, mode, in_process_chat(*tiny, settings), settings, image)


def png(size, color=(250, 250, 250)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


CAR = Box(600, 450, 900, 675)


def synth_item(item_id="t/1", size=(1200, 900), data: bytes | None = None, boxes=(CAR,)):
    return BenchItem(id=item_id, bench="t", question="What colour is the car?", options=["red", "blue", "green"],
                     answer_letter="B", category="colour", boxes=list(boxes),
                     image_bytes=png(size) if data is None else data)


def tool_call(xyxy) -> str:
    args = dict(zip(("x1", "y1", "x2", "y2"), xyxy))
    return '<tool_call>\n{"name": "zoom", "arguments": ' + json.dumps(args) + "}\n</tool_call>"


# ---- counting -----------------------------------------------------------------------------------
@pytest.mark.integration
def test_every_failure_is_wrong_listed_and_kept_in_the_denominator(tiny, tmp_path):
    _model, _proc = tiny
    runs = [
        (BadItem("t/bad", "t", "bad_options", "t.json: duplicate options"), scripted(tiny, "B")),
        (synth_item("t/corrupt", data=b"\xff\xd8 not a jpeg"), scripted(tiny, "B")),
        (synth_item("t/raises"), scripted(tiny, "B", max_new_tokens=-1)),  # generate() itself raises
        (synth_item("t/rambling"), scripted(tiny, "I think the car is A or maybe B")),
        (synth_item("t/slow"), scripted(tiny, "<answer>B</answer>", timeout_s=0.0)),  # right answer, too late
        (synth_item("t/right"), scripted(tiny, "<answer>B</answer>")),
        (synth_item("t/wrong"), scripted(tiny, "<answer>A</answer>")),
    ]
    records = [run_item(tiny, item, "direct", s) for item, s in runs]
    assert [r["status"] for r in records] == ["bad_item", "bad_image", "exception", "unparseable", "timeout",
                                              "ok", "ok"]
    assert [r["correct"] for r in records] == [False] * 5 + [True, False]
    assert "max_new_tokens" in records[2]["error"] and "not a choice" in records[3]["error"]
    s = summarize(records)["modes"]["direct"]
    assert (s["n"], s["correct"], s["n_failed"]) == (7, 1, 5)
    assert s["accuracy"] == pytest.approx(1 / 7)
    assert s["failures"] == {"bad_image": 1, "bad_item": 1, "exception": 1, "timeout": 1, "unparseable": 1}
    assert s["ci_low"] < 1 / 7 < s["ci_high"]
    paths = write_report(records, tmp_path, {"bench": "t", "model": "tiny"})
    failed = [json.loads(line) for line in paths["failures"].read_text().splitlines()]
    assert [f["id"] for f in failed] == ["t/bad", "t/corrupt", "t/raises", "t/rambling", "t/slow"]
    report = paths["report"].read_text()
    assert "| direct | 7 | 1 | 14.3 |" in report
    for f in failed:
        assert f"| direct | {f['id']} | {f['status']} |" in report


def test_parse_choice_reads_tags_or_the_whole_output_as_vlmevalkit_does():
    opts = ["evian", "Fiji", "Poland Spring"]
    assert parse_choice("reasoning... <answer>(C)</answer>", opts) == ("C", None)
    assert parse_choice("  poland spring. ", opts) == ("C", None)
    assert parse_choice("B. Fiji", opts) == ("B", None)
    assert parse_choice("A. Fiji", opts)[0] is None  # letter and text disagree
    assert parse_choice("<answer>A</answer><answer>B</answer>", opts)[1].startswith("2 <answer> tags")
    assert parse_choice("The answer is B", opts) == ("B", None)  # VLMEvalKit's can_infer reads it too
    assert parse_choice("It is A or B", opts)[0] is None  # ambiguous


# ---- the three modes ----------------------------------------------------------------------------
@pytest.mark.integration
def test_coarse_to_fine_zoom_on_the_ground_truth_box(tiny):
    _model, _proc = tiny
    item = next(i for i in load_bench("vstar", EXAMPLES / "vstar") if i.id == "vstar/signicade")
    image = item.load_image()
    seen = resized_size(image.size, MAX_PIXELS)
    x1, y1, x2, y2 = item.gt_box.to_model(seen, image.size)
    zoom = [math.floor(x1), math.floor(y1), math.ceil(x2), math.ceil(y2)]
    s = scripted(tiny, "The sign is near the centre. " + tool_call(zoom), f"<answer>{item.answer_letter}</answer>")
    rec = run_item(tiny, item, "coarse_to_fine", s, image)
    assert (rec["status"], rec["correct"], rec["zoom_ok"], rec["pred_letter"]) == ("ok", True, True, item.answer_letter)
    assert rec["zoom_args"] == zoom
    pred = Box(*rec["pred_box"])
    assert pred.intersection_area(item.gt_box) == pytest.approx(item.gt_box.area)  # rounded outward: contains it
    assert rec["iou"] == pytest.approx(item.gt_box.area / pred.area) and rec["iou"] > 0.5
    assert rec["box_area_frac"] == pytest.approx(pred.area / (image.size[0] * image.size[1]))
    crop_tokens = vision_tokens(crop_at_budget(image, pred, MAX_PIXELS).size, MAX_PIXELS)
    assert rec["vision_tokens_turns"] == [vision_tokens(image.size, MAX_PIXELS), crop_tokens]
    assert rec["vision_tokens"] == sum(rec["vision_tokens_turns"])


@pytest.mark.integration
def test_coarse_to_fine_malformed_or_missing_zoom(tiny):
    _model, _proc = tiny
    item = synth_item()
    bad = run_item(tiny, item, "coarse_to_fine", scripted(tiny, tool_call([50, 50, 10, 10]),
                                                                        "<answer>B</answer>"))
    assert (bad["status"], bad["correct"], bad["zoom_ok"]) == ("ok", True, False)  # answered on the fallback view
    assert "degenerate" in bad["zoom_error"] and bad["iou"] == 0.0 and bad["box_area_frac"] == 1.0
    assert bad["vision_tokens_turns"] == [54, 54]
    none = run_item(tiny, item, "coarse_to_fine", scripted(tiny, "no idea"))
    assert (none["status"], none["zoom_ok"], none["iou"], none["vision_tokens_turns"]) == ("unparseable", False, 0.0, [54])
    assert "no zoom call in turn 1" in none["error"]


@pytest.mark.integration
def test_direct_and_oracle_crop_count_the_tokens_the_processor_saw(tiny):
    _model, _proc = tiny
    item = synth_item(size=(1600, 600))
    direct = run_item(tiny, item, "direct", scripted(tiny, "C"))
    assert (direct["status"], direct["pred_letter"], direct["correct"]) == ("ok", "C", False)
    assert direct["vision_tokens"] == vision_tokens((1600, 600), MAX_PIXELS)  # counted in input_ids
    assert direct["box_area_frac"] == 1.0 and direct.get("iou") is None
    oracle = run_item(tiny, item, "oracle_crop", scripted(tiny, "<answer>B</answer>"))
    crop = crop_at_budget(item.load_image(), item.gt_box, MAX_PIXELS)
    assert (oracle["status"], oracle["correct"]) == ("ok", True)
    assert oracle["vision_tokens"] == vision_tokens(crop.size, MAX_PIXELS)
    assert oracle["box_area_frac"] == pytest.approx(300 * 225 / (1600 * 600))
    no_box = run_item(tiny, synth_item(boxes=()), "oracle_crop", scripted(tiny, "B"))
    assert (no_box["status"], no_box["correct"]) == ("no_gt_box", False)


@pytest.mark.integration
def test_evaluate_runs_every_mode_on_every_item(tiny):
    model, proc = tiny
    items = [synth_item("t/a"), BadItem("t/b", "t", "bad_answer", "x"), synth_item("t/c", data=b"")]
    s = EvalSettings(MAX_PIXELS, max_new_tokens=3)
    recs = evaluate(items, in_process_chat(model, proc, s), ["direct", "oracle_crop"], s)
    assert [(r["id"], r["mode"]) for r in recs] == [(i, m) for i in ("t/a", "t/b", "t/c")
                                                   for m in ("direct", "oracle_crop")]
    assert [r["status"] for r in recs[2:]] == ["bad_item", "bad_item", "bad_image", "bad_image"]
    with pytest.raises(ValueError, match="unknown mode"):
        evaluate(items, in_process_chat(model, proc, s), ["zoom_twice"], s)


# ---- `ergo eval` --------------------------------------------------------------------------------
@pytest.mark.integration
def test_cli_eval_three_modes_on_the_vstar_examples(tmp_path):
    out = tmp_path / "eval"
    res = runner.invoke(app, ["eval", "--bench", "vstar", "--path", str(EXAMPLES / "vstar"), "--model", "tiny",
                              "--mode", "direct,coarse_to_fine,oracle_crop", "--out", str(out), "--limit", "2",
                              "--max-pixels", str(MAX_PIXELS), "--max-new-tokens", "4", "-q"])
    assert res.exit_code == 0, res.output
    records = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    assert [(r["id"], r["mode"]) for r in records] == [
        (i, m) for i in ("vstar/bag_of_bottle", "vstar/blackmug") for m in ("direct", "coarse_to_fine", "oracle_crop")]
    for r in records:
        assert r["status"] in STATUSES and r["wall_s"] > 0
        size = tuple(r["image_size"])
        if r["mode"] == "oracle_crop":
            assert r["vision_tokens"] == crop_vision_tokens(Box(*r["gt_box"]), size, MAX_PIXELS)
        elif r["mode"] == "coarse_to_fine":  # coarse view, then a crop only if the model tried to zoom
            assert r["vision_tokens_turns"][0] == vision_tokens(size, MAX_PIXELS)
            assert r["vision_tokens"] == sum(r["vision_tokens_turns"])
        else:
            assert r["vision_tokens"] == vision_tokens(size, MAX_PIXELS)
    summary = json.loads((out / "summary.json").read_text())
    assert {m: s["n"] for m, s in summary["modes"].items()} == {"direct": 2, "coarse_to_fine": 2, "oracle_crop": 2}
    report = (out / "report.md").read_text()
    assert "| oracle_crop | 2 |" in report and "![accuracy vs vision tokens](accuracy_vs_tokens.png)" in report
    assert (out / "accuracy_vs_tokens.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.integration
def test_cli_eval_with_a_checkpoint_directory(tmp_path):
    ckpt = save_tiny(tmp_path / "ckpt", seed=1)
    res = runner.invoke(app, ["eval", "--bench", "vstar", "--path", str(EXAMPLES / "vstar"), "--model", str(ckpt),
                              "--mode", "direct", "--out", str(tmp_path / "o"), "--limit", "1",
                              "--max-pixels", str(MAX_PIXELS), "--max-new-tokens", "2", "-q"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["meta"]["model"] == str(ckpt)


def flat(text: str) -> str:
    """CLI output with the console's line wrapping undone."""
    return " ".join(text.split())


def test_cli_eval_input_errors(tmp_path):
    base = ["eval", "--bench", "vstar", "--path", str(EXAMPLES / "vstar"), "--out", str(tmp_path / "o")]
    res = runner.invoke(app, base + ["--mode", "direct,zoom"])
    assert res.exit_code == 2 and "unknown mode" in flat(res.output)
    res = runner.invoke(app, ["eval", "--bench", "vqa", "--path", ".", "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "unknown bench" in flat(res.output)
    res = runner.invoke(app, ["eval", "--bench", "mme", "--path", str(tmp_path / "missing"), "--out", str(tmp_path)])
    assert res.exit_code == 2 and "does not exist" in flat(res.output)
    tsv = tmp_path / "hr.tsv"
    tsv.write_text("index\tquestion\tanswer\tA\tB\timage\n")
    res = runner.invoke(app, ["eval", "--bench", "hrbench", "--path", str(tsv), "--mode", "oracle_crop",
                              "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "ground-truth boxes" in flat(res.output)
    tsv.write_text("index\tquestion\n0\tQ?\n")
    res = runner.invoke(app, ["eval", "--bench", "hrbench", "--path", str(tsv), "--out", str(tmp_path / "o")])
    assert res.exit_code == 2 and "missing column(s) ['answer', 'image', 'A', 'B']" in flat(res.output)
    assert not (tmp_path / "o").exists()  # refused before loading the model or writing anything
