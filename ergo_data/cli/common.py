"""What every ``ergo`` command shares: the consoles and ONE way out on an error, with one set of exit codes.

- exit 2 (``USAGE_EXIT``): a usage or configuration error: the command could not start as asked (a bad
  argument, recipe, input path or environment variable); typer's own usage errors exit 2 as well;
- exit 1 (``FAILURE_EXIT``): a runtime failure: the command started and something failed (a server, a
  file, items that could not be processed).

``fail(message, code)`` prints ``error: message`` on stderr and exits; ``cli_errors()`` turns the project's
errors (``ErgoError``, each with its own ``exit_code``) and ``OSError`` raised inside it into that exit:

>>> import typer
>>> from ergo_data.core.errors import RecipeError
>>> try:
...     with cli_errors():
...         raise RecipeError("recipe 'x.yaml' not found")
... except typer.Exit as e:
...     print(e.exit_code)
2
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn

import typer
from rich.console import Console

from ergo_data.core.errors import FAILURE_EXIT, USAGE_EXIT, ErgoError

__all__ = ["FAILURE_EXIT", "USAGE_EXIT", "cli_errors", "console", "err", "fail", "require_run_output"]

console = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def fail(message: str, code: int = USAGE_EXIT) -> NoReturn:
    """Print ``error: message`` on stderr and exit with ``code`` (``USAGE_EXIT`` or ``FAILURE_EXIT``; pass it)."""
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    raise typer.Exit(code)


@contextmanager
def cli_errors(*, usage: tuple[type[Exception], ...] = (), failure: tuple[type[Exception], ...] = (),
               code: int | None = None) -> Iterator[None]:
    """Exit through ``fail`` on the errors a user can act on, raised inside the block.

    An ``ErgoError`` exits with its own ``exit_code``, an ``OSError`` (disk, permissions, a missing file)
    with ``FAILURE_EXIT``; other exception types exit ``USAGE_EXIT`` if listed in ``usage`` and
    ``FAILURE_EXIT`` if listed in ``failure``. ``code`` overrides them all (``USAGE_EXIT`` around the
    checks that run before any work starts). Anything else is a bug and keeps its traceback.
    """
    try:
        yield
    except ErgoError as e:
        fail(str(e), code or e.exit_code)
    except OSError as e:
        fail(os_error_message(e), code or FAILURE_EXIT)
    except usage as e:
        fail(str(e), code or USAGE_EXIT)
    except failure as e:
        fail(str(e), code or FAILURE_EXIT)


def os_error_message(e: OSError) -> str:
    """``OSError`` as one sentence with the path it concerns.

    >>> os_error_message(FileExistsError(17, "File exists", "out/data"))
    'out/data: File exists'
    """
    if e.filename is not None and e.strerror:
        return f"{e.filename}: {e.strerror}"
    return str(e)


def require_run_output(out: Path, part: str) -> None:
    """A usage error unless ``out`` holds ``part`` (``data``, ``stats.json``) of an ``ergo run`` output."""
    if not (out / part).exists():
        fail(f"{out} has no {part}: is it the output folder of `ergo run`?", USAGE_EXIT)
