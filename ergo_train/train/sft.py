"""Cold-start SFT (``ergo sft RECIPE.yaml``): teach a policy the two-turn zoom episode before GRPO.

Qwen2.5-VL's own template has no tool calls, so a real policy has never written the ``<tool_call>`` the GRPO
rollout expects (Mini-o3, Chain-of-Focus and Pixel Reasoner all cold-start for this reason). Each curated
sample becomes one episode: turn 1 a short reasoning line and a ``zoom`` call whose box is the ground-truth
region mapped to the coarse view, widened by ``margin`` and to at least ``min_region`` patches (what
``r_box`` pays for); the tool turn holds the crop exactly as ``ZoomEnv`` returns it; turn 2
``<answer>LETTER</answer>``. Episodes are rendered by ``EpisodeRenderer``, the builder of the GRPO rollout's
own token sequence, and trained with TRL's ``SFTTrainer`` with the loss on the two assistant turns only.

>>> recipe = load_sft_recipe("pipelines/sft_tiny.yaml", ["sft.max_steps=1"])
>>> recipe.model, recipe.margin, recipe.max_pixels
('tiny', 0.5, 50176)
>>> row = {"width": 1200, "height": 900, "boxes": [{"x1": 600, "y1": 450, "x2": 620, "y2": 470}]}
>>> sft_zoom(row, 50176, 0.5), sft_zoom(row, 50176, 0.5, snap=True)
((114, 71, 143, 100), (112, 56, 168, 112))
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ergo_data.core.errors import RecipeError
from ergo_data.core.vision import PATCH, resized_size
from ergo_data.pipeline.recipe import read_yaml_file
from ergo_train.rollout.episode import DEFAULT_REASONING, Episode, EpisodeRenderer
from ergo_train.rollout.zoom import MIN_REGION_PATCHES, region_of
from ergo_train.train.data import load_split
from ergo_train.train.frozen_vision import keep_vision_out_of_backward
from ergo_train.train.recipe import ModelRecipe, parse_recipe, torch_dtype, with_checkpointing_key
from ergo_train.train.saving import save_trained


class SftRecipe(ModelRecipe):
    """An SFT recipe: ModelRecipe's keys (its ``lora`` adapters are merged into the saved model, so that
    ``ergo train`` loads it as is) plus how the episodes are built and any ``trl.SFTConfig`` field."""

    margin: float = Field(0.25, ge=0)  # widen the ground-truth region by this fraction of its size on each side
    min_region: float = Field(MIN_REGION_PATCHES, ge=0)  # and to at least this many patches per side
    snap_to_patches: bool = True  # widen the box outward to the 28-px patch grid of the coarse view
    reasoning: str = DEFAULT_REASONING  # turn 1's reasoning line
    cache_episodes: int = Field(256, ge=0)  # rendered episodes kept in memory (small sets: every one, once)
    # one-turn episodes in the evaluation's other modes, beside the two-turn one: each row is trained once per mode
    # (``direct``: the coarse view; ``direct_full``: the image at ``full_budget_tokens``; ``oracle_crop``: the
    # ground-truth box cropped at the budget), so those baselines answer in a format that parses
    modes: list[Literal["coarse_to_fine", "direct", "direct_full", "oracle_crop"]] = ["coarse_to_fine"]  # noqa: RUF012
    full_budget_tokens: int = Field(16384, gt=0)  # ``direct_full``'s budget (evaluation's default)
    output_dir: str = "out/sft"
    sft: dict[str, Any] = Field(default_factory=dict)  # any trl.SFTConfig field


def load_sft_recipe(path: str | Path, overrides: Sequence[str] = ()) -> SftRecipe:
    """Read an SFT recipe; ``overrides`` are ``--set`` assignments (``sft.max_steps=20``, ``model=...``)."""
    return parse_recipe(SftRecipe, read_yaml_file(path, "SFT recipe"), overrides, str(path), "SFT recipe",
                        "name, model, data, sft")


def sft_zoom(row: Mapping[str, Any], max_pixels: int, margin: float, min_region: float = MIN_REGION_PATCHES,
             snap: bool = False) -> tuple[int, int, int, int]:
    """The zoom turn 1 is taught to write: the sample's region (union of its boxes) on the coarse view, widened by
    ``margin`` of its size per side and to ``min_region`` patches, kept inside the view, in whole pixels; with
    ``snap``, widened outward to the 28-px patch grid the model sees (fewer distinct coordinates to learn)."""
    size = (int(row["width"]), int(row["height"]))
    seen = resized_size(size, max_pixels)
    x1, y1, x2, y2 = region_of(row).to_model(seen, size)
    w, h = (x2 - x1) * (1 + 2 * margin), (y2 - y1) * (1 + 2 * margin)
    w, h = min(max(w, min_region * PATCH), seen[0]), min(max(h, min_region * PATCH), seen[1])
    cx, cy = (x1 + x2) / 2, (y1 + y2) / 2
    left = min(max(cx - w / 2, 0.0), seen[0] - w)
    top = min(max(cy - h / 2, 0.0), seen[1] - h)
    step = PATCH if snap else 1
    x1, y1 = math.floor(left / step) * step, math.floor(top / step) * step
    x2, y2 = math.ceil((left + w) / step) * step, math.ceil((top + h) / step) * step
    return x1, y1, min(x2, seen[0]), min(y2, seen[1])


def answer_turn(row: Mapping[str, Any]) -> str:
    """Turn 2's text: the option letter for a multiple-choice sample, else the answer itself."""
    letter = row.get("answer_letter")
    return f"<answer>{letter if row.get('options') and letter else row['answer']}</answer>"


class EpisodeCollator:
    """Curated rows -> a padded SFT batch: the rendered episodes' ids, labels (-100 off the assistant turns),
    and the pixel values of every episode's coarse view and crop, in order."""

    def __init__(self, renderer: EpisodeRenderer, recipe: SftRecipe) -> None:
        self.renderer, self.recipe = renderer, recipe
        tok = renderer.tokenizer
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.image_token_id = tok.convert_tokens_to_ids("<|image_pad|>")
        # an episode depends on its row only: keep the last few rendered (decoding the original is the cost)
        self._episodes: OrderedDict[str, Episode] = OrderedDict()

    def episode(self, row: Mapping[str, Any]) -> Episode:
        mode = row.get("sft_mode") or "coarse_to_fine"
        key = f"{row.get('id')}|{mode}"
        if key in self._episodes:
            self._episodes.move_to_end(key)
            return self._episodes[key]
        if mode == "coarse_to_fine":
            zoom = sft_zoom(row, self.renderer.max_pixels, self.recipe.margin, self.recipe.min_region,
                            self.recipe.snap_to_patches)
            episode = self.renderer.render(row, zoom, answer_turn(row), self.recipe.reasoning)
        else:
            episode = self.renderer.render_single(row, self.single_view(row, mode), answer_turn(row))
        self._episodes[key] = episode
        while len(self._episodes) > self.recipe.cache_episodes:
            self._episodes.popitem(last=False)
        return episode

    def single_view(self, row: Mapping[str, Any], mode: str) -> Any:
        """The image a one-turn mode shows, exactly as ``ergo_train.eval.evaluate`` builds it."""
        from ergo_data.core.vision import budget_pixels
        from ergo_train.rollout.env import row_source
        from ergo_train.rollout.zoom import coarse_view, crop_at_budget

        image = row_source(row["image"])
        if mode == "oracle_crop":
            return crop_at_budget(image, region_of(row), self.renderer.max_pixels)
        budget = budget_pixels(self.recipe.full_budget_tokens) if mode == "direct_full" else self.renderer.max_pixels
        return coarse_view(image, budget)[0]

    def __call__(self, rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        import torch

        episodes = [self.episode(r) for r in rows]
        n = max(len(e.input_ids) for e in episodes)
        ids = torch.full((len(episodes), n), self.pad_id, dtype=torch.long)
        labels = torch.full((len(episodes), n), -100, dtype=torch.long)
        attention = torch.zeros((len(episodes), n), dtype=torch.long)
        for i, e in enumerate(episodes):
            k = len(e.input_ids)
            ids[i, :k] = torch.tensor(e.input_ids)
            attention[i, :k] = 1
            labels[i, :k] = torch.tensor([t if m else -100 for t, m in zip(e.input_ids, e.loss_mask, strict=True)])
        vision = self.renderer.processor.image_processor(images=[im for e in episodes for im in e.images],
                                                         return_tensors="pt")
        # mm_token_type_ids marks the image tokens: without it Qwen2.5-VL falls back to 1-D positions instead of
        # its 3-D (mrope) ones, and the policy would be trained on positions the rollout never uses
        return {"input_ids": ids, "attention_mask": attention, "labels": labels,
                "mm_token_type_ids": (ids == self.image_token_id).long(),
                "pixel_values": vision["pixel_values"], "image_grid_thw": vision["image_grid_thw"]}


def with_modes(dataset: Any, modes: Sequence[str]) -> Any:
    """The rows once per mode, with the mode in ``sft_mode`` (one mode: the rows as they are)."""
    import datasets

    modes = list(dict.fromkeys(modes))
    if modes == ["coarse_to_fine"]:
        return dataset
    if not modes:
        raise RecipeError("sft recipe: `modes` is empty")
    return datasets.concatenate_datasets([dataset.add_column("sft_mode", [m] * len(dataset)) for m in modes])


@dataclass
class SftParts:
    trainer: Any
    model: Any
    processor: Any
    dataset: Any
    collator: EpisodeCollator


def sft_config_kwargs(recipe: SftRecipe) -> dict[str, Any]:
    """SFTConfig arguments: the episodes come pre-rendered (no dataset preparation, no truncation) <- ``sft``."""
    import torch

    kw: dict[str, Any] = {
        "output_dir": recipe.output_dir, "seed": recipe.seed, "report_to": "none",
        "remove_unused_columns": False, "dataset_kwargs": {"skip_prepare_dataset": True}, "max_length": None,
        "bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
    }
    kw.update(recipe.sft)
    return with_checkpointing_key(kw)


def build_sft_trainer(recipe: SftRecipe, loaded: tuple[Any, Any] | None = None) -> SftParts:
    """Load the model, the curated split and the episode collator into a ready ``SFTTrainer`` (``loaded``: a
    ``(model, processor)`` in memory to train instead of ``recipe.model``)."""
    from trl import SFTConfig, SFTTrainer

    from ergo_train.models.loaders import load_model
    from ergo_train.rollout.env import use_tool_chat_template

    kw = sft_config_kwargs(recipe)
    try:
        config = SFTConfig(**kw)
    except (TypeError, ValueError) as e:
        raise RecipeError(f"sft: {e} (keys must be trl.SFTConfig fields)") from None
    from ergo_data.core.vision import budget_pixels

    # every view is sized before the processor sees it; the processor's own cap must not shrink direct_full's
    cap = max(recipe.max_pixels, budget_pixels(recipe.full_budget_tokens) if "direct_full" in recipe.modes else 0)
    model, processor = loaded or load_model(recipe.model, max_pixels=cap,
                                            dtype=torch_dtype(recipe.dtype, bool(config.bf16)))
    use_tool_chat_template(processor)
    dataset = with_modes(load_split(recipe.data), recipe.modes)
    collator = EpisodeCollator(EpisodeRenderer(processor, recipe.max_pixels), recipe)
    collator.episode(dataset[0])  # a sample the episode cannot be built for fails now, naming it
    trainer = SFTTrainer(model=model, args=config, train_dataset=dataset, data_collator=collator,
                         processing_class=processor,
                         peft_config=recipe.lora.peft_config() if recipe.lora is not None else None)
    keep_vision_out_of_backward(trainer.model)
    return SftParts(trainer, model, processor, dataset, collator)


@dataclass
class SftResult:
    output_dir: Path
    log_history: list[dict[str, Any]]
    global_step: int


def run_sft(recipe: SftRecipe, parts: SftParts | None = None) -> SftResult:
    """Train; save the model (LoRA merged in) and the processor into ``output_dir``: a checkpoint ``ergo train``
    and ``ergo eval`` load with ``model: <output_dir>``."""
    parts = parts or build_sft_trainer(recipe)
    trainer = parts.trainer
    trainer.train()
    out = save_trained(trainer, parts.processor, recipe.output_dir, merge_lora=recipe.lora is not None)
    return SftResult(out, list(trainer.state.log_history), trainer.state.global_step)
