"""The short version of benchmarks/learning.py: the real loop (generated set -> SFT -> GRPO with the GSPO
preset) on a few samples. It checks that learning can happen, not how much: the weights move and at least
three reward components vary within groups (each carries a signal). The full benchmark shows the curve."""

from __future__ import annotations

import pytest

from tests.support.benchmarks import load_benchmark


@pytest.mark.integration
def test_the_short_learning_run_moves_weights_and_gives_signal(tmp_path, capsys):
    summary = load_benchmark("learning").main(["--quick", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert "learning: valid_zoom_before=" in out and (tmp_path / "learning_curve.png").stat().st_size > 0
    assert summary["tensors_moved"] > 0
    varying = [name for name, sd in summary["max_group_std"].items() if sd > 0]
    assert len(varying) >= 3, summary["max_group_std"]
    assert summary["valid_zoom_before"] == 0.0 and summary["valid_zoom_after_sft"] > summary["valid_zoom_before"]
