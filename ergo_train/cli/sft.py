"""``ergo sft RECIPE.yaml``: cold-start SFT of the two-turn zoom episode with TRL (see docs/training.md).

>>> import typer
>>> app = typer.Typer()
>>> register(app)
>>> [c.name for c in app.registered_commands]
['sft']
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ergo_train.cli.options import ModelOption, OutOption, SetOption, main_process, recipe_overrides

SHOWN = ("loss", "mean_token_accuracy", "grad_norm", "learning_rate")


def register(app: typer.Typer) -> None:
    app.command("sft")(sft_command)


def sft_command(
    recipe: Annotated[Path, typer.Argument(help="SFT recipe YAML, e.g. pipelines/sft_tiny.yaml")],
    model: ModelOption = None,
    set_: SetOption = None,
    out: OutOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate, render the first episode, print the plan")] = False,
) -> None:
    """Train on two-turn zoom episodes built from a curated set (TRL SFTTrainer); saves a checkpoint that
    `ergo train` starts from (model: <output dir>)."""
    from rich.console import Console
    from rich.table import Table

    from ergo_data.cli.common import cli_errors
    from ergo_train.train.sft import build_sft_trainer, load_sft_recipe, run_sft, sft_config_kwargs

    console = Console()
    overrides = recipe_overrides(set_, model, out)
    with cli_errors(usage=(ValueError,)):  # a bad recipe or curated set; a model that cannot load exits 1
        rec = load_sft_recipe(recipe, overrides)
        parts = build_sft_trainer(rec)
    if dry_run:
        episode = parts.collator.episode(parts.dataset[0])
        console.print(f"[bold]SFT recipe[/] {rec.name}: OK")
        console.print(f"  model {rec.model} ({rec.dtype}), lora: {rec.lora.model_dump() if rec.lora else 'off'}")
        console.print(f"  data {rec.data.path} split={rec.data.split}: {len(parts.dataset)} episodes; budget "
                      f"{rec.budget_tokens} tokens; margin {rec.margin}; min_region {rec.min_region} patches")
        console.print(f"  first episode: {len(episode.input_ids)} tokens, {sum(episode.loss_mask)} trained; turn 1:")
        console.print(f"    {episode.turn1_text!r}", highlight=False)
        console.print(f"  SFTConfig {sft_config_kwargs(rec)}")
        return
    with cli_errors(failure=(ValueError,)):
        result = run_sft(rec, parts)
    if not main_process():
        return
    steps = [h for h in result.log_history if "loss" in h]
    table = Table(title=f"{rec.name}: {result.global_step} steps")
    table.add_column("step", justify="right")
    for name in SHOWN:
        table.add_column(name, justify="right")
    for h in steps:
        table.add_row(str(h.get("step")), *[f"{h[n]:.4g}" if isinstance(h.get(n), float) else "-" for n in SHOWN])
    console.print(table)
    console.print(f"[bold green]model:[/] {result.output_dir.resolve()}  (next: ergo train ... --model "
                  f"{result.output_dir})")
