"""The sample record: strict validation naming the id and field, Arrow schema, HF features."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ergo_data.core.schema import (
    CORE_COLUMNS,
    DERIVED_COLUMNS,
    LABELS_SCHEMA,
    REJECT_SCHEMA,
    SAMPLE_SCHEMA,
    BoxRecord,
    SchemaError,
    hf_features,
    make_row,
    rows_to_table,
    validate_row,
    with_hf_metadata,
)


def good_row(**over):
    row = make_row(id="src/a", image_path="/tmp/a.jpg", question="What is it?", answer="cat", source="src",
                   boxes=[BoxRecord(1, 2, 30, 40, "cat", "annotation")], options=["dog", "cat"], answer_letter="B",
                   provenance={"file": "a.json"})
    row.update(image_sha256="ab" * 32, width=100, height=100)
    row.update(over)
    return row


def test_design_column_names_are_the_contract():
    assert CORE_COLUMNS == ["id", "image", "image_sha256", "width", "height", "question", "options", "answer",
                            "answer_letter", "boxes", "source", "category", "needs_review", "split", "provenance"]
    assert DERIVED_COLUMNS == ["box_area_frac", "box_short_side_640", "box_short_side_1280", "vision_tokens_full",
                               "vision_tokens_640", "vision_tokens_1280", "crop_vision_tokens_1280"]
    assert REJECT_SCHEMA.names == ["id", "source", "stage", "reason", "detail"]
    assert LABELS_SCHEMA.names == ["id", "annotator", "region_answerable", "answer_correct", "x1", "y1", "x2", "y2",
                                   "lead_time_s", "created_at", "comment"]
    assert SAMPLE_SCHEMA.field("boxes").type.value_type.names == ["x1", "y1", "x2", "y2", "label", "source"]


def test_valid_row_passes_and_extra_columns_pass_through():
    row = good_row(my_score=0.5)
    assert validate_row(row) is row


@pytest.mark.parametrize("field,value,message", [
    ("width", None, "decode"),
    ("width", -3, "positive"),
    ("question", "  ", "empty"),
    ("answer_letter", "C", "letter"),
    ("answer", "dog", "not option B"),
    ("provenance", "{not json", "JSON"),
    ("split", "holdout", "train/val/test"),
    ("image", {"bytes": None, "path": None}, "neither"),
    ("boxes", [{"x1": 5.0, "y1": 5.0, "x2": 1.0, "y2": 9.0, "label": "", "source": "annotation"}], "degenerate"),
    ("boxes", [{"x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": float("nan"), "label": "", "source": "annotation"}], "non-finite"),
    ("boxes", [{"x1": 0.0, "y1": 0.0, "x2": 1.0, "y2": 1.0, "label": "", "source": "guess"}], "source must be"),
    ("boxes", [{"x1": 0.0, "y1": 0.0, "x2": 101.0, "y2": 1.0, "label": "", "source": "annotation"}], "outside"),
    ("needs_review", "yes", "bool"),
])
def test_invalid_rows_name_the_sample_and_field(field, value, message):
    with pytest.raises(SchemaError) as e:
        validate_row(good_row(**{field: value}))
    text = str(e.value)
    assert "'src/a'" in text and field in text and message in text


def test_missing_core_column():
    row = good_row()
    del row["category"]
    with pytest.raises(SchemaError, match="'category' is missing"):
        validate_row(row)


def test_sources_may_leave_decode_columns_null():
    row = good_row(width=None, height=None, image_sha256=None)
    validate_row(row, require_decoded=False)


def test_arrow_table_and_hf_features():
    table = rows_to_table([good_row(extra_col=1.5)])
    assert table.schema.field("width").type == pa.int32()
    assert table.schema.names[-1] == "extra_col"
    feats = hf_features(table.schema)
    assert type(feats["image"]).__name__ == "Image"
    meta = with_hf_metadata(table.schema).metadata[b"huggingface"]
    assert b'"_type": "Image"' in meta
