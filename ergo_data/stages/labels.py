"""``labels``: merge human review labels (``ergo ls pull`` -> ``labels.parquet``) into a curated set.

Per sample, the latest label (by ``created_at``) decides: a rejected answer (``answer_correct`` false)
drops the sample with reason ``human_rejected_answer``; a human box replaces the machine boxes
(``box: replace``) or joins them (``box: join``) with ``source="human"``; a reviewed sample gets
``needs_review = false``. Samples without a label pass unchanged. Derived columns are recomputed.

>>> import pyarrow as pa, pyarrow.parquet as pq, tempfile, os
>>> path = os.path.join(tempfile.mkdtemp(), "labels.parquet")
>>> pq.write_table(pa.Table.from_pylist([{"id": "s/a", "annotator": "ann", "region_answerable": True,
...     "answer_correct": True, "x1": 10.0, "y1": 10.0, "x2": 30.0, "y2": 20.0, "lead_time_s": 4.0,
...     "created_at": "2026-01-01T00:00:00Z"}], schema=LABELS_SCHEMA), path)
>>> row = {"id": "s/a", "source": "s", "width": 100, "height": 50, "needs_review": True, "boxes": [
...     {"x1": 0.0, "y1": 0.0, "x2": 5.0, "y2": 5.0, "label": "cat", "source": "annotation"}]}
>>> out = LabelsStage(labels=path).process(pa.Table.from_pylist([row])).kept.to_pylist()[0]
>>> [(b["x1"], b["x2"], b["label"], b["source"]) for b in out["boxes"]], out["needs_review"]
([(10.0, 30.0, 'cat', 'human')], False)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import pyarrow as pa
import pyarrow.parquet as pq

from ergo_data.core.boxes import Box, BoxError
from ergo_data.core.errors import RecipeError
from ergo_data.core.schema import LABELS_SCHEMA
from ergo_data.pipeline.contract import Params, Reject, RowStage
from ergo_data.pipeline.registry import stage_registry
from ergo_data.stages.filters import refresh_derived

HUMAN_LABEL = "region"


class LabelsParams(Params):
    labels: str  # labels.parquet written by `ergo ls pull`
    box: Literal["replace", "join"] = "replace"  # the human box replaces or joins the machine boxes
    drop_unanswerable: bool = False  # also drop samples whose region the human judged not answerable


def _when(stamp: Any) -> datetime:
    try:
        when = datetime.fromisoformat(str(stamp or ""))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def load_labels(path: str | Path) -> dict[str, dict[str, Any]]:
    """``id -> latest label row``; RecipeError naming the file if it is missing or lacks columns."""
    p = Path(path)
    if not p.is_file():
        raise RecipeError(f"stage 'labels': labels file {str(p)!r} not found (write it with `ergo ls pull`)")
    try:
        table = pq.read_table(p)
    except (pa.ArrowException, OSError) as e:
        raise RecipeError(f"stage 'labels': {str(p)!r} is not a Parquet file: {e}") from None
    missing = [c for c in LABELS_SCHEMA.names if c not in table.column_names]
    if missing:
        raise RecipeError(
            f"stage 'labels': {str(p)!r} lacks columns {missing} (expected {LABELS_SCHEMA.names})"
        )
    latest: dict[str, dict[str, Any]] = {}
    for row in table.select(LABELS_SCHEMA.names).to_pylist():
        old = latest.get(row["id"])
        if old is None or _when(row["created_at"]) >= _when(old["created_at"]):
            latest[row["id"]] = row
    return latest


@stage_registry.register("labels")
class LabelsStage(RowStage):
    """Apply human review labels: drop rejected answers, put in human boxes; unlabelled rows pass."""

    Params = LabelsParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.labels = load_labels(self.params.labels)

    def run(self, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any] | Reject]:
        for row in rows:
            label = self.labels.get(row["id"])
            yield row if label is None else self.apply(row, label)

    def apply(self, row: dict[str, Any], label: dict[str, Any]) -> dict[str, Any] | Reject:
        who = label["annotator"] or "?"
        if label["answer_correct"] is False:
            return Reject(
                row,
                "human_rejected_answer",
                f"{who} marked the answer {row.get('answer')!r} wrong ({label['created_at']})",
            )
        if self.params.drop_unanswerable and label["region_answerable"] is False:
            return Reject(
                row,
                "human_region_unanswerable",
                f"{who} judged the question not answerable from the region ({label['created_at']})",
            )
        out = dict(row, needs_review=False)
        coords = [label[k] for k in ("x1", "y1", "x2", "y2")]
        if all(c is not None for c in coords):
            try:
                human = Box(*coords)
                if row.get("width") and row.get("height"):
                    human = human.clamp((row["width"], row["height"]))
            except BoxError as e:
                return Reject(row, "human_box_invalid", f"box by {who}: {e}")
            machine = [b for b in row.get("boxes") or [] if b.get("source") != "human"]
            names = {b.get("label") for b in machine}
            record = human.to_record(
                label=(names.pop() if len(names) == 1 else None) or HUMAN_LABEL, source="human"
            )
            out["boxes"] = [record] if self.params.box == "replace" else machine + [record]
            return refresh_derived(out)
        return out
