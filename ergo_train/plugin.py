"""Plugs ``ergo_train`` into ``ergo_data`` (stages backed by models) and into the ``ergo`` CLI.

Each area keeps its commands in its own module with ``register(app)``.
"""

from __future__ import annotations

import importlib

CLI_MODULES = ("ergo_train.cli.rewards", "ergo_train.cli.sft", "ergo_train.cli.train", "ergo_train.cli.eval")
STAGE_MODULES = ("ergo_train.stages.difficulty", "ergo_train.stages.counterfactual")  # importing registers the stages


def register_stages() -> None:
    for mod in STAGE_MODULES:
        importlib.import_module(mod)


def register_cli(app) -> None:
    for mod in CLI_MODULES:
        importlib.import_module(mod).register(app)
