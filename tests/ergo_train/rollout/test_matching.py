"""The answer matcher against a corpus of predictions with expected verdicts, and its agreement with
VLMEvalKit's rule matcher (``can_infer``), every disagreement being one of the documented differences."""

from __future__ import annotations

import json

import pytest

from ergo_train.eval.vlmeval import can_infer  # VLMEvalKit's rules, as ergo eval score applies them
from ergo_train.rollout.matching import answer_matches, infer_choice
from tests.support.paths import DATA

CORPUS = [json.loads(line) for line in (DATA / "answer_matching.jsonl").read_text(encoding="utf-8").splitlines()]
DOCUMENTED = {"lowercase_letter", "contradiction", "whole_words"}  # docs/rewards.md, "The answer matcher"


def test_the_corpus_is_large_enough():
    assert len(CORPUS) >= 60


@pytest.mark.parametrize("item", CORPUS, ids=lambda it: repr(it["prediction"])[:40])
def test_each_prediction_scores_as_expected(item):
    opts, letter = item["options"], item["answer_letter"]
    answer = opts[ord(letter) - 65]
    assert answer_matches(item["prediction"], opts, answer, letter) is item["expected"]
    assert answer_matches(item["prediction"], opts, answer) is item["expected"]  # letter derived from the answer


@pytest.mark.parametrize("item", CORPUS, ids=lambda it: repr(it["prediction"])[:40])
def test_the_stored_vlmevalkit_verdict_is_what_its_rules_give(item):
    choices = {chr(65 + i): o for i, o in enumerate(item["options"])}
    assert (can_infer(item["prediction"], choices) or None) == item["vlmevalkit"]


def test_agreement_with_vlmevalkit_and_every_difference_is_documented(capsys):
    agree, differ = 0, []
    for item in CORPUS:
        ours = answer_matches(item["prediction"], item["options"], "", item["answer_letter"])
        theirs = item["vlmevalkit"] == item["answer_letter"]
        if ours == theirs:
            agree += 1
        else:
            differ.append(item)
    for item in differ:
        assert item["difference"] in DOCUMENTED, item
    with capsys.disabled():
        print(f"\nanswer matcher: agrees with VLMEvalKit's can_infer on {agree}/{len(CORPUS)} predictions; "
              f"{len(differ)} deliberate differences: "
              + ", ".join(f"{d['prediction']!r} ({d['difference']})" for d in differ))
    assert agree >= len(CORPUS) - 10


def test_infer_choice_ignores_options_out_of_range():
    assert infer_choice("D", ["x", "y", "z"]) is None
