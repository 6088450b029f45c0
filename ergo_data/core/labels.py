"""Human review labels (the ``labels`` table ``ergo ls pull`` writes): per-sample consensus and agreement.

One row per submitted annotation (``LABELS_SCHEMA``). Each annotator counts once per sample (their latest
row by ``created_at``). ``consensus`` says what the team agrees on and, one sentence each, where it does
not; ``agreement`` measures how far the team agrees over a whole table: per question, the samples two or
more annotators answered, how many of those agree, and Cohen's kappa (scikit-learn's
``cohen_kappa_score``) for every pair of annotators who answered the same samples.

>>> rows = [
...     {"id": "s/a", "annotator": "ann", "answer_correct": True, "region_answerable": True},
...     {"id": "s/a", "annotator": "bob", "answer_correct": False, "region_answerable": True},
...     {"id": "s/b", "annotator": "ann", "answer_correct": True, "region_answerable": False},
...     {"id": "s/b", "annotator": "bob", "answer_correct": True, "region_answerable": False},
... ]
>>> c = consensus(by_sample(rows)["s/a"])
>>> c.answer_correct, c.region_answerable, c.disagreements
(None, True, ['answer_correct: ann says correct, bob says wrong'])
>>> a = agreement(rows)["answer_correct"]
>>> a.labelled, a.overlapping, a.agree, [(p.first, p.second, p.n) for p in a.pairs]
(2, 2, 1, [('ann', 'bob', 2)])
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from ergo_data.core.boxes import Box, BoxError

QUESTIONS = ("answer_correct", "region_answerable")
ANSWER_WORDS = {"answer_correct": ("wrong", "correct"), "region_answerable": ("no", "yes")}
DEFAULT_BOX_IOU = 0.5


def label_time(stamp: Any) -> datetime:
    """``created_at`` as an aware datetime (unparseable or missing: the earliest possible)."""
    try:
        when = datetime.fromisoformat(str(stamp or ""))
    except ValueError:
        return datetime.min.replace(tzinfo=UTC)
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def by_sample(rows: Iterable[Mapping[str, Any]]) -> dict[str, list[Mapping[str, Any]]]:
    """``sample id -> rows``, one per annotator (their latest), ordered by annotator."""
    latest: dict[tuple[str, str], Mapping[str, Any]] = {}
    for row in rows:
        key = (str(row["id"]), str(row.get("annotator") or "?"))
        old = latest.get(key)
        if old is None or label_time(row.get("created_at")) >= label_time(old.get("created_at")):
            latest[key] = row
    out: dict[str, list[Mapping[str, Any]]] = {}
    for (sid, _), row in sorted(latest.items()):
        out.setdefault(sid, []).append(row)
    return out


def label_box(row: Mapping[str, Any]) -> Box | None:
    """The human box of a label row (null coordinates: the annotator drew none)."""
    coords = [row.get(k) for k in ("x1", "y1", "x2", "y2")]
    return None if any(c is None for c in coords) else Box(*coords)


def _who(row: Mapping[str, Any]) -> str:
    return str(row.get("annotator") or "?")


@dataclass
class Consensus:
    """What the annotators of one sample agree on; ``None`` where they disagree or nobody answered."""

    annotators: list[str]
    answer_correct: bool | None
    region_answerable: bool | None
    box: Box | None  # union of the drawn boxes when they agree; None if none drawn or they disagree
    disagreements: list[str] = field(default_factory=list)  # one sentence per point of disagreement
    comment: str | None = None  # every annotator's comment, "annotator: text" per line


def consensus(rows: Sequence[Mapping[str, Any]], box_iou: float = DEFAULT_BOX_IOU) -> Consensus:
    """The consensus of one sample's label rows (one per annotator, see ``by_sample``).

    A question counts only the annotators who answered it. Boxes agree when every pair of drawn boxes
    overlaps with IoU >= ``box_iou``; an annotator who drew none leaves the box to the others. Raises
    BoxError for a drawn box that is degenerate.
    """
    disagreements: list[str] = []
    answers: dict[str, bool | None] = {}
    for q in QUESTIONS:
        given = [(_who(r), bool(r[q])) for r in rows if r.get(q) is not None]
        values = {v for _, v in given}
        answers[q] = next(iter(values)) if len(values) == 1 else None
        if len(values) > 1:
            words = ANSWER_WORDS[q]
            disagreements.append(f"{q}: " + ", ".join(f"{who} says {words[v]}" for who, v in given))
    drawn = []
    for r in rows:
        try:
            box = label_box(r)
        except BoxError as e:
            raise BoxError(f"box by {_who(r)}: {e}") from None
        if box is not None:
            drawn.append((_who(r), box))
    box = Box.union(b for _, b in drawn) if drawn else None
    worst = min(
        ((a.iou(b), wa, wb) for (wa, a), (wb, b) in itertools.combinations(drawn, 2)), default=None
    )
    if worst is not None and worst[0] < box_iou:
        disagreements.append(f"box: {worst[1]} and {worst[2]} overlap with IoU {worst[0]:.2f} < {box_iou:g}")
        box = None
    comments = [f"{_who(r)}: {r['comment'].strip()}" for r in rows if (r.get("comment") or "").strip()]
    return Consensus(
        annotators=[_who(r) for r in rows],
        answer_correct=answers["answer_correct"],
        region_answerable=answers["region_answerable"],
        box=box,
        disagreements=disagreements,
        comment="\n".join(comments) or None,
    )


# ---- agreement over a whole table ------------------------------------------------------------------
@dataclass
class PairKappa:
    """Two annotators on the samples both answered: Cohen's kappa (None where undefined: one class only)."""

    first: str
    second: str
    n: int
    agree: int
    kappa: float | None


@dataclass
class QuestionAgreement:
    question: str
    labelled: int  # samples with at least one answer
    overlapping: int  # samples answered by two or more annotators
    agree: int  # overlapping samples where every answer is the same
    answers: dict[str, int] = field(default_factory=dict)  # e.g. {"correct": 7, "wrong": 2}, all answers
    pairs: list[PairKappa] = field(default_factory=list)

    @property
    def disagree(self) -> int:
        return self.overlapping - self.agree

    @property
    def percent_agree(self) -> float | None:
        return 100.0 * self.agree / self.overlapping if self.overlapping else None

    def summary(self) -> str:
        """One line, e.g. ``answer_correct: 4 of 5 overlapping samples agree (80%), kappa 0.55 (ann/bob, n=5)``."""
        if not self.overlapping:
            return f"{self.question}: {self.labelled} labelled, none by two annotators (no agreement to measure)"
        kappas = ", ".join(
            f"kappa {'n/a' if p.kappa is None else f'{p.kappa:.2f}'} ({p.first}/{p.second}, n={p.n})"
            for p in self.pairs
        )
        return (
            f"{self.question}: {self.agree} of {self.overlapping} overlapping samples agree "
            f"({self.percent_agree:.0f}%)" + (f", {kappas}" if kappas else "")
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "question": self.question, "labelled": self.labelled, "overlapping": self.overlapping,
            "agree": self.agree, "disagree": self.disagree, "answers": self.answers,
            "pairs": [p.__dict__ for p in self.pairs],
        }


def cohen_kappa(a: Sequence[bool], b: Sequence[bool]) -> float | None:
    """scikit-learn's Cohen's kappa; None where it is undefined (both raters used one and the same class)."""
    from sklearn.metrics import cohen_kappa_score

    if not a:
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        k = float(cohen_kappa_score(list(a), list(b), labels=[False, True]))
    return k if math.isfinite(k) else None


def agreement(rows: Iterable[Mapping[str, Any]]) -> dict[str, QuestionAgreement]:
    """Per question of ``QUESTIONS``: counts and pairwise Cohen's kappa over a labels table's rows."""
    samples = by_sample(rows)
    out: dict[str, QuestionAgreement] = {}
    for q in QUESTIONS:
        answered = {
            sid: {_who(r): bool(r[q]) for r in rs if r.get(q) is not None} for sid, rs in samples.items()
        }
        answered = {sid: a for sid, a in answered.items() if a}
        overlap = {sid: a for sid, a in answered.items() if len(a) > 1}
        words = ANSWER_WORDS[q]
        counts = {w: 0 for w in reversed(words)}
        for a in answered.values():
            for v in a.values():
                counts[words[v]] += 1
        stats = QuestionAgreement(
            q, len(answered), len(overlap), sum(len(set(a.values())) == 1 for a in overlap.values()), counts
        )
        people = sorted({who for a in overlap.values() for who in a})
        for first, second in itertools.combinations(people, 2):
            both = [(a[first], a[second]) for a in overlap.values() if first in a and second in a]
            if both:
                x, y = zip(*both)
                stats.pairs.append(
                    PairKappa(first, second, len(both), sum(u == v for u, v in both), cohen_kappa(x, y))
                )
        out[q] = stats
    return out
