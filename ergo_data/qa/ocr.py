"""OCR at full resolution with RapidOCR (the ``[ocr]`` extra): lines of text with a canonical Box each.

``OcrEngine`` checks at construction that ``rapidocr`` + ``onnxruntime`` are installed and builds the
RapidOCR engine lazily on the first ``read``. ``read(image, region=None)`` takes a PIL image or an
RGB ``HxWx3`` uint8 ndarray (optionally only the ``region`` Box of it) and returns ``OcrLine``\\ s
whose ``box`` is the axis-aligned hull of RapidOCR's 4-point polygon, in absolute pixels of the
image passed in; ``text`` and ``score`` (0..1) are RapidOCR's. Images larger than ``tile_side`` are
read in overlapping tiles, so nothing is downscaled (RapidOCR itself shrinks inputs above 2000 px).

>>> from PIL import Image, ImageDraw, ImageFont
>>> page = Image.new("RGB", (640, 200), "white")
>>> ImageDraw.Draw(page).text((40, 60), "STAND-BY", fill="black", font=ImageFont.load_default(size=48))
>>> engine = OcrEngine()  # integration: reads with the OCR model below
>>> [(line.text, line.box.x1 < 60 < line.box.x2 > 250, line.score > 0.9) for line in engine.read(page)]
[('STAND-BY', True, True)]
>>> engine.read(page, region=Box(0, 0, 200, 200))[0].box.x2 <= 200
True
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from ergo_data.core.boxes import Box
from ergo_data.core.errors import ConfigError

INSTALL_HINT = "pip install 'ergo-workbench[ocr]'"
RAPIDOCR_MAX_SIDE = 2000  # RapidOCR's Global.max_side_len: larger inputs are downscaled before detection


class OcrUnavailableError(ConfigError, ImportError):
    """rapidocr or onnxruntime is not installed; the message says how to install the extra."""


@dataclass(frozen=True, slots=True)
class OcrLine:
    """One recognised line: canonical ``box`` (absolute pixels), ``text``, ``score`` in [0, 1]."""

    box: Box
    text: str
    score: float


def check_ocr_installed() -> None:
    """Raise OcrUnavailableError naming the extra if rapidocr or onnxruntime is missing."""
    missing = [m for m in ("rapidocr", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise OcrUnavailableError(
            f"OCR needs {' and '.join(missing)} (not installed): run `{INSTALL_HINT}` "
            "(rapidocr 3.x + onnxruntime; not rapidocr-onnxruntime, whose GUI OpenCV clashes)"
        )


def to_rgb_array(image: Image.Image | np.ndarray) -> np.ndarray:
    """PIL image (any mode) or ndarray (HxW grey, HxWx3 RGB, HxWx4 RGBA) -> contiguous HxWx3 uint8 RGB."""
    if isinstance(image, Image.Image):
        return np.asarray(image.convert("RGB"))
    if not isinstance(image, np.ndarray):
        raise TypeError(f"OCR input must be a PIL image or a numpy array, got {type(image).__name__}")
    arr = image
    if arr.dtype != np.uint8:
        raise TypeError(f"OCR input array must be uint8, got {arr.dtype}")
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    if arr.ndim != 3 or arr.shape[2] not in (3, 4):
        raise TypeError(f"OCR input array must be HxW, HxWx3 (RGB) or HxWx4, got shape {arr.shape}")
    return np.ascontiguousarray(arr[:, :, :3])


def tile_origins(length: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of ``tile`` px covering ``length`` px with at least ``overlap`` px shared.

    >>> tile_origins(1000, 400, 100)
    [0, 300, 600]
    >>> tile_origins(300, 400, 100)
    [0]
    """
    if length <= tile:
        return [0]
    step = max(1, tile - overlap)
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return starts


def merge_tile_lines(lines: list[OcrLine], contained: float = 0.5) -> list[OcrLine]:
    """Drop lines read twice in tile overlaps: of two lines whose intersection covers more than
    ``contained`` of the smaller box, keep the larger (the uncut one), then the higher score.

    >>> a = OcrLine(Box(0, 0, 100, 20), "STAND-BY", 0.99)
    >>> b = OcrLine(Box(40, 0, 100, 20), "D-BY", 0.98)
    >>> [line.text for line in merge_tile_lines([b, a])]
    ['STAND-BY']
    """
    ordered = sorted(lines, key=lambda ln: (-ln.box.area, -ln.score, ln.box.y1, ln.box.x1, ln.text))
    kept: list[OcrLine] = []
    for line in ordered:
        if all(line.box.intersection_area(k.box) <= contained * min(line.box.area, k.box.area) for k in kept):
            kept.append(line)
    return sorted(kept, key=lambda ln: (ln.box.y1, ln.box.x1))


class OcrEngine:
    """RapidOCR wrapper; constructed cheaply, the models load on first use (one engine per process).

    ``min_score`` drops lines RapidOCR scores lower (its own ``text_score``); ``tile_side`` and
    ``tile_overlap`` control full-resolution tiling of large inputs.
    """

    def __init__(self, min_score: float = 0.5, tile_side: int = 1600, tile_overlap: int = 200,
                 rapidocr_params: dict[str, Any] | None = None) -> None:
        check_ocr_installed()
        if not 0.0 <= min_score <= 1.0:
            raise ValueError(f"min_score must be in [0, 1], got {min_score}")
        if not 64 <= tile_side <= RAPIDOCR_MAX_SIDE:
            raise ValueError(f"tile_side must be in [64, {RAPIDOCR_MAX_SIDE}] px, got {tile_side}")
        if not 0 <= tile_overlap < tile_side // 2:
            raise ValueError(f"tile_overlap must be in [0, tile_side/2), got {tile_overlap}")
        self.min_score = min_score
        self.tile_side = tile_side
        self.tile_overlap = tile_overlap
        self._params = {"Global.log_level": "critical", "Global.text_score": min_score,
                        "Global.max_side_len": RAPIDOCR_MAX_SIDE, **(rapidocr_params or {})}
        self._engine: Any = None

    @property
    def engine(self) -> Any:
        if self._engine is None:
            from rapidocr import RapidOCR

            self._engine = RapidOCR(params=self._params)
        return self._engine

    def read(self, image: Image.Image | np.ndarray, region: Box | None = None) -> list[OcrLine]:
        """Lines of text in ``image`` (or only inside ``region``), boxes in pixels of ``image``, top to bottom."""
        arr = to_rgb_array(image)
        h, w = arr.shape[:2]
        ox, oy = 0, 0
        if region is not None:
            x1, y1, x2, y2 = region.integer((w, h))
            arr, ox, oy = arr[y1:y2, x1:x2], x1, y1
        th, tw = arr.shape[:2]
        lines: list[OcrLine] = []
        for ty in tile_origins(th, self.tile_side, self.tile_overlap):
            for tx in tile_origins(tw, self.tile_side, self.tile_overlap):
                tile = arr[ty:ty + self.tile_side, tx:tx + self.tile_side]
                lines += self._read_tile(tile, ox + tx, oy + ty, (w, h))
        return merge_tile_lines(lines)

    def _read_tile(self, tile: np.ndarray, dx: int, dy: int, size: tuple[int, int]) -> list[OcrLine]:
        # RapidOCR treats a 3-channel ndarray as BGR (OpenCV order): flip our RGB.
        result = self.engine(np.ascontiguousarray(tile[:, :, ::-1]))
        if getattr(result, "boxes", None) is None or getattr(result, "txts", None) is None:
            return []
        out = []
        for poly, text, score in zip(result.boxes, result.txts, result.scores):
            poly = np.asarray(poly, dtype=np.float64)
            if not text.strip() or poly.shape != (4, 2) or not np.isfinite(poly).all():
                continue
            (x1, y1), (x2, y2) = poly.min(axis=0), poly.max(axis=0)
            if not (x1 < x2 and y1 < y2):
                continue
            box = Box(x1 + dx, y1 + dy, x2 + dx, y2 + dy).clamp(size)
            out.append(OcrLine(box, text.strip(), float(score)))
        return out


_SHARED: dict[tuple, OcrEngine] = {}


def shared_engine(min_score: float = 0.5, tile_side: int = 1600, tile_overlap: int = 200) -> OcrEngine:
    """One engine per process and settings (models load once; sources and judges share it)."""
    key = (min_score, tile_side, tile_overlap)
    if key not in _SHARED:
        _SHARED[key] = OcrEngine(min_score, tile_side, tile_overlap)
    return _SHARED[key]
