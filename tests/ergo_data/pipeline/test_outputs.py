"""The final write streams: kept rows are validated a chunk at a time into one row group per shard, and the
shards equal what validating every row at once gives (the earlier whole-table write, kept as the reference)."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq

from ergo_data.core.schema import SchemaError, make_row, rows_to_table, validate_row
from ergo_data.pipeline.outputs import canonical_table, validated_kept, write_parquet_atomic


def _row(i: int, valid: bool = True) -> dict:
    row = make_row(id=f"s/{i:03d}", image_path="/x.jpg", question="q?", answer="a", source="s",
                   options=["a", "b"], answer_letter="A", category="c", extra_score=float(i))
    row.update(image_sha256=f"{i:064x}", width=100, height=80)
    if not valid:
        row["question"] = None  # a core column of the wrong type: a schema reject at write time
    return row


def test_validated_kept_streams_into_shard_sized_row_groups(tmp_path):
    chunks = [[_row(0), _row(1), _row(2, valid=False)], [_row(3), _row(4)], [_row(5)]]
    for i, rows in enumerate(chunks):
        write_parquet_atomic(rows_to_table(rows), tmp_path / "seg" / f"part-{i:05d}.parquet")
    n, schema, bad = validated_kept(tmp_path / "seg", len(chunks), tmp_path / "kept.parquet", shard_rows=2)
    assert (n, [b["id"] for b in bad], [b["reason"] for b in bad]) == (5, ["s/002"], ["schema_invalid"])
    pf = pq.ParquetFile(tmp_path / "kept.parquet")
    assert [pf.metadata.row_group(i).num_rows for i in range(pf.num_row_groups)] == [2, 2, 1]

    everything = pa.concat_tables([rows_to_table(r) for r in chunks], promote_options="permissive")
    good = []
    for r in everything.to_pylist():
        try:
            good.append(validate_row(r))
        except SchemaError:
            pass
    reference = canonical_table(good, everything.schema)
    assert pf.read().cast(schema).equals(reference) and schema == reference.schema


def test_validated_kept_of_no_rows_writes_an_empty_file(tmp_path):
    (tmp_path / "seg").mkdir()
    n, schema, bad = validated_kept(tmp_path / "seg", 0, tmp_path / "kept.parquet", shard_rows=2)
    assert (n, bad) == (0, [])
    assert pq.read_table(tmp_path / "kept.parquet").num_rows == 0 and "id" in schema.names
