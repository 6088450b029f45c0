"""Write the HAND-WRITTEN labels fixture (``labels_handwritten.json`` -> ``labels_handwritten.parquet``) and
the samples it labels (``samples_handwritten.parquet``, read from ``examples/vstar`` by the project's V* source).

The judgements in the JSON were made by one person looking at full-resolution crops; they are not a
Label Studio export. Image paths in the samples are relative to the repository root.

Run from the repository root:  .venv/bin/python tests/data/make_labels_handwritten.py
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from ergo_data.core.imageio import read_info
from ergo_data.core.schema import LABELS_SCHEMA, rows_to_table
from ergo_data.pipeline.registry import source_registry

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent


def labels_table(doc: dict) -> pa.Table:
    extra = [pa.field("box_kind", pa.string()), pa.field("note", pa.string()), pa.field("completion", pa.string())]
    rows = []
    for lab in doc["labels"]:
        x1, y1, x2, y2 = (float(v) for v in lab["box_xyxy"])
        rows.append({
            "id": lab["id"], "annotator": doc["annotator"], "region_answerable": lab["region_answerable"],
            "answer_correct": lab["answer_correct"], "x1": x1, "y1": y1, "x2": x2, "y2": y2,
            "lead_time_s": None, "created_at": doc["created_at"],
            "box_kind": lab["box_kind"], "note": lab["note"], "completion": lab.get("completion"),
        })
    schema = pa.schema(list(LABELS_SCHEMA) + extra)
    return pa.Table.from_pylist(rows, schema=schema).replace_schema_metadata({"about": doc["about"]})


def samples_table(ids: set[str]) -> pa.Table:
    source = source_registry.get("vstar")(name="examples", path=str(ROOT / "examples" / "vstar"))
    rows = []
    for row in source.read():
        row = row if isinstance(row, dict) else row.row
        if row["id"] not in ids:
            continue
        path = Path(row["image"]["path"])
        data = path.read_bytes()
        row["width"], row["height"] = read_info(data).size
        row["image_sha256"] = hashlib.sha256(data).hexdigest()
        row["image"] = {"bytes": None, "path": path.relative_to(ROOT).as_posix()}
        rows.append(row)
    return rows_to_table(rows)


def main() -> None:
    doc = json.loads((HERE / "labels_handwritten.json").read_text(encoding="utf-8"))
    labels = labels_table(doc)
    pq.write_table(labels, HERE / "labels_handwritten.parquet")
    samples = samples_table(set(labels.column("id").to_pylist()))
    pq.write_table(samples, HERE / "samples_handwritten.parquet")
    print(f"{labels.num_rows} labels, {samples.num_rows} samples")


if __name__ == "__main__":
    main()
