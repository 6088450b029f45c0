"""Label Studio round trip, client side: connection and errors, the project and its labeling config, push.

Tasks carry a stable ``data.sample_id`` (and ``meta.external_id``); Label Studio task ids are never
used as keys (the server reuses them after deletes). A push lists the project's tasks once and imports
only the samples not yet there, so pushing twice creates no duplicates. Pipeline boxes go in as
*predictions*, in percent of the image through ``Box.to_labelstudio``. Images are uploaded as bytes
into one shared "image store" project (Label Studio accepts direct uploads only into a project whose
config has a single data key), named by their sha256 so each image is uploaded once per server; this
works for a loopback server and a remote one alike, with no shared folder. Beside the image the task
shows the region's crop at full resolution, resized to the 1280-token budget: the union of the sample's
boxes, the crop the judge and the rollout's zoom see (``ergo_data.core.imageio.crop_from_full``),
uploaded the same way. Task data holds only what the annotator sees (the data table shows every data
key); the sample itself, with its file paths, travels in ``meta``. Pull: ``pull.py``.

>>> task = task_for_sample(_EXAMPLE_ROW, "/data/upload/1/abc-0f.jpg", RegionCrop("/data/upload/1/c.jpg", "c"))
>>> task["data"]["sample_id"], task["meta"]["external_id"], task["meta"]["sample"]["image"]["path"]
('examples/flag', 'examples/flag', 'examples/vstar/flag.JPG')
>>> "sample" in task["data"], task["data"]["crop"]
(False, '/data/upload/1/c.jpg')
>>> value = task["predictions"][0]["result"][0]["value"]
>>> round(value["x"], 3), round(value["width"], 3), value["rectanglelabels"]
(50.0, 10.0, ['region'])
"""

from __future__ import annotations

import hashlib
import io
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from ergo_data.core.boxes import Box, BoxError
from ergo_data.core.vision import BUDGETS
from ergo_data.labelstudio.client import (
    IMAGE_STORE_CONFIG,
    IMAGE_STORE_TITLE,
    MODEL_VERSION,
    REGION_LABEL,
    Connection,
    check_response,
    ensure_project,
    existing_sample_ids,
    find_project,
    server_errors,
)
from ergo_data.pipeline.progress import Progress

BROWSER_FORMATS = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp"}
IMPORT_BATCH = 100
CROP_MAX_PIXELS = BUDGETS[1280]  # the budget of the judge's and the rollout's crops
UPLOAD_BATCH_BYTES = 32 * 2**20


# ---- tasks ---------------------------------------------------------------------------------------
def _options_text(row: Mapping[str, Any]) -> str:
    options = row.get("options") or []
    if not options:
        return "(open question: no options)"
    return "\n".join(f"{chr(65 + i)}. {o}" for i, o in enumerate(options))


def _answer_text(row: Mapping[str, Any]) -> str:
    letter = row.get("answer_letter")
    return f"{letter}. {row['answer']}" if letter else str(row["answer"])


def jsonable_sample(row: Mapping[str, Any]) -> dict[str, Any]:
    """The sample as JSON-safe data (image bytes dropped: the image travels as an upload)."""
    image = dict(row.get("image") or {})
    image["bytes"] = None
    return json.loads(json.dumps({**row, "image": image}, default=str))


def rectangle_result(box: Box, size: tuple[int, int], rid: str, rotation: float = 0.0) -> dict[str, Any]:
    """One RectangleLabels result as the editor submits it: percent of the image, original size set."""
    return {
        "id": rid,
        "from_name": "region",
        "to_name": "image",
        "type": "rectanglelabels",
        "original_width": size[0],
        "original_height": size[1],
        "image_rotation": 0,
        "value": {**box.to_labelstudio(size), "rotation": rotation, "rectanglelabels": [REGION_LABEL]},
    }


def prediction_result(row: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The sample's boxes as RectangleLabels results (percent of the image, original size set)."""
    size = (int(row["width"]), int(row["height"]))
    return [rectangle_result(Box.from_record(rec), size, f"m{i}") for i, rec in enumerate(row.get("boxes") or [])]


@dataclass(frozen=True)
class RegionCrop:
    url: str  # /data/upload/... of the crop (the main image's when there is no crop)
    note: str  # what the panel shows: the crop's size, or why there is none


def task_for_sample(row: Mapping[str, Any], image_url: str, crop: RegionCrop) -> dict[str, Any]:
    """One import item: data (what the annotator sees), meta (the sample), the boxes as a prediction."""
    boxes = row.get("boxes") or []
    labels = ", ".join(sorted({b.get("label") or "?" for b in boxes})) or "none"
    data = {
        "image": image_url,
        "crop": crop.url,
        "crop_note": crop.note,
        "question": row["question"],
        "options_text": _options_text(row),
        "answer_text": _answer_text(row),
        "machine_boxes": f"pipeline: {len(boxes)} box(es) of {labels}",
        "sample_id": row["id"],
    }
    task: dict[str, Any] = {"data": data, "meta": {"external_id": row["id"], "sample": jsonable_sample(row)}}
    if boxes:
        task["predictions"] = [
            {"model_version": MODEL_VERSION, "score": 1.0, "result": prediction_result(row)}
        ]
    return task


# ---- images --------------------------------------------------------------------------------------
@dataclass
class ImageUpload:
    name: str  # <sha256>.<ext>: the key that makes uploads idempotent
    data: bytes


def image_bytes(row: Mapping[str, Any]) -> bytes:
    """The sample's image file bytes; raises ValueError naming the problem."""
    image = row.get("image") or {}
    data = image.get("bytes")
    if data is None:
        path = image.get("path")
        if not path:
            raise ValueError("the sample has neither image bytes nor an image path")
        try:
            data = Path(path).read_bytes()
        except OSError as e:
            raise ValueError(f"cannot read image {path!r}: {e.strerror or e}") from None
    return data


def image_for_upload(row: Mapping[str, Any], data: bytes | None = None) -> ImageUpload:
    """The bytes a browser will show in the sample's pixel frame; raises ValueError naming the problem.

    Files in a browser format without an EXIF rotation go as they are; others (EXIF-rotated, TIFF, HEIC
    ...) are re-encoded upright as JPEG, so Label Studio's percent boxes refer to the displayed image.
    """
    from ergo_data.core.imageio import DecodeError, open_rgb, read_info

    data = image_bytes(row) if data is None else data
    sha = row.get("image_sha256") or hashlib.sha256(data).hexdigest()
    try:
        info = read_info(data)
        ext = BROWSER_FORMATS.get(info.format)
        if ext and info.orientation == 1:
            upload = ImageUpload(f"{sha}.{ext}", data)
        else:
            buf = io.BytesIO()
            open_rgb(data).save(buf, "JPEG", quality=95)
            upload = ImageUpload(f"{sha}-upright.jpg", buf.getvalue())
        if row.get("width") and info.size != (row["width"], row["height"]):
            raise ValueError(
                f"image is {info.size[0]}x{info.size[1]} but the sample says {row['width']}x{row['height']}"
            )
    except DecodeError as e:
        raise ValueError(f"unreadable image: {e}") from None
    return upload


def region_of(row: Mapping[str, Any]) -> Box | None:
    """The union of the sample's boxes, clamped to the image (None without boxes)."""
    boxes = [Box.from_record(b) for b in row.get("boxes") or []]
    return Box.union(boxes).clamp((int(row["width"]), int(row["height"]))) if boxes else None


def crop_name(row: Mapping[str, Any], region: Box) -> str:
    """``crop-<hash>.jpg``: the same image, region and budget always give the same name (one upload)."""
    key = f"{row.get('image_sha256')}:{','.join(f'{c:.4f}' for c in region.as_tuple())}:{CROP_MAX_PIXELS}"
    return f"crop-{hashlib.sha256(key.encode()).hexdigest()[:40]}.jpg"


class CropMaker:
    """Region crops at full resolution, resized to the 1280-token budget; one decode per image in a row."""

    def __init__(self) -> None:
        self._decoded: tuple[str, Any, Any] | None = None  # (image sha, stored-frame array, info)

    def crop(self, row: Mapping[str, Any], region: Box, data: bytes) -> ImageUpload:
        """The crop as a JPEG upload; ValueError when it cannot be made (a sliver region)."""
        from PIL import Image

        from ergo_data.core.imageio import crop_from_full, decode_full

        sha = str(row.get("image_sha256"))
        if self._decoded is None or self._decoded[0] != sha:
            self._decoded = (sha, *decode_full(data))
        _, full, info = self._decoded
        pixels = crop_from_full(full, info, region, CROP_MAX_PIXELS)
        buf = io.BytesIO()
        Image.fromarray(pixels).save(buf, "JPEG", quality=95)
        return ImageUpload(crop_name(row, region), buf.getvalue())


def _stored_name(file_path: str) -> str:
    """``upload/7/bd502cfc-<name>`` -> ``<name>`` (Label Studio prefixes 8 hex digits and a dash)."""
    base = file_path.rsplit("/", 1)[-1]
    return re.sub(r"^[0-9a-f]{8}-", "", base)


def image_store(ls, conn: Connection):
    project = find_project(ls, IMAGE_STORE_TITLE, conn)
    if project is None:
        project = ls.projects.create(
            title=IMAGE_STORE_TITLE,
            label_config=IMAGE_STORE_CONFIG,
            description="Images uploaded by `ergo ls push` (no tasks; do not delete)",
        )
    return project


def stored_images(ls, store_id: int) -> dict[str, str]:
    """``name -> /data/upload/...`` URL of every image already in the store."""
    return {_stored_name(f.file): "/data/" + f.file for f in ls.files.list(id=store_id, all_=True)}


def upload_images(ls, conn: Connection, store_id: int, uploads: list[ImageUpload]) -> int:
    """Upload the images (in batches of a few MB); returns how many were sent."""
    batch: list[ImageUpload] = []
    sent = 0

    def flush() -> None:
        nonlocal sent
        if not batch:
            return
        files = [(f"file{i}", (u.name, u.data, "application/octet-stream")) for i, u in enumerate(batch)]
        check_response(
            httpx.post(
                f"{conn.url}/api/projects/{store_id}/import",
                params={"commit_to_project": "false"},
                headers=conn.headers(),
                files=files,
                timeout=max(conn.timeout, 60.0),
            )
        )
        sent += len(batch)
        batch.clear()

    size = 0
    for u in uploads:
        if batch and size + len(u.data) > UPLOAD_BATCH_BYTES:
            flush()
            size = 0
        batch.append(u)
        size += len(u.data)
    flush()
    return sent


@dataclass
class Prepared:
    row: dict[str, Any]
    image: str  # upload name of the image
    crop: str | None  # upload name of the region crop (None: no crop, see the note)
    crop_note: str


def prepare(row: dict[str, Any], stored: Mapping[str, str], new: dict[str, ImageUpload], crops: CropMaker) -> Prepared:
    """The sample's image and region crop, added to ``new`` unless already ``stored``; ValueError if unusable."""
    data = image_bytes(row)
    upload = image_for_upload(row, data)
    if upload.name not in stored:
        new.setdefault(upload.name, upload)
    try:
        region = region_of(row)
    except BoxError as e:
        raise ValueError(f"its boxes: {e}") from None
    if region is None:
        return Prepared(row, upload.name, None, "no region crop: the sample has no box (showing the whole image)")
    name = crop_name(row, region)
    note = (
        f"region {round(region.width)}x{round(region.height)} px of the {row['width']}x{row['height']} "
        "image, cropped at full resolution and resized to the model's 1280-token budget"
    )
    if name not in stored and name not in new:
        try:
            new[name] = crops.crop(row, region, data)
        except ValueError as e:  # a sliver region (aspect ratio over 200) cannot be a model view
            return Prepared(row, upload.name, None, f"no region crop: {e} (showing the whole image)")
    return Prepared(row, upload.name, name, note)


# ---- push ----------------------------------------------------------------------------------------
def select_samples(samples_dir: str | Path, where: str | None = None, limit: int | None = None) -> list[dict]:
    """Rows of ``DIR/data/*.parquet`` (output of ``ergo run``) matching a DuckDB WHERE, ordered by id."""
    import duckdb

    from ergo_data.pipeline.query import connect

    con = connect(samples_dir)
    try:
        if "samples" not in {r[0] for r in con.execute("SELECT view_name FROM duckdb_views()").fetchall()}:
            raise ValueError(f"{samples_dir}/data has no Parquet files: nothing to push")
        sql = "SELECT * FROM samples" + (f" WHERE {where}" if where else "") + " ORDER BY id"
        if limit is not None:
            sql += f" LIMIT {int(limit)}"
        try:
            return con.sql(sql).to_arrow_table().to_pylist()
        except duckdb.Error as e:
            raise ValueError(f"--where {where!r} failed: {e}") from None
    finally:
        con.close()


@dataclass
class PushReport:
    project: str
    project_id: int
    url: str
    selected: int = 0
    already_present: int = 0
    created: int = 0
    images_uploaded: int = 0
    images_reused: int = 0
    crops_uploaded: int = 0
    failed: list[tuple[str, str]] = field(default_factory=list)  # (sample id, reason)


def push(
    samples_dir: str | Path,
    project: str,
    conn: Connection,
    where: str | None = None,
    limit: int | None = None,
    log: Callable[[str], None] = lambda _: None,
    quiet: bool = True,
) -> PushReport:
    """Create or reuse ``project`` and import the selected samples that are not in it yet.

    ``quiet=False`` shows a progress bar while images are read and region crops are made.

    With a server running (``tests/ergo_data/labelstudio/test_labelstudio.py`` starts one)::

        push("out/demo", "demo review", Connection(DEFAULT_URL, "token"))
        # PushReport(project='demo review', project_id=1, ..., created=9, ...)
    """
    rows = select_samples(samples_dir, where, limit)
    with server_errors(conn):
        ls = conn.client()
        proj = ensure_project(ls, project, conn)
        present = existing_sample_ids(ls, proj.id)
        report = PushReport(project, proj.id, conn.url, selected=len(rows))
        todo = [r for r in rows if r["id"] not in present]
        report.already_present = len(rows) - len(todo)
        log(f"{len(rows)} samples selected, {report.already_present} already in project {project!r}")
        if not todo:
            return report
        store = image_store(ls, conn)
        stored = stored_images(ls, store.id)
        ready: list[Prepared] = []
        new: dict[str, ImageUpload] = {}
        crops = CropMaker()
        todo.sort(key=lambda r: (str(r.get("image_sha256")), r["id"]))  # one decode per image
        with Progress(quiet=quiet) as progress:
            bar = progress.task("images and region crops", total=len(todo))
            for row in todo:
                try:
                    ready.append(prepare(row, stored, new, crops))
                except ValueError as e:
                    report.failed.append((row["id"], str(e)))
                progress.advance(bar)
        ready.sort(key=lambda p: p.row["id"])  # tasks in id order, as selected
        images = {p.image for p in ready}
        report.images_reused = len(images - set(new))
        report.crops_uploaded = len(set(new) - images)
        log(f"uploading {len(new)} images and crops ({sum(len(u.data) for u in new.values()) / 2**20:.1f} MiB)")
        report.images_uploaded = upload_images(ls, conn, store.id, list(new.values())) - report.crops_uploaded
        if new:
            stored = stored_images(ls, store.id)
        tasks = [
            task_for_sample(p.row, stored[p.image], RegionCrop(stored[p.crop or p.image], p.crop_note))
            for p in ready
        ]
        for start in range(0, len(tasks), IMPORT_BATCH):
            res = ls.projects.import_tasks(
                id=proj.id, request=tasks[start : start + IMPORT_BATCH], return_task_ids=True
            )
            report.created += int(res.task_count or 0)
        log(f"{report.created} tasks created")
    return report


_EXAMPLE_ROW = {
    "id": "examples/flag",
    "image": {"bytes": None, "path": "examples/vstar/flag.JPG"},
    "width": 4000,
    "height": 2000,
    "question": "What does the flag say?",
    "options": ["a", "b"],
    "answer": "b",
    "answer_letter": "B",
    "boxes": [
        {"x1": 2000.0, "y1": 500.0, "x2": 2400.0, "y2": 700.0, "label": "flag", "source": "annotation"}
    ],
}
