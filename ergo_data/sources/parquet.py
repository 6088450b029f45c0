"""``parquet``: read back a curated set (``DIR/data/*.parquet`` written by ``ergo run`` or ``ergo ls pull``).

Sample ids are kept as they are, so labels keyed by id (``labels.parquet``) and Label Studio tasks
(keyed by ``sample_id``) still match the next version of the set; ``source`` becomes this source's name
(the per-source invariant counts it), and the previous source and provenance move into ``provenance``.

>>> import tempfile, pyarrow.parquet as pq
>>> from ergo_data.core.schema import make_row, rows_to_table
>>> folder = tempfile.mkdtemp()
>>> old = make_row(id="v1/a", image_path="a.jpg", question="Q?", answer="x", source="v1")
>>> pq.write_table(rows_to_table([old]), f"{folder}/part-0.parquet")
>>> row = next(ParquetSource(name="v2", path=folder).read())
>>> row["id"], row["source"]
('v1/a', 'v2')
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from ergo_data.core.errors import RecipeError
from ergo_data.core.schema import SchemaError, validate_row
from ergo_data.pipeline.contract import Params, Reject, Source
from ergo_data.pipeline.registry import source_registry


class ParquetParams(Params):
    path: str  # an output directory (reads its data/*.parquet), a folder of .parquet files, or one file


@source_registry.register("parquet")
class ParquetSource(Source):
    """Our own Parquet Samples (a previous set); ids kept, rows checked against the record contract."""

    Params = ParquetParams

    def files(self) -> list[Path]:
        root = self.root
        if root.is_file():
            return [root]
        folder = root / "data" if (root / "data").is_dir() else root
        files = sorted(folder.glob("*.parquet"))
        if not files:
            raise RecipeError(f"source {self.name!r}: no .parquet files in {str(folder)!r}")
        return files

    def read(self) -> Iterator[dict[str, Any] | Reject]:
        for path in self.files():
            for row in pq.read_table(path).to_pylist():
                yield self._row(row, path)

    def _row(self, row: dict[str, Any], path: Path) -> dict[str, Any] | Reject:
        sid = row.get("id")
        if not isinstance(sid, str) or not sid:
            return Reject(
                {"id": f"{self.name}/{path.name}", "source": self.name},
                "bad_record",
                f"{path.name}: a row without an id",
            )
        try:
            before = json.loads(row.get("provenance") or "{}")
        except (TypeError, ValueError):
            before = row.get("provenance")
        previous = {
            "file": path.name,
            "reader": "parquet",
            "previous_source": row.get("source"),
            "previous_provenance": before,
        }
        row = dict(row, source=self.name, provenance=json.dumps(previous, sort_keys=True))
        try:
            validate_row(row, require_decoded=False)
        except SchemaError as e:
            return Reject({"id": sid, "source": self.name}, "bad_record", f"{path.name}: {e}")
        return row
