"""The reward set's judge account: a served judge that fails is counted per scoring call, logged as
``ergo/judge_failure_rate``, and stops the run above ``judge_max_failure_rate`` with an error naming the cause."""

from __future__ import annotations

import pytest
from PIL import Image

from ergo_data.core.vision import resized_size
from ergo_train.rewards.reward_set import JudgeFailureError, build_reward_funcs
from ergo_train.train.recipe import load_train_recipe
from tests.support.paths import EXAMPLES, ROOT
from tests.support.served import fault_server

MAX_PIXELS = 64 * 28 * 28
IMAGE = EXAMPLES / "vstar" / "flag.JPG"
FAILED = (503, {"error": {"message": "judge replica restarting"}})
ANSWERED = (200, {"choices": [{"index": 0, "message": {"role": "assistant", "content": "A"},
                               "logprobs": {"content": [{"token": "A", "logprob": -0.1, "top_logprobs": [
                                   {"token": "A", "logprob": -0.1}, {"token": "B", "logprob": -2.5}]}]}}]})


def _score(api_base: str, max_rate: float | None, n: int = 4):
    """One scoring call as TRL makes it: n rollouts that each zoom on a different region of one image."""
    spec = {"r_region": {"weight": 1.0, "judge": {"type": "vlm", "model": "judge", "api_base": api_base,
                                                  "retries": 0, "concurrency": 1, "max_pixels": MAX_PIXELS}}}
    funcs, metrics = build_reward_funcs(spec, MAX_PIXELS, num_generations=2, max_judge_failure_rate=max_rate)
    size = Image.open(IMAGE).size
    seen = resized_size(size, MAX_PIXELS)
    completions = []
    for i in range(n):  # distinct boxes: no verdict comes from the cache
        box = {"x1": 4 * i, "y1": 4 * i, "x2": seen[0] // 2 + 4 * i, "y2": seen[1] // 2 + 4 * i}
        call = {"type": "function", "function": {"name": "zoom", "arguments": box}}
        completions.append([{"role": "assistant", "content": "", "tool_calls": [call]},
                            {"role": "tool", "name": "zoom", "content": [{"type": "text", "text": "crop"}]},
                            {"role": "assistant", "content": "<answer>A</answer>"}])
    logged: dict[str, float] = {}
    values = funcs[0](prompts=[[]] * n, completions=completions, completion_ids=[[1]] * n,
                      id=[f"s{i}" for i in range(n)], image=[{"bytes": None, "path": str(IMAGE)}] * n,
                      width=[size[0]] * n, height=[size[1]] * n, question=["What colour is the flag?"] * n,
                      options=[["red", "blue"]] * n, answer=["red"] * n, answer_letter=["A"] * n,
                      log_metric=logged.__setitem__, trainer_state=None)
    return values, metrics, logged


@pytest.mark.integration
def test_judge_failures_are_logged_per_scoring_call_below_the_threshold():
    with fault_server([FAILED, ANSWERED]) as (api_base, bodies):  # the first request fails, the rest answer
        values, metrics, logged = _score(api_base, max_rate=0.3)
    assert len(bodies) == 4
    assert values == [0.0, 1.0, 1.0, 1.0]  # the failed query scores 0 (one request at a time: the first)
    assert metrics.history[-1]["ergo/judge_failure_rate"] == logged["ergo/judge_failure_rate"] == 0.25


@pytest.mark.integration
def test_a_judge_failure_rate_above_the_threshold_stops_with_the_cause():
    stop = r"failed on 1 of 4 region queries \(25\.0%, above judge_max_failure_rate 5\.0%\).*judge replica restarting"
    with fault_server([FAILED, ANSWERED]) as (api_base, _), pytest.raises(JudgeFailureError, match=stop):
        _score(api_base, max_rate=0.05)
    with fault_server([ANSWERED]) as (api_base, _):  # a judge that answers everything never stops the run
        values, _, logged = _score(api_base, max_rate=0.0)
    assert values == [1.0] * 4 and logged["ergo/judge_failure_rate"] == 0.0


def test_the_threshold_is_a_training_recipe_key_defaulting_to_five_percent():
    recipe = ROOT / "pipelines" / "train_tiny.yaml"
    assert load_train_recipe(recipe).judge_max_failure_rate == 0.05
    assert load_train_recipe(recipe, ["judge_max_failure_rate=0.2"]).judge_max_failure_rate == 0.2
