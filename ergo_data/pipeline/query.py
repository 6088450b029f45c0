"""DuckDB over a curated set: ``samples`` = ``data/*.parquet``, ``rejects`` = ``rejects/*.parquet``.

>>> demo = getfixture("demo_set")  # the demo curation (tests/support/demo.py)
>>> run_query(demo, "SELECT count(*) AS n FROM samples").to_pylist()
[{'n': 9}]
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa


def connect(out_dir: str | Path) -> duckdb.DuckDBPyConnection:
    out = Path(out_dir)
    data, rejects = out / "data", out / "rejects"
    if not data.is_dir():
        raise ValueError(f"{out} has no data/ folder: is it the output of `ergo run`?")
    con = duckdb.connect()
    for name, folder in (("samples", data), ("rejects", rejects)):
        if any(folder.glob("*.parquet")):
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{folder.as_posix()}/*.parquet')")
    return con


def run_query(out_dir: str | Path, sql: str) -> pa.Table:
    """Run ``sql`` and return an Arrow table; DuckDB errors become ValueError with the message."""
    con = connect(out_dir)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as e:
        raise ValueError(f"query failed: {e}") from None
    finally:
        con.close()
