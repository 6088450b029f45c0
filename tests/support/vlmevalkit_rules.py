"""Test-only reference: VLMEvalKit's rule matcher ``can_infer`` (vlmeval/utils/matching_util.py), re-written from
its documented behaviour so the answer-matching corpus can state what VLMEvalKit would score.

``can_infer(answer, choices)``: blank ``.()[],:;!*#{}``, split into words; if exactly one capital choice letter
stands among the words and it is among the last four words, that letter; otherwise, if the lower-cased answer
is at most twice the total length of the options and exactly one option's (lower-cased) text is a substring of
it, that option's letter; otherwise False. (The refusal letter ``Z`` is left out: no corpus item refuses.)

>>> can_infer("The answer is B", {"A": "red", "B": "blue"}), can_infer("b", {"A": "red", "B": "blue"})
('B', False)
"""

from __future__ import annotations


def can_infer(answer: str, choices: dict[str, str]) -> str | bool:
    answer = str(answer)
    return _option(answer, choices) or _text(answer, choices)


def _option(answer: str, choices: dict[str, str]) -> str | bool:
    for c in ".()[],:;!*#{}":
        answer = answer.replace(c, " ")
    words = [w.strip() for w in answer.split()]
    present = [c for c in choices if c in words]
    if len(present) == 1 and words.index(present[0]) > len(words) - 5:
        return present[0]
    return False


def _text(answer: str, choices: dict[str, str]) -> str | bool:
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    found = [k for k, v in choices.items() if str(v).lower() in answer]
    return found[0] if len(found) == 1 else False
