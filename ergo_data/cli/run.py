"""``ergo version|stages|run|query``: the curation commands."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import typer
from rich.markup import escape
from rich.table import Table

from ergo_data import __version__
from ergo_data.cli.common import FAILURE_EXIT, USAGE_EXIT, cli_errors, console, fail


def version() -> None:
    """Print the installed version."""
    console.print(f"ergo-workbench {__version__}")


def stages() -> None:
    """List the registered sources and stages with their parameters."""
    from ergo_data.pipeline.recipe import describe_params
    from ergo_data.pipeline.registry import source_registry, stage_registry

    for title, reg in (("sources", source_registry), ("stages", stage_registry)):
        table = Table(title=title, show_lines=False)
        for col in ("type", "kind", "param", "type hint", "default", "what it does"):
            table.add_column(col)
        for name, cls in reg.items():
            doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
            kind = "global" if getattr(cls, "is_global", False) else ("source" if title == "sources" else "batch")
            params = describe_params(cls) or [("", "", "")]
            for i, (k, t, d) in enumerate(params):  # escaped: `list[str]` is not rich markup
                table.add_row(name if i == 0 else "", kind if i == 0 else "", k, escape(t), escape(d),
                              escape(doc) if i == 0 else "")
        console.print(table)


def run(
    recipe: Path = typer.Argument(..., help="YAML recipe"),
    out: Path = typer.Option(..., "--out", "-o", help="output directory"),
    set_: list[str] = typer.Option([], "--set", help="override a recipe key, e.g. stages.2.max_side_px=40"),
    workers: int | None = typer.Option(None, "--workers", "-w", min=1,
                                       help="worker processes (local, default 1), or the CPUs of the local Ray "
                                       "that --executor ray starts (default: all)"),
    dry_run: bool = typer.Option(False, "--dry-run", help="validate the recipe and print the plan only"),
    fresh: bool = typer.Option(False, "--fresh", help="ignore finished work from an earlier run (local executor: "
                               "a Ray run always starts from the sources)"),
    executor: str = typer.Option("local", "--executor", help="local or ray"),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (with --executor ray)"),
    embed_images: bool = typer.Option(False, "--embed-images", help="store image bytes in the shards"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="no progress bars"),
) -> None:
    """Run a curation recipe into OUT: data/, rejects/, stats.json, recipe.json/.yaml, README.md (card). Resumes if killed."""
    from ergo_data.pipeline.recipe import build_sources, build_stages, load_recipe

    _check_executor_options(executor, workers, address)
    with cli_errors(code=USAGE_EXIT):
        rec = load_recipe(recipe, list(set_))
        if embed_images:
            for spec in rec.stages:
                if spec["type"] == "decode":
                    spec["embed_images"] = True
        build_sources(rec)
        built = build_stages(rec)
    if dry_run:
        from ergo_data.pipeline.executor.segments import plan_segments

        console.print(f"[bold]recipe[/] {rec.name}: OK")
        for s in rec.sources:
            console.print(f"  source [cyan]{s.get('name') or s['type']}[/] ({s['type']}) {s}")
        for seg in plan_segments(rec, built):
            console.print(f"  {'barrier' if seg.is_global else 'per-batch'}: {seg.label}")
        console.print(f"  output -> {out} (shard_rows={rec.output.shard_rows}, chunk_rows={rec.output.chunk_rows})")
        return
    with cli_errors():
        if executor == "ray":
            from ergo_data.pipeline.executor.ray import run_pipeline_ray

            stats = run_pipeline_ray(rec, out, address=address, quiet=quiet, workers=workers)
        else:
            from ergo_data.pipeline.executor.local import run_pipeline

            stats = run_pipeline(rec, out, workers=workers or 1, quiet=quiet, fresh=fresh)
    print_stats(stats)
    _write_card(out, quiet)
    console.print(f"[bold green]output:[/] {out.resolve()}")
    if not stats["invariant"]["ok"]:
        fail("invariant broken: inputs != kept + rejected for some source (see stats.json)", FAILURE_EXIT)


def _check_executor_options(executor: str, workers: int | None, address: str | None) -> None:
    """Refuse options the chosen executor would ignore (usage errors, before any work)."""
    if executor not in ("local", "ray"):
        fail(f"unknown executor {executor!r}; valid: local, ray", USAGE_EXIT)
    if executor == "ray" and workers is not None and address is not None:
        fail("--workers sets the CPUs of the local Ray that --executor ray starts; with --address the cluster "
             "brings its own CPUs (set `ray.actors` in the recipe for stateful stages): drop --workers", USAGE_EXIT)
    if executor == "local" and address is not None:
        fail("--address names a Ray cluster: use it with --executor ray", USAGE_EXIT)


def _write_card(out: Path, quiet: bool) -> None:
    from ergo_data.card.card import write_card

    with cli_errors(failure=(ValueError,)):  # an unreadable stats.json or shard
        path = write_card(out, quiet=quiet)
    console.print(f"[bold]data card:[/] {path}")


def print_stats(stats: dict) -> None:
    table = Table(title=f"stages of {stats['name']}")
    for col in ("stage", "in", "out", "rejected (by reason)", "seconds"):
        table.add_column(col, justify="right" if col in ("in", "out", "seconds") else "left")
    for s in stats["stages"]:
        reasons = ", ".join(f"{k}: {v}" for k, v in s["rejected"].items()) or "-"
        table.add_row(s["stage"], str(s["in"]), str(s["out"]), reasons, f"{s['seconds']:.2f}")
    console.print(table)
    src = Table(title="per source: inputs = kept + rejected")
    for col in ("source", "inputs", "kept", "rejected", "check"):
        src.add_column(col)
    for name, c in stats["sources"].items():
        src.add_row(name, str(c["inputs"]), str(c["kept"]), str(c["rejected"]),
                    "[green]ok[/]" if c["ok"] else "[red]BROKEN[/]")
    console.print(src)


def query(
    out: Path = typer.Argument(..., help="output directory of `ergo run`"),
    sql: str = typer.Argument(..., help="SQL over tables `samples` (data/) and `rejects` (rejects/)"),
    limit: int = typer.Option(50, help="rows to print"),
    as_json: bool = typer.Option(False, "--json", help="print JSON lines instead of a table"),
) -> None:
    """Run DuckDB SQL over a curated set, e.g. ergo query out/demo "SELECT reason, count(*) FROM rejects GROUP BY 1"."""
    from ergo_data.pipeline.query import run_query

    with cli_errors():  # exit 2: not a curated set, SQL DuckDB refuses; exit 1: unreadable shards
        result = run_query(out, sql)
    rows = result.slice(0, limit).to_pylist()
    if as_json:
        for r in rows:
            sys.stdout.write(json.dumps(r, default=str) + "\n")
        return
    table = Table(title=f"{result.num_rows} rows" + (f" (first {limit})" if result.num_rows > limit else ""))
    for c in result.column_names:
        table.add_column(c)
    for r in rows:
        table.add_row(*[_short(r[c]) for c in result.column_names])
    console.print(table)


def _short(v: object, n: int = 60) -> str:
    s = str(v)
    return s if len(s) <= n else s[: n - 1] + "…"


def register(app: typer.Typer) -> None:
    """Add ``version``, ``stages``, ``run``, ``query`` to ``app``."""
    app.command()(version)
    app.command()(stages)
    app.command()(run)
    app.command()(query)
