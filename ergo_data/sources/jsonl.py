"""``jsonl``: our own Sample rows, one JSON object per line; ``image.path`` relative to the file's folder.

Each line needs ``key`` (or ``id``), ``image`` (a path string or ``{"path": ...}``), ``question``,
``answer`` and ``boxes`` (canonical xyxy records); ``options``/``answer_letter``/``category`` optional.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ergo_data.core.schema import CORE_COLUMNS, SchemaError, make_row, validate_row
from ergo_data.pipeline.contract import Reject, Source, SourceParams
from ergo_data.pipeline.registry import source_registry


class JsonlParams(SourceParams):
    pass  # `path` is the .jsonl file


@source_registry.register("jsonl")
class JsonlSource(Source):
    """Reads Sample rows from a JSONL file; bad lines are rejects naming the line and the field."""

    Params = JsonlParams

    def read(self) -> Iterator[dict[str, Any] | Reject]:
        path = self.root
        base = path.parent
        with open(path, "rb") as f:
            for lineno, raw in enumerate(f, 1):
                key = f"line{lineno}"
                if not raw.strip():
                    continue
                try:
                    obj = json.loads(raw.decode("utf-8"))
                except UnicodeDecodeError as e:
                    yield self.reject(key, "bad_encoding", f"{path.name}:{lineno}: not UTF-8 ({e.reason})")
                    continue
                except json.JSONDecodeError as e:
                    yield self.reject(key, "malformed_json", f"{path.name}:{lineno}: {e.msg} at col {e.colno}")
                    continue
                if not isinstance(obj, dict):
                    yield self.reject(key, "malformed_json", f"{path.name}:{lineno}: not an object")
                    continue
                key = str(obj.get("key") or obj.get("id") or key).split("/")[-1]
                yield self._row(obj, key, base, path.name, lineno)

    def _row(self, obj: dict[str, Any], key: str, base: Path, fname: str, lineno: int) -> dict[str, Any] | Reject:
        img = obj.get("image")
        rel = img.get("path") if isinstance(img, dict) else img
        if not isinstance(rel, str) or not rel:
            return self.reject(key, "image_missing", f"{fname}:{lineno}: no image path")
        p = self.inside_root(base, rel)
        if p is None:
            return self.reject(key, "path_escapes_root", f"{fname}:{lineno}: image path {rel!r} escapes {base}")
        extra = {k: v for k, v in obj.items() if k not in CORE_COLUMNS and k not in ("key", "image")}
        try:
            row = make_row(
                id=f"{self.name}/{key}", image_path=str(p), question=obj.get("question"), answer=obj.get("answer"),
                source=self.name, boxes=obj.get("boxes") or [], options=obj.get("options") or [],
                answer_letter=obj.get("answer_letter"), category=obj.get("category"),
                needs_review=bool(obj.get("needs_review", False)),
                provenance={"file": fname, "line": lineno, "reader": "jsonl", "boxes_frame": self.params.boxes_frame},
                **extra,
            )
            validate_row(row, require_decoded=False)
        except (SchemaError, TypeError, AttributeError) as e:
            return self.reject(key, "bad_record", f"{fname}:{lineno}: {e}")
        return row
