"""Detection sets kept as one table: CVAT XML ("CVAT for images"), Open Images CSV, Parquet / Hugging Face.

Same contract as ``ergo_data.qa.detection``: annotated images, or problems naming the file and line.

>>> from ergo_data.qa.detection import Settings
>>> s = Settings(Path("tests/data/detection").resolve(), exhaustive=True)
>>> images = [im for im in read("cvat", s, "cvat.xml") if isinstance(im, AnnotatedImage)]
>>> sorted(im.key for im in images)[:2]
['images/doll', 'images/queue_time']
"""

from __future__ import annotations

import csv
import io
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ergo_data.core.boxes import Box
from ergo_data.qa.detection import (
    FormatError,
    ImageAnnotation,
    RawObject,
    Settings,
    _folder,
    _xml,
    assemble,
    inside,
    lexical,
)
from ergo_data.qa.objects import AnnotatedImage, LoadProblem


def _file(root: Path, given: str | None, what: str) -> tuple[Path, str]:
    p = inside(root, given) if given else None
    if p is None or not p.is_file():
        raise FormatError(f"{what}: {given!r} is not a file under {root} (set `annotations`)")
    return p, p.relative_to(root).as_posix()


# ---- CVAT ---------------------------------------------------------------------------------------
def read_cvat(s: Settings, annotations: str | None, images: str | None) -> Iterator[AnnotatedImage | LoadProblem]:
    """``<image name= width= height=>`` with ``<box label= xtl= ytl= xbr= ybr=>``; the labels declared in
    ``<meta>`` are the class names (a box with another label is ``unknown_class``)."""
    path, rel = _file(s.root, annotations, "CVAT annotations")
    doc = _xml(path, rel)
    if isinstance(doc, LoadProblem):
        raise FormatError(doc.detail)
    declared = {(n.text or "").strip() for n in doc.iterfind("meta/*/labels/label/name")}
    base = _folder(s.root, images, "images") if images or (s.root / "images").is_dir() else path.parent
    for i, node in enumerate(doc.iter("image")):
        name = (node.get("name") or "").strip()
        image_rel = lexical(s.root, base / name) if name else f"image{i}"
        image_path = inside(s.root, image_rel) if name else None
        w, h = _int_attr(node, "width"), _int_attr(node, "height")
        raws: list[RawObject] = []
        for j, shape in enumerate(node):
            where = f"{rel} image {node.get('id', i)} {shape.tag}[{j}]"
            label = (shape.get("label") or "").strip() or None
            if shape.tag != "box":
                raws.append(RawObject(where, label, problem=("unsupported_shape", f"{where}: only boxes are read")))
            elif float(shape.get("rotation") or 0) % 360:
                raws.append(RawObject(where, label, problem=("rotated_box", (f"{where}: rotated by "
                                                             f"{shape.get('rotation')} degrees"))))
            elif declared and label not in declared:
                raws.append(RawObject(where, label, problem=("unknown_class", (f"{where}: label {label!r} is not "
                                                             f"declared in <labels> {sorted(declared)}"))))
            else:
                values = [shape.get(k) for k in ("xtl", "ytl", "xbr", "ybr")]
                raws.append(RawObject(f"{where} ({label})", label,
                                      lambda size, v=values: Box.from_xyxy(v, "CVAT box")))
        origin = {"annotation": rel, "reader": "cvat", "cvat_image_id": node.get("id")}
        yield from assemble(ImageAnnotation(image_rel, raws, origin, (w, h) if w and h else None), image_path, s)


def _int_attr(node: Any, name: str) -> int | None:
    try:
        return int(float(node.get(name)))
    except (TypeError, ValueError):
        return None


# ---- Open Images --------------------------------------------------------------------------------
OI_COLUMNS = ("ImageID", "LabelName", "XMin", "XMax", "YMin", "YMax")


def read_openimages(s: Settings, annotations: str | None, names: str | None, images: str | None
                    ) -> Iterator[AnnotatedImage | LoadProblem]:
    """The boxes CSV (``ImageID, LabelName, XMin, XMax, YMin, YMax``, normalised; ``IsGroupOf``), the class
    descriptions CSV (``MID,name``, no header) as ``names``, images ``{images}/{ImageID}.jpg``. A group box
    covers several instances: that label is not exhaustive on that image."""
    path, rel = _file(s.root, annotations, "Open Images boxes")
    mids: dict[str, str] = {}
    if names:
        npath, nrel = _file(s.root, names, "Open Images class descriptions")
        for n, row in enumerate(csv.reader(io.StringIO(npath.read_text(encoding="utf-8"))), 1):
            if len(row) != 2:
                raise FormatError(f"{nrel}:{n}: expected `MID,name`, got {row}")
            mids[row[0].strip()] = row[1].strip()
    base = _folder(s.root, images, "images")
    by_image: dict[str, list[RawObject]] = defaultdict(list)
    groups: dict[str, set[str]] = defaultdict(set)
    reader = csv.DictReader(io.StringIO(path.read_text(encoding="utf-8")))
    missing = [c for c in OI_COLUMNS if c not in (reader.fieldnames or [])]
    if missing:
        raise FormatError(f"{rel}: missing columns {missing} (has {reader.fieldnames})")
    for row in reader:
        where = f"{rel}:{reader.line_num}"
        image_id = (row.get("ImageID") or "").strip()
        mid = (row.get("LabelName") or "").strip()
        label = mids.get(mid, mid) if mids else mid
        if mids and mid not in mids:
            by_image[image_id].append(RawObject(where, None, problem=(
                "unknown_class", f"{where}: LabelName {mid!r} is not in the class descriptions")))
        elif str(row.get("IsGroupOf", "0")).strip() == "1":
            groups[image_id].add(label)
            by_image[image_id].append(RawObject(where, label, problem=(
                "group_box", f"{where} ({label}): IsGroupOf=1 boxes a group, not one object")))
        else:
            values = [row.get(k) for k in ("XMin", "XMax", "YMin", "YMax")]
            by_image[image_id].append(RawObject(f"{where} ({label})", label,
                                                lambda size, v=values: Box.from_openimages(v, size), pixels=False))
    for image_id in sorted(by_image):
        matches = sorted(base.glob(f"{image_id}.*")) if image_id and "/" not in image_id else []
        image_rel = lexical(s.root, matches[0] if matches else base / f"{image_id}.jpg")
        image_path = inside(s.root, image_rel)
        origin = {"annotation": rel, "reader": "openimages", "image_id": image_id}
        yield from assemble(ImageAnnotation(image_rel, by_image[image_id], origin,
                                            not_exhaustive=frozenset(groups[image_id])), image_path, s)


def read(fmt: str, s: Settings, annotations: str | None, *, names: str | None = None, images: str | None = None
         ) -> Iterator[AnnotatedImage | LoadProblem]:
    if fmt == "cvat":
        return read_cvat(s, annotations, images)
    if fmt == "openimages":
        return read_openimages(s, annotations, names, images)
    raise FormatError(f"unknown detection format {fmt!r}")



