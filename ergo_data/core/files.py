"""Reading input files strictly: JSON (UTF-8, with the file named in errors), COCO indexes, image extensions."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ergo_data.core.errors import ErgoError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".tif", ".tiff", ".bmp", ".gif", ".mpo", ".heic", ".avif")


class EncodingProblem(ErgoError, ValueError):
    """A text file that is not UTF-8 (reject reason ``bad_encoding``, as the jsonl source reports it)."""


def load_json_file(path: Path) -> Any:
    """Read JSON strictly: raises ValueError naming the file for bad UTF-8 or bad JSON."""
    import json

    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise EncodingProblem(f"{path.name}: not UTF-8 ({e.reason} at byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path.name}: malformed JSON ({e.msg} at line {e.lineno} col {e.colno})") from None


def coco_index(data: dict[str, Any]) -> tuple[dict[Any, dict], dict[Any, str], dict[Any, list[dict]]]:
    """(images by id, category names by id, annotations by image id)."""
    images = {im.get("id"): im for im in data["images"] if isinstance(im, dict)}
    cats = {c.get("id"): str(c.get("name", c.get("id"))) for c in data.get("categories") or [] if isinstance(c, dict)}
    by_image: dict[Any, list[dict]] = {}
    for ann in data["annotations"]:
        if isinstance(ann, dict):
            by_image.setdefault(ann.get("image_id"), []).append(ann)
    return images, cats, by_image
