"""The recipe as run, stored beside a run's outputs as data (never as a comment to be parsed back).

- ``DIR/recipe.json``: ``{"format": 1, "file", "file_text", "overrides", "resolved"}``: the recipe file and its
  text as given, the ``--set`` overrides exactly as given (a list of strings, never re-split), and the recipe
  with them applied: what ran.
- ``DIR/recipe.yaml``: that resolved recipe as YAML, so ``ergo run DIR/recipe.yaml --out NEW`` runs it again.

Outputs of older versions have only ``recipe.yaml``, with the overrides in a last comment
(``# overrides: a.b=1 c=x``); they are still read, the comment split before each ``KEY=`` (best effort).

>>> import tempfile
>>> from ergo_data.pipeline.recipe import load_recipe
>>> out = Path(tempfile.mkdtemp())
>>> write_recipe_record(out, load_recipe("pipelines/demo.yaml", ["description=x = 'y' z"]))
>>> rec = read_recipe_record(out)
>>> rec.overrides, rec.recipe.description
(["description=x = 'y' z"], "x = 'y' z")
>>> print(run_command(rec, "DIR"))
ergo run pipelines/demo.yaml --out DIR \\
  --set 'description=x = '"'"'y'"'"' z'
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ergo_data.core.errors import RecipeError
from ergo_data.pipeline.outputs import atomic_write_json
from ergo_data.pipeline.recipe import Recipe, parse_recipe

RECORD_FILE = "recipe.json"
RESOLVED_FILE = "recipe.yaml"
FORMAT = 1


@dataclass
class RecipeRecord:
    """What a run's folder says about its recipe; ``recipe`` is None (and ``problem`` says why) if unreadable."""

    file: str | None = None  # the recipe file given to `ergo run` (None: built from a dict in Python)
    overrides: list[str] = field(default_factory=list)
    file_text: str | None = None  # that file's text as given (older outputs: recipe.yaml with its comment)
    text: str | None = None  # the recipe as run, overrides applied: recipe.yaml
    recipe: Recipe | None = None
    problem: str | None = None


def write_recipe_record(out: Path, recipe: Recipe) -> None:
    """Write ``recipe.json`` and ``recipe.yaml`` into ``out`` for the run of ``recipe``."""
    origin = recipe.origin
    resolved = recipe.model_dump(mode="json")
    atomic_write_json(out / RECORD_FILE, {"format": FORMAT, "file": origin["file"], "file_text": origin["file_text"],
                                          "overrides": origin["overrides"], "resolved": resolved})
    header = f"# The recipe as run: {origin['file'] or 'built in Python'}"
    header += " with the --set overrides in recipe.json applied.\n" if origin["overrides"] else ".\n"
    tmp = out / f".{RESOLVED_FILE}.tmp"
    tmp.write_text(header + yaml.safe_dump(resolved, sort_keys=False, allow_unicode=True, width=100), encoding="utf-8")
    tmp.replace(out / RESOLVED_FILE)


def read_recipe_record(out: Path) -> RecipeRecord:
    """The recipe of the run in ``out``: from ``recipe.json``, else (older outputs) from ``recipe.yaml``."""
    record, resolved = out / RECORD_FILE, out / RESOLVED_FILE
    if record.is_file():
        try:
            data = json.loads(record.read_text(encoding="utf-8"))
            overrides = [str(o) for o in data.get("overrides") or []]
            rec = RecipeRecord(data.get("file"), overrides, data.get("file_text"))
            rec.text = resolved.read_text(encoding="utf-8") if resolved.is_file() else yaml.safe_dump(
                data["resolved"], sort_keys=False, allow_unicode=True)
            rec.recipe = parse_recipe(data["resolved"], origin=str(record))
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:  # RecipeError is a ValueError
            return RecipeRecord(problem=f"{record.name} could not be read: {e}")
        return rec
    if resolved.is_file():
        return _read_legacy(resolved)
    return RecipeRecord(problem=f"{RECORD_FILE} and {RESOLVED_FILE} are missing from the output folder: the "
                                "recipe, source licenses and visibility band are unknown")


def run_command(record: RecipeRecord, out: str = "DIR") -> str:
    """The ``ergo run`` command line that ran (each override shell-quoted), for the data card."""
    lines = [f"ergo run {shlex.quote(record.file or RESOLVED_FILE)} --out {out}"]
    lines += [f"  --set {shlex.quote(o)}" for o in (record.overrides if record.file else [])]
    return " \\\n".join(lines)


def legacy_overrides(text: str) -> list[str]:
    """The overrides older versions appended to recipe.yaml as ``# overrides: a.b=1 c=x y`` (best effort).

    >>> legacy_overrides("name: x\\n# overrides: stages.3.where=box_area_frac <= 0.6 output.shard_rows=5\\n")
    ['stages.3.where=box_area_frac <= 0.6', 'output.shard_rows=5']
    """
    lines = [ln for ln in text.splitlines() if ln.startswith("# overrides: ")]
    if not lines:
        return []
    rest = lines[-1][len("# overrides: "):].strip()
    return [p.strip() for p in re.split(r"\s+(?=[\w-]+(?:\.[\w-]+)*=)", rest) if p.strip()]


def _read_legacy(path: Path) -> RecipeRecord:
    text = path.read_text(encoding="utf-8")
    rec = RecipeRecord(None, legacy_overrides(text), file_text=text)
    try:
        data: Any = yaml.safe_load(text)
        rec.recipe = parse_recipe(data, rec.overrides, str(path))
    except (RecipeError, yaml.YAMLError) as e:
        rec.problem = f"{path.name} (written by an older version, overrides in its last comment) could not be parsed: {e}"
    return rec
