"""Label Studio round trip, pull side: export annotations, convert them back, write Samples + ``labels``.

``DIR/labels.parquet``: one row per annotator and task whose annotation answers both questions
(``LABELS_SCHEMA``; the human box is the union of the drawn rectangles, null if none; the comment).
``DIR/data/part-*.parquet``: the reviewed Samples as the ``labels`` merge stage makes them with its
default policy (every annotator counts; disagreement -> ``needs_review`` with ``review_reason``);
``DIR/rejects/``: the ones that policy rejects (e.g. ``human_rejected_answer``), with the reason.
``DIR/pull.json``: counts, agreement per question, tasks without annotations, annotations that still
lack a required answer (``incomplete``: not counted as reviewed) and per-task errors.

>>> value = {"x": 10, "y": 20, "width": 50, "height": 50, "rotation": 0, "rectanglelabels": ["region"]}
>>> result = [{"from_name": "region", "type": "rectanglelabels", "original_width": 200,
...            "original_height": 100, "value": value},
...           {"from_name": "answer_correct", "type": "choices", "value": {"choices": ["wrong"]}}]
>>> review = parse_annotation({"result": result, "lead_time": 3.5, "created_at": "2026-01-01T00:00:00Z"},
...                           (200, 100), "ann@example.com")
>>> review.boxes, review.answer_correct, review.region_answerable, review.missing
([Box(x1=20.0, y1=20.0, x2=120.0, y2=70.0)], False, None, ['region_answerable'])
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa

from ergo_data.core.boxes import Box, BoxError
from ergo_data.core.errors import ErgoError
from ergo_data.core.labels import QUESTIONS, agreement, by_sample
from ergo_data.core.schema import (
    LABELS_SCHEMA,
    REJECT_SCHEMA,
    SchemaError,
    reject_row,
    rows_to_table,
    validate_row,
    with_hf_metadata,
)
from ergo_data.labelstudio.client import Connection, LabelStudioError, find_review_project, server_errors
from ergo_data.pipeline.contract import Reject
from ergo_data.pipeline.outputs import atomic_write_json, canonical_table, write_parquet_atomic
from ergo_data.stages.labels import REVIEW_COLUMNS, apply_review

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

    @property
    def missing(self) -> list[str]:
        """The required questions this annotation leaves unanswered."""
        return [q for q in QUESTIONS if getattr(self, q) is None]

    def label_row(self, sample_id: str) -> dict[str, Any]:
        union = Box.union(self.boxes) if self.boxes else None
        coords = union.as_tuple() if union else (None,) * 4
        return {
            "id": sample_id,
            "annotator": self.annotator,
            "region_answerable": self.region_answerable,
            "answer_correct": self.answer_correct,
            **dict(zip(("x1", "y1", "x2", "y2"), coords)),
            "lead_time_s": self.lead_time_s,
            "created_at": self.created_at,
            "comment": self.comment,
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
            comment = "\n".join(value.get("text") or []).strip() or None
    lead = annotation.get("lead_time")
    return Review(
        annotator=annotator,
        boxes=boxes,
        answer_correct=choices["answer_correct"],
        region_answerable=choices["region_answerable"],
        comment=comment,
        lead_time_s=float(lead) if lead is not None else None,
        created_at=annotation.get("created_at"),
    )


@dataclass
class PullReport:
    project: str
    project_id: int
    url: str
    out: str
    tasks: int = 0
    samples: int = 0  # reviewed samples kept (data/)
    rejected: int = 0  # reviewed samples the merge policy rejects (rejects/)
    needs_review: int = 0  # kept samples the policy flags (annotators disagree, region not answerable ...)
    labels: int = 0
    unannotated: list[str] = field(default_factory=list)  # sample ids of tasks with no submitted annotation
    incomplete: list[dict[str, Any]] = field(default_factory=list)  # {id, annotator, missing}: not counted
    errors: list[str] = field(default_factory=list)  # one sentence per task that could not be converted
    agreement: dict[str, Any] = field(default_factory=dict)  # question -> QuestionAgreement.as_dict()


def _annotator(ann: Mapping[str, Any], annotators: Mapping[int, str]) -> str:
    who = ann.get("completed_by")
    if isinstance(who, Mapping):
        return str(who.get("email") or "?")
    return annotators.get(who, str(who))


def task_sample(task: Mapping[str, Any]) -> tuple[Any, Any]:
    """``(sample_id, sample)`` of an exported task; the sample lives in ``meta`` (older pushes: ``data``)."""
    data, meta = task.get("data") or {}, task.get("meta") or {}
    return data.get("sample_id"), meta.get("sample", data.get("sample"))


def convert_export(
    tasks: list[Mapping[str, Any]], annotators: Mapping[int, str], report: PullReport
) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, str]]]:
    """Exported tasks -> (sample rows, label rows, reject rows); fills the report's lists."""
    samples: list[dict[str, Any]] = []
    labels: list[dict[str, Any]] = []
    rejects: list[dict[str, str]] = []
    for task in tasks:
        sid, sample = task_sample(task)
        where = f"task {task.get('id')}"
        if not isinstance(sid, str) or not isinstance(sample, Mapping):
            report.errors.append(f"{where}: no sample_id/sample in the task, so it was not made by `ergo ls push`")
            continue
        submitted = [a for a in task.get("annotations") or [] if not a.get("was_cancelled")]
        if not submitted:
            report.unannotated.append(sid)
            continue
        try:
            size = (int(sample["width"]), int(sample["height"]))
            complete = []
            for ann in submitted:
                who = _annotator(ann, annotators)
                try:
                    review = parse_annotation(ann, size, who)
                except ReviewError as e:
                    raise ReviewError(f"annotation {ann.get('id')} by {who}: {e}") from None
                if review.missing:
                    report.incomplete.append({"id": sid, "annotator": who, "missing": review.missing})
                else:
                    complete.append(review.label_row(sid))
            if not complete:
                continue
            row = dict(sample)
            if not (row.get("image") or {}).get("path"):
                row["image"] = {"bytes": None, "path": report.url + str((task.get("data") or {}).get("image"))}
            reviewed = apply_review(row, by_sample(complete)[sid])
            if isinstance(reviewed, Reject):
                rejects.append(reject_row(sid, str(row.get("source")), "labels", reviewed.reason, reviewed.detail))
            else:
                samples.append(dict(validate_row(reviewed)))
        except (ReviewError, SchemaError, KeyError, TypeError, ValueError) as e:
            report.errors.append(f"sample {sid!r} (Label Studio {where}): {e}")
            continue
        labels += complete
    samples.sort(key=lambda r: r["id"])
    labels.sort(key=lambda r: (r["id"], r["created_at"] or "", r["annotator"]))
    rejects.sort(key=lambda r: r["id"])
    report.unannotated.sort()
    report.incomplete.sort(key=lambda r: (r["id"], r["annotator"]))
    return samples, labels, rejects


def write_pull(
    out: Path,
    samples: list[dict[str, Any]],
    labels: list[dict[str, Any]],
    rejects: list[dict[str, str]],
    report: PullReport,
) -> None:
    """Write data/, rejects/, labels.parquet and pull.json (atomically; a second pull overwrites the first)."""
    for folder, table in (
        ("data", _samples_table(samples)),
        ("rejects", pa.Table.from_pylist(rejects, schema=REJECT_SCHEMA)),
    ):
        (out / folder).mkdir(parents=True, exist_ok=True)
        write_parquet_atomic(table, out / folder / DATA_FILE)
        for old in (out / folder).glob("*.parquet"):
            if old.name != DATA_FILE:
                old.unlink()
    write_parquet_atomic(pa.Table.from_pylist(labels, schema=LABELS_SCHEMA), out / "labels.parquet")
    atomic_write_json(out / "pull.json", report.__dict__)


def _samples_table(samples: list[dict[str, Any]]) -> pa.Table:
    table = canonical_table(samples, rows_to_table(samples, REVIEW_COLUMNS).schema)
    return table.replace_schema_metadata(with_hf_metadata(table.schema).metadata)


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
        proj = find_review_project(ls, project, conn)
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
    samples, labels, rejects = convert_export(tasks, annotators, report)
    report.samples, report.rejected, report.labels = len(samples), len(rejects), len(labels)
    report.needs_review = sum(bool(r["needs_review"]) for r in samples)
    report.agreement = {q: a.as_dict() for q, a in agreement(labels).items()}
    write_pull(out, samples, labels, rejects, report)
    log(f"{report.samples + report.rejected} reviewed samples, {report.labels} labels written to {out}")
    return report


def _annotators(ls) -> dict[int, str]:
    """User id -> email; empty if this account may not list users (ids are used then)."""
    from label_studio_sdk.core.api_error import ApiError

    try:
        return {u.id: u.email or u.username for u in ls.users.list()}
    except ApiError:
        return {}
