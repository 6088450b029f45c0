"""Plugs ``ergo_train`` into ``ergo_data`` (stages backed by models) and into the ``ergo`` CLI.

Each area keeps its commands in its own module with ``register(app)``; missing modules are skipped.
"""

from __future__ import annotations

import importlib

CLI_MODULES = ("ergo_train.cli_rewards", "ergo_train.cli_train", "ergo_train.cli_eval")
STAGE_MODULES = ("ergo_train.difficulty", "ergo_train.counterfactual", "ergo_train.ocr_stage")


def _import(mod: str):
    try:
        return importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name != mod:
            raise
        return None


def register_stages() -> None:
    for mod in STAGE_MODULES:
        _import(mod)


def register_cli(app) -> None:
    for mod in CLI_MODULES:
        m = _import(mod)
        if m is not None:
            m.register(app)
