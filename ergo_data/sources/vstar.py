"""V* bench layout: ``<stem>.json`` beside ``<stem>.<ext>``, in one folder or in category subfolders.

The json has ``question``, ``options`` (``options[0]`` is correct), ``bbox`` (a list of ``[x, y, w, h]``
absolute pixels), ``target_object`` (labels) and optionally ``image`` (the image file it asks about, relative to
the json's folder, for several questions on one image; without it the image is the file with the json's stem). Options are shuffled with a seed and the letter stored.
This reader is shared with evaluation (``ergo_train.eval.evaluate``):

>>> item = read_vstar_item(Path("examples/vstar/signicade.json"), Path("examples/vstar/signicade.JPG"))
>>> item["answer"], item["boxes"][0]["x2"]
('tiger', 2285.0)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ergo_data.core.boxes import Box, BoxError
from ergo_data.core.errors import ItemError
from ergo_data.core.files import IMAGE_EXTENSIONS, EncodingProblem, load_json_file
from ergo_data.core.schema import make_row
from ergo_data.pipeline.contract import Reject, Source, SourceParams
from ergo_data.pipeline.registry import source_registry
from ergo_data.qa.choices import shuffled_options


class VstarItemError(ItemError):
    """A malformed V* item; ``reason`` is a short code for rejects."""


def find_vstar_items(root: Path) -> Iterator[tuple[str, Path, Path | None, str | None]]:
    """Yield ``(key, json_path, image_path or None, category or None)`` sorted by key.

    The image is the one the json names (``"image": "file.jpg"``, relative to the json's folder; several
    questions may name one image), else the file beside it with the json's stem. None: neither exists (see
    ``missing_image_detail`` for the reason).
    """
    for js in sorted(root.rglob("*.json")):
        rel = js.relative_to(root)
        key = rel.with_suffix("").as_posix()
        category = rel.parts[0] if len(rel.parts) > 1 else None
        named = named_image(js)
        if named is not None:
            image = Path(os.path.normpath(js.parent / named))
            ok = (image.suffix.lower() in IMAGE_EXTENSIONS and image.is_file()
                  and image.resolve().is_relative_to(root.resolve()))  # never a file outside the folder
            yield key, js, (image if ok else None), category
            continue
        images = sorted(p for p in js.parent.glob(js.stem + ".*")
                        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        yield key, js, (images[0] if images else None), category


def named_image(json_path: Path) -> str | None:
    """The ``image`` a V* json names explicitly, or None (no such key, or the json is unreadable: then
    ``read_vstar_item`` reports it)."""
    try:
        meta = load_json_file(json_path)
    except ValueError:
        return None
    value = meta.get("image") if isinstance(meta, dict) else None
    return value.strip() if isinstance(value, str) and value.strip() else None


def missing_image_detail(json_path: Path) -> str:
    """Why ``find_vstar_items`` found no image for ``json_path``."""
    named = named_image(json_path)
    if named is not None:
        return (f"{json_path.name}: names image {named!r}, which is not an image file inside the folder "
                f"(looked for {str(json_path.parent / named)!r})")
    return f"{json_path.name}: no image with stem {json_path.stem!r} beside it"


def read_vstar_item(json_path: Path, image_path: Path, shuffle_seed: int | None = 0, key: str | None = None,
                    category: str | None = None) -> dict[str, Any]:
    """Parse one V* item into the core fields (no id/source). Raises VstarItemError on bad input."""
    try:
        meta = load_json_file(json_path)
    except EncodingProblem as e:
        raise VstarItemError("bad_encoding", str(e)) from None
    except ValueError as e:
        raise VstarItemError("malformed_json", str(e)) from None
    if not isinstance(meta, dict):
        raise VstarItemError("malformed_json", f"{json_path.name}: top level is not an object")
    question = meta.get("question")
    options = meta.get("options")
    if not isinstance(question, str) or not question.strip():
        raise VstarItemError("missing_question", f"{json_path.name}: no 'question' string")
    if not isinstance(options, list) or not options or not all(isinstance(o, str) for o in options):
        raise VstarItemError("bad_options", f"{json_path.name}: 'options' must be a non-empty list of strings")
    if len(set(options)) != len(options):
        raise VstarItemError("bad_options", f"{json_path.name}: duplicate options {options}")
    bboxes = meta.get("bbox")
    if isinstance(bboxes, list) and bboxes and not isinstance(bboxes[0], list):
        bboxes = [bboxes]  # tolerate a single [x, y, w, h]
    if not isinstance(bboxes, list) or not bboxes:
        raise VstarItemError("missing_box", f"{json_path.name}: no 'bbox' list")
    labels = meta.get("target_object") or []
    boxes = []
    for i, bb in enumerate(bboxes):
        try:
            box = Box.from_vstar(bb)
        except (BoxError, TypeError) as e:
            raise VstarItemError("bad_box", f"{json_path.name}: bbox[{i}]: {e}") from None
        label = labels[i] if i < len(labels) and isinstance(labels[i], str) else ""
        boxes.append(box.to_record(label, "annotation"))
    if shuffle_seed is None:
        opts, letter = list(options), "A"
    else:
        opts, letter = shuffled_options(options, 0, key or json_path.stem, shuffle_seed)
    return {"option_order": [options.index(o) for o in opts],
        "image_path": str(image_path), "question": question.strip(), "options": opts,
        "answer": options[0], "answer_letter": letter, "boxes": boxes,
        "category": category or meta.get("category"),
    }


class VstarParams(SourceParams):
    shuffle_seed: int | None = 0  # None keeps the file's order (correct answer = A)


@source_registry.register("vstar")
class VstarSource(Source):
    """Reads a V*-layout folder; every item becomes one Sample or one reject with a reason."""

    Params = VstarParams

    def read(self) -> Iterator[dict[str, Any] | Reject]:
        root = self.root
        for key, js, image, category in find_vstar_items(root):
            if image is None:
                yield self.reject(key, "image_missing", missing_image_detail(js))
                continue
            try:
                item = read_vstar_item(js, image, self.params.shuffle_seed, f"{self.name}/{key}", category)
            except VstarItemError as e:
                yield self.reject(key, e.reason, str(e))
                continue
            provenance = {"file": str(js.relative_to(root)), "image": str(image.relative_to(root)),
                          "reader": "vstar", "boxes_frame": self.params.boxes_frame}
            yield make_row(
                id=f"{self.name}/{key}", image_path=item["image_path"], question=item["question"],
                answer=item["answer"], source=self.name, boxes=item["boxes"], options=item["options"],
                answer_letter=item["answer_letter"], category=item["category"], provenance=provenance,
            )
