"""The ``landmarks`` source (ERGO in miniature): the stripe detail is illegible in the policy's coarse view and
legible in the zoom on the landmark's cell, measured on generated items' pixels; rows are exact and seeded."""

from __future__ import annotations

import json
import random
from pathlib import Path

import numpy as np
import pytest

from ergo_data.core.boxes import Box
from ergo_data.core.errors import RecipeError
from ergo_data.core.imageio import open_rgb
from ergo_data.core.schema import validate_row
from ergo_data.sources.landmarks import (
    COLOURS,
    ORIENTATIONS,
    LandmarksSource,
    cell_box,
    legibility,
    make_background,
    stripes,
)
from tests.support.paths import EXAMPLES


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("landmarks")
    src = LandmarksSource(name="lm", path=str(EXAMPLES / "coco"), out_dir=str(out), images=16,
                          kinds=["photo", "gradient", "tiles", "noise"])
    return [r for r in src.read() if isinstance(r, dict)]


def test_rows_are_exact(rows):
    assert len(rows) == 16 * 4
    by_image: dict[str, list[dict]] = {}
    for r in rows:
        validate_row(r, require_decoded=False)
        by_image.setdefault(r["image"]["path"], []).append(r)
        prov = json.loads(r["provenance"])
        target = next(lm for lm in prov["landmarks"] if lm["colour"] == prov["target"])
        assert r["answer"] == target["orientation"] == ORIENTATIONS["ABCD".index(r["answer_letter"])]
        assert r["options"] == list(ORIENTATIONS)
        box = Box.from_record(r["boxes"][0])
        assert box.as_tuple() == tuple(float(v) for v in target["box"])
        cell = cell_box(target["box"], 448, 4)
        assert cell.x1 <= box.x1 and box.x2 <= cell.x2 and cell.y1 <= box.y1 and box.y2 <= cell.y2
    for path, group in by_image.items():
        colours = [json.loads(r["provenance"])["target"] for r in group]
        assert len(set(colours)) == 4 and set(colours) <= set(COLOURS)
        assert open_rgb(Path(path).read_bytes()).size == (448, 448)
    kinds = {json.loads(r["provenance"])["background_kind"] for r in rows}
    assert kinds == {"photo", "gradient", "tiles", "noise"}


def test_landmark_pixels_are_the_colour_and_the_stripes(rows):
    r = rows[0]
    prov = json.loads(r["provenance"])
    lm = next(x for x in prov["landmarks"] if x["colour"] == prov["target"])
    im = np.asarray(open_rgb(Path(r["image"]["path"]).read_bytes())).astype(int)
    x1, y1 = lm["box"][:2]
    outline = im[y1 + 2, x1 + 44]  # inside the 8-px outline, top centre
    assert np.abs(outline - np.array(COLOURS[lm["colour"]])).max() <= 8  # the grain is +-8
    core = im[y1 + 40:y1 + 48, x1 + 40:x1 + 48]  # full-contrast stripes in the middle
    on = stripes(lm["orientation"], x1 + 40, y1 + 40, 8, 8)
    white_dist = np.abs(core - 255).max(axis=-1)
    assert (white_dist[~on] <= 8).all() and (white_dist[on] > 8).all()


def test_detail_is_illegible_coarse_and_legible_in_the_crop(rows):
    """The best possible reader (nearest exact template) at the 16-token coarse view vs the zoom on the cell."""
    m = legibility(rows)
    assert m["crop_accuracy"] == 1.0
    assert m["crop_template_separation"] > 8  # grey levels between the closest two orientations, worst item
    assert m["coarse_template_max_diff"] <= 4  # at any coarse pixel (diamond edges), under the +-8 grain
    assert m["coarse_template_separation"] < 0.5
    assert m["coarse_accuracy"] < 0.65  # chance is 0.25; only the +-1 rounding residues are left to read


def test_seeded_and_kind_checked(tmp_path):
    def run(seed):
        src = LandmarksSource(name="lm", path=str(tmp_path), out_dir=str(tmp_path / f"o{seed}"), images=2,
                              kinds=["gradient", "noise"], seed=seed)
        return [r for r in src.read() if isinstance(r, dict)]

    a, b, c = run(0), run(0), run(1)
    assert [r["provenance"] for r in a] != [r["provenance"] for r in c]
    pixels = [Path(r["image"]["path"]).read_bytes() for r in a]
    assert pixels == [Path(r["image"]["path"]).read_bytes() for r in b]
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError, match="kind `photo` needs images"):
        list(LandmarksSource(name="lm", path=str(tmp_path / "empty"), out_dir=str(tmp_path / "o"), images=1,
                             kinds=["photo"]).read())
    with pytest.raises(RecipeError, match="multiple of grid"):
        LandmarksSource(name="lm", path=str(tmp_path), out_dir=str(tmp_path / "o"), size=450)
    im, origin = make_background("tiles", 64, random.Random(0))
    assert im.size == (64, 64) and origin.startswith("tiles:")
