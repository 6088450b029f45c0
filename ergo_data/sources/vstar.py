"""V* bench layout: ``<stem>.json`` beside ``<stem>.<ext>``, in one folder or in category subfolders.

The json has ``question``, ``options`` (``options[0]`` is correct), ``bbox`` (a list of ``[x, y, w, h]``
absolute pixels) and ``target_object`` (labels). Options are shuffled with a seed and the letter stored.
This reader is shared with evaluation (``ergo_train.eval.evaluate``):

>>> item = read_vstar_item(Path("examples/vstar/signicade.json"), Path("examples/vstar/signicade.JPG"))
>>> item["answer"], item["boxes"][0]["x2"]
('tiger', 2285.0)
"""

from __future__ import annotations

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
    """Yield ``(key, json_path, image_path or None, category or None)`` sorted by key."""
    for js in sorted(root.rglob("*.json")):
        rel = js.relative_to(root)
        key = rel.with_suffix("").as_posix()
        images = sorted(p for p in js.parent.glob(js.stem + ".*")
                        if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file())
        category = rel.parts[0] if len(rel.parts) > 1 else None
        yield key, js, (images[0] if images else None), category


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
    return {
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
                yield self.reject(key, "image_missing", f"{js.name}: no image with stem {js.stem!r} beside it")
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
