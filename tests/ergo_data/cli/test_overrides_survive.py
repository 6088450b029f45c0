"""``--set`` overrides survive a run: stored as data (recipe.json, recipe.yaml), read back by the data card.

The README's "legible" example runs end to end through the real ``ergo`` console script (argv as a shell
hands it over), and the card's own command line, run again by bash, rebuilds the same data. A property
test sends overrides with spaces, quotes, ``=``, backticks and unicode through run -> card on one image.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import yaml
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from ergo_data.card.card import write_card
from ergo_data.core.errors import RecipeError
from ergo_data.pipeline.executor.local import run_pipeline
from ergo_data.pipeline.recipe import load_recipe
from ergo_data.pipeline.recipe_record import read_recipe_record
from tests.support.paths import EXAMPLES, ROOT

ERGO = ROOT / ".venv" / "bin" / "ergo"
LEGIBLE = ["stages.2.max_side_px=1000", "stages.3.where=box_short_side_1280 > 56 AND source='examples'",
           "output.plots=false"]


def card_command(readme: str) -> str:
    """The bash block under "The command that ran" in a data card."""
    m = re.search(r"The command that ran[^\n]*\n\n(`{3,})bash\n(.*?)\n\1", readme, re.DOTALL)
    assert m, "no command block in the card"
    return m.group(2)


def set_args(command: str) -> list[str]:
    words = shlex.split(command.replace(" \\\n", " "))
    return [words[i + 1] for i, w in enumerate(words) if w == "--set"]


def test_readme_legible_example_survives_run_card_and_rerun(tmp_path):
    out = tmp_path / "legible"
    argv = [str(ERGO), "run", "pipelines/demo.yaml", "--out", str(out), "-q"] + [a for o in LEGIBLE for a in ("--set", o)]
    done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    kept = sorted(pq.read_table(out / "data").column("id").to_pylist())
    assert kept == ["examples/blackmug", "examples/desktop"]  # the README's claim

    record = json.loads((out / "recipe.json").read_text(encoding="utf-8"))
    assert record["file"] == "pipelines/demo.yaml" and record["overrides"] == LEGIBLE
    assert record["file_text"] == (ROOT / "pipelines/demo.yaml").read_text(encoding="utf-8")
    assert record["resolved"]["stages"][3]["where"] == "box_short_side_1280 > 56 AND source='examples'"
    resolved = load_recipe(out / "recipe.yaml")  # loads as a recipe again (the comment-based one did not)
    assert resolved.model_dump() == load_recipe(ROOT / "pipelines/demo.yaml", LEGIBLE).model_dump()

    readme = (out / "README.md").read_text(encoding="utf-8")
    assert "license:\n- mit" in readme  # licenses read beside the sources named in the recipe
    assert "No `visibility` stage" not in readme and "could not be" not in readme
    assert set_args(card_command(readme)) == LEGIBLE

    again = tmp_path / "again"  # the card's command, as a user would paste it into a shell
    script = card_command(readme).replace("--out DIR", f"--out {shlex.quote(str(again))} -q")
    env = {**os.environ, "PATH": f"{ERGO.parent}:{os.environ.get('PATH', '/usr/bin:/bin')}"}  # `ergo` as installed
    done = subprocess.run(["bash", "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=600, env=env,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert sorted(pq.read_table(again / "data").column("id").to_pylist()) == kept


# ---- property: any override text survives -------------------------------------------------------
TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc", "Cs")) | st.sampled_from(" '\"=`#:\\é日🙂"),
               min_size=1, max_size=24)


@st.composite
def overrides(draw) -> list[str]:
    chosen = draw(st.lists(st.sampled_from(["description", "where", "chunk_rows"]), min_size=1, max_size=3,
                           unique=True))
    out = []
    for key in chosen:
        if key == "description":
            out.append(f"description={draw(TEXT)}")
        elif key == "where":  # a SQL literal holding the text: keeps every row, must reach DuckDB intact
            literal = draw(TEXT).replace("'", "''")
            out.append(f"stages.2.where=box_area_frac <= 1 AND question <> '{literal}'")
        else:
            out.append(f"output.chunk_rows={draw(st.integers(1, 4))}")
    return out


@pytest.fixture(scope="module")
def one_image_recipe(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("one")
    (root / "vstar").mkdir()
    for f in ("flag.JPG", "flag.json"):
        shutil.copy(EXAMPLES / "vstar" / f, root / "vstar" / f)
    recipe = {"name": "one", "sources": [{"type": "vstar", "name": "examples", "path": str(root / "vstar")}],
              "stages": [{"type": "decode"}, {"type": "box_check"}, {"type": "sql", "where": "true"}],
              "output": {"plots": False}}
    path = root / "one.yaml"
    path.write_text(yaml.safe_dump(recipe), encoding="utf-8")
    return path


@settings(max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(sets=overrides())
def test_any_override_survives_run_and_card(sets, one_image_recipe, tmp_path_factory):
    try:
        expected = load_recipe(one_image_recipe, sets)
    except RecipeError:  # e.g. a description the YAML parser reads as a mapping: refused before any run
        assume(False)
    out = tmp_path_factory.mktemp("run")
    stats = run_pipeline(expected, out, quiet=True)
    assert stats["totals"]["kept"] == 1  # the SQL literal reached DuckDB intact

    record = read_recipe_record(out)
    assert record.problem is None and record.overrides == sets
    assert record.recipe.model_dump() == expected.model_dump()
    assert load_recipe(out / "recipe.yaml").model_dump() == expected.model_dump()
    readme = write_card(out, quiet=True).read_text(encoding="utf-8")
    assert set_args(card_command(readme)) == sets
