"""``ergo rewards ...``: validate the reward judges against human labels, region counterfactuals, hacking replay.

>>> import typer
>>> app = typer.Typer()
>>> register(app)
>>> sorted(c.name for c in app.registered_groups[0].typer_instance.registered_commands)
['counterfactual', 'hacking', 'list', 'validate']
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

from ergo_data.cli.common import FAILURE_EXIT, USAGE_EXIT, cli_errors, fail

rewards_app = typer.Typer(help="Reward components: validation against human labels, counterfactuals, hacking replay.",
                          no_args_is_help=True)

JudgeOpt = Annotated[str, typer.Option("--judge", help="vlm, ocr or stored")]
ModelOpt = Annotated[str, typer.Option("--model", help="VLM judge: 'tiny', a checkpoint dir or an offline hub name")]
MaxPixelsOpt = Annotated[int, typer.Option("--max-pixels", min=4 * 28 * 28,
                                           help="budget of the crops (and coarse views) judged: N*28*28")]
CacheOpt = Annotated[Path | None, typer.Option("--cache", help="SQLite file caching judge verdicts")]
ImageRootOpt = Annotated[Path | None, typer.Option("--image-root", help="base of relative image paths "
                                                      "(default: the current directory)")]


def register(app: typer.Typer) -> None:
    app.add_typer(rewards_app, name="rewards")


def _judge(name: str, *, model: str, max_pixels: int, batch_size: int, labels: Path | None):
    from ergo_train.rewards.judges import JUDGES, build_judge

    if name not in JUDGES:
        fail(f"unknown judge {name!r}; valid: {', '.join(sorted(JUDGES))}", USAGE_EXIT)
    params: dict[str, Any] = {}
    if name == "vlm":
        params = {"model": model, "max_pixels": max_pixels, "batch_size": batch_size}
    elif name == "ocr":
        params = {"max_pixels": max_pixels}
    else:
        if labels is None:
            fail("the stored judge needs --labels LABELS.parquet", USAGE_EXIT)
        params = {"labels": str(labels)}
    return build_judge(name, **params)


@rewards_app.command("list")
def list_rewards() -> None:
    """List the reward functions (registry names for training recipes) and their parameters."""
    from rich.console import Console
    from rich.table import Table

    from ergo_train.rewards.functions import REWARD_REGISTRY, reward_params

    table = Table(title="rewards (TRL reward functions)")
    for col in ("name", "parameters (default)", "what it scores"):
        table.add_column(col)
    for name, func in REWARD_REGISTRY.items():
        params = ", ".join(f"{k}={v!r}" for k, v in reward_params(name).items())
        table.add_row(name, params, (func.__doc__ or "").strip().splitlines()[0])
    Console().print(table)


@rewards_app.command("validate")
def validate_command(
    labels: Annotated[Path, typer.Argument(help="human labels Parquet (LABELS_SCHEMA, from `ergo ls pull`)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="report directory: report.md, metrics.json, PNGs")],
    judge: Annotated[list[str], typer.Option("--judge", help="vlm, ocr or stored; repeat to compare judges")],
    samples: Annotated[Path | None, typer.Option("--samples", help="the labelled samples: a curated-set "
                                                    "directory or Parquet file (default: LABELS' directory)")] = None,
    model: ModelOpt = "tiny",
    max_pixels: MaxPixelsOpt = 1280 * 28 * 28,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="VLM judge batch")] = 8,
    boot: Annotated[int, typer.Option("--boot", min=100, help="bootstrap resamples for the 95% CIs")] = 2000,
    image_root: ImageRootOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Each judge's r_region verdict on the human box crops vs region_answerable; r_acc's parser vs answer_correct."""
    from rich.console import Console

    from ergo_train.rewards.judges import JudgeCache
    from ergo_train.rewards.validation import run_validation

    samples = samples or labels.parent
    with cli_errors():
        judges = [_judge(j, model=model, max_pixels=max_pixels, batch_size=batch_size, labels=labels) for j in judge]
        report, comps = run_validation(labels, samples, judges, out, image_root=image_root,
                                       cache=JudgeCache(cache) if cache else None, n_boot=boot)
    console = Console()
    for c in comps:
        m = c.metrics
        if not m.get("n"):
            console.print(f"{c.title}: no items ({len(c.skipped)} left out)")
            continue
        kappa, auc = m["cohen_kappa"]["value"], m["roc_auc"]["value"]
        console.print(f"{c.title}: n={m['n']} accuracy={m['accuracy']['value']:.3f} "
                      f"kappa={'n/a' if kappa is None else f'{kappa:.3f}'} auc={'n/a' if auc is None else f'{auc:.3f}'}"
                      f" left out={len(c.skipped)}")
    console.print(f"[bold green]report:[/] {report}")


@rewards_app.command("counterfactual")
def counterfactual_command(
    samples: Annotated[Path, typer.Argument(help="curated-set directory or Parquet file")],
    out: Annotated[Path, typer.Option("--out", "-o", help="report directory: counterfactual.md/.json")],
    judge: JudgeOpt = "ocr",
    model: ModelOpt = "tiny",
    max_pixels: MaxPixelsOpt = 1280 * 28 * 28,
    low_max_pixels: Annotated[int, typer.Option("--low-max-pixels", min=4 * 28 * 28,
                                                help="budget of the downsampled view")] = 256 * 28 * 28,
    limit: Annotated[int | None, typer.Option("--limit", min=1, help="first N samples only")] = None,
    image_root: ImageRootOpt = None,
    cache: CacheOpt = None,
) -> None:
    """Judge full / downsampled / crop / masked views: which samples truly depend on the region, which need zoom."""
    from rich.console import Console

    from ergo_train.rewards.judges import JudgeCache
    from ergo_train.rewards.validation import load_samples
    from ergo_train.stages.counterfactual import run_counterfactuals, summarize, write_counterfactual_report

    if low_max_pixels >= max_pixels:
        fail("--low-max-pixels must be below --max-pixels", USAGE_EXIT)
    with cli_errors():
        rows = list(load_samples(samples, image_root).values())[:limit]
        j = _judge(judge, model=model, max_pixels=max_pixels, batch_size=4, labels=None)
        if not j.needs_image:
            fail(f"judge {judge!r} does not look at images; use vlm or ocr", USAGE_EXIT)
        results, skipped = run_counterfactuals(j, rows, max_pixels=max_pixels, low_max_pixels=low_max_pixels,
                                               cache=JudgeCache(cache) if cache else None)
    path = write_counterfactual_report(out, results, skipped, {"samples": str(samples), "judge": j.fingerprint,
                                                               "low_max_pixels": str(low_max_pixels)})
    s = summarize(results)
    console = Console()
    if s["n"]:
        console.print(f"n={s['n']} depends on region: {s['fraction_depends_on_region']:.3f}  "
                      f"needs zoom: {s['fraction_needs_zoom']:.3f}  left out: {len(skipped)}")
    else:
        console.print(f"no sample judged ({len(skipped)} left out)")
    console.print(f"[bold green]report:[/] {path}")


@rewards_app.command("hacking")
def hacking_command(
    samples: Annotated[Path, typer.Argument(help="curated-set directory or Parquet file")],
    sample_id: Annotated[str | None, typer.Option("--id", help="sample to replay on (default: the first "
                                                     "multiple-choice sample)")] = None,
    judge: Annotated[str | None, typer.Option("--judge", help="vlm, ocr or stored (omit: r_region/total not "
                                                 "scored)")] = None,
    labels: Annotated[Path | None, typer.Option("--labels", help="labels Parquet for --judge stored")] = None,
    model: ModelOpt = "tiny",
    max_pixels: MaxPixelsOpt = 1280 * 28 * 28,
    gamma: Annotated[float, typer.Option("--gamma", help="r_box area threshold")] = 0.6,
    image_root: ImageRootOpt = None,
) -> None:
    """Score the fixed adversarial suite with every reward and print the table; exit 1 if the ranking breaks."""
    from rich.console import Console

    from ergo_train.rewards.hacking import check, print_table, replay
    from ergo_train.rewards.validation import load_samples

    with cli_errors(usage=(ValueError,)):  # ValueError: --id names a sample without options and letter
        rows = load_samples(samples, image_root)
        if sample_id is None:
            sample_id = next((k for k, r in rows.items() if r.get("options") and r.get("answer_letter")
                              and r.get("boxes")), None)
        if sample_id not in rows:
            fail(f"sample {sample_id!r} not found in {samples}" if sample_id else
                 f"no multiple-choice sample with boxes in {samples}", USAGE_EXIT)
        j = _judge(judge, model=model, max_pixels=max_pixels, batch_size=8, labels=labels) if judge else None
        results = replay(rows[sample_id], judge=j, gamma=gamma, max_pixels=max_pixels)
    problems = check(results)
    console = Console()
    console.print(f"sample [bold]{sample_id}[/], judge {j.fingerprint if j else '(none)'}")
    print_table(results, problems, console)
    if problems:
        fail(f"{len(problems)} expectations of the hacking suite broke (listed in the table above)", FAILURE_EXIT)
    console.print("[bold green]every hack ranks as intended[/]")
