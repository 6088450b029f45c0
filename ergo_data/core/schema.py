"""The sample record: column names every part relies on, its Arrow schema and HF Features.

>>> row = make_row(id="ex/a", image_path="/x/a.jpg", question="What?", answer="cat",
...                boxes=[BoxRecord(1, 2, 3, 4, "cat", "annotation")], source="ex")
>>> validate_row(row, require_decoded=False)["boxes"][0]["label"]
'cat'
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import pyarrow as pa

from ergo_data.core.errors import ErgoError

BOX_SOURCES = ("annotation", "ocr", "detector", "synthetic", "human")

BOX_STRUCT = pa.struct([
    ("x1", pa.float64()), ("y1", pa.float64()), ("x2", pa.float64()), ("y2", pa.float64()),
    ("label", pa.string()), ("source", pa.string()),
])
IMAGE_STRUCT = pa.struct([("bytes", pa.binary()), ("path", pa.string())])

CORE_FIELDS: list[pa.Field] = [
    pa.field("id", pa.string(), nullable=False),
    pa.field("image", IMAGE_STRUCT),
    pa.field("image_sha256", pa.string()),
    pa.field("width", pa.int32()),
    pa.field("height", pa.int32()),
    pa.field("question", pa.string()),
    pa.field("options", pa.list_(pa.string())),
    pa.field("answer", pa.string()),
    pa.field("answer_letter", pa.string()),
    pa.field("boxes", pa.list_(BOX_STRUCT)),
    pa.field("source", pa.string()),
    pa.field("category", pa.string()),
    pa.field("needs_review", pa.bool_()),
    pa.field("split", pa.string()),
    pa.field("provenance", pa.string()),
]
DERIVED_FIELDS: list[pa.Field] = [
    pa.field("box_area_frac", pa.float64()),
    pa.field("box_short_side_640", pa.float64()),
    pa.field("box_short_side_1280", pa.float64()),
    pa.field("vision_tokens_full", pa.int64()),
    pa.field("vision_tokens_640", pa.int64()),
    pa.field("vision_tokens_1280", pa.int64()),
    pa.field("crop_vision_tokens_1280", pa.int64()),
]
CORE_COLUMNS = [f.name for f in CORE_FIELDS]
DERIVED_COLUMNS = [f.name for f in DERIVED_FIELDS]
SAMPLE_SCHEMA = pa.schema(CORE_FIELDS + DERIVED_FIELDS)

REJECT_SCHEMA = pa.schema([
    pa.field("id", pa.string()), pa.field("source", pa.string()), pa.field("stage", pa.string()),
    pa.field("reason", pa.string()), pa.field("detail", pa.string()),
])
LABELS_SCHEMA = pa.schema([
    pa.field("id", pa.string()), pa.field("annotator", pa.string()),
    pa.field("region_answerable", pa.bool_()), pa.field("answer_correct", pa.bool_()),
    pa.field("x1", pa.float64()), pa.field("y1", pa.float64()),
    pa.field("x2", pa.float64()), pa.field("y2", pa.float64()),
    pa.field("lead_time_s", pa.float64()), pa.field("created_at", pa.string()),
    pa.field("comment", pa.string()),
])

# Columns a source may leave null for `decode` to fill.
FILLED_BY_DECODE = ("image_sha256", "width", "height")


class SchemaError(ErgoError, ValueError):
    """A sample that breaks the record contract; the message names the sample id and the field."""


@dataclass(frozen=True, slots=True)
class BoxRecord:
    """One entry of the ``boxes`` column: canonical xyxy pixels plus label and provenance."""

    x1: float
    y1: float
    x2: float
    y2: float
    label: str = ""
    source: str = "annotation"

    def as_dict(self) -> dict[str, Any]:
        return {"x1": float(self.x1), "y1": float(self.y1), "x2": float(self.x2), "y2": float(self.y2),
                "label": self.label, "source": self.source}


def make_row(
    *, id: str, image_path: str | None, question: str, answer: str, source: str,
    boxes: Iterable[BoxRecord | Mapping[str, Any]] = (), options: Iterable[str] = (),
    answer_letter: str | None = None, category: str | None = None, needs_review: bool = False,
    provenance: Mapping[str, Any] | str | None = None, image_bytes: bytes | None = None, **extra: Any,
) -> dict[str, Any]:
    """Build a row dict with every core column present (nulls where a later stage fills them)."""
    row: dict[str, Any] = {
        "id": id,
        "image": {"bytes": image_bytes, "path": image_path},
        "image_sha256": None, "width": None, "height": None,
        "question": question, "options": list(options), "answer": answer,
        "answer_letter": answer_letter,
        "boxes": [b.as_dict() if isinstance(b, BoxRecord) else dict(b) for b in boxes],
        "source": source, "category": category, "needs_review": bool(needs_review), "split": None,
        "provenance": provenance if isinstance(provenance, str) else json.dumps(provenance or {}, sort_keys=True),
    }
    row.update(extra)
    return row


def _fail(row: Mapping[str, Any], field: str, why: str) -> SchemaError:
    return SchemaError(f"sample {row.get('id')!r}: field {field!r} {why}")


def validate_row(row: Mapping[str, Any], *, require_decoded: bool = True) -> Mapping[str, Any]:
    """Check the core columns strictly; extra columns pass through. Returns ``row`` unchanged.

    ``require_decoded=False`` allows the columns ``decode`` fills (sha256, width, height) to be null.
    """
    for col in CORE_COLUMNS:
        if col not in row:
            raise _fail(row, col, "is missing")
    if not isinstance(row["id"], str) or not row["id"]:
        raise _fail(row, "id", "must be a non-empty string")
    img = row["image"]
    if not isinstance(img, Mapping) or set(img) != {"bytes", "path"}:
        raise _fail(row, "image", "must be a struct {bytes, path}")
    if img["path"] is None and img["bytes"] is None:
        raise _fail(row, "image", "has neither path nor bytes")
    for col in ("question", "answer", "source", "provenance"):
        if not isinstance(row[col], str):
            raise _fail(row, col, f"must be a string, got {type(row[col]).__name__}")
    if not row["question"].strip():
        raise _fail(row, "question", "is empty")
    try:
        json.loads(row["provenance"])
    except ValueError as e:
        raise _fail(row, "provenance", f"is not JSON ({e})") from None
    if not isinstance(row["options"], list) or not all(isinstance(o, str) for o in row["options"]):
        raise _fail(row, "options", "must be a list of strings")
    letter = row["answer_letter"]
    if row["options"]:
        if letter is None or len(letter) != 1 or not ("A" <= letter < chr(ord("A") + len(row["options"]))):
            raise _fail(row, "answer_letter", f"must be a letter A..{chr(64 + len(row['options']))}, got {letter!r}")
        if row["options"][ord(letter) - 65] != row["answer"]:
            raise _fail(row, "answer", f"{row['answer']!r} is not option {letter} ({row['options'][ord(letter) - 65]!r})")
    elif letter is not None:
        raise _fail(row, "answer_letter", "must be null when there are no options")
    for col in ("width", "height"):
        v = row[col]
        if v is None:
            if require_decoded:
                raise _fail(row, col, "is null (run the decode stage)")
        elif not isinstance(v, int) or isinstance(v, bool) or v <= 0:
            raise _fail(row, col, f"must be a positive int, got {v!r}")
    if require_decoded and not row["image_sha256"]:
        raise _fail(row, "image_sha256", "is null (run the decode stage)")
    if not isinstance(row["boxes"], list):
        raise _fail(row, "boxes", "must be a list")
    for i, b in enumerate(row["boxes"]):
        _validate_box(row, i, b)
    if row["split"] not in (None, "train", "val", "test"):
        raise _fail(row, "split", f"must be train/val/test or null, got {row['split']!r}")
    if not isinstance(row["needs_review"], bool):
        raise _fail(row, "needs_review", "must be a bool")
    return row


def _validate_box(row: Mapping[str, Any], i: int, b: Any) -> None:
    field = f"boxes[{i}]"
    if not isinstance(b, Mapping) or not {"x1", "y1", "x2", "y2", "label", "source"} <= set(b):
        raise _fail(row, field, "must have x1, y1, x2, y2, label, source")
    coords = [b[k] for k in ("x1", "y1", "x2", "y2")]
    if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in coords):
        raise _fail(row, field, f"has non-finite or non-numeric coordinates {coords}")
    if not (coords[0] < coords[2] and coords[1] < coords[3]):
        raise _fail(row, field, f"is degenerate or inverted {coords}")
    if b["source"] not in BOX_SOURCES:
        raise _fail(row, field, f"source must be one of {BOX_SOURCES}, got {b['source']!r}")
    w, h = row.get("width"), row.get("height")
    if w and h and (coords[0] < 0 or coords[1] < 0 or coords[2] > w or coords[3] > h):
        raise _fail(row, field, f"{coords} lies outside the {w}x{h} image")


def arrow_schema_for(columns: Iterable[str], extra_types: Mapping[str, pa.DataType] | None = None) -> pa.Schema:
    """Core + derived fields in canonical order, then extra columns with the given types."""
    known = {f.name: f for f in SAMPLE_SCHEMA}
    extra_types = dict(extra_types or {})
    cols = list(columns)
    fields = [known[c] for c in SAMPLE_SCHEMA.names if c in cols]
    fields += [pa.field(c, extra_types.get(c, pa.string())) for c in cols if c not in known]
    return pa.schema(fields)


def hf_features(schema: pa.Schema | None = None):
    """HF ``datasets.Features`` for ``schema`` (default: core + derived), image as ``Image()``."""
    from datasets import Features, Image

    schema = schema or SAMPLE_SCHEMA
    feats = Features.from_arrow_schema(schema)
    if "image" in feats:
        feats["image"] = Image()
    return feats


def with_hf_metadata(schema: pa.Schema) -> pa.Schema:
    """Attach the HF features metadata so ``load_dataset('parquet')`` yields an Image column."""
    feats = hf_features(schema)
    meta = {b"huggingface": json.dumps({"info": {"features": feats.to_dict()}}).encode()}
    return schema.with_metadata(meta)


def rows_to_table(rows: list[Mapping[str, Any]], extra_types: Mapping[str, pa.DataType] | None = None) -> pa.Table:
    """Rows (dicts) -> Arrow table with the canonical schema (extra columns inferred unless typed)."""
    if not rows:
        return SAMPLE_SCHEMA.empty_table()
    cols: list[str] = []
    for r in rows:
        for k in r:
            if k not in cols:
                cols.append(k)
    inferred = dict(extra_types or {})
    for c in cols:
        if c not in SAMPLE_SCHEMA.names and c not in inferred:
            inferred[c] = pa.array([r.get(c) for r in rows]).type
    schema = arrow_schema_for(cols, inferred)
    return pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)


def reject_row(id: str, source: str, stage: str, reason: str, detail: str = "") -> dict[str, str]:
    """One row of ``rejects/``: ``reason`` is a short stable code, ``detail`` a human sentence."""
    return {"id": id, "source": source, "stage": stage, "reason": reason, "detail": detail}
