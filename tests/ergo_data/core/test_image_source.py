"""The crop path's one API (``ImageSource`` / ``decode_crop``): the same views as today's full decode
(sizes equal to ``crop_at_budget``/``coarse_view``, pixels within 2/255), on the displayed frame for all
8 EXIF orientations, region-limited for JPEGs (no row below the box decoded), Pillow for the rest."""

from __future__ import annotations

import io

import numpy as np
import pytest
import simplejpeg
from PIL import Image, ImageOps

from ergo_data.core import imageio
from ergo_data.core.boxes import Box
from ergo_data.core.imageio import (
    ImageSource,
    coarse_from_full,
    crop_from_full,
    decode_coarse,
    decode_crop,
    decode_full,
)
from ergo_train.rollout.zoom import coarse_view, crop_at_budget
from tests.data.make_bad_inputs import encode, pattern, photo

BUDGET = 1280 * 28 * 28
SMALL = 64 * 28 * 28


def mad(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def today(data: bytes, box: Box, max_pixels: int) -> np.ndarray:
    full, info = decode_full(data)
    return crop_from_full(full, info, box, max_pixels)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("orientation", range(1, 9))
def test_crop_equals_todays_and_is_on_the_displayed_frame(orientation, fmt):
    marker = (300, 100, 420, 180)  # white rectangle on the STORED pixels
    arr = photo(900, 600, seed=orientation)
    arr[marker[1]:marker[3], marker[0]:marker[2]] = 255
    data = encode(arr, fmt, orientation=orientation, quality=92)
    shown = ImageOps.exif_transpose(Image.open(io.BytesIO(data))).convert("RGB")
    ys, xs = np.nonzero((np.asarray(shown) == 255).all(axis=2))
    box = Box(xs.min() - 10.5, ys.min() - 7.2, xs.max() + 11.0, ys.max() + 8.9)  # displayed frame
    src = ImageSource(data)
    assert src.size == shown.size
    crop = src.crop(box, SMALL)
    assert crop.size == crop_at_budget(shown, box, SMALL).size
    assert src.info.decoded_by == ("libvips" if fmt == "JPEG" else "pillow")
    assert mad(crop, today(data, box, SMALL)) < 2.0
    assert mad(crop, crop_at_budget(shown, box, SMALL)) < 2.0
    inner = np.asarray(crop)[crop.size[1] // 3: 2 * crop.size[1] // 3, crop.size[0] // 3: 2 * crop.size[0] // 3]
    assert (inner > 240).all(axis=2).mean() > 0.9  # the marker is where the displayed box says
    assert src.coarse(SMALL).size == coarse_view(shown, SMALL)[0].size


def test_region_decode_stops_below_the_box_and_matches_the_full_decode():
    data = encode(photo(1600, 1200, seed=2), "JPEG", quality=90)
    top, bottom = Box(100, 40, 500, 300), Box(100, 900, 500, 1190)
    cut_below_top = data[: len(data) // 2]  # the top box's rows are in the first half of the stream
    assert mad(decode_crop(data, top, BUDGET), today(data, top, BUDGET)) == 0.0  # same libjpeg-turbo IDCT
    with pytest.raises(imageio.DecodeError):
        today(cut_below_top, top, BUDGET)  # the full decode needs every row
    # the region decode never reads past the box: the same crop from half a file
    assert mad(imageio._resize_orient(imageio._jpeg_region(cut_below_top, (100, 40, 400, 260)),
                                      imageio._crop_geometry(imageio.read_info(data), top, BUDGET)[1], 1),
               today(data, top, BUDGET)) == 0.0
    with pytest.raises(imageio.DecodeError) as e:
        decode_crop(cut_below_top, bottom, BUDGET)
    assert e.value.reason == "truncated_image"


def test_second_crop_decodes_once_and_cuts(monkeypatch):
    data = encode(photo(1200, 900, seed=4), "JPEG", orientation=6, quality=90)
    calls = []
    real_region, real_jpeg = imageio._jpeg_region, simplejpeg.decode_jpeg
    monkeypatch.setattr(imageio, "_jpeg_region", lambda *a: calls.append("region") or real_region(*a))
    monkeypatch.setattr(simplejpeg, "decode_jpeg", lambda *a, **k: calls.append("full") or real_jpeg(*a, **k))
    src = ImageSource(data)
    boxes = [Box(10, 10, 200, 300), Box(400, 500, 800, 1100), Box(0, 0, 900, 1200), Box(50, 60, 70, 90)]
    crops = [src.crop_array(b, BUDGET) for b in boxes]
    assert calls == ["region", "full"]  # spies on the real decoders: one region, then one full decode
    for b, c in zip(boxes, crops):
        assert mad(c, today(data, b, BUDGET)) == 0.0


@pytest.mark.parametrize("box", [Box(100, 50, 300, 200), Box(900, 700, 1150, 880)])  # ends high / low
def test_views_pick_a_plan_and_match_todays_views(box):
    data = encode(photo(1200, 900, seed=7), "JPEG", quality=90)
    full, info = decode_full(data)
    coarse, crop = ImageSource(data).views(BUDGET, box)
    assert mad(crop, crop_from_full(full, info, box, BUDGET)) == 0.0
    assert mad(coarse.array, coarse_from_full(full, info, BUDGET).array) < 2.0
    assert mad(coarse.array, decode_coarse(data, BUDGET).array) < 2.0
    src = ImageSource(data)
    src.views(BUDGET, box)
    two_decodes = box.y2 / 900 <= imageio.REGION_FIRST_MAX_BOTTOM
    assert (src._full is None) == two_decodes  # the high box: DCT-scaled view + region; else one full decode


def test_non_jpeg_and_cmyk_go_through_pillow_unchanged():
    card = pattern(336, 224)
    for data in (encode(card, "PNG"), encode(Image.fromarray(card).convert("CMYK"), "JPEG", quality=95),
                 encode(card, "WEBP", lossless=True)):
        box = Box(20, 30, 200, 190)
        src = ImageSource(data)
        assert np.array_equal(src.crop_array(box, BUDGET), today(data, box, BUDGET))
        assert src.info.decoded_by == "pillow"
        assert np.array_equal(np.asarray(src.full()), np.asarray(imageio.open_rgb(data)))


def test_reused_decode_buffers_never_alias_a_live_source():
    datas = [encode(photo(640, 480, seed=s), "JPEG", quality=90) for s in range(3)]
    box = Box(100, 100, 400, 300)
    expected = [today(d, box, BUDGET) for d in datas]
    a, b = ImageSource(datas[0]), ImageSource(datas[1])
    a.load()
    b.load()
    a_buffer = a._buf
    del a  # its buffer becomes the spare one...
    c = ImageSource(datas[2])
    c.load()  # ...and c decodes into it, while b is still alive
    assert c._buf is a_buffer and b._buf is not a_buffer
    for src, want in ((b, expected[1]), (c, expected[2])):
        for _ in range(2):
            assert np.array_equal(src.crop_array(box, BUDGET), want)
