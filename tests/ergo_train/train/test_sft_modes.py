"""The cold start's one-turn episodes (``modes``): each is the prompt ``ergo eval`` sends in that mode, token for
token, with the view that mode shows, followed by the answer; every row is trained once per mode."""

from __future__ import annotations

import numpy as np
import pytest

from ergo_data.core.vision import budget_pixels
from ergo_data.sources.landmarks import LandmarksSource
from ergo_train.eval.loaders import BenchItem
from ergo_train.models.loaders import load_model
from ergo_train.rollout.env import row_source, turn2_text, use_tool_chat_template
from ergo_train.rollout.episode import EpisodeRenderer
from ergo_train.rollout.zoom import coarse_view, crop_at_budget, region_of
from ergo_train.train.recipe import DataSpec
from ergo_train.train.sft import EpisodeCollator, SftRecipe, with_modes


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("lm")
    src = LandmarksSource(name="lm", path=str(out), out_dir=str(out / "c"), images=1, kinds=["gradient"])
    return [dict(r, width=448, height=448) for r in src.read() if isinstance(r, dict)]


def test_rows_are_repeated_once_per_mode(rows):
    import datasets

    ds = datasets.Dataset.from_list([{"id": r["id"], "question": r["question"]} for r in rows])
    both = with_modes(ds, ["coarse_to_fine", "direct", "direct"])
    assert len(both) == 2 * len(rows) and both["sft_mode"] == ["coarse_to_fine"] * 4 + ["direct"] * 4
    assert with_modes(ds, ["coarse_to_fine"]) is ds


@pytest.mark.integration
@pytest.mark.parametrize("mode", ["direct", "direct_full", "oracle_crop"])
def test_a_one_turn_episode_is_the_evaluation_prompt_then_the_answer(rows, mode, tmp_path):
    recipe = SftRecipe(name="t", model="tiny", data=DataSpec(path=str(tmp_path)), budget_tokens=16,
                       modes=["coarse_to_fine", mode])
    _, processor = load_model("tiny", max_pixels=budget_pixels(16384))
    collator = EpisodeCollator(EpisodeRenderer(use_tool_chat_template(processor), recipe.max_pixels), recipe)
    row = rows[0]
    episode = collator.episode({**row, "sft_mode": mode})
    image = row_source(row["image"])
    view = {"direct": coarse_view(image, recipe.max_pixels)[0],
            "direct_full": coarse_view(image, budget_pixels(16384))[0],
            "oracle_crop": crop_at_budget(image, region_of(row), recipe.max_pixels)}[mode]
    assert (np.asarray(episode.images[0]) == np.asarray(view)).all()
    item = BenchItem(row["id"], "curated", row["question"], row["options"], row["answer_letter"], None)
    messages = [{"role": "user", "content": [{"type": "image", "image": view},
                                             {"type": "text", "text": turn2_text(item.question, item.options)}]}]
    prompt = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True,
                                           return_dict=True)["input_ids"][0]
    assert episode.input_ids[: episode.prompt_len] == list(prompt)
    answer = processor.tokenizer.decode(episode.input_ids[episode.prompt_len:])
    assert answer == f"<answer>{row['answer_letter']}</answer><|im_end|>"
    assert episode.loss_mask == [0] * episode.prompt_len + [1] * (len(episode.input_ids) - episode.prompt_len)
    batch = collator([{**row, "sft_mode": mode}, {**row, "sft_mode": "coarse_to_fine"}])
    assert int(batch["image_grid_thw"].shape[0]) == 3  # one image, then the coarse view and the crop
