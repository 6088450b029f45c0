"""Exit codes of the curation commands: 2 for a usage or configuration error, 1 for a runtime failure.

Every case is a real fault: a recipe or option that is wrong, a folder that is not a curated set, a file
where a folder must go, junk where a Parquet shard should be, a port nobody listens on, a port taken.
"""

from __future__ import annotations

import shutil
import socket

import pytest
import yaml
from typer.testing import CliRunner

from ergo_data.cli.app import app
from ergo_data.pipeline.recipe import describe_params
from ergo_data.pipeline.registry import source_registry, stage_registry
from tests.support.paths import EXAMPLES, ROOT

runner = CliRunner()
DEMO = str(ROOT / "pipelines" / "demo.yaml")
CLOSED_PORT_URL = "http://127.0.0.1:9"  # the discard port: nothing listens there


def invoke(args: list[str], env: dict[str, str] | None = None):
    return runner.invoke(app, args, env=env, catch_exceptions=False)


def assert_exit(res, code: int, *words: str) -> None:
    assert res.exit_code == code, res.output
    assert "error:" in res.output and "Traceback" not in res.output, res.output
    for w in words:
        assert w in res.output, res.output


@pytest.fixture
def one_image_set(tmp_path, monkeypatch):
    """A curated set of one sample whose image is a copy (so a test may delete it)."""
    monkeypatch.chdir(ROOT)
    (tmp_path / "vstar").mkdir()
    for f in ("flag.JPG", "flag.json"):
        shutil.copy(EXAMPLES / "vstar" / f, tmp_path / "vstar" / f)
    recipe = tmp_path / "one.yaml"
    recipe.write_text(yaml.safe_dump({"name": "one", "output": {"plots": False}, "stages": [{"type": "decode"}],
                                      "sources": [{"type": "vstar", "name": "ex", "path": str(tmp_path / "vstar")}]}))
    out = tmp_path / "set"
    assert invoke(["run", str(recipe), "--out", str(out), "-q"]).exit_code == 0
    return out


# ---- ergo run ------------------------------------------------------------------------------------
@pytest.mark.parametrize("args, words", [
    (["--executor", "spark"], ["unknown executor 'spark'"]),
    (["--executor", "ray", "--workers", "2", "--address", "auto"], ["--workers", "--address"]),
    (["--address", "auto"], ["--address", "--executor ray"]),
    (["--set", "stages.99.x=1"], ["not an index"]),
])
def test_run_usage_errors_exit_2_before_any_work(tmp_path, args, words):
    out = tmp_path / "o"
    assert_exit(invoke(["run", DEMO, "--out", str(out), *args]), 2, *words)
    assert not out.exists()


def test_run_missing_recipe_exits_2(tmp_path):
    assert_exit(invoke(["run", str(tmp_path / "nope.yaml"), "--out", str(tmp_path / "o")]), 2, "not found")


def test_run_into_a_file_is_a_runtime_failure(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    target = tmp_path / "a-file"
    target.write_text("")
    assert_exit(invoke(["run", DEMO, "--out", str(target), "-q"]), 1, str(target), "Not a directory")


# ---- ergo query / card / show --------------------------------------------------------------------
def test_query_exit_codes(demo_set, tmp_path):
    assert_exit(invoke(["query", str(tmp_path), "SELECT 1"]), 2, "no data/ folder")
    assert_exit(invoke(["query", str(demo_set), "SELEC id FROM samples"]), 2, "query failed", "syntax")
    broken = tmp_path / "broken"
    (broken / "data").mkdir(parents=True)
    (broken / "data" / "part-0.parquet").write_bytes(b"not parquet at all")
    assert_exit(invoke(["query", str(broken), "SELECT count(*) FROM samples"]), 1, "part-0.parquet")


def test_card_exit_codes(one_image_set, tmp_path):
    assert_exit(invoke(["card", str(tmp_path / "nothing")]), 2, "stats.json")
    (one_image_set / "stats.json").write_text("{truncated")
    assert_exit(invoke(["card", str(one_image_set), "-q"]), 1, "stats.json is not valid JSON")


def test_show_exit_codes(one_image_set, tmp_path):
    png = str(tmp_path / "v.png")
    assert_exit(invoke(["show", str(one_image_set), "--id", "ex/nope", "--out", png]), 2, "ex/nope")
    assert_exit(invoke(["show", str(one_image_set), "--id", "ex/flag", "--budget", "0", "--out", png]), 2, "--budget")
    (one_image_set.parent / "vstar" / "flag.JPG").unlink()  # the set references its image by path
    assert_exit(invoke(["show", str(one_image_set), "--id", "ex/flag", "--out", png]), 1, "image file not found")


# ---- ergo stages ----------------------------------------------------------------------------------
def test_stages_prints_real_defaults(monkeypatch):
    from ergo_data.cli.common import console

    monkeypatch.setattr(console, "width", 250)  # a wide terminal: no cell wraps
    res = invoke(["stages"])
    assert res.exit_code == 0 and "PydanticUndefined" not in res.output
    assert "list[float] | None" in res.output and "['source']" in res.output  # not eaten as rich markup
    for reg in (source_registry, stage_registry):
        for name, cls in reg.items():
            for key, _, default in describe_params(cls):
                assert "Undefined" not in default, (name, key, default)
    stratify = {k: (t, d) for k, t, d in describe_params(stage_registry.get("stratify"))}
    assert stratify["by"] == ("list[str]", "['source']")  # a default_factory, built
    assert stratify["area_bins"][1] == "[0.0, 0.0005, 0.005, 0.05, 1.0]"


# ---- ergo ls -------------------------------------------------------------------------------------
@pytest.mark.parametrize("command", [["push", "SET", "--project", "demo review"], ["pull", "--project", "demo review",
                                                                                  "--out", "OUT"]])
def test_ls_push_pull_exit_codes(command, demo_set, tmp_path):
    args = ["ls"] + [str(demo_set) if a == "SET" else str(tmp_path / "o") if a == "OUT" else a for a in command]
    no_key = {"LABEL_STUDIO_API_KEY": "", "LABEL_STUDIO_URL": ""}
    assert_exit(invoke(args, env=no_key), 2, "no API key")
    assert_exit(invoke(args + ["--url", "localhost:8080", "--api-key", "t"], env=no_key), 2, "http://")
    res = invoke(args + ["--url", CLOSED_PORT_URL, "--api-key", "t", "--timeout", "5"], env=no_key)
    assert_exit(res, 1, "cannot reach Label Studio", CLOSED_PORT_URL)


def test_ls_push_bad_where_exits_2(demo_set):
    res = invoke(["ls", "push", str(demo_set), "--project", "demo review", "--where", "nope = 1",
                  "--url", CLOSED_PORT_URL, "--api-key", "t"])
    assert_exit(res, 2, "--where")


def test_ls_serve_exit_codes(tmp_path):
    from ergo_data.labelstudio.server import DB_NAME

    data = tmp_path / "d"
    foreign = tmp_path / "foreign"  # a data dir some other Label Studio made: no credentials file of ours
    foreign.mkdir()
    (foreign / DB_NAME).write_bytes(b"")
    no_user = {"LABEL_STUDIO_USERNAME": ""}
    assert_exit(invoke(["ls", "serve", "--data-dir", str(foreign)], env=no_user), 2, "LABEL_STUDIO_USERNAME")
    empty_venv = tmp_path / "no-venv"
    assert_exit(invoke(["ls", "serve", "--data-dir", str(data), "--venv", str(empty_venv)]), 2,
                "no Label Studio server", "install_ls.sh")
    # A taken port is found before the server would start; the venv needs only its entry point for that check
    # (the server itself is started for real by tests/support/ls_server.py).
    (empty_venv / "bin").mkdir(parents=True)
    (empty_venv / "bin" / "label-studio").write_text("#!/bin/sh\nexit 3\n")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        res = invoke(["ls", "serve", "--data-dir", str(data), "--venv", str(empty_venv), "--port", str(port)])
    assert_exit(res, 1, f"port {port}", "already in use")


def test_typer_usage_errors_exit_2_as_ours_do():
    assert runner.invoke(app, ["run"]).exit_code == 2  # missing argument (click's usage error)
    assert runner.invoke(app, ["query", "--limit", "many", "x", "y"]).exit_code == 2
