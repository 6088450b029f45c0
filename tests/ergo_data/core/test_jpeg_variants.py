"""JPEGs that viewers open decode, on the path we claim, to what Pillow shows (mean abs diff < 2/255):
encoder variants, metadata segments, junk bytes; the issue's 4961x7016 receipt scan with 33 stray bytes
before EOI; truncated data stays a reject. Also through the crop path (region-limited decode)."""

from __future__ import annotations

import io
import json

import numpy as np
import pyarrow as pa
import pytest
from PIL import Image, ImageOps

from ergo_data.core.boxes import Box
from ergo_data.core.imageio import DecodeError, ImageSource, decode_coarse, decode_crop, decode_full
from ergo_data.core.schema import BoxRecord, make_row
from ergo_data.core.vision import resized_size
from ergo_data.stages.decode import DecodeStage
from tests.data.jpeg_variants import VARIANTS, extraneous_before_eoi, pillow_jpeg
from tests.data.make_bad_inputs import photo
from tests.support.paths import EXAMPLES

BUDGET = 60 * 28 * 28  # a budget well under the 333x250 test image: the views are resized
MAX_MAD = 2.0


def shown_by_pillow(data: bytes) -> Image.Image:
    im = Image.open(io.BytesIO(data))
    return (ImageOps.exif_transpose(im) or im).convert("RGB")


def mad(a, b) -> float:
    a, b = np.asarray(a), np.asarray(b)
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


def at_budget(im: Image.Image, box: Box | None = None) -> Image.Image:
    """The naive reference: Pillow crop at full resolution, bicubic resize under the budget."""
    if box is not None:
        im = im.crop(box.integer(im.size))
    return im.resize(resized_size(im.size, BUDGET), Image.Resampling.BICUBIC)


@pytest.fixture(scope="module")
def card() -> np.ndarray:
    return photo(333, 250, seed=5)  # sides that are not multiples of the MCU size


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_variant_decodes_on_its_path_like_pillow(name, card):
    variant = VARIANTS[name]
    data, clean = variant.build(card)
    ref = shown_by_pillow(clean)  # the same image without the surgery: what Pillow shows for both
    full, info = decode_full(data)
    expected_decoder = "simplejpeg" if variant.path == "fast" and variant.warning is None else "pillow"
    assert info.fast_path == (variant.path == "fast") and info.decoded_by == expected_decoder, name
    if variant.warning:
        assert variant.warning in info.decode_warning, info.decode_warning
    else:
        assert info.decode_warning is None
    assert mad(full, ref) < MAX_MAD, name

    view = decode_coarse(data, BUDGET)
    assert (view.info.decoded_by, view.info.decode_warning) == (info.decoded_by, info.decode_warning)
    assert mad(view.array, at_budget(ref)) < MAX_MAD, name

    box = Box(180.4, 30.2, 300.7, 190.9)
    crop = decode_crop(data, box, BUDGET)  # fresh source: region-limited decode for every JPEG mode we can
    assert mad(crop, at_budget(ref, box)) < MAX_MAD, name


def test_receipt_scan_with_extraneous_bytes_before_eoi_is_kept_with_its_warning(tmp_path):
    # the case at its real size: a real photo scaled to 4961x7016, 33 stray bytes before EOI
    src = Image.open(EXAMPLES / "vstar" / "queue_time.jpg").convert("RGB")
    big = np.asarray(src.resize((4961, 7016), Image.Resampling.BILINEAR))
    clean = pillow_jpeg(big, quality=85)
    data = extraneous_before_eoi(clean, 33)
    assert data.endswith(b"\xff\xd9") and len(data) == len(clean) + 33
    ref = shown_by_pillow(data)  # Pillow opens it: the reference is the damaged file itself

    view = decode_coarse(data, 1280 * 28 * 28)
    assert view.size == (4961, 7016) and view.info.decoded_by == "pillow"  # knowingly: the fallback
    assert "extraneous bytes before marker 0xd9" in view.info.decode_warning
    # the same DCT-scaled view as the intact file gets on the fast path (a DCT-scaled view of a real
    # photo differs from Pillow's full decode + bicubic by ~2-4/255 anyway: compared at full res below)
    assert mad(view.array, decode_coarse(clean, 1280 * 28 * 28).array) < 1.0
    full, _ = decode_full(data)
    assert mad(full[::4, ::4], np.asarray(ref)[::4, ::4]) < MAX_MAD

    box = Box(2000, 5000, 2600, 5400)
    crop = ImageSource(data).crop(box, 1280 * 28 * 28)
    assert mad(crop, ref.crop(box.integer(ref.size)).resize(crop.size, Image.Resampling.BICUBIC)) < MAX_MAD

    path = tmp_path / "receipt.jpg"
    path.write_bytes(data)
    row = make_row(id="scans/r1", image_path=str(path), question="Total?", answer="12.40", source="scans",
                   boxes=[BoxRecord(2000, 5000, 2600, 5400)], provenance={"scan": 1})
    res = DecodeStage().process(pa.Table.from_pylist([row]))
    assert not res.rejected
    kept = res.kept.to_pylist()[0]
    prov = json.loads(kept["provenance"])
    assert prov["scan"] == 1 and "extraneous bytes before marker 0xd9" in prov["decode_warning"]
    assert (kept["width"], kept["height"]) == (4961, 7016)


@pytest.mark.parametrize("cut", ["half", "no_eoi", "junk_then_cut"])
def test_truncated_data_stays_a_reject(cut, card):
    jpeg = pillow_jpeg(card)
    data = {"half": jpeg[: len(jpeg) // 2], "no_eoi": jpeg[:-2],
            # a benign warning first (junk before SOS), then the file ends early: still truncated
            "junk_then_cut": VARIANTS["junk_before_sos"].build(card)[0][: len(jpeg) * 2 // 3]}[cut]
    for decode in (lambda: decode_coarse(data, BUDGET), lambda: decode_full(data),
                   lambda: ImageSource(data).crop(Box(0, 200, 300, 250), BUDGET)):
        with pytest.raises(DecodeError) as e:
            decode()
        assert e.value.reason == "truncated_image", str(e.value)


def test_damaged_pixels_stay_corrupt(card):
    jpeg = pillow_jpeg(card)
    sos = jpeg.index(b"\xff\xda") + 20
    damaged = jpeg[:sos + 200] + b"\0" * 3000 + jpeg[sos + 3200:]  # same length, EOI still there
    with pytest.raises(DecodeError) as e:
        decode_coarse(damaged, BUDGET)
    assert e.value.reason == "corrupt_image"
