"""VLMEvalKit interop: its rule matcher, HR-Bench's cycle averaging, Avg@K, the result layout and `ergo eval score`.

The expected VLMEvalKit numbers are derived by hand from its rules (``vlmeval/utils/matching_util.py`` and
``vlmeval/dataset/utils/hrbench.py``), each written next to its row; the project's own matcher is called, not
restated, so these tests hold while that matcher evolves.
"""

from __future__ import annotations

import base64
import csv
import io
import json

import pytest
from PIL import Image
from typer.testing import CliRunner

from ergo_data.cli.app import app
from ergo_train.eval.evaluate import EvalSettings, load_eval_model, parse_choice, run_eval
from ergo_train.eval.loaders import load_bench
from ergo_train.eval.score import score_file
from ergo_train.eval.vlmeval import can_infer, extract_characters_regex, read_predictions, vlmeval_accuracy
from tests.ergo_train.eval.test_evaluate import ScriptedDecoding

runner = CliRunner()
OPTIONS = {"A": "red", "B": "blue", "C": "green", "D": "white"}
# (index, cycle_category, category, answer, prediction, VLMEvalKit hit by its rules)
ROWS = [
    (1, "0", "single", "B", "B", 1),  # one letter word, in the last four words
    (2, "0", "single", "B", "(B)", 1),  # brackets become spaces
    (3, "0", "cross", "C", "C. green", 1),
    (4, "0", "cross", "A", "The answer is B", 0),  # B inferred (one letter word); the answer is A
    (5, "1", "single", "D", "The answer is D", 1),
    (6, "1", "single", "A", "Looking at the image carefully I see a red car so it should be A and nothing else here",
     0),  # 'A' is the fifth word from the end: not inferred; the text is too long for the option-text rule -> Z
    (7, "1", "cross", "C", "green", 1),  # no letter: the one option text inside the prediction
    (8, "1", "cross", "B", "A or B", 0),  # two letters: nothing inferred -> Z
    (9, "1", "single", "A", "A", 1),
]
# cycle 0: all 3/4, single 2/2, cross 1/2; cycle 1: all 3/5, single 2/3, cross 1/2 -> VLMEvalKit averages the cycles
HAND = {"overall": (0.75 + 0.6) / 2, "single": (1.0 + 2 / 3) / 2, "cross": (0.5 + 0.5) / 2}


def png_b64(color) -> str:
    buf = io.BytesIO()
    Image.new("RGB", (448, 336), color).save(buf, "PNG")
    return base64.b64encode(buf.getvalue()).decode()


def write_tsv(path, rows, columns, quoting=csv.QUOTE_MINIMAL):
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t", quoting=quoting)
        w.writerow(columns)
        w.writerows(rows)
    return path


def vlmeval_predictions(tmp_path):
    cols = ["index", "question", "A", "B", "C", "D", "answer", "category", "cycle_category", "prediction"]
    rows = [[i, "What colour is the car?", *OPTIONS.values(), ans, cat, cyc, pred] for i, cyc, cat, ans, pred, _ in ROWS]
    return write_tsv(tmp_path / "Qwen2.5-VL-7B_HRBench4K.tsv", rows, cols, csv.QUOTE_ALL)  # VLMEvalKit's dump


def test_can_infer_follows_vlmevalkits_rules_row_by_row():
    for _, _, _, answer, prediction, hit in ROWS:
        got = can_infer(prediction, dict(OPTIONS))
        assert (got == answer) == bool(hit), prediction
    assert can_infer("Sorry, I can't help with images of people yet.", OPTIONS) == "Z"
    assert can_infer("the answer is **c**", OPTIONS) == "C"  # VLMEvalKit's verbose rule is case-insensitive
    assert extract_characters_regex("<answer>b</answer>") == "B"
    assert extract_characters_regex("The best answer is (D)") == "D"
    assert extract_characters_regex("I cannot tell from this image at all sorry about that really no") == ""
    assert extract_characters_regex("") == "A"  # an empty text is 'in' every '(X)' choice: VLMEvalKit reads A


def test_score_reproduces_vlmevalkits_rule_accuracy_on_its_own_file(tmp_path):
    path = vlmeval_predictions(tmp_path)
    paths = score_file(path, tmp_path / "score")
    summary = json.loads(paths["summary"].read_text())
    rule = summary["vlmeval"]["vlmeval"]["vlmeval_rule"]
    assert summary["scoring"] == "cycle" and rule["groups"] == 2
    assert rule["overall"] == pytest.approx(HAND["overall"])
    assert rule["categories"] == pytest.approx({"cross": HAND["cross"], "single": HAND["single"]})
    assert summary["modes"]["vlmeval"]["vlmeval_accuracy"] == pytest.approx(6 / 9)  # the plain mean differs
    # the project's matcher on the same predictions, and every item where the two differ is listed
    ours = [parse_choice(pred, list(OPTIONS.values()))[0] == ans for _, _, _, ans, pred, _ in ROWS]
    assert summary["modes"]["vlmeval"]["correct"] == sum(ours)
    report = paths["report"].read_text()
    differ = [i for (i, *_, hit), mine in zip(ROWS, ours) if bool(hit) != mine]
    assert f"disagree ({len(differ)})" in report
    for i in differ:
        assert f"| vlmeval | hrbench4k/{i} |" in report


@pytest.mark.integration
def test_cycle_averaging_and_avg_at_k_on_a_tsv_run(tmp_path):
    """A model that always answers 'A' on an HR-Bench TSV built here: its accuracy is the share of items whose
    correct letter is A, per cycle group (no shuffle), and per seed once the options are shuffled (Avg@K)."""
    tsv = write_tsv(tmp_path / "hr.tsv", [
        [i, f"Question {i}?", *OPTIONS.values(), ans, cat, cyc, png_b64((30 * i, 90, 160))]
        for i, cyc, cat, ans, _, _ in ROWS], ["index", "question", "A", "B", "C", "D", "answer", "category",
                                              "cycle_category", "image"])
    model, processor = load_eval_model("tiny", 64 * 28 * 28)

    def settings():
        return EvalSettings(max_pixels=64 * 28 * 28, max_new_tokens=4,
                            generate_kwargs={"prefix_allowed_tokens_fn": ScriptedDecoding(processor.tokenizer, ["A"])})

    out = run_eval("HRBench4K", tsv, "tiny", ["direct"], tmp_path / "plain", settings=settings(),
                   model_and_processor=(model, processor))
    summary = json.loads(out["summary"].read_text())
    ergo = summary["vlmeval"]["direct"]["ergo"]
    # answers A: rows 4 (cycle 0, cross), 6 and 9 (cycle 1, single) are right: cycle 0 all 1/4, cycle 1 all 2/5;
    # single 0/2 and 2/3, cross 1/2 and 0/2
    assert ergo["overall"] == pytest.approx((1 / 4 + 2 / 5) / 2)
    assert ergo["categories"] == pytest.approx({"single": (0 + 2 / 3) / 2, "cross": (1 / 2 + 0) / 2})
    assert summary["modes"]["direct"]["accuracy"] == pytest.approx(3 / 9)
    rows = read_predictions(out["vlmeval"] / "direct" / "tiny_HRBench4K.tsv")
    assert [r["index"] for r in rows] == [str(r[0]) for r in ROWS] and {r["prediction"] for r in rows} == {"A"}
    assert {"cycle_category", "category", "answer", "A", "D"} <= set(rows[0]) and "image" not in rows[0]

    seeds = [0, 1, 2]
    out = run_eval("HRBench4K", tsv, "tiny", ["direct"], tmp_path / "seeds", settings=settings(), seeds=seeds,
                   shuffle=True, model_and_processor=(model, processor))
    summary = json.loads(out["summary"].read_text())
    expected = []
    for s in seeds:  # the loader's own shuffle says where the correct option went
        items = list(load_bench("HRBench4K", tsv, shuffle_seed=s, shuffle=True))
        recs = [{"cycle_category": it.cycle_category, "category": it.category, "correct": it.answer_letter == "A"}
                for it in items]
        assert all(it.option_order is not None for it in items)
        expected.append(vlmeval_accuracy(recs, "cycle")["overall"])
    k = summary["seeds"]["direct"]
    assert k["k"] == 3 and k["accuracy"] == pytest.approx(expected)
    assert k["mean"] == pytest.approx(sum(expected) / 3) and k["min"] == pytest.approx(min(expected))
    assert "## Avg@K over seeds" in out["report"].read_text()
    # the shuffled run's VLMEvalKit file is in the file's letters: the chosen option mapped back
    recs = [json.loads(line) for line in out["results"].read_text().splitlines() if json.loads(line)["seed"] == 1]
    rows = read_predictions(out["vlmeval"] / "direct-seed1" / "tiny_HRBench4K.tsv")
    for rec, row in zip(recs, rows):
        assert row["answer"] == {r[0]: r[3] for r in ROWS}[int(row["index"])]
        assert row[row["prediction"]] == rec["options"][0]  # the model said A: the option shown first


def test_cli_score_on_our_results_and_on_vlmevalkit_files(tmp_path):
    path = vlmeval_predictions(tmp_path)
    res = runner.invoke(app, ["eval", "score", str(path), "--out", str(tmp_path / "s")])
    assert res.exit_code == 0, res.output
    assert "VLMEvalKit rule (can_infer), mean over cycle_category groups" in (tmp_path / "s" / "report.md").read_text()
    res = runner.invoke(app, ["eval", "score", str(tmp_path / "missing.tsv")])
    assert res.exit_code == 2 and "does not exist" in " ".join(res.output.split())
    bad = write_tsv(tmp_path / "x.tsv", [[1, "q"]], ["index", "question"])
    res = runner.invoke(app, ["eval", "score", str(bad)])
    assert res.exit_code == 2 and "missing column(s)" in " ".join(res.output.split())
