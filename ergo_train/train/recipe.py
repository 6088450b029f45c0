"""Training recipe (YAML + ``--set`` overrides) and the ``GRPOConfig`` arguments it resolves to.

>>> recipe = load_train_recipe("pipelines/train_tiny.yaml", ["grpo.max_steps=1"])
>>> recipe.model, recipe.preset, recipe.max_pixels
('out/sft_tiny', 'gspo', 50176)
>>> kw = grpo_config_kwargs(recipe, use_vllm=False)
>>> kw["importance_sampling_level"], kw["loss_type"], kw["max_steps"], kw["max_tool_calling_iterations"]
('sequence', 'grpo', 1, 1)
>>> kw[checkpointing_key()] is False  # the recipe's `activation_checkpointing`, under the installed name
True
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ergo_data.core.errors import RecipeError
from ergo_data.core.vision import budget_pixels
from ergo_data.pipeline.contract import Params, build_params
from ergo_data.pipeline.recipe import apply_override, read_yaml_file
from ergo_train.rewards.reward_set import ERGO_REWARD_WEIGHTS, reward_weights

GSPO_PRESET: dict[str, Any] = {  # GSPO (Qwen): sequence-level importance ratio, tight clipping, no KL
    "importance_sampling_level": "sequence", "loss_type": "grpo", "beta": 0.0,
    "epsilon": 3e-4, "epsilon_high": 4e-4, "steps_per_generation": 4,
}
PRESETS: dict[str, dict[str, Any]] = {"grpo": {}, "gspo": GSPO_PRESET}
# Qwen2.5-VL's language-model projections; the vision tower stays frozen (its MLP reuses the names).
LORA_TARGETS = r".*language_model.*\.(q_proj|k_proj|v_proj|o_proj|gate_proj|up_proj|down_proj)"


class DataSpec(Params):
    path: str  # an `ergo run` output directory (reads data/*.parquet), a Parquet file, or a glob
    split: str | None = "train"  # keep rows of this split (null: all rows)
    limit: int | None = Field(None, gt=0)  # first N rows after the split filter


class LoraSpec(Params):
    r: int = Field(16, gt=0)
    alpha: int = Field(32, gt=0)
    dropout: float = Field(0.05, ge=0, lt=1)
    target_modules: str | list[str] = LORA_TARGETS

    def peft_config(self):
        from peft import LoraConfig

        return LoraConfig(r=self.r, lora_alpha=self.alpha, lora_dropout=self.dropout,
                          target_modules=self.target_modules, task_type="CAUSAL_LM")


def torch_dtype(name: str, bf16: bool):
    """The model's dtype for a recipe's ``dtype`` (``auto``: bfloat16 where the config trains in bf16)."""
    import torch

    if name == "auto":
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, name)


class ModelRecipe(Params):
    """What every recipe that trains a model shares: its name, the model, the curated set and the budget."""

    name: str
    description: str = ""
    model: str = "tiny"  # "tiny", a local checkpoint directory, or a hub name
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    data: DataSpec
    budget_tokens: int = Field(1280, gt=0)  # max_pixels = budget_tokens * 28 * 28 for both turns
    lora: LoraSpec | None = None
    seed: int = 0

    @property
    def max_pixels(self) -> int:
        return budget_pixels(self.budget_tokens)


class TrainRecipe(ModelRecipe):
    rewards: dict[str, float | dict[str, Any]] = Field(default_factory=lambda: dict(ERGO_REWARD_WEIGHTS))
    preset: Literal["grpo", "gspo"] = "gspo"
    output_dir: str = "out/train"
    resume_from_checkpoint: str | bool | None = None  # a checkpoint dir, or true for the latest in output_dir
    judge_max_failure_rate: float = Field(0.05, ge=0, le=1)  # stop when the judge fails on more of a step's queries
    grpo: dict[str, Any] = Field(default_factory=dict)  # any trl.GRPOConfig field; wins over the preset


def parse_recipe(model: type[ModelRecipe], data: Any, overrides: Sequence[str], origin: str, kind: str,
                 keys: str) -> ModelRecipe:
    """Validate a recipe mapping after applying ``--set`` overrides; errors name ``origin`` and ``kind``."""
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: the {kind} must be a mapping with {keys}")
    data = dict(data)
    for o in overrides:
        apply_override(data, o)
    return build_params(model, model, data, kind)


def parse_train_recipe(data: Any, overrides: Sequence[str] = (), origin: str = "<recipe>") -> TrainRecipe:
    return parse_recipe(TrainRecipe, data, overrides, origin, "training recipe", "name, model, data, rewards, grpo")


def load_train_recipe(path: str | Path, overrides: Sequence[str] = ()) -> TrainRecipe:
    """Read a training recipe; ``overrides`` are ``--set`` assignments (``grpo.max_steps=2``, ``model=...``)."""
    return parse_train_recipe(read_yaml_file(path, "training recipe"), overrides, str(path))


# ---- config and trainer ----------------------------------------------------------------------------
CHECKPOINTING_NAMES = ("activation_checkpointing", "gradient_checkpointing")


def checkpointing_key(arguments_class: type | None = None) -> str:
    """The installed ``TrainingArguments``' name for activation checkpointing.

    transformers 5.24 calls it ``activation_checkpointing`` (``gradient_checkpointing`` is a deprecated alias
    there); 5.17 (vLLM 0.31's cap) knows only ``gradient_checkpointing`` and rejects the new name.
    """
    import dataclasses

    if arguments_class is None:
        from transformers import TrainingArguments as arguments_class
    names = {f.name for f in dataclasses.fields(arguments_class)}
    return next((n for n in CHECKPOINTING_NAMES if n in names), CHECKPOINTING_NAMES[-1])


def with_checkpointing_key(kw: dict[str, Any], arguments_class: type | None = None) -> dict[str, Any]:
    """``kw`` with either checkpointing name (and its ``_kwargs``) renamed to the installed one, so a recipe runs
    on every transformers version the project supports.

    >>> import dataclasses
    >>> Old = dataclasses.make_dataclass("Old", [("gradient_checkpointing", bool, False)])
    >>> with_checkpointing_key({"activation_checkpointing": True, "bf16": True}, Old)
    {'bf16': True, 'gradient_checkpointing': True}
    """
    key = checkpointing_key(arguments_class)
    out = dict(kw)
    for suffix in ("", "_kwargs"):
        given = {n + suffix: out.pop(n + suffix) for n in CHECKPOINTING_NAMES if n + suffix in out}
        if len({repr(v) for v in given.values()}) > 1:
            raise RecipeError(f"both {' and '.join(given)} are set, to different values: keep one")
        if given:
            out[key + suffix] = next(iter(given.values()))
    return out


def grpo_config_kwargs(recipe: TrainRecipe, *, use_vllm: bool | None = None,
                       suppress_token_ids: Sequence[int] = ()) -> dict[str, Any]:
    """GRPOConfig arguments: ERGO's fixed settings <- the preset <- the recipe's ``grpo`` section."""
    import torch

    kw: dict[str, Any] = {
        "output_dir": recipe.output_dir, "seed": recipe.seed, "report_to": "none",
        "max_tool_calling_iterations": 1,  # turn 1 -> zoom -> turn 2
        "log_completions": False,  # image tool results break TRL's completions table (docs/trl-pitfalls.md, 3)
        "remove_unused_columns": False,
        "reward_weights": list(reward_weights(recipe.rewards).values()),
        "bf16": bool(torch.cuda.is_available() and torch.cuda.is_bf16_supported()),
    }
    kw.update(PRESETS[recipe.preset])
    kw.update(recipe.grpo)
    if kw["max_tool_calling_iterations"] != 1:
        raise RecipeError("grpo.max_tool_calling_iterations must be 1: ERGO zooms exactly once")
    if kw["log_completions"]:
        raise RecipeError("grpo.log_completions must be false: TRL cannot log image tool results")
    vllm = bool(kw.get("use_vllm")) if use_vllm is None else use_vllm
    if suppress_token_ids:  # a sampled vision placeholder breaks Qwen's rope index, or makes TRL drop the batch's images
        kw["generation_kwargs"] = suppress_in_generation(kw.get("generation_kwargs"), suppress_token_ids, vllm)
    return with_checkpointing_key(kw)


VLLM_BAN = -100.0  # vLLM's logit_bias floor (OpenAI's range): exp(-100) is below float32's normal range


def suppress_in_generation(generation_kwargs: dict[str, Any] | None, token_ids: Sequence[int],
                           vllm: bool) -> dict[str, Any]:
    """``generation_kwargs`` that never sample ``token_ids``: transformers' ``suppress_tokens``, or under vLLM
    (whose ``SamplingParams`` has no such field; TRL passes ``generation_kwargs`` to it as they are) a
    ``logit_bias`` of ``VLLM_BAN`` per id; the recipe's own entries are kept.

    >>> suppress_in_generation({"suppress_tokens": [3]}, [7, 9], vllm=False)
    {'suppress_tokens': [3, 7, 9]}
    >>> suppress_in_generation({"logit_bias": {"5": 2.0}}, [7, 9], vllm=True)
    {'logit_bias': {5: 2.0, 7: -100.0, 9: -100.0}}
    """
    gen = dict(generation_kwargs or {})
    if vllm:
        bias = {int(k): float(v) for k, v in (gen.get("logit_bias") or {}).items()}
        bias.update(dict.fromkeys(map(int, token_ids), VLLM_BAN))
        gen["logit_bias"] = bias
    else:
        gen["suppress_tokens"] = sorted(set(gen.get("suppress_tokens", [])) | set(token_ids))
    return gen
