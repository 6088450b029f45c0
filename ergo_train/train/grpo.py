"""GRPO / GSPO training of an ERGO policy on a curated set, with TRL's ``GRPOTrainer`` and the zoom rollout.

A training recipe (``recipe.py``) names the model, the curated set, the pixel budget, the rewards, a preset
and any ``GRPOConfig`` field; ``ergo train RECIPE.yaml`` runs it (see docs/training.md). ``build_trainer``
loads the model, the data (``data.py``) and the reward set (``ergo_train.rewards.reward_set``) into a
ready ``GRPOTrainer``; ``train`` runs it and saves the model and processor (once, on the main process: ``saving.py``).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ergo_data.core.errors import RecipeError
from ergo_train.rewards.reward_set import StepMetrics, build_reward_funcs
from ergo_train.rollout.env import use_tool_chat_template, zoom_env_factory
from ergo_train.rollout.parsing import ZOOM_TOOL, normalize_tool_call
from ergo_train.train.data import load_curated
from ergo_train.train.frozen_vision import keep_vision_out_of_backward
from ergo_train.train.host_cache import (
    configure_host_path,
    generation_scope,
    prefetching_sampler,
    prepare_zooms,
)
from ergo_train.train.recipe import TrainRecipe, grpo_config_kwargs, torch_dtype
from ergo_train.train.saving import save_trained


class AnyToolName(dict):
    """A rollout's tool table in which every name resolves: an unknown one goes to the environment's
    ``_unknown_tool``, which still returns an image (TRL would otherwise answer with text only)."""

    def __contains__(self, name: object) -> bool:
        return True

    def __missing__(self, name: str):
        env = getattr(dict.get(self, ZOOM_TOOL), "__self__", None)
        if env is None:
            raise KeyError(name)
        return functools.partial(env._unknown_tool, name)


def robust_trainer_class():
    """``GRPOTrainer`` whose tool loop survives any call the model writes.

    TRL runs ``tool(**arguments)`` for each parsed call; a wrong tool name, or arguments that are not an
    object, make it answer with text and no image, and a batch where no tool answer has an image crashes the
    step (docs/trl-pitfalls.md). Here every call is first put in TRL's shape (``normalize_tool_call``: odd
    arguments are kept aside for the zoom tool to read and reject) and every name resolves (``AnyToolName``),
    so every tool answer carries an image and the rewards see what the model wrote.
    """
    from trl import GRPOTrainer

    class ErgoGRPOTrainer(GRPOTrainer):
        def _tool_call_loop(self, prompts, prompt_ids, completion_ids, completions, *args, **kwargs):
            for completion in completions:
                first = completion[0] if completion else None
                if isinstance(first, dict) and first.get("tool_calls"):
                    first["tool_calls"] = [normalize_tool_call(c) for c in first["tool_calls"]]
            self._sync_tool_dicts = [AnyToolName(d) for d in self._sync_tool_dicts]
            prepare_zooms(self._sync_tool_dicts, completions, getattr(self, "ergo_served_judge", False))
            return super()._tool_call_loop(prompts, prompt_ids, completion_ids, completions, *args, **kwargs)

        # host path (ergo_train.train.host_cache): one processor pass per image and one render per distinct
        # prompt within a generation; the next generation's coarse views made during the optimizer steps
        def _generate_and_score_completions(self, inputs):
            with generation_scope(self.processing_class):
                return super()._generate_and_score_completions(inputs)

        def _get_train_sampler(self, dataset=None):
            return prefetching_sampler(super()._get_train_sampler(dataset), self, dataset)

    return ErgoGRPOTrainer


@dataclass
class TrainerParts:
    trainer: Any
    model: Any
    processor: Any
    dataset: Any
    metrics: StepMetrics
    config: Any


def build_trainer(recipe: TrainRecipe, loaded: tuple[Any, Any] | None = None) -> TrainerParts:
    """Load the model and processor, the curated set and the rewards; return a ready ``GRPOTrainer``.

    ``loaded``: a ``(model, processor)`` already in memory to train instead of loading ``recipe.model`` (the GPU
    check keeps one 7B body across its phases)."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is marked experimental
    from ergo_train.models.loaders import load_model

    bf16 = bool(grpo_config_kwargs(recipe)["bf16"])  # validates the recipe before loading a model
    model, processor = loaded or load_model(recipe.model, max_pixels=recipe.max_pixels,
                                            dtype=torch_dtype(recipe.dtype, bf16))
    use_tool_chat_template(processor)
    config = grpo_config(recipe, processor)
    dataset = load_curated(recipe.data, recipe.max_pixels)
    funcs, metrics = build_reward_funcs(recipe.rewards, recipe.max_pixels, config.num_generations,
                                        recipe.judge_max_failure_rate)
    peft_config = recipe.lora.peft_config() if recipe.lora is not None else None
    trainer = robust_trainer_class()(model=model, args=config, train_dataset=dataset, reward_funcs=funcs,
                                     processing_class=processor, peft_config=peft_config,
                                     environment_factory=zoom_env_factory(recipe.max_pixels))
    keep_vision_out_of_backward(trainer.model)
    configure_host_path(trainer, recipe.max_pixels, funcs)
    return TrainerParts(trainer, model, processor, dataset, metrics, config)


def grpo_config(recipe: TrainRecipe, processor):
    """The recipe's ``GRPOConfig``, with the processor's vision placeholder tokens never sampled (transformers'
    ``suppress_tokens``, or a ``logit_bias`` ban under vLLM: ``ergo_train.train.recipe.suppress_in_generation``)."""
    from trl import GRPOConfig

    from ergo_train.models.processor import vision_token_ids

    config_kw = grpo_config_kwargs(recipe, suppress_token_ids=_known_ids(processor.tokenizer, vision_token_ids))
    try:
        return GRPOConfig(**config_kw)
    except TypeError as e:
        raise RecipeError(f"grpo: {e} (keys must be trl.GRPOConfig fields)") from None
    except ValueError as e:
        raise RecipeError(f"grpo: {e}") from None


def _known_ids(tokenizer, ids_of) -> list[int]:
    unk = getattr(tokenizer, "unk_token_id", None)
    return [i for i in ids_of(tokenizer) if i is not None and i != unk]


@dataclass
class TrainResult:
    output_dir: Path
    log_history: list[dict[str, Any]]
    metrics: list[dict[str, float]]
    global_step: int


def train(recipe: TrainRecipe, parts: TrainerParts | None = None) -> TrainResult:
    """Run the recipe; saves the final model (or LoRA adapter) and the processor into ``output_dir``."""
    parts = parts or build_trainer(recipe)
    trainer = parts.trainer
    trainer.train(resume_from_checkpoint=recipe.resume_from_checkpoint)
    out = save_trained(trainer, parts.processor, recipe.output_dir)
    return TrainResult(out, list(trainer.state.log_history), list(parts.metrics.history), trainer.state.global_step)
