"""``ergo eval``: run a benchmark (V*, HR-Bench, MME-RealWorld) in one or more inference modes.

>>> import typer
>>> app = typer.Typer()
>>> register(app)
>>> [c.name for c in app.registered_commands]
['eval']
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def register(app: typer.Typer) -> None:
    app.command("eval")(eval_command)


def eval_command(
    bench: Annotated[str, typer.Option("--bench", help="vstar, hrbench or mme")],
    path: Annotated[Path, typer.Option("--path", help="V* folder, HR-Bench .tsv (or folder), MME json (or folder)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder: results.jsonl, report.md, plot, summary")],
    model: Annotated[str, typer.Option("--model", help="'tiny', a local checkpoint dir (e.g. from `ergo train`) "
                                       "or a hub name available offline")] = "tiny",
    mode: Annotated[str, typer.Option("--mode", help="direct, coarse_to_fine, oracle_crop; comma-separated")] = (
        "coarse_to_fine"),
    max_pixels: Annotated[int, typer.Option("--max-pixels", min=4 * 28 * 28, help="pixel budget of every image "
                                            "shown (1003520 = 1280*28*28, ERGO's main budget)")] = 1280 * 28 * 28,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="first N items only")] = None,
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", min=1, help="per generation (per turn)")] = 256,
    timeout: Annotated[float | None, typer.Option("--timeout", min=0.0, help="seconds per item and mode; "
                                                     "slower items count as WRONG")] = None,
    seed: Annotated[int, typer.Option("--seed", help="V* option shuffle seed")] = 0,
    device: Annotated[str, typer.Option("--device", help="auto, cpu, cuda, cuda:1 ...")] = "auto",
    dtype: Annotated[str, typer.Option("--dtype", help="auto (bfloat16 on GPU, float32 on CPU), bfloat16, "
                                       "float16, float32")] = "auto",
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bar")] = False,
) -> None:
    """Evaluate a model on a benchmark; every failure counts as WRONG and is listed in the report."""
    from rich.console import Console
    from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn

    from ergo_data.cli.common import USAGE_EXIT, cli_errors, fail
    from ergo_train.eval.evaluate import MODES, EvalSettings, run_eval
    from ergo_train.eval.loaders import BENCHES

    console = Console()

    modes = [m.strip() for m in mode.split(",") if m.strip()]
    if bench not in BENCHES:
        fail(f"unknown bench {bench!r}; valid: {', '.join(BENCHES)}", USAGE_EXIT)
    unknown = [m for m in modes if m not in MODES]
    if unknown or not modes:
        fail(f"unknown mode(s) {unknown or mode!r}; valid: {', '.join(MODES)}", USAGE_EXIT)
    if dtype not in ("auto", "bfloat16", "float16", "float32"):
        fail(f"unknown dtype {dtype!r}; valid: auto, bfloat16, float16, float32", USAGE_EXIT)
    settings = EvalSettings(max_pixels=max_pixels, max_new_tokens=max_new_tokens, timeout_s=timeout)
    columns = (SpinnerColumn(), TextColumn("{task.description}: {task.completed} records"), TimeElapsedColumn())
    with Progress(*columns, console=console, disable=quiet, transient=True) as progress:
        task = progress.add_task(f"{bench} x {','.join(modes)}", total=None)
        with cli_errors(usage=(ValueError,)):  # ValueError: a mode the bench cannot run (oracle_crop, no boxes)
            paths = run_eval(bench, path, model, modes, out, settings=settings, limit=limit, shuffle_seed=seed,
                             device=device, dtype=dtype, on_record=lambda rec: progress.advance(task))
    _print_summary(console, paths["summary"])
    console.print(f"[bold green]report:[/] {paths['report']}")
    console.print(f"[bold]per-item results:[/] {paths['results']}")


def _print_summary(console, summary_path: Path) -> None:
    import json
    import math

    from rich.table import Table

    summary = json.loads(summary_path.read_text(encoding="utf-8"))
    table = Table(title="accuracy (every failure counted wrong; 95% Wilson CI)")
    for col in ("mode", "n", "correct", "acc %", "95% CI %", "failed", "tokens/item", "s/item"):
        table.add_column(col, no_wrap=True)
    def pct(v: float | None) -> str:
        return "–" if v is None or math.isnan(v) else f"{100 * v:.1f}"

    for m, s in summary["modes"].items():
        table.add_row(m, str(s["n"]), str(s["correct"]), pct(s["accuracy"]), f"{pct(s['ci_low'])}–{pct(s['ci_high'])}",
                      str(s["n_failed"]), "–" if s["vision_tokens_mean"] is None else f"{s['vision_tokens_mean']:.0f}",
                      "–" if s["wall_s_mean"] is None else f"{s['wall_s_mean']:.2f}")
    console.print(table)
