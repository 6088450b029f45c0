"""Manifest filter: one WHERE over a curated set's 1M-row manifest, DuckDB and Polars vs a Python loop.

The manifest is synthetic (the columns a filter reads: id, source, category, split, needs_review, width,
height, box_short_side_1280), written once as a curated set (``DIR/data/part-*.parquet``, 100k rows a shard)
into ``benchmarks/_cache/``. DuckDB runs through the project's own ``ergo_data.pipeline.query.run_query``
(what ``ergo query DIR SQL`` runs); each method reads the shards from disk, best of ``repeats``.

    .venv/bin/python benchmarks/manifest.py               # 1M rows
    .venv/bin/python benchmarks/manifest.py --rows 10000  # quick
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
CACHE = ROOT / "benchmarks" / "_cache"
GOAL_S = 1.0
WHERE = "box_short_side_1280 BETWEEN 8 AND 56 AND category = 'animal' AND split = 'train' AND NOT needs_review"


def manifest_set(rows: int, shard_rows: int = 100_000) -> Path:
    """The synthetic set of ``rows`` rows (written once); returns its folder."""
    import numpy as np
    import pyarrow as pa

    from ergo_data.pipeline.outputs import write_parquet_atomic

    out = CACHE / f"manifest-{rows}"
    if (out / "_DONE").exists():
        return out
    rng = np.random.default_rng(0)
    for k, start in enumerate(range(0, rows, shard_rows)):
        n = min(shard_rows, rows - start)
        cats = np.array(["animal", "sign", "text", "vehicle"])
        table = pa.table({
            "id": [f"synthetic/{i:08d}" for i in range(start, start + n)],
            "source": ["synthetic"] * n,
            "category": cats[rng.integers(0, 4, n)],
            "split": np.where(rng.random(n) < 0.9, "train", "val"),
            "needs_review": rng.random(n) < 0.05,
            "width": rng.integers(1000, 8000, n).astype("int32"),
            "height": rng.integers(1000, 8000, n).astype("int32"),
            "box_short_side_1280": rng.uniform(1, 200, n),
        })
        write_parquet_atomic(table, out / "data" / f"part-{k:05d}.parquet")
    (out / "_DONE").touch()
    return out


def python_loop(folder: Path) -> int:
    import pyarrow.parquet as pq

    n = 0
    for f in sorted((folder / "data").glob("*.parquet")):
        for r in pq.read_table(f).to_pylist():
            if 8 <= r["box_short_side_1280"] <= 56 and r["category"] == "animal" and r["split"] == "train" \
                    and not r["needs_review"]:
                n += 1
    return n


def duckdb_query(folder: Path) -> int:
    from ergo_data.pipeline.query import run_query

    return run_query(folder, f"SELECT id FROM samples WHERE {WHERE}").num_rows


def polars_query(folder: Path) -> int:
    import polars as pl

    lf = pl.scan_parquet(str(folder / "data" / "*.parquet"))
    return lf.filter(pl.col("box_short_side_1280").is_between(8, 56) & (pl.col("category") == "animal")
                     & (pl.col("split") == "train") & ~pl.col("needs_review")).select("id").collect().height


def manifest_figures(rows: int = 1_000_000, repeats: int = 3) -> dict:
    """Seconds (best of ``repeats``; the Python loop runs once) and matches of each method; prints them.

    >>> f = manifest_figures(rows=2000, repeats=1)  # doctest: +ELLIPSIS
    manifest filter...
    >>> f["duckdb"]["rows"] == f["polars"]["rows"] == f["python loop"]["rows"] > 0
    True
    """
    folder = manifest_set(rows)
    out: dict = {"rows": rows, "where": WHERE}
    for name, fn, reps in (("python loop", python_loop, 1), ("duckdb", duckdb_query, repeats),
                           ("polars", polars_query, repeats)):
        times, found = [], 0
        for _ in range(reps):
            t0 = time.perf_counter()
            found = fn(folder)
            times.append(time.perf_counter() - t0)
        out[name] = {"seconds": min(times), "rows": found}
    print(f"manifest filter over {rows:,} rows ({WHERE}): " + "; ".join(
        f"{k} {out[k]['seconds']:.3f} s" for k in ("python loop", "duckdb", "polars"))
        + f"; duckdb x{out['python loop']['seconds'] / out['duckdb']['seconds']:.0f} the loop")
    return out


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    manifest_figures(a.rows, a.repeats)
