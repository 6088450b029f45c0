"""The ONE canonical box: absolute pixels, xyxy, on the original (EXIF-transposed) image.

Every other convention exists only at a boundary, through a named converter here:

>>> b = Box.from_vstar([10, 20, 30, 40])
>>> b
Box(x1=10.0, y1=20.0, x2=40.0, y2=60.0)
>>> b.to_coco()
[10.0, 20.0, 30.0, 40.0]
>>> Box.from_model([5, 10, 20, 30], resized_size=(100, 100), original_size=(200, 200))
Box(x1=10.0, y1=20.0, x2=40.0, y2=60.0)

Sizes are always ``(width, height)`` tuples.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ergo_data.core.errors import ErgoError

Size = tuple[int, int]  # (width, height)


class BoxError(ErgoError, ValueError):
    """A box that cannot exist: non-finite, degenerate, inverted, rotated, or outside the image."""


def _finite(values: Sequence[Any], what: str) -> list[float]:
    if len(values) != 4:
        raise BoxError(f"{what}: expected 4 numbers, got {len(values)}: {list(values)!r}")
    out = []
    for v in values:
        if isinstance(v, bool):
            raise BoxError(f"{what}: {v!r} is not a number")
        try:
            f = float(v)
        except (TypeError, ValueError):
            raise BoxError(f"{what}: {v!r} is not a number") from None
        if not math.isfinite(f):
            raise BoxError(f"{what}: non-finite coordinate {v!r}")
        out.append(f)
    return out


@dataclass(frozen=True, slots=True)
class Box:
    """Axis-aligned box in absolute pixels of the original image, x right, y down, x1 < x2, y1 < y2.

    >>> Box(0, 0, 10, 5).area
    50.0
    """

    x1: float
    y1: float
    x2: float
    y2: float

    def __post_init__(self) -> None:
        coords = _finite([self.x1, self.y1, self.x2, self.y2], "Box")
        for name, value in zip(("x1", "y1", "x2", "y2"), coords):
            object.__setattr__(self, name, value)
        if not (self.x1 < self.x2 and self.y1 < self.y2):
            raise BoxError(f"degenerate or inverted box {coords} (need x1 < x2 and y1 < y2)")

    # ---- geometry -------------------------------------------------------------------------
    @property
    def width(self) -> float:
        return self.x2 - self.x1

    @property
    def height(self) -> float:
        return self.y2 - self.y1

    @property
    def area(self) -> float:
        return self.width * self.height

    @property
    def center(self) -> tuple[float, float]:
        return ((self.x1 + self.x2) / 2.0, (self.y1 + self.y2) / 2.0)

    def as_tuple(self) -> tuple[float, float, float, float]:
        return (self.x1, self.y1, self.x2, self.y2)

    def intersection_area(self, other: Box) -> float:
        w = min(self.x2, other.x2) - max(self.x1, other.x1)
        h = min(self.y2, other.y2) - max(self.y1, other.y1)
        return w * h if w > 0 and h > 0 else 0.0

    def iou(self, other: Box) -> float:
        """Intersection over union, in [0, 1].

        >>> Box(0, 0, 2, 2).iou(Box(1, 0, 3, 2))
        0.3333333333333333
        """
        inter = self.intersection_area(other)
        return inter / (self.area + other.area - inter)

    @staticmethod
    def union(boxes: Iterable[Box]) -> Box:
        """The smallest box containing all ``boxes``: the one region ERGO would zoom on.

        >>> Box.union([Box(0, 0, 1, 1), Box(5, 5, 6, 7)])
        Box(x1=0.0, y1=0.0, x2=6.0, y2=7.0)
        """
        boxes = list(boxes)
        if not boxes:
            raise BoxError("union of no boxes")
        return Box(
            min(b.x1 for b in boxes), min(b.y1 for b in boxes),
            max(b.x2 for b in boxes), max(b.y2 for b in boxes),
        )

    def inside(self, size: Size) -> bool:
        w, h = size
        return self.x1 >= 0 and self.y1 >= 0 and self.x2 <= w and self.y2 <= h

    def clamp(self, size: Size) -> Box:
        """Clip to the image; raises BoxError if nothing of the box is left inside.

        >>> Box(-5, -5, 10, 10).clamp((8, 8))
        Box(x1=0.0, y1=0.0, x2=8.0, y2=8.0)
        """
        w, h = size
        x1, y1 = min(max(self.x1, 0.0), w), min(max(self.y1, 0.0), h)
        x2, y2 = min(max(self.x2, 0.0), w), min(max(self.y2, 0.0), h)
        if not (x1 < x2 and y1 < y2):
            raise BoxError(f"box {self.as_tuple()} lies outside the {w}x{h} image")
        return Box(x1, y1, x2, y2)

    def expand(self, margin: float, size: Size | None = None, *, relative: bool = True) -> Box:
        """Grow each side by ``margin`` (a fraction of the side if ``relative``, else pixels), clamped.

        >>> Box(10, 10, 20, 20).expand(0.5)
        Box(x1=5.0, y1=5.0, x2=25.0, y2=25.0)
        """
        dx = margin * self.width if relative else margin
        dy = margin * self.height if relative else margin
        grown = Box(self.x1 - dx, self.y1 - dy, self.x2 + dx, self.y2 + dy)
        return grown.clamp(size) if size is not None else grown

    def integer(self, size: Size) -> tuple[int, int, int, int]:
        """Pixel-aligned crop rectangle (floor/ceil outward, clamped), for PIL's ``crop``."""
        w, h = size
        x1, y1 = max(0, math.floor(self.x1)), max(0, math.floor(self.y1))
        x2, y2 = min(w, math.ceil(self.x2)), min(h, math.ceil(self.y2))
        return (x1, y1, max(x2, x1 + 1), max(y2, y1 + 1))

    # ---- boundaries: V* and COCO ([x, y, w, h] absolute pixels) ------------------------------
    @classmethod
    def from_xywh(cls, xywh: Sequence[Any], what: str = "xywh box") -> Box:
        x, y, w, h = _finite(xywh, what)
        if w <= 0 or h <= 0:
            raise BoxError(f"{what}: non-positive width/height in {list(xywh)!r}")
        return cls(x, y, x + w, y + h)

    def to_xywh(self) -> list[float]:
        return [self.x1, self.y1, self.width, self.height]

    @classmethod
    def from_vstar(cls, bbox: Sequence[Any]) -> Box:
        """V* bench json ``bbox`` entry: ``[x, y, w, h]`` absolute pixels."""
        return cls.from_xywh(bbox, "V* bbox")

    def to_vstar(self) -> list[float]:
        return self.to_xywh()

    @classmethod
    def from_coco(cls, bbox: Sequence[Any]) -> Box:
        """COCO annotation ``bbox``: ``[x, y, w, h]`` absolute pixels."""
        return cls.from_xywh(bbox, "COCO bbox")

    def to_coco(self) -> list[float]:
        return self.to_xywh()

    # ---- boundary: Label Studio RectangleLabels (percent of original size) --------------------
    @classmethod
    def from_labelstudio(cls, value: Mapping[str, Any], original_size: Size) -> Box:
        """``value`` = ``{x, y, width, height, rotation}`` in percent of ``original_size``.

        >>> Box.from_labelstudio({"x": 10, "y": 20, "width": 50, "height": 50, "rotation": 0}, (200, 100))
        Box(x1=20.0, y1=20.0, x2=120.0, y2=70.0)
        """
        rotation = float(value.get("rotation", 0) or 0)
        if rotation % 360 != 0:
            raise BoxError(
                f"rotated rectangle (rotation={rotation} degrees) is not supported: "
                "redraw it without rotation"
            )
        w, h = original_size
        if w <= 0 or h <= 0:
            raise BoxError(f"Label Studio original size must be positive, got {original_size}")
        x, y, bw, bh = _finite([value.get(k) for k in ("x", "y", "width", "height")], "Label Studio box")
        return cls.from_xywh([x * w / 100.0, y * h / 100.0, bw * w / 100.0, bh * h / 100.0], "Label Studio box")

    def to_labelstudio(self, original_size: Size) -> dict[str, float]:
        w, h = original_size
        return {
            "x": self.x1 * 100.0 / w, "y": self.y1 * 100.0 / h,
            "width": self.width * 100.0 / w, "height": self.height * 100.0 / h,
            "rotation": 0.0,
        }

    # ---- boundary: normalized [0, 1] xyxy ----------------------------------------------------
    @classmethod
    def from_normalized(cls, xyxy: Sequence[Any], original_size: Size) -> Box:
        x1, y1, x2, y2 = _finite(xyxy, "normalized box")
        w, h = original_size
        return cls(x1 * w, y1 * h, x2 * w, y2 * h)

    def to_normalized(self, original_size: Size) -> list[float]:
        w, h = original_size
        return [self.x1 / w, self.y1 / h, self.x2 / w, self.y2 / h]

    # ---- boundaries of detection-set formats ------------------------------------------------
    @classmethod
    def from_xyxy(cls, xyxy: Sequence[Any], what: str = "xyxy box") -> Box:
        """``[x1, y1, x2, y2]`` absolute pixels given as numbers or numeric strings (Pascal VOC ``bndbox``,
        CVAT ``xtl/ytl/xbr/ybr``); the error names ``what``.

        >>> Box.from_xyxy(["48", "240", "195", "371"], "VOC bndbox")
        Box(x1=48.0, y1=240.0, x2=195.0, y2=371.0)
        """
        x1, y1, x2, y2 = _finite(xyxy, what)
        if not (x1 < x2 and y1 < y2):
            raise BoxError(f"{what}: degenerate or inverted box {[x1, y1, x2, y2]} (need x1 < x2 and y1 < y2)")
        return cls(x1, y1, x2, y2)

    def to_xyxy(self) -> list[float]:
        return [self.x1, self.y1, self.x2, self.y2]

    @classmethod
    def from_voc(cls, xyxy: Sequence[Any]) -> Box:
        """Pascal VOC ``bndbox`` ``xmin, ymin, xmax, ymax``: absolute pixels, as LabelImg and CVAT write them.

        The original VOC devkit counts pixels from 1; read as edges here, its boxes sit at most 1 px off,
        within ``box_check``'s tolerance.
        """
        return cls.from_xyxy(xyxy, "VOC bndbox")

    def to_voc(self) -> list[float]:
        return self.to_xyxy()

    @classmethod
    def from_corners(cls, points: Sequence[Sequence[Any]], what: str = "rectangle") -> Box:
        """Two opposite corners in any order (LabelMe ``rectangle`` ``points``), absolute pixels.

        >>> Box.from_corners([[195, 371], [48, 240]])
        Box(x1=48.0, y1=240.0, x2=195.0, y2=371.0)
        """
        if len(points) != 2 or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in points):
            raise BoxError(f"{what}: expected two [x, y] corners, got {list(points)!r}")
        xa, ya, xb, yb = _finite([*points[0], *points[1]], what)
        return cls.from_xyxy([min(xa, xb), min(ya, yb), max(xa, xb), max(ya, yb)], what)

    def to_corners(self) -> list[list[float]]:
        return [[self.x1, self.y1], [self.x2, self.y2]]

    @classmethod
    def from_yolo(cls, cxcywh: Sequence[Any], original_size: Size) -> Box:
        """YOLO ``cx cy w h`` normalised to ``[0, 1]`` by the image's (width, height).

        A value above 1 is a box given in pixels, not normalised: a BoxError says so.

        >>> Box.from_yolo([0.5, 0.5, 0.25, 0.5], (200, 100))
        Box(x1=75.0, y1=25.0, x2=125.0, y2=75.0)
        """
        cx, cy, bw, bh = _finite(cxcywh, "YOLO box")
        if max(cx, cy, bw, bh) > 1.0 + 1e-6:
            raise BoxError(f"YOLO box {[cx, cy, bw, bh]} has values above 1: pixels, not normalised cx cy w h")
        if bw <= 0 or bh <= 0:
            raise BoxError(f"YOLO box {[cx, cy, bw, bh]}: non-positive width/height")
        w, h = original_size
        return cls((cx - bw / 2) * w, (cy - bh / 2) * h, (cx + bw / 2) * w, (cy + bh / 2) * h)

    def to_yolo(self, original_size: Size) -> list[float]:
        w, h = original_size
        return [(self.x1 + self.x2) / 2 / w, (self.y1 + self.y2) / 2 / h, self.width / w, self.height / h]

    @classmethod
    def from_openimages(cls, xmin_xmax_ymin_ymax: Sequence[Any], original_size: Size) -> Box:
        """Open Images CSV ``XMin, XMax, YMin, YMax``, normalised to ``[0, 1]`` (note the order).

        >>> Box.from_openimages([0.25, 0.75, 0.5, 1.0], (200, 100))
        Box(x1=50.0, y1=50.0, x2=150.0, y2=100.0)
        """
        x1, x2, y1, y2 = _finite(xmin_xmax_ymin_ymax, "Open Images box")
        if max(x1, x2, y1, y2) > 1.0 + 1e-6:
            raise BoxError(f"Open Images box {[x1, x2, y1, y2]} has values above 1: pixels, not normalised")
        return cls.from_normalized([x1, y1, x2, y2], original_size)

    def to_openimages(self, original_size: Size) -> list[float]:
        x1, y1, x2, y2 = self.to_normalized(original_size)
        return [x1, x2, y1, y2]

    # ---- boundary: model output on the resized image it saw ----------------------------------
    @classmethod
    def from_model(cls, xyxy: Sequence[Any], resized_size: Size, original_size: Size) -> Box:
        """Map ``[x1, y1, x2, y2]`` on the resized image back to the original, per-axis, clamped.

        Raises BoxError for non-finite numbers, inverted boxes, or a box wholly outside the image.
        """
        x1, y1, x2, y2 = _finite(xyxy, "model box")
        if not (x1 < x2 and y1 < y2):
            raise BoxError(f"model box {[x1, y1, x2, y2]} is degenerate or inverted")
        sx = original_size[0] / resized_size[0]
        sy = original_size[1] / resized_size[1]
        return Box(x1 * sx, y1 * sy, x2 * sx, y2 * sy).clamp(original_size)

    def to_model(self, resized_size: Size, original_size: Size) -> list[float]:
        sx = resized_size[0] / original_size[0]
        sy = resized_size[1] / original_size[1]
        return [self.x1 * sx, self.y1 * sy, self.x2 * sx, self.y2 * sy]

    # ---- record form (the `boxes` column) ----------------------------------------------------
    def to_record(self, label: str = "", source: str = "annotation") -> dict[str, Any]:
        return {"x1": self.x1, "y1": self.y1, "x2": self.x2, "y2": self.y2, "label": label, "source": source}

    @classmethod
    def from_record(cls, rec: Mapping[str, Any]) -> Box:
        return cls(rec["x1"], rec["y1"], rec["x2"], rec["y2"])


def rotate_box_with_exif(box: Box, stored_size: Size, orientation: int) -> Box:
    """Map a box on the raw stored pixels to the displayed image after EXIF ``orientation`` (1-8).

    >>> rotate_box_with_exif(Box(0, 0, 10, 20), (100, 50), 6)  # 90 degrees clockwise
    Box(x1=30.0, y1=0.0, x2=50.0, y2=10.0)
    """
    w, h = stored_size
    corners = [(box.x1, box.y1), (box.x2, box.y2)]

    def tf(x: float, y: float) -> tuple[float, float]:
        return {
            1: (x, y), 2: (w - x, y), 3: (w - x, h - y), 4: (x, h - y),
            5: (y, x), 6: (h - y, x), 7: (h - y, w - x), 8: (y, w - x),
        }[orientation]

    if orientation not in range(1, 9):
        raise BoxError(f"EXIF orientation must be 1..8, got {orientation}")
    (ax, ay), (bx, by) = (tf(*c) for c in corners)
    return Box(min(ax, bx), min(ay, by), max(ax, bx), max(ay, by))
