"""Test-only: make installed top-level packages look absent, as on a machine that lacks them.

``hide(names)`` wraps every finder on ``sys.meta_path`` so that it does not see ``names``: ``import duckdb`` raises
``ModuleNotFoundError: No module named 'duckdb'`` and ``importlib.util.find_spec("duckdb")`` returns None, exactly
as when the package is not installed. Use it in a fresh subprocess (modules already imported stay imported):

    python -c "from tests.support.hidden_modules import hide; hide({'duckdb'}); import ergo_data.stages.sql"
"""

from __future__ import annotations

import sys
from collections.abc import Iterable


class _Hiding:
    """A meta-path finder that answers None for the hidden names and defers to the finder it wraps otherwise."""

    def __init__(self, finder, hidden: frozenset[str]) -> None:
        self.finder, self.hidden = finder, hidden

    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in self.hidden:
            return None
        find = getattr(self.finder, "find_spec", None)
        return find(name, path, target) if find is not None else None

    def __getattr__(self, name: str):  # find_distributions, invalidate_caches, ...: the wrapped finder's
        return getattr(self.finder, name)


def hide(names: Iterable[str]) -> None:
    """Hide the top-level packages ``names`` from every later import in this process."""
    hidden = frozenset(names)
    loaded = sorted(m for m in sys.modules if m.partition(".")[0] in hidden)
    if loaded:
        raise RuntimeError(f"already imported, cannot hide: {', '.join(loaded)}")
    sys.meta_path[:] = [_Hiding(f, hidden) for f in sys.meta_path]
