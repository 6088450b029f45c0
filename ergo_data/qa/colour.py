"""Dominant colour of the pixels inside a box, in a perceptual colour space (CIELAB -> LCh), with a confidence.

Conversion: sRGB (IEC 61966-2-1) -> linear RGB -> CIE XYZ -> CIELAB with the D65 white, in numpy
(scikit-image is not a dependency; Pillow's ImageCms LAB uses D50 and 8-bit quantisation).
Each pixel of the central part of the box (``inner`` of its width and height, to leave out background
at the edges) gets one of eleven basic colour names from its lightness L*, chroma C* and hue angle h:

- C* < 12 (unless C* >= 5 and C* >= L*: a dark but saturated colour such as navy): achromatic:
  black (L* < 30), white (L* > 75), else gray;
- otherwise by hue: red [0, 50) or [345, 360), orange [50, 85), yellow [85, 115), green [115, 180),
  blue [180, 315), purple [315, 345); red/purple hues with L* >= 62 are pink; orange/yellow hues
  with L* < 45 are brown (a dark orange is brown), and so is red with L* < 35 and C* < 40.

The dominant colour is the most frequent name; the confidence is its share of the pixels.

>>> import numpy as np
>>> np.round(srgb_to_lab(np.array([[255, 0, 0], [255, 255, 255]], np.uint8)), 1) + 0.0  # + 0.0: no -0.0
array([[ 53.2,  80.1,  67.2],
       [100. ,   0. ,   0. ]])
>>> patch = np.zeros((20, 20, 3), np.uint8); patch[:] = (30, 80, 200)
>>> reading = dominant_colour(patch)
>>> reading.name, reading.confidence
('blue', 1.0)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

COLOUR_NAMES = ("red", "orange", "yellow", "green", "blue", "purple", "pink", "brown", "black", "white", "gray")

_SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                         [0.2126729, 0.7151522, 0.0721750],
                         [0.0193339, 0.1191920, 0.9503041]])
_D65 = np.array([0.95047, 1.0, 1.08883])
ACHROMATIC_CHROMA = 12.0
DARK_MIN_CHROMA = 5.0


def srgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` uint8 sRGB -> ``(..., 3)`` float CIELAB (D65): L* in [0, 100], a*, b* signed."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    linear = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    xyz = linear @ _SRGB_TO_XYZ.T / _D65
    eps = (6 / 29) ** 3
    f = np.where(xyz > eps, np.cbrt(xyz), xyz / (3 * (6 / 29) ** 2) + 4 / 29)
    L = 116 * f[..., 1] - 16
    a = 500 * (f[..., 0] - f[..., 1])
    b = 200 * (f[..., 1] - f[..., 2])
    return np.stack([L, a, b], axis=-1)


def colour_names(lab: np.ndarray) -> np.ndarray:
    """Index into COLOUR_NAMES for each ``(..., 3)`` Lab value (the module's rules)."""
    L, a, b = lab[..., 0], lab[..., 1], lab[..., 2]
    C = np.hypot(a, b)
    h = np.degrees(np.arctan2(b, a)) % 360
    idx = {n: i for i, n in enumerate(COLOUR_NAMES)}
    out = np.full(L.shape, idx["gray"], dtype=np.int8)
    hue_bins = [("red", 0, 50), ("orange", 50, 85), ("yellow", 85, 115), ("green", 115, 180),
                ("blue", 180, 315), ("purple", 315, 345), ("red", 345, 360.001)]
    for name, lo, hi in hue_bins:
        out[(h >= lo) & (h < hi)] = idx[name]
    reddish = (out == idx["red"]) | (out == idx["purple"])
    out[reddish & (L >= 62)] = idx["pink"]
    out[((out == idx["orange"]) | (out == idx["yellow"])) & (L < 45)] = idx["brown"]
    out[(out == idx["red"]) & (L < 35) & (C < 40)] = idx["brown"]
    # Dark colours have little chroma however saturated they look (navy: C* 7 at L* 5): they keep their
    # hue when chroma is large relative to lightness; JPEG noise in blacks (C* < 5) stays black.
    achro = (C < ACHROMATIC_CHROMA) & ~((C >= DARK_MIN_CHROMA) & (C >= L))
    out[achro] = idx["gray"]
    out[achro & (L < 30)] = idx["black"]
    out[achro & (L > 75)] = idx["white"]
    return out


@dataclass(frozen=True)
class ColourReading:
    """``name`` of the dominant colour, ``confidence`` = its pixel share, ``shares`` of every name seen."""

    name: str
    confidence: float
    shares: dict[str, float]
    pixels: int


def inner_region(pixels: np.ndarray, inner: float) -> np.ndarray:
    """The central ``inner`` fraction (per axis) of an HxWx3 crop."""
    h, w = pixels.shape[:2]
    dy, dx = round(h * (1 - inner) / 2), round(w * (1 - inner) / 2)
    core = pixels[dy:h - dy, dx:w - dx]
    return core if core.size else pixels


def dominant_colour(pixels: np.ndarray, inner: float = 1.0) -> ColourReading:
    """Dominant basic colour of an HxWx3 uint8 RGB crop (use ``inner`` < 1 to drop the box's border)."""
    if pixels.ndim != 3 or pixels.shape[2] != 3 or pixels.dtype != np.uint8 or not pixels.size:
        raise ValueError(f"expected a non-empty HxWx3 uint8 RGB array, got {pixels.dtype} {pixels.shape}")
    if not 0 < inner <= 1:
        raise ValueError(f"inner must be in (0, 1], got {inner}")
    core = inner_region(pixels, inner).reshape(-1, 3)
    counts = np.bincount(colour_names(srgb_to_lab(core)), minlength=len(COLOUR_NAMES))
    total = int(counts.sum())
    shares = {COLOUR_NAMES[i]: round(float(c) / total, 4) for i, c in enumerate(counts) if c}
    best = int(np.argmax(counts))
    return ColourReading(COLOUR_NAMES[best], float(counts[best]) / total, dict(sorted(shares.items())), total)


def colour_distractors(reading: ColourReading, present_share: float = 0.10) -> list[str]:
    """Colour names that are NOT a defensible answer: every name covering less than ``present_share``
    of the box (a colour covering more could be what a person calls the object's colour).

    >>> colour_distractors(ColourReading("red", 0.7, {"red": 0.7, "white": 0.25, "black": 0.05}, 100))[:3]
    ['orange', 'yellow', 'green']
    """
    return [n for n in COLOUR_NAMES if n != reading.name and reading.shares.get(n, 0.0) < present_share]
