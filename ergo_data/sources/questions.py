"""``questions``: verifiable questions generated from box annotations (spatial, counting, colour).

Reads an objects-jsonl (``examples/boxes.jsonl`` layout) or COCO json via ``ergo_data.qa.objects`` and
applies the templates of ``ergo_data.qa.templates``. Every candidate ends as a sample (``category`` =
template, boxes with their provenance, the evidence in ``provenance``) or as a reject whose reason
says why it was skipped (``spatial_ambiguous``, ``count_not_exhaustive``, ``no_unique_referent``...).

>>> src = QuestionsSource(name="qa", path=".", annotations="tests/data/qa/objects.jsonl", templates=["spatial"])
>>> rows = [r for r in src.read() if isinstance(r, dict)]
>>> row = [r for r in rows if r["id"] == "qa/examples/vstar/doll/spatial/light-switch--sink--x"][0]
>>> row["question"], row["answer"], row["options"], [b["source"] for b in row["boxes"]]
('In the image, is the light switch to the left or to the right of the sink?', 'left', ['left', 'right'], ['annotation', 'annotation'])
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import Field

from ergo_data.core.boxes import Box
from ergo_data.core.errors import RecipeError
from ergo_data.core.imageio import DecodeError, ImageSource
from ergo_data.core.schema import BOX_SOURCES, make_row
from ergo_data.pipeline.contract import Reject, Source, SourceParams
from ergo_data.pipeline.registry import source_registry
from ergo_data.qa.detection import FORMATS, FormatError, Settings, read_detection
from ergo_data.qa.detection_tables import TableColumns
from ergo_data.qa.objects import AnnotatedImage, LoadProblem, load_annotated_images
from ergo_data.qa.templates import Question, Skip, colour_questions, counting_questions, spatial_questions

Template = Literal["spatial", "counting", "colour"]
Format = Literal["auto", "jsonl", "coco", *FORMATS]
SUFFIX_FORMAT = {".jsonl": "jsonl", ".json": "coco", ".xml": "cvat", ".csv": "openimages", ".yaml": "yolo",
                 ".yml": "yolo", ".names": "yolo", ".parquet": "parquet"}


class TemplateParams(SourceParams):
    """The knobs of the question templates (shared by ``questions`` and ``detector``)."""

    templates: list[Template] = ["spatial", "counting", "colour"]  # noqa: RUF012 (pydantic copies defaults)
    margin: float = Field(0.5, ge=0)  # spatial/referent margin, in mean box extents
    max_pairs_per_image: int = Field(20, ge=1)
    min_count: int = Field(2, ge=0)
    max_count: int = Field(12, ge=1)
    colour_inner: float = Field(0.6, gt=0, le=1)  # central fraction of the box whose pixels are classified
    colour_review_below: float = Field(0.6, ge=0, le=1)  # dominant-colour pixel share below this -> needs_review
    colour_max_pixels: int = Field(128 * 128, ge=64)  # the box is resized under this before classifying
    choices: int = Field(4, ge=0)  # options per counting/colour question (spatial: 2); 0 = open questions
    shuffle_seed: int = 0


class QuestionsParams(TemplateParams):
    # objects .jsonl / COCO .json / CVAT .xml / Open Images .csv file, or the labels folder of a VOC or LabelMe
    # set, or a YOLO data.yaml / names file; relative to `path` (or absolute); images relative to `path`
    annotations: str | None = None
    format: Format = "auto"  # auto: by the suffix of `annotations` (.jsonl, .json = COCO, .xml = CVAT, .csv, .yaml)
    names: str | None = None  # YOLO data.yaml / names file; Open Images class-descriptions CSV
    images: str | None = None  # VOC / CVAT / Open Images: the images folder under `path`
    classes: list[str] | None = None  # the expected class names: any other label is an `unknown_class` reject
    # true: every instance of every label is annotated; a list: of these labels (a jsonl line's `exhaustive`
    # overrides). YOLO / VOC sets usually box every instance of their classes.
    exhaustive: bool | list[str] = False
    box_source: str = "annotation"  # provenance of boxes whose file does not say (annotation/human/...)
    tolerance_px: float = Field(1.0, ge=0)  # detection formats: a box overshooting by at most this is clamped
    table: TableColumns | None = None  # format parquet: columns (image, bbox, label, bbox_format, key, images_out)


@source_registry.register("questions")
class QuestionsSource(Source):
    """Spatial / counting / colour questions from annotated boxes; skipped candidates are rejects with a reason."""

    Params = QuestionsParams

    def check_dependencies(self) -> None:
        if getattr(self.params, "box_source", "annotation") not in BOX_SOURCES:
            raise RecipeError(f"source {self.name!r}: box_source must be one of {BOX_SOURCES}, "
                              f"got {self.params.box_source!r}")
        if not self.params.templates:
            raise RecipeError(f"source {self.name!r}: `templates` is empty (choose from spatial, counting, colour)")

    def annotations_path(self) -> Path:
        if not self.params.annotations:
            raise RecipeError(f"source {self.name!r}: `annotations` is required for format {self.fmt()!r}")
        p = Path(self.params.annotations).expanduser()
        p = p if p.is_absolute() else self.root / p
        if not p.is_file():
            raise RecipeError(f"source {self.name!r}: annotations file {str(p)!r} does not exist")
        return p

    def fmt(self) -> str:
        """The annotation format: as given, else from the suffix of ``annotations``."""
        if self.params.format != "auto":
            return self.params.format
        suffix = Path(self.params.annotations or "").suffix.lower()
        if suffix not in SUFFIX_FORMAT:
            raise RecipeError(f"source {self.name!r}: cannot tell the format of annotations "
                              f"{self.params.annotations!r}: set `format` to one of jsonl, coco, {', '.join(FORMATS)}")
        return SUFFIX_FORMAT[suffix]

    def annotated_images(self) -> Iterator[AnnotatedImage | LoadProblem]:
        p, fmt = self.params, self.fmt()
        exhaustive = p.exhaustive if isinstance(p.exhaustive, bool) else frozenset(p.exhaustive)
        try:
            if fmt in ("jsonl", "coco"):
                if not isinstance(exhaustive, bool) or p.classes is not None:
                    raise ValueError("`exhaustive` as a list of labels and `classes` are for the detection formats; "
                                     "in a jsonl file give `exhaustive` per line")
                yield from load_annotated_images(self.annotations_path(), self.root, exhaustive, p.box_source)
                return
            settings = Settings(self.root, exhaustive, p.box_source,
                                frozenset(p.classes) if p.classes is not None else None, p.tolerance_px,
                                stored_frame=p.boxes_frame == "stored")
            yield from read_detection(fmt, self.root, p.annotations, names=p.names, images=p.images,
                                      settings=settings, table=p.table)
        except (ValueError, FormatError) as e:
            raise RecipeError(f"source {self.name!r}: {e}") from None

    def read(self) -> Iterator[dict[str, Any] | Reject]:
        fmt = self.fmt()
        origin: dict[str, Any] = {"reader": "questions"}
        if fmt in ("jsonl", "coco"):
            origin["annotations"] = self.annotations_path().name
        else:
            origin["format"] = fmt
        for item in list(self.annotated_images()):
            if isinstance(item, LoadProblem):
                yield self.reject(item.key, item.reason, item.detail)
                continue
            yield from self.questions_for(item, origin)

    def questions_for(self, image: AnnotatedImage, origin: dict[str, Any], needs_review: bool = False
                      ) -> Iterator[dict[str, Any] | Reject]:
        """Rows (or rejects) of every template for one image; ``needs_review`` flags them all (e.g. detector
        labels nobody checked)."""
        p = self.params
        key, seed = f"{self.name}/{image.key}", p.shuffle_seed
        if not image.image_path.is_file():
            yield self.reject(image.key, "image_missing", f"{image.origin.get('image')}: file not found under {self.root}")
            return
        generated: list[Question | Skip] = []
        if "spatial" in p.templates:
            generated += spatial_questions(image, p.margin, key, seed, choices=p.choices > 0,
                                           max_pairs=p.max_pairs_per_image)
        if "counting" in p.templates:
            generated += counting_questions(image, key, seed, p.choices, p.min_count, p.max_count)
        if "colour" in p.templates:
            try:
                pixels_of = self._pixel_reader(image)
            except DecodeError as e:
                yield self.reject(f"{image.key}/colour", e.reason, f"{image.image_path.name}: {e}")
            else:
                generated += colour_questions(image, pixels_of, key, seed, p.choices, p.margin, p.colour_inner,
                                              p.colour_review_below)
        for g in generated:
            if isinstance(g, Skip):
                yield self.reject(f"{image.key}/{g.slug}", g.reason, g.detail)
                continue
            provenance = {"generator": g.template, **origin, **{k: v for k, v in image.origin.items() if v is not None},
                          "evidence": g.evidence, "boxes_frame": p.boxes_frame,
                          "params": {"margin": p.margin, "seed": seed}}
            yield make_row(
                id=f"{key}/{g.slug}", image_path=str(image.image_path), question=g.question, answer=g.answer,
                source=self.name, boxes=[o.record() for o in g.objects], options=g.options,
                answer_letter=g.answer_letter, category=g.template, needs_review=g.needs_review or needs_review,
                provenance=provenance,
            )

    def _pixel_reader(self, image: AnnotatedImage):
        """Crop boxes from the image, decoded once in full (every object's box is cut from it)."""
        src = ImageSource(image.image_path.read_bytes())
        if image.objects:
            src.load()  # decode now: a bad image is one reject, not a crash later; then every crop is a cut

        def pixels_of(box: Box) -> np.ndarray:
            return src.crop_array(box, self.params.colour_max_pixels)

        return pixels_of
