"""``labels``: merge human review labels (``ergo ls pull`` -> ``labels.parquet``) into a curated set.

Every annotator of a sample counts (their latest label); the team's verdict follows one policy
(docs/labelstudio.md, "Merge policy"):

- every annotator who answered says the answer is wrong: rejected, ``human_rejected_answer``;
- annotators disagree (on the answer, on answerability, or boxes with IoU < ``box_iou``): kept with
  ``needs_review = true`` and the reason in ``review_reason`` (``on_disagreement: reject`` rejects it,
  ``human_disagreement``);
- the region is judged not answerable alone: kept with ``needs_review`` and the reason
  (``on_unanswerable: reject`` rejects it, ``human_region_unanswerable``);
- fewer annotators than ``min_annotators``, or a question nobody answered: kept with ``needs_review``;
- a human box that cannot be placed on the image: rejected, ``human_box_invalid``.
Otherwise ``needs_review = false``. Agreed human boxes (their union) replace the machine boxes
(``box: replace``) or join them (``box: join``) with ``source="human"``; boxes in dispute leave the
machine boxes. Every row gets ``region_answerable``, ``review_comment`` (each annotator's comment),
``annotators`` (how many reviewed it; 0: not reviewed, the row passes unchanged) and ``review_reason``.

>>> import pyarrow as pa, pyarrow.parquet as pq, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "labels.parquet")
>>> pq.write_table(pa.Table.from_pylist([{"id": "s/a", "annotator": "ann", "region_answerable": True,
...     "answer_correct": True, "x1": 10.0, "y1": 10.0, "x2": 30.0, "y2": 20.0, "lead_time_s": 4.0,
...     "created_at": "2026-01-01T00:00:00Z", "comment": "box moved"}], schema=LABELS_SCHEMA), path)
>>> row = {"id": "s/a", "source": "s", "width": 100, "height": 50, "needs_review": True, "boxes": [
...     {"x1": 0.0, "y1": 0.0, "x2": 5.0, "y2": 5.0, "label": "cat", "source": "annotation"}]}
>>> out = LabelsStage(labels=path).process(pa.Table.from_pylist([row])).kept.to_pylist()[0]
>>> [(b["x1"], b["x2"], b["label"], b["source"]) for b in out["boxes"]], out["needs_review"]
([(10.0, 30.0, 'cat', 'human')], False)
>>> out["annotators"], out["review_comment"], out["region_answerable"]
(1, 'ann: box moved', True)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq
from pydantic import Field

from ergo_data.core.boxes import BoxError
from ergo_data.core.errors import RecipeError
from ergo_data.core.labels import DEFAULT_BOX_IOU, QUESTIONS, by_sample, consensus
from ergo_data.core.schema import LABELS_SCHEMA
from ergo_data.pipeline.contract import Params, Reject, RowStage
from ergo_data.pipeline.registry import stage_registry
from ergo_data.stages.filters import refresh_derived

HUMAN_LABEL = "region"
# Columns every row leaves the stage with (typed, so a chunk nobody reviewed has the same schema).
REVIEW_COLUMNS = {
    "region_answerable": pa.bool_(),
    "review_comment": pa.string(),
    "annotators": pa.int32(),
    "review_reason": pa.string(),
}
OPTIONAL_LABEL_COLUMNS = ("comment",)  # labels tables written before comments were pulled lack it
REJECT_REASONS = {
    "human_rejected_answer": "every annotator who answered marked the answer wrong",
    "human_disagreement": "annotators disagree (only with on_disagreement: reject)",
    "human_region_unanswerable": "the region is judged not answerable alone (only with on_unanswerable: reject)",
    "human_box_invalid": "a human box is degenerate or lies outside the image",
}


class ReviewPolicy(Params):
    """How a team's labels become one verdict (``ergo ls pull`` applies the defaults)."""

    box: Literal["replace", "join"] = "replace"  # agreed human boxes replace or join the machine boxes
    on_disagreement: Literal["review", "reject"] = "review"  # review: keep with needs_review + reason
    on_unanswerable: Literal["review", "reject"] = "review"  # a "no" on answerable from the region alone
    min_annotators: int = Field(1, ge=1)  # fewer annotators than this: kept with needs_review
    box_iou: float = Field(DEFAULT_BOX_IOU, gt=0, le=1)  # human boxes agree when every pair overlaps at least this much


class LabelsParams(ReviewPolicy):
    labels: str  # labels.parquet written by `ergo ls pull`


def load_labels(path: str | Path) -> dict[str, list[dict[str, Any]]]:
    """``id -> label rows`` (one per annotator, their latest); RecipeError naming a missing or bad file."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"stage 'labels': labels file {str(p)!r} not found (write it with `ergo ls pull`)")
    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as e:
        raise RecipeError(f"stage 'labels': {str(p)!r} is not a Parquet file: {e}") from None
    missing = [c for c in LABELS_SCHEMA.names if c not in table.column_names and c not in OPTIONAL_LABEL_COLUMNS]
    if missing:
        raise RecipeError(
            f"stage 'labels': {str(p)!r} lacks columns {missing} (expected {LABELS_SCHEMA.names})"
        )
    return by_sample(table.select([c for c in LABELS_SCHEMA.names if c in table.column_names]).to_pylist())


def _who_said(rows: Sequence[Mapping[str, Any]], question: str, value: bool) -> str:
    return ", ".join(str(r.get("annotator") or "?") for r in rows if r.get(question) is value)


def apply_review(
    row: Mapping[str, Any], labels: Sequence[Mapping[str, Any]], params: ReviewPolicy | None = None
) -> dict[str, Any] | Reject:
    """One sample and its label rows (one per annotator) -> the reviewed sample, or a Reject with the reason."""
    params = params or ReviewPolicy()
    if not labels:
        return {**dict.fromkeys(REVIEW_COLUMNS), "annotators": 0, **row}  # a column from an earlier merge stays
    try:
        c = consensus(labels, params.box_iou)
    except BoxError as e:
        return Reject(row, "human_box_invalid", str(e))
    when = max(str(r.get("created_at") or "") for r in labels)
    if c.answer_correct is False:
        who = _who_said(labels, "answer_correct", False)
        return Reject(row, "human_rejected_answer", f"{who} marked the answer {row.get('answer')!r} wrong ({when})")
    reasons = list(c.disagreements)
    if c.disagreements and params.on_disagreement == "reject":
        return Reject(row, "human_disagreement", "; ".join(reasons))
    if c.region_answerable is False:
        who = _who_said(labels, "region_answerable", False)
        if params.on_unanswerable == "reject":
            return Reject(
                row, "human_region_unanswerable",
                f"{who} judged the question not answerable from the region alone ({when})",
            )
        reasons.append(f"region_answerable: {who} says no (not answerable from the region alone)")
    for q in QUESTIONS:
        if all(r.get(q) is None for r in labels):
            reasons.append(f"{q}: not answered")
    if len(labels) < params.min_annotators:
        reasons.append(f"{len(labels)} annotator(s), {params.min_annotators} required")
    out = {
        **row,
        "needs_review": bool(reasons),
        "review_reason": "; ".join(reasons) or None,
        "region_answerable": c.region_answerable,
        "review_comment": c.comment,
        "annotators": len(labels),
    }
    if c.box is None:
        return out
    try:
        human = c.box.clamp((row["width"], row["height"])) if row.get("width") and row.get("height") else c.box
    except BoxError as e:
        return Reject(row, "human_box_invalid", f"box by {', '.join(c.annotators)}: {e}")
    machine = [b for b in row.get("boxes") or [] if b.get("source") != "human"]
    names = {b.get("label") for b in machine}
    record = human.to_record(label=(names.pop() if len(names) == 1 else None) or HUMAN_LABEL, source="human")
    out["boxes"] = [record] if params.box == "replace" else machine + [record]
    return refresh_derived(out)


@stage_registry.register("labels")
class LabelsStage(RowStage):
    """Apply human review labels by the merge policy; unlabelled rows pass (``annotators = 0``)."""

    Params = LabelsParams
    output_types = REVIEW_COLUMNS

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.labels = load_labels(self.params.labels)

    def run(self, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any] | Reject]:
        for row in rows:
            yield apply_review(row, self.labels.get(row["id"], []), self.params)
