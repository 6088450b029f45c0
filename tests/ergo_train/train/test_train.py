"""Two real GRPO (GSPO preset) steps of the tiny Qwen2.5-VL with TRL's GRPOTrainer and the zoom rollout.

A random model never calls the zoom tool, so turn 1 is forced to write a valid tool call and turn 2 an
answer (``tests.support.scripted.scripted_first_turn``, a test-only hook); TRL then parses the call, runs
``ZoomEnv.zoom``, shows the crop, generates turn 2, scores with the real reward functions and updates the
weights. A second group of tests runs a real step on batches where one rollout writes a malformed call.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from PIL import Image

from ergo_data.core.boxes import Box
from ergo_data.core.errors import RecipeError
from ergo_data.core.imageio import ImageSource
from ergo_data.core.vision import resized_size
from ergo_train.models.loaders import load_model, load_processor
from ergo_train.models.processor import VISION_TOKENS
from ergo_train.rewards.reward_set import JudgeFailureError, StepMetrics, build_reward_funcs
from ergo_train.rollout.env import ANSWER_INSTRUCTION, ZoomEnv
from ergo_train.rollout.zoom import fit_aspect
from ergo_train.train.data import load_curated
from ergo_train.train.grpo import build_trainer, grpo_config, train
from ergo_train.train.recipe import VLLM_BAN, grpo_config_kwargs, load_train_recipe
from tests.support.paths import ROOT
from tests.support.scripted import scripted_first_turn
from tests.support.served import fault_server

RECIPE = ROOT / "pipelines" / "train_tiny.yaml"
SMALL = [10, 20, 60, 70]  # on the coarse view (every demo image's view is at least 224 x 168)
LARGE = [0, 0, 400, 400]  # clamped to the whole image: area fraction 1 > gamma 0.6
DATASET_COLUMNS = {"id", "image", "question", "options", "answer", "answer_letter", "boxes", "width", "height"}


# the demo's train split answers C or D: the first answer is right for some samples, the second never
ANSWERS = ["<answer>C</answer><|im_end|>", "<answer>A</answer><|im_end|>"]


def _call(box, name: str = "zoom", arguments=None) -> str:
    args = dict(zip(("x1", "y1", "x2", "y2"), box, strict=True)) if arguments is None else arguments
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": args})}\n</tool_call><|im_end|>'


def _record_rewards(parts, calls: dict[str, list[dict]]) -> None:
    """Wrap each real reward function to keep what TRL passed it (the function itself still runs)."""
    for component in parts.trainer.reward_funcs:
        real = component.func

        def recording(*args, _real=real, _name=component.__name__, **kwargs):
            values = _real(*args, **kwargs)
            # TRL reuses the environment instances across steps: snapshot what they hold now
            envs = [(e.crop_size, e.zoom_box, list(e.vision_tokens)) for e in kwargs["environments"]]
            calls.setdefault(_name, []).append({**kwargs, "values": list(values), "env_state": envs})
            return values

        component.func = recording


@pytest.fixture(scope="module")
def trained(demo_set, tmp_path_factory):
    """Step 1, a checkpoint, then step 2 resumed from it: two real GRPO steps with the forced zoom."""
    out = tmp_path_factory.mktemp("train")
    common = [f"data.path={demo_set}", f"output_dir={out}", "model=tiny", "grpo.save_strategy=steps", "grpo.save_steps=1"]
    calls: dict[str, list[dict]] = {}
    first = load_train_recipe(RECIPE, [*common, "grpo.max_steps=1"])
    parts = build_trainer(first)
    _record_rewards(parts, calls)
    before = {k: v.detach().clone() for k, v in parts.model.named_parameters()}
    with scripted_first_turn(parts.model, parts.processor.tokenizer, [_call(SMALL), _call(LARGE)], ANSWERS):
        train(first, parts)
    recipe = load_train_recipe(RECIPE, [*common, "grpo.max_steps=2", "resume_from_checkpoint=true"])
    parts = build_trainer(recipe)
    _record_rewards(parts, calls)
    with scripted_first_turn(parts.model, parts.processor.tokenizer, [_call(SMALL), _call(LARGE)], ANSWERS):
        result = train(recipe, parts)
    return recipe, parts, result, calls, before


@pytest.mark.integration
def test_two_real_grpo_steps_update_the_weights(trained):
    _, parts, result, _, before = trained
    assert result.global_step == 2
    changed = [k for k, v in parts.model.named_parameters() if not torch.equal(v.detach(), before[k])]
    assert changed, "a GRPO step with non-zero advantages must change the policy"
    losses = [h["loss"] for h in result.log_history if "loss" in h]
    assert len(losses) == 2 and all(math.isfinite(x) for x in losses)


@pytest.mark.integration
def test_rewards_got_the_dataset_columns_and_the_environments(trained):
    _, _, _, calls, _ = trained
    assert set(calls) == {"r_format", "r_acc", "r_region", "r_box"}
    for name, per_step in calls.items():
        assert len(per_step) == 2, name  # one scoring call per generation, steps_per_generation = 1
        for kw in per_step:
            assert DATASET_COLUMNS <= set(kw), (name, DATASET_COLUMNS - set(kw))
            n = len(kw["completions"])
            assert n == 4 and len(kw["id"]) == n and len(kw["environments"]) == n
            assert all(isinstance(env, ZoomEnv) for env in kw["environments"])
            # the original's file, not decoded: the tool and the rewards decode only what they crop
            assert all(isinstance(im, dict) and (im["bytes"] or im["path"]) for im in kw["image"])


@pytest.mark.integration
def test_each_rollout_did_two_turns_with_a_crop_of_the_expected_size(trained):
    recipe, _, _, calls, _ = trained
    mp = recipe.max_pixels
    for kw in calls["r_box"]:
        for i, completion in enumerate(kw["completions"]):
            roles = [m["role"] for m in completion]
            assert roles == ["assistant", "tool", "assistant"], roles
            call = completion[0]["tool_calls"][0]["function"]
            assert call["name"] == "zoom"
            xyxy = [call["arguments"][k] for k in ("x1", "y1", "x2", "y2")]
            assert xyxy in (SMALL, LARGE)
            size = (kw["width"][i], kw["height"][i])
            box = Box.from_model(xyxy, resized_size=resized_size(size, mp), original_size=size)
            x1, y1, x2, y2 = fit_aspect(box, size).integer(size)
            image_block, text_block = completion[1]["content"][:2]
            assert image_block["image"].size == resized_size((x2 - x1, y2 - y1), mp)
            assert ImageSource.open(kw["image"][i]).size == size
            text = text_block["text"]
            assert text.startswith(kw["question"][i]) and ANSWER_INSTRUCTION in text
            assert all(f"{chr(65 + j)}. {o}" in text for j, o in enumerate(kw["options"][i]))
            crop_size, zoom_box, tokens = kw["env_state"][i]
            assert crop_size == image_block["image"].size and zoom_box == box
            assert tokens[1] == image_block["image"].size[0] * image_block["image"].size[1] // 784
            # r_box scored the zoom independently: 1 when the crop covers at most 60% of the image
            assert kw["values"][i] == (1.0 if box.area <= 0.6 * size[0] * size[1] else 0.0)
        assert sorted(kw["values"]) == [0.0, 0.0, 1.0, 1.0]  # each group has a small and a large zoom


@pytest.mark.integration
def test_step_metrics_are_logged(trained):
    _, _, result, _, _ = trained
    steps = [h for h in result.log_history if "loss" in h]
    for h in steps:
        assert h["ergo/zoom_rate"] == 1.0 and h["ergo/zoom_ok_rate"] == 1.0
        assert 0.0 < h["ergo/zoom_area_frac"] <= 1.0
        assert h["ergo/vision_tokens_turn1"] > 0 and h["ergo/vision_tokens_turn2"] > 0
        assert 0.0 <= h["ergo/zero_variance_groups"] <= 1.0
        assert h["tools/call_frequency"] == 1.0
        for name in ("r_format", "r_acc", "r_region", "r_box"):
            assert f"rewards/{name}/mean" in h
        assert h["rewards/r_box/mean"] == 0.5


@pytest.mark.integration
def test_format_and_accuracy_carry_signal_end_to_end(trained):
    """With a real answer turn, r_format and r_acc are no longer constant zeros."""
    _, _, _, calls, _ = trained
    fmt = [v for kw in calls["r_format"] for v in kw["values"]]
    acc = [v for kw in calls["r_acc"] for v in kw["values"]]
    assert set(fmt) == {1.0}  # every scripted episode is well formed
    assert set(acc) == {0.0, 1.0}  # C or A: right for some samples, wrong for others
    for kw in calls["r_acc"]:
        for completion, letter, value in zip(kw["completions"], kw["answer_letter"], kw["values"], strict=True):
            assert value == (1.0 if completion[-1]["content"] == f"<answer>{letter}</answer>" else 0.0)


# A batch where ONE rollout makes a malformed call and the others make none: before the robust tool loop,
# TRL answered the bad call with text only and the step crashed in split_pixel_values_by_grid.
MALFORMED = {
    "bbox_2d_not_a_list": _call(None, arguments={"bbox_2d": "10, 20, 60, 70"}),
    "unknown_tool": _call(SMALL, name="crop"),
    "arguments_a_list": _call(None, arguments=SMALL),
    "extra_key": _call(None, arguments={"x1": 10, "y1": 20, "x2": 60, "y2": 70, "zoom": 2}),
    "bad_json": '<tool_call>\n{"name": "zoom", "arguments": {"x1": 10,, }}\n</tool_call><|im_end|>',
}
# (String coordinates are not malformed in training: TRL's parser types the arguments by the tool's schema, so
# "10" reaches both the tool and the rewards as 10.)
NO_CALL = "I cannot tell where to look.<|im_end|>"


@pytest.mark.integration
@pytest.mark.parametrize("kind", sorted(MALFORMED))
def test_a_malformed_call_in_a_batch_without_other_calls_still_trains(kind, demo_set, tmp_path):
    recipe = load_train_recipe(RECIPE, [f"data.path={demo_set}", f"output_dir={tmp_path}", "grpo.max_steps=1",
                                        "model=tiny"])
    parts = build_trainer(recipe)
    calls: dict[str, list[dict]] = {}
    _record_rewards(parts, calls)
    with scripted_first_turn(parts.model, parts.processor.tokenizer, [MALFORMED[kind], NO_CALL, NO_CALL, NO_CALL],
                             ANSWERS):
        result = train(recipe, parts)
    assert result.global_step == 1 and math.isfinite(result.log_history[-1]["train_loss"])
    kw = calls["r_format"][0]
    malformed = [i for i, c in enumerate(kw["completions"]) if "I cannot tell" not in str(c[0].get("content"))]
    assert len(malformed) == 1
    i = malformed[0]
    completion, env = kw["completions"][i], kw["environments"][i]
    if len(completion) > 1:  # TRL parsed the call and ran it
        tool = completion[1]
        assert tool["role"] == "tool" and isinstance(tool["content"][0]["image"], Image.Image)  # an image came back
        assert tool["content"][1]["text"].startswith("zoom error: ")
        assert env.zoomed and not env.zoom_ok  # the tool and r_format read the call with one parser...
    else:  # TRL's parser left the call as text: no tool ran, as for any unreadable call
        assert "<tool_call>" in completion[0]["content"] and not env.zoomed
    assert kw["values"][i] == 0.0  # ...and r_format agrees: 0
    assert calls["r_box"][0]["values"][i] == 0.0


@pytest.mark.integration
def test_a_served_judge_that_fails_stops_training_with_the_cause(demo_set, tmp_path):
    """The whole path: TRL calls the rewards, every zoom's region query fails at the judge server, the step stops."""
    with fault_server([(503, {"error": {"message": "judge replica restarting"}})]) as (api_base, bodies):
        judge = f"{{type: vlm, model: judge, api_base: '{api_base}', retries: 0, max_pixels: 50176}}"
        recipe = load_train_recipe(RECIPE, [f"data.path={demo_set}", f"output_dir={tmp_path}", "grpo.max_steps=1",
                                            "model=tiny", f"rewards.r_region.judge={judge}"])
        parts = build_trainer(recipe)
        with (scripted_first_turn(parts.model, parts.processor.tokenizer, [_call(SMALL), _call(LARGE)], ANSWERS),
              pytest.raises(JudgeFailureError, match=r"failed on 4 of 4 region queries at step 1 \(100\.0%.*"
                                                     r"judge replica restarting")):
            train(recipe, parts)
    assert len(bodies) == 4  # one request per zoom (no retries), none cached
    assert parts.metrics.history[-1]["ergo/judge_failure_rate"] == 1.0


@pytest.mark.integration
def test_saved_policy_loads_back_for_evaluation(trained):
    recipe, _, result, _, _ = trained
    model, processor = load_model(str(result.output_dir), max_pixels=recipe.max_pixels)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert processor.image_processor.size["longest_edge"] == recipe.max_pixels


@pytest.mark.integration
def test_step_two_resumed_from_the_step_one_checkpoint(trained):
    _, parts, result, _, _ = trained
    assert sorted(p.name for p in result.output_dir.glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    assert [h["step"] for h in result.log_history if "loss" in h] == [1, 2]  # step 1's log came back with it
    assert len(parts.metrics.history) == 1  # the resumed run scored one generation: step 1 was not redone


@pytest.mark.integration
def test_lora_trains_only_adapters_on_the_language_model(demo_set, tmp_path):
    recipe = load_train_recipe(RECIPE, [f"data.path={demo_set}", f"output_dir={tmp_path}", "model=tiny", "lora.r=4",
                                        "lora.alpha=8"])
    model = build_trainer(recipe).trainer.model
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n and "language_model" in n for n in trainable)
    assert any(n.endswith("q_proj.lora_A.default.weight") for n in trainable)


# ---- recipe validation (no training) ------------------------------------------------------------------
def test_gspo_preset_and_overrides():
    recipe = load_train_recipe(RECIPE, ["preset=gspo", "grpo.steps_per_generation=4"])
    kw = grpo_config_kwargs(recipe, suppress_token_ids=[7, 9])
    assert (kw["importance_sampling_level"], kw["loss_type"], kw["beta"]) == ("sequence", "grpo", 0.0)
    assert (kw["epsilon"], kw["epsilon_high"], kw["steps_per_generation"]) == (3e-4, 4e-4, 4)
    assert kw["reward_weights"] == [1.0, 1.0, 1.0, 0.5]
    assert kw["generation_kwargs"]["suppress_tokens"] == [7, 9]
    vllm = grpo_config_kwargs(recipe, use_vllm=True, suppress_token_ids=[7])["generation_kwargs"]
    assert "suppress_tokens" not in vllm and vllm["logit_bias"] == {7: VLLM_BAN}  # SamplingParams has no suppress_tokens


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["colocate", "server"])
def test_under_vllm_every_vision_token_is_banned_by_a_logit_bias(mode):
    """vLLM is not installed here: what can be checked is the GRPOConfig TRL hands to it. TRL 1.16 passes
    ``generation_kwargs`` unchanged into ``SamplingParams(**kw)`` (colocate) or the server's JSON request."""
    processor = load_processor("tiny")
    tok = processor.tokenizer
    recipe = load_train_recipe(RECIPE, ["grpo.use_vllm=true", f"grpo.vllm_mode={mode}",
                                        "grpo.generation_kwargs={logit_bias: {42: 1.5}}"])
    config = grpo_config(recipe, processor)
    gen = config.generation_kwargs
    vision = {tok.convert_tokens_to_ids(t) for t in VISION_TOKENS}
    assert len(vision) == 5 and None not in vision
    assert gen == {"logit_bias": {42: 1.5, **dict.fromkeys(sorted(vision), VLLM_BAN)}}  # the recipe's bias kept
    sent = json.loads(json.dumps(gen))  # server mode: token ids travel as JSON object keys
    assert {int(k): v for k, v in sent["logit_bias"].items()} == gen["logit_bias"]
    assert math.exp(VLLM_BAN) < torch.finfo(torch.float32).tiny  # a banned token's probability underflows


@pytest.mark.parametrize("override, message", [
    ("grpo.max_tool_calling_iterations=2", "ERGO zooms exactly once"),
    ("grpo.log_completions=true", "log_completions must be false"),
    ("budget_tokens=0", "budget_tokens"),
    ("no_such_key=1", "no_such_key"),
])
def test_bad_recipes_are_clear_errors(override, message):
    with pytest.raises(RecipeError, match=message):
        grpo_config_kwargs(load_train_recipe(RECIPE, [override]))


def test_rewards_are_validated_by_name_and_budget():
    with pytest.raises(RecipeError, match="unknown reward 'r_nope'"):
        build_reward_funcs({"r_nope": 1.0}, 50176)
    with pytest.raises(RecipeError, match="differs from the rollout"):
        build_reward_funcs({"r_box": {"weight": 1.0, "max_pixels": 1003520}}, 50176)
    with pytest.raises(RecipeError, match="needs a region judge"):
        build_reward_funcs({"r_region": 1.0}, 50176)


def test_missing_data_and_empty_split_are_clear_errors(demo_set, tmp_path):
    recipe = load_train_recipe(RECIPE, [f"data.path={tmp_path}"])
    with pytest.raises(RecipeError, match="no Parquet files"):
        load_curated(recipe.data, recipe.max_pixels)
    recipe = load_train_recipe(RECIPE, [f"data.path={demo_set}", "data.split=holdout"])
    with pytest.raises(RecipeError, match="no rows with split 'holdout'"):
        load_curated(recipe.data, recipe.max_pixels)


def test_curated_rows_carry_the_turn1_prompt_and_the_coarse_view(demo_set):
    recipe = load_train_recipe(RECIPE, [f"data.path={demo_set}"])
    ds = load_curated(recipe.data, recipe.max_pixels)
    row = ds[0]
    assert row["split"] == "train"
    seen = resized_size((row["width"], row["height"]), recipe.max_pixels)
    assert row["images"][0].size == seen and ImageSource.open(row["image"]).size == (row["width"], row["height"])
    assert [m["role"] for m in row["prompt"]] == ["system", "user"]
    user = row["prompt"][1]["content"]
    assert user.startswith(row["question"]) and f"{seen[0]}x{seen[1]}" in user
    assert not any(o in user for o in row["options"])  # turn 1 has no options


def test_step_metrics_from_real_environments():
    metrics = StepMetrics({"r_a": 1.0, "r_b": 0.5}, num_generations=2)
    envs = [ZoomEnv(max_pixels=50176) for _ in range(4)]
    for env in envs:
        env.reset(image=Image.new("RGB", (1200, 900)), question="Q?", options=["a", "b"], answer="a")
    envs[0].zoom(0, 0, 126, 84)  # a quarter of the image
    envs[1].zoom(5, 5, 1, 1)  # malformed: the whole view comes back
    done = [{"role": "assistant"}, {"role": "tool"}, {"role": "assistant"}]
    completions = [done, done, [{"role": "assistant"}], [{"role": "assistant"}]]
    logged = {}
    metrics.record("r_a", [1.0, 0.0, 0.0, 0.0], completions, {"environments": envs})
    assert not metrics.history  # waits for every component
    metrics.record("r_b", [0.0, 0.0, 1.0, 1.0], completions,
                   {"environments": envs, "log_metric": lambda k, v: logged.__setitem__(k, v)})
    m = metrics.history[-1]
    assert m["ergo/zoom_rate"] == 0.5 and m["ergo/zoom_ok_rate"] == 0.5
    assert m["ergo/zoom_area_frac"] == pytest.approx((0.25 + 1.0) / 2)
    assert m["ergo/vision_tokens_turn1"] == 54 and m["ergo/vision_tokens_turn2"] == 54
    assert m["ergo/zero_variance_groups"] == 0.5  # group 1 totals (1, 0); group 2 totals (0.5, 0.5)
    assert logged["ergo/zoom_rate"] == 0.5
