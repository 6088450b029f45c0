"""Local executor: recipe -> chunks -> stages -> ``data/``, ``rejects/``, ``stats.json``; resumable.

The work is cut into chunks of ``output.chunk_rows`` source rows. Consecutive per-batch stages form a
*segment* run chunk by chunk (on ``workers`` processes); a global stage is a barrier over all rows.
Every finished unit writes its Parquet files first and a JSON marker last (atomically), so a run killed
at any point and started again skips finished units and ends with row-identical outputs.

>>> from ergo_data.pipeline.recipe import load_recipe
>>> stats = run_pipeline(load_recipe("pipelines/demo.yaml"), "/tmp/ergo-doctest-demo", quiet=True)
>>> stats["invariant"]["ok"], stats["totals"]["kept"]
(True, 9)
"""

from __future__ import annotations

import json
import os
import shutil
import time
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from ergo_data.core.schema import REJECT_SCHEMA
from ergo_data.pipeline.contract import Stage
from ergo_data.pipeline.executor.segments import (
    WORK,
    Segment,
    finish_run,
    merge_stage_stats,
    plan_segments,
    process_table,
    recipe_fingerprint,
    run_segments,
    stages_for,
)
from ergo_data.pipeline.outputs import atomic_write_json, write_parquet_atomic
from ergo_data.pipeline.recipe import Recipe, build_stages


def run_chunk(specs: list[dict[str, Any]], src_path: str, dst_path: str) -> dict[str, Any]:
    """Run ``specs`` over one chunk file; write kept + rejects, then the marker. Returns its stats."""
    table, rejects, stats = process_table(stages_for(specs), pq.read_table(src_path))
    dst = Path(dst_path)
    write_parquet_atomic(table, dst.with_suffix(".parquet"))
    write_parquet_atomic(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA), dst.with_suffix(".rejects.parquet"))
    info = {"stages": stats}
    atomic_write_json(dst.with_suffix(".json"), info)
    return info


# ---- the run --------------------------------------------------------------------------------------
def run_pipeline(recipe: Recipe, out_dir: str | Path, workers: int = 1, quiet: bool = False,
                 fresh: bool = False) -> dict[str, Any]:
    """Run ``recipe`` into ``out_dir``; resumes a killed run of the same recipe. Returns stats."""
    from ergo_data.pipeline.progress import Progress

    out = Path(out_dir)
    work = out / WORK
    fp = recipe_fingerprint(recipe)
    fp_file = work / "recipe.fingerprint"
    if fresh or (fp_file.exists() and fp_file.read_text() != fp):
        shutil.rmtree(work, ignore_errors=True)  # a different recipe: finished units no longer apply
        for sub in ("data", "rejects"):
            shutil.rmtree(out / sub, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    for stale in out.rglob(".*.tmp-*"):  # half-written files of a killed run (data/, rejects/, .work/, out/)
        stale.unlink(missing_ok=True)
    fp_file.write_text(fp)
    stages = build_stages(recipe)  # validates every stage's params before any work starts
    segments = plan_segments(recipe, stages)
    t_start = time.perf_counter()
    with Progress(quiet=quiet) as prog:
        def run_map(seg: Segment, _stages: list[Stage], prev: Path, seg_dir: Path, n_chunks: int):
            return n_chunks, _run_map(seg, prev, seg_dir, n_chunks, workers, prog)

        stats = run_segments(recipe, stages, segments, out, work, prog, run_map)
    return finish_run(out, stats, t_start, recipe)


def _run_map(seg: Segment, prev: Path, seg_dir: Path, n_chunks: int, workers: int, prog) -> list[dict[str, Any]]:
    todo = [i for i in range(n_chunks) if not (seg_dir / f"part-{i:05d}.json").exists()]
    task = prog.task(f"stage {seg.label}", total=n_chunks, done=n_chunks - len(todo))
    args = [(seg.specs, str(prev / f"part-{i:05d}.parquet"), str(seg_dir / f"part-{i:05d}")) for i in todo]
    if workers > 1 and len(args) > 1:
        with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
            for _ in pool.map(run_chunk, *zip(*args)):
                prog.advance(task, 1)
    else:
        for a in args:
            run_chunk(*a)
            prog.advance(task, 1)
    return merge_stage_stats(seg.specs, ((0, json.loads((seg_dir / f"part-{i:05d}.json").read_text())["stages"])
                                         for i in range(n_chunks)))


os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
