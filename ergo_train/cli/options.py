"""Options shared by ``ergo sft`` and ``ergo train``: the model, ``--set`` overrides and the output directory.

>>> recipe_overrides(["sft.max_steps=5"], "tiny", None)
['sft.max_steps=5', 'model=tiny']
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

ModelOption = Annotated[str | None, typer.Option("--model", help="'tiny', a local checkpoint dir or a hub name "
                                                 "(overrides the recipe's model)")]
SetOption = Annotated[list[str] | None, typer.Option("--set", help="override a recipe key, e.g. "
                                                     "grpo.max_steps=10, sft.max_steps=50 or data.path=out/demo")]
OutOption = Annotated[Path | None, typer.Option("--out", "-o", help="output directory (overrides output_dir)")]


def recipe_overrides(set_: list[str] | None, model: str | None, out: Path | None) -> list[str]:
    """The ``--set`` list with ``--model`` and ``--out`` appended as the overrides they stand for."""
    overrides = list(set_ or [])
    if model:
        overrides.append(f"model={model}")
    if out:
        overrides.append(f"output_dir={out}")
    return overrides


def main_process() -> bool:
    """False on the other processes of an ``accelerate launch`` run: they train, only the main one reports."""
    import os

    return int(os.environ.get("RANK", "0")) == 0
