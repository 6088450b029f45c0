"""``landmarks``: ERGO in miniature — coloured landmarks visible at the coarse budget, each carrying a stripe
detail that only the full-resolution crop shows.

Each composite is ``size`` x ``size`` pixels (448), cut into a ``grid`` x ``grid`` lattice of cells (4 x 4 cells of
112 px). ``landmarks`` cells (4) each hold one landmark: a disc, square or diamond of 88 px in one of six colours
(distinct within a composite), drawn with a solid 8-px outline in its colour and filled with stripes of that colour
and white, ``period`` px apart (4: two px on, two off), in one of four orientations (horizontal, vertical, rising
or falling diagonal). One question per landmark: "Which way do the stripes run on the red disc?", the four
orientations as options in a fixed order (the letters are uniform because the orientations are).

Why the geometry (fixed here, written down in docs/training.md):

- the coarse budget of the policy is 16 vision tokens (``max_pixels = 16 * 28 * 28``): the 448-px composite is
  seen at 112 x 112, a factor of 4. The landmark (22 coarse px, its outline 2 px) keeps its colour and shape, so
  the question says where to look; every stripe pattern has period 4 px along x and y, so at a factor of 4 all of
  its frequencies fall on multiples of the coarse sampling rate and alias to the same flat pastel: the
  orientation is gone (``legibility`` measures it);
- a zoom on the landmark's cell (28 x 28 coarse px, one vision token) is cropped at full resolution (112 px)
  and shown at the same budget at 112 x 112: the stripes are there pixel for pixel. A zoom twice as wide
  is shown at half resolution (period 2 px: at the limit); wider, the stripes are gone again;
- ``direct_full`` (the whole composite at 256 tokens, full resolution) shows every stripe, but the model must
  find the named landmark among 256 tokens.

Backgrounds (``kinds``): ``photo`` (a seeded 448-px crop of a photo under ``path``), ``gradient``, ``tiles``
(random muted rectangles), ``noise`` (smooth colour noise). A held-out set on kinds training never saw is the
same source with other ``kinds`` (and other photos).

>>> spec = Landmark("red", "disc", "vertical", (12, 12, 100, 100))
>>> patch = render_landmark(spec, (0, 0))
>>> patch.size, patch.getpixel((44, 2)), patch.getpixel((44, 44))[:3] in ((221, 31, 31), (255, 255, 255))
((88, 88), (221, 31, 31, 255), True)
>>> patch.getpixel((44, 8))[:3]  # at the edge of the stripes: their mean colour
(238, 143, 143)
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageOps
from pydantic import Field

from ergo_data.core.boxes import Box
from ergo_data.core.errors import RecipeError
from ergo_data.core.files import IMAGE_EXTENSIONS
from ergo_data.core.imageio import DecodeError, ImageSource, open_rgb
from ergo_data.core.schema import make_row
from ergo_data.pipeline.contract import Reject, Source, SourceParams
from ergo_data.pipeline.registry import source_registry

# odd channels: the stripes' mean with white ((c + 255) / 2) is a whole grey level, so rounding is symmetric
COLOURS = {"red": (221, 31, 31), "green": (31, 151, 51), "blue": (31, 71, 221),
           "yellow": (245, 211, 21), "orange": (249, 131, 11), "purple": (141, 41, 171)}
SHAPES = ("disc", "square", "diamond")
ORIENTATIONS = ("horizontal", "vertical", "rising diagonal", "falling diagonal")
KINDS = ("photo", "gradient", "tiles", "noise")
WHITE = (255, 255, 255)
CATEGORY = "landmark_stripes"
COARSE_TOKENS = 16  # the policy's coarse budget this geometry is built for (max_pixels = 16 * 28 * 28)
LANDMARK_PX = 88
OUTLINE_PX = 8
TAPER_PX = 16


@dataclass
class Landmark:
    """One landmark: its colour, shape, stripe orientation and box (absolute xyxy pixels on the composite)."""

    colour: str
    shape: str
    orientation: str
    box: tuple[int, int, int, int]

    @property
    def label(self) -> str:
        return f"{self.colour} {self.shape}"


def stripes(orientation: str, x0: int, y0: int, w: int, h: int, period: int = 4) -> np.ndarray:
    """Boolean ``h x w`` mask of the "on" stripes at absolute offset ``(x0, y0)`` (the phase is the image's).

    >>> stripes("vertical", 0, 0, 8, 1).astype(int).tolist()
    [[1, 1, 0, 0, 1, 1, 0, 0]]
    >>> stripes("rising diagonal", 0, 0, 4, 2).astype(int).tolist()
    [[1, 1, 0, 0], [1, 0, 0, 1]]
    """
    ys, xs = np.mgrid[y0:y0 + h, x0:x0 + w]
    half = period // 2
    coord = {"horizontal": ys, "vertical": xs, "rising diagonal": xs + ys, "falling diagonal": xs - ys}[orientation]
    return (np.floor_divide(coord, half) % 2) == 0


def shape_mask(shape: str, side: int) -> Image.Image:
    """An ``L`` mask of ``shape`` filling a ``side`` x ``side`` square (hard edges: no antialiasing)."""
    mask = Image.new("L", (side, side), 0)
    draw = ImageDraw.Draw(mask)
    if shape == "disc":
        draw.ellipse([0, 0, side - 1, side - 1], fill=255)
    elif shape == "square":
        draw.rectangle([0, 0, side - 1, side - 1], fill=255)
    elif shape == "diamond":
        m = (side - 1) / 2
        draw.polygon([(m, 0), (side - 1, m), (m, side - 1), (0, m)], fill=255)
    else:
        raise ValueError(f"unknown shape {shape!r}")
    return mask


def render_landmark(spec: Landmark, origin: tuple[int, int] | None = None, period: int = 4,
                    grain: int = 0, seed: int = 0) -> Image.Image:
    """The RGBA patch of ``spec`` (its box's size): an outline in the colour, inside stripes of colour and white.

    ``origin`` is where the patch lands (default: the box's corner): the stripe phase follows the image grid. The
    stripes fade into their mean colour over ``TAPER_PX`` at the edge of the striped area: a hard edge between
    stripes and outline would leave the orientation in the coarse view (a coarse pixel across the edge averages a
    part of a period: up to 33 grey levels apart between orientations; tapered, at most 3).
    """
    from scipy.ndimage import distance_transform_edt

    x1, y1, x2, _ = spec.box
    side = x2 - x1
    ox, oy = origin if origin is not None else (x1, y1)
    outer = np.asarray(shape_mask(spec.shape, side)) > 0
    inner_side = side - 2 * OUTLINE_PX
    inner = np.zeros_like(outer)
    inner[OUTLINE_PX:OUTLINE_PX + inner_side, OUTLINE_PX:OUTLINE_PX + inner_side] = \
        np.asarray(shape_mask(spec.shape, inner_side)) > 0
    depth = distance_transform_edt(inner)
    contrast = 0.5 - 0.5 * np.cos(np.pi * np.clip((depth - 0.5) / TAPER_PX, 0, 1))
    on = stripes(spec.orientation, ox, oy, side, side, period).astype(np.float64)
    colour, white = np.array(COLOURS[spec.colour], np.float64), np.array(WHITE, np.float64)
    striped = (colour + white) / 2 + (contrast * (on - 0.5))[..., None] * (colour - white)
    rgba = np.zeros((side, side, 4), np.uint8)
    rgb = np.where(inner[..., None], striped, colour)
    if grain:  # film grain: +-grain grey levels per pixel, seeded (the residual above drowns in it at coarse scale)
        rgb = rgb + np.random.default_rng(seed).integers(-grain, grain + 1, rgb.shape[:2])[..., None]
    rgba[..., :3] = np.clip(np.round(rgb), 0, 255)
    rgba[..., 3] = np.where(outer, 255, 0)
    return Image.fromarray(rgba, "RGBA")


def question_for(spec: Landmark) -> str:
    return f"Which way do the stripes run on the {spec.label}?"


class LandmarksParams(SourceParams):
    out_dir: str  # composites are written here (created); keep it outside `path`
    images: int = Field(100, ge=1)  # composites to generate
    kinds: list[Literal["photo", "gradient", "tiles", "noise"]] = ["photo", "gradient", "tiles"]  # noqa: RUF012
    size: int = Field(448, ge=56)  # composite side, px
    grid: int = Field(4, ge=2)  # cells per side
    landmarks: int = Field(4, ge=1, le=len(COLOURS))  # landmarks per composite (one question each)
    period: int = Field(4, ge=2)  # stripe period, px (even)
    grain: int = Field(8, ge=0)  # +-grey levels of seeded per-pixel grain on the landmarks
    seed: int = 0


@source_registry.register("landmarks")
class LandmarksSource(Source):
    """Composites of a background and coloured striped landmarks; "which way do the stripes run" questions."""

    Params = LandmarksParams

    def check_dependencies(self) -> None:
        p = self.params
        if p.size % p.grid or p.period % 2:
            raise RecipeError(f"source {self.name!r}: size must be a multiple of grid and period even")
        if p.landmarks > p.grid * p.grid:
            raise RecipeError(f"source {self.name!r}: {p.landmarks} landmarks do not fit {p.grid}x{p.grid} cells")
        if p.size // p.grid < LANDMARK_PX + 8:
            raise RecipeError(f"source {self.name!r}: cells of {p.size // p.grid} px are too small for "
                              f"{LANDMARK_PX}-px landmarks")
        if not p.kinds:
            raise RecipeError(f"source {self.name!r}: `kinds` is empty")
        self._photos: dict[Path, Image.Image] = {}

    def photo_files(self) -> list[Path]:
        root, out = self.root, Path(self.params.out_dir).expanduser().resolve()
        if not root.is_dir():
            return []
        return sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                      and not p.is_relative_to(out))

    def read(self) -> Iterator[dict[str, Any] | Reject]:
        p = self.params
        out = Path(p.out_dir).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        photos = self.photo_files() if "photo" in p.kinds else []
        if "photo" in p.kinds and not photos:
            raise RecipeError(f"source {self.name!r}: kind `photo` needs images under {str(self.root)!r}")
        for i in range(p.images):
            rng = random.Random(f"{p.seed}:{self.name}:{i}")
            kind = p.kinds[i % len(p.kinds)]
            key = f"{i:05d}-{kind}"
            try:
                background, origin = self.background(kind, rng, photos)
            except DecodeError as e:
                yield self.reject(key, e.reason, str(e))
                continue
            specs = self.plan(rng)
            composite = background.copy()
            for k, s in enumerate(specs):
                patch = render_landmark(s, period=p.period, grain=p.grain, seed=rng.randrange(2**31) + k)
                composite.paste(patch, s.box[:2], patch)
            path = out / f"{slugify_name(self.name)}-{key}.png"
            composite.save(path, format="PNG", compress_level=1)
            provenance = {"generator": "landmarks", "background_kind": kind, "background": origin,
                          "landmarks": [asdict(s) for s in specs], "composite": str(path),
                          "geometry": {"size": p.size, "grid": p.grid, "period": p.period, "grain": p.grain,
                                       "coarse_tokens": COARSE_TOKENS}}
            for s in specs:
                yield make_row(
                    id=f"{self.name}/{key}/{s.colour}", image_path=str(path), question=question_for(s),
                    answer=s.orientation, source=self.name, options=list(ORIENTATIONS),
                    answer_letter="ABCD"[ORIENTATIONS.index(s.orientation)], category=CATEGORY,
                    boxes=[{"x1": s.box[0], "y1": s.box[1], "x2": s.box[2], "y2": s.box[3], "label": s.label,
                            "source": "synthetic"}],
                    provenance={**provenance, "target": s.colour})

    def plan(self, rng: random.Random) -> list[Landmark]:
        """Distinct colours in distinct cells, each landmark inside its cell with a few px of seeded jitter."""
        p = self.params
        cell = p.size // p.grid
        cells = rng.sample(range(p.grid * p.grid), p.landmarks)
        colours = rng.sample(list(COLOURS), p.landmarks)
        slack = cell - LANDMARK_PX
        specs = []
        for c, colour in zip(cells, colours, strict=True):
            cx, cy = (c % p.grid) * cell, (c // p.grid) * cell
            x = cx + slack // 2 + rng.randint(-(slack // 2 - 4), slack // 2 - 4)
            y = cy + slack // 2 + rng.randint(-(slack // 2 - 4), slack // 2 - 4)
            specs.append(Landmark(colour, rng.choice(SHAPES), rng.choice(ORIENTATIONS),
                                  (x, y, x + LANDMARK_PX, y + LANDMARK_PX)))
        return specs

    def background(self, kind: str, rng: random.Random, photos: Sequence[Path]) -> tuple[Image.Image, str]:
        """``(RGB image of size x size, where it came from)``."""
        return make_background(kind, self.params.size, rng, photos, self._photos)


def slugify_name(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in name)


def make_background(kind: str, size: int, rng: random.Random, photos: Sequence[Path] = (),
                    cache: dict[Path, Image.Image] | None = None) -> tuple[Image.Image, str]:
    """A seeded background of ``kind`` (``KINDS``) and a note of its origin.

    >>> im, origin = make_background("gradient", 64, random.Random(0))
    >>> im.size, origin.split(":")[0]
    ((64, 64), 'gradient')
    """
    if kind == "photo":
        path = photos[rng.randrange(len(photos))]
        cache = cache if cache is not None else {}
        if path not in cache:  # one decode per photo, kept at about twice the composite's side
            im = open_rgb(path.read_bytes())
            scale = 2 * size / min(im.size)
            cache[path] = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))),
                                    Image.Resampling.LANCZOS) if scale < 1 else im
        im = cache[path]
        side = rng.randint(size, min(im.size))
        x, y = rng.randint(0, im.width - side), rng.randint(0, im.height - side)
        crop = im.crop((x, y, x + side, y + side)).resize((size, size), Image.Resampling.LANCZOS)
        return crop, f"photo:{path.name}:{x},{y},{side}"
    if kind == "gradient":
        a, b = (np.array([rng.randint(40, 230) for _ in range(3)], float) for _ in range(2))
        angle = rng.uniform(0, 2 * math.pi)
        ys, xs = np.mgrid[0:size, 0:size] / max(size - 1, 1)
        t = (xs * math.cos(angle) + ys * math.sin(angle))
        t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
        arr = a * (1 - t[..., None]) + b * t[..., None]
        return Image.fromarray(arr.astype(np.uint8), "RGB"), f"gradient:{angle:.2f}"
    if kind == "tiles":
        im = Image.new("RGB", (size, size), tuple(rng.randint(60, 200) for _ in range(3)))
        draw = ImageDraw.Draw(im)
        n = rng.randint(8, 20)
        for _ in range(n):
            x1, y1 = rng.randint(0, size), rng.randint(0, size)
            w, h = rng.randint(size // 10, size // 2), rng.randint(size // 10, size // 2)
            draw.rectangle([x1, y1, x1 + w, y1 + h], fill=tuple(rng.randint(60, 200) for _ in range(3)))
        return im, f"tiles:{n}"
    if kind == "noise":
        k = rng.randint(4, 9)
        small = np.array([[[rng.randint(30, 230) for _ in range(3)] for _ in range(k)] for _ in range(k)], np.uint8)
        return Image.fromarray(small, "RGB").resize((size, size), Image.Resampling.BICUBIC), f"noise:{k}"
    raise ValueError(f"unknown background kind {kind!r}; valid: {', '.join(KINDS)}")


# ---- the pixel-level check: is the stripe detail legible in each view? ----------------------------------------
def _zero_mean(a: np.ndarray) -> np.ndarray:
    a = a.astype(np.float64) - a.mean(axis=(0, 1), keepdims=True)
    return a / (np.linalg.norm(a) + 1e-9)


def cell_box(box: Sequence[float], size: int, grid: int) -> Box:
    """The grid cell holding a landmark's box (what a good zoom shows)."""
    cell = size // grid
    cx, cy = int(box[0] // cell), int(box[1] // cell)
    return Box(cx * cell, cy * cell, (cx + 1) * cell, (cy + 1) * cell)


def legibility(rows: Sequence[dict[str, Any]], coarse_tokens: int = COARSE_TOKENS) -> dict[str, Any]:
    """Read each row's stripe orientation from its pixels with a nearest-template classifier, in the coarse view
    and in the zoom on the landmark's cell (both through ``ImageSource``, the rollout's own resize path).

    The templates are the same landmark (colour, shape, place) with each of the four orientations, pasted on a
    flat grey image and passed through the same view; the classifier picks the template with the highest
    zero-mean correlation inside the landmark's stripes. Returns the accuracy per view, the template separation
    (mean absolute difference between the closest two templates, grey levels; the worst item) and the largest
    difference between any two templates at any coarse pixel. This classifier knows everything about the item but
    its grain (exact place, colour, shape, phase), so it is the best reader there is: in the coarse view it lives
    on +-1 grey-level rounding residues under the grain, in the crop the stripes differ by tens of grey levels.
    """
    max_pixels = coarse_tokens * 28 * 28
    res: dict[str, list[float]] = {f"{v}_{k}": [] for v in ("coarse", "crop") for k in ("correct", "sep", "max")}
    for row in rows:
        prov = json.loads(row["provenance"]) if isinstance(row["provenance"], str) else row["provenance"]
        geo = prov["geometry"]
        target = next(lm for lm in prov["landmarks"] if lm["colour"] == prov["target"])
        spec = Landmark(target["colour"], target["shape"], target["orientation"], tuple(target["box"]))
        image = ImageSource.open(row["image"])
        cell = cell_box(spec.box, geo["size"], geo["grid"])
        views = {"coarse": (lambda src: np.asarray(src.coarse(max_pixels)), Box(*spec.box), image.size),
                 "crop": (lambda src, c=cell: np.asarray(src.crop(c, max_pixels)), Box(*spec.box), image.size)}
        for name, (view, box, size) in views.items():
            seen = view(image)
            sx, sy = seen.shape[1] / (size[0] if name == "coarse" else cell.width), \
                seen.shape[0] / (size[1] if name == "coarse" else cell.height)
            ox, oy = (0, 0) if name == "coarse" else (cell.x1, cell.y1)
            x1, y1 = math.ceil((box.x1 - ox) * sx), math.ceil((box.y1 - oy) * sy)
            x2, y2 = int((box.x2 - ox) * sx), int((box.y2 - oy) * sy)
            pad = max(1, round(OUTLINE_PX * sx) + 1)  # the stripes only: inside the outline
            window = (slice(y1 + pad, y2 - pad), slice(x1 + pad, x2 - pad))
            templates = []
            for o in ORIENTATIONS:
                canvas = Image.new("RGB", size, (128, 128, 128))
                lm = Landmark(spec.colour, spec.shape, o, spec.box)
                patch = render_landmark(lm, period=geo["period"])
                canvas.paste(patch, spec.box[:2], patch)
                templates.append(view(ImageSource.from_pil(canvas))[window].astype(np.float64))
            got = seen[window]
            scores = [float((_zero_mean(got) * _zero_mean(t)).sum()) for t in templates]
            res[f"{name}_correct"].append(float(ORIENTATIONS[int(np.argmax(scores))] == spec.orientation))
            pairs = [np.abs(a - b) for i, a in enumerate(templates) for b in templates[i + 1:]]
            res[f"{name}_sep"].append(min(float(d.mean()) for d in pairs))
            res[f"{name}_max"].append(max(float(d.max()) for d in pairs))
    n = len(rows)
    return {"n": n, "coarse_accuracy": sum(res["coarse_correct"]) / n, "crop_accuracy": sum(res["crop_correct"]) / n,
            "coarse_template_separation": max(res["coarse_sep"]), "crop_template_separation": min(res["crop_sep"]),
            "coarse_template_max_diff": max(res["coarse_max"])}


def preview(rows: Sequence[dict[str, Any]], path: Path, coarse_tokens: int = COARSE_TOKENS) -> Path:
    """A strip per row: the composite, its coarse view (upscaled), and the zoom on the target's cell."""
    max_pixels = coarse_tokens * 28 * 28
    tiles = []
    for row in rows:
        prov = json.loads(row["provenance"]) if isinstance(row["provenance"], str) else row["provenance"]
        target = next(lm for lm in prov["landmarks"] if lm["colour"] == prov["target"])
        src = ImageSource.open(row["image"])
        full = Image.fromarray(np.asarray(src.crop(Box(0, 0, *src.size), src.size[0] * src.size[1])))
        cell = cell_box(target["box"], prov["geometry"]["size"], prov["geometry"]["grid"])
        coarse = src.coarse(max_pixels).resize(full.size, Image.Resampling.NEAREST)
        crop = src.crop(cell, max_pixels).resize(full.size, Image.Resampling.NEAREST)
        strip = Image.new("RGB", (full.width * 3 + 16, full.height), WHITE)
        for k, im in enumerate((full, coarse, crop)):
            strip.paste(im, (k * (full.width + 8), 0))
        tiles.append(ImageOps.expand(strip, border=4, fill=WHITE))
    sheet = Image.new("RGB", (tiles[0].width, sum(t.height for t in tiles)), WHITE)
    y = 0
    for t in tiles:
        sheet.paste(t, (0, y))
        y += t.height
    path.parent.mkdir(parents=True, exist_ok=True)
    sheet.save(path)
    return path
