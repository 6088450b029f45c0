"""Decoding: EXIF orientation (all 8, pixel-wise against Pillow), boxes rotating with the image, first
frames, odd modes to RGB, broken files and bomb headers as reasons, decode-once, pHash, crop path."""

from __future__ import annotations

import io

import imagehash
import numpy as np
import pyarrow as pa
import pytest
import simplejpeg
from PIL import Image, ImageOps

from ergo_data.core import imageio
from ergo_data.core.boxes import Box
from ergo_data.core.imageio import (
    DecodeError,
    coarse_from_full,
    crop_from_full,
    decode_coarse,
    decode_full,
    open_rgb,
    phash_hex,
    read_info,
)
from ergo_data.core.schema import BoxRecord, make_row
from ergo_data.core.vision import resized_size
from ergo_data.stages.decode import DecodeStage
from tests.data.make_bad_inputs import (
    BLUE,
    RED,
    encode,
    grey16_png,
    jpeg_header_claiming,
    palette_alpha_png,
    pattern,
    photo,
    png_header_only,
    rgb16_png,
)
from tests.support.paths import EXAMPLES

BIG = 10**8  # a budget above the test images: smart_resize keeps sides that are multiples of 28
BUDGET = 1280 * 28 * 28
W, H = 168, 112


def pillow_reference(data: bytes) -> np.ndarray:
    """What Pillow shows: first frame, ``exif_transpose``, RGB, full resolution."""
    im = Image.open(io.BytesIO(data))
    return np.asarray((ImageOps.exif_transpose(im) or im).convert("RGB"))


def mad(a: np.ndarray, b: np.ndarray) -> float:
    assert a.shape == b.shape
    return float(np.abs(a.astype(np.int16) - b.astype(np.int16)).mean())


# ---- EXIF orientation ---------------------------------------------------------------------------------
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])  # fast path (simplejpeg + libvips) and Pillow fallback
@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_exif_transpose_pixel_for_pixel(orientation, fmt):
    data = encode(pattern(W, H, marker=(100, 20, 140, 50)), fmt, orientation=orientation, quality=95)
    ref = pillow_reference(data)
    view = decode_coarse(data, BIG)
    assert view.info.orientation == orientation
    assert view.size == (ref.shape[1], ref.shape[0]) == ((H, W) if orientation >= 5 else (W, H))
    assert np.array_equal(view.array, ref)
    assert np.array_equal(np.asarray(open_rgb(data)), ref)


@pytest.mark.parametrize("orientation", [1, 3, 6, 8])
def test_resized_rotated_view_matches_naive_full_resolution_path(orientation):
    data = encode(photo(1400, 1000), "JPEG", orientation=orientation, quality=92)
    ref_full = Image.fromarray(pillow_reference(data))
    ref = np.asarray(ref_full.resize(resized_size(ref_full.size, 200 * 28 * 28), Image.Resampling.BICUBIC))
    view = decode_coarse(data, 200 * 28 * 28)
    assert mad(view.array, ref) < 2.0
    assert imagehash.hex_to_hash(phash_hex(view.array)) - imagehash.phash(Image.fromarray(ref)) <= 2


@pytest.mark.parametrize("orientation", range(1, 9))
def test_stored_boxes_rotate_with_the_image(orientation, tmp_path):
    marker = (100, 20, 140, 50)  # a white rectangle on the STORED pixels
    path = tmp_path / f"o{orientation}.png"
    path.write_bytes(encode(pattern(W, H, marker=marker), "PNG", orientation=orientation))
    row = make_row(id="s/a", image_path=str(path), question="q?", answer="a", source="s",
                   boxes=[BoxRecord(*marker, "marker", "annotation")], provenance={"boxes_frame": "stored"})
    res = DecodeStage(max_pixels=BIG).process(pa.Table.from_pylist([row]))
    out = res.kept.to_pylist()[0]
    b = out["boxes"][0]
    shown = pillow_reference(path.read_bytes())
    ys, xs = np.nonzero((shown == 255).all(axis=2))
    assert (b["x1"], b["y1"], b["x2"], b["y2"]) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    assert (out["width"], out["height"]) == (shown.shape[1], shown.shape[0]) and b["label"] == "marker"
    # and the crop path finds the same white rectangle from the stored-frame full decode
    full, info = decode_full(path.read_bytes())
    crop = crop_from_full(full, info, Box(b["x1"], b["y1"], b["x2"], b["y2"]), BIG)
    assert crop.shape[:2] == resized_size((xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()), BIG)[::-1]
    assert (crop > 200).all(axis=2).mean() > 0.9


def test_displayed_boxes_are_left_alone(tmp_path):
    path = tmp_path / "o6.jpg"
    path.write_bytes(encode(pattern(W, H), "JPEG", orientation=6))
    row = make_row(id="s/a", image_path=str(path), question="q?", answer="a", source="s",
                   boxes=[BoxRecord(1, 2, 3, 4)])
    out = DecodeStage().process(pa.Table.from_pylist([row])).kept.to_pylist()[0]
    assert (out["width"], out["height"]) == (H, W)
    assert [out["boxes"][0][k] for k in ("x1", "y1", "x2", "y2")] == [1, 2, 3, 4]


# ---- frames and modes ---------------------------------------------------------------------------------
def test_mpo_example_is_its_first_frame():
    data = (EXAMPLES / "vstar" / "doll.JPG").read_bytes()
    info = read_info(data)
    assert (info.format, info.n_frames) == ("MPO", 2)
    im = Image.open(io.BytesIO(data))
    im.seek(0)
    first = im.convert("RGB")
    ref = np.asarray(first.resize(resized_size(first.size, BUDGET), Image.Resampling.BICUBIC))
    assert mad(decode_coarse(data, BUDGET).array, ref) < 2.0


@pytest.mark.parametrize("fmt", ["MPO", "TIFF", "GIF", "PNG"])  # PNG: an animated PNG
def test_multi_frame_files_give_the_first_frame(fmt):
    frames = [Image.new("RGB", (W, H), RED), Image.new("RGB", (W, H), BLUE)]
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:])
    assert read_info(data).n_frames == 2
    px = decode_coarse(data, BIG).array
    assert px.shape == (H, W, 3) and np.abs(px.astype(int) - RED).max() <= 3


def _cmyk_jpeg(card):
    return encode(Image.fromarray(card).convert("CMYK"), "JPEG", quality=95)


def _cmyk_tiff(card):
    return encode(Image.fromarray(card).convert("CMYK"), "TIFF")


def _int32_tiff(card):
    return encode(Image.fromarray(card[..., 0].astype(np.int32) * 257), "TIFF")  # mode I, 16-bit range


def _float_tiff(card):
    return encode(Image.fromarray(card[..., 0].astype(np.float32) / 255), "TIFF")  # mode F in [0, 1]


def _grey_jpeg(card):
    return encode(Image.fromarray(card).convert("L"), "JPEG", quality=95)  # fast path, grey -> RGB


ODD = {
    "cmyk_jpeg": (_cmyk_jpeg, False), "cmyk_tiff": (_cmyk_tiff, False), "rgb16_png": (rgb16_png, False),
    "grey16_png": (grey16_png, True), "int32_tiff": (_int32_tiff, True), "float_tiff": (_float_tiff, True),
    "grey_jpeg": (_grey_jpeg, True),
}


@pytest.mark.parametrize("name", sorted(ODD))
def test_odd_modes_become_correct_8bit_rgb(name):
    make, grey = ODD[name]
    card = pattern(W, H)
    view = decode_coarse(make(card), BIG)
    expected = np.repeat(card[..., :1], 3, axis=2) if grey else card  # grey formats keep the red channel
    if name == "grey_jpeg":
        expected = np.asarray(Image.fromarray(card).convert("L").convert("RGB"))
    assert view.array.dtype == np.uint8 and view.array.shape == (H, W, 3)
    assert mad(view.array, expected) < 3.0, name


def test_palette_alpha_and_la_composite_on_white():
    card = pattern(W, H)
    px = decode_coarse(palette_alpha_png(card), BIG).array
    assert (px[-1, -1] == 255).all()  # the transparent grey quadrant is white
    assert np.abs(px[0, 0].astype(int) - RED).max() <= 8  # opaque red stays red
    la = Image.fromarray(card).convert("LA")
    la.putalpha(0)
    assert (decode_coarse(encode(la, "PNG"), BIG).array == 255).all()


# ---- broken files -------------------------------------------------------------------------------------
JPEG = encode(photo(400, 300), "JPEG", quality=90)


@pytest.mark.parametrize("data, reason", [
    (b"", "empty_file"),
    (JPEG[: len(JPEG) // 2], "truncated_image"),
    (JPEG[:-2], "truncated_image"),  # only the EOI marker missing
    (encode(photo(400, 300), "PNG")[:3000], "truncated_image"),
    (JPEG[:80], "truncated_image"),  # cut inside the header
    (b"GIF89a" + b"\0" * 4, "corrupt_image"),
    (b"%PDF-1.4 not an image", "unreadable_image"),
    (encode(np.zeros((2, 500, 3), np.uint8), "PNG"), "extreme_aspect_ratio"),
])
def test_unusable_bytes_raise_a_reason(data, reason):
    with pytest.raises(DecodeError) as e:
        decode_coarse(data, BUDGET)
    assert e.value.reason == reason, str(e.value)
    if reason != "extreme_aspect_ratio":  # a full decode has no model to please: only the views check it
        with pytest.raises(DecodeError):
            decode_full(data)
    else:
        full, info = decode_full(data)
        with pytest.raises(DecodeError, match="aspect ratio"):
            coarse_from_full(full, info, BUDGET)


def test_trailing_data_after_the_jpeg_is_fine():
    # motion photos append a video after the JPEG's EOI: the image itself is complete
    assert decode_coarse(JPEG + b"\0ftypmp42" + bytes(200_000), BUDGET).size == (400, 300)


def test_bomb_headers_are_rejected_before_any_pixel_is_decoded(monkeypatch):
    png, jpeg = png_header_only(20_000, 10_000), jpeg_header_claiming(20_000, 10_000)
    assert len(png) < 100 and 20_000 * 10_000 > 2 * Image.MAX_IMAGE_PIXELS
    limit_before = Image.MAX_IMAGE_PIXELS

    # spies (not stand-ins): any pixel decode of a bomb would be a failure
    def no_decode(*a, **k):
        raise AssertionError("pixels decoded for a decompression bomb")
    with monkeypatch.context() as m:
        m.setattr(simplejpeg, "decode_jpeg", no_decode)
        m.setattr(Image.Image, "load", no_decode)
        for data in (png, jpeg):
            with pytest.raises(DecodeError) as e:
                decode_coarse(data, BUDGET)
            assert e.value.reason == "decompression_bomb" and "20000x10000" in str(e.value)
    assert Image.MAX_IMAGE_PIXELS == limit_before  # Pillow's global is restored


def test_bomb_limit_is_configurable():
    small = encode(photo(400, 300), "JPEG")
    with pytest.raises(DecodeError, match="over the decompression-bomb limit of 100000"):
        decode_coarse(small, BUDGET, max_image_pixels=100_000)
    # above Pillow's default: the header passes, and the (fake) data fails to decode instead of crashing
    with pytest.raises(DecodeError) as e:
        decode_coarse(jpeg_header_claiming(20_000, 10_000), BUDGET, max_image_pixels=300_000_000)
    assert e.value.reason in ("truncated_image", "corrupt_image")
    stage = DecodeStage(max_image_pixels=100_000)
    row = make_row(id="s/a", image_path=None, image_bytes=small, question="q?", answer="a", source="s")
    res = stage.process(pa.Table.from_pylist([row]))
    assert res.rejected[0]["reason"] == "decompression_bomb" and "s/a" == res.rejected[0]["id"]


def test_missing_file_and_missing_path_are_rejects(tmp_path):
    rows = [make_row(id="s/gone", image_path=str(tmp_path / "gone.jpg"), question="q?", answer="a", source="s"),
            make_row(id="s/dir", image_path=str(tmp_path), question="q?", answer="a", source="s")]
    res = DecodeStage().process(pa.Table.from_pylist(rows))
    assert [(r["id"], r["reason"]) for r in res.rejected] == [("s/gone", "image_missing"),
                                                              ("s/dir", "image_unreadable")]
    assert "gone.jpg" in res.rejected[0]["detail"]


# ---- decode once, pHash, crop path --------------------------------------------------------------------
def test_decode_stage_decodes_each_jpeg_once_and_scaled(monkeypatch, tmp_path):
    calls = []
    real = simplejpeg.decode_jpeg

    def spy(data, **kw):  # wraps the real decoder: records what was asked and what came back
        out = real(data, **kw)
        calls.append((kw.get("min_width"), out.shape))
        return out
    monkeypatch.setattr(simplejpeg, "decode_jpeg", spy)
    rows = []
    for i in range(3):
        p = tmp_path / f"{i}.jpg"
        p.write_bytes(encode(photo(2000, 1500, seed=i), "JPEG", orientation=6 if i else 1))
        rows.append(make_row(id=f"s/{i}", image_path=str(p), question="q?", answer="a", source="s",
                             boxes=[BoxRecord(10, 10, 60, 60)]))
    kept = DecodeStage().process(pa.Table.from_pylist(rows)).kept.to_pylist()
    assert len(kept) == 3 and len(calls) == 3
    for _, shape in calls:  # DCT-scaled: never the 2000x1500 full resolution
        assert shape[0] * shape[1] < 2000 * 1500 / 2
    assert kept[1]["width"] == 1500 and kept[1]["vision_tokens_1280"] <= 1280


def test_phash_hex_is_imagehash_phash():
    for name in ("signicade.JPG", "desktop.webp", "doll.JPG"):
        view = decode_coarse((EXAMPLES / "vstar" / name).read_bytes(), BUDGET)
        assert imagehash.hex_to_hash(phash_hex(view.array)) - imagehash.phash(view.to_pil()) <= 2


def test_crop_path_reuses_one_full_decode():
    data = encode(photo(2000, 1500, seed=3), "JPEG", orientation=8, quality=92)
    full, info = decode_full(data)
    assert full.shape == (1500, 2000, 3) and info.size == (1500, 2000)  # stored frame, displayed size
    coarse = coarse_from_full(full, info, BUDGET)
    assert mad(coarse.array, decode_coarse(data, BUDGET).array) < 2.0
    box = Box(300, 900, 700, 1200)
    ref_full = Image.fromarray(pillow_reference(data))
    ref_crop = ref_full.crop(box.integer(ref_full.size))
    ref = np.asarray(ref_crop.resize(resized_size(ref_crop.size, BUDGET), Image.Resampling.BICUBIC))
    assert mad(crop_from_full(full, info, box, BUDGET), ref) < 2.0


def test_orient_is_exif_transpose_for_every_orientation():
    a = photo(60, 40)
    ops = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
           5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
           8: Image.Transpose.ROTATE_90}
    for o, op in ops.items():
        assert np.array_equal(imageio.orient(a, o), np.asarray(Image.fromarray(a).transpose(op))), o
