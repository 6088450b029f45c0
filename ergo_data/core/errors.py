"""The project's errors: a bad input item (reason-coded, becomes a reject) and a recipe that cannot run."""

from __future__ import annotations


class RecipeError(ValueError):
    """A recipe (or a stage/source config) that cannot run; the message says what is valid."""


class ItemError(ValueError):
    """One input item that cannot be used; ``reason`` is its short reject code, the message the detail.

    >>> e = ItemError("bad_box", "bbox[0]: non-positive width")
    >>> from ergo_data.core.schema import reject_row
    >>> reject_row("s/a", "s", "source:vstar", e.reason, str(e))["reason"]
    'bad_box'
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
