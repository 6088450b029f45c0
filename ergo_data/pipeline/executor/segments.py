"""Segment logic shared by every executor: plan, read sources, run per-batch stages, global barriers.

Consecutive per-batch stages form a *segment*; a global stage is a barrier over all rows. The local
executor (``local.py``) and the Ray one (``ray.py``) call ``run_segments`` with their own way of running
a per-batch segment, so both run the same stage code through ``process_table``.

>>> one = {"stage": "sql", "in": 4, "out": 3, "seconds": 0.5, "rejected": {"sql_filter": 1}}
>>> merge_stage_stats([{"type": "sql"}], [(0, [one]), (0, [one])])[0]["rejected"]
{'sql_filter': 2}
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ergo_data.core.schema import REJECT_SCHEMA, rows_to_table
from ergo_data.pipeline.contract import Reject, Stage
from ergo_data.pipeline.outputs import (
    atomic_write_json,
    chunk_schemas,
    read_parts,
    write_final,
    write_parquet_atomic,
)
from ergo_data.pipeline.recipe import Recipe, build_sources, build_stage
from ergo_data.pipeline.recipe_record import write_recipe_record

WORK = ".work"


@dataclass
class Segment:
    index: int
    specs: list[dict[str, Any]]
    is_global: bool

    @property
    def label(self) -> str:
        return "+".join(s["type"] for s in self.specs)


def plan_segments(recipe: Recipe, stages: list[Stage]) -> list[Segment]:
    """Group consecutive per-batch stages; each global stage is its own segment."""
    segs: list[Segment] = []
    for spec, stage in zip(recipe.stages, stages):
        if stage.is_global or not segs or segs[-1].is_global:
            segs.append(Segment(len(segs), [spec], stage.is_global))
        else:
            segs[-1].specs.append(spec)
    return segs


def recipe_fingerprint(recipe: Recipe) -> str:
    import hashlib

    scheduling_only = {"ray"}  # executor settings never change the outputs: a resume stays valid
    dump = json.dumps(recipe.model_dump(exclude=scheduling_only), sort_keys=True, default=str)
    h = hashlib.sha256(dump.encode())
    for pkg in ("ergo_data", "ergo_train"):  # changed code invalidates finished units too
        for f in sorted((Path(__file__).resolve().parents[3] / pkg).rglob("*.py")):
            h.update(f.read_bytes())
    return h.hexdigest()[:16]


# ---- stage 0: read sources ----------------------------------------------------------------------
def read_sources(recipe: Recipe, work: Path, progress: Callable[[str, int], None]) -> dict[str, Any]:
    marker = work / "inputs" / "_DONE.json"
    if marker.exists():
        return json.loads(marker.read_text())
    out_dir = work / "inputs"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    t0 = time.perf_counter()
    counts: dict[str, dict[str, int]] = {}
    rows: list[dict[str, Any]] = []  # the chunk being filled: peak memory does not grow with the set
    rejects: list[dict[str, str]] = []
    seen: set[str] = set()
    size = recipe.output.chunk_rows
    n_chunks = n_rows = 0

    def flush() -> None:
        nonlocal n_chunks, rows
        write_parquet_atomic(rows_to_table(rows), out_dir / f"part-{n_chunks:05d}.parquet")
        n_chunks += 1
        rows = []

    for src in build_sources(recipe):
        c = counts.setdefault(src.name, {"emitted": 0, "rejected": 0})
        for item in src.read():
            c["emitted"] += 1
            if not isinstance(item, Reject) and item["id"] in seen:  # bad input, not a reason to stop the run
                item = Reject(item, "duplicate_id", f"id {item['id']!r} was already emitted by source "
                              f"{src.name!r}: ids must be unique (the first one is kept)")
            if isinstance(item, Reject):
                c["rejected"] += 1
                rejects.append({"id": str(item.row["id"]), "source": src.name, "stage": f"source:{src.type_name}",
                                "reason": item.reason, "detail": item.detail})
            else:
                seen.add(item["id"])
                rows.append(item)
                n_rows += 1
                if len(rows) == size:
                    flush()
            progress("read sources", 1)
    if rows:
        flush()
    write_parquet_atomic(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), out_dir / "rejects.parquet")
    info = {"sources": counts, "chunks": n_chunks, "rows": n_rows, "seconds": time.perf_counter() - t0}
    atomic_write_json(marker, info)
    return info


# ---- per-chunk work (runs in worker processes too) -----------------------------------------------
_STAGE_CACHE: dict[str, list[Stage]] = {}


def stages_for(specs: list[dict[str, Any]]) -> list[Stage]:
    key = json.dumps(specs, sort_keys=True, default=str)
    if key not in _STAGE_CACHE:
        _STAGE_CACHE[key] = [build_stage(s) for s in specs]
    return _STAGE_CACHE[key]


def process_table(stages: list[Stage], table: pa.Table) -> tuple[pa.Table, list[dict[str, str]], list[dict[str, Any]]]:
    """Run per-batch ``stages`` in turn over one table: ``(kept, reject rows, per-stage stats)``.

    Shared by the local executor (one chunk file) and the Ray executor (one block).
    """
    stats = []
    rejects: list[dict[str, str]] = []
    for stage in stages:
        t0 = time.perf_counter()
        n_in = table.num_rows
        res = stage.process(table) if n_in else None
        table = res.kept if res else table
        got = res.rejected if res else []
        rejects += got
        stats.append({"stage": stage.name, "in": n_in, "out": table.num_rows, "seconds": time.perf_counter() - t0,
                      "rejected": dict(Counter(r["reason"] for r in got))})
    return table, rejects, stats


MapRunner = Callable[[Segment, list[Stage], Path, Path, int], tuple[int, list[dict[str, Any]]]]


def run_segments(recipe: Recipe, stages: list[Stage], segments: list[Segment], out: Path, work: Path, prog,
                 run_map: MapRunner) -> dict[str, Any]:
    """Sources -> segments -> final output, shared by every executor: ``run_map(seg, its stages, input dir,
    output dir, n_chunks) -> (n_chunks out, per-stage stats)`` runs a per-batch segment; global stages are
    barriers run here. Returns the stats of ``write_final``."""
    inputs = read_sources(recipe, work, prog.advance)
    prev_dir, n_chunks = work / "inputs", inputs["chunks"]
    seg_stats: list[list[dict[str, Any]]] = []
    for seg in segments:
        seg_dir = work / f"seg{seg.index:02d}"
        seg_dir.mkdir(exist_ok=True)
        offset = _stage_offset(segments, seg)
        if seg.is_global:
            info = _run_global(seg, stages[offset], prev_dir, seg_dir, recipe, prog)
            n_chunks = info["chunks"]
            seg_stats.append([info["stage"]])
        else:
            n_chunks, per_stage = run_map(seg, stages[offset:offset + len(seg.specs)], prev_dir, seg_dir, n_chunks)
            seg_stats.append(per_stage)
        prev_dir = seg_dir
    return write_final(out, recipe, inputs, prev_dir, n_chunks, work, segments, seg_stats, stages, prog)


def finish_run(out: Path, stats: dict[str, Any], t_start: float, recipe: Recipe) -> dict[str, Any]:
    """Write the recipe as run (``recipe.json``, ``recipe.yaml``), then stats.json, once the outputs are complete."""
    write_recipe_record(out, recipe)
    stats["seconds_total"] = time.perf_counter() - t_start
    atomic_write_json(out / "stats.json", stats)
    return stats


def _stage_offset(segments: list[Segment], seg: Segment) -> int:
    return sum(len(s.specs) for s in segments[: seg.index])


def merge_stage_stats(specs: list[dict[str, Any]], chunk_stats: Iterable[tuple[int, list[dict[str, Any]]]]
                      ) -> list[dict[str, Any]]:
    """Sum the per-chunk stats of a segment's stages (a stage with no chunk still gets a zero row).

    Each item of ``chunk_stats`` is ``(position in specs of its first stage, [stats of that stage, the next...])``.

    >>> one = {"stage": "sql", "in": 4, "out": 3, "seconds": 0.5, "rejected": {"sql_filter": 1}}
    >>> merge_stage_stats([{"type": "sql"}], [(0, [one]), (0, [one])])[0]["rejected"]
    {'sql_filter': 2}
    """
    per_stage = [{"stage": s["type"], "in": 0, "out": 0, "seconds": 0.0, "rejected": Counter()} for s in specs]
    for first, stats in chunk_stats:
        for agg, s in zip(per_stage[first:], stats):
            agg["stage"] = s["stage"]
            agg["in"] += s["in"]
            agg["out"] += s["out"]
            agg["seconds"] += s["seconds"]
            agg["rejected"].update(s["rejected"])
    for agg in per_stage:
        agg["rejected"] = dict(sorted(agg["rejected"].items()))
    return per_stage


def _run_global(seg: Segment, stage: Stage, prev: Path, seg_dir: Path, recipe: Recipe, prog) -> dict[str, Any]:
    marker = seg_dir / "_DONE.json"
    if marker.exists():
        return json.loads(marker.read_text())
    task = prog.task(f"stage {seg.label} (global)", total=1)
    for old in seg_dir.glob("part-*"):
        old.unlink()
    schemas = chunk_schemas(prev)
    size = recipe.output.chunk_rows
    t0 = time.perf_counter()
    keys = set(getattr(stage, "key_columns", ()))
    if keys and schemas and all(keys <= set(schema.names) for schema in schemas.values()):
        n_in, n_out, n, rejected = _stream_through_kept(stage, list(schemas), seg_dir, size)
    else:  # the whole table at once (or the stage's own error about a missing column)
        table = read_parts(prev, "part-*.parquet")
        res = stage.process(table)
        n_in, n_out, rejected = table.num_rows, res.kept.num_rows, res.rejected
        del table
        n = 0
        for n, start in enumerate(range(0, res.kept.num_rows, size), 1):
            write_parquet_atomic(res.kept.slice(start, size), seg_dir / f"part-{n - 1:05d}.parquet")
    seconds = time.perf_counter() - t0
    write_parquet_atomic(pa.Table.from_pylist(rejected, schema=REJECT_SCHEMA), seg_dir / "rejects.parquet")
    info = {"chunks": n, "stage": {"stage": stage.name, "in": n_in, "out": n_out,
                                   "seconds": seconds, "rejected": dict(sorted(Counter(r["reason"] for r in rejected).items()))}}
    summary = getattr(stage, "summary", None)
    if callable(summary):
        info["stage"]["summary"] = summary()
    atomic_write_json(marker, info)
    prog.advance(task, 1)
    return info


def _stream_through_kept(stage: Stage, files: list[Path], seg_dir: Path, size: int
                         ) -> tuple[int, int, int, list[dict[str, str]]]:
    """A keyed global stage (``key_columns`` + ``select``): only the key columns of all rows are read at once,
    then each chunk streams through the kept ids into chunks of ``size`` rows. ``(rows in, rows out, chunks, rejects)``."""
    columns = list(stage.key_columns)
    keys = pa.concat_tables([pq.ParquetFile(f).read(columns=columns) for f in files], promote_options="permissive")
    keep_ids, rejected = stage.select(keys)
    n_in = keys.num_rows
    del keys
    pending: list[pa.Table] = []
    n_pending = n = n_out = 0
    for f in files:
        part = pq.ParquetFile(f).read()
        part = part.filter(pc.is_in(part.column("id"), value_set=keep_ids))
        pending.append(part)
        n_pending += part.num_rows
        n_out += part.num_rows
        while n_pending >= size:
            whole = pa.concat_tables(pending, promote_options="permissive")
            write_parquet_atomic(whole.slice(0, size), seg_dir / f"part-{n:05d}.parquet")
            n += 1
            pending, n_pending = [whole.slice(size)], n_pending - size
    if n_pending:
        write_parquet_atomic(pa.concat_tables(pending, promote_options="permissive"), seg_dir / f"part-{n:05d}.parquet")
        n += 1
    return n_in, n_out, n, rejected


def clean_work(out_dir: str | Path) -> None:
    shutil.rmtree(Path(out_dir) / WORK, ignore_errors=True)
