"""Ray Data executor (``ergo run RECIPE --out DIR --executor ray [--address auto]``): same recipe, same stage code.

It mirrors :func:`ergo_data.pipeline.executor.local.run_pipeline` step by step and reuses its parts:

1. sources are read on the driver (``read_sources``) into chunks of ``output.chunk_rows`` rows;
2. the chunks become a Ray dataset (``ray.data.from_arrow``, re-cut into blocks of ``ray.max_block_rows``
   rows, by default about four per CPU: ``default_block_rows``) and every per-batch
   stage runs through ``map_batches`` calling ``process_table``, the local executor's own loop over
   ``Stage.process``; consecutive stateless stages share one task, a ``stateful`` stage (a judge, OCR)
   runs in an actor pool of 1..``ray.actors`` actors, each with the stage's ``num_gpus``;
3. a global stage (dedup, split, ...) is a barrier: the blocks stream back to the driver, are written in
   the local layout, and the stage runs there through the local ``_run_global``;
4. ``write_final`` validates, shards and builds ``stats.json`` exactly as locally.

Rejects and per-stage stats travel inside the dataset, so no worker writes files: an output block holds
the kept rows (``__ergo_meta`` null) followed by *meta rows* whose ``__ergo_meta`` is a JSON record,
``{"kind": "reject", "row": {id, source, stage, reason, detail}}`` or
``{"kind": "stats", "first": i, "stages": [...]}`` (``i``: position of the first stage of the group in its
segment). Later stages pass meta rows through untouched; the driver splits them off per segment.

>>> kept = pa.table({"id": ["s/a"], "source": ["s"]})
>>> block = join_meta(kept, [("s/b", json.dumps({"kind": "reject", "row": {"id": "s/b"}}))])
>>> live, meta = split_meta(block)
>>> live.column_names, live.num_rows, [json.loads(m)["kind"] for m in meta.column(META).to_pylist()]
(['id', 'source'], 1, ['reject'])

A run (starts a local Ray of 2 CPUs; ``tests/ergo_data/pipeline/test_ray_executor.py`` runs it)::

    profile = {}
    run_pipeline_ray(load_recipe("pipelines/demo.yaml"), "/tmp/ray-demo", quiet=True, workers=2, profile=profile)
    profile["blocks"], profile["driver_s"]  # blocks collected, driver seconds spent on them (meta, writes)
"""

from __future__ import annotations

import json
import logging
import math
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ergo_data.core.errors import RecipeError
from ergo_data.core.schema import REJECT_SCHEMA
from ergo_data.pipeline.contract import Stage
from ergo_data.pipeline.executor import segments as shared
from ergo_data.pipeline.outputs import write_parquet_atomic
from ergo_data.pipeline.recipe import Recipe, build_stage, build_stages

META = "__ergo_meta"
RAY_WORK = ".work-ray"  # the driver's scratch layout (same as the local `.work`); removed after a run


# ---- meta rows: rejects and stats inside the blocks ----------------------------------------------
def split_meta(block: pa.Table) -> tuple[pa.Table, pa.Table]:
    """``(live rows without the meta column, meta rows as a table {id, __ergo_meta})``."""
    if META not in block.column_names:
        return block, pa.table({"id": pa.array([], pa.string()), META: pa.array([], pa.string())})
    is_meta = pc.is_valid(block.column(META))
    live = block.filter(pc.invert(is_meta)).drop_columns([META])
    meta = block.filter(is_meta).select(["id", META])
    return live, meta.cast(pa.schema([("id", pa.string()), (META, pa.string())]))


def join_meta(kept: pa.Table, meta: list[tuple[str, str]], carried: pa.Table | None = None) -> pa.Table:
    """Kept rows (meta null), then ``carried`` meta rows, then the new ``(id, json)`` meta rows."""
    parts = [kept.append_column(META, pa.nulls(kept.num_rows, pa.string()))]
    if carried is not None and carried.num_rows:
        parts.append(carried)
    if meta:
        parts.append(pa.table({"id": pa.array([m[0] for m in meta], pa.string()),
                               META: pa.array([m[1] for m in meta], pa.string())}))
    return pa.concat_tables(parts, promote_options="permissive") if len(parts) > 1 else parts[0]


def run_group(block: pa.Table, stages: list[Stage], first: int, slice_rows: int | None = None) -> pa.Table:
    """One ``map_batches`` call: run ``stages`` on the live rows of ``block``, ``slice_rows`` rows at a time
    (the local executor's chunk size: a block of many chunks runs the stage code on the same batch sizes);
    append rejects and stats."""
    live, carried = split_meta(block)
    step = slice_rows or max(1, live.num_rows)
    kept_parts: list[pa.Table] = []
    meta: list[tuple[str, str]] = []
    for start in range(0, max(1, live.num_rows), step):
        kept, rejects, stats = shared.process_table(stages, live.slice(start, step))
        kept_parts.append(kept)
        meta += [(r["id"], json.dumps({"kind": "reject", "row": r})) for r in rejects]
        meta.append(("", json.dumps({"kind": "stats", "first": first, "stages": stats})))
    kept = kept_parts[0] if len(kept_parts) == 1 else pa.concat_tables(kept_parts, promote_options="permissive")
    return join_meta(kept, meta, carried)


def run_specs(block: pa.Table, specs: list[dict[str, Any]], first: int, slice_rows: int | None = None) -> pa.Table:
    """Stateless group as a Ray task: stages built once per worker process (the local executor's cache)."""
    return run_group(block, shared.stages_for(specs), first, slice_rows)


class StatefulStageActor:
    """A stateful stage as a Ray actor: built once (model loaded once), then called per block."""

    def __init__(self, specs: list[dict[str, Any]], first: int, slice_rows: int | None = None) -> None:
        self.stages = [build_stage(s) for s in specs]
        self.first = first
        self.slice_rows = slice_rows

    def __call__(self, block: pa.Table) -> pa.Table:
        return run_group(block, self.stages, self.first, self.slice_rows)


# ---- planning -----------------------------------------------------------------------------------
@dataclass
class Group:
    """Consecutive stages of one segment that run in one ``map_batches`` call."""

    first: int  # position of the first stage in its segment
    specs: list[dict[str, Any]]
    stateful: bool
    num_gpus: float


def plan_groups(seg: shared.Segment, stages: list[Stage]) -> list[Group]:
    """Stateless stages share a task; each stateful stage gets its own actor pool.

    >>> from ergo_data.pipeline.recipe import load_recipe
    >>> r = load_recipe("pipelines/demo.yaml")
    >>> segs = shared.plan_segments(r, build_stages(r))
    >>> [(g.first, len(g.specs), g.stateful) for g in plan_groups(segs[0], build_stages(r)[:4])]
    [(0, 4, False)]
    """
    groups: list[Group] = []
    for i, (spec, stage) in enumerate(zip(seg.specs, stages)):
        if stage.stateful or not groups or groups[-1].stateful:
            groups.append(Group(i, [spec], bool(stage.stateful), float(stage.num_gpus or 0.0)))
        else:
            groups[-1].specs.append(spec)
    return groups


def bounded_blocks(tables: list[pa.Table], max_rows: int) -> list[pa.Table]:
    """Re-cut the chunks into consecutive blocks of ``max_rows`` rows (the last one shorter), in order.

    >>> [t.num_rows for t in bounded_blocks([pa.table({"a": list(range(5))}), pa.table({"a": [1]})], 2)]
    [2, 2, 2]
    """
    rows = pa.concat_tables(tables, promote_options="permissive") if tables else pa.table({})
    return [rows.slice(i, max_rows) for i in range(0, rows.num_rows, max_rows)]


def default_block_rows(n_rows: int, cpus: float, chunk_rows: int, most: int = 1024) -> int:
    """Rows per Ray block when ``ray.max_block_rows`` is not set: about four blocks per CPU, at least
    ``chunk_rows`` and at most ``most`` rows.

    Each block is one task, and Ray's own cost per task was 65-140 ms on 2 CPUs: the 63 blocks of 16 rows of
    1000 images ran at 0.72 of the local executor's throughput (docs/scale.md). Four per CPU still spread a
    slow block's tail over the others.

    >>> default_block_rows(1000, 2, 16), default_block_rows(40, 2, 16), default_block_rows(10**7, 64, 16)
    (125, 16, 1024)
    """
    return max(chunk_rows, min(-(-n_rows // max(1, round(4 * cpus))), most))


def _run_cpus() -> float:
    """The CPUs this run's dataset may use: the cap set by ``--workers`` on a running Ray, else the cluster's."""
    import ray
    import ray.data

    cap = ray.data.DataContext.get_current().execution_options.resource_limits.cpu
    if cap is not None and math.isfinite(cap) and cap > 0:
        return float(cap)
    return float(ray.cluster_resources().get("CPU", 1.0))


def segment_dataset(tables: list[pa.Table], groups: list[Group], max_actors: int, max_block_rows: int,
                    slice_rows: int | None = None):
    """The Ray dataset of one per-batch segment: blocks of at most ``max_block_rows`` rows (so every worker
    gets work and no task bundles several blocks), one ``map_batches`` per group, one batch per block."""
    import ray.data

    ds = ray.data.from_arrow(bounded_blocks(tables, max_block_rows))
    for g in groups:
        common = {"batch_size": None, "batch_format": "pyarrow", "zero_copy_batch": True}
        if g.stateful:
            # min_size=1: on a small cluster a full pool of 1-CPU actors can starve the upstream tasks
            # (deadlock seen on 2 CPUs, see DEPENDENCY_FACTS); the pool grows to max_actors when CPUs free up.
            ds = ds.map_batches(StatefulStageActor, fn_constructor_args=(g.specs, g.first, slice_rows),
                                compute=ray.data.ActorPoolStrategy(min_size=1, max_size=max_actors),
                                num_gpus=g.num_gpus or None, **common)
        else:
            ds = ds.map_batches(run_specs, fn_args=(g.specs, g.first, slice_rows), **common)
    return ds


# ---- driver -------------------------------------------------------------------------------------
def _read_tables(folder: Path) -> list[pa.Table]:
    return [pq.read_table(f) for f in sorted(folder.glob("part-*.parquet")) if ".rejects." not in f.name]


def _run_map_ray(seg: shared.Segment, stages: list[Stage], prev: Path, seg_dir: Path, recipe: Recipe, prog,
                 profile: dict[str, Any]) -> tuple[int, list[dict[str, Any]]]:
    """Run a per-batch segment on Ray; write kept/rejects chunks in the local layout. ``(chunks, stats)``.

    ``profile`` gains ``blocks`` and ``driver_s`` (the driver's own seconds per block: meta rows, writes)."""
    tables = [t for t in _read_tables(prev) if t.num_rows]
    n_rows = sum(t.num_rows for t in tables)
    max_rows = recipe.ray.max_block_rows or default_block_rows(n_rows, _run_cpus(), recipe.output.chunk_rows)
    task = prog.task(f"stage {seg.label} (ray)", total=-(-n_rows // max_rows))
    chunk_stats: list[tuple[int, list[dict[str, Any]]]] = []
    n_kept = 0
    if tables:
        ds = segment_dataset(tables, plan_groups(seg, stages), recipe.ray.actors, max_rows, recipe.output.chunk_rows)
        for i, block in enumerate(_iter_blocks(ds)):
            t0 = time.perf_counter()
            live, meta = split_meta(block)
            records = [json.loads(m) for m in meta.column(META).to_pylist()]
            rejects = [m["row"] for m in records if m["kind"] == "reject"]
            chunk_stats += [(m["first"], m["stages"]) for m in records if m["kind"] == "stats"]
            if live.num_rows:
                write_parquet_atomic(live, seg_dir / f"part-{n_kept:05d}.parquet")
                n_kept += 1
            if rejects:
                write_parquet_atomic(pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA),
                                     seg_dir / f"part-{i:05d}.rejects.parquet")
            prog.advance(task, 1)
            profile["blocks"] = profile.get("blocks", 0) + 1
            profile["driver_s"] = profile.get("driver_s", 0.0) + time.perf_counter() - t0
    return n_kept, shared.merge_stage_stats(seg.specs, chunk_stats)


def _iter_blocks(ds) -> Iterator[pa.Table]:
    yield from ds.iter_batches(batch_size=None, batch_format="pyarrow")


def run_pipeline_ray(recipe: Recipe, out_dir: str | Path, address: str | None = None, quiet: bool = False,
                     workers: int | None = None, timeline: str | Path | None = None,
                     profile: dict[str, Any] | None = None) -> dict[str, Any]:
    """Run ``recipe`` on Ray into ``out_dir``; returns the same stats as the local ``run_pipeline``.

    ``address``: ``None`` starts a local Ray (or joins ``RAY_ADDRESS``, or the one already initialised in
    this process); ``"auto"`` joins the cluster this node belongs to; ``"ray://host:10001"`` a remote one.
    ``workers``: the CPUs of the local Ray this call starts (default: all of the machine's); on a Ray that is
    already up it caps the CPUs this run's dataset uses. ``timeline``: write Ray's task timeline there
    (Chrome trace JSON, ``ray.timeline``). ``profile``: a dict that gains ``init_s`` (the Ray start),
    ``run_s`` (the rest), ``blocks`` and ``driver_s`` (the driver's own time on the blocks: meta rows, writes).
    Not resumable: a Ray run starts from the sources every time.
    """
    from ergo_data.pipeline.progress import Progress

    profile = {} if profile is None else profile
    out = Path(out_dir)
    work = out / RAY_WORK
    stages = build_stages(recipe)  # validates every stage's params before any work starts
    segments = shared.plan_segments(recipe, stages)
    t_start = time.perf_counter()
    owns_ray = connect(address, quiet, workers)  # before touching `out`: an unreachable cluster leaves it as it was
    profile["init_s"] = time.perf_counter() - t_start
    t_run = time.perf_counter()
    restore = _configure_data_context(quiet, None if owns_ray else workers)
    try:
        for sub in (RAY_WORK, shared.WORK, "data", "rejects"):  # the outputs will come from this run only
            shutil.rmtree(out / sub, ignore_errors=True)
        work.mkdir(parents=True)
        with Progress(quiet=quiet) as prog:
            def run_map(seg: shared.Segment, seg_stages: list[Stage], prev: Path, seg_dir: Path, _n: int):
                return _run_map_ray(seg, seg_stages, prev, seg_dir, recipe, prog, profile)

            stats = shared.run_segments(recipe, stages, segments, out, work, prog, run_map)
        if timeline is not None:
            import ray

            ray.timeline(filename=str(timeline))
    finally:
        restore()
        if owns_ray:
            import ray

            ray.shutdown()
    shared.finish_run(out, stats, t_start, recipe)
    shutil.rmtree(work, ignore_errors=True)
    profile["run_s"] = time.perf_counter() - t_run
    return stats


def connect(address: str | None, quiet: bool = False, workers: int | None = None) -> bool:
    """Join or start Ray; True if this call started it (then the caller shuts it down).

    A local Ray started here gets ``num_cpus=workers`` (all CPUs if None) and runs its workers at normal
    priority (``RAY_worker_niceness=0`` unless set: Ray's default, nice 15, made ``decode`` 2.5-4x slower
    than the local executor on a busy machine, docs/scale.md).
    """
    try:
        import ray
    except ImportError:
        raise RecipeError("--executor ray needs Ray Data: pip install 'ergo-workbench[ray]'") from None
    if ray.is_initialized():
        return False
    kwargs: dict[str, Any] = {"logging_level": "WARNING" if quiet else "INFO", "log_to_driver": not quiet}
    local = address is None and not os.environ.get("RAY_ADDRESS")
    if local:
        kwargs["include_dashboard"] = False  # a throwaway local cluster: no dashboard to serve
        kwargs["num_cpus"] = workers
        os.environ.setdefault("RAY_worker_niceness", "0")  # read by the raylet this call starts
    elif workers is not None:
        raise RecipeError("--workers sets the CPUs of the local Ray `ergo` starts: a cluster "
                          f"({address or os.environ.get('RAY_ADDRESS')}) brings its own; drop --workers")
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as e:
        where = address or os.environ.get("RAY_ADDRESS") or "a new local instance"
        raise RecipeError(f"cannot start or reach Ray at {where}: {e}") from None
    return True


def _configure_data_context(quiet: bool, max_cpus: int | None = None):
    """Blocks come back in input order (reproducible shards); Ray's own bars off (ours are on); at most
    ``max_cpus`` CPUs for this run on a Ray that was already up."""
    import ray.data

    ctx = ray.data.DataContext.get_current()
    logger = logging.getLogger("ray.data")
    opts = ctx.execution_options
    before = (opts.preserve_order, ctx.enable_progress_bars, logger.level, opts.resource_limits)
    opts.preserve_order = True
    ctx.enable_progress_bars = False
    if max_cpus is not None:
        opts.resource_limits = opts.resource_limits.copy(cpu=max_cpus)
    if quiet:
        logger.setLevel(logging.ERROR)

    def restore() -> None:
        opts.preserve_order, ctx.enable_progress_bars, level, opts.resource_limits = before
        logger.setLevel(level)

    return restore
