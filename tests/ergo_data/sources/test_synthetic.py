"""The ``synthetic`` source: targets land exactly where recorded (pixel check against the real
background), sizes follow the difficulty knob, answers are the rendered truth, runs are seeded."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ergo_data.core.boxes import Box
from ergo_data.core.errors import RecipeError
from ergo_data.core.imageio import open_rgb
from ergo_data.core.schema import validate_row
from ergo_data.sources.synthetic import (
    SHAPE_COLOURS,
    SyntheticSource,
    TargetSpec,
    changed_pixels_bbox,
    render_target,
    text_distractors,
)
from tests.support.paths import EXAMPLES

TARGETS = ["text", "shape", "shape", "crop", "count"]


@pytest.fixture(scope="module")
def backgrounds(tmp_path_factory):
    folder = tmp_path_factory.mktemp("backgrounds")
    for name in ("vending_machine.jpg", "flag.JPG"):  # 2250x1500 and 4140x2700 real photos
        shutil.copy(EXAMPLES / "vstar" / name, folder / name)
    return folder


def _run(backgrounds, out, **params):
    src = SyntheticSource(name="syn", path=str(backgrounds), out_dir=str(out), targets=TARGETS,
                          crops_from=str(EXAMPLES / "boxes.jsonl"), **params)
    items = list(src.read())
    return [r for r in items if isinstance(r, dict)], [r for r in items if not isinstance(r, dict)]


@pytest.fixture(scope="module")
def generated(backgrounds, tmp_path_factory):
    return _run(backgrounds, tmp_path_factory.mktemp("composites"), difficulty=0.5, seed=3)


def _targets(rows):
    """{composite path: (background path, [TargetSpec with boxes])} from the rows' provenance."""
    out = {}
    for r in rows:
        prov = json.loads(r["provenance"])
        out[prov["composite"]] = (prov["background"], [TargetSpec(**t) for t in prov["targets"]])
    return out


def test_targets_land_exactly_where_recorded(generated):
    rows, rejects = generated
    assert {r.reason for r in rejects} <= {"spatial_ambiguous"}  # pairs too close on one axis are skipped
    composites = _targets(rows)
    assert len(composites) == 2
    for composite, (background, specs) in composites.items():
        after = np.asarray(Image.open(composite).convert("RGB"))
        before = np.asarray(open_rgb(Path(background).read_bytes()))
        assert after.shape == before.shape  # full-resolution background, nothing resized
        outside = np.ones(after.shape[:2], bool)
        for spec in specs:
            patch = np.asarray(render_target(spec))
            opaque = patch[:, :, 3] == 255
            for x1, y1, x2, y2 in spec.boxes:
                assert (x2 - x1, y2 - y1) == (spec.width, spec.height)
                region_before, region_after = before[y1:y2, x1:x2], after[y1:y2, x1:x2]
                # the changed pixels span the recorded box exactly...
                assert changed_pixels_bbox(region_before, region_after) == (0, 0, spec.width, spec.height)
                # ...and the opaque target pixels are exactly the rendered ones
                assert np.array_equal(region_after[opaque], patch[:, :, :3][opaque])
                outside[y1:y2, x1:x2] = False
        assert np.array_equal(after[outside], before[outside])  # nothing else changed


def test_answers_are_the_rendered_truth(generated):
    rows, _ = generated
    by_cat: dict[str, list] = {}
    for r in rows:
        validate_row(r, require_decoded=False)
        by_cat.setdefault(r["category"], []).append(r)
        assert r["boxes"] and {b["source"] for b in r["boxes"]} == {"synthetic"}
        assert r["options"][ord(r["answer_letter"]) - 65] == r["answer"]
        assert not r["needs_review"]
    assert set(by_cat) == {"synthetic_text", "synthetic_colour", "synthetic_object", "synthetic_spatial",
                           "synthetic_counting"}
    for r in rows:
        specs = _targets([r])[json.loads(r["provenance"])["composite"]][1]
        box = Box.from_record(r["boxes"][0])
        spec = next(s for s in specs if any(Box(*b) == box for b in s.boxes))
        if r["category"] == "synthetic_text":
            assert r["answer"] == spec.text and spec.label in r["question"]
        elif r["category"] == "synthetic_colour":
            assert r["answer"] == spec.colour and spec.colour in SHAPE_COLOURS
        elif r["category"] == "synthetic_object":
            assert r["answer"] == spec.crop["label"] and spec.crop["image"] != json.loads(r["provenance"])["background"]
        elif r["category"] == "synthetic_counting":
            assert int(r["answer"]) == spec.count == len(r["boxes"]) >= 2
        else:  # spatial: the answer follows from the recorded boxes' centres
            a, b = (Box.from_record(x) for x in r["boxes"])
            if "left" in r["options"]:
                assert r["answer"] == ("left" if a.center[0] < b.center[0] else "right")
            else:
                assert r["answer"] == ("above" if a.center[1] < b.center[1] else "below")


def test_difficulty_controls_the_target_area(backgrounds, tmp_path):
    def area_fracs(difficulty):
        rows, _ = _run(backgrounds, tmp_path / str(difficulty), difficulty=difficulty, max_backgrounds=1,
                       min_area_frac=0.001, max_area_frac=0.02)
        prov = json.loads(rows[0]["provenance"])
        w, h = Image.open(prov["composite"]).size
        return [s["width"] * s["height"] * s["count"] / (w * h) for s in prov["targets"] if s["kind"] != "text"]

    easy, hard = area_fracs(0.0), area_fracs(1.0)
    assert all(0.02 * 0.75 <= f <= 0.02 * 1.05 for f in easy), easy  # rounding to whole pixels and counts
    assert all(0.001 * 0.75 <= f <= 0.001 * 1.25 for f in hard), hard


def test_runs_are_seeded(backgrounds, generated, tmp_path):
    again, _ = _run(backgrounds, tmp_path, difficulty=0.5, seed=3)
    first, _ = generated
    strip = lambda rows: [{k: v for k, v in r.items() if k not in ("image", "provenance")} for r in rows]
    assert strip(again) == strip(first)
    other, _ = _run(backgrounds, tmp_path / "other", difficulty=0.5, seed=4, max_backgrounds=1)
    assert [r["boxes"] for r in other] != [r["boxes"] for r in first[: len(other)]]


def test_unplaceable_targets_are_rejected_with_a_reason(backgrounds, tmp_path):
    rows, rejects = _run(backgrounds, tmp_path, region=[0.0, 0.0, 0.02, 0.02], max_backgrounds=1)
    assert not rows and [r.reason for r in rejects] == ["placement_failed"]
    assert "no free spot" in rejects[0].detail


def test_config_errors(backgrounds, tmp_path):
    with pytest.raises(RecipeError, match="crops_from"):
        SyntheticSource(name="s", path=str(backgrounds), out_dir=str(tmp_path), targets=["crop"])
    with pytest.raises(RecipeError, match="min_area_frac"):
        SyntheticSource(name="s", path=str(backgrounds), out_dir=str(tmp_path), min_area_frac=0.1, max_area_frac=0.01)
    with pytest.raises(RecipeError, match="at most one text"):
        SyntheticSource(name="s", path=str(backgrounds), out_dir=str(tmp_path), targets=["text", "text"])


def test_text_distractors_are_near_misses():
    import random

    out = text_distractors("K7PXA", random.Random(0))
    assert len(out) == 3 and "K7PXA" not in out
    assert all(len(d) == 5 and sum(a != b for a, b in zip(d, "K7PXA")) <= 2 for d in out)
