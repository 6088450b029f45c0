"""Source contract: turn one input kind into Sample rows (or rejects with a reason, never silence).

>>> from ergo_data.registry import source_registry
>>> src = source_registry.get("vstar")(name="examples", path="examples/vstar")
>>> rows = list(src.read())
>>> rows[0]["id"]
'examples/bag_of_bottle'
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

from ergo_data.stages.base import Params, RecipeError, Reject, build_params


class SourceParams(Params):
    path: str
    boxes_frame: str = "displayed"  # or "stored": boxes refer to raw pixels before EXIF orientation


class Source:
    """Base class: subclasses set ``Params`` and implement the generator ``read``."""

    Params: ClassVar[type[Params]] = SourceParams
    type_name: ClassVar[str] = "source"

    def __init__(self, name: str | None = None, **params: Any) -> None:
        self.name = name or self.type_name
        if "/" in self.name:
            raise RecipeError(f"source name {self.name!r} must not contain '/'")
        self.params = build_params(type(self), self.Params, params, "source")
        if getattr(self.params, "boxes_frame", "displayed") not in ("displayed", "stored"):
            raise RecipeError(f"source {self.name!r}: boxes_frame must be 'displayed' or 'stored'")
        self.check_dependencies()

    def check_dependencies(self) -> None:
        """Raise RecipeError at construction if an optional dependency is missing."""

    @property
    def root(self) -> Path:
        root = Path(self.params.path).expanduser().resolve()
        if not root.exists():
            raise RecipeError(f"source {self.name!r}: path {str(root)!r} does not exist")
        return root

    def read(self) -> Iterator[dict[str, Any] | Reject]:  # pragma: no cover - abstract
        raise NotImplementedError

    def reject(self, key: str, reason: str, detail: str) -> Reject:
        return Reject({"id": f"{self.name}/{key}", "source": self.name}, reason, detail)

    def inside_root(self, root: Path, relative: str) -> Path | None:
        """Resolve ``relative`` under ``root``; None if it escapes the root (``..``, absolute, symlink)."""
        try:
            p = (root / relative).resolve()
        except (OSError, ValueError):
            return None
        return p if p.is_relative_to(root) else None


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".mpo", ".heic", ".avif")


def shuffled_options(options: list[str], answer_index: int, key: str, seed: int) -> tuple[list[str], str]:
    """Shuffle ``options`` deterministically per (seed, key); return them and the correct letter.

    >>> shuffled_options(["tiger", "lion", "bear", "eagle"], 0, "examples/signicade", seed=0)
    (['bear', 'eagle', 'lion', 'tiger'], 'D')
    """
    import random

    order = list(range(len(options)))
    random.Random(f"{seed}:{key}").shuffle(order)
    new = [options[i] for i in order]
    return new, chr(ord("A") + order.index(answer_index))


class EncodingProblem(ValueError):
    """A text file that is not UTF-8 (reject reason ``bad_encoding``, as the jsonl source reports it)."""


def load_json_file(path: Path) -> Any:
    """Read JSON strictly: raises ValueError naming the file for bad UTF-8 or bad JSON."""
    import json

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EncodingProblem(f"{path.name}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.name}: malformed JSON ({e.msg} at line {e.lineno} col {e.colno})") from None
