"""Canonical Box: geometry and a round-trip property test for every converter."""

from __future__ import annotations

import math

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st
from PIL import Image, ImageOps

from ergo_data.core.boxes import Box, BoxError, rotate_box_with_exif

sizes = st.tuples(st.integers(1, 20000), st.integers(1, 20000))


@st.composite
def box_in_image(draw, size_strategy=sizes):
    w, h = draw(size_strategy)
    x1 = draw(st.floats(0, w, allow_nan=False, exclude_max=True))
    y1 = draw(st.floats(0, h, allow_nan=False, exclude_max=True))
    x2 = draw(st.floats(x1, w, allow_nan=False, exclude_min=True))
    y2 = draw(st.floats(y1, h, allow_nan=False, exclude_min=True))
    assume(x2 - x1 > 1e-6 * max(w, 1) and y2 - y1 > 1e-6 * max(h, 1))
    return Box(x1, y1, x2, y2), (w, h)


def close(a: Box, b: Box, tol: float) -> bool:
    return all(math.isclose(p, q, rel_tol=1e-9, abs_tol=tol) for p, q in zip(a.as_tuple(), b.as_tuple()))


@given(box_in_image())
def test_vstar_and_coco_round_trip(bs):
    box, _ = bs
    assert close(Box.from_vstar(box.to_vstar()), box, 1e-9 * max(box.x2, box.y2, 1))
    assert close(Box.from_coco(box.to_coco()), box, 1e-9 * max(box.x2, box.y2, 1))


@given(box_in_image())
def test_labelstudio_round_trip(bs):
    box, size = bs
    value = box.to_labelstudio(size)
    assert value["rotation"] == 0
    assert 0 <= value["x"] <= 100 and 0 <= value["y"] <= 100
    assert close(Box.from_labelstudio(value, size), box, 1e-6)


@given(box_in_image())
def test_normalized_round_trip(bs):
    box, size = bs
    n = box.to_normalized(size)
    assert all(0 <= v <= 1 for v in n)
    assert close(Box.from_normalized(n, size), box, 1e-6)


@given(box_in_image(), st.tuples(st.integers(28, 4000), st.integers(28, 4000)))
def test_model_round_trip(bs, resized):
    box, size = bs
    back = Box.from_model(box.to_model(resized, size), resized_size=resized, original_size=size)
    assert close(back, box, 1e-6)


@given(box_in_image(), st.floats(-5000, 5000), st.floats(-5000, 5000))
def test_from_model_clamps_or_rejects(bs, dx, dy):
    box, size = bs
    shifted = [box.x1 + dx, box.y1 + dy, box.x2 + dx, box.y2 + dy]
    try:
        out = Box.from_model(shifted, resized_size=size, original_size=size)
    except BoxError as e:
        assert "outside" in str(e)
        return
    assert out.inside(size)


@pytest.mark.parametrize("bad", [[1, 2, 3], [0, 0, float("nan"), 5], [0, 0, float("inf"), 5], ["a", 0, 1, 1], [True, 0, 1, 1]])
def test_bad_numbers_are_clear_errors(bad):
    with pytest.raises(BoxError):
        Box.from_model(bad, (100, 100), (100, 100))


def test_degenerate_and_inverted_rejected():
    with pytest.raises(BoxError, match="degenerate"):
        Box(5, 5, 5, 10)
    with pytest.raises(BoxError):
        Box.from_model([10, 10, 5, 5], (100, 100), (100, 100))
    with pytest.raises(BoxError, match="non-positive"):
        Box.from_coco([0, 0, 0, 5])


def test_labelstudio_rotation_is_a_clear_error():
    with pytest.raises(BoxError, match="rotat"):
        Box.from_labelstudio({"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 15}, (100, 100))
    # a full turn is the same rectangle
    assert Box.from_labelstudio({"x": 1, "y": 1, "width": 5, "height": 5, "rotation": 360}, (100, 100)).x1 == 1


def test_geometry():
    a, b = Box(0, 0, 10, 10), Box(5, 5, 15, 15)
    assert a.area == 100 and a.center == (5, 5)
    assert a.iou(b) == pytest.approx(25 / 175)
    assert a.iou(a) == 1.0 and a.iou(Box(20, 20, 30, 30)) == 0.0
    assert Box.union([a, b]) == Box(0, 0, 15, 15)
    assert Box(-5, -5, 50, 50).clamp((20, 30)) == Box(0, 0, 20, 30)
    with pytest.raises(BoxError, match="outside"):
        Box(30, 30, 40, 40).clamp((20, 20))
    assert Box(10, 10, 20, 20).expand(2, relative=False) == Box(8, 8, 22, 22)
    assert Box(1, 1, 9, 9).expand(1.0, (10, 10)) == Box(0, 0, 10, 10)
    with pytest.raises(BoxError):
        Box.union([])


@given(box_in_image(), box_in_image())
def test_iou_symmetric_and_bounded(a, b):
    (ba, _), (bb, _) = a, b
    assert 0.0 <= ba.iou(bb) <= 1.0 + 1e-12
    assert math.isclose(ba.iou(bb), bb.iou(ba), rel_tol=1e-9, abs_tol=1e-12)


@given(box_in_image(st.tuples(st.integers(2, 500), st.integers(2, 500))), st.integers(1, 8))
def test_exif_rotation_round_trip(bs, orientation):
    box, size = bs
    inverse = {6: 8, 8: 6}.get(orientation, orientation)
    displayed = (size[1], size[0]) if orientation in (5, 6, 7, 8) else size
    rotated = rotate_box_with_exif(box, size, orientation)
    assert rotated.inside(displayed) or close(rotated.clamp(displayed), rotated, 1e-6)
    assert close(rotate_box_with_exif(rotated, displayed, inverse), box, 1e-6)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_rotation_matches_pillow_pixels(orientation):
    """A white patch under the stored-frame box lands under the rotated box after exif_transpose."""
    img = Image.new("L", (60, 40), 0)
    box = Box(5, 8, 20, 14)
    img.paste(255, tuple(int(v) for v in box.as_tuple()))
    exif = img.getexif()
    exif[0x0112] = orientation
    img.info["exif"] = exif.tobytes()
    shown = ImageOps.exif_transpose(img)
    rb = rotate_box_with_exif(box, img.size, orientation)
    bbox = shown.getbbox()
    assert bbox == tuple(int(v) for v in rb.as_tuple())


# ---- detection-set formats (YOLO, Pascal VOC, LabelMe, CVAT, Open Images) --------------------------
@given(box_in_image())
def test_yolo_round_trip(bs):
    box, size = bs
    v = box.to_yolo(size)
    assert all(0 <= x <= 1 for x in v)
    assert close(Box.from_yolo(v, size), box, 1e-6 * max(size))


@given(box_in_image())
def test_openimages_round_trip(bs):
    box, size = bs
    v = box.to_openimages(size)
    assert v[0] < v[1] and v[2] < v[3]  # XMin < XMax, YMin < YMax
    assert close(Box.from_openimages(v, size), box, 1e-6 * max(size))


@given(box_in_image(), st.booleans())
def test_voc_corners_xyxy_round_trip(bs, swap):
    box, _ = bs
    tol = 1e-9 * max(box.x2, box.y2, 1)
    assert close(Box.from_voc(box.to_voc()), box, tol)
    assert close(Box.from_xyxy([str(v) for v in box.to_xyxy()]), box, tol)
    corners = box.to_corners()
    assert close(Box.from_corners(corners[::-1] if swap else corners), box, tol)


def test_pixels_given_as_normalised_and_bad_corners_are_errors():
    with pytest.raises(BoxError, match="pixels, not normalised"):
        Box.from_yolo([320, 240, 50, 40], (640, 480))
    with pytest.raises(BoxError, match="pixels, not normalised"):
        Box.from_openimages([10, 50, 10, 50], (640, 480))
    with pytest.raises(BoxError, match="non-positive"):
        Box.from_yolo([0.5, 0.5, 0.0, 0.2], (640, 480))
    with pytest.raises(BoxError, match="two"):
        Box.from_corners([[1, 2], [3, 4], [5, 6]])
    with pytest.raises(BoxError, match="VOC bndbox.*degenerate"):
        Box.from_voc([10, 10, 10, 20])
