"""YAML recipes: ``sources`` + ``stages`` + ``output``, with ``--set a.b.0.c=value`` overrides.

>>> r = load_recipe("pipelines/demo.yaml", overrides=["stages.2.max_side_px=40"])
>>> r.stages[2]["type"], r.stages[2]["max_side_px"]
('visibility', 40)
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import yaml
from pydantic import Field, PrivateAttr

from ergo_data.core.errors import RecipeError
from ergo_data.pipeline.contract import Params, Stage, build_params, default_text, type_text
from ergo_data.pipeline.registry import source_registry, stage_registry


class OutputSpec(Params):
    shard_rows: int = Field(1000, gt=0)  # rows per Parquet shard in data/
    chunk_rows: int = Field(16, gt=0)  # rows per processing chunk (the unit of parallelism and resume)
    license: str | None = None  # for the data card; default: the sources' licenses
    plots: bool = True  # write plots and galleries into the data card


class RaySpec(Params):
    actors: int = Field(2, ge=1)  # most actors per stateful stage (judge, OCR) with `--executor ray`
    max_block_rows: int | None = Field(None, gt=0)  # rows per Ray block (one task each); default output.chunk_rows


class Recipe(Params):
    name: str
    description: str = ""
    seed: int = 0
    sources: list[dict[str, Any]]
    stages: list[dict[str, Any]] = Field(default_factory=list)
    output: OutputSpec = OutputSpec()
    ray: RaySpec = RaySpec()  # scheduling only: never changes the outputs
    # Where the recipe came from (not part of it: never in model_dump or the fingerprint); recorded beside the
    # outputs by the executors (``ergo_data.pipeline.recipe_record``).
    _file: str | None = PrivateAttr(default=None)
    _file_text: str | None = PrivateAttr(default=None)
    _overrides: list[str] = PrivateAttr(default_factory=list)

    @property
    def origin(self) -> dict[str, Any]:
        """``{"file", "file_text", "overrides"}``: the recipe file (None if built from a dict) and the ``--set``
        overrides applied to it, in order."""
        return {"file": self._file, "file_text": self._file_text, "overrides": list(self._overrides)}


def _parse_value(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return text


def apply_override(data: dict[str, Any], assignment: str) -> None:
    """Apply ``a.b.0.c=value`` (list indices as numbers; value parsed as YAML) to ``data`` in place."""
    if "=" not in assignment:
        raise RecipeError(f"--set {assignment!r}: expected KEY.PATH=VALUE")
    path, value = assignment.split("=", 1)
    keys = path.strip().split(".")
    node: Any = data
    for i, k in enumerate(keys):
        last = i == len(keys) - 1
        where = ".".join(keys[: i + 1])
        if isinstance(node, list):
            if not k.isdigit() or int(k) >= len(node):
                raise RecipeError(f"--set {assignment!r}: {where!r} is not an index of a list of {len(node)}")
            if last:
                node[int(k)] = _parse_value(value)
            else:
                node = node[int(k)]
        elif isinstance(node, dict):
            if last:
                node[k] = _parse_value(value)
            else:
                node = node.setdefault(k, {})
        else:
            raise RecipeError(f"--set {assignment!r}: {'.'.join(keys[:i])!r} is a value, not a mapping or list")


def parse_recipe(data: Any, overrides: list[str] | None = None, origin: str = "<recipe>") -> Recipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a recipe is a mapping with name, sources, stages, output")
    data = copy.deepcopy(data)
    for o in overrides or []:
        apply_override(data, o)
    recipe = build_params(Recipe, Recipe, data, "recipe")
    recipe._overrides = list(overrides or [])
    if not recipe.sources:
        raise RecipeError(f"{origin}: `sources` is empty")
    names = [s.get("name") or s.get("type") for s in recipe.sources]
    if len(set(names)) != len(names):
        raise RecipeError(f"{origin}: source names must be unique, got {names} (set `name:` on each)")
    for i, spec in enumerate(recipe.sources + recipe.stages):
        if not isinstance(spec, dict) or "type" not in spec:
            raise RecipeError(f"{origin}: every source and stage needs a `type` (entry {i}: {spec!r})")
    return recipe


def read_yaml_text(path: str | Path, what: str = "recipe") -> tuple[str, Any]:
    """``(text, parsed)`` of a YAML file; a missing, non-UTF-8 or bad YAML file is a RecipeError naming ``what``."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"{what} {str(p)!r} not found")
    try:
        text = p.read_text(encoding="utf-8")
        return text, yaml.safe_load(text)
    except UnicodeDecodeError as e:
        raise RecipeError(f"{what} {str(p)!r} is not UTF-8 text: {e}") from None
    except yaml.YAMLError as e:
        raise RecipeError(f"{what} {str(p)!r} is not valid YAML: {e}") from None


def read_yaml_file(path: str | Path, what: str = "recipe") -> Any:
    """Load a YAML file; a missing file or bad YAML is a RecipeError naming ``what`` and the path."""
    return read_yaml_text(path, what)[1]


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> Recipe:
    """Read and validate a recipe file with ``--set`` ``overrides``; the recipe remembers both (``origin``)."""
    text, data = read_yaml_text(path)
    recipe = parse_recipe(data, overrides, str(path))
    recipe._file, recipe._file_text = str(path), text
    return recipe


def build_sources(recipe: Recipe) -> list[Any]:
    out = []
    for spec in recipe.sources:
        params = {k: v for k, v in spec.items() if k not in ("type", "name")}
        out.append(source_registry.get(spec["type"])(name=spec.get("name"), **params))
    return out


def build_stage(spec: dict[str, Any]) -> Stage:
    params = {k: v for k, v in spec.items() if k != "type"}
    return stage_registry.get(spec["type"])(**params)


def build_stages(recipe: Recipe) -> list[Stage]:
    return [build_stage(s) for s in recipe.stages]


def describe_params(cls: type) -> list[tuple[str, str, str]]:
    """``(key, type, default)`` rows for ``ergo stages``; defaults from factories are shown as built.

    >>> dict((k, d) for k, _, d in describe_params(stage_registry.get("stratify")))["by"]
    "['source']"
    """
    return [(key, type_text(f.annotation), default_text(f)) for key, f in cls.Params.model_fields.items()]
