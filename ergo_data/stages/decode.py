"""``decode``: open each image once, record width/height/sha256/pHash and the derived columns.

Bad images (missing, zero-byte, truncated, corrupt, decompression bombs, unreadable formats) are
rejected with a reason; the run continues. Images that decode with a non-fatal libjpeg warning
("Corrupt JPEG data: 33 extraneous bytes before marker 0xd9": junk between segments, the pixels
intact) are kept, the warning recorded in the sample's ``provenance`` as ``decode_warning``. Boxes given on the stored frame (``boxes_frame: stored``
in the source) are rotated with the EXIF orientation here. The stage keeps no pixels: later stages use
the recorded size and pHash; only tools that crop (rollout, judges) decode the full resolution again.

>>> from ergo_data.pipeline.registry import source_registry
>>> import pyarrow as pa
>>> rows = [r for r in source_registry.get("vstar")(name="ex", path="examples/vstar").read()][:1]
>>> res = DecodeStage().process(pa.Table.from_pylist(rows))
>>> res.kept.column("width")[0].as_py(), res.kept.column("box_short_side_1280")[0].as_py() > 50
(5650, True)
"""

from __future__ import annotations

import hashlib
import json
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import Field

from ergo_data.core.boxes import Box, BoxError, rotate_box_with_exif
from ergo_data.core.imageio import DecodeError, ImageInfo, decode_coarse, phash_hex
from ergo_data.core.vision import BUDGETS, derived_columns
from ergo_data.pipeline.contract import Params, Reject, RowStage
from ergo_data.pipeline.registry import stage_registry


class DecodeParams(Params):
    max_pixels: int = Field(BUDGETS[1280], gt=0)  # coarse view used for pHash (the view the model would see)
    # Decompression-bomb limit in pixels (width * height); None = Pillow's (2 * Image.MAX_IMAGE_PIXELS,
    # about 179 MP). Larger images are rejected with reason `decompression_bomb` before any pixel decode.
    max_image_pixels: int | None = Field(None, gt=0)
    embed_images: bool = False  # fill image.bytes with the file bytes (self-contained export)


def load_image_bytes(row: dict[str, Any]) -> bytes:
    """The file bytes of a row's image (``image.bytes`` if embedded, else read ``image.path``)."""
    img = row.get("image") or {}
    if img.get("bytes") is not None:
        return img["bytes"]
    if not img.get("path"):
        raise FileNotFoundError("the row has neither image bytes nor an image path")
    return Path(img["path"]).read_bytes()


def with_provenance(row: dict[str, Any], **facts: Any) -> str:
    """The row's ``provenance`` JSON with ``facts`` added (an unreadable one is kept under ``original``).

    >>> with_provenance({"provenance": '{"generator": "v"}'}, decode_warning="w")
    '{"decode_warning": "w", "generator": "v"}'
    """
    try:
        prov = json.loads(row.get("provenance") or "{}")
    except ValueError:
        prov = {"original": row.get("provenance")}
    if not isinstance(prov, dict):
        prov = {"original": prov}
    return json.dumps({**prov, **facts}, sort_keys=True)


def boxes_frame(row: dict[str, Any]) -> str:
    """``stored`` when the source's boxes refer to raw pixels before EXIF orientation, else ``displayed``."""
    try:
        return json.loads(row.get("provenance") or "{}").get("boxes_frame", "displayed")
    except (ValueError, AttributeError):
        return "displayed"


def rotate_stored_boxes(records: list[dict[str, Any]], info: ImageInfo) -> list[dict[str, Any]]:
    """Boxes on the stored pixels -> boxes on the displayed image (labels kept).

    Records that are not valid boxes are returned unchanged (all of them) for ``box_check`` to reject.

    >>> info = ImageInfo("JPEG", (100, 50), 6, "RGB", 1)
    >>> rotate_stored_boxes([{"x1": 0, "y1": 0, "x2": 10, "y2": 20, "label": "a"}], info)[0]
    {'x1': 30.0, 'y1': 0.0, 'x2': 50.0, 'y2': 10.0, 'label': 'a'}
    """
    try:
        boxes = [Box.from_record(b) for b in records]
    except (BoxError, KeyError, TypeError):
        return records
    out = []
    for rec, box in zip(records, boxes):
        r = rotate_box_with_exif(box, info.stored_size, info.orientation)
        out.append({**rec, "x1": r.x1, "y1": r.y1, "x2": r.x2, "y2": r.y2})
    return out


@dataclass(frozen=True)
class _Decoded:
    """What later rows of the same image need from its decode (no pixels)."""

    size: tuple[int, int]
    info: ImageInfo
    phash: str
    warning: str | None = None  # the libjpeg warning of an image kept despite it


@stage_registry.register("decode")
class DecodeStage(RowStage):
    """Open, EXIF-transpose, convert to RGB, record width/height/sha256/pHash; reject unusable images."""

    Params = DecodeParams

    def run(self, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any] | Reject]:
        for row in rows:
            yield self.decode_row(row)

    def _decode_cached(self, sha: str, data: bytes) -> _Decoded | DecodeError:
        """The decode of an image, or why it is unusable; images shared by several questions (generators
        yield many per image) are decoded once per worker. The cache keeps no pixels."""
        cache = self.__dict__.setdefault("_cache", OrderedDict())
        if sha in cache:
            cache.move_to_end(sha)
            return cache[sha]
        try:
            view = decode_coarse(data, self.params.max_pixels, self.params.max_image_pixels)
            result: _Decoded | DecodeError = _Decoded(view.size, view.info, phash_hex(view.array),
                                                      view.info.decode_warning)
        except DecodeError as e:
            result = e
        except Exception as e:  # noqa: BLE001 - a decoder bug must not kill the run: the sample leaves with a reason
            result = DecodeError("decode_failed", f"{type(e).__name__}: {e}")
        cache[sha] = result
        if len(cache) > 256:
            cache.popitem(last=False)
        return result

    def decode_row(self, row: dict[str, Any]) -> dict[str, Any] | Reject:
        path = (row.get("image") or {}).get("path") or "<embedded bytes>"
        try:
            data = load_image_bytes(row)
        except FileNotFoundError as e:
            return Reject(row, "image_missing", f"image file not found: {path} ({e.strerror or e})")
        except OSError as e:
            return Reject(row, "image_unreadable", f"cannot read {path}: {e}")
        sha = hashlib.sha256(data).hexdigest()
        view = self._decode_cached(sha, data)
        if isinstance(view, DecodeError):
            return Reject(row, view.reason, f"{path}: {view}")
        out = dict(row)
        out["width"], out["height"] = view.size
        out["image_sha256"] = sha
        out["image_phash"] = view.phash
        if self.params.embed_images:
            out["image"] = {"bytes": data, "path": path if path != "<embedded bytes>" else None}
        if view.warning:
            out["provenance"] = with_provenance(row, decode_warning=view.warning)
        if boxes_frame(row) == "stored":
            out["boxes"] = rotate_stored_boxes(list(row.get("boxes") or []), view.info)
        out.update(derived_columns(view.size, _valid_boxes(out.get("boxes"))))
        return out


def _valid_boxes(records: list[dict[str, Any]] | None) -> list[Box]:
    """Boxes that can be measured; invalid ones are left for ``box_check`` to reject with a reason."""
    out = []
    for b in records or []:
        try:
            out.append(Box.from_record(b))
        except (BoxError, KeyError, TypeError):
            return []
    return out
