"""``ergo train RECIPE.yaml``: GRPO/GSPO training of an ERGO policy with TRL (see docs/training.md).

>>> import typer
>>> app = typer.Typer()
>>> register(app)
>>> [c.name for c in app.registered_commands]
['train']
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated

import typer

from ergo_train.cli.options import ModelOption, OutOption, SetOption, main_process, recipe_overrides

SHOWN_METRICS = ("reward", "reward_std", "frac_reward_zero_std", "ergo/zero_variance_groups", "ergo/zoom_rate",
                 "ergo/zoom_ok_rate", "ergo/zoom_area_frac", "ergo/vision_tokens_turn1", "ergo/vision_tokens_turn2",
                 "ergo/judge_failure_rate", "tools/call_frequency", "loss", "step_time")


def register(app: typer.Typer) -> None:
    app.command("train")(train_command)


def train_command(
    recipe: Annotated[Path, typer.Argument(help="training recipe YAML, e.g. pipelines/train_tiny.yaml")],
    model: ModelOption = None,
    set_: SetOption = None,
    out: OutOption = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate the recipe and print the plan only")] = False,
) -> None:
    """Train with TRL's GRPOTrainer and the two-turn zoom rollout; saves the model and processor into the output."""
    from rich.console import Console
    from rich.table import Table

    from ergo_data.cli.common import cli_errors
    from ergo_train.rewards.reward_set import reward_weights
    from ergo_train.train.data import load_curated
    from ergo_train.train.grpo import train
    from ergo_train.train.recipe import PRESETS, grpo_config_kwargs, load_train_recipe

    console = Console()
    overrides = recipe_overrides(set_, model, out)
    with cli_errors():
        rec = load_train_recipe(recipe, overrides)
        config = grpo_config_kwargs(rec)
        if dry_run:
            rows = len(load_curated(rec.data, rec.max_pixels))
    if dry_run:
        console.print(f"[bold]training recipe[/] {rec.name}: OK")
        console.print(f"  model {rec.model} ({rec.dtype}), lora: {rec.lora.model_dump() if rec.lora else 'off'}")
        console.print(f"  data {rec.data.path} split={rec.data.split}: {rows} rows; budget {rec.budget_tokens} "
                      f"tokens (max_pixels {rec.max_pixels})")
        console.print(f"  rewards {reward_weights(rec.rewards)}")
        console.print(f"  preset {rec.preset} {PRESETS[rec.preset]}")
        console.print(f"  GRPOConfig {config}")
        return
    with cli_errors():
        result = train(rec)
    if not main_process():
        return
    steps = [h for h in result.log_history if "loss" in h]
    table = Table(title=f"{rec.name}: {result.global_step} steps")
    table.add_column("metric")
    for h in steps:
        table.add_column(f"step {h.get('step')}", justify="right")
    names = [m for m in SHOWN_METRICS if any(m in h for h in steps)]
    names += sorted({k for h in steps for k in h if k.startswith("rewards/") and k.endswith("/mean")})
    for name in names:
        table.add_row(name, *[_fmt(h.get(name)) for h in steps])
    console.print(table)
    console.print(f"[bold green]model:[/] {result.output_dir.resolve()}")


def _fmt(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)
