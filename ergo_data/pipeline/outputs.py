"""Writing a curated set: atomic Parquet/JSON, final shards with HF features, rejects, stats, invariant.

Layout of ``DIR/``: ``data/part-*.parquet`` (kept samples, HF ``datasets`` features in the metadata),
``rejects/part-*.parquet`` (``id, source, stage, reason, detail``), ``stats.json``.

>>> import datasets
>>> demo = getfixture("demo_set")  # the demo curation (tests/support/demo.py)
>>> ds = datasets.load_dataset("parquet", data_files=f"{demo}/data/*.parquet", split="train")
>>> type(ds.features["image"]).__name__, ds.num_rows
('Image', 9)
"""

from __future__ import annotations

import json
import os
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ergo_data.core.schema import (
    REJECT_SCHEMA,
    SAMPLE_SCHEMA,
    SchemaError,
    arrow_schema_for,
    reject_row,
    validate_row,
    with_hf_metadata,
)


def write_parquet_atomic(table: pa.Table, path: Path) -> None:
    """Write to ``path.tmp-PID`` then rename: a reader never sees a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    pq.write_table(table, tmp, compression="zstd")
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=str), encoding="utf-8")
    os.replace(tmp, path)


def read_parts(folder: Path, pattern: str) -> pa.Table:
    """Concatenate the Parquet files matching ``pattern`` in name order, unifying their schemas."""
    files = sorted(folder.glob(pattern))
    # ParquetFile.read: under half the retained memory of pq.read_table per small chunk file (benchmarks/scale.py)
    tables = [pq.ParquetFile(f).read() for f in files if ".rejects." not in f.name]
    tables = [t for t in tables if t.num_columns]
    if not tables:
        return SAMPLE_SCHEMA.empty_table()
    return pa.concat_tables(tables, promote_options="permissive")


def chunk_schemas(folder: Path) -> dict[Path, pa.Schema]:
    """The kept-row chunks of a stage folder (``part-*.parquet``, not ``*.rejects.parquet``) that have columns,
    in name order, each with its schema (read from the footer only)."""
    schemas = {f: pq.read_schema(f) for f in sorted(folder.glob("part-*.parquet")) if ".rejects." not in f.name}
    return {f: schema for f, schema in schemas.items() if schema.names}


def canonical_table(rows: list[dict[str, Any]], like: pa.Schema) -> pa.Table:
    """Rows -> table with core/derived columns cast to the canonical types, extras after them."""
    extra_types = {f.name: f.type for f in like if f.name not in SAMPLE_SCHEMA.names and not pa.types.is_null(f.type)}
    # every core + derived column present (even if null), in canonical order, then the extras
    schema = arrow_schema_for(like.names + [n for n in SAMPLE_SCHEMA.names if n not in like.names], extra_types)
    return pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema=schema)


def _shards(table: pa.Table, folder: Path, shard_rows: int, schema_meta: bool) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    names = _shard_names(folder, max(1, -(-table.num_rows // shard_rows)))
    if schema_meta:
        table = table.replace_schema_metadata(with_hf_metadata(table.schema).metadata)
    for i, name in enumerate(names):
        if not (folder / name).exists():  # finished shards are skipped on resume
            write_parquet_atomic(table.slice(i * shard_rows, shard_rows), folder / name)
    return names


def _shard_names(folder: Path, n: int) -> list[str]:
    names = [f"part-{i:05d}-of-{n:05d}.parquet" for i in range(n)]
    for old in folder.glob("*.parquet"):
        if old.name not in names:
            old.unlink()  # shards of a previous, different layout
    return names


def validated_kept(last_dir: Path, n_chunks: int, dest: Path, shard_rows: int
                   ) -> tuple[int, pa.Schema, list[dict[str, str]]]:
    """Validate the kept rows of ``last_dir``'s chunks strictly, a chunk at a time, into ``dest``: one row group
    per shard of ``shard_rows`` rows, core/derived columns in canonical types.
    ``(rows written, their schema, schema rejects)``.

    Peak memory does not grow with the set: one chunk's rows as Python dicts, one shard as Arrow.
    """
    schemas = chunk_schemas(last_dir) if n_chunks else {}
    files = list(schemas)
    like = pa.unify_schemas(list(schemas.values()), promote_options="permissive") if files else SAMPLE_SCHEMA
    schema = canonical_table([], like).schema
    bad: list[dict[str, str]] = []
    n = 0
    pending: list[pa.Table] = []
    pending_rows = 0
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(f".{dest.name}.tmp-{os.getpid()}")
    with pq.ParquetWriter(tmp, schema, compression="none") as writer:
        for f in files:
            for piece in pq.read_table(f).to_batches(max_chunksize=4096):
                good = []
                for row in piece.to_pylist():
                    try:
                        validate_row(row)
                        good.append(row)
                    except SchemaError as e:
                        bad.append(reject_row(row.get("id"), row.get("source"), "write", "schema_invalid", str(e)))
                pending.append(canonical_table(good, like))
                pending_rows += len(good)
                while pending_rows >= shard_rows:  # a full row group is a full shard
                    whole = pa.concat_tables(pending)
                    writer.write_table(whole.slice(0, shard_rows), row_group_size=shard_rows)
                    pending, pending_rows = [whole.slice(shard_rows)], pending_rows - shard_rows
                    n += shard_rows
        if pending_rows:
            writer.write_table(pa.concat_tables(pending), row_group_size=shard_rows)
            n += pending_rows
    os.replace(tmp, dest)
    return n, schema, bad


def _data_shards(kept_file: Path, n_rows: int, schema: pa.Schema, folder: Path, shard_rows: int) -> list[str]:
    """``data/`` from ``validated_kept``'s file, one row group per shard, HF features in the metadata."""
    folder.mkdir(parents=True, exist_ok=True)
    names = _shard_names(folder, max(1, -(-n_rows // shard_rows)))
    pf = pq.ParquetFile(kept_file)
    schema = with_hf_metadata(schema)
    for i, name in enumerate(names):
        if not (folder / name).exists():  # finished shards are skipped on resume
            # cast: Parquet names list items `element`; the shards keep Arrow's `item`, as before the round trip
            group = pf.read_row_group(i).cast(schema) if i < pf.num_row_groups else schema.empty_table()
            write_parquet_atomic(group, folder / name)
    return names


def write_final(out: Path, recipe, inputs: dict[str, Any], last_dir: Path, n_chunks: int, work: Path,
                segments, seg_stats, stages, prog) -> dict[str, Any]:
    """Validate kept rows strictly, write data/ and rejects/ shards, and build stats.json, a chunk at a time."""
    task = prog.task("write output", total=1)
    t0 = time.perf_counter()
    shard_rows = recipe.output.shard_rows
    kept_file = work / "final-kept.parquet"
    n_kept, schema, bad = validated_kept(last_dir, n_chunks, kept_file, shard_rows)
    reject_tables = [pq.read_table(work / "inputs" / "rejects.parquet")]
    for seg in segments:
        seg_dir = work / f"seg{seg.index:02d}"
        reject_tables += [pq.read_table(f) for f in sorted(seg_dir.glob("*rejects.parquet"))]
    reject_tables.append(pa.Table.from_pylist(bad, schema=REJECT_SCHEMA))
    rejects = pa.concat_tables([t.cast(REJECT_SCHEMA) for t in reject_tables])
    data_files = _data_shards(kept_file, n_kept, schema, out / "data", shard_rows)
    reject_files = _shards(rejects, out / "rejects", max(shard_rows, 10_000), schema_meta=False)
    stage_rows = [s for seg in seg_stats for s in seg]
    if bad:
        stage_rows.append({"stage": "write", "in": n_kept + len(bad), "out": n_kept, "seconds": 0.0,
                           "rejected": dict(Counter(r["reason"] for r in bad))})
    kept = pq.read_table(kept_file, columns=["source", "category", "needs_review"])  # what the stats count
    stats = build_stats(recipe, inputs, kept, rejects, stage_rows, data_files, reject_files)
    stats["write_seconds"] = time.perf_counter() - t0
    prog.advance(task, 1)
    return stats


def build_stats(recipe, inputs, kept: pa.Table, rejects: pa.Table, stage_rows, data_files, reject_files) -> dict:
    kept_by_source = Counter(kept.column("source").to_pylist()) if kept.num_rows else Counter()
    rej_by_source = Counter(rejects.column("source").to_pylist()) if rejects.num_rows else Counter()
    per_source = {}
    ok = True
    for name, c in inputs["sources"].items():
        k, r = kept_by_source.get(name, 0), rej_by_source.get(name, 0)
        per_source[name] = {"inputs": c["emitted"], "kept": k, "rejected": r, "ok": c["emitted"] == k + r}
        ok &= per_source[name]["ok"]
    ok &= not ((set(kept_by_source) | set(rej_by_source)) - set(inputs["sources"]))  # no stray source names
    source_rejects = Counter(rs for st, rs in zip(rejects.column("stage").to_pylist(), rejects.column("reason").to_pylist())
                             if st.startswith("source:"))
    source_stage = {"stage": "sources", "in": sum(c["emitted"] for c in inputs["sources"].values()),
                    "out": inputs["rows"], "seconds": inputs.get("seconds", 0.0), "rejected": dict(source_rejects)}
    categories = kept.column("category").to_pylist()
    flags = kept.column("needs_review").to_pylist()
    cats = Counter(categories)
    review = sum(bool(v) for v in flags)
    review_cats = Counter(c for c, v in zip(categories, flags) if v)
    return {
        "name": recipe.name,
        "stages": [source_stage] + stage_rows,
        "sources": per_source,
        "totals": {"inputs": sum(p["inputs"] for p in per_source.values()), "kept": kept.num_rows,
                   "rejected": rejects.num_rows},
        "invariant": {"rule": "per source: inputs = kept + rejected", "ok": bool(ok)},
        "kept_by_category": {str(k): v for k, v in sorted(cats.items(), key=lambda kv: str(kv[0]))},
        "needs_review": review,
        "needs_review_by_category": {str(k): v for k, v in sorted(review_cats.items(), key=lambda kv: str(kv[0]))},
        "files": {"data": [f"data/{f}" for f in data_files], "rejects": [f"rejects/{f}" for f in reject_files]},
    }
