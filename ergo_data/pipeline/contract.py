"""The stage and source contract: small classes over Arrow batches that return kept rows and rejected rows.

A stage never writes files; the executor (local or Ray) writes both outputs. Row stages implement a
generator ``run(rows)`` that yields either a (possibly modified) row dict or a ``Reject``:

>>> from ergo_data.pipeline.registry import stage_registry
>>> @stage_registry.register("doc_example_nonempty")
... class NonEmpty(RowStage):
...     def run(self, rows):
...         for row in rows:
...             yield row if row["question"].strip() else Reject(row, "empty_question", "no text")
>>> import pyarrow as pa
>>> res = NonEmpty().process(pa.Table.from_pylist([{"id": "a", "source": "s", "question": " "}]))
>>> res.kept.num_rows, res.rejected[0]["reason"]
(0, 'empty_question')

Global stages (``is_global = True``) see all rows at once as a seeded, order-independent barrier.

A source turns one input kind into Sample rows (or rejects with a reason, never silence):

>>> from ergo_data.pipeline.registry import source_registry
>>> src = source_registry.get("vstar")(name="examples", path="examples/vstar")
>>> next(iter(src.read()))["id"]
'examples/bag_of_bottle'
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import pyarrow as pa
from pydantic import BaseModel, ConfigDict, ValidationError
from pydantic.fields import FieldInfo

from ergo_data.core.errors import RecipeError
from ergo_data.core.schema import reject_row, rows_to_table


class Params(BaseModel):
    """Base of every stage/source parameter model: unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)


def build_params(cls: type, model: type[Params], params: Mapping[str, Any], kind: str) -> Params:
    """Validate ``params`` against ``model``; errors name the type, the bad key and the valid keys."""
    try:
        return model(**params)
    except ValidationError as e:
        valid = ", ".join(f"{k} ({type_text(f.annotation)}, {'' if f.is_required() else 'default '}{default_text(f)})"
                          for k, f in model.model_fields.items())
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or '<params>'}: {err['msg']}" for err in e.errors()
        )
        name = getattr(cls, "type_name", cls.__name__)
        raise RecipeError(f"{kind} {name!r}: {problems}. Valid keys: {valid or '(none)'}") from None


def type_text(annotation: Any) -> str:
    """A parameter's type as a user reads it.

    >>> type_text(int), type_text(list[str]), type_text(str | None)
    ('int', 'list[str]', 'str | None')
    """
    if isinstance(annotation, type) and not getattr(annotation, "__args__", None):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def default_text(field: FieldInfo) -> str:
    """A parameter's default as its ``repr``, built when it comes from a factory; ``required`` if it has none.

    >>> from pydantic import Field
    >>> class P(Params):
    ...     a: int
    ...     b: list[str] = Field(default_factory=lambda: ["source"])
    >>> [default_text(f) for f in P.model_fields.values()]
    ['required', "['source']"]
    """
    if field.is_required():
        return "required"
    return repr(field.get_default(call_default_factory=True))


@dataclass
class Reject:
    """A row leaving the flow, with a short stable ``reason`` code and a human ``detail``."""

    row: Mapping[str, Any]
    reason: str
    detail: str = ""


@dataclass
class StageResult:
    kept: pa.Table
    rejected: list[dict[str, str]] = field(default_factory=list)


class Stage:
    """Base class. Subclasses set ``Params`` (a pydantic model) and implement ``process``."""

    Params: ClassVar[type[Params]] = Params
    is_global: ClassVar[bool] = False
    type_name: ClassVar[str] = "stage"
    # For the Ray executor only (the local one ignores them): a stateful stage holds costly state (a model)
    # and runs in an actor pool of up to `ray.actors` actors, built once per actor; `num_gpus` is what each
    # actor needs (a stage may turn it into a property of its params, e.g. 1.0 when device is cuda).
    stateful: ClassVar[bool] = False
    num_gpus: ClassVar[float] = 0.0

    def __init__(self, **params: Any) -> None:
        self.params = build_params(type(self), self.Params, params, "stage")
        self.check_dependencies()

    def check_dependencies(self) -> None:
        """Raise RecipeError at construction if an optional dependency is missing."""

    @property
    def name(self) -> str:
        return self.type_name

    def process(self, table: pa.Table) -> StageResult:  # pragma: no cover - abstract
        raise NotImplementedError

    def reject(self, row: Mapping[str, Any], reason: str, detail: str = "") -> dict[str, str]:
        return reject_row(str(row.get("id")), str(row.get("source")), self.name, reason, detail)


class RowStage(Stage):
    """A stage written as a generator over row dicts (datatrove style).

    ``output_types`` fixes the Arrow type of extra columns the stage adds (otherwise inferred per batch, so
    a batch where a column is all null would not say what it holds).
    """

    output_types: ClassVar[Mapping[str, pa.DataType]] = {}

    def run(self, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any] | Reject]:  # pragma: no cover
        raise NotImplementedError

    def process(self, table: pa.Table) -> StageResult:
        kept: list[dict[str, Any]] = []
        rejected: list[dict[str, str]] = []
        for out in self.run(table.to_pylist()):
            if isinstance(out, Reject):
                rejected.append(self.reject(out.row, out.reason, out.detail))
            else:
                kept.append(out)
        return StageResult(
            rows_to_table(kept, self.output_types) if kept else table.schema.empty_table(), rejected
        )


class GlobalStage(Stage):
    """A barrier over all rows: subclasses implement ``process`` on the full table.

    A stage that decides from a few columns sets ``key_columns`` and implements ``select`` (those columns of
    every row -> the ids to keep and the rejects). The local executor then reads only the key columns of all
    rows and streams the chunks through the kept ids, so its memory does not grow with the other columns.
    """

    is_global = True
    key_columns: ClassVar[tuple[str, ...]] = ()

    def select(self, keys: pa.Table) -> tuple[pa.Array, list[dict[str, str]]]:  # pragma: no cover - optional
        raise NotImplementedError


# ---- sources ------------------------------------------------------------------------------------
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
