"""The ``ergo`` app: ``ergo --help`` lists the commands.

Each command group lives in its own module with ``register(app)`` (``ergo_data.cli.run``, ``.ls``, ``.card``), and packages
outside ``ergo_data`` (``ergo_train``) add theirs through the ``ergo.plugins`` entry-point group.
"""

from __future__ import annotations

import importlib
from importlib.metadata import entry_points

import typer

app = typer.Typer(help="ergo workbench: curate high-resolution visual QA data, validate rewards, train ERGO.",
                  no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False)

# Modules of this package that add commands with a `register(app)` function.
CLI_MODULES = ("ergo_data.cli.run", "ergo_data.cli.ls", "ergo_data.cli.card")


def _register_plugins() -> None:
    for mod in CLI_MODULES:
        importlib.import_module(mod).register(app)
    for ep in entry_points(group="ergo.plugins"):
        plugin = ep.load()
        if hasattr(plugin, "register_cli"):
            plugin.register_cli(app)


_register_plugins()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
