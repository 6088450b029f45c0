"""The ``difficulty`` stage: k seeded rollouts per sample with the tiny policy, pass@k and reward std."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ergo_data.core.errors import RecipeError
from ergo_data.pipeline.executor.local import run_pipeline
from ergo_data.pipeline.recipe import parse_recipe
from ergo_data.pipeline.registry import source_registry, stage_registry
from ergo_data.stages.decode import DecodeStage
from tests.support.paths import EXAMPLES
from tests.support.scripted import scripted_first_turn

pytestmark = pytest.mark.integration  # the stage runs the tiny policy

SMALL = '<tool_call>\n{"name": "zoom", "arguments": {"x1": 10, "y1": 20, "x2": 60, "y2": 70}}\n</tool_call><|im_end|>'
LARGE = '<tool_call>\n{"name": "zoom", "arguments": {"x1": 0, "y1": 0, "x2": 400, "y2": 400}}\n</tool_call><|im_end|>'
COLUMNS = ("pass_at_k", "acc_rate", "reward_mean", "reward_std", "zero_variance", "zoom_rate", "difficulty_k")


@pytest.fixture(scope="module")
def rows() -> pa.Table:
    src = source_registry.get("vstar")(name="examples", path=str(EXAMPLES / "vstar"))
    table = pa.Table.from_pylist([r for r in src.read() if r["id"] in ("examples/doll", "examples/flag")])
    return DecodeStage().process(table).kept


def _stage(**params):
    base = {"model": "tiny", "k": 2, "budget_tokens": 64, "max_new_tokens": 8}
    return stage_registry.get("difficulty")(**{**base, **params})


def test_a_random_policy_that_never_zooms_gives_zero_variance_groups(rows):
    res = _stage().process(rows)
    assert not res.rejected and res.kept.num_rows == 2
    for r in res.kept.to_pylist():
        assert {c: r[c] for c in COLUMNS} == {"pass_at_k": 0.0, "acc_rate": 0.0, "reward_mean": 0.0, "reward_std": 0.0,
                                              "zero_variance": True, "zoom_rate": 0.0, "difficulty_k": 2}


RULES = {"r_format": 1.0, "r_acc": 1.0, "r_box": 0.5}


def test_zooms_of_different_size_give_reward_variance(rows):
    stage = _stage(max_new_tokens=48, rewards=RULES)
    model, processor = stage._load()
    with scripted_first_turn(model, processor.tokenizer, [SMALL, LARGE], ["<answer>A</answer><|im_end|>"]):
        res = stage.process(rows.slice(0, 1))  # run 1 zooms small, run 2 on the whole image; both answer A
    r = res.kept.to_pylist()[0]
    # doll's answer is A: r_format = r_acc = 1 in both runs; r_box (weight 0.5) is 1 for the small zoom and 0
    # for the whole-image one: totals (2.5, 2.0)
    assert r["zoom_rate"] == 1.0 and r["acc_rate"] == 1.0 and r["reward_mean"] == pytest.approx(2.25)
    assert r["reward_std"] == pytest.approx(0.25) and r["zero_variance"] is False


def test_the_default_reward_set_is_the_training_one(tmp_path):
    assert _stage().reward_names == ["r_format", "r_acc", "r_region", "r_box"]
    stage = _stage(rewards_from="pipelines/train_tiny.yaml")
    assert stage.weights == {"r_format": 1.0, "r_acc": 1.0, "r_region": 1.0, "r_box": 0.5}
    assert stage.max_pixels == 64 * 28 * 28  # the recipe's budget_tokens
    (tmp_path / "x.yaml").write_text("name: x\n")
    with pytest.raises(RecipeError, match="has no 'rewards' mapping"):
        _stage(rewards_from=str(tmp_path / "x.yaml"))


def test_runs_are_seeded_per_sample_whatever_the_order(rows):
    stage = _stage(keep_runs=True)
    forward = {r["id"]: r["difficulty_runs"] for r in stage.process(rows).kept.to_pylist()}
    backward = {r["id"]: r["difficulty_runs"] for r in stage.process(rows.take([1, 0])).kept.to_pylist()}
    assert forward == backward
    runs = json.loads(forward["examples/doll"])
    assert len(runs) == 2 and runs[0]["turn1"] != runs[1]["turn1"]  # two different samples of the policy
    other = {r["id"]: r["difficulty_runs"] for r in _stage(keep_runs=True, seed=1).process(rows).kept.to_pylist()}
    assert other != forward


def test_a_sample_that_cannot_be_read_is_rejected_with_a_reason(rows):
    bad = rows.to_pylist()[:1]
    bad[0]["image"] = {"bytes": None, "path": str(EXAMPLES / "no_such_image.jpg")}
    res = _stage().process(pa.Table.from_pylist(bad, schema=rows.schema))
    assert res.kept.num_rows == 0
    assert res.rejected[0]["reason"] == "difficulty_failed" and "no_such_image" in res.rejected[0]["detail"]


def test_bad_params_and_unknown_rewards_are_recipe_errors():
    with pytest.raises(RecipeError, match="k"):
        _stage(k=0)
    with pytest.raises(RecipeError, match="unknown reward 'r_nope'"):
        _stage(rewards={"r_nope": 1.0})
    with pytest.raises(RecipeError, match="cannot load model"):
        _stage(model=str(EXAMPLES / "no_such_model")).process(pa.table({"id": ["x"], "image": [None]}))


def test_in_a_recipe_a_sql_stage_drops_zero_variance_items(tmp_path):
    recipe = parse_recipe({
        "name": "difficulty_demo",
        "sources": [{"type": "vstar", "name": "examples", "path": str(EXAMPLES / "vstar")}],
        "stages": [
            {"type": "decode"},
            {"type": "sql", "where": "id IN ('examples/doll', 'examples/flag', 'examples/signicade')"},
            {"type": "difficulty", "model": "tiny", "k": 2, "budget_tokens": 64, "max_new_tokens": 8},
            {"type": "sql", "where": "NOT zero_variance"},
        ],
    })
    stats = run_pipeline(recipe, tmp_path, quiet=True)
    assert stats["invariant"]["ok"]
    by_stage = {s["stage"]: s for s in stats["stages"]}
    assert by_stage["difficulty"]["in"] == by_stage["difficulty"]["out"] == 3
    rejects = pq.read_table(sorted((tmp_path / "rejects").glob("*.parquet"))).to_pylist()
    zero_var = [r for r in rejects if r["reason"] == "sql_filter" and "zero_variance" in r["detail"]]
    assert len(zero_var) == 3  # the random policy never zooms: every group would have zero variance
