"""The local executor end to end on the project's example data: outputs, stats, invariant, workers."""

from __future__ import annotations

import json

import datasets
import pyarrow.parquet as pq

from ergo_data.pipeline.executor.local import run_pipeline
from ergo_data.pipeline.recipe import load_recipe, parse_recipe
from tests.support.paths import ROOT

NEEDS_ZOOM = ["bag_of_bottle", "doll", "flag", "queue_time", "signicade", "vending_machine"]


def read(folder):
    return pq.read_table(sorted(folder.glob("*.parquet"))).to_pylist()


def test_worked_example_band_keeps_the_six_needs_zoom_items(demo_run):
    out, _ = demo_run
    kept = {r["id"] for r in read(out / "data") if r["source"] == "examples"}
    assert kept == {f"examples/{s}" for s in NEEDS_ZOOM}
    rejects = {r["id"]: r for r in read(out / "rejects")}
    assert rejects["examples/blackmug"]["reason"] == "region_legible_without_zoom"
    assert "70.7 px" in rejects["examples/blackmug"]["detail"]
    assert "74.4 px" in rejects["examples/desktop"]["detail"]


def test_sql_selects_the_other_group(tmp_path):
    r = load_recipe(ROOT / "pipelines/demo.yaml", ["stages.2.max_side_px=1000",
                                                   "stages.3.where=box_short_side_1280 > 56 AND source = 'examples'"])
    run_pipeline(r, tmp_path, quiet=True)
    assert sorted(x["id"] for x in read(tmp_path / "data")) == ["examples/blackmug", "examples/desktop"]


def test_stats_and_invariant(demo_run):
    out, _ = demo_run
    on_disk = json.loads((out / "stats.json").read_text())
    assert on_disk["invariant"]["ok"] is True
    for name, c in on_disk["sources"].items():
        assert c["inputs"] == c["kept"] + c["rejected"], name
    assert on_disk["sources"]["examples"] == {"inputs": 8, "kept": 6, "rejected": 2, "ok": True}
    names = [s["stage"] for s in on_disk["stages"]]
    assert names == ["sources", "decode", "box_check", "visibility", "sql", "dedup", "split"]
    vis = on_disk["stages"][3]
    assert vis["in"] - vis["out"] == sum(vis["rejected"].values())
    assert on_disk["totals"]["kept"] == len(read(out / "data"))


def test_derived_columns_and_core_schema(demo_run):
    out, _ = demo_run
    rows = {r["id"]: r for r in read(out / "data")}
    sig = rows["examples/signicade"]
    assert (sig["width"], sig["height"]) == (4240, 2700)
    assert round(sig["box_short_side_1280"], 1) == 26.7
    assert sig["vision_tokens_1280"] <= 1280 < sig["vision_tokens_full"]
    assert sig["split"] in ("train", "val", "test")
    assert sig["answer"] == "tiger" and sig["options"][ord(sig["answer_letter"]) - 65] == "tiger"
    assert len(sig["image_sha256"]) == 64
    doll = rows["examples/doll"]  # an MPO: the first frame's size
    assert (doll["width"], doll["height"]) == (4240, 2832)


def test_loads_with_hf_datasets_as_image_feature(demo_run):
    out, _ = demo_run
    ds = datasets.load_dataset("parquet", data_files=str(out / "data" / "*.parquet"), split="train")
    assert type(ds.features["image"]).__name__ == "Image"
    first = ds[0]
    assert first["image"].size == (first["width"], first["height"])


def test_two_workers_give_identical_outputs(demo_run, tmp_path):
    out, _ = demo_run
    run_pipeline(load_recipe(ROOT / "pipelines/demo.yaml"), tmp_path, workers=2, quiet=True)
    assert read(tmp_path / "data") == read(out / "data")
    assert read(tmp_path / "rejects") == read(out / "rejects")


def test_rerun_is_a_noop_and_changed_recipe_recomputes(demo_run, tmp_path):
    r = load_recipe(ROOT / "pipelines/demo.yaml")
    run_pipeline(r, tmp_path, quiet=True)
    first = read(tmp_path / "data")
    run_pipeline(r, tmp_path, quiet=True)
    assert read(tmp_path / "data") == first
    r2 = load_recipe(ROOT / "pipelines/demo.yaml", ["stages.2.max_side_px=30"])
    stats = run_pipeline(r2, tmp_path, quiet=True)
    assert stats["totals"]["kept"] < len(first) and stats["invariant"]["ok"]


def test_vstar_category_subfolders_and_coco_sources(tmp_path):
    import shutil

    cat = tmp_path / "vstar" / "direct_attributes"
    cat.mkdir(parents=True)
    for f in ("signicade.JPG", "signicade.json"):
        shutil.copy(ROOT / "examples/vstar" / f, cat / f)
    recipe = parse_recipe({"name": "t", "sources": [{"type": "vstar", "name": "v", "path": str(tmp_path / "vstar")}],
                           "stages": [{"type": "decode"}]})
    run_pipeline(recipe, tmp_path / "o", quiet=True)
    (row,) = read(tmp_path / "o" / "data")
    assert row["id"] == "v/direct_attributes/signicade" and row["category"] == "direct_attributes"


def test_empty_result_still_writes_valid_outputs(tmp_path):
    r = load_recipe(ROOT / "pipelines/demo.yaml", ["stages.3.where=1 = 0"])
    stats = run_pipeline(r, tmp_path, quiet=True)
    assert stats["totals"]["kept"] == 0 and stats["invariant"]["ok"]
    assert len(read(tmp_path / "rejects")) == stats["totals"]["inputs"]
