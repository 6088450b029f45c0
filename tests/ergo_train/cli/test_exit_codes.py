"""Exit codes of ``ergo rewards``, ``ergo sft``, ``ergo train`` and ``ergo eval`` (run, score, serve): 2 for usage or configuration errors,
1 for runtime failures, both printed as one ``error:`` line (no traceback)."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ergo_data.cli.app import app
from tests.support.paths import DATA, EXAMPLES, ROOT

runner = CliRunner()
LABELS, SAMPLES = DATA / "labels_handwritten.parquet", DATA / "samples_handwritten.parquet"


def assert_exit(args: list[str], code: int, *words: str) -> None:
    res = runner.invoke(app, args, catch_exceptions=False)
    assert res.exit_code == code, res.output
    assert "error:" in res.output and "Traceback" not in res.output, res.output
    for w in words:
        assert w in res.output, res.output


def test_rewards_validate_exit_codes(tmp_path):
    base = ["rewards", "validate", str(LABELS), "--samples", str(SAMPLES), "--out", str(tmp_path / "v")]
    assert_exit(base + ["--judge", "oracle"], 2, "unknown judge 'oracle'")
    assert_exit(["rewards", "validate", str(tmp_path / "none.parquet"), "--out", str(tmp_path / "v"),
                 "--judge", "stored"], 2, "none.parquet")
    # the judge's model cannot be loaded: found while working (the labels and samples were fine)
    assert_exit(base + ["--judge", "vlm", "--model", str(tmp_path / "no-such-checkpoint")], 1, "cannot load model")


def test_rewards_counterfactual_usage_errors(tmp_path):
    base = ["rewards", "counterfactual", str(SAMPLES), "--out", str(tmp_path / "c")]
    assert_exit(base + ["--low-max-pixels", "4000000"], 2, "--low-max-pixels")
    assert_exit(base + ["--judge", "stored"], 2, "--labels")


def test_rewards_hacking_exit_codes():
    assert_exit(["rewards", "hacking", str(SAMPLES), "--id", "no/such"], 2, "'no/such' not found")
    # gamma 1 lets r_box pay the whole-image box: the suite's ranking breaks, a failure of the check itself
    assert_exit(["rewards", "hacking", str(SAMPLES), "--gamma", "1.0"], 1, "expectations of the hacking suite broke")


def test_train_exit_codes(demo_set):
    recipe = str(ROOT / "pipelines" / "train_tiny.yaml")
    assert_exit(["train", recipe, "--set", "no_such_key=1", "--dry-run"], 2, "no_such_key")
    assert_exit(["train", recipe, "--set", f"data.path={demo_set.parent / 'nothing'}", "--dry-run"], 2, "no Parquet")
    assert_exit(["train", recipe, "--set", f"data.path={demo_set}", "--model", str(demo_set / "no-checkpoint")], 1,
                "cannot load model")


@pytest.mark.integration  # loads the tiny model before it finds the output folder is a file
def test_eval_exit_codes(tmp_path):
    base = ["eval", "--bench", "vstar", "--path", str(EXAMPLES / "vstar"), "--limit", "1", "-q",
            "--max-pixels", str(64 * 28 * 28), "--max-new-tokens", "2"]
    assert_exit(base + ["--out", str(tmp_path / "o"), "--dtype", "int4"], 2, "unknown dtype")
    target = tmp_path / "a-file"
    target.write_text("")
    assert_exit(base + ["--out", str(target)], 1, str(target))


def test_sft_exit_codes(demo_set):
    recipe = str(ROOT / "pipelines" / "sft_tiny.yaml")
    assert_exit(["sft", recipe, "--set", "no_such_key=1", "--dry-run"], 2, "no_such_key")
    assert_exit(["sft", recipe, "--set", f"data.path={demo_set}", "--model", str(demo_set / "no-checkpoint"),
                 "--dry-run"], 1, "cannot load model")


def test_eval_score_and_serve_exit_codes(tmp_path):
    assert_exit(["eval", "score", str(tmp_path / "none.jsonl")], 2, "does not exist")
    junk = tmp_path / "results.jsonl"
    junk.write_text('{"id": "x"}\n')
    assert_exit(["eval", "score", str(junk)], 2, "not an `ergo eval` results.jsonl")
    assert_exit(["eval", "serve", "--model", str(tmp_path / "no-checkpoint"), "--port", "0"], 1, "cannot load model")
