"""``sql``: keep the rows of a batch that satisfy a DuckDB ``WHERE`` clause over table ``samples``.

>>> import pyarrow as pa
>>> t = pa.Table.from_pylist([{"id": "s/a", "source": "s", "box_area_frac": 0.1},
...                           {"id": "s/b", "source": "s", "box_area_frac": 0.9}])
>>> res = SqlStage(where="box_area_frac <= 0.6").process(t)
>>> res.kept.column("id").to_pylist(), res.rejected[0]["reason"]
(['s/a'], 'sql_filter')
"""

from __future__ import annotations

import pyarrow as pa

from ergo_data.core.errors import RecipeError
from ergo_data.pipeline.contract import Params, Stage, StageResult
from ergo_data.pipeline.registry import stage_registry

_ROW = "__ergo_row"


class SqlParams(Params):
    where: str  # a DuckDB boolean expression over the columns of `samples`; NULL counts as false


@stage_registry.register("sql")
class SqlStage(Stage):
    """A DuckDB WHERE filter; rows where it is false or NULL are rejected with the clause as detail."""

    Params = SqlParams

    def __init__(self, **params) -> None:
        super().__init__(**params)
        if not self.params.where.strip():
            raise RecipeError("stage 'sql': `where` is empty")

    def process(self, table: pa.Table) -> StageResult:
        if table.num_rows == 0:
            return StageResult(table, [])
        import duckdb  # here, not at import: the registry imports every stage module, and a run without sql needs none

        indexed = table.append_column(_ROW, pa.array(range(table.num_rows), pa.int64()))
        con = duckdb.connect()
        try:
            con.register("samples", indexed)
            keep = con.sql(f"SELECT {_ROW} FROM samples WHERE ({self.params.where})").to_arrow_table()
        except duckdb.Error as e:
            raise RecipeError(f"stage 'sql': cannot evaluate WHERE {self.params.where!r}: {e}") from None
        finally:
            con.close()
        keep_idx = set(keep.column(_ROW).to_pylist())
        mask = pa.array([i in keep_idx for i in range(table.num_rows)])
        rejected = [
            self.reject(r, "sql_filter", f"WHERE {self.params.where} is false or NULL")
            for r in table.filter(pa.compute.invert(mask)).select(["id", "source"]).to_pylist()
        ]
        return StageResult(table.filter(mask), rejected)
