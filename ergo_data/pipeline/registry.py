"""Name -> class registries for sources and stages, with plugin discovery via entry points.

Packages outside ``ergo_data`` (``ergo_train``, third parties) register extra stages/sources and CLI
commands through the ``ergo.plugins`` entry-point group, so ``ergo_data`` never imports them directly.

>>> from ergo_data.pipeline.registry import stage_registry
>>> "decode" in stage_registry.names()
True
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Any, Generic, TypeVar

from ergo_data.core.errors import ConfigError

T = TypeVar("T")

# Modules whose import registers the built-in sources and stages.
BUILTIN_MODULES = (
    "ergo_data.sources.vstar", "ergo_data.sources.coco", "ergo_data.sources.jsonl",
    "ergo_data.sources.synthetic", "ergo_data.sources.ocr_docs", "ergo_data.sources.detector",
    "ergo_data.sources.parquet", "ergo_data.sources.landmarks",
    "ergo_data.sources.questions",
    "ergo_data.stages.decode", "ergo_data.stages.filters", "ergo_data.stages.dedup",
    "ergo_data.stages.sql", "ergo_data.stages.split", "ergo_data.stages.labels",
    "ergo_data.stages.questions",
)
_loaded = False


class UnknownNameError(ConfigError, KeyError):
    """An unknown source/stage type (or other registered name); the message lists the valid ones."""

    def __str__(self) -> str:  # KeyError quotes its message; we want a plain sentence
        return str(self.args[0])


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items and self._items[name] is not obj:
                raise ValueError(f"{self.kind} {name!r} registered twice")
            self._items[name] = obj
            obj.type_name = name
            return obj

        return deco

    def get(self, name: str) -> T:
        load_builtins()
        if name not in self._items:
            raise UnknownNameError(
                f"unknown {self.kind} type {name!r}; valid {self.kind} types: {', '.join(sorted(self._items))}"
            )
        return self._items[name]

    def names(self) -> list[str]:
        load_builtins()
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        load_builtins()
        return sorted(self._items.items())


stage_registry: Registry[Any] = Registry("stage")
source_registry: Registry[Any] = Registry("source")


def load_builtins() -> None:
    """Import the built-in modules (registering their classes) and run ``ergo.plugins`` entry points."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    for mod in BUILTIN_MODULES:
        importlib.import_module(mod)
    for ep in entry_points(group="ergo.plugins"):
        plugin = ep.load()
        if hasattr(plugin, "register_stages"):
            plugin.register_stages()
