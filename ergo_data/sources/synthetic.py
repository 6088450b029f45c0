"""``synthetic``: small, exactly-known targets pasted into large real backgrounds: exact ground truth.

Each background (every image under ``path``) gets ``composites_per_background`` composites. A
composite holds one target per entry of ``targets``:

- ``text``:  a random code (4-7 characters) in black on a white sign with a black border;
- ``shape``: a filled circle / square / triangle / star / diamond in one of six colours (shape kinds
  are distinct within a composite, so "the small triangle" names one target);
- ``crop``:  an object crop cut at full resolution from another image's annotation (``crops_from``),
  in a white frame ("the small framed picture");
- ``count``: a cluster of 2-6 identical small shapes (counted exactly; never used as a spatial referent).

Size: each target covers ``area fraction`` of the image, log-interpolated between ``max_area_frac``
(difficulty 0) and ``min_area_frac`` (difficulty 1), jittered by +-20 % (seeded), never below a
legibility floor for text. Position: seeded, uniform inside ``region`` (normalized xyxy), with no
two targets overlapping. Composites are written losslessly (PNG) to ``out_dir`` and the paste box
(tight around the changed pixels) is recorded as the relevant region with box source ``synthetic``.

Questions (``category``): ``synthetic_text`` ("What is written on ...?"), ``synthetic_colour``,
``synthetic_object`` ("What is shown in the small framed picture?"), ``synthetic_spatial`` (the
spatial template over the pasted targets) and ``synthetic_counting``.

>>> spec = TargetSpec("shape", "small triangle", 40, 30, shape="triangle", colour="red")
>>> patch = render_target(spec)
>>> patch.size, patch.getpixel((20, 25))
((40, 30), (220, 30, 30, 255))
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field

from ergo_data.core.boxes import Box
from ergo_data.core.errors import RecipeError
from ergo_data.core.files import IMAGE_EXTENSIONS
from ergo_data.core.imageio import DecodeError, open_rgb
from ergo_data.core.schema import make_row
from ergo_data.pipeline.contract import Reject, Source, SourceParams
from ergo_data.pipeline.registry import source_registry
from ergo_data.qa.choices import make_choices, pick_distractors
from ergo_data.qa.objects import AnnotatedImage, AnnotatedObject, load_annotated_images
from ergo_data.qa.templates import Question, Skip, counting_questions, slugify, spatial_questions

SHAPE_COLOURS = {"red": (220, 30, 30), "green": (30, 150, 50), "blue": (30, 70, 220),
                 "yellow": (245, 210, 20), "orange": (250, 130, 10), "purple": (140, 40, 170)}
SHAPES = ("circle", "square", "triangle", "star", "diamond")
TEXT_ALPHABET = "ABCDEFGHJKLMNPRSTUVWXYZ2345679"  # no O/0, I/1, Q, 8: the answer must be unambiguous to read
SIGN_LABEL = "small white sign with a black border"
FRAME_LABEL = "small framed picture"
MIN_TEXT_PX = 12  # cap height floor: smaller text is not legible even at full resolution
SUPERSAMPLE = 4


@dataclass
class TargetSpec:
    """Everything needed to re-render a target exactly; ``boxes`` are filled in when it is placed."""

    kind: str
    label: str
    width: int
    height: int
    text: str | None = None
    shape: str | None = None
    colour: str | None = None
    crop: dict[str, Any] | None = None  # {"image": path, "box": [x1, y1, x2, y2], "label": ...}
    count: int = 1
    boxes: list[list[int]] = field(default_factory=list)


def _shape_points(shape: str, w: float, h: float) -> list[tuple[float, float]] | None:
    if shape == "triangle":
        return [(w / 2, 0), (w, h), (0, h)]
    if shape == "diamond":
        return [(w / 2, 0), (w, h / 2), (w / 2, h), (0, h / 2)]
    if shape == "star":
        pts = []
        for k in range(10):
            r = 0.5 if k % 2 == 0 else 0.2
            a = -math.pi / 2 + k * math.pi / 5
            pts.append((0.5 + r * math.cos(a), 0.5 + r * math.sin(a)))
        xs, ys = [p[0] for p in pts], [p[1] for p in pts]  # stretch so the star touches all four sides
        return [((x - min(xs)) / (max(xs) - min(xs)) * w, (y - min(ys)) / (max(ys) - min(ys)) * h) for x, y in pts]
    return None


def _render_shape(spec: TargetSpec) -> Image.Image:
    """Anti-aliased shape (drawn at 4x, reduced) in an RGBA patch: colour exact where alpha is 255."""
    w, h = spec.width * SUPERSAMPLE, spec.height * SUPERSAMPLE
    mask = Image.new("L", (w, h), 0)
    draw = ImageDraw.Draw(mask)
    if spec.shape == "circle":
        draw.ellipse([0, 0, w - 1, h - 1], fill=255)
    elif spec.shape == "square":
        draw.rectangle([0, 0, w - 1, h - 1], fill=255)
    else:
        draw.polygon(_shape_points(spec.shape, w - 1, h - 1), fill=255)
    alpha = mask.resize((spec.width, spec.height), Image.Resampling.BOX)
    patch = Image.new("RGBA", (spec.width, spec.height), (*SHAPE_COLOURS[spec.colour], 255))
    patch.putalpha(alpha)
    return patch


def _render_sign(spec: TargetSpec) -> Image.Image:
    border = max(1, spec.height // 14)
    patch = Image.new("RGBA", (spec.width, spec.height), (0, 0, 0, 255))
    draw = ImageDraw.Draw(patch)
    draw.rectangle([border, border, spec.width - 1 - border, spec.height - 1 - border], fill=(255, 255, 255, 255))
    font = ImageFont.load_default(size=text_font_size(spec.height))
    draw.text((spec.width / 2, spec.height / 2), spec.text, fill=(0, 0, 0, 255), font=font, anchor="mm")
    return patch


def _render_crop(spec: TargetSpec) -> Image.Image:
    frame = max(2, min(spec.width, spec.height) // 20)
    src = open_rgb(Path(spec.crop["image"]).read_bytes())
    obj = src.crop(Box(*spec.crop["box"]).integer(src.size))
    inner = obj.resize((spec.width - 2 * frame, spec.height - 2 * frame), Image.Resampling.LANCZOS)
    patch = Image.new("RGBA", (spec.width, spec.height), (255, 255, 255, 255))
    patch.paste(inner.convert("RGBA"), (frame, frame))
    return patch


def render_target(spec: TargetSpec) -> Image.Image:
    """The RGBA patch of one target instance (deterministic: the same spec gives the same pixels)."""
    if spec.kind in ("shape", "count"):
        return _render_shape(spec)
    if spec.kind == "text":
        return _render_sign(spec)
    if spec.kind == "crop":
        return _render_crop(spec)
    raise ValueError(f"unknown target kind {spec.kind!r}")


def text_font_size(sign_height: int) -> int:
    return max(MIN_TEXT_PX, int(sign_height * 0.55))


def sign_size(text: str, area: float) -> tuple[int, int]:
    """(width, height) of a sign of about ``area`` px whose text fits, never below the legibility floor."""
    font = ImageFont.load_default(size=100)
    x1, _, x2, _ = font.getbbox(text)
    aspect = (x2 - x1) / 100 * 0.55 + 0.6  # sign width / height: text at 0.55 x height, 0.3 x height padding a side
    h = max(math.sqrt(area / aspect), MIN_TEXT_PX / 0.55)
    return round(h * aspect), round(h)


def text_distractors(text: str, rng: random.Random, n: int = 3) -> list[str]:
    """Plausible misreadings: one character changed, two neighbours swapped, another character changed."""
    out: list[str] = []
    for attempt in range(50):
        chars = list(text)
        i = rng.randrange(len(chars))
        if attempt % 3 == 1 and len(chars) > 1:
            j = min(i + 1, len(chars) - 1) if i + 1 < len(chars) else i - 1
            chars[i], chars[j] = chars[j], chars[i]
        else:
            chars[i] = rng.choice([c for c in TEXT_ALPHABET if c != chars[i]])
        cand = "".join(chars)
        if cand != text and cand not in out:
            out.append(cand)
        if len(out) == n:
            break
    return out


class SyntheticParams(SourceParams):
    out_dir: str  # composites are written here (created); keep it outside `path`
    targets: list[Literal["text", "shape", "crop", "count"]] = ["text", "shape", "shape", "count"]  # noqa: RUF012
    composites_per_background: int = Field(1, ge=1)
    max_backgrounds: int | None = Field(None, ge=1)
    crops_from: str | None = None  # objects .jsonl / COCO .json whose boxes are cut out as `crop` targets
    crops_root: str | None = None  # image root of `crops_from` (default: its folder)
    min_area_frac: float = Field(0.0005, gt=0, lt=1)
    max_area_frac: float = Field(0.05, gt=0, lt=1)
    difficulty: float = Field(0.5, ge=0, le=1)  # 0: targets near max_area_frac; 1: near min_area_frac
    region: list[float] = [0.0, 0.0, 1.0, 1.0]  # noqa: RUF012 (where targets may go, normalized xyxy)
    margin: float = Field(0.5, ge=0)  # spatial-question margin (see the `questions` source)
    choices: int = Field(4, ge=0)
    seed: int = 0


@source_registry.register("synthetic")
class SyntheticSource(Source):
    """Composites of real backgrounds + exactly-known targets; questions with exact answers and boxes."""

    Params = SyntheticParams

    def check_dependencies(self) -> None:
        p = self.params
        if p.min_area_frac > p.max_area_frac:
            raise RecipeError(f"source {self.name!r}: min_area_frac must be <= max_area_frac")
        if len(p.region) != 4 or not (0 <= p.region[0] < p.region[2] <= 1 and 0 <= p.region[1] < p.region[3] <= 1):
            raise RecipeError(f"source {self.name!r}: region must be normalized [x1, y1, x2, y2] with x1 < x2, y1 < y2")
        if not p.targets:
            raise RecipeError(f"source {self.name!r}: `targets` is empty")
        if sum(t == "shape" for t in p.targets) + ("count" in p.targets) > len(SHAPES):
            raise RecipeError(f"source {self.name!r}: at most {len(SHAPES)} shape kinds per composite")
        if "crop" in p.targets and not p.crops_from:
            raise RecipeError(f"source {self.name!r}: `crop` targets need `crops_from` (an annotations file)")
        if p.targets.count("text") > 1 or p.targets.count("crop") > 1 or p.targets.count("count") > 1:
            raise RecipeError(f"source {self.name!r}: at most one text, one crop and one count target per "
                              "composite (each must be nameable uniquely)")
        self._crop_cache: list[dict[str, Any]] | None = None

    def _crops(self) -> list[dict[str, Any]]:
        if not self.params.crops_from:
            return []
        if self._crop_cache is not None:
            return self._crop_cache
        ann = Path(self.params.crops_from).expanduser().resolve()
        root = Path(self.params.crops_root).expanduser().resolve() if self.params.crops_root else ann.parent
        try:
            images = [im for im in load_annotated_images(ann, root) if isinstance(im, AnnotatedImage)]
        except ValueError as e:
            raise RecipeError(f"source {self.name!r}: crops_from: {e}") from None
        crops = [{"image": str(im.image_path), "box": list(o.box.as_tuple()), "label": o.label}
                 for im in images if im.image_path.is_file() for o in im.objects]
        if not crops:
            raise RecipeError(f"source {self.name!r}: crops_from {str(ann)!r} has no usable object boxes")
        self._crop_cache = crops
        return crops

    def backgrounds(self) -> list[Path]:
        root, out = self.root, Path(self.params.out_dir).expanduser().resolve()
        files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
                       and not p.is_relative_to(out))
        return files[: self.params.max_backgrounds] if self.params.max_backgrounds else files

    def read(self) -> Iterator[dict[str, Any] | Reject]:
        out = Path(self.params.out_dir).expanduser().resolve()
        out.mkdir(parents=True, exist_ok=True)
        crops = self._crops()
        for bg in self.backgrounds():
            bg_key = str(bg.relative_to(self.root).with_suffix(""))
            try:
                background = open_rgb(bg.read_bytes())
            except DecodeError as e:
                yield self.reject(bg_key, e.reason, f"{bg.name}: {e}")
                continue
            for i in range(self.params.composites_per_background):
                key = f"{bg_key}-{i}"
                rng = random.Random(f"{self.params.seed}:{key}")
                usable = [c for c in crops if Path(c["image"]).resolve() != bg.resolve()]
                specs = self.plan_targets(background.size, rng, usable)
                if isinstance(specs, str):
                    yield self.reject(key, "placement_failed", f"{bg.name}: {specs}")
                    continue
                composite = background.copy()
                for spec in specs:
                    patch = render_target(spec)
                    for x1, y1, _, _ in spec.boxes:
                        composite.paste(patch, (x1, y1), patch)
                path = out / f"{slugify(bg_key)}-{i:02d}.png"
                composite.save(path, format="PNG", compress_level=1)
                yield from self.rows_for(key, bg, path, background.size, specs, rng)

    # ---- planning: sizes and positions ------------------------------------------------------------
    def area_frac(self, rng: random.Random) -> float:
        p = self.params
        lo, hi = math.log(p.min_area_frac), math.log(p.max_area_frac)
        frac = math.exp(hi + (lo - hi) * p.difficulty) * rng.uniform(0.8, 1.2)
        return min(max(frac, p.min_area_frac), p.max_area_frac)

    def plan_targets(self, size: tuple[int, int], rng: random.Random, crops: list[dict[str, Any]]
                     ) -> list[TargetSpec] | str:
        w, h = size
        shapes = rng.sample(SHAPES, len(SHAPES))
        colours = list(SHAPE_COLOURS)
        specs: list[TargetSpec] = []
        for kind in self.params.targets:
            area = self.area_frac(rng) * w * h
            if kind == "text":
                text = "".join(rng.choice(TEXT_ALPHABET) for _ in range(rng.randint(4, 7)))
                sw, sh = sign_size(text, area)
                specs.append(TargetSpec("text", SIGN_LABEL, sw, sh, text=text))
            elif kind == "shape":
                side, shape = max(8, round(math.sqrt(area))), shapes.pop()
                specs.append(TargetSpec("shape", f"small {shape}", side, side, shape=shape, colour=rng.choice(colours)))
            elif kind == "crop":
                if not crops:
                    return "no crop from another image is available"
                crop = rng.choice(crops)
                bw, bh = crop["box"][2] - crop["box"][0], crop["box"][3] - crop["box"][1]
                scale = math.sqrt(area / (bw * bh))
                specs.append(TargetSpec("crop", FRAME_LABEL, max(12, int(bw * scale)), max(12, int(bh * scale)),
                                        crop=crop))
            else:
                n = rng.randint(2, 6)
                side = max(8, round(math.sqrt(area / n)))
                shape = shapes.pop()
                specs.append(TargetSpec("count", f"small {shape}", side, side, shape=shape,
                                        colour=rng.choice(colours), count=n))
        return self.place(specs, size, rng)

    def place(self, specs: list[TargetSpec], size: tuple[int, int], rng: random.Random) -> list[TargetSpec] | str:
        """Seeded non-overlapping positions for every target (whole layout retried up to 10 times)."""
        problem = ""
        for _ in range(10):
            for spec in specs:
                spec.boxes = []
            problem = self._place_once(specs, size, rng)
            if not problem:
                return specs
        return problem

    def _place_once(self, specs: list[TargetSpec], size: tuple[int, int], rng: random.Random) -> str:
        w, h = size
        rx1, ry1, rx2, ry2 = self.params.region
        taken: list[Box] = []

        def free_spot(tw: int, th: int, area: tuple[float, float, float, float]) -> Box | None:
            ax1, ay1, ax2, ay2 = area
            for _ in range(300):
                if ax2 - ax1 < tw or ay2 - ay1 < th:
                    return None
                x, y = rng.randint(int(ax1), int(ax2 - tw)), rng.randint(int(ay1), int(ay2 - th))
                box = Box(x, y, x + tw, y + th)
                pad = Box(x - tw / 4, y - th / 4, x + tw * 1.25, y + th * 1.25)
                if all(pad.intersection_area(t) == 0 for t in taken):
                    return box
            return None

        region = (rx1 * w, ry1 * h, rx2 * w, ry2 * h)
        for spec in specs:
            if spec.kind != "count":
                box = free_spot(spec.width, spec.height, region)
                if box is None:
                    return (f"no free spot for a {spec.width}x{spec.height} {spec.kind} target in region "
                            f"{self.params.region} after 10 layouts")
                taken.append(box)
                spec.boxes = [[int(box.x1), int(box.y1), int(box.x2), int(box.y2)]]
                continue
            side = spec.width * 2 * math.ceil(math.sqrt(spec.count))  # the group lies in a small cluster
            cluster = free_spot(side, side, region)
            if cluster is None:
                return f"no free spot for a cluster of {spec.count} {spec.shape}s"
            cx1, cy1 = cluster.x1, cluster.y1
            for _ in range(spec.count):
                box = free_spot(spec.width, spec.height, (cx1, cy1, cx1 + side, cy1 + side))
                if box is None:
                    return f"cannot fit {spec.count} {spec.shape}s in a {side}x{side} cluster"
                taken.append(box)
                spec.boxes.append([int(box.x1), int(box.y1), int(box.x2), int(box.y2)])
        return ""

    # ---- questions --------------------------------------------------------------------------------
    def rows_for(self, key: str, background: Path, composite: Path, size: tuple[int, int],
                 specs: list[TargetSpec], rng: random.Random) -> Iterator[dict[str, Any] | Reject]:
        p = self.params
        full_key, seed = f"{self.name}/{key}", p.seed
        objects = {id(s): [AnnotatedObject(s.label, Box(*b), "synthetic") for b in s.boxes] for s in specs}
        generated: list[tuple[str, Question | Skip]] = []
        for s in specs:
            objs = objects[id(s)]
            if s.kind == "text":
                q = Question("text", "text", f"What is written on the {s.label}?", s.text, objs,
                             evidence={"rendered_text": s.text})
                generated.append(("synthetic_text", self._choices(q, text_distractors(s.text, rng), full_key)))
            elif s.kind == "shape":
                q = Question("colour", f"colour/{slugify(s.label)}", f"What colour is the {s.label}?", s.colour,
                             objs, evidence={"rendered_rgb": SHAPE_COLOURS[s.colour]})
                pool = pick_distractors(s.colour, SHAPE_COLOURS, 3, f"{full_key}/{q.slug}", seed)
                generated.append(("synthetic_colour", self._choices(q, pool, full_key)))
            elif s.kind == "crop":
                q = Question("object", "object", f"What is shown in the {s.label}?", s.crop["label"], objs,
                             evidence={"crop": s.crop})
                vocab = sorted({c["label"] for c in self._crops()})
                pool = pick_distractors(s.crop["label"], vocab, 3, f"{full_key}/object", seed, disjoint_words=True)
                generated.append(("synthetic_object", self._choices(q, pool, full_key) if pool else q))
        singles = [o for s in specs if s.kind != "count" for o in objects[id(s)]]
        image = AnnotatedImage(key, composite, singles, size, exhaustive=True)
        generated += [("synthetic_spatial", g) for g in
                      spatial_questions(image, p.margin, full_key, seed, choices=p.choices > 0)]
        for s in specs:
            if s.kind == "count":
                group = AnnotatedImage(key, composite, objects[id(s)], size, exhaustive=True)
                generated += [("synthetic_counting", g) for g in
                              counting_questions(group, full_key, seed, p.choices, min_count=1, max_count=12)]
        targets = [asdict(s) for s in specs]
        for category, g in generated:
            if isinstance(g, Skip):
                yield self.reject(f"{key}/{g.slug}", g.reason, g.detail)
                continue
            provenance = {"generator": category, "reader": "synthetic", "background": str(background),
                          "composite": str(composite), "targets": targets, "evidence": g.evidence,
                          "params": {"difficulty": p.difficulty, "min_area_frac": p.min_area_frac,
                                     "max_area_frac": p.max_area_frac, "seed": seed}}
            yield make_row(id=f"{full_key}/{g.slug}", image_path=str(composite), question=g.question,
                           answer=g.answer, source=self.name, boxes=[o.record() for o in g.objects],
                           options=g.options, answer_letter=g.answer_letter, category=category,
                           needs_review=g.needs_review, provenance=provenance)

    def _choices(self, q: Question, distractors: list[str], full_key: str) -> Question:
        if self.params.choices and distractors:
            q.options, q.answer_letter = make_choices(q.answer, distractors, self.params.choices,
                                                      f"{full_key}/{q.slug}", self.params.seed)
        return q


def changed_pixels_bbox(before: np.ndarray, after: np.ndarray) -> tuple[int, int, int, int] | None:
    """Tight (x1, y1, x2, y2) around the pixels that differ (exclusive end), or None if none do.

    >>> a = np.zeros((10, 10, 3), np.uint8); b = a.copy(); b[2:4, 5:8] = 9
    >>> changed_pixels_bbox(a, b)
    (5, 2, 8, 4)
    """
    diff = np.any(before != after, axis=-1)
    ys, xs = np.nonzero(diff)
    if not len(xs):
        return None
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
