"""The short version of benchmarks/miniature.py: the whole experiment (curated sets, SFT in every mode, GRPO with
and without TCE, continued SFT, ``ergo eval`` of every checkpoint on both held-out sets) on a few items. It checks
what a short run must show, not how well it scores: the stripe detail is illegible coarse and legible in the crop,
answers parse, zooms run, the table and its last line come out. The full benchmark measures the table."""

from __future__ import annotations

import pytest

from tests.support.benchmarks import load_benchmark


@pytest.mark.integration
def test_the_short_miniature_run_parses_zooms_and_reports(tmp_path, capsys):
    summary = load_benchmark("miniature").main(["--quick", "--workers", "1", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    last = out.strip().splitlines()[-1]
    assert last.startswith("miniature: direct=") and " p=" in last and "c2f_no_tce=" in last
    for name in ("heldout", "unseen"):
        leg = summary["legibility"][name]
        assert leg["crop_accuracy"] == 1.0 and leg["coarse_template_max_diff"] <= 4, leg
    evals = summary["evals"]
    for arm in ("sft", "sft_more", "grpo", "grpo_no_tce"):
        assert (tmp_path / arm / "config.json").exists()
    sft = evals["sft_more"]["heldout"]["modes"]
    assert sft["direct"]["parseable"] > 0 and sft["direct_full"]["parseable"] > 0  # the one-turn format
    c2f = [evals[a][s]["modes"]["coarse_to_fine"] for a in evals for s in evals[a]]
    assert sum(m["n"] - m["zoom_failed"] for m in c2f) > 0  # the policy's own zooms ran (none are scripted)
    assert all(m["vision_tokens_mean"] for m in c2f)
