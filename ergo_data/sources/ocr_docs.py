"""``ocr_docs``: "What is written ...?" questions from OCR lines read at full resolution (RapidOCR).

Each recognised line becomes one question whose answer is the recognised text, named so that exactly
one line fits:

- ``What is written directly below "ANCHOR"[ on the LABEL]?`` (or ``above``): the anchor is the
  nearest line above (below) that overlaps the target horizontally, its text is unique in the region
  and it was read with at least ``anchor_min_score``; the target must be the anchor's nearest such line;
- ``What is written on the LABEL?`` / ``What is written in the image?`` when the line is the only one.

Lines that cannot be named that way are rejects (``no_anchor``), as are lines shorter than
``min_chars`` and lines touching the edge of an annotated read region (``text_cut_by_region``: a word
cut in half is read confidently as a wrong answer). The relevant region is the target line's box plus the anchor's (label ``answer text`` /
``anchor text``, box source ``ocr``): the crop must show the anchor to be answerable. Lines read with
a score below ``review_below`` are ``needs_review``. With ``annotations`` (objects jsonl / COCO json),
only the annotated boxes (grown by ``context``) are read, e.g. the board of ``queue_time``; otherwise the
whole image, in full-resolution tiles. Options (``choices`` > 0) are other lines of the same region.

>>> page, truth = render_document(["INVOICE 2041", "Total due: 318 EUR"], (800, 300))
>>> page.size, truth[0][0], truth[0][1].x1
((800, 300), 'INVOICE 2041', 60.0)

Reading a folder runs the OCR model (``tests/ergo_data/qa/test_ocr.py`` does, on a rendered receipt)::

    src = OcrDocsSource(name="docs", path="tests/data/qa/docs")
    [(r["question"], r["answer"]) for r in src.read()][1]
    # ('What is written directly below "WAREHOUSE RECEIPT"?', 'Order 4471')
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
from ergo_data.qa.choices import make_choices, normalize_answer
from ergo_data.qa.objects import AnnotatedImage, LoadProblem, image_key, load_annotated_images
from ergo_data.qa.ocr import OcrLine, OcrUnavailableError, check_ocr_installed, shared_engine
from ergo_data.qa.templates import slugify


class OcrDocsParams(SourceParams):
    annotations: str | None = None  # read only these boxes (objects .jsonl / COCO .json, relative to `path`)
    context: float = Field(0.5, ge=0)  # grow each annotated box by this fraction of its sides before reading
    min_score: float = Field(0.5, ge=0, le=1)  # RapidOCR lines scored below are dropped
    review_below: float = Field(0.9, ge=0, le=1)  # answers read with a lower score -> needs_review
    anchor_min_score: float = Field(0.9, ge=0, le=1)
    min_chars: int = Field(2, ge=1)
    max_questions_per_region: int = Field(20, ge=1)
    tile_side: int = Field(1600, ge=64, le=2000)  # full-resolution tiles (RapidOCR shrinks inputs above 2000 px)
    choices: int = Field(4, ge=0)
    seed: int = 0


def _x_overlap(a: Box, b: Box) -> float:
    """Horizontal overlap as a fraction of the narrower box."""
    inter = min(a.x2, b.x2) - max(a.x1, b.x1)
    return max(0.0, inter) / min(a.width, b.width)


def nearest(line: OcrLine, lines: list[OcrLine], direction: str) -> OcrLine | None:
    """The nearest line straight above (``direction="above"``) or below ``line``; None if there is
    none or if two candidates are about equally near (then "directly below X" would be ambiguous)."""
    cy = line.box.center[1]
    sign = -1 if direction == "above" else 1
    cands = sorted((sign * (o.box.center[1] - cy), o) for o in lines
                   if o is not line and sign * (o.box.center[1] - cy) > 0 and _x_overlap(o.box, line.box) >= 0.3)
    if not cands:
        return None
    if len(cands) > 1 and cands[1][0] - cands[0][0] < 0.5 * line.box.height:
        return None
    return cands[0][1]


def line_questions(lines: list[OcrLine], where: str, only_text: str, p: OcrDocsParams
                   ) -> Iterator[tuple[OcrLine, OcrLine | None, str] | tuple[OcrLine, None, None]]:
    """``(target, anchor or None, question)`` for each nameable line, ``(target, None, None)`` otherwise."""
    counts: dict[str, int] = {}
    for ln in lines:
        counts[normalize_answer(ln.text)] = counts.get(normalize_answer(ln.text), 0) + 1
    for t in lines:
        if len(lines) == 1:
            yield t, None, only_text
            continue
        for direction, opposite in (("above", "below"), ("below", "above")):
            a = nearest(t, lines, direction)
            if (a is not None and a.score >= p.anchor_min_score and counts[normalize_answer(a.text)] == 1
                    and nearest(a, lines, opposite) is t and len(a.text) >= p.min_chars):
                yield t, a, f'What is written directly {opposite} "{a.text}"{where}?'
                break
        else:
            yield t, None, None


def cut_by_region(box: Box, region: Box | None, size: tuple[int, int], tolerance: float = 2.0) -> bool:
    """True if ``box`` touches an edge of the read ``region`` that is not an image edge (text cut off).

    >>> cut_by_region(Box(10, 10, 50, 20), Box(10, 0, 100, 100), (200, 200))
    True
    >>> cut_by_region(Box(0, 10, 50, 20), Box(0, 0, 100, 100), (200, 200))
    False
    """
    if region is None:
        return False
    r = Box(*region.integer(size))
    w, h = size
    return ((r.x1 > 0 and box.x1 - r.x1 <= tolerance) or (r.y1 > 0 and box.y1 - r.y1 <= tolerance)
            or (r.x2 < w and r.x2 - box.x2 <= tolerance) or (r.y2 < h and r.y2 - box.y2 <= tolerance))


def render_document(lines: list[str], size: tuple[int, int] = (1000, 700), font_px: int = 40,
                    margin: int = 60) -> tuple[Image.Image, list[tuple[str, Box]]]:
    """A white page with ``lines`` in black (Pillow's bundled font): the page and each line's true box."""
    page = Image.new("RGB", size, "white")
    draw = ImageDraw.Draw(page)
    font = ImageFont.load_default(size=font_px)
    truth, y = [], margin
    for text in lines:
        x1, y1, x2, y2 = draw.textbbox((margin, y), text, font=font)
        draw.text((margin, y), text, fill="black", font=font)
        truth.append((text, Box(x1, y1, x2, y2)))
        y = y2 + font_px
    if y > size[1]:
        raise ValueError(f"{len(lines)} lines at {font_px} px do not fit a page of {size}")
    return page, truth


@source_registry.register("ocr_docs")
class OcrDocsSource(Source):
    """OCR lines -> "What is written ...?" questions, answers = recognised text, boxes with source ``ocr``."""

    Params = OcrDocsParams

    def check_dependencies(self) -> None:
        try:
            check_ocr_installed()
        except OcrUnavailableError as e:
            raise RecipeError(f"source {self.name!r}: {e}") from None

    def regions(self) -> Iterator[tuple[str, Path, list[tuple[str, Box | None]], dict[str, Any]] | Reject]:
        """``(image key, path, [(label, box or None for the whole image)], origin)`` per image."""
        root = self.root
        if self.params.annotations is None:
            for p in sorted(f for f in root.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS):
                rel = str(p.relative_to(root))
                yield image_key(rel), p, [("", None)], {"image": rel}
            return
        ann = Path(self.params.annotations).expanduser()
        ann = ann if ann.is_absolute() else root / ann
        try:
            items = list(load_annotated_images(ann, root))
        except ValueError as e:
            raise RecipeError(f"source {self.name!r}: {e}") from None
        for item in items:
            if isinstance(item, LoadProblem):
                yield self.reject(item.key, item.reason, item.detail)
            elif isinstance(item, AnnotatedImage):
                yield item.key, item.image_path, [(o.label, o.box) for o in item.objects], \
                    {"annotations": ann.name, **{k: v for k, v in item.origin.items() if v is not None}}

    def read(self) -> Iterator[dict[str, Any] | Reject]:
        p = self.params
        engine = shared_engine(p.min_score, p.tile_side)
        for region in self.regions():
            if isinstance(region, Reject):
                yield region
                continue
            key, path, boxes, origin = region
            try:
                image = open_rgb(path.read_bytes())
            except FileNotFoundError:
                yield self.reject(key, "image_missing", f"{path}: file not found")
                continue
            except DecodeError as e:
                yield self.reject(key, e.reason, f"{path.name}: {e}")
                continue
            pixels = np.asarray(image)
            for n, (label, box) in enumerate(boxes):
                region_key = f"{key}/{slugify(label)}-{n}" if box is not None else key
                read_box = box.expand(p.context, image.size) if box is not None else None
                lines = engine.read(pixels, region=read_box)
                yield from self.questions(region_key, path, image.size, label, read_box, lines, origin)

    def questions(self, key: str, path: Path, size: tuple[int, int], label: str, read_box: Box | None,
                  lines: list[OcrLine], origin: dict[str, Any]) -> Iterator[dict[str, Any] | Reject]:
        p = self.params
        if not lines:
            yield self.reject(f"{key}/none", "no_text", f"OCR found no text scored >= {p.min_score} "
                              f"{'in ' + str(read_box.integer(size)) if read_box else 'in the image'}")
            return
        whole, kept = [], []
        for ln in lines:
            (kept if not cut_by_region(ln.box, read_box, size) else whole).append(ln)
        for n, ln in enumerate(whole):
            yield self.reject(f"{key}/cut{n}", "text_cut_by_region", f"{ln.text!r} at {ln.box.integer(size)} touches "
                              f"the edge of the read region {read_box.integer(size)}: probably part of a longer text")
        lines = kept
        if not lines:
            return
        where = f" on the {label}" if label else ""
        only = f"What is written on the {label}?" if label else "What is written in the image?"
        emitted = 0
        for i, (target, anchor, question) in enumerate(line_questions(lines, where, only, p)):
            qkey = f"{key}/line{i}"
            if len(target.text) < p.min_chars:
                yield self.reject(qkey, "text_too_short", f"{target.text!r} has fewer than {p.min_chars} characters")
                continue
            if question is None:
                yield self.reject(qkey, "no_anchor", f"{target.text!r}: no unique, confidently read line directly "
                                  "above or below it to name it by")
                continue
            if emitted >= p.max_questions_per_region:
                yield self.reject(qkey, "too_many_lines", f"only {p.max_questions_per_region} questions per region")
                continue
            emitted += 1
            boxes = [target.box.to_record("answer text", "ocr")]
            if anchor is not None:
                boxes.append(anchor.box.to_record("anchor text", "ocr"))
            options, letter = [], None
            others = [ln.text for ln in lines if ln is not target and ln is not anchor]
            if p.choices and others:
                try:
                    options, letter = make_choices(target.text, others, p.choices, f"{self.name}/{qkey}", p.seed)
                except ValueError:
                    options, letter = [], None
            provenance = {"generator": "ocr", "reader": "ocr_docs", "engine": "rapidocr (PP-OCR det/rec, onnxruntime)",
                          **origin, "score": round(target.score, 4),
                          "anchor": None if anchor is None else {"text": anchor.text, "score": round(anchor.score, 4)},
                          "read_region": None if read_box is None else list(read_box.as_tuple()),
                          "boxes_frame": p.boxes_frame, "review_below": p.review_below}
            yield make_row(id=f"{self.name}/{qkey}", image_path=str(path), question=question, answer=target.text,
                           source=self.name, boxes=boxes, options=options, answer_letter=letter, category="ocr",
                           needs_review=target.score < p.review_below, provenance=provenance)
