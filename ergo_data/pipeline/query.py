"""DuckDB over a curated set: ``samples`` = ``data/*.parquet``, ``rejects`` = ``rejects/*.parquet``.

>>> demo = getfixture("demo_set")  # the demo curation (tests/support/demo.py)
>>> run_query(demo, "SELECT count(*) AS n FROM samples").to_pylist()
[{'n': 9}]
>>> run_query(demo, "SELECT nope FROM samples")
Traceback (most recent call last):
...
ergo_data.pipeline.query.QueryError: query failed: Binder Error: ...
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pyarrow as pa

from ergo_data.core.errors import ConfigError, ErgoError

if TYPE_CHECKING:  # DuckDB is imported where a query runs: importing this module never needs it
    import duckdb


def sql_errors() -> tuple[type[Exception], ...]:
    """What DuckDB says about the SQL itself (syntax, unknown column or table); anything else is about the files."""
    import duckdb

    return duckdb.ParserException, duckdb.BinderException, duckdb.CatalogException


class QueryError(ConfigError, ValueError):
    """SQL that DuckDB cannot run over the set, or a folder that is not a curated set (exit code 2)."""


class UnreadableSetError(ErgoError, ValueError):
    """A curated set whose Parquet files DuckDB cannot read (corrupt or truncated shards; exit code 1)."""


def connect(out_dir: str | Path) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection with the views ``samples`` and ``rejects`` (each only if it has Parquet files)."""
    import duckdb

    out = Path(out_dir)
    data, rejects = out / "data", out / "rejects"
    if not data.is_dir():
        raise QueryError(f"{out} has no data/ folder: is it the output of `ergo run`?")
    con = duckdb.connect()
    for name, folder in (("samples", data), ("rejects", rejects)):
        if any(folder.glob("*.parquet")):
            try:
                con.execute(f"CREATE VIEW {name} AS SELECT * FROM read_parquet('{folder.as_posix()}/*.parquet')")
            except duckdb.Error as e:
                con.close()
                raise UnreadableSetError(f"cannot read {folder}/*.parquet: {e}") from None
    return con


def run_query(out_dir: str | Path, sql: str) -> pa.Table:
    """Run ``sql`` and return an Arrow table; DuckDB errors become ``QueryError`` (the SQL) or
    ``UnreadableSetError`` (the files), both ``ValueError`` with DuckDB's message."""
    import duckdb

    con = connect(out_dir)
    try:
        return con.sql(sql).to_arrow_table()
    except sql_errors() as e:
        raise QueryError(f"query failed: {e}") from None
    except duckdb.Error as e:
        raise UnreadableSetError(f"query failed reading {out_dir}: {e}") from None
    finally:
        con.close()
