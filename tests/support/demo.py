"""The one demo curation of the session (``ergo run pipelines/demo.yaml``), shared by every test module.

``demo_run`` is ``(out, stats)``: real images, real boxes, data/, rejects/, stats.json and recipe.json/.yaml
as ``ergo run`` writes them. Tests read it and never write into it (copy it first: ``shutil.copytree``).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, NamedTuple

import pytest

from tests.support.paths import EXAMPLES, ROOT


class DemoRun(NamedTuple):
    out: Path
    stats: dict[str, Any]


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory: pytest.TempPathFactory) -> DemoRun:
    from ergo_data.pipeline.executor.local import run_pipeline
    from ergo_data.pipeline.recipe import load_recipe

    os.chdir(ROOT)  # recipes name paths relative to the repository root
    recipe_path = ROOT / "pipelines" / "demo.yaml"
    out = tmp_path_factory.mktemp("demo")
    recipe = load_recipe(recipe_path, [f"sources.0.path={EXAMPLES / 'vstar'}", f"sources.1.path={EXAMPLES / 'coco'}"])
    stats = run_pipeline(recipe, out, quiet=True)
    assert stats["invariant"]["ok"] and stats["totals"]["kept"] >= 4, stats["totals"]
    return DemoRun(out, stats)


@pytest.fixture(scope="session")
def demo_set(demo_run: DemoRun) -> Path:
    """The output directory of the demo curation."""
    return demo_run.out
