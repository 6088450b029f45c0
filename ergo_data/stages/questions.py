"""Stages over generated questions from any source: ``question_dedup``, ``multiple_choice``, ``box_agreement``.

(Question *generation* lives in sources — ``questions``, ``synthetic``, ``ocr_docs``, ``detector`` — because
one image yields several samples and the run's invariant counts every sample its source emitted.)

All three are global: they look across rows of the same image, seeded and independent of row order.

>>> import pyarrow as pa
>>> rows = [{"id": "s/a", "source": "s", "image": {"bytes": None, "path": "x.jpg"}, "question": "How many cars?",
...          "answer": "5", "category": "counting"},
...         {"id": "s/b", "source": "s", "image": {"bytes": None, "path": "x.jpg"}, "question": "how many  CARS",
...          "answer": "5", "category": "counting"}]
>>> QuestionDedupStage().process(pa.Table.from_pylist(rows)).rejected[0]["detail"]
"same image and question as s/a ('how many cars')"
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from typing import Any, Literal

import pyarrow as pa
from pydantic import Field

from ergo_data.core.boxes import Box, BoxError
from ergo_data.core.schema import rows_to_table
from ergo_data.pipeline.contract import GlobalStage, Params, StageResult
from ergo_data.pipeline.registry import stage_registry
from ergo_data.qa.choices import make_choices, pick_distractors


def normalize_question(text: str) -> str:
    """Case, width, punctuation and spacing folded: the form two questions are compared in.

    >>> normalize_question('What is written  directly below "STAND-BY"?')
    'what is written directly below stand by'
    """
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(re.sub(r"[^\w\s]|_", " ", text).split())


def image_identity(row: dict[str, Any]) -> str:
    """The image a row asks about: its sha256 once decoded, else its path (or the id for embedded bytes)."""
    if row.get("image_sha256"):
        return f"sha256:{row['image_sha256']}"
    img = row.get("image") or {}
    return f"path:{img.get('path')}" if img.get("path") else f"id:{row['id']}"


def _table(rows: list[dict[str, Any]], like: pa.Table) -> pa.Table:
    return rows_to_table(rows) if rows else like.schema.empty_table()


class QuestionDedupParams(Params):
    pass


@stage_registry.register("question_dedup")
class QuestionDedupStage(GlobalStage):
    """Keep one sample per (image, normalized question): the first by id; the others are rejects naming it."""

    Params = QuestionDedupParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._summary: dict[str, Any] = {}

    def process(self, table: pa.Table) -> StageResult:
        rows = sorted(table.to_pylist(), key=lambda r: r["id"])
        first: dict[tuple[str, str], dict[str, Any]] = {}
        kept, rejected = [], []
        for r in rows:
            k = (image_identity(r), normalize_question(r["question"]))
            if k not in first:
                first[k] = r
                kept.append(r)
                continue
            other = first[k]
            conflict = "" if r.get("answer") == other.get("answer") else \
                f"; answers differ: {r.get('answer')!r} vs {other.get('answer')!r}"
            rejected.append(self.reject(r, "duplicate_question",
                                        f"same image and question as {other['id']} ({k[1]!r}){conflict}"))
        self._summary = {"kept": len(kept), "duplicates": len(rejected),
                         "kept_by_category": dict(sorted(Counter(str(r.get("category")) for r in kept).items())),
                         "needs_review_by_category": dict(sorted(Counter(
                             str(r.get("category")) for r in kept if r.get("needs_review")).items()))}
        return StageResult(_table(kept, table), rejected)

    def summary(self) -> dict[str, Any]:
        return self._summary


class MultipleChoiceParams(Params):
    n_options: int = Field(4, ge=2)
    categories: list[str] | None = None  # only rows of these categories (default: every open question)
    min_options: int = Field(2, ge=2)  # fewer options possible -> the row stays open (or is rejected)
    reject_if_short: bool = False  # True: a row that cannot get min_options leaves with `no_distractors`
    disjoint_words: bool = True  # distractors share no word with the answer ("mug" is not wrong for "black mug")
    seed: int = 0


@stage_registry.register("multiple_choice")
class MultipleChoiceStage(GlobalStage):
    """Give open questions options: distractors are other answers of the same category in the set
    (its answer vocabulary), sampled per row with the seed; the answer position is shuffled, letter stored."""

    Params = MultipleChoiceParams

    def process(self, table: pa.Table) -> StageResult:
        p = self.params
        rows = sorted(table.to_pylist(), key=lambda r: r["id"])
        vocab: dict[Any, set[str]] = defaultdict(set)
        for r in rows:
            vocab[r.get("category")].add(r["answer"])
        kept, rejected = [], []
        for r in rows:
            if r.get("options") or (p.categories is not None and r.get("category") not in p.categories):
                kept.append(r)
                continue
            pool = pick_distractors(r["answer"], vocab[r.get("category")], p.n_options - 1, r["id"], p.seed,
                                    disjoint_words=p.disjoint_words)
            if len(pool) + 1 < p.min_options:
                if p.reject_if_short:
                    rejected.append(self.reject(r, "no_distractors", f"category {r.get('category')!r} has "
                                                f"{len(pool)} other answers; need {p.min_options - 1}"))
                else:
                    kept.append(r)
                continue
            options, letter = make_choices(r["answer"], pool, p.n_options, r["id"], p.seed)
            kept.append({**r, "options": options, "answer_letter": letter})
        return StageResult(_table(kept, table), rejected)


class BoxAgreementParams(Params):
    min_iou: float = Field(0.5, ge=0, le=1)
    action: Literal["reject", "review"] = "review"  # what a disagreement does to the sample
    check: list[str] = ["detector", "ocr"]  # noqa: RUF012 (box sources judged: machine-made boxes)
    reference: list[str] = ["annotation", "human", "synthetic"]  # noqa: RUF012 (what they are judged against)
    match_labels: bool = True  # compare only boxes of the same label (or label group); False: any label
    label_groups: list[list[str]] = []  # noqa: RUF012 (labels naming one kind of object: [[car, truck]])


@stage_registry.register("box_agreement")
class BoxAgreementStage(GlobalStage):
    """Each box of a ``check`` source (e.g. ``detector``) is compared with the ``reference`` boxes (e.g.
    ``annotation``) of the same image and label: its agreement is the best IoU. A box that has reference
    boxes but agrees with none (best IoU < ``min_iou``) rejects the sample or marks it ``needs_review``.
    Boxes without a reference counterpart are not judged (counted in the summary)."""

    Params = BoxAgreementParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self._summary: dict[str, Any] = {}
        self._group = {label: min(group) for group in self.params.label_groups for label in group}

    def _label(self, label: str) -> str:
        return self._group.get(label, label) if self.params.match_labels else ""

    def process(self, table: pa.Table) -> StageResult:
        p = self.params
        rows = sorted(table.to_pylist(), key=lambda r: r["id"])
        refs: dict[tuple[str, str], set[tuple[str, tuple[float, ...]]]] = defaultdict(set)
        for r in rows:
            for b in r.get("boxes") or []:
                if b["source"] in p.reference:
                    refs[(image_identity(r), self._label(b["label"]))].add(
                        (b["source"], (b["x1"], b["y1"], b["x2"], b["y2"])))
        stats: Counter = Counter()
        ious: list[float] = []
        kept, rejected = [], []
        for r in rows:
            worst: tuple[float, str] | None = None
            for b in r.get("boxes") or []:
                if b["source"] not in p.check:
                    continue
                others = refs.get((image_identity(r), self._label(b["label"])))
                if not others:
                    stats["unmatched"] += 1
                    continue
                try:
                    mine = Box.from_record(b)
                    best_src, best = max(((s, mine.iou(Box(*c))) for s, c in others), key=lambda t: (t[1], t[0]))
                except BoxError:
                    continue  # box_check rejects invalid boxes with a reason
                ious.append(best)
                stats["agree" if best >= p.min_iou else "disagree"] += 1
                if best < p.min_iou and (worst is None or best < worst[0]):
                    where = "label" if p.match_labels else "image"
                    worst = (best, (f"{b['source']} box {b['label']!r} {[round(v) for v in mine.as_tuple()]}: "
                                    f"best IoU {best:.2f} with the {best_src} boxes of the same {where} < {p.min_iou}"))
            if worst is None:
                kept.append(r)
            elif p.action == "reject":
                rejected.append(self.reject(r, "box_disagreement", worst[1]))
            else:
                kept.append({**r, "needs_review": True})
        self._summary = {"boxes_compared": stats["agree"] + stats["disagree"], "agree": stats["agree"],
                         "disagree": stats["disagree"], "without_reference": stats["unmatched"],
                         "mean_best_iou": round(sum(ious) / len(ious), 4) if ious else None,
                         "min_iou": p.min_iou, "action": p.action}
        return StageResult(_table(kept, table), rejected)

    def summary(self) -> dict[str, Any]:
        return self._summary
