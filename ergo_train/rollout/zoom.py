"""Coarse-to-fine geometry shared by the rollout (training), evaluation and judges.

Turn 1 shows the image smart-resized to the budget; the model's zoom box is in pixels of THAT image and
is mapped back to the original through ``Box.from_model``, clamped, cropped at full resolution and
resized to the same budget. A malformed zoom still yields an image (the whole coarse view) and an error.

>>> from PIL import Image
>>> img = Image.new("RGB", (4000, 3000))
>>> view, size = coarse_view(img, 1280 * 28 * 28)
>>> size
(1148, 840)
>>> z = zoom_crop(img, [100, 100, 200, 150], size, 1280 * 28 * 28)
>>> z.ok, z.box.as_tuple()[:2], z.image.size
(True, (348.4320557491289, 357.14285714285717), (336, 168))
>>> zoom_crop(img, [5, 5, 1, 1], size, 1280 * 28 * 28).error
'model box [5.0, 5.0, 1.0, 1.0] is degenerate or inverted'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image

from ergo_data.core.boxes import Box, BoxError, Size
from ergo_data.core.imageio import ImageSource
from ergo_data.core.vision import (
    MAX_ASPECT_RATIO,
    PATCH,
    box_short_side_at_budget,
    resized_size,
    vision_tokens,
)

DEFAULT_BUDGET_TOKENS = 1280
# A zoom region must be at least this many 28-px patches on its short side in the coarse view: smaller, the
# model could not have seen what it zoomed on (r_box pays nothing for it; the rollout flags it).
MIN_REGION_PATCHES = 1.0


@dataclass
class ZoomResult:
    image: Image.Image  # what the model sees in turn 2
    box: Box | None  # the crop on the original image (None when the zoom was malformed)
    ok: bool  # the zoom was well-formed (4 finite numbers, something left inside the image)
    error: str | None
    vision_tokens: int  # tokens of `image` at the budget
    area_frac: float  # crop area / image area (1.0 for the fallback view)
    requested: tuple[float, float, float, float] | None = None  # the box as the model wrote it (seen image)
    too_small: bool = False  # the crop's short side at the budget is under one patch: the model saw nothing of it


def coarse_view(image: Image.Image | ImageSource, max_pixels: int) -> tuple[Image.Image, Size]:
    """The turn-1 view: ``image`` resized to Qwen's smart_resize at ``max_pixels``; returns (view, size).

    An ``ImageSource`` (file bytes) gives its DCT-scaled view, decoded at the smallest scale that covers it:
    training, SFT episodes and evaluation all pass one, so every turn 1 sees the same pixels."""
    size = resized_size(image.size, max_pixels)
    if isinstance(image, ImageSource):
        return image.coarse(max_pixels), size
    view = image if image.size == size else image.resize(size, Image.Resampling.BICUBIC, reducing_gap=3.0)
    return view, size


def crop_at_budget(image: Image.Image | ImageSource, box: Box, max_pixels: int) -> Image.Image:
    """Crop ``box`` from the full-resolution ``image`` and resize the crop under ``max_pixels`` (an
    ``ImageSource`` decodes only the rows it needs; the same pixels)."""
    if isinstance(image, ImageSource):
        return image.crop(fit_aspect(box, image.size), max_pixels)
    crop = image.crop(fit_aspect(box, image.size).integer(image.size))
    size = resized_size(crop.size, max_pixels)
    return crop if crop.size == size else crop.resize(size, Image.Resampling.BICUBIC)


def fit_aspect(box: Box, size: Size, max_ratio: float = MAX_ASPECT_RATIO / 2) -> Box:
    """Widen the short side of a sliver box (around its centre, inside the image) so the model accepts it.

    >>> fit_aspect(Box(0, 0, 1000, 1), (2000, 2000)).as_tuple()
    (0.0, 0.0, 1000.0, 10.0)
    """
    need_w, need_h = box.height / max_ratio, box.width / max_ratio
    if box.width >= need_w and box.height >= need_h:
        return box
    cx, cy = box.center
    w, h = max(box.width, need_w), max(box.height, need_h)
    x1 = min(max(cx - w / 2, 0.0), max(size[0] - w, 0.0))
    y1 = min(max(cy - h / 2, 0.0), max(size[1] - h, 0.0))
    return Box(x1, y1, min(x1 + w, size[0]), min(y1 + h, size[1]))


def zoom_crop(image: Image.Image | ImageSource, xyxy: Sequence[Any] | None, seen_size: Size, max_pixels: int) -> ZoomResult:
    """Map a zoom box from the coarse view (``seen_size``) to the original, crop at full res, resize.

    Malformed boxes (not 4 finite numbers, inverted, wholly outside) return the whole coarse view with
    ``ok=False`` and an error text: the tool must always return an image (docs/trl-pitfalls.md, 2).
    """
    try:
        if xyxy is None:
            raise BoxError("no zoom box")
        box = Box.from_model(list(xyxy), resized_size=seen_size, original_size=image.size)
    except (BoxError, TypeError, ValueError) as e:
        view, _ = coarse_view(image, max_pixels)
        return ZoomResult(view, None, False, str(e), vision_tokens(image.size, max_pixels), 1.0)
    crop = crop_at_budget(image, box, max_pixels)
    frac = box.area / (image.size[0] * image.size[1])
    small = box_short_side_at_budget(box, image.size, max_pixels) < MIN_REGION_PATCHES * PATCH
    return ZoomResult(crop, box, True, None, vision_tokens(crop.size, max_pixels), frac,
                      tuple(float(v) for v in xyxy), small)


def budget_max_pixels(tokens: int = DEFAULT_BUDGET_TOKENS) -> int:
    return int(tokens) * 28 * 28


def region_of(row: Mapping[str, Any]) -> Box:
    """The union of a sample's ``boxes`` (ERGO zooms once); BoxError if it has none."""
    boxes = row.get("boxes") or []
    if not boxes:
        raise BoxError("the sample has no boxes")
    return Box.union(Box.from_record(b) for b in boxes)
