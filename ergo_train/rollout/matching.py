"""The one answer matcher: which option a model's answer names, as leniently as VLMEvalKit's rule matcher.

``r_acc`` (training), ``ergo eval`` and the judges all call :func:`answer_matches` / :func:`infer_choice`, so a
prediction scores the same everywhere. The rules follow VLMEvalKit's ``can_infer`` (a letter standing alone
among the last few words, else exactly one option text inside the answer) with three deliberate differences,
listed in docs/rewards.md ("The answer matcher"):

1. a letter whose option text contradicts it (``B. red`` when B is "blue") scores 0 (VLMEvalKit takes the letter);
2. a lone lowercase letter is a letter (``b``, ``(b)``, ``b.``): VLMEvalKit only reads capitals;
3. an answer that is exactly one option's text wins before any letter reading, so ``A. Lincoln`` as an option's
   text is not read as the letter A.

Ambiguous answers name nothing: two letters (``A or B``), two option texts, a letter far from the end of a
sentence (``A dog sits on the left``: "A" is an article there).

>>> opts = ["red", "blue", "green"]
>>> [infer_choice(t, opts) for t in ["The answer is B", "Answer: B", "**B**", "Option B", r"\\boxed{B}", "B, blue"]]
['B', 'B', 'B', 'B', 'B', 'B']
>>> [infer_choice(t, opts) for t in ["A or B", "B. red", "it is blue or green", "maybe"]]
[None, None, None, None]
>>> infer_choice("It is blue.", opts), answer_matches("(b)", opts, "blue", "B")
('B', True)
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from functools import lru_cache

MATCHER_NAME = "ergo rule matcher (VLMEvalKit can_infer rules, stricter on contradictions)"
# VLMEvalKit's can_infer_option blanks these before splitting the answer into words
_BLANKED = str.maketrans({c: " " for c in ".()[],:;!*#{}"})
_LETTER_SPAN = 5  # the letter must be among the last 4 words (VLMEvalKit: index > len(words) - 5)
_LONE_LETTER = re.compile(r"\(?([A-Za-z])\)?[.):]?")
_SPACE = re.compile(r"\s+")


@lru_cache(maxsize=1 << 16)
def normalize_answer(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed, outer quotes/brackets and a final period dropped.

    >>> normalize_answer("  ＥＶＩＡＮ. "), normalize_answer('"Coca-Cola"')
    ('evian', 'coca-cola')
    """
    s = "".join(c for c in unicodedata.normalize("NFKC", text) if unicodedata.category(c) != "Cf")  # zero-width
    s = _SPACE.sub(" ", s).strip().casefold()
    s = s.rstrip(".。").strip()
    if len(s) >= 2 and s[0] + s[-1] in ('""', "''", "()", "[]", "“”", "‘’"):
        s = s[1:-1].strip()
    return s


def infer_choice(pred: str | None, options: Sequence[str]) -> str | None:
    """The letter of the one option ``pred`` names, or None when it names none or is ambiguous.

    >>> infer_choice("C", ["x", "y"]) is None   # no option C
    True
    """
    if not pred or not options:
        return None
    opts = tuple(map(str, options))
    return _infer(unicodedata.normalize("NFKC", pred).strip(), opts)


@lru_cache(maxsize=1 << 16)
def _infer(pred: str, options: tuple[str, ...]) -> str | None:
    letters = [chr(65 + i) for i in range(len(options))]
    said = normalize_answer(pred)
    norm_options = [normalize_answer(o) for o in options]
    if said in norm_options:  # exactly an option's text (even one that starts like "A. ...")
        return letters[norm_options.index(said)] if norm_options.count(said) == 1 else None
    lone = _LONE_LETTER.fullmatch(pred)
    if lone is not None:
        letter = lone.group(1).upper()
        return letter if letter in letters else None
    named = _named_options(said, norm_options, letters)
    words = pred.translate(_BLANKED).split()
    found = [x for x in letters if x in words]
    if len(found) == 1:
        letter = found[0]
        if words.index(letter) <= len(words) - _LETTER_SPAN:
            return None  # a capital far from the end is a word ("A dog..."), as in VLMEvalKit
        return letter if not named or letter in named else None  # its text must not name another option
    if found:
        return None  # several letters
    if len(said) > 2 * sum(len(o) for o in norm_options):
        return None  # too long to be an answer (VLMEvalKit's guard)
    return named[0] if len(named) == 1 else None


def _named_options(said: str, norm_options: Sequence[str], letters: Sequence[str]) -> list[str]:
    """Letters of the options whose text stands in ``said`` as whole words; an option inside a longer named
    option ("red" in "dark red") does not count twice."""
    hits = [(letter, o) for letter, o in zip(letters, norm_options)
            if o and re.search(rf"(?<!\w){re.escape(o)}(?!\w)", said)]
    return [letter for letter, o in hits if not any(o != other and o in other for _, other in hits)]


def answer_matches(pred: str | None, options: Sequence[str] | None, answer: str,
                   answer_letter: str | None = None) -> bool:
    """Does ``pred`` (the text inside ``<answer>``) name the correct answer?

    With options: :func:`infer_choice` must give the correct letter (``answer_letter``, else the letter of the
    option equal to ``answer``). Without options: normalized text equality.

    >>> answer_matches("b. Fiji", ["evian", "Fiji"], "Fiji", "B"), answer_matches("A. Fiji", ["evian", "Fiji"], "Fiji", "B")
    (True, False)
    """
    if pred is None:
        return False
    if not options:
        return normalize_answer(pred) == normalize_answer(answer)
    letter = answer_letter or _letter_of(tuple(map(str, options)), answer)
    return letter is not None and infer_choice(pred, options) == letter


@lru_cache(maxsize=1 << 14)
def _letter_of(options: tuple[str, ...], answer: str) -> str | None:
    want = normalize_answer(answer)
    for i, o in enumerate(options):
        if normalize_answer(o) == want:
            return chr(65 + i)
    return None
