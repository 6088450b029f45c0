"""Fast, careful image decoding: decode once, resize the SMALL image, EXIF-orient the small image.

JPEGs (and MPO, whose first frame is a JPEG) take the fast path: a libjpeg-turbo DCT-scaled decode
(simplejpeg) straight to the smallest size that still covers the budget, then a libvips resize and the
EXIF orientation on that small array. Every other format, odd mode (CMYK, 16-bit, palette+alpha, float)
or multi-frame file goes through Pillow (first frame only). Unusable input raises ``DecodeError`` with a
short ``reason`` code (``empty_file``, ``unreadable_image``, ``truncated_image``, ``corrupt_image``,
``decompression_bomb``, ``extreme_aspect_ratio``) and a detail sentence.

>>> data = open("examples/vstar/signicade.JPG", "rb").read()
>>> view = decode_coarse(data, max_pixels=1280 * 28 * 28)
>>> view.size, view.array.shape, len(phash_hex(view.array))
((4240, 2700), (784, 1232, 3), 16)
>>> decode_coarse(b"", 1280 * 28 * 28)
Traceback (most recent call last):
...
ergo_data.core.imageio.DecodeError: zero-byte file

The crop path (rollout, judges) decodes the full resolution once and derives both views from it:

>>> full, info = decode_full(data)
>>> coarse = coarse_from_full(full, info, 1280 * 28 * 28)
>>> crop = crop_from_full(full, info, Box(2193, 1350, 2285, 1482), 1280 * 28 * 28)
>>> coarse.array.shape, crop.shape
((784, 1232, 3), (140, 84, 3))
"""

from __future__ import annotations

import contextlib
import io
import warnings
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
from PIL import Image

from ergo_data.core.boxes import Box, Size, rotate_box_with_exif
from ergo_data.core.errors import ItemError
from ergo_data.core.vision import MAX_ASPECT_RATIO, resized_size

JPEG_FORMATS = ("JPEG", "MPO")  # MPO = several JPEGs back to back; libjpeg stops after the first
_INVERSE_ORIENTATION = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}
_SWAPS_AXES = (5, 6, 7, 8)
_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG\r\n\x1a\n", "PNG"), (b"GIF8", "GIF"), (b"II*\x00", "TIFF"),
          (b"MM\x00*", "TIFF"), (b"BM", "BMP"), (b"RIFF", "RIFF/WEBP"))


class DecodeError(ItemError):
    """An image that cannot be used; ``reason`` is a short code for rejects."""


@dataclass
class ImageInfo:
    format: str  # Pillow's format name: JPEG, MPO, PNG, WEBP, ...
    stored_size: Size  # raw pixel size before EXIF orientation
    orientation: int  # EXIF orientation 1..8 (1 if absent or invalid)
    mode: str  # Pillow mode of the first frame (RGB, L, CMYK, P, I;16, ...)
    n_frames: int

    @property
    def size(self) -> Size:
        """Size as displayed (after EXIF orientation)."""
        w, h = self.stored_size
        return (h, w) if self.orientation in _SWAPS_AXES else (w, h)

    @property
    def fast_path(self) -> bool:
        """Plain 8-bit JPEG: libjpeg-turbo decodes it (scaled) straight to RGB."""
        return self.format in JPEG_FORMATS and self.mode in ("RGB", "L")


@dataclass
class CoarseView:
    array: np.ndarray  # HxWx3 uint8 RGB at the budget, displayed orientation
    size: Size  # original displayed (width, height)
    info: ImageInfo

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.array, "RGB")


# ---- header ------------------------------------------------------------------------------------
def pillow_bomb_limit() -> int | None:
    """Pillow's own decompression-bomb limit: it refuses images over ``2 * Image.MAX_IMAGE_PIXELS``."""
    return 2 * Image.MAX_IMAGE_PIXELS if Image.MAX_IMAGE_PIXELS else None


@contextlib.contextmanager
def _bomb_guard() -> Iterator[None]:
    """Let OUR limit decide (checked on the header, before any pixel): lift Pillow's check, mute its warning.

    Pillow's limit is a module global; it is lifted only for the duration of one open/load (stages run
    single-threaded in their process) and always restored.
    """
    old = Image.MAX_IMAGE_PIXELS
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        Image.MAX_IMAGE_PIXELS = None
        try:
            yield
        finally:
            Image.MAX_IMAGE_PIXELS = old


def _open(data: bytes, max_image_pixels: int | None) -> tuple[Image.Image, ImageInfo]:
    """Parse the header only (no pixels). Raises DecodeError for empty, unknown or bomb-sized images."""
    if not data:
        raise DecodeError("empty_file", "zero-byte file")
    limit = pillow_bomb_limit() if max_image_pixels is None else max_image_pixels
    try:
        with _bomb_guard():
            im = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as e:
        raise DecodeError("decompression_bomb", str(e)) from None
    except Image.UnidentifiedImageError:
        fmt = next((f for magic, f in _MAGIC if data.startswith(magic)), None)
        if fmt:  # the signature is there but Pillow cannot parse the header: cut short or damaged
            raise DecodeError("corrupt_image", f"{fmt} header cannot be parsed ({len(data)} bytes): "
                              "truncated or corrupt") from None
        raise DecodeError("unreadable_image", f"not a known image format ({len(data)} bytes starting "
                          f"{data[:8]!r})") from None
    except Exception as e:  # noqa: BLE001 - plugins raise SyntaxError, struct.error... on broken headers
        raise _decoder_error(e, "image header") from None
    w, h = im.size
    if w <= 0 or h <= 0:
        raise DecodeError("corrupt_image", f"{im.format} header declares an empty {w}x{h} image")
    if limit and w * h > limit:
        raise DecodeError("decompression_bomb", f"{im.format} header declares {w}x{h} = {w * h} pixels, over "
                          f"the decompression-bomb limit of {limit} (decode.max_image_pixels)")
    try:
        orientation = int(im.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block does not make the pixels unusable
        orientation = 1
    if orientation not in range(1, 9):
        orientation = 1
    return im, ImageInfo(im.format or "?", (w, h), orientation, im.mode, getattr(im, "n_frames", 1))


def read_info(data: bytes, max_image_pixels: int | None = None) -> ImageInfo:
    """Header facts (format, stored size, EXIF orientation, mode, frames) without decoding pixels.

    >>> read_info(open("examples/vstar/doll.JPG", "rb").read()).format
    'MPO'
    """
    return _open(data, max_image_pixels)[1]


def _check_aspect(info: ImageInfo) -> None:
    w, h = info.size
    if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
        raise DecodeError("extreme_aspect_ratio", f"{w}x{h}: aspect ratio over {MAX_ASPECT_RATIO} (the model rejects it)")


# ---- pixel decoders ------------------------------------------------------------------------------
def _decoder_error(e: Exception, fmt: str, data: bytes = b"") -> DecodeError:
    text = str(e)
    # libjpeg says "premature end" also when damaged data holds a stray end marker; a file that still
    # ends with its EOI marker was not cut short, it is corrupt
    ends_early = "premature end" in text.lower() or "truncated" in text.lower()
    if ends_early and not (fmt in JPEG_FORMATS and data.rstrip(b"\0").endswith(b"\xff\xd9")):
        return DecodeError("truncated_image", f"{fmt} data ends early (file truncated): {text}")
    return DecodeError("corrupt_image", f"{fmt} decode failed: {type(e).__name__}: {text}")


def _jpeg_decode(data: bytes, min_size: Size) -> np.ndarray:
    """libjpeg-turbo decode, DCT-scaled to the smallest size >= ``min_size`` (stored frame); strict, so
    a truncated or corrupt stream raises instead of coming back padded with grey."""
    import simplejpeg

    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=min_size[0], min_height=min_size[1],
                                      strict=True)
    except ValueError as e:
        raise _decoder_error(e, "JPEG", data) from None


def _pillow_decode(im: Image.Image, info: ImageInfo, draft: Size | None = None) -> np.ndarray:
    """First frame via Pillow, as 8-bit RGB (stored frame); JPEG odd modes use libjpeg's scaled draft."""
    try:
        with _bomb_guard():
            if draft is not None and info.format in JPEG_FORMATS:
                im.draft(None, draft)
            im.seek(0)
            im.load()
            return np.asarray(to_rgb(im))
    except Image.DecompressionBombError as e:
        raise DecodeError("decompression_bomb", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError, IndexError) as e:
        raise _decoder_error(e, info.format) from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB: 16/32-bit integers scaled by their range, alpha composited on white.

    >>> to_rgb(Image.new("I;16", (2, 1), 65535)).getpixel((0, 0))
    (255, 255, 255)
    >>> to_rgb(Image.new("RGBA", (1, 1), (255, 0, 0, 0))).getpixel((0, 0))
    (255, 255, 255)
    """
    if im.mode.startswith("I;16") or im.mode == "I":
        arr = np.asarray(im).astype(np.int64)
        peak = 65535 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        arr = np.clip((arr * 255 + peak // 2) // peak, 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "F":
        arr = np.nan_to_num(np.asarray(im, dtype=np.float32))
        peak = 1.0 if arr.max(initial=0.0) <= 1.0 else 255.0
        return Image.fromarray(np.clip(arr * (255.0 / peak), 0, 255).round().astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return im if im.mode == "RGB" else im.convert("RGB")


# ---- libvips: resize and orient the SMALL array -----------------------------------------------------
def _vips():
    import pyvips

    if not getattr(_vips, "ready", False):
        pyvips.concurrency_set(1)  # one thread per worker process: the executor parallelizes by process
        pyvips.cache_set_max(0)  # never keep references to (large) decoded arrays
        _vips.ready = True
    return pyvips


# EXIF orientation as libvips ops: the rotation (if any) comes first, then flips (cheap copies)
_ORIENT_OPS = {
    1: (), 2: ("fliphor",), 3: ("rot180",), 4: ("flipver",), 5: ("rot90", "fliphor"), 6: ("rot90",),
    7: ("rot90", "flipver"), 8: ("rot270",),
}


def _shrink_axis(img, target: int, vertical: bool):
    """Shrink one axis of a libvips image to ``target`` pixels, antialiased (support scaled with the
    factor, like Pillow's resize): Catmull-Rom vertically, a triangle horizontally (libvips' horizontal
    pass is the slow one; the result stays within 1/255 of Pillow's bicubic on average)."""
    size = img.height if vertical else img.width
    if target == size:
        return img
    return img.reducev(size / target, kernel="cubic") if vertical else img.reduceh(size / target, kernel="linear")


def _resize_orient(arr: np.ndarray, stored_target: Size, orientation: int,
                   region: tuple[int, int, int, int] | None = None) -> np.ndarray:
    """Crop ``region`` (x, y, w, h) of a stored-frame RGB array, resize it to ``stored_target``, apply
    EXIF ``orientation``: one libvips pipeline, one output copy.

    Rows are shrunk first (the fast vertical pass, SIMD in libvips; measured faster here than a box
    pre-shrink, even from full resolution); an image that turns by 90 degrees is turned between the two
    passes, so that its second pass is vertical too and the turn touches fewer pixels. A side
    that must GROW (smart_resize rounds up to multiples of 28: small crops) goes through Pillow's bicubic,
    faster here than libvips' affine and pixel-centre aligned like the naive path.
    """
    vips = _vips()
    arr = np.ascontiguousarray(arr)
    x, y, w, h = region or (0, 0, arr.shape[1], arr.shape[0])
    tw, th = stored_target
    ops = list(_ORIENT_OPS[orientation])
    if tw > w or th > h:
        grown = Image.fromarray(np.ascontiguousarray(arr[y:y + h, x:x + w])).resize((tw, th), Image.Resampling.BICUBIC)
        arr = np.asarray(grown)  # kept referenced until libvips has written its output
        img = vips.Image.new_from_memory(arr.data, tw, th, 3, "uchar")
    else:
        img = vips.Image.new_from_memory(arr.data, arr.shape[1], arr.shape[0], 3, "uchar")
        if region is not None:
            img = img.crop(x, y, w, h)
        img = _shrink_axis(img, th, vertical=True)
        if ops and ops[0] in ("rot90", "rot270"):
            img = getattr(img, ops.pop(0))()
            img = _shrink_axis(img, tw, vertical=True)  # the stored width now runs vertically
        else:
            img = _shrink_axis(img, tw, vertical=False)
    for op in ops:
        img = getattr(img, op)()
    out = np.ndarray(buffer=img.write_to_memory(), dtype=np.uint8, shape=(img.height, img.width, 3))
    expected = _stored((tw, th), orientation)
    if (out.shape[1], out.shape[0]) != expected:
        raise DecodeError("decode_failed", f"libvips produced {out.shape[1]}x{out.shape[0]}, expected {expected}")
    return out


def _stored(size: Size, orientation: int) -> Size:
    return (size[1], size[0]) if orientation in _SWAPS_AXES else size


def orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF ``orientation`` (1..8) to an HxWx3 array, exactly as ``PIL.ImageOps.exif_transpose``."""
    return _resize_orient(arr, (arr.shape[1], arr.shape[0]), orientation)


# ---- public API ---------------------------------------------------------------------------------------
def decode_coarse(data: bytes, max_pixels: int, max_image_pixels: int | None = None) -> CoarseView:
    """Decode ``data`` once to the RGB view at ``max_pixels`` (Qwen smart_resize), displayed orientation.

    No full-resolution pixels are produced on the JPEG path: the decoder scales while decoding.
    """
    im, info = _open(data, max_image_pixels)
    _check_aspect(info)
    stored_target = _stored(resized_size(info.size, max_pixels), info.orientation)
    if info.fast_path:
        arr = _jpeg_decode(data, stored_target)
    else:
        arr = _pillow_decode(im, info, draft=stored_target)
    return CoarseView(_resize_orient(arr, stored_target, info.orientation), info.size, info)


def decode_full(data: bytes, max_image_pixels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Full-resolution RGB array in the STORED frame (orient crops and small views, never this array)."""
    im, info = _open(data, max_image_pixels)
    if info.fast_path:
        return _jpeg_decode(data, (0, 0)), info
    return _pillow_decode(im, info), info


def coarse_from_full(full: np.ndarray, info: ImageInfo, max_pixels: int) -> CoarseView:
    """The view at ``max_pixels`` from an array ``decode_full`` returned (reuse it: no second decode)."""
    _check_aspect(info)
    stored_target = _stored(resized_size(info.size, max_pixels), info.orientation)
    return CoarseView(_resize_orient(full, stored_target, info.orientation), info.size, info)


def crop_from_full(full: np.ndarray, info: ImageInfo, box: Box, max_pixels: int) -> np.ndarray:
    """Crop ``box`` (displayed frame) from the stored-frame ``full`` array, resize it to the budget, orient it.

    Raises ValueError when the crop's aspect ratio is over 200 (widen slivers first, as ``ergo_train.rollout.zoom``).
    """
    x1, y1, x2, y2 = displayed_to_stored(box, info).integer(info.stored_size)
    displayed_crop = _stored((x2 - x1, y2 - y1), info.orientation)
    target = _stored(resized_size(displayed_crop, max_pixels), info.orientation)
    return _resize_orient(full, target, info.orientation, region=(x1, y1, x2 - x1, y2 - y1))


def displayed_to_stored(box: Box, info: ImageInfo) -> Box:
    """Inverse of ``rotate_box_with_exif``: a displayed-frame box on the raw stored pixels."""
    return rotate_box_with_exif(box, info.size, _INVERSE_ORIENTATION[info.orientation])


def phash_hex(array: np.ndarray) -> str:
    """64-bit perceptual hash (imagehash's pHash) of an RGB array, as 16 hex digits.

    imagehash's algorithm (grey, 32x32 Lanczos thumbnail, DCT, median) with the thumbnail made through
    Pillow's reducing gap (box-reduce, then Lanczos): about 3x faster on a budget-sized view, and within
    2 bits of ``imagehash.phash(Image.fromarray(array))`` (equal on 14 of the benchmark's 16 images).
    Compare hashes made the same way: ``dedup`` and ``decontaminate`` thresholds are a few bits.
    """
    import imagehash

    grey = Image.fromarray(array).convert("L").resize((32, 32), Image.Resampling.LANCZOS, reducing_gap=2.0)
    return str(imagehash.phash(grey))


def open_rgb(data: bytes, max_image_pixels: int | None = None) -> Image.Image:
    """Full-resolution, EXIF-transposed RGB PIL image (first frame), for tools that need a PIL image."""
    full, info = decode_full(data, max_image_pixels)
    return Image.fromarray(orient(full, info.orientation), "RGB")

