"""The reward-hacking replay: every adversarial completion ranks below the honest one, with the intended zeros."""

from __future__ import annotations

import pytest
from rich.console import Console
from typer.testing import CliRunner

from ergo_train.rewards.hacking import HACKS, check, print_table, replay
from ergo_train.rewards.judges import StoredLabelJudge
from ergo_train.rewards.validation import load_samples
from tests.support.paths import DATA, ROOT

LABELS = DATA / "labels_handwritten.parquet"
SAMPLES = load_samples(DATA / "samples_handwritten.parquet", ROOT)


@pytest.mark.parametrize("sample_id", sorted(SAMPLES))
def test_every_hack_ranks_as_intended_with_the_human_label_judge(sample_id):
    rows = replay(SAMPLES[sample_id], judge=StoredLabelJudge(LABELS))
    assert check(rows) == []
    by = {r["hack"]: r for r in rows}
    assert by["reference"]["total"] == 3.5  # 1 + 0.5 (r_tce) + 1 (r_acc) + 1 (r_format)
    assert by["whole_image"]["r_box"] == 0.0 and by["whole_image"]["r_region"] == 1.0  # r_box is what stops it
    assert by["tiny_box"]["r_region"] == 0.0
    assert max(r["total"] for r in rows if r["hack"] not in ("reference", "reference_tag", "reference_hermes",
                                                             "reference_bbox_2d", "very_long_think")) <= 3.0
    # the TCE gates: none of these farms more than a correct answer given at once without zooming (1.0)
    bar = by["answer_without_zoom"]["total"]
    assert bar == 1.0
    for name in ("zoom_without_answer", "two_answers", "tag_never_executed", "subpixel_box", "normalized_box",
                 "wrong_tool_name"):
        assert by[name]["r_box"] == 0.0 and by[name]["total"] <= bar + 1.0, (name, by[name])
    for name in ("zoom_without_answer", "two_answers", "tag_never_executed", "wrong_tool_name"):
        assert by[name]["r_tce"] == 0.0 and by[name]["total"] <= bar, (name, by[name])


def test_rule_expectations_hold_without_a_judge():
    rows = replay(SAMPLES["examples/signicade"])
    assert all(r["r_region"] is None and r["total"] is None for r in rows)
    assert check(rows) == []


def test_a_broken_reward_is_caught():
    """gamma = 1 lets the whole-image zoom earn r_box: the replay must report it."""
    rows = replay(SAMPLES["examples/signicade"], judge=StoredLabelJudge(LABELS), gamma=1.0)
    problems = check(rows)
    assert "whole_image: r_box = 1.0 (expected 0)" in problems
    assert any(p.startswith("whole_image: total 3.5 is not below") for p in problems)


def test_table_and_cli():
    console = Console(record=True, width=160)
    print_table(replay(SAMPLES["examples/doll"]), ["x: broken"], console)
    text = console.export_text()
    assert all(h.name in text for h in HACKS) and "broken expectation: x: broken" in text
    from ergo_data.cli.app import app

    res = CliRunner().invoke(app, ["rewards", "hacking", str(DATA / "samples_handwritten.parquet"), "--id",
                                   "examples/flag", "--judge", "stored", "--labels", str(LABELS),
                                   "--image-root", str(ROOT)])
    assert res.exit_code == 0, res.output
    assert "every hack ranks as intended" in res.output and "tag_spam" in res.output
    res = CliRunner().invoke(app, ["rewards", "hacking", str(DATA / "samples_handwritten.parquet"), "--id", "nope"])
    assert res.exit_code == 2 and "sample 'nope' not found" in res.output
