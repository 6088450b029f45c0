"""``make bench``'s aggregator in its quickest mode: every row of the table is there (no timing asserts)."""

from __future__ import annotations

import json

import pytest

from benchmarks import bench


@pytest.mark.integration  # the host-path row trains a tiny model (in its own process)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_quick_bench_prints_every_row(tmp_path, capsys, monkeypatch):
    tiny = {**bench.QUICK, "scale": {**bench.QUICK["scale"], "images": 8, "rss_sizes": (8, 16)},
            "manifest": {"rows": 2000, "repeats": 1}, "rewards": {"n": 200, "repeats": 1}}
    monkeypatch.setattr(bench, "QUICK", tiny)
    assert bench.main(["--quick", "--json", str(tmp_path / "b.json")]) == 0
    out = capsys.readouterr().out
    table = json.loads((tmp_path / "b.json").read_text())["table"]
    figures = " ".join(r["figure"] for r in table)
    for words in ("curate / naive curate", "crop / scaled-decode limit", "Ray / local images/s, 1 worker",
                  "Ray / local images/s, 2 worker", "Ray start", "peak RSS 8 -> 16 images", "control",
                  "duckdb filter", "polars filter", "rule rewards"):
        assert words in figures, words
        assert words in out
    for r in table:  # every missed goal says why
        assert r["met"] is not False or r["reason"], r["figure"]
        assert r["figure"] in out
