"""Rich progress bars for long work (quiet mode for tests and library use).

>>> with Progress(quiet=True) as p:
...     t = p.task("decode", total=2)
...     p.advance(t, 2)
"""

from __future__ import annotations

from typing import Any, Self

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from rich.progress import Progress as RichProgress


class Progress:
    """A thin wrapper: ``task(name, total)`` returns a handle; ``advance(handle_or_name, n)``."""

    def __init__(self, quiet: bool = False, console: Console | None = None) -> None:
        self.quiet = quiet
        self._bar: RichProgress | None = None
        self._tasks: dict[str, Any] = {}
        self.console = console or Console(stderr=True)

    def __enter__(self) -> Self:
        if not self.quiet:
            self._bar = RichProgress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TimeElapsedColumn(), TimeRemainingColumn(), console=self.console,
            )
            self._bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._bar is not None:
            self._bar.__exit__(*exc)

    def task(self, name: str, total: int | None = None, done: int = 0) -> str:
        if self._bar is not None and name not in self._tasks:
            self._tasks[name] = self._bar.add_task(name, total=total, completed=done)
        return name

    def advance(self, name: str, n: int = 1) -> None:
        if self._bar is None:
            return
        if name not in self._tasks:
            self.task(name)
        self._bar.advance(self._tasks[name], n)
