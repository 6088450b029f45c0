"""Annotated images for question generation: objects (label + canonical Box + provenance) per image.

Two annotation layouts are read:

- *objects jsonl* (the layout of ``examples/boxes.jsonl``): one JSON object per line with ``image``
  (path relative to the image root), optional ``width``/``height``, ``objects``
  ``[{label, box_xyxy, box_source?}]`` in absolute pixels, and optional ``exhaustive``: ``true`` (every
  instance of every label present is annotated) or a list of such labels;
- *COCO json*: ``images`` / ``annotations`` (``bbox`` = ``[x, y, w, h]``) / ``categories``.

Exhaustiveness matters: counting a label, or calling an object "the leftmost car", is only verifiable
when every instance of the label is annotated.

>>> images = list(load_annotated_images("examples/boxes.jsonl", "examples"))
>>> quokka = [im for im in images if im.key == "imgaug_quokka"][0]
>>> quokka.objects[0].label, quokka.objects[0].box.x2, quokka.is_exhaustive("animal")
('animal', 550.0, False)
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from ergo_data.core.boxes import Box, BoxError, Size
from ergo_data.core.files import load_json_file
from ergo_data.core.schema import BOX_SOURCES


@dataclass(frozen=True)
class AnnotatedObject:
    """One annotated object: ``label``, canonical ``box``, and where the box came from (``source``)."""

    label: str
    box: Box
    source: str = "annotation"

    def record(self, label: str | None = None) -> dict[str, Any]:
        return self.box.to_record(self.label if label is None else label, self.source)


@dataclass
class AnnotatedImage:
    """An image with its objects; ``exhaustive`` is True (all labels) or the set of exhaustive labels."""

    key: str
    image_path: Path
    objects: list[AnnotatedObject]
    size: Size | None = None
    exhaustive: bool | frozenset[str] = False
    origin: dict[str, Any] = field(default_factory=dict)

    def is_exhaustive(self, label: str) -> bool:
        return self.exhaustive is True or (isinstance(self.exhaustive, frozenset) and label in self.exhaustive)

    def label_counts(self) -> Counter:
        return Counter(o.label for o in self.objects)

    def instances(self, label: str) -> list[AnnotatedObject]:
        return [o for o in self.objects if o.label == label]


@dataclass(frozen=True)
class LoadProblem:
    """An image or annotation that cannot be used: ``reason`` code and a sentence naming the item."""

    key: str
    reason: str
    detail: str


def box_source_of(value: Any, default: str) -> str:
    """Map a free-text ``box_source`` (e.g. ``"human (hand-drawn, ...)"``) to a provenance in BOX_SOURCES.

    >>> box_source_of("human (hand-drawn, checked)", "annotation"), box_source_of(None, "annotation")
    ('human', 'annotation')
    """
    if isinstance(value, str) and value.strip():
        head = value.strip().split()[0].lower()
        if head in BOX_SOURCES:
            return head
    return default


def image_key(relative: str) -> str:
    """Stable key of an image from its path relative to the root: the path without its suffix."""
    return str(PurePosixPath(relative).with_suffix(""))


def root_key(root: Path, relative: str, resolved: Path) -> str:
    """Stable key of an image named ``relative`` (absolute or not) whose file is ``resolved`` under ``root``:
    its path relative to the root, without suffix, symlinks not followed; never an absolute path.

    >>> root_key(Path("/data/set"), "/data/set/DJI-00760/a.jpg", Path("/data/set/DJI-00760/a.jpg"))
    'DJI-00760/a'
    """
    lexical = Path(os.path.normpath(root / relative))
    return image_key((lexical if lexical.is_relative_to(root) else resolved).relative_to(root).as_posix())


def _exhaustive(value: Any, default: bool) -> bool | frozenset[str]:
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return frozenset(value)
    raise ValueError(f"'exhaustive' must be true/false or a list of labels, got {value!r}")


def _resolve(root: Path, relative: str) -> Path | None:
    try:
        p = (root / relative).resolve()
    except (OSError, ValueError):
        return None
    return p if p.is_relative_to(root) else None


def load_annotated_images(annotations: str | Path, root: str | Path, exhaustive: bool = False,
                          default_box_source: str = "annotation") -> Iterator[AnnotatedImage | LoadProblem]:
    """Yield the images of an objects-jsonl or COCO json file (by suffix: ``.jsonl`` / ``.json``).

    Raises ValueError naming the file if it cannot be read at all; bad lines/images are LoadProblems.
    """
    ann, root = Path(annotations), Path(root).resolve()
    if not ann.is_file():
        raise ValueError(f"annotations file {str(ann)!r} does not exist")
    if ann.suffix.lower() == ".jsonl":
        yield from _read_objects_jsonl(ann, root, exhaustive, default_box_source)
    elif ann.suffix.lower() == ".json":
        yield from _read_coco(ann, root, exhaustive, default_box_source)
    else:
        raise ValueError(f"annotations file {ann.name!r}: expected .jsonl (objects per line) or .json (COCO)")


def _read_objects_jsonl(path: Path, root: Path, exhaustive: bool, default_source: str
                        ) -> Iterator[AnnotatedImage | LoadProblem]:
    with open(path, "rb") as f:
        for lineno, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            where = f"{path.name}:{lineno}"
            try:
                obj = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                yield LoadProblem(f"line{lineno}", "malformed_json", f"{where}: {e}")
                continue
            rel = obj.get("image") if isinstance(obj, dict) else None
            if not isinstance(rel, str) or not rel:
                yield LoadProblem(f"line{lineno}", "image_missing", f"{where}: no 'image' path")
                continue
            image_path = _resolve(root, rel)
            if image_path is None:
                yield LoadProblem(image_key(rel), "path_escapes_root", f"{where}: image {rel!r} escapes {root}")
                continue
            # from the resolved path: an absolute `image` under the root gives the same id on every machine
            key = root_key(root, rel, image_path)
            try:
                objects = [_object(o, i, default_source) for i, o in enumerate(obj.get("objects") or [])]
                exh = _exhaustive(obj.get("exhaustive"), exhaustive)
            except (ValueError, TypeError, KeyError) as e:
                yield LoadProblem(key, "bad_annotation", f"{where}: {e}")
                continue
            w, h = obj.get("width"), obj.get("height")
            size = (int(w), int(h)) if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 else None
            yield AnnotatedImage(key, image_path, objects, size, exh,
                                 {"file": path.name, "line": lineno, "image": rel,
                                  "license": obj.get("license"), "origin": obj.get("source")})


def _object(o: Any, i: int, default_source: str) -> AnnotatedObject:
    if not isinstance(o, dict) or not isinstance(o.get("label"), str) or not o["label"].strip():
        raise ValueError(f"objects[{i}] needs a non-empty 'label'")
    xyxy = o.get("box_xyxy")
    if not isinstance(xyxy, list):
        raise TypeError(f"objects[{i}] ({o['label']!r}) needs 'box_xyxy' [x1, y1, x2, y2]")
    try:
        box = Box(*xyxy) if len(xyxy) == 4 else None
    except BoxError as e:
        raise ValueError(f"objects[{i}] ({o['label']!r}): {e}") from None
    if box is None:
        raise ValueError(f"objects[{i}] ({o['label']!r}): box_xyxy needs 4 numbers, got {xyxy!r}")
    return AnnotatedObject(o["label"].strip(), box, box_source_of(o.get("box_source"), default_source))


def _read_coco(path: Path, root: Path, exhaustive: bool, default_source: str) -> Iterator[AnnotatedImage | LoadProblem]:
    from ergo_data.core.files import coco_index

    data = load_json_file(path)
    if not isinstance(data, dict) or not all(isinstance(data.get(k), list) for k in ("images", "annotations")):
        raise ValueError(f"COCO annotations {path.name!r}: need 'images' and 'annotations' lists")
    images, cats, by_image = coco_index(data)
    for image_id in sorted(images, key=str):
        im = images[image_id]
        rel = str(im.get("file_name", ""))
        image_path = _resolve(root, rel) if rel else None
        if image_path is None:
            yield LoadProblem(image_key(rel) if rel else f"image{image_id}", "path_escapes_root",
                              f"{path.name}: image {image_id} file_name {rel!r} is not under {root}")
            continue
        key = root_key(root, rel, image_path)
        objects, problem = [], None
        for ann in sorted(by_image.get(image_id, []), key=lambda a: str(a.get("id"))):
            if ann.get("iscrowd"):
                problem = f"annotation {ann.get('id')} is a crowd box (a group, not one object)"
                continue
            try:
                box = Box.from_coco(ann.get("bbox") or [])
            except BoxError as e:
                yield LoadProblem(key, "bad_annotation", f"{path.name}: annotation {ann.get('id')}: {e}")
                objects = None
                break
            objects.append(AnnotatedObject(cats.get(ann.get("category_id"), str(ann.get("category_id"))), box,
                                           default_source))
        if objects is None:
            continue
        w, h = im.get("width"), im.get("height")
        size = (int(w), int(h)) if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 else None
        # a crowd box means some instances are not boxed one by one: nothing on this image is exhaustive
        yield AnnotatedImage(key, image_path, objects, size, False if problem else exhaustive,
                             {"file": path.name, "image_id": image_id, "image": rel, "crowd": problem})
