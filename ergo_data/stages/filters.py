"""Per-row filters over boxes: ``box_check``, ``visibility`` (short side at the budget), ``area``.

>>> import pyarrow as pa
>>> row = {"id": "s/a", "source": "s", "width": 100, "height": 100, "boxes": [
...     {"x1": 10.0, "y1": 10.0, "x2": 200.0, "y2": 20.0, "label": "", "source": "annotation"}]}
>>> BoxCheckStage().process(pa.Table.from_pylist([row])).rejected[0]["reason"]
'box_outside_image'
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import Field

from ergo_data.core.boxes import Box, BoxError
from ergo_data.core.errors import RecipeError
from ergo_data.core.schema import BOX_SOURCES
from ergo_data.core.vision import BUDGETS, box_short_side_at_budget, derived_columns, zoom_gain
from ergo_data.pipeline.contract import Params, Reject, RowStage
from ergo_data.pipeline.registry import stage_registry

MIN_ZOOM_GAIN = 1.5


def row_boxes(row: dict[str, Any]) -> list[Box]:
    return [Box.from_record(b) for b in row.get("boxes") or []]


def union_region(row: dict[str, Any]) -> Box | Reject:
    """The one region ERGO zooms on (union of the boxes), or a Reject if it cannot be measured."""
    boxes = row_boxes(row)
    if not boxes or not row.get("width") or not row.get("height"):
        return Reject(row, "not_measurable", "needs decoded width/height and at least one box")
    return Box.union(boxes)


def refresh_derived(row: dict[str, Any]) -> dict[str, Any]:
    """Recompute the derived columns after a stage changed ``boxes`` or the image size."""
    size = (row["width"], row["height"]) if row.get("width") and row.get("height") else None
    row.update(derived_columns(size, row_boxes(row)))
    return row


class BoxCheckParams(Params):
    require_box: bool = True  # ERGO needs a region: a sample without boxes is rejected
    tolerance_px: float = 1.0  # boxes overshooting the image by at most this are clamped, not rejected
    min_side_px: float = 1.0  # on the original image


@stage_registry.register("box_check")
class BoxCheckStage(RowStage):
    """Boxes must be finite, non-degenerate, of a known provenance, and inside the image."""

    Params = BoxCheckParams

    def run(self, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any] | Reject]:
        for row in rows:
            yield self.check(row)

    def check(self, row: dict[str, Any]) -> dict[str, Any] | Reject:
        records = row.get("boxes") or []
        if not records:
            return Reject(row, "no_box", "sample has no box") if self.params.require_box else row
        w, h = row.get("width"), row.get("height")
        if not w or not h:
            return Reject(row, "not_decoded", "width/height unknown: put `decode` before `box_check`")
        tol = self.params.tolerance_px
        fixed = []
        for i, rec in enumerate(records):
            coords = [rec.get(k) for k in ("x1", "y1", "x2", "y2")]
            if not all(isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) for c in coords):
                return Reject(row, "box_not_finite", f"boxes[{i}] = {coords} has non-finite coordinates")
            x1, y1, x2, y2 = coords
            if not (x1 < x2 and y1 < y2):
                return Reject(row, "box_degenerate", f"boxes[{i}] = {coords} has zero or negative size")
            if x1 < -tol or y1 < -tol or x2 > w + tol or y2 > h + tol:
                return Reject(row, "box_outside_image", f"boxes[{i}] = {coords} is outside the {w}x{h} image")
            if rec.get("source") not in BOX_SOURCES:
                return Reject(row, "box_bad_source", f"boxes[{i}].source {rec.get('source')!r} not in {BOX_SOURCES}")
            try:
                box = Box(x1, y1, x2, y2).clamp((w, h))
            except BoxError as e:
                return Reject(row, "box_outside_image", f"boxes[{i}]: {e}")
            if min(box.width, box.height) < self.params.min_side_px:
                return Reject(row, "box_too_small", f"boxes[{i}] = {coords} is under {self.params.min_side_px} px")
            fixed.append({**rec, "x1": box.x1, "y1": box.y1, "x2": box.x2, "y2": box.y2})
        out = dict(row, boxes=fixed)
        return refresh_derived(out) if fixed != records else out


class RegionFilter(RowStage):
    """A filter on the union region of a sample's boxes: subclasses implement ``verdict``."""

    def verdict(self, row: dict[str, Any], region: Box) -> Reject | None:  # pragma: no cover - abstract
        raise NotImplementedError

    def run(self, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any] | Reject]:
        for row in rows:
            region = union_region(row)
            yield region if isinstance(region, Reject) else (self.verdict(row, region) or row)


class VisibilityParams(Params):
    max_pixels: int = BUDGETS[1280]  # the coarse budget the model sees (N * 28 * 28)
    min_side_px: float = 8.0  # below this the region may not even be findable
    max_side_px: float = 56.0  # above this it is legible without zooming
    # the region's zoomed crop must have at least this many times its linear resolution in the coarse view
    # (core.vision.zoom_gain); 0 turns the check off. Default: docs/generation.md, "Zoom gain".
    min_zoom_gain: float = Field(MIN_ZOOM_GAIN, ge=0)


@stage_registry.register("visibility")
class VisibilityStage(RegionFilter):
    """Keep samples whose union box short side at the budget lies in [min_side_px, max_side_px] and whose
    zoomed crop has at least ``min_zoom_gain`` times the region's resolution in the coarse view.

    >>> import pyarrow as pa
    >>> car = {"x1": 100.0, "y1": 200.0, "x2": 200.0, "y2": 254.0, "label": "car", "source": "annotation"}
    >>> rows = [{"id": f"s/{w}", "source": "s", "width": w, "height": h, "boxes": [car]}
    ...         for w, h in [(1764, 430), (4000, 2250)]]  # a mosaic strip that fits the budget; a drone photo
    >>> res = VisibilityStage().process(pa.Table.from_pylist(rows))
    >>> res.kept.column("id").to_pylist(), res.rejected[0]["reason"]
    (['s/4000'], 'zoom_adds_no_detail')
    """

    Params = VisibilityParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        if self.params.min_side_px > self.params.max_side_px:
            raise RecipeError("stage 'visibility': min_side_px must be <= max_side_px")

    def verdict(self, row: dict[str, Any], region: Box) -> Reject | None:
        p = self.params
        side = box_short_side_at_budget(region, (row["width"], row["height"]), p.max_pixels)
        if side < p.min_side_px:
            return Reject(row, "region_too_small", f"box short side {side:.1f} px at max_pixels={p.max_pixels} "
                          f"< {p.min_side_px} px: probably not findable in the coarse view")
        if side > p.max_side_px:
            return Reject(row, "region_legible_without_zoom", f"box short side {side:.1f} px at max_pixels="
                          f"{p.max_pixels} > {p.max_side_px} px: answerable without zooming")
        if p.min_zoom_gain:
            gain = zoom_gain(region, (row["width"], row["height"]), p.max_pixels)
            if gain is not None and gain < p.min_zoom_gain:
                return Reject(row, "zoom_adds_no_detail", f"zoom gain {gain:.2f} < {p.min_zoom_gain:g}: the "
                              f"{row['width']}x{row['height']} image is seen at max_pixels={p.max_pixels} with "
                              f"{1 / gain:.0%} of its crop's linear resolution: zooming shows little new")
        return None


class AreaParams(Params):
    min_frac: float = 0.0
    max_frac: float = 0.6  # gamma of r_box: a region above this earns no box reward


@stage_registry.register("area")
class AreaStage(RegionFilter):
    """Keep samples whose union box covers a fraction of the image in [min_frac, max_frac]."""

    Params = AreaParams

    def verdict(self, row: dict[str, Any], region: Box) -> Reject | None:
        p = self.params
        frac = region.area / (row["width"] * row["height"])
        if frac < p.min_frac:
            return Reject(row, "box_area_too_small", f"box area fraction {frac:.5f} < {p.min_frac}")
        if frac > p.max_frac:
            return Reject(row, "box_area_too_large", f"box area fraction {frac:.3f} > {p.max_frac}")
        return None
