"""The Ray Data executor: same kept rows, rejects and stats as the local executor on a real local Ray.

Budget: ~1 minute (one local Ray start of 2 CPUs, two Ray runs and one local run of the demo recipe).
The meta-row helpers are checked without Ray.
"""

from __future__ import annotations

import json
import os
import sys

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ergo_data.pipeline.executor import ray as ray_executor
from ergo_data.pipeline.executor.ray import (
    META,
    bounded_blocks,
    join_meta,
    plan_groups,
    run_group,
    split_meta,
)
from ergo_data.pipeline.executor.segments import plan_segments
from ergo_data.pipeline.recipe import build_stages, load_recipe
from ergo_data.stages.decode import DecodeStage
from ergo_data.stages.sql import SqlStage
from tests.support.paths import ROOT


# ---- without Ray ---------------------------------------------------------------------------------
def test_run_group_passes_carried_rejects_through_and_appends_its_own():
    rows = pa.table({"id": ["s/a", "s/b", "s/c"], "source": ["s"] * 3, "box_area_frac": [0.1, 0.9, 0.2]})
    earlier = {"id": "s/z", "source": "s", "stage": "decode", "reason": "image_missing", "detail": "gone"}
    block = join_meta(rows, [("s/z", json.dumps({"kind": "reject", "row": earlier}))])
    out = run_group(block, [SqlStage(where="box_area_frac <= 0.6")], first=3)
    live, meta = split_meta(out)
    assert live.column("id").to_pylist() == ["s/a", "s/c"]
    assert META not in live.column_names
    records = [json.loads(m) for m in meta.column(META).to_pylist()]
    assert [r["row"]["id"] for r in records if r["kind"] == "reject"] == ["s/z", "s/b"]
    (stats,) = [r for r in records if r["kind"] == "stats"]
    assert stats["first"] == 3
    assert stats["stages"][0] | {"seconds": 0} == {"stage": "sql", "in": 3, "out": 2, "seconds": 0,
                                                   "rejected": {"sql_filter": 1}}


def test_run_group_in_slices_gives_the_rows_of_one_pass_with_stats_per_slice():
    rows = pa.table({"id": [f"s/{i}" for i in range(7)], "source": ["s"] * 7,
                     "box_area_frac": [0.1, 0.9, 0.2, 0.7, 0.3, 0.8, 0.4]})
    stage = SqlStage(where="box_area_frac <= 0.6")
    whole, sliced = run_group(rows, [stage], first=0), run_group(rows, [stage], first=0, slice_rows=3)
    assert split_meta(sliced)[0].equals(split_meta(whole)[0])
    records = [json.loads(m) for m in split_meta(sliced)[1].column(META).to_pylist()]
    assert [r["row"]["id"] for r in records if r["kind"] == "reject"] == ["s/1", "s/3", "s/5"]
    assert [r["stages"][0]["in"] for r in records if r["kind"] == "stats"] == [3, 3, 1]


def test_stateful_stages_get_their_own_actor_group(monkeypatch):
    monkeypatch.setattr(DecodeStage, "stateful", True)
    monkeypatch.setattr(DecodeStage, "num_gpus", 1.0)
    recipe = load_recipe(ROOT / "pipelines/demo.yaml")
    stages = build_stages(recipe)
    seg = plan_segments(recipe, stages)[0]
    groups = plan_groups(seg, stages[: len(seg.specs)])
    assert [(g.first, [s["type"] for s in g.specs], g.stateful, g.num_gpus) for g in groups] == [
        (0, ["decode"], True, 1.0), (1, ["box_check", "visibility", "sql"], False, 0.0)]


def test_blocks_are_recut_across_chunks_and_keep_the_order():
    chunks = [pa.table({"id": [f"s/{i}" for i in range(7)]}), pa.table({"id": ["s/x"]})]
    blocks = bounded_blocks(chunks, 3)
    assert [b.num_rows for b in blocks] == [3, 3, 2]
    assert [b.num_rows for b in bounded_blocks(chunks, 5)] == [5, 3]  # larger than a chunk: chunks merge
    assert pa.concat_tables(blocks).column("id").to_pylist() == pa.concat_tables(chunks).column("id").to_pylist()


class _FakeRay:
    def __init__(self):
        self.kwargs = None

    def is_initialized(self):
        return False

    def init(self, address=None, **kwargs):
        self.kwargs = {"address": address, **kwargs}


def test_workers_start_a_local_ray_of_that_many_cpus_at_normal_priority(monkeypatch):
    fake = _FakeRay()
    monkeypatch.setitem(sys.modules, "ray", fake)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv("RAY_worker_niceness", raising=False)
    assert ray_executor.connect(None, quiet=True, workers=2) is True
    assert fake.kwargs["num_cpus"] == 2 and fake.kwargs["address"] is None
    assert os.environ["RAY_worker_niceness"] == "0"


def test_workers_with_a_cluster_address_is_refused(monkeypatch):
    from ergo_data.core.errors import RecipeError

    monkeypatch.setitem(sys.modules, "ray", _FakeRay())
    with pytest.raises(RecipeError, match="--workers"):
        ray_executor.connect("auto", quiet=True, workers=2)


# ---- on a local Ray cluster ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def local_ray():
    ray = pytest.importorskip("ray")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield ray
    ray.shutdown()


def read(folder):
    return pq.read_table(sorted(folder.glob("*.parquet"))).to_pylist()


def without_seconds(stats: dict) -> dict:
    stats = json.loads(json.dumps(stats))
    for key in ("seconds_total", "write_seconds"):
        stats.pop(key)
    for s in stats["stages"]:
        s.pop("seconds")
    return stats


def assert_same_outputs(local_out, ray_out):
    local_rows, ray_rows = read(local_out / "data"), read(ray_out / "data")
    assert sorted(r["id"] for r in ray_rows) == sorted(r["id"] for r in local_rows)
    by_id = {r["id"]: r for r in local_rows}
    for r in ray_rows:  # every column of every kept row, not only the ids
        assert r == by_id[r["id"]], r["id"]
    assert sorted(map(json.dumps, read(ray_out / "rejects"))) == sorted(map(json.dumps, read(local_out / "rejects")))
    assert without_seconds(json.loads((ray_out / "stats.json").read_text())) == without_seconds(
        json.loads((local_out / "stats.json").read_text()))


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.usefixtures("local_ray")
def test_demo_on_ray_via_cli_matches_local(demo_run, tmp_path):
    from ergo_data.cli.app import app

    local_out, local_stats = demo_run
    assert local_stats["totals"]["rejected"] > 0  # the comparison covers rejects, not only kept rows
    result = CliRunner().invoke(app, ["run", "pipelines/demo.yaml", "--out", str(tmp_path), "--executor", "ray",
                                      "--quiet"])
    assert result.exit_code == 0, result.output
    assert_same_outputs(local_out, tmp_path)
    assert not (tmp_path / ".work-ray").exists()


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.usefixtures("local_ray")
def test_workers_and_small_blocks_on_ray_match_local(demo_run, tmp_path):
    from ergo_data.cli.app import app

    # Ray is already up (the fixture): --workers caps this run's CPUs; blocks of 3 rows split every chunk.
    result = CliRunner().invoke(app, ["run", "pipelines/demo.yaml", "--out", str(tmp_path), "--executor", "ray",
                                      "--workers", "1", "--set", "ray.max_block_rows=3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert_same_outputs(demo_run[0], tmp_path)


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.usefixtures("local_ray")
def test_profile_and_timeline_are_filled(demo_run, tmp_path):
    from ergo_data.pipeline.executor.ray import run_pipeline_ray

    profile: dict = {}
    run_pipeline_ray(load_recipe("pipelines/demo.yaml"), tmp_path / "o", quiet=True, profile=profile,
                     timeline=tmp_path / "timeline.json")
    assert profile["blocks"] >= 1 and profile["driver_s"] >= 0 and profile["run_s"] > 0 and "init_s" in profile
    events = json.loads((tmp_path / "timeline.json").read_text())
    assert any(e.get("ph") == "X" for e in events)


@pytest.mark.integration
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.usefixtures("local_ray")
def test_stateful_stage_in_an_actor_pool_matches_local(demo_run, tmp_path, monkeypatch):
    from ergo_data.pipeline.executor.ray import run_pipeline_ray

    # `decode` holds no model; flagging it stateful on the driver makes the executor run the real decode
    # code in a Ray actor pool, the path judges and OCR take.
    monkeypatch.setattr(DecodeStage, "stateful", True)
    stats = run_pipeline_ray(load_recipe("pipelines/demo.yaml", ["ray.actors=2"]), tmp_path, quiet=True)
    assert stats["invariant"]["ok"]
    assert_same_outputs(demo_run[0], tmp_path)
