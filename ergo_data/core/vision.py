"""Qwen2.5-VL vision geometry: smart_resize, vision-token counts, a box's size at a pixel budget.

>>> smart_resize(3024, 4032, max_pixels=1280 * 28 * 28)
(840, 1148)
>>> vision_tokens((4032, 3024), max_pixels=1280 * 28 * 28)
1230
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from ergo_data.core.boxes import Box, Size

PATCH = 28  # pixels per vision token side after 2x2 merging (14 px patches, merge 2)
MIN_PIXELS = 4 * PATCH * PATCH
BUDGETS = {640: 640 * PATCH * PATCH, 1280: 1280 * PATCH * PATCH}  # ERGO's token budgets -> max_pixels
MAX_ASPECT_RATIO = 200


def budget_pixels(tokens: int) -> int:
    """max_pixels for a budget of ``tokens`` vision tokens (``N * 28 * 28``)."""
    return int(tokens) * PATCH * PATCH


def smart_resize(
    height: int, width: int, factor: int = PATCH, min_pixels: int = MIN_PIXELS, max_pixels: int = 1280 * PATCH * PATCH
) -> tuple[int, int]:
    """Return ``(height, width)`` exactly as Qwen2-VL / Qwen2.5-VL's image processor resizes.

    Each side is rounded to a multiple of ``factor``; the image is scaled down (floor) if the area
    exceeds ``max_pixels``, up (ceil) if below ``min_pixels``. Raises ValueError for aspect ratio > 200.
    """
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"absolute aspect ratio must be smaller than {MAX_ASPECT_RATIO}, got {max(height, width) / min(height, width)}"
        )
    h_bar = round(height / factor) * factor
    w_bar = round(width / factor) * factor
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = max(factor, math.floor(height / beta / factor) * factor)
        w_bar = max(factor, math.floor(width / beta / factor) * factor)
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def resized_size(size: Size, max_pixels: int, min_pixels: int = MIN_PIXELS) -> Size:
    """``(width, height)`` of the image the model sees at ``max_pixels``."""
    w, h = size
    rh, rw = smart_resize(h, w, min_pixels=min_pixels, max_pixels=max_pixels)
    return (rw, rh)


def vision_tokens(size: Size, max_pixels: int, min_pixels: int = MIN_PIXELS) -> int:
    """Vision tokens of an image of ``size`` at ``max_pixels``: ``h' * w' / 28**2``."""
    rw, rh = resized_size(size, max_pixels, min_pixels)
    return rw * rh // (PATCH * PATCH)


def box_size_at_budget(box: Box, size: Size, max_pixels: int) -> tuple[float, float]:
    """``(width, height)`` in pixels that ``box`` occupies on the image resized to ``max_pixels``."""
    rw, rh = resized_size(size, max_pixels)
    return (box.width * rw / size[0], box.height * rh / size[1])


def box_short_side_at_budget(box: Box, size: Size, max_pixels: int) -> float:
    """``min((x2-x1) * w'/w, (y2-y1) * h'/h)``: below one patch (28 px) the region needs zoom.

    >>> round(box_short_side_at_budget(Box(2193, 1350, 2285, 1482), (4240, 2700), 1280 * 28 * 28), 1)
    26.7
    """
    return min(box_size_at_budget(box, size, max_pixels))


def crop_vision_tokens(box: Box, size: Size, max_pixels: int) -> int | None:
    """Tokens of the full-resolution crop of ``box``, resized under the same budget (capped by it).

    None when the crop's aspect ratio exceeds what the model accepts (> 200).
    """
    x1, y1, x2, y2 = box.integer(size)
    try:
        return vision_tokens((x2 - x1, y2 - y1), max_pixels)
    except ValueError:
        return None


def zoom_gain(box: Box, size: Size, max_pixels: int) -> float | None:
    """How many times more linear resolution the region has in its zoomed crop than in the coarse view.

    The coarse view is the whole image resized under ``max_pixels``; the zoom is the full-resolution crop
    of ``box``, resized under the same budget, and never counted above its native pixels (upsampling a
    small crop adds no detail). Per axis ``min(crop scale, 1) / coarse scale``; the smaller axis counts.
    About 1 when the image already fits the budget: zooming then shows nothing new. None when the crop's
    aspect ratio exceeds what the model accepts.

    >>> round(zoom_gain(Box(2110, 1395, 2228, 1600), (4240, 2832), 1280 * 28 * 28), 2)  # the doll
    3.33
    >>> round(zoom_gain(Box(100, 200, 134, 218), (1764, 430), 1280 * 28 * 28), 2)  # a car on a mosaic strip
    1.0
    """
    rw, rh = resized_size(size, max_pixels)
    x1, y1, x2, y2 = box.integer(size)
    cw, ch = x2 - x1, y2 - y1
    try:
        zw, zh = resized_size((cw, ch), max_pixels)
    except ValueError:
        return None
    gain_x = min(zw / cw, 1.0) / (rw / size[0])
    gain_y = min(zh / ch, 1.0) / (rh / size[1])
    return min(gain_x, gain_y)


def derived_columns(size: Size | None, boxes: Iterable[Box]) -> dict[str, float | int | None]:
    """The derived columns (docs/design.md: the sample record) of an image of ``size`` and its boxes' union.

    >>> d = derived_columns((4240, 2700), [Box(2193, 1350, 2285, 1482)])
    >>> d["vision_tokens_1280"], round(d["box_short_side_1280"], 1)
    (1232, 26.7)
    """
    boxes = list(boxes)
    out: dict[str, float | int | None] = dict.fromkeys(
        ["box_area_frac", "box_short_side_640", "box_short_side_1280", "vision_tokens_full",
         "vision_tokens_640", "vision_tokens_1280", "crop_vision_tokens_1280"]
    )
    if size is None:
        return out
    big = max(size[0] * size[1], MIN_PIXELS)
    out["vision_tokens_full"] = vision_tokens(size, max_pixels=max(big * 2, BUDGETS[1280]))
    out["vision_tokens_640"] = vision_tokens(size, BUDGETS[640])
    out["vision_tokens_1280"] = vision_tokens(size, BUDGETS[1280])
    if boxes:
        u = Box.union(boxes)
        out["box_area_frac"] = u.area / (size[0] * size[1])
        out["box_short_side_640"] = box_short_side_at_budget(u, size, BUDGETS[640])
        out["box_short_side_1280"] = box_short_side_at_budget(u, size, BUDGETS[1280])
        out["crop_vision_tokens_1280"] = crop_vision_tokens(u, size, BUDGETS[1280])
    return out
