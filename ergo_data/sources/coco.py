"""COCO-style sets: images + a COCO json; one sample per annotated object with a templated question.

Richer, verifiable questions (spatial, counting, colour) come from the ``questions`` generators.

>>> src = CocoSource(name="terrain", path="examples/coco", annotations="terrain2_coco.json")
>>> rows = list(src.read())
>>> len(rows), rows[0]["answer"], rows[0]["boxes"][0]["x2"]
(5, 'car', 440.0)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ergo_data.core.boxes import Box, BoxError
from ergo_data.core.errors import RecipeError
from ergo_data.core.files import coco_index, load_json_file
from ergo_data.core.schema import make_row
from ergo_data.pipeline.contract import Reject, Source, SourceParams
from ergo_data.pipeline.registry import source_registry


class CocoParams(SourceParams):
    annotations: str  # the COCO json, relative to `path` (or absolute)
    question: str = "What is the object in this region? Locate it, then name it."
    skip_crowd: bool = True


def load_coco(path: Path) -> dict[str, Any]:
    try:
        data = load_json_file(path)
    except (OSError, ValueError) as e:
        raise RecipeError(f"COCO annotations {str(path)!r}: {e}") from None
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise RecipeError(f"COCO annotations {str(path)!r}: need 'images' and 'annotations' lists")
    return data


@source_registry.register("coco")
class CocoSource(Source):
    """One sample per COCO annotation: the object's box is the relevant region, its label the answer."""

    Params = CocoParams

    def read(self) -> Iterator[dict[str, Any] | Reject]:
        root = self.root
        ann_path = Path(self.params.annotations)
        ann_path = ann_path if ann_path.is_absolute() else root / ann_path
        images, cats, by_image = coco_index(load_coco(ann_path))
        for image_id in sorted(by_image, key=str):
            anns = by_image[image_id]
            im = images.get(image_id)
            for ann in sorted(anns, key=lambda a: str(a.get("id"))):
                key = f"{image_id}/{ann.get('id')}"
                if im is None:
                    yield self.reject(key, "image_missing", f"annotation {ann.get('id')}: image_id {image_id} not in images")
                    continue
                path = self.inside_root(root, str(im.get("file_name", "")))
                if path is None:
                    yield self.reject(key, "path_escapes_root", f"file_name {im.get('file_name')!r} escapes {root}")
                    continue
                if self.params.skip_crowd and ann.get("iscrowd"):
                    yield self.reject(key, "crowd_annotation", "iscrowd=1 boxes cover groups, not one object")
                    continue
                try:
                    box = Box.from_coco(ann.get("bbox") or [])
                except BoxError as e:
                    yield self.reject(key, "bad_box", f"annotation {ann.get('id')}: {e}")
                    continue
                label = cats.get(ann.get("category_id"), str(ann.get("category_id")))
                yield make_row(
                    id=f"{self.name}/{key}", image_path=str(path), question=self.params.question, answer=label,
                    source=self.name, boxes=[box.to_record(label, "annotation")], category="object",
                    provenance={"file": ann_path.name, "image_id": image_id, "annotation_id": ann.get("id"),
                                "reader": "coco", "boxes_frame": self.params.boxes_frame},
                )
