"""Label Studio round trip, pull side: export annotations, convert them back, write Samples + ``labels``.

``DIR/data/part-*.parquet``: one Sample per annotated task (its latest submitted annotation), with the
human boxes (``source="human"``) in place of the pipeline's when the annotator left any box, and
``needs_review`` false; ``DIR/labels.parquet``: one row per submitted annotation, columns of
``LABELS_SCHEMA`` (the human box is the union of the drawn rectangles, null if none);
``DIR/pull.json``: counts, tasks without annotations (ids) and per-task errors.

>>> value = {"x": 10, "y": 20, "width": 50, "height": 50, "rotation": 0, "rectanglelabels": ["region"]}
>>> result = [{"from_name": "region", "type": "rectanglelabels", "original_width": 200,
...            "original_height": 100, "value": value},
...           {"from_name": "answer_correct", "type": "choices", "value": {"choices": ["wrong"]}}]
>>> review = parse_annotation({"result": result, "lead_time": 3.5, "created_at": "2026-01-01T00:00:00Z"},
...                           (200, 100), "ann@example.com")
>>> review.boxes, review.answer_correct, review.region_answerable
([Box(x1=20.0, y1=20.0, x2=120.0, y2=70.0)], False, None)
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa

from ergo_data.core.boxes import Box, BoxError
from ergo_data.core.errors import ErgoError
from ergo_data.core.schema import LABELS_SCHEMA, SchemaError, rows_to_table, validate_row, with_hf_metadata
from ergo_data.labelstudio.client import (
    REGION_LABEL,
    Connection,
    LabelStudioError,
    find_project,
    server_errors,
)
from ergo_data.pipeline.outputs import atomic_write_json, canonical_table, write_parquet_atomic
from ergo_data.stages.filters import refresh_derived

CHOICE_VALUES = {
    "answer_correct": {"correct": True, "wrong": False},
    "region_answerable": {"yes": True, "no": False},
}
DATA_FILE = "part-00000-of-00001.parquet"


class ReviewError(ErgoError, ValueError):
    """An annotation that cannot be converted (rotated box, another image size, unknown choice)."""


@dataclass
class Review:
    annotator: str
    boxes: list[Box]
    answer_correct: bool | None
    region_answerable: bool | None
    comment: str | None
    lead_time_s: float | None
    created_at: str | None
    updated_at: str | None = None

    def label_row(self, sample_id: str) -> dict[str, Any]:
        union = Box.union(self.boxes) if self.boxes else None
        coords = (
            dict(zip(("x1", "y1", "x2", "y2"), union.as_tuple()))
            if union
            else dict.fromkeys(("x1", "y1", "x2", "y2"))
        )
        return {
            "id": sample_id,
            "annotator": self.annotator,
            "region_answerable": self.region_answerable,
            "answer_correct": self.answer_correct,
            **coords,
            "lead_time_s": self.lead_time_s,
            "created_at": self.created_at,
        }


def parse_annotation(annotation: Mapping[str, Any], size: tuple[int, int], annotator: str) -> Review:
    """One exported annotation -> Review; boxes through ``Box.from_labelstudio`` on the sample's size."""
    boxes: list[Box] = []
    choices: dict[str, bool | None] = dict.fromkeys(CHOICE_VALUES)
    comment = None
    w, h = size
    for item in annotation.get("result") or []:
        name, value = item.get("from_name"), item.get("value") or {}
        if item.get("type") == "rectanglelabels" and name == "region":
            ow, oh = item.get("original_width"), item.get("original_height")
            if ow and oh and abs(ow / oh - w / h) > 0.01 * (w / h):
                raise ReviewError(
                    f"the image shown was {ow}x{oh} but the sample is {w}x{h}: another image, or "
                    "an EXIF rotation the browser applied"
                )
            try:
                # Percent of the displayed image: measured on the sample's own size, the canonical frame.
                boxes.append(Box.from_labelstudio(value, size).clamp(size))
            except BoxError as e:
                raise ReviewError(f"region {item.get('id', '?')}: {e}") from None
        elif item.get("type") == "choices" and name in CHOICE_VALUES:
            picked = value.get("choices") or []
            if len(picked) != 1 or picked[0] not in CHOICE_VALUES[name]:
                raise ReviewError(
                    f"choice {name!r} = {picked!r}, expected one of {sorted(CHOICE_VALUES[name])}"
                )
            choices[name] = CHOICE_VALUES[name][picked[0]]
        elif item.get("type") == "textarea" and name == "comment":
            comment = "\n".join(value.get("text") or []) or None
    lead = annotation.get("lead_time")
    return Review(
        annotator=annotator,
        boxes=boxes,
        answer_correct=choices["answer_correct"],
        region_answerable=choices["region_answerable"],
        comment=comment,
        lead_time_s=float(lead) if lead is not None else None,
        created_at=annotation.get("created_at"),
        updated_at=annotation.get("updated_at"),
    )


def reviewed_sample(sample: Mapping[str, Any], review: Review) -> dict[str, Any]:
    """The pushed sample after review: human boxes (if any) replace the pipeline's; derived columns redone."""
    row = dict(sample)
    if review.boxes:
        machine_labels = {b.get("label") for b in sample.get("boxes") or []}
        label = machine_labels.pop() if len(machine_labels) == 1 else REGION_LABEL
        row["boxes"] = [b.to_record(label=label or REGION_LABEL, source="human") for b in review.boxes]
    row["needs_review"] = False
    row["review_comment"] = review.comment
    return refresh_derived(row)


def _when(stamp: str | None) -> datetime:
    try:
        when = datetime.fromisoformat(stamp or "")
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


@dataclass
class PullReport:
    project: str
    project_id: int
    url: str
    out: str
    tasks: int = 0
    samples: int = 0
    labels: int = 0
    unannotated: list[str] = field(default_factory=list)  # sample ids of tasks with no submitted annotation
    errors: list[str] = field(default_factory=list)  # one sentence per task that could not be converted


def convert_export(
    tasks: list[Mapping[str, Any]], annotators: Mapping[int, str], report: PullReport
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Exported tasks -> (sample rows, label rows); fills ``report.unannotated`` and ``report.errors``."""
    samples: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    for task in tasks:
        data = task.get("data") or {}
        sid, sample = data.get("sample_id"), data.get("sample")
        where = f"task {task.get('id')}"
        if not isinstance(sid, str) or not isinstance(sample, Mapping):
            report.errors.append(
                f"{where}: no data.sample_id/data.sample, so it was not made by `ergo ls push`"
            )
            continue
        submitted = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not submitted:
            report.unannotated.append(sid)
            continue
        try:
            size = (int(sample["width"]), int(sample["height"]))
            reviews = []
            for ann in submitted:
                who = ann.get("completed_by")
                who = annotators.get(who, str(who)) if not isinstance(who, Mapping) else who.get("email", "?")
                try:
                    reviews.append(parse_annotation(ann, size, who))
                except ReviewError as e:
                    raise ReviewError(f"annotation {ann.get('id')} by {who}: {e}") from None
            latest = max(reviews, key=lambda r: _when(r.updated_at or r.created_at))
            row = reviewed_sample(sample, latest)
            if not (row.get("image") or {}).get("path"):
                row["image"] = {"bytes": None, "path": report.url + str(data.get("image"))}
            validate_row(row)
        except (ReviewError, SchemaError, KeyError, TypeError, ValueError) as e:
            report.errors.append(f"sample {sid!r} (Label Studio {where}): {e}")
            continue
        samples.append(row)
        labels += [r.label_row(sid) for r in reviews]
    samples.sort(key=lambda r: r["id"])
    labels.sort(key=lambda r: (r["id"], r["created_at"] or "", r["annotator"]))
    report.unannotated.sort()
    return samples, labels


def write_pull(
    out: Path, samples: list[dict[str, Any]], labels: list[dict[str, Any]], report: PullReport
) -> None:
    """Write data/, labels.parquet and pull.json (atomically; a second pull overwrites the first)."""
    data_dir = out / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    table = canonical_table(samples, rows_to_table(samples).schema)
    table = table.replace_schema_metadata(with_hf_metadata(table.schema).metadata)
    write_parquet_atomic(table, data_dir / DATA_FILE)
    for old in data_dir.glob("*.parquet"):
        if old.name != DATA_FILE:
            old.unlink()
    write_parquet_atomic(pa.Table.from_pylist(labels, schema=LABELS_SCHEMA), out / "labels.parquet")
    atomic_write_json(out / "pull.json", report.__dict__)


def pull(
    project: str, out: str | Path, conn: Connection, log: Callable[[str], None] = lambda _: None
) -> PullReport:
    """Export every task of ``project`` and write the reviewed Samples and the labels table into ``out``.

    With a server running (``tests/ergo_data/labelstudio/test_labelstudio.py`` starts one)::

        pull("demo review", "out/demo-review", Connection("http://127.0.0.1:8080", "token"))
    """
    out = Path(out)
    with server_errors(conn):
        ls = conn.client()
        proj = find_project(ls, project, conn)
        if proj is None:
            raise LabelStudioError(
                f"no project titled {project!r} at {conn.url}: push to it first "
                "(`ergo ls push DIR --project NAME`)"
            )
        raw = b"".join(
            ls.projects.exports.download_sync(id=proj.id, export_type="JSON", download_all_tasks=True)
        )
        tasks = json.loads(raw)
        annotators = _annotators(ls)
    report = PullReport(project, proj.id, conn.url, str(out), tasks=len(tasks))
    samples, labels = convert_export(tasks, annotators, report)
    report.samples, report.labels = len(samples), len(labels)
    write_pull(out, samples, labels, report)
    log(f"{report.samples} reviewed samples, {report.labels} labels written to {out}")
    return report


def _annotators(ls) -> dict[int, str]:
    """User id -> email; empty if this account may not list users (ids are used then)."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        return {u.id: u.email or u.username for u in ls.users.list()}
    except ApiError:
        return {}
