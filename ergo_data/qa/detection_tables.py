"""Detection sets kept as one table: CVAT XML ("CVAT for images"), Open Images CSV, Parquet / Hugging Face
(a bbox column, ClassLabel names from the metadata ``datasets`` writes).

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
import json
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from ergo_data.core.boxes import Box
from ergo_data.pipeline.contract import Params
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
from ergo_data.qa.objects import AnnotatedImage, LoadProblem, image_key


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
    if doc.find("image") is None and doc.find("track") is not None:
        raise FormatError(f"{rel}: a \"CVAT for video\" file (<track>s): export the task as \"CVAT for images\"")
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


# ---- Parquet / Hugging Face ---------------------------------------------------------------------
BBOX_FORMATS = {  # how a table's bbox column is read: the named Box converter
    "coco": lambda v, size: Box.from_coco(v),  # [x, y, w, h] absolute pixels (HF object-detection sets)
    "xyxy": lambda v, size: Box.from_xyxy(v, "xyxy bbox"),
    "yolo": Box.from_yolo,  # [cx, cy, w, h] normalised
    "normalized": Box.from_normalized,  # [x1, y1, x2, y2] normalised
}


class TableColumns(Params):
    """Where a Parquet / HF table keeps things; dotted names reach into structs (``objects.bbox``)."""

    image: str = "image"  # a path string, or HF's Image struct {bytes, path}
    bbox: str = "objects.bbox"  # one list of boxes per row
    label: str = "objects.category"  # ClassLabel ids (names from the HF metadata or `names`) or strings
    bbox_format: Literal["coco", "xyxy", "yolo", "normalized"] = "coco"
    key: str | None = None  # a column with a stable image id; default: the image path without suffix
    images_out: str | None = None  # where embedded image bytes are written (needed when the table has them)


def _get(row: dict[str, Any], dotted: str) -> Any:
    for part in dotted.split("."):
        row = row.get(part) if isinstance(row, dict) else None
    return row


def hf_class_names(schema_metadata: dict[bytes, bytes] | None, dotted: str) -> list[str] | None:
    """ClassLabel names of column ``dotted`` from the ``huggingface`` schema metadata that ``datasets`` writes."""
    try:
        spec: Any = json.loads((schema_metadata or {})[b"huggingface"])["info"]["features"]
    except (KeyError, ValueError, TypeError):
        return None
    for part in dotted.split("."):
        while isinstance(spec, dict) and part not in spec and "feature" in spec:
            spec = spec["feature"]
        spec = spec.get(part) if isinstance(spec, dict) else None
    while isinstance(spec, dict) and "names" not in spec and "feature" in spec:
        spec = spec["feature"]
    names = spec.get("names") if isinstance(spec, dict) else None
    return [str(n) for n in names] if isinstance(names, list) else None


def read_parquet(s: Settings, annotations: str | None, names: str | None, cols: TableColumns
                 ) -> Iterator[AnnotatedImage | LoadProblem]:
    """Rows of a Parquet file (or a folder of them: a HF dataset's ``data/``), one image each, with a list of
    boxes in ``cols.bbox`` (``cols.bbox_format``) and their labels in ``cols.label``."""
    import pyarrow.parquet as pq

    if cols.bbox_format not in BBOX_FORMATS:
        raise FormatError(f"bbox_format {cols.bbox_format!r}: one of {sorted(BBOX_FORMATS)}")
    target = inside(s.root, annotations or ".")
    if target is None or not target.exists():
        raise FormatError(f"Parquet annotations {annotations!r} are not under {s.root}")
    files = [target] if target.is_file() else sorted(target.rglob("*.parquet"))
    if not files:
        raise FormatError(f"no .parquet files in {str(target)!r}")
    given = [line.strip() for line in _file(s.root, names, "names")[0].read_text().splitlines() if line.strip()] \
        if names else None
    out_dir = Path(cols.images_out).expanduser() if cols.images_out else None
    for path in files:
        rel = path.relative_to(s.root).as_posix()
        table = pq.read_table(path)
        classes = given or hf_class_names(table.schema.metadata, cols.label)
        for n, row in enumerate(table.to_pylist()):
            yield from _table_row(row, f"{rel} row {n}", rel, classes, cols, out_dir, s)


def _table_row(row: dict[str, Any], where: str, rel: str, classes: list[str] | None, cols: TableColumns,
               out_dir: Path | None, s: Settings) -> Iterator[AnnotatedImage | LoadProblem]:
    image = _get(row, cols.image)
    data, name = (image.get("bytes"), image.get("path")) if isinstance(image, dict) else (None, image)
    key_value = _get(row, cols.key) if cols.key else None
    key = image_key(str(key_value) if key_value is not None else Path(str(name or "")).name or where)
    boxes, labels = _get(row, cols.bbox) or [], _get(row, cols.label) or []
    if len(boxes) != len(labels):
        yield LoadProblem(key, "malformed_row", f"{where}: {len(boxes)} boxes in {cols.bbox!r} but {len(labels)} "
                          f"labels in {cols.label!r}")
        return
    if data:
        if out_dir is None:
            yield LoadProblem(key, "image_not_extracted", f"{where}: the image is embedded in the table; set "
                              "`table.images_out` to a folder to write it to")
            return
        out_dir.mkdir(parents=True, exist_ok=True)
        image_path = out_dir / f"{key.replace('/', '_')}{Path(str(name or '')).suffix or '.img'}"
        if not image_path.is_file() or image_path.read_bytes() != data:
            image_path.write_bytes(data)
        image_rel = str(PurePosixPath(key).with_suffix(image_path.suffix))
    elif isinstance(name, str) and name:
        image_rel = lexical(s.root, s.root / name)
        image_path = inside(s.root, image_rel)
        key = image_key(image_rel) if key_value is None else key
    else:
        yield LoadProblem(key, "image_missing", f"{where}: no image in column {cols.image!r}")
        return
    convert = BBOX_FORMATS[cols.bbox_format]
    raws = []
    for i, (b, lab) in enumerate(zip(boxes, labels)):
        w = f"{where} object {i}"
        if isinstance(lab, str):
            raws.append(RawObject(f"{w} ({lab})", lab, lambda size, b=b: convert(b, size),
                                  pixels=cols.bbox_format in ("coco", "xyxy")))
        elif classes is None or not isinstance(lab, int) or not 0 <= lab < len(classes):
            raws.append(RawObject(w, problem=("unknown_class", (f"{w}: class id {lab!r} is outside the names "
                                              f"({len(classes or [])} classes)"))))
        else:
            raws.append(RawObject(f"{w} ({classes[lab]})", classes[lab], lambda size, b=b: convert(b, size),
                                  pixels=cols.bbox_format in ("coco", "xyxy")))
    w_, h_ = row.get("width"), row.get("height")
    declared = (w_, h_) if isinstance(w_, int) and isinstance(h_, int) else None
    origin = {"annotation": rel, "reader": "parquet", "row": where}
    # an extracted image lies in images_out, outside the root: keyed by the table's key, not its path
    yield from assemble(ImageAnnotation(image_rel, raws, origin, declared), image_path, s, key if data else None)


def read(fmt: str, s: Settings, annotations: str | None, *, names: str | None = None, images: str | None = None,
         table: TableColumns | None = None) -> Iterator[AnnotatedImage | LoadProblem]:
    if fmt == "cvat":
        return read_cvat(s, annotations, images)
    if fmt == "openimages":
        return read_openimages(s, annotations, names, images)
    if fmt == "parquet":
        return read_parquet(s, annotations, names, table or TableColumns())
    raise FormatError(f"unknown detection format {fmt!r}")



