"""Recipes (--set overrides, unknown types/keys) and the `ergo` CLI on the demo data."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from ergo_data.cli.app import app
from ergo_data.core.errors import RecipeError
from ergo_data.pipeline.recipe import apply_override, load_recipe, parse_recipe
from tests.support.paths import ROOT

runner = CliRunner()


def test_overrides_by_list_index_and_key():
    r = load_recipe(ROOT / "pipelines/demo.yaml", ["stages.2.max_side_px=40", "output.shard_rows=500"])
    assert r.stages[2]["max_side_px"] == 40 and r.output.shard_rows == 500
    with pytest.raises(RecipeError, match="not an index"):
        load_recipe(ROOT / "pipelines/demo.yaml", ["stages.99.x=1"])
    with pytest.raises(RecipeError, match="KEY.PATH=VALUE"):
        apply_override({}, "novalue")


def test_unknown_recipe_key_lists_valid_ones():
    with pytest.raises(RecipeError, match="Valid keys: name"):
        parse_recipe({"name": "x", "sources": [{"type": "vstar", "path": "."}], "stagez": []})


def test_duplicate_source_names_rejected():
    with pytest.raises(RecipeError, match="unique"):
        parse_recipe({"name": "x", "sources": [{"type": "vstar", "path": "a"}, {"type": "vstar", "path": "b"}]})


def test_cli_help_and_version():
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    for cmd in ("run", "stages", "query", "version"):
        assert cmd in res.output
    res = runner.invoke(app, ["version"])
    assert res.exit_code == 0 and "ergo-workbench" in res.output


def test_console_script_installed():
    exe = ROOT / ".venv" / "bin" / "ergo"
    cmd = [str(exe)] if exe.exists() else [sys.executable, "-m", "ergo_data.cli"]
    out = subprocess.run(cmd + ["--help"], capture_output=True, text=True, check=True)
    assert "run" in out.stdout


def test_stages_lists_params():
    res = runner.invoke(app, ["stages"])
    assert res.exit_code == 0
    for word in ("visibility", "max_side_px", "decode", "dedup", "vstar", "coco"):
        assert word in res.output


def test_dry_run_prints_plan(tmp_path):
    res = runner.invoke(app, ["run", str(ROOT / "pipelines/demo.yaml"), "--out", str(tmp_path / "o"), "--dry-run"],
                        catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "barrier: dedup" in res.output and "per-batch: decode+box_check+visibility+sql" in res.output
    assert not (tmp_path / "o").exists()


def test_unknown_stage_type_is_a_clear_cli_error(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nsources: [{type: vstar, path: examples/vstar}]\nstages: [{type: decod}]\n")
    res = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 2
    assert "unknown stage type 'decod'" in res.output and "decode" in res.output


def test_unknown_stage_key_is_a_clear_cli_error(tmp_path):
    bad = tmp_path / "r.yaml"
    bad.write_text("name: x\nsources: [{type: vstar, path: examples/vstar}]\nstages: [{type: visibility, max_side: 3}]\n")
    res = runner.invoke(app, ["run", str(bad), "--out", str(tmp_path / "o"), "--dry-run"])
    assert res.exit_code == 2 and "max_side" in res.output and "max_side_px" in res.output


def test_run_and_query_demo_subset(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "demo"
    res = runner.invoke(app, ["run", "pipelines/demo.yaml", "--out", str(out), "-q",
                              "--set", "sources.1.path=/nonexistent"], catch_exceptions=False)
    assert res.exit_code == 2 and "does not exist" in res.output
    res = runner.invoke(app, ["run", "pipelines/demo.yaml", "--out", str(out), "-q"], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    stats = json.loads((out / "stats.json").read_text())
    assert stats["invariant"]["ok"]
    res = runner.invoke(app, ["query", str(out), "SELECT id FROM rejects ORDER BY id", "--json"])
    assert res.exit_code == 0
    ids = [json.loads(line)["id"] for line in res.output.strip().splitlines()]
    assert ids == ["examples/blackmug", "examples/desktop", "terrain/1/1", "terrain/1/2"]
    res = runner.invoke(app, ["query", str(out), "SELECT nope FROM samples"])
    assert res.exit_code == 2 and "query failed" in res.output
