"""Question templates over annotated boxes, each with a stated rule; ambiguous items are skipped with a reason.

Rules:

- **referent** (how an object is named): "the {label}" when the label occurs once among the
  annotations (flagged ``needs_review`` unless the label is exhaustively annotated: an unannotated
  twin could exist); for a label with several instances, only when it is exhaustive, "the leftmost /
  rightmost {label}" if its centre is at least ``margin`` x the mean box width beyond the next one.
- **spatial**: for two objects of different labels, "left/right" from the horizontal distance of
  the box centres, "above/below" from the vertical one, each only when the distance is at least
  ``margin`` x the mean extent of the two boxes on that axis; otherwise that axis is skipped as ambiguous.
- **counting**: "How many {label}s ...?" only when the label is exhaustively annotated and its count
  is within [min_count, max_count]; otherwise skipped with the reason.

>>> from ergo_data.qa.objects import AnnotatedImage, AnnotatedObject
>>> im = AnnotatedImage("room", None, [AnnotatedObject("mug", Box(800, 100, 900, 200)),
...                                    AnnotatedObject("lamp", Box(100, 120, 200, 220))], exhaustive=True)
>>> [(q.question, q.answer) for q in spatial_questions(im, margin=0.5, key="room", seed=0)
...  if isinstance(q, Question)]
[('In the image, is the lamp to the left or to the right of the mug?', 'left')]
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from ergo_data.core.boxes import Box
from ergo_data.qa.choices import count_distractors, make_choices, pick_distractors
from ergo_data.qa.colour import COLOUR_NAMES, colour_distractors, dominant_colour
from ergo_data.qa.objects import AnnotatedImage, AnnotatedObject

TEMPLATES = ("spatial", "counting", "colour")


@dataclass
class Question:
    """A generated question: ``slug`` is unique per image and template; ``objects`` are its relevant boxes."""

    template: str
    slug: str
    question: str
    answer: str
    objects: list[AnnotatedObject]
    options: list[str] = field(default_factory=list)
    answer_letter: str | None = None
    needs_review: bool = False
    evidence: dict[str, Any] = field(default_factory=dict)  # the measured facts the answer follows from


@dataclass
class Skip:
    """A candidate that was not generated, with a short ``reason`` code and a human ``detail``."""

    template: str
    slug: str
    reason: str
    detail: str


def slugify(text: str) -> str:
    """``"black mug"`` -> ``"black-mug"`` (for stable sample ids).

    >>> slugify("Black Mug / 2")
    'black-mug-2'
    """
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-") or "x"


def plural(label: str) -> str:
    """English plural of the last word of ``label`` (enough for object labels).

    >>> plural("car"), plural("bus"), plural("traffic light"), plural("strawberry"), plural("knife")
    ('cars', 'buses', 'traffic lights', 'strawberries', 'knives')
    """
    head, _, last = label.rpartition(" ")
    irregular = {"person": "people", "mouse": "mice", "knife": "knives", "sheep": "sheep", "child": "children",
                 "glasses": "glasses", "skis": "skis", "scissors": "scissors"}
    if last in irregular:
        word = irregular[last]
    elif re.search(r"(s|x|z|ch|sh)$", last):
        word = last + "es"
    elif re.search(r"[^aeiou]y$", last):
        word = last[:-1] + "ies"
    else:
        word = last + "s"
    return f"{head} {word}" if head else word


@dataclass(frozen=True)
class Referent:
    """How to name an object so that exactly one annotated object matches; ``certain`` is False when
    uniqueness cannot be verified (the label is not exhaustively annotated)."""

    phrase: str
    certain: bool


def referent(obj: AnnotatedObject, image: AnnotatedImage, margin: float) -> Referent | str:
    """A unique name for ``obj`` in ``image`` (see the module rules), or the reason there is none."""
    same = image.instances(obj.label)
    exhaustive = image.is_exhaustive(obj.label)
    if len(same) == 1:
        return Referent(f"the {obj.label}", exhaustive)
    if not exhaustive:
        return (f"{len(same)} boxed {plural(obj.label)} and the boxes are not exhaustive: "
                f"'the {obj.label}' is ambiguous")
    by_x = sorted(same, key=lambda o: o.box.center[0])
    for position, mine, nxt in (("leftmost", by_x[0], by_x[1]), ("rightmost", by_x[-1], by_x[-2])):
        if mine is obj:
            gap = abs(mine.box.center[0] - nxt.box.center[0])
            need = margin * (mine.box.width + nxt.box.width) / 2
            if gap >= need:
                return Referent(f"the {position} {obj.label}", True)
            return f"the {position} {obj.label} is only {gap:.0f} px from the next (< {need:.0f} px margin)"
    return f"{len(same)} {plural(obj.label)}: only the leftmost/rightmost one can be named unambiguously"


def axis_relation(a: Box, b: Box, axis: str, margin: float) -> tuple[str | None, float, float]:
    """``(relation of a to b or None if ambiguous, centre distance, required distance)`` on one axis.

    >>> axis_relation(Box(0, 0, 10, 10), Box(20, 0, 30, 10), "x", 0.5)
    ('left', 20.0, 5.0)
    >>> axis_relation(Box(0, 0, 10, 10), Box(3, 20, 13, 30), "x", 0.5)[0] is None
    True
    """
    i = 0 if axis == "x" else 1
    d = b.center[i] - a.center[i]
    ext = (a.width + b.width) / 2 if axis == "x" else (a.height + b.height) / 2
    need = margin * ext
    if abs(d) < need:
        return None, abs(d), need
    if axis == "x":
        return ("left" if d > 0 else "right"), abs(d), need
    return ("above" if d > 0 else "below"), abs(d), need


SPATIAL_TEXT = {
    "x": ("In the image, is {a} to the left or to the right of {b}?", ["left", "right"]),
    "y": ("In the image, is {a} above or below {b}?", ["above", "below"]),
}


def spatial_questions(image: AnnotatedImage, margin: float, key: str, seed: int, choices: bool = True,
                      max_pairs: int = 20) -> Iterator[Question | Skip]:
    """Left/right and above/below questions for pairs of objects with different labels (module rules)."""
    named: list[tuple[AnnotatedObject, Referent]] = []
    for i, obj in enumerate(sorted(image.objects, key=lambda o: (o.label, o.box.as_tuple()))):
        ref = referent(obj, image, margin)
        if isinstance(ref, Referent):
            named.append((obj, ref))
        else:
            yield Skip("spatial", f"spatial/{slugify(obj.label)}-{i}", "no_unique_referent", ref)
    pairs = [(p, q) for p, q in combinations(named, 2) if p[0].label != q[0].label]
    for n_pair, (p, q) in enumerate(pairs):
        rng = random.Random(f"{seed}:{key}:{p[1].phrase}:{q[1].phrase}")
        if rng.random() < 0.5:  # seeded order, so "left" and "right" answers are balanced
            p, q = q, p
        (a, ra), (b, rb) = p, q
        for axis in ("x", "y"):
            slug = f"spatial/{slugify(ra.phrase[4:])}--{slugify(rb.phrase[4:])}--{axis}"
            if n_pair >= max_pairs:
                yield Skip("spatial", slug, "too_many_pairs", f"only the first {max_pairs} pairs per image are used")
                continue
            relation, dist, need = axis_relation(a.box, b.box, axis, margin)
            if relation is None:
                yield Skip("spatial", slug, "spatial_ambiguous",
                           f"{ra.phrase} vs {rb.phrase}: box centres {dist:.0f} px apart on {axis} "
                           f"< margin {need:.0f} px ({margin} x mean extent)")
                continue
            template, opts = SPATIAL_TEXT[axis]
            qtext = template.format(a=ra.phrase, b=rb.phrase)
            options, letter = make_choices(relation, opts, 2, f"{key}/{slug}", seed) if choices else ([], None)
            yield Question("spatial", slug, qtext, relation, [a, b], options, letter,
                           needs_review=not (ra.certain and rb.certain),
                           evidence={"axis": axis, "centre_distance_px": round(dist, 1),
                                     "margin_px": round(need, 1),
                                     "unverified_uniqueness": [r.phrase for r in (ra, rb) if not r.certain]})


def counting_questions(image: AnnotatedImage, key: str, seed: int, n_options: int = 4, min_count: int = 2,
                       max_count: int = 12) -> Iterator[Question | Skip]:
    """"How many {label}s are there in the image?" for exhaustively annotated labels only."""
    for label, n in sorted(image.label_counts().items()):
        slug = f"counting/{slugify(label)}"
        if not image.is_exhaustive(label):
            yield Skip("counting", slug, "count_not_exhaustive",
                       f"{label!r}: {n} annotated, but the annotation does not claim every {label} is annotated")
            continue
        if not min_count <= n <= max_count:
            yield Skip("counting", slug, "count_out_of_range", f"{label!r}: count {n} outside [{min_count}, {max_count}]")
            continue
        answer = str(n)
        options, letter = (make_choices(answer, count_distractors(n), n_options, f"{key}/{slug}", seed)
                           if n_options else ([], None))
        yield Question("counting", slug, f"How many {plural(label)} are there in the image?", answer,
                       image.instances(label), options, letter, evidence={"count": n, "exhaustive": True})


def colour_questions(image: AnnotatedImage, pixels_of: Callable[[Box], np.ndarray], key: str, seed: int,
                     n_options: int = 4, margin: float = 0.5, inner: float = 0.6, review_below: float = 0.6
                     ) -> Iterator[Question | Skip]:
    """"What colour is {referent}?" from the dominant colour of the central ``inner`` part of the box.

    ``pixels_of(box)`` returns the box's RGB pixels (any resolution). Below ``review_below`` confidence
    (pixel share of the dominant colour), or with an unverified referent, the item is ``needs_review``.
    Labels that already name a colour ("red umbrella") are skipped: the question would answer itself.
    """
    for i, obj in enumerate(sorted(image.objects, key=lambda o: (o.label, o.box.as_tuple()))):
        ref = referent(obj, image, margin)
        slug = f"colour/{slugify(ref.phrase[4:]) if isinstance(ref, Referent) else slugify(obj.label) + f'-{i}'}"
        if not isinstance(ref, Referent):
            yield Skip("colour", slug, "no_unique_referent", ref)
            continue
        named = [c for c in COLOUR_NAMES if re.search(rf"\b{c}\b", obj.label.lower())]
        if named:
            yield Skip("colour", slug, "label_names_colour", f"label {obj.label!r} already names the colour {named[0]!r}")
            continue
        reading = dominant_colour(pixels_of(obj.box), inner=inner)
        options, letter = ([], None)
        if n_options:
            pool = pick_distractors(reading.name, colour_distractors(reading), n_options - 1, f"{key}/{slug}", seed)
            options, letter = make_choices(reading.name, pool, n_options, f"{key}/{slug}", seed)
        low = reading.confidence < review_below
        yield Question("colour", slug, f"What colour is {ref.phrase}?", reading.name, [obj], options, letter,
                       needs_review=low or not ref.certain,
                       evidence={"confidence": round(reading.confidence, 3), "shares": reading.shares,
                                 "pixels": reading.pixels, "inner": inner, "colour_space": "CIELAB D65 -> LCh",
                                 "low_confidence": low, "unverified_uniqueness": not ref.certain})
