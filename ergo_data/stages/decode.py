"""``decode``: open each image once, record width/height/sha256/pHash and the derived columns.

Bad images (missing, zero-byte, truncated, corrupt, decompression bombs, unreadable formats) are
rejected with a reason; the run continues. Boxes given on the stored frame (``boxes_frame: stored``
in the source) are rotated with the EXIF orientation here.

>>> from ergo_data.registry import source_registry
>>> import pyarrow as pa
>>> rows = [r for r in source_registry.get("vstar")(name="ex", path="examples/vstar").read()][:1]
>>> res = DecodeStage().process(pa.Table.from_pylist(rows))
>>> res.kept.column("width")[0].as_py(), res.kept.column("box_short_side_1280")[0].as_py() > 50
(5650, True)
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import imagehash
from PIL import Image

from ergo_data.boxes import Box, BoxError, rotate_box_with_exif
from ergo_data.imageio import DecodeError, decode_coarse
from ergo_data.registry import stage_registry
from ergo_data.stages.base import Params, Reject, RowStage
from ergo_data.vision import BUDGETS, derived_columns


class DecodeParams(Params):
    max_pixels: int = BUDGETS[1280]  # coarse view used for pHash (the view the model would see)
    max_image_pixels: int | None = None  # decompression-bomb limit; None = Pillow's (2 x MAX_IMAGE_PIXELS)
    embed_images: bool = False  # fill image.bytes with the file bytes (self-contained export)


def load_image_bytes(row: dict[str, Any]) -> bytes:
    """The file bytes of a row's image (``image.bytes`` if embedded, else read ``image.path``)."""
    img = row["image"]
    if img.get("bytes"):
        return img["bytes"]
    return Path(img["path"]).read_bytes()


def boxes_frame(row: dict[str, Any]) -> str:
    try:
        return json.loads(row.get("provenance") or "{}").get("boxes_frame", "displayed")
    except ValueError:
        return "displayed"


@stage_registry.register("decode")
class DecodeStage(RowStage):
    """Open, EXIF-transpose, convert to RGB, record width/height/sha256/pHash; reject unusable images."""

    Params = DecodeParams

    def run(self, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any] | Reject]:
        for row in rows:
            yield self.decode_row(row)

    def decode_row(self, row: dict[str, Any]) -> dict[str, Any] | Reject:
        path = row["image"].get("path")
        try:
            data = load_image_bytes(row)
        except FileNotFoundError:
            return Reject(row, "image_missing", f"image file not found: {path}")
        except OSError as e:
            return Reject(row, "image_unreadable", f"cannot read {path}: {e}")
        try:
            view = decode_coarse(data, self.params.max_pixels, self.params.max_image_pixels)
        except DecodeError as e:
            return Reject(row, e.reason, f"{path}: {e}")
        except Exception as e:  # a decoder bug must not kill the run: the sample leaves with a reason
            return Reject(row, "decode_failed", f"{path}: {type(e).__name__}: {e}")
        out = dict(row)
        out["width"], out["height"] = view.size
        out["image_sha256"] = hashlib.sha256(data).hexdigest()
        out["image_phash"] = str(imagehash.phash(Image.fromarray(view.array)))
        if self.params.embed_images:
            out["image"] = {"bytes": data, "path": path}
        if boxes_frame(row) == "stored" and view.info.orientation != 1:
            try:
                out["boxes"] = [
                    {**b, **dict(zip(("x1", "y1", "x2", "y2"), rotate_box_with_exif(
                        Box.from_record(b), view.info.stored_size, view.info.orientation).as_tuple()))}
                    for b in row["boxes"]
                ]
            except BoxError as e:
                return Reject(row, "bad_box", f"cannot rotate box with EXIF orientation: {e}")
        out.update(derived_columns(view.size, _valid_boxes(out["boxes"])))
        return out


def _valid_boxes(records: list[dict[str, Any]]) -> list[Box]:
    """Boxes that can be measured; invalid ones are left for ``box_check`` to reject with a reason."""
    out = []
    for b in records or []:
        try:
            out.append(Box.from_record(b))
        except (BoxError, KeyError, TypeError):
            return []
    return out
