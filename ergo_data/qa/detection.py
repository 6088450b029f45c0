"""Detection sets in their own layouts -> annotated images: YOLO, Pascal VOC, LabelMe (CVAT, Open Images
and Parquet/Hugging Face tables in ``detection_tables``).

Each reader turns the set's files into ``AnnotatedImage`` (label + canonical ``Box`` per object, the image
path and provenance: file and line) or ``LoadProblem`` (a reason code and a sentence naming the file and
line). A bad object is its own problem and the image keeps its good objects, but the bad object's label
stops being exhaustive on that image (counting it would be wrong). Ids come from the image path relative
to the source root, so the same set at another path gives the same ids.

No reader library is used (checked: globox 2.9.0, supervision 0.31.2, datumaro 1.13.12): globox (36 kB,
numpy/rich/tqdm) fails a whole file on one bad line with "Syntax error in txt annotation file." and no
line number; supervision (av, scipy, matplotlib, requests) stops the whole load at the first bad line
(naming the file, not the line) and reads an image without a label file as an empty one; datumaro pins
pyarrow~=25, pandas~=2.3 and pillow~=12 against our 26 / 3.1 / 13. None says which line is wrong and goes
on. The formats are small: the stdlib's csv, json and ElementTree read them, with the file and line (or
object) in every problem.

>>> images = [im for im in read_detection("yolo", "tests/data/detection", exhaustive=True)
...           if isinstance(im, AnnotatedImage)]
>>> doll = [im for im in images if im.key == "images/doll"][0]
>>> doll.objects[0].label, doll.is_exhaustive("doll"), doll.origin["labels"]
('doll', True, 'labels/doll.txt')
"""

from __future__ import annotations

import os
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ergo_data.core.boxes import Box, BoxError, Size
from ergo_data.core.files import IMAGE_EXTENSIONS, EncodingProblem, load_json_file
from ergo_data.core.imageio import DecodeError, read_info
from ergo_data.qa.objects import AnnotatedImage, AnnotatedObject, LoadProblem, image_key, root_key

FORMATS = ("yolo", "voc", "labelme", "cvat", "openimages", "parquet")
NAMES_FILES = ("data.yaml", "dataset.yaml", "classes.txt", "obj.names", "classes.names")


class FormatError(ValueError):
    """The set cannot be read at all (no names, a broken names file): a recipe error naming the file."""


@dataclass
class Settings:
    """What every reader needs besides its files (the source's parameters)."""

    root: Path
    exhaustive: bool | frozenset[str] = False
    box_source: str = "annotation"
    classes: frozenset[str] | None = None  # the expected class names; a label outside them is a reject
    tolerance_px: float = 1.0  # a box overshooting the image by at most this is clamped
    stored_frame: bool = False  # boxes refer to the stored pixels (before EXIF orientation): sizes are stored ones


@dataclass
class RawObject:
    """One object as the file gives it: ``label``, a ``convert`` from the image size to a Box (raises
    BoxError), and ``where`` (``file:line`` or ``file object N``). ``problem`` = (reason, detail) when the
    line is already known to be bad (unknown class, malformed)."""

    where: str
    label: str | None = None
    convert: Callable[[Size], Box] | None = None
    pixels: bool = True  # absolute pixels (checked for "normalised given as pixels")
    problem: tuple[str, str] | None = None


@dataclass
class ImageAnnotation:
    """One image's annotation as read from its file(s), before any check against the image."""

    rel: str  # image path relative to the root, as the annotation names it
    objects: list[RawObject]
    origin: dict[str, Any] = field(default_factory=dict)
    declared_size: Size | None = None
    not_exhaustive: frozenset[str] | bool = frozenset()  # labels (or all: True) known to be incomplete


def relative_key(root: Path, path: Path) -> str:
    """The stable key of a file under ``root``: its relative path without suffix (never absolute).

    >>> relative_key(Path("/data/set"), Path("/data/set/images/a.jpg"))
    'images/a'
    """
    return image_key(path.relative_to(root).as_posix())


def lexical(root: Path, path: Path) -> str:
    """``path`` relative to ``root`` with ``..`` folded but symlinks not followed (as given when outside).

    >>> lexical(Path("/set"), Path("/set/labelme/../images/a.jpg"))
    'images/a.jpg'
    """
    p = Path(os.path.normpath(path))
    return p.relative_to(root).as_posix() if p.is_relative_to(root) else str(path)


def inside(root: Path, relative: str | Path) -> Path | None:
    """``relative`` resolved under ``root``; None when it escapes (``..``, absolute elsewhere, symlink)."""
    try:
        p = (root / relative).resolve()
    except (OSError, ValueError):
        return None
    return p if p.is_relative_to(root) else None


def _problem_reason(e: BoxError) -> str:
    text = str(e)
    if "not normalised" in text:
        return "box_not_normalised"
    if "not a number" in text or "expected" in text or "non-finite" in text:
        return "malformed_line"
    return "box_degenerate"


def _check_box(raw: RawObject, size: Size, tol: float) -> Box | tuple[str, str]:
    try:
        box = raw.convert(size)  # type: ignore[misc]
    except BoxError as e:
        return _problem_reason(e), f"{raw.where}: {e}"
    w, h = size
    if raw.pixels and max(box.as_tuple()) <= 1.0 and min(w, h) > 8:
        return "box_looks_normalised", (f"{raw.where}: box {box.to_xyxy()} lies within [0, 1] on a {w}x{h} "
                                        "image: normalised coordinates given as pixels?")
    if box.x1 < -tol or box.y1 < -tol or box.x2 > w + tol or box.y2 > h + tol:
        return "box_outside_image", f"{raw.where}: box {[round(v, 2) for v in box.to_xyxy()]} is outside the {w}x{h} image"
    try:
        return box.clamp(size)
    except BoxError as e:
        return "box_outside_image", f"{raw.where}: {e}"


def assemble(ann: ImageAnnotation, image_path: Path | None, s: Settings, key: str | None = None
             ) -> Iterator[AnnotatedImage | LoadProblem]:
    """Check one image's objects against the image file: problems per object, then the image (if usable).
    ``key`` defaults to the image's path relative to the root."""
    where = ann.origin.get("annotation", ann.rel)
    if image_path is None:  # keyed by the annotation that names it: the path itself may be absolute
        key = f"{image_key(where)}/{Path(ann.rel).stem}"
        yield LoadProblem(key, "path_escapes_root", f"{where}: image {ann.rel!r} is not under {s.root}")
        return
    key = key or root_key(s.root, ann.rel, image_path)
    if not image_path.is_file():
        yield LoadProblem(key, "image_missing", f"{where}: annotation without its image ({ann.rel} not found)")
        return
    try:
        info = read_info(image_path.read_bytes())
        size = info.stored_size if s.stored_frame else info.size
    except DecodeError as e:
        yield LoadProblem(key, e.reason, f"{ann.rel}: {e}")
        return
    if ann.declared_size and ann.declared_size != size:
        dw, dh = ann.declared_size
        yield LoadProblem(key, "size_mismatch", f"{where}: declares a {dw}x{dh} image but {ann.rel} is "
                          f"{size[0]}x{size[1]}: boxes drawn on another version of the image")
        return
    objects: list[AnnotatedObject] = []
    incomplete: set[str] = set(ann.not_exhaustive) if ann.not_exhaustive is not True else set()
    all_incomplete = ann.not_exhaustive is True
    for i, raw in enumerate(ann.objects):
        problem = raw.problem
        if problem is None and s.classes is not None and raw.label not in s.classes:
            problem = ("unknown_class", (f"{raw.where}: label {raw.label!r} is not one of the source's classes "
                       f"{sorted(s.classes)}"))
        if problem is None:
            checked = _check_box(raw, size, s.tolerance_px)
            if isinstance(checked, Box):
                objects.append(AnnotatedObject(raw.label or "", checked, s.box_source))
                continue
            problem = checked
        yield LoadProblem(f"{key}/object{i}", problem[0], problem[1])
        if raw.label is None:
            all_incomplete = True
        else:
            incomplete.add(raw.label)
    if not objects:
        if not ann.objects:
            yield LoadProblem(key, "no_objects", f"{where}: no object annotated ({ann.rel}): no question to ask")
        return
    yield AnnotatedImage(key, image_path, objects, size, _exhaustive(s.exhaustive, objects, incomplete,
                                                                     all_incomplete),
                         {**ann.origin, "image": ann.rel})


def _exhaustive(setting: bool | frozenset[str], objects: list[AnnotatedObject], incomplete: set[str],
                all_incomplete: bool) -> bool | frozenset[str]:
    if all_incomplete or setting is False:
        return False
    labels = {o.label for o in objects} if setting is True else set(setting)
    if not incomplete and setting is True:
        return True
    return frozenset(labels - incomplete)


# ---- YOLO ---------------------------------------------------------------------------------------
def yolo_names(root: Path, names: str | None) -> tuple[list[str], str]:
    """Class names from a data.yaml (``names`` list or ``{id: name}``, ``nc`` checked) or a names file (one a
    line); without ``names`` the first of NAMES_FILES at the root. Returns ``(names, file)``."""
    path = inside(root, names) if names else next((root / n for n in NAMES_FILES if (root / n).is_file()), None)
    if path is None or not path.is_file():
        raise FormatError(f"YOLO set {str(root)!r}: no class names ({names or ' / '.join(NAMES_FILES)} not found); "
                          "set `names` to the data.yaml or names file")
    rel = path.relative_to(root).as_posix()
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{rel}: not UTF-8 ({e.reason})") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise FormatError(f"{rel}: malformed YAML ({e})") from None
        raw = data.get("names") if isinstance(data, dict) else None
        if isinstance(raw, dict):
            if sorted(raw) != list(range(len(raw))):
                raise FormatError(f"{rel}: `names` ids must be 0..{len(raw) - 1}, got {sorted(raw)}")
            raw = [raw[i] for i in range(len(raw))]
        if not isinstance(raw, list) or not raw:
            raise FormatError(f"{rel}: needs `names`, a list or {{id: name}} of the classes")
        if "nc" in data and data["nc"] != len(raw):
            raise FormatError(f"{rel}: nc = {data['nc']} but `names` has {len(raw)} entries")
        out = [str(n).strip() for n in raw]
    else:
        out = [line.strip() for line in text.splitlines() if line.strip()]
    if not out or len(set(out)) != len(out) or not all(out):
        raise FormatError(f"{rel}: class names must be non-empty and unique, got {out}")
    return out, rel


def _yolo_line(text: str, where: str, names: list[str]) -> RawObject:
    parts = text.split()
    if len(parts) != 5:
        kind = "a polygon (segmentation) line" if len(parts) > 5 and len(parts) % 2 == 1 else f"{len(parts)} values"
        return RawObject(where, problem=("malformed_line", f"{where}: expected `class cx cy w h`, got {kind}"))
    try:
        cid = float(parts[0])
    except ValueError:
        return RawObject(where, problem=("malformed_line", f"{where}: class id {parts[0]!r} is not a number"))
    if not cid.is_integer() or not 0 <= cid < len(names):
        return RawObject(where, problem=("unknown_class", (f"{where}: class id {parts[0]} is outside the names "
                                         f"(0..{len(names) - 1})")))
    label, coords = names[int(cid)], parts[1:]
    return RawObject(where, label, lambda size: Box.from_yolo(coords, size), pixels=False)


def yolo_label_path(image: Path, root: Path) -> Path:
    """Where a YOLO set keeps an image's labels: its path with the last ``images`` folder replaced by
    ``labels`` (Ultralytics' rule) if the set has such a folder, else a ``.txt`` beside the image."""
    parts = image.relative_to(root).parts
    if "images" in parts[:-1]:
        i = len(parts) - 2 - parts[:-1][::-1].index("images")
        return root.joinpath(*parts[:i], "labels", *parts[i + 1:]).with_suffix(".txt")
    return image.with_suffix(".txt")


def read_yolo(s: Settings, names: str | None) -> Iterator[AnnotatedImage | LoadProblem]:
    root = s.root
    classes, names_file = yolo_names(root, names)
    if s.classes is not None and not set(classes) <= s.classes:
        raise FormatError(f"{names_file}: names {sorted(set(classes) - s.classes)} are not in the source's classes")
    images = sorted(p for p in root.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
    claimed: set[Path] = set()
    for image in images:
        rel = image.relative_to(root).as_posix()
        label_path = yolo_label_path(image, root)
        lrel = label_path.relative_to(root).as_posix()
        if not label_path.is_file():
            yield LoadProblem(relative_key(root, image), "no_label_file",
                              f"{rel}: no label file ({lrel} not found): unlabelled, or a background image")
            continue
        claimed.add(label_path)
        lines = _text_lines(label_path, lrel)
        if isinstance(lines, LoadProblem):
            yield LoadProblem(relative_key(root, image), lines.reason, lines.detail)
            continue
        raws = [_yolo_line(t, f"{lrel}:{n}", classes) for n, t in lines]
        origin = {"annotation": lrel, "labels": lrel, "names": names_file, "reader": "yolo"}
        yield from assemble(ImageAnnotation(rel, raws, origin), inside(root, rel), s)
    image_dirs = {p.parent for p in images}
    for txt in sorted(root.rglob("*.txt")):
        if txt in claimed or txt.name in NAMES_FILES or not ("labels" in txt.relative_to(root).parts[:-1]
                                                             or txt.parent in image_dirs):
            continue
        trel = txt.relative_to(root).as_posix()
        yield LoadProblem(relative_key(root, txt), "image_missing", f"{trel}: label file without its image")


def _text_lines(path: Path, rel: str) -> list[tuple[int, str]] | LoadProblem:
    try:
        text = path.read_bytes().decode("utf-8")
    except UnicodeDecodeError as e:
        return LoadProblem(rel, "bad_encoding", f"{rel}: not UTF-8 ({e.reason} at byte {e.start})")
    return [(n, t.strip()) for n, t in enumerate(text.splitlines(), 1) if t.strip()]


# ---- Pascal VOC ---------------------------------------------------------------------------------
def _xml(path: Path, rel: str) -> ET.Element | LoadProblem:
    try:
        return ET.fromstring(path.read_bytes())
    except ET.ParseError as e:
        line, col = e.position
        return LoadProblem(image_key(rel), "malformed_xml", f"{rel}:{line}: malformed XML ({e.msg if hasattr(e, 'msg') else e}, "
                           f"column {col})")


def _int_text(node: ET.Element | None, tag: str) -> int | None:
    text = node.findtext(tag) if node is not None else None
    try:
        return int(float(text)) if text is not None else None
    except ValueError:
        return None


def read_voc(s: Settings, annotations: str | None, images: str | None) -> Iterator[AnnotatedImage | LoadProblem]:
    """One XML per image (``Annotations/`` by default); the image is ``<filename>`` in ``images``
    (``JPEGImages/`` by default, else beside the XML). ``<path>`` is never used: it is absolute."""
    root = s.root
    folder = _folder(root, annotations, "Annotations")
    image_dir = _folder(root, images, "JPEGImages") if images or (root / "JPEGImages").is_dir() else None
    for xml_path in sorted(folder.rglob("*.xml")):
        rel = xml_path.relative_to(root).as_posix()
        doc = _xml(xml_path, rel)
        if isinstance(doc, LoadProblem):
            yield doc
            continue
        filename = (doc.findtext("filename") or "").strip()
        if not filename:
            yield LoadProblem(image_key(rel), "image_missing", f"{rel}: no <filename>")
            continue
        base = image_dir if image_dir is not None else xml_path.parent
        image_rel = lexical(root, base / filename)
        image_path = inside(root, image_rel)
        size_node = doc.find("size")
        w, h = _int_text(size_node, "width"), _int_text(size_node, "height")
        raws = [_voc_object(obj, f"{rel} object {i + 1}") for i, obj in enumerate(doc.iter("object"))]
        origin = {"annotation": rel, "reader": "voc"}
        yield from assemble(ImageAnnotation(image_rel, raws, origin, (w, h) if w and h else None), image_path, s)


def _voc_object(obj: ET.Element, where: str) -> RawObject:
    name = (obj.findtext("name") or "").strip()
    bnd = obj.find("bndbox")
    if not name or bnd is None:
        return RawObject(where, name or None, problem=("malformed_object", f"{where}: needs <name> and <bndbox>"))
    values = [bnd.findtext(t) for t in ("xmin", "ymin", "xmax", "ymax")]
    return RawObject(f"{where} ({name})", name, lambda size: Box.from_voc(values))


def _folder(root: Path, given: str | None, default: str) -> Path:
    if given:
        p = inside(root, given)
        if p is None or not p.is_dir():
            raise FormatError(f"folder {given!r} is not a folder under {root}")
        return p
    return root / default if (root / default).is_dir() else root


# ---- LabelMe ------------------------------------------------------------------------------------
def read_labelme(s: Settings, annotations: str | None) -> Iterator[AnnotatedImage | LoadProblem]:
    """One JSON per image (``shapes`` with ``rectangle`` points, ``imagePath`` relative to the JSON)."""
    root = s.root
    for js in sorted(_folder(root, annotations, ".").rglob("*.json")):
        rel = js.relative_to(root).as_posix()
        try:
            doc = load_json_file(js)
        except EncodingProblem as e:
            yield LoadProblem(image_key(rel), "bad_encoding", f"{rel}: {e}")
            continue
        except ValueError as e:
            yield LoadProblem(image_key(rel), "malformed_json", f"{rel}: {e}")
            continue
        if not isinstance(doc, dict) or "shapes" not in doc or not isinstance(doc.get("imagePath"), str):
            yield LoadProblem(image_key(rel), "not_labelme", f"{rel}: no `shapes` and `imagePath`: not a LabelMe file")
            continue
        image_rel = lexical(root, js.parent / doc["imagePath"].replace("\\", "/"))
        image_path = inside(root, image_rel)
        w, h = doc.get("imageWidth"), doc.get("imageHeight")
        raws = [_labelme_shape(sh, f"{rel} shapes[{i}]") for i, sh in enumerate(doc.get("shapes") or [])]
        origin = {"annotation": rel, "reader": "labelme"}
        declared = (w, h) if isinstance(w, int) and isinstance(h, int) else None
        yield from assemble(ImageAnnotation(image_rel, raws, origin, declared), image_path, s)


def _labelme_shape(sh: Any, where: str) -> RawObject:
    if not isinstance(sh, dict) or not isinstance(sh.get("label"), str) or not sh["label"].strip():
        return RawObject(where, problem=("malformed_object", f"{where}: a shape needs a `label`"))
    label, kind = sh["label"].strip(), sh.get("shape_type") or "polygon"
    if kind != "rectangle":
        return RawObject(where, label, problem=("unsupported_shape", (f"{where} ({label}): shape_type {kind!r}; "
                                                "only rectangles are boxes")))
    points = sh.get("points") or []
    return RawObject(f"{where} ({label})", label, lambda size: Box.from_corners(points, "LabelMe rectangle"))


def read_detection(fmt: str, root: str | Path, annotations: str | None = None, *, names: str | None = None,
                   images: str | None = None, settings: Settings | None = None, table: Any = None, **kw: Any
                   ) -> Iterable[AnnotatedImage | LoadProblem]:
    """The annotated images of a detection set in ``fmt`` (one of FORMATS) under ``root``.

    Raises FormatError when the set cannot be read at all (no names, a folder that is not there).
    """
    s = settings or Settings(Path(root).resolve(), **kw)
    if fmt == "yolo":
        return read_yolo(s, names or annotations)
    if fmt == "voc":
        return read_voc(s, annotations, images)
    if fmt == "labelme":
        return read_labelme(s, annotations)
    from ergo_data.qa import detection_tables

    return detection_tables.read(fmt, s, annotations, names=names, images=images, table=table)
