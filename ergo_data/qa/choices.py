"""Multiple-choice options: the correct answer plus distractors from the same answer vocabulary.

Distractors are drawn deterministically per (seed, key) from a pool the caller orders by plausibility
(or the whole pool, sampled); the answer's position is shuffled with ``shuffled_options`` and the
correct letter returned.

>>> make_choices("5", count_distractors(5), 4, key="img/counting/0", seed=0)
(['6', '7', '4', '5'], 'D')
>>> make_choices("left", ["right"], 4, key="k", seed=0)[0]
['left', 'right']
"""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence


def normalize_answer(text: str) -> str:
    """Case- and space-insensitive form used to keep distractors distinct from the answer.

    >>> normalize_answer("  Coca-Cola ")
    'coca-cola'
    """
    return " ".join(text.lower().split())


def pick_distractors(answer: str, pool: Iterable[str], n: int, key: str, seed: int, ordered: bool = False,
                     avoid: Iterable[str] = (), disjoint_words: bool = False) -> list[str]:
    """Up to ``n`` distinct distractors from ``pool`` (never the answer nor anything in ``avoid``).

    ``ordered=True`` takes them in pool order (most plausible first); otherwise a seeded sample of the
    sorted pool, so the result does not depend on the order the pool was built in. ``disjoint_words``
    drops candidates sharing a word with the answer (for labels: "mug" is not wrong for "black mug").

    >>> pick_distractors("black mug", ["mug", "doll", "flag"], 3, "k", 0, ordered=True, disjoint_words=True)
    ['doll', 'flag']
    """
    banned = {normalize_answer(answer)} | {normalize_answer(a) for a in avoid}
    answer_words = set(normalize_answer(answer).split())
    seen: set[str] = set()
    candidates: list[str] = []
    for item in pool:
        norm = normalize_answer(item)
        if disjoint_words and answer_words & set(norm.split()):
            continue
        if item.strip() and norm not in banned and norm not in seen:
            seen.add(norm)
            candidates.append(item)
    if ordered:
        return candidates[:n]
    candidates.sort()
    rng = random.Random(f"{seed}:{key}:distractors")
    return rng.sample(candidates, min(n, len(candidates)))


def make_choices(answer: str, distractors: Sequence[str], n_options: int, key: str, seed: int
                 ) -> tuple[list[str], str]:
    """``(options, correct letter)`` with at most ``n_options`` options (the answer + distractors in order).

    Raises ValueError if there is no distractor at all (a one-option question verifies nothing).
    """
    picked = pick_distractors(answer, distractors, max(0, n_options - 1), key, seed, ordered=True)
    if not picked:
        raise ValueError(f"no distractor for answer {answer!r} (need at least one besides the answer)")
    return shuffled_options([answer, *picked], 0, key, seed)


def count_distractors(n: int, how_many: int = 6) -> list[str]:
    """Nearby counts, nearest first, all >= 0: the plausible wrong answers to "how many".

    >>> count_distractors(1)
    ['2', '0', '3', '4', '5', '6']
    """
    out: list[str] = []
    step = 1
    while len(out) < how_many:
        for c in (n + step, n - step):
            if c >= 0 and len(out) < how_many:
                out.append(str(c))
        step += 1
    return out


def shuffled_options(options: list[str], answer_index: int, key: str, seed: int) -> tuple[list[str], str]:
    """Shuffle ``options`` deterministically per (seed, key); return them and the correct letter.

    >>> shuffled_options(["tiger", "lion", "bear", "eagle"], 0, "examples/signicade", seed=0)
    (['bear', 'eagle', 'lion', 'tiger'], 'D')
    """
    import random

    order = list(range(len(options)))
    random.Random(f"{seed}:{key}").shuffle(order)
    new = [options[i] for i in order]
    return new, chr(ord("A") + order.index(answer_index))
