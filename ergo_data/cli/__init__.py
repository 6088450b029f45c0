"""``ergo``: the command line (typer + rich); one module per command group, ``common.fail`` for exits."""

from ergo_data.cli.app import app, main

__all__ = ["app", "main"]
