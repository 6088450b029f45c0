"""smart_resize equals transformers' Qwen2-VL implementation; tokens and box size at the budget."""

from __future__ import annotations

import random

import pytest
from hypothesis import given
from hypothesis import strategies as st
from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import smart_resize as hf_smart_resize

from ergo_data.core.boxes import Box
from ergo_data.core.vision import (
    BUDGETS,
    MIN_PIXELS,
    box_short_side_at_budget,
    derived_columns,
    resized_size,
    smart_resize,
    vision_tokens,
)


def _outcome(fn, h, w, **kw):
    try:
        return fn(h, w, **kw)
    except ValueError as e:
        return ("ValueError", str(e))


def test_smart_resize_matches_transformers_on_thousands_of_sizes():
    rng = random.Random(1234)
    sizes = [(rng.randint(1, 20000), rng.randint(1, 20000)) for _ in range(3000)]
    sizes += [(rng.randint(1, 60), rng.randint(1, 60)) for _ in range(1000)]  # tiny images
    sizes += [(1, rng.randint(150, 250)) for _ in range(300)] + [(rng.randint(150, 250), 1) for _ in range(300)]
    sizes += [(h, h * 200) for h in range(1, 40)] + [(h * 201, h) for h in range(1, 40)]  # the aspect limit
    budgets = [MIN_PIXELS, BUDGETS[640], BUDGETS[1280], 16384 * 28 * 28]
    for i, (h, w) in enumerate(sizes):
        kw = {"factor": 28, "min_pixels": MIN_PIXELS, "max_pixels": budgets[i % len(budgets)]}
        assert _outcome(smart_resize, h, w, **kw) == _outcome(hf_smart_resize, h, w, **kw), (h, w, kw)


@given(st.integers(1, 30000), st.integers(1, 30000), st.sampled_from([BUDGETS[640], BUDGETS[1280]]))
def test_smart_resize_property_equivalence(h, w, budget):
    assert _outcome(smart_resize, h, w, max_pixels=budget) == _outcome(
        hf_smart_resize, h, w, factor=28, min_pixels=MIN_PIXELS, max_pixels=budget)


@given(st.integers(28, 20000), st.integers(28, 20000))
def test_budget_respected(w, h):
    if max(w, h) / min(w, h) > 200:
        return
    rw, rh = resized_size((w, h), BUDGETS[1280])
    assert rw % 28 == 0 and rh % 28 == 0
    assert rw * rh <= BUDGETS[1280]
    assert vision_tokens((w, h), BUDGETS[1280]) <= 1280


# Short sides at the 1280 budget from the fixture README (hand-checked there).
FIXTURE_SIDES = {
    "signicade": ((4240, 2700), (2193, 1350, 2285, 1482), 26.7),
    "queue_time": ((4032, 3024), (1567, 1518, 1742, 1672), 42.8),
    "doll": ((4240, 2832), (2110, 1395, 2228, 1600), 33.5),
    "bag_of_bottle": ((5650, 3767), (3218, 3530, 3515, 3767), 51.1),
    "blackmug": ((4000, 2700), (2050, 1365, 2310, 1600), 70.7),
    "flag": ((4140, 2700), (1950, 1358, 2050, 1512), 29.8),
    "desktop": ((3213, 3024), (2968, 1515, 3205, 1850), 74.4),
    "vending_machine": ((2250, 1500), (1184, 1137, 1245, 1231), 32.6),
}


@pytest.mark.parametrize("stem", sorted(FIXTURE_SIDES))
def test_short_side_at_budget_matches_fixture_table(stem):
    size, xyxy, expected = FIXTURE_SIDES[stem]
    assert round(box_short_side_at_budget(Box(*xyxy), size, BUDGETS[1280]), 1) == expected


def test_short_side_uses_each_axis_scale():
    # 1000x100 image at a budget that does not downscale: sides round to 1008 x 112
    size = (1000, 100)
    box = Box(0, 0, 100, 50)
    rw, rh = resized_size(size, BUDGETS[1280])
    assert (rw, rh) == (1008, 112)
    assert box_short_side_at_budget(box, size, BUDGETS[1280]) == pytest.approx(min(100 * rw / 1000, 50 * rh / 100))


def test_derived_columns():
    d = derived_columns((4000, 3000), [Box(0, 0, 400, 300), Box(3600, 2700, 4000, 3000)])
    assert d["box_area_frac"] == pytest.approx(1.0)  # union of opposite corners spans the image
    assert d["vision_tokens_1280"] == vision_tokens((4000, 3000), BUDGETS[1280])
    assert d["vision_tokens_640"] < d["vision_tokens_1280"] < d["vision_tokens_full"]
    assert d["crop_vision_tokens_1280"] <= 1280
    empty = derived_columns((4000, 3000), [])
    assert empty["box_area_frac"] is None and empty["vision_tokens_1280"] is not None
