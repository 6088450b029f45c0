"""Fast, careful image decoding: decode once, resize the SMALL image, EXIF-transpose the small image.

JPEGs take the fast path (simplejpeg DCT-scaled decode + libvips resize); every other format, odd
mode (CMYK, 16-bit, palette+alpha) or failure of the fast path goes through Pillow.

>>> data = open("examples/vstar/signicade.JPG", "rb").read()
>>> view = decode_coarse(data, max_pixels=1280 * 28 * 28)
>>> view.size, view.array.shape
((4240, 2700), (784, 1232, 3))
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from ergo_data.boxes import Box, Size, rotate_box_with_exif
from ergo_data.vision import MAX_ASPECT_RATIO, resized_size

JPEG_SOI = b"\xff\xd8"
_INVERSE_ORIENTATION = {1: 1, 2: 2, 3: 3, 4: 4, 5: 5, 6: 8, 7: 7, 8: 6}


class DecodeError(ValueError):
    """An image that cannot be used; ``reason`` is a short code for rejects."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


@dataclass
class ImageInfo:
    format: str  # Pillow's format name: JPEG, MPO, PNG, WEBP, ...
    stored_size: Size  # raw pixel size before EXIF orientation
    orientation: int  # EXIF orientation 1..8 (1 if absent)
    mode: str
    n_frames: int

    @property
    def size(self) -> Size:
        """Size as displayed (after EXIF orientation)."""
        w, h = self.stored_size
        return (h, w) if self.orientation in (5, 6, 7, 8) else (w, h)


@dataclass
class CoarseView:
    array: np.ndarray  # HxWx3 uint8 RGB at the budget, displayed orientation
    size: Size  # original displayed (width, height)
    info: ImageInfo

    def to_pil(self) -> Image.Image:
        return Image.fromarray(self.array, "RGB")


def read_info(data: bytes, max_image_pixels: int | None = None) -> ImageInfo:
    """Header only (no pixel decode). Raises DecodeError for empty, unknown or bomb-sized images."""
    if not data:
        raise DecodeError("empty_file", "zero-byte file")
    limit = max_image_pixels if max_image_pixels is not None else 2 * (Image.MAX_IMAGE_PIXELS or 0)
    try:
        with Image.open(io.BytesIO(data)) as im:
            w, h = im.size
            if limit and w * h > limit:
                raise DecodeError("decompression_bomb", f"{w}x{h} = {w * h} pixels exceeds the limit of {limit}")
            try:
                orientation = int(im.getexif().get(0x0112, 1) or 1)
            except Exception:
                orientation = 1
            if orientation not in range(1, 9):
                orientation = 1
            return ImageInfo(im.format or "?", (w, h), orientation, im.mode, getattr(im, "n_frames", 1))
    except DecodeError:
        raise
    except Image.DecompressionBombError as e:
        raise DecodeError("decompression_bomb", str(e)) from None
    except Exception as e:  # UnidentifiedImageError, SyntaxError from plugins, struct errors...
        raise DecodeError("unreadable_image", f"cannot identify image: {type(e).__name__}: {e}") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB (16-bit scaled down, alpha composited on white)."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        arr = np.asarray(im, dtype=np.int64)
        peak = 65535 if im.mode.startswith("I;16") or arr.max(initial=0) > 255 else 255
        arr = np.clip(arr * 255 // max(peak, 1), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, "L").convert("RGB")
    if im.mode == "F":
        arr = np.asarray(im, dtype=np.float32)
        return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = im.convert("RGBA")
        bg = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(bg, rgba).convert("RGB")
    return im.convert("RGB") if im.mode != "RGB" else im


def _vips_resize(arr: np.ndarray, size: Size) -> np.ndarray:
    import pyvips

    h, w = arr.shape[:2]
    if (w, h) == size:
        return arr
    img = pyvips.Image.new_from_memory(np.ascontiguousarray(arr).data, w, h, arr.shape[2], "uchar")
    out = img.resize(size[0] / w, vscale=size[1] / h, kernel="lanczos3")
    res = np.ndarray(buffer=out.write_to_memory(), dtype=np.uint8, shape=(out.height, out.width, out.bands))
    if res.shape[:2] != (size[1], size[0]):  # vips rounds; pad/crop the last row/col if needed
        res = np.asarray(Image.fromarray(res).resize(size, Image.Resampling.BICUBIC))
    return res


def _orient(arr: np.ndarray, orientation: int) -> np.ndarray:
    """Apply EXIF ``orientation`` to a (small) HxWxC array."""
    ops = {
        1: lambda a: a, 2: lambda a: a[:, ::-1], 3: lambda a: a[::-1, ::-1], 4: lambda a: a[::-1],
        5: lambda a: a.transpose(1, 0, 2), 6: lambda a: np.rot90(a, -1), 7: lambda a: np.rot90(a, 1)[::-1],
        8: lambda a: np.rot90(a, 1),
    }
    return np.ascontiguousarray(ops[orientation](arr))


def _stored_target(info: ImageInfo, displayed_target: Size) -> Size:
    tw, th = displayed_target
    return (th, tw) if info.orientation in (5, 6, 7, 8) else (tw, th)


def _jpeg_fast(data: bytes, info: ImageInfo, min_size: Size) -> np.ndarray | None:
    """DCT-scaled decode of a plain 8-bit JPEG to at least ``min_size`` (stored frame); None if unsuitable."""
    if info.format not in ("JPEG", "MPO") or info.mode not in ("RGB", "L"):
        return None
    import simplejpeg

    try:
        return simplejpeg.decode_jpeg(data, colorspace="RGB", min_width=min_size[0], min_height=min_size[1],
                                      strict=True)
    except ValueError as e:
        raise DecodeError("corrupt_image", f"JPEG decode failed: {e}") from None


def _pillow_full(data: bytes, draft: Size | None = None) -> Image.Image:
    try:
        im = Image.open(io.BytesIO(data))
        if im.format == "JPEG" and draft is not None:
            im.draft("RGB", draft)
        im.seek(0)
        im.load()
        return im
    except Image.DecompressionBombError as e:
        raise DecodeError("decompression_bomb", str(e)) from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:
        raise DecodeError("corrupt_image", f"decode failed: {type(e).__name__}: {e}") from None


def check_complete(data: bytes, info: ImageInfo) -> None:
    """Reject truncated JPEGs (no EOI marker near the end): libjpeg would pad them with grey silently."""
    if info.format in ("JPEG", "MPO") and b"\xff\xd9" not in data[-65536:]:
        raise DecodeError("truncated_image", "JPEG data ends without an EOI marker (file truncated)")


def decode_coarse(data: bytes, max_pixels: int, max_image_pixels: int | None = None) -> CoarseView:
    """Decode ``data`` once to the RGB view at ``max_pixels`` (Qwen smart_resize), displayed orientation."""
    info = read_info(data, max_image_pixels)
    check_complete(data, info)
    w, h = info.size
    if max(w, h) / max(min(w, h), 1) > MAX_ASPECT_RATIO:
        raise DecodeError("extreme_aspect_ratio", f"{w}x{h}: aspect ratio over {MAX_ASPECT_RATIO} (the model rejects it)")
    target = resized_size(info.size, max_pixels)
    stored_target = _stored_target(info, target)
    arr = _jpeg_fast(data, info, stored_target)
    if arr is not None:
        arr = _orient(_vips_resize(arr, stored_target), info.orientation)
        return CoarseView(arr, info.size, info)
    im = _pillow_full(data, draft=stored_target)
    im = _to_rgb(im)
    if im.size != stored_target:
        im = im.resize(stored_target, Image.Resampling.BICUBIC, reducing_gap=2.0)
    return CoarseView(_orient(np.asarray(im), info.orientation), info.size, info)


def decode_full(data: bytes, max_image_pixels: int | None = None) -> tuple[np.ndarray, ImageInfo]:
    """Full-resolution RGB array in the STORED frame (orient crops, not the whole image)."""
    info = read_info(data, max_image_pixels)
    check_complete(data, info)
    arr = _jpeg_fast(data, info, (0, 0))
    if arr is None:
        arr = np.asarray(_to_rgb(_pillow_full(data)))
    return arr, info


def crop_from_full(full: np.ndarray, info: ImageInfo, box: Box, max_pixels: int) -> np.ndarray:
    """Crop ``box`` (displayed frame) from the stored-frame ``full`` array, orient it, resize to the budget."""
    stored_box = displayed_to_stored(box, info)
    x1, y1, x2, y2 = stored_box.integer(info.stored_size)
    crop = _orient(full[y1:y2, x1:x2], info.orientation)
    target = resized_size((crop.shape[1], crop.shape[0]), max_pixels)
    return _vips_resize(crop, target)


def displayed_to_stored(box: Box, info: ImageInfo) -> Box:
    """Inverse of ``rotate_box_with_exif``: a displayed-frame box on the raw stored pixels."""
    return rotate_box_with_exif(box, info.size, _INVERSE_ORIENTATION[info.orientation])


def open_rgb(data: bytes) -> Image.Image:
    """Full-resolution, EXIF-transposed RGB PIL image (Pillow path; for tools that need a PIL image)."""
    im = _pillow_full(data)
    return _to_rgb(ImageOps.exif_transpose(im) or im)
