"""Cold-start SFT: episodes token-identical to the GRPO rollout, loss on the assistant turns only, a real
SFTTrainer run whose checkpoint ``ergo train`` starts from."""

from __future__ import annotations

import math

import pytest
import torch
from typer.testing import CliRunner

from ergo_data.cli.app import app
from ergo_data.core.boxes import Box
from ergo_data.core.vision import resized_size
from ergo_train.models.loaders import load_model
from ergo_train.rollout.episode import EpisodeRenderer
from ergo_train.rollout.zoom import region_of
from ergo_train.train.data import load_split
from ergo_train.train.grpo import build_trainer, train
from ergo_train.train.recipe import load_train_recipe
from ergo_train.train.sft import answer_turn, build_sft_trainer, load_sft_recipe, run_sft, sft_zoom
from tests.support.paths import ROOT
from tests.support.scripted import scripted_first_turn

SFT = ROOT / "pipelines" / "sft_tiny.yaml"
GRPO = ROOT / "pipelines" / "train_tiny.yaml"
ZOOM = (10, 20, 60, 70)
ANSWER = "<answer>C</answer>"


@pytest.mark.integration
def test_an_sft_episode_is_token_identical_to_the_grpo_rollout_for_the_same_zoom(demo_set, tmp_path):
    recipe = load_train_recipe(GRPO, [f"data.path={demo_set}", f"output_dir={tmp_path}", "model=tiny",
                                      "grpo.max_steps=1"])
    parts = build_trainer(recipe)
    seen: list[dict] = []
    component = parts.trainer.reward_funcs[0]
    real = component.func

    def recording(*args, **kwargs):
        seen.append(kwargs)
        return real(*args, **kwargs)

    component.func = recording
    renderer = EpisodeRenderer(parts.processor, recipe.max_pixels)
    turn1 = renderer.turn1_text(ZOOM)
    with scripted_first_turn(parts.model, parts.processor.tokenizer, [turn1], [ANSWER + "<|im_end|>"]):
        train(recipe, parts)
    rows = {r["id"]: r for r in load_split(recipe.data)}
    kw = seen[0]
    assert len(kw["completion_ids"]) == 4
    for sample_id, ids, completion in zip(kw["id"], kw["completion_ids"], kw["completions"], strict=True):
        assert [m["role"] for m in completion] == ["assistant", "tool", "assistant"]  # TRL ran the zoom
        episode = renderer.render(rows[sample_id], ZOOM, ANSWER)
        assert list(ids) == episode.completion_ids, sample_id
        assert completion[1]["content"][0]["image"].size == episode.images[1].size


def test_sft_zoom_widens_the_region_to_the_margin_and_one_patch_inside_the_view():
    row = {"width": 4000, "height": 3000, "boxes": [{"x1": 1000, "y1": 1000, "x2": 1400, "y2": 1300}]}
    seen = resized_size((4000, 3000), 64 * 28 * 28)
    x1, y1, x2, y2 = sft_zoom(row, 64 * 28 * 28, margin=0.5)
    gt = region_of(row).to_model(seen, (4000, 3000))
    assert x1 <= gt[0] and y1 <= gt[1] and x2 >= gt[2] and y2 >= gt[3]
    assert min(x2 - x1, y2 - y1) >= 28 and x2 <= seen[0] and y2 <= seen[1]
    corner = {"width": 4000, "height": 3000, "boxes": [{"x1": 3990, "y1": 2990, "x2": 4000, "y2": 3000}]}
    x1, y1, x2, y2 = sft_zoom(corner, 64 * 28 * 28, margin=0.25)
    assert (x2, y2) == seen and (x2 - x1, y2 - y1) == (28, 28)
    assert Box(x1, y1, x2, y2).area > 0


@pytest.mark.integration
def test_loss_is_on_the_assistant_turns_only(demo_set):
    recipe = load_sft_recipe(SFT, [f"data.path={demo_set}"])
    parts = build_sft_trainer(recipe)
    rows = [parts.dataset[0], parts.dataset[1]]
    batch = parts.collator(rows)
    tok = parts.processor.tokenizer
    for i, row in enumerate(rows):
        episode = parts.collator.episode(row)
        trained = [t for t in batch["labels"][i].tolist() if t != -100]
        assert tok.decode(trained) == episode.turn1_text + answer_turn(row) + "<|im_end|>"
        assert "<tool_response>" not in tok.decode(trained) and "system" not in tok.decode(trained)
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    merge = parts.processor.image_processor.merge_size ** 2
    assert int((batch["input_ids"] == image_pad).sum()) == int(batch["image_grid_thw"].prod(-1).sum()) // merge
    assert batch["image_grid_thw"].shape[0] == 4  # per episode: the coarse view and the crop
    # the image tokens are marked as the processor marks them, so the model uses its 3-D (mrope) positions
    assert torch.equal(batch["mm_token_type_ids"], (batch["input_ids"] == image_pad).long())


@pytest.mark.integration
def test_ergo_sft_then_ergo_train_from_its_output(demo_set, tmp_path):
    sft_out, grpo_out = tmp_path / "sft", tmp_path / "grpo"
    res = CliRunner().invoke(app, ["sft", str(SFT), "--set", f"data.path={demo_set}", "--set", "sft.max_steps=3",
                                   "--set", "sft.logging_steps=1", "--out", str(sft_out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert "3 steps" in res.output and (sft_out / "config.json").exists()
    before, _ = load_model("tiny")
    after, _ = load_model(str(sft_out), max_pixels=64 * 28 * 28)
    moved = [n for n, p in after.named_parameters() if not torch.equal(p, dict(before.named_parameters())[n])]
    assert moved, "SFT must change the weights"
    res = CliRunner().invoke(app, ["train", str(GRPO), "--model", str(sft_out), "--set", f"data.path={demo_set}",
                                   "--set", "grpo.max_steps=1", "--out", str(grpo_out)], catch_exceptions=False)
    assert res.exit_code == 0, res.output
    assert (grpo_out / "config.json").exists()


@pytest.mark.integration
def test_dry_run_shows_the_first_episode(demo_set):
    res = CliRunner().invoke(app, ["sft", str(SFT), "--set", f"data.path={demo_set}", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert "episodes" in res.output and "<tool_call>" in res.output


@pytest.mark.integration
def test_bad_sft_recipes_are_clear_errors(tmp_path):
    res = CliRunner().invoke(app, ["sft", str(SFT), "--set", f"data.path={tmp_path}"])
    assert res.exit_code == 2 and "no Parquet files" in res.output
    res = CliRunner().invoke(app, ["sft", str(SFT), "--set", "sft.no_such_field=1"])
    assert res.exit_code == 2 and "no_such_field" in res.output


@pytest.mark.integration
def test_lora_sft_merges_into_a_full_checkpoint(demo_set, tmp_path):
    recipe = load_sft_recipe(SFT, [f"data.path={demo_set}", f"output_dir={tmp_path}", "sft.max_steps=1",
                                   "lora.r=4", "lora.alpha=8"])
    result = run_sft(recipe)
    model, _ = load_model(str(result.output_dir))
    assert not any("lora_" in n for n, _ in model.named_parameters())
    assert math.isfinite(result.log_history[-1]["train_loss"])
