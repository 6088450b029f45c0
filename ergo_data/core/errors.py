"""The project's errors: one base, ``ErgoError``, with an ``exit_code`` the ``ergo`` CLI exits with.

Two kinds, told apart by that code:

- ``ConfigError`` (exit 2): the command cannot start as asked: a bad recipe, argument, input file or a
  missing extra. Fix the command and run it again.
- every other ``ErgoError`` (exit 1): something failed while working: an input item (``ItemError``,
  reason-coded, becomes a reject), a server, a judge.

Each keeps the builtin base it always had (``ValueError``, ``RuntimeError``, ...), so existing
``except ValueError`` code still catches it:

>>> issubclass(RecipeError, ConfigError) and issubclass(RecipeError, ValueError)
True
>>> RecipeError("x").exit_code, ItemError("bad_box", "x").exit_code
(2, 1)
"""

from __future__ import annotations

from typing import ClassVar

USAGE_EXIT = 2  # usage or configuration error: the command could not start as asked
FAILURE_EXIT = 1  # runtime failure: the command started and something failed


class ErgoError(Exception):
    """Base of the project's user-facing errors; the message names the item (or setting) and the reason."""

    exit_code: ClassVar[int] = FAILURE_EXIT


class ConfigError(ErgoError):
    """A usage or configuration error (recipe, argument, input file, missing extra): exit code 2."""

    exit_code: ClassVar[int] = USAGE_EXIT


class RecipeError(ConfigError, ValueError):
    """A recipe (or a stage/source config) that cannot run; the message says what is valid."""


class ItemError(ErgoError, ValueError):
    """One input item that cannot be used; ``reason`` is its short reject code, the message the detail.

    >>> e = ItemError("bad_box", "bbox[0]: non-positive width")
    >>> from ergo_data.core.schema import reject_row
    >>> reject_row("s/a", "s", "source:vstar", e.reason, str(e))["reason"]
    'bad_box'
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
