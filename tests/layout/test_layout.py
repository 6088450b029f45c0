"""The layout the README's table describes: which folder may import which, and small modules.

Every import of every module counts (also those inside functions): a folder imports only the folders
listed for it in ``MAY_IMPORT``, so nothing imports upward and ``ergo_data`` never imports ``ergo_train``.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from tests.support.paths import ROOT

# folder -> folders it may import (besides itself). Keep in step with the table in README.md ("Layout").
MAY_IMPORT: dict[str, set[str]] = {
    "ergo_data.core": set(),
    "ergo_data.pipeline": {"ergo_data.core"},
    "ergo_data.qa": {"ergo_data.core", "ergo_data.pipeline"},
    "ergo_data.sources": {"ergo_data.core", "ergo_data.pipeline", "ergo_data.qa"},
    "ergo_data.stages": {"ergo_data.core", "ergo_data.pipeline", "ergo_data.qa"},
    "ergo_data.labelstudio": {"ergo_data.core", "ergo_data.pipeline", "ergo_data.stages"},
    "ergo_data.card": {"ergo_data.core", "ergo_data.pipeline", "ergo_data.stages"},
    "ergo_data.cli": {"ergo_data.core", "ergo_data.pipeline", "ergo_data.qa", "ergo_data.sources",
                      "ergo_data.stages", "ergo_data.labelstudio", "ergo_data.card"},
    "ergo_train.rollout": {"ergo_data.core"},
    "ergo_train.models": {"ergo_data.core"},
    "ergo_train.rewards": {"ergo_data.core", "ergo_data.pipeline", "ergo_data.qa", "ergo_train.rollout",
                           "ergo_train.models"},
    "ergo_train.train": {"ergo_data.core", "ergo_data.pipeline", "ergo_train.rollout", "ergo_train.models",
                         "ergo_train.rewards"},
    "ergo_train.eval": {"ergo_data.core", "ergo_data.pipeline", "ergo_data.qa", "ergo_data.sources", "ergo_train.rollout",
                        "ergo_train.models", "ergo_train.rewards"},
    "ergo_train.stages": {"ergo_data.core", "ergo_data.pipeline", "ergo_train.rollout", "ergo_train.models",
                          "ergo_train.rewards"},
    "ergo_train.cli": {"ergo_data.core", "ergo_data.pipeline", "ergo_data.cli", "ergo_train.rollout",
                       "ergo_train.models", "ergo_train.rewards", "ergo_train.train", "ergo_train.eval",
                       "ergo_train.stages"},
}
TOP_LEVEL_OK = {"ergo_data", "ergo_train", "ergo_train.plugin"}  # the packages' own __init__ and the plugin hook
MAX_LINES = 600


def modules() -> list[Path]:
    return sorted(p for pkg in ("ergo_data", "ergo_train") for p in (ROOT / pkg).rglob("*.py"))


def module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def folder_of(name: str) -> str:
    return ".".join(name.split(".")[:2])


def imported(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found |= {f"{node.module}.{a.name}" for a in node.names}
    return {f for f in found if f.startswith(("ergo_data.", "ergo_train."))}


def project_module(name: str) -> str | None:
    """The folder (``ergo_data.core``) of an imported name, or None for a package root / symbol of one."""
    parts = name.split(".")
    for i in range(len(parts), 1, -1):
        path = ROOT.joinpath(*parts[:i])
        if path.with_suffix(".py").exists() or (path / "__init__.py").exists():
            return folder_of(".".join(parts[:i])) if i >= 2 and (ROOT.joinpath(*parts[:2])).is_dir() else None
    return None


def test_every_folder_is_in_the_table():
    folders = {folder_of(module_name(p)) for p in modules()} - TOP_LEVEL_OK
    assert folders == set(MAY_IMPORT), folders ^ set(MAY_IMPORT)


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_imports_follow_the_layers(path):
    name = module_name(path)
    if name in TOP_LEVEL_OK:
        return
    mine = folder_of(name)
    bad = sorted(i for i in imported(path)
                 if (f := project_module(i)) is not None and f != mine and f not in MAY_IMPORT[mine])
    assert not bad, f"{name} ({mine}) imports {bad}; {mine} may import {sorted(MAY_IMPORT[mine]) or 'nothing'}"


@pytest.mark.parametrize("path", modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_modules_are_small(path):
    assert len(path.read_text(encoding="utf-8").splitlines()) < MAX_LINES


def test_readme_table_names_every_folder():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    listed = set(re.findall(r"^\| `((?:ergo_data|ergo_train)/[a-z_/]+)/` \|", readme, re.MULTILINE))
    on_disk = {f.replace(".", "/") for f in MAY_IMPORT}
    assert listed == on_disk, f"README table {sorted(listed ^ on_disk)} differs from the tree"
