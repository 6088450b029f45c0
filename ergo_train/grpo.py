"""GRPO / GSPO training of an ERGO policy on a curated set, with TRL's ``GRPOTrainer`` and the zoom rollout.

A training recipe (YAML) names the model, the curated set, the pixel budget, the rewards (registry name ->
weight), a preset and any ``GRPOConfig`` field; ``ergo train RECIPE.yaml`` runs it (see docs/training.md).

>>> recipe = load_train_recipe("pipelines/train_tiny.yaml", ["grpo.max_steps=1"])
>>> recipe.model, recipe.preset, recipe.max_pixels
('tiny', 'gspo', 50176)
>>> kw = grpo_config_kwargs(recipe, use_vllm=False)
>>> kw["importance_sampling_level"], kw["loss_type"], kw["max_steps"], kw["max_tool_calling_iterations"]
('sequence', 'grpo', 1, 1)

Pieces: ``load_train_recipe`` (YAML + ``--set`` overrides), ``load_curated`` (Parquet -> ``datasets``
with the turn-1 prompt and coarse view added on the fly), ``build_reward_funcs`` (reward names ->
TRL reward callables + the step metrics), ``grpo_config_kwargs``, ``build_trainer`` and ``train``.
"""

from __future__ import annotations

import glob
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from ergo_data.recipe import apply_override, read_yaml_file
from ergo_data.stages.base import Params, RecipeError, build_params
from ergo_data.vision import budget_pixels
from ergo_train.rollout import build_turn1_prompt, row_image, use_tool_chat_template, zoom_env_factory
from ergo_train.tiny import save_processor
from ergo_train.zoom import coarse_view

GSPO_PRESET: dict[str, Any] = {  # GSPO (Qwen): sequence-level importance ratio, tight clipping, no KL
    "importance_sampling_level": "sequence", "loss_type": "grpo", "beta": 0.0,
    "epsilon": 3e-4, "epsilon_high": 4e-4, "steps_per_generation": 4,
}
PRESETS: dict[str, dict[str, Any]] = {"grpo": {}, "gspo": GSPO_PRESET}
ERGO_REWARD_WEIGHTS = {"r_format": 1.0, "r_acc": 1.0, "r_region": 1.0, "r_box": 0.5}  # R = r_TCE + r_acc + r_format
REQUIRED_COLUMNS = ("id", "image", "question", "options", "answer", "boxes", "width", "height")
ZERO_STD = 1e-4  # Mini-o3: a group whose reward std is below this gives no learning signal
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


class TrainRecipe(Params):
    name: str
    description: str = ""
    model: str = "tiny"  # "tiny", a local checkpoint directory, or a hub name
    dtype: Literal["auto", "bfloat16", "float16", "float32"] = "auto"
    data: DataSpec
    budget_tokens: int = Field(1280, gt=0)  # max_pixels = budget_tokens * 28 * 28 for both turns
    rewards: dict[str, float | dict[str, Any]] = Field(default_factory=lambda: dict(ERGO_REWARD_WEIGHTS))
    preset: Literal["grpo", "gspo"] = "gspo"
    lora: LoraSpec | None = None
    output_dir: str = "out/train"
    resume_from_checkpoint: str | bool | None = None  # a checkpoint dir, or true for the latest in output_dir
    seed: int = 0
    grpo: dict[str, Any] = Field(default_factory=dict)  # any trl.GRPOConfig field; wins over the preset

    @property
    def max_pixels(self) -> int:
        return budget_pixels(self.budget_tokens)


def parse_train_recipe(data: Any, overrides: Sequence[str] = (), origin: str = "<recipe>") -> TrainRecipe:
    if not isinstance(data, dict):
        raise RecipeError(f"{origin}: a training recipe is a mapping with name, model, data, rewards, grpo")
    data = dict(data)
    for o in overrides:
        apply_override(data, o)
    return build_params(TrainRecipe, TrainRecipe, data, "training recipe")


def load_train_recipe(path: str | Path, overrides: Sequence[str] = ()) -> TrainRecipe:
    """Read a training recipe; ``overrides`` are ``--set`` assignments (``grpo.max_steps=2``, ``model=...``)."""
    return parse_train_recipe(read_yaml_file(path, "training recipe"), overrides, str(path))


# ---- data ------------------------------------------------------------------------------------------
def parquet_files(path: str) -> list[str]:
    """The Parquet files of an ``ergo run`` output directory, a directory of shards, a file or a glob."""
    p = Path(path)
    if p.is_dir():
        for pattern in ("data/*.parquet", "*.parquet"):
            files = sorted(glob.glob(str(p / pattern)))
            if files:
                return files
    elif p.is_file():
        return [str(p)]
    else:
        files = sorted(glob.glob(path))
        if files:
            return files
    raise RecipeError(f"no Parquet files at {path!r} (run a curation first, e.g. "
                      "`ergo run pipelines/demo.yaml --out out/demo`)")


def load_curated(spec: DataSpec, max_pixels: int):
    """The curated set as a ``datasets.Dataset``; each row gets ``prompt`` (turn 1) and ``images`` (the coarse view).

    ``image`` stays the full-resolution original (the zoom tool and the rewards crop from it); TRL shows
    ``images`` in turn 1, the exact view ``ergo_train.zoom.coarse_view`` gives evaluation too.
    """
    import datasets

    ds = datasets.load_dataset("parquet", data_files=parquet_files(spec.path), split="train")
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise RecipeError(f"curated set {spec.path!r} lacks columns {missing} (has {ds.column_names})")
    if spec.split is not None:
        if "split" not in ds.column_names:
            raise RecipeError(f"curated set {spec.path!r} has no 'split' column; set data.split: null")
        counts: dict[str, int] = {}
        for s in ds["split"]:
            counts[str(s)] = counts.get(str(s), 0) + 1
        ds = ds.filter(lambda s: s == spec.split, input_columns=["split"], keep_in_memory=True)
        if len(ds) == 0:
            raise RecipeError(f"curated set {spec.path!r} has no rows with split {spec.split!r} (splits: {counts})")
    if spec.limit is not None:
        ds = ds.select(range(min(spec.limit, len(ds))))
    return ds.with_transform(_turn1_transform(max_pixels))


def _turn1_transform(max_pixels: int):
    def transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        n = len(batch["id"])
        rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]
        batch["prompt"] = [build_turn1_prompt(r, max_pixels) for r in rows]
        batch["images"] = [[coarse_view(row_image(r["image"]), max_pixels)[0]] for r in rows]
        return batch

    return transform


# ---- rewards and step metrics ----------------------------------------------------------------------
class StepMetrics:
    """Collects every reward component of one scoring call, then logs the ERGO step metrics once.

    ``ergo/zoom_rate`` (rollouts whose zoom was executed), ``ergo/zoom_ok_rate`` (well-formed zooms),
    ``ergo/zoom_area_frac`` (crop area / image area), ``ergo/vision_tokens_turn1|turn2|total`` and
    ``ergo/zero_variance_groups`` (groups whose weighted reward std < 1e-4, Mini-o3's criterion; TRL also
    logs ``frac_reward_zero_std`` with an exact-zero test).
    """

    def __init__(self, weights: Mapping[str, float], num_generations: int) -> None:
        self.weights = dict(weights)
        self.num_generations = num_generations
        self._pending: dict[str, list[float | None]] = {}
        self.history: list[dict[str, float]] = []  # one entry per scoring call (also on the trainer's log)

    def record(self, name: str, values: Sequence[float | None], completions: Sequence[Any],
               kwargs: Mapping[str, Any]) -> None:
        self._pending[name] = list(values)
        if set(self._pending) != set(self.weights):
            return
        metrics = self.compute(self._pending, completions, kwargs.get("environments"))
        self._pending = {}
        self.history.append(metrics)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for k, v in metrics.items():
                if not math.isnan(v):
                    log_metric(k, v)

    def compute(self, values: Mapping[str, Sequence[float | None]], completions: Sequence[Any],
                environments: Sequence[Any] | None) -> dict[str, float]:
        n = len(completions)
        totals = [sum(self.weights[k] * v[i] for k, v in values.items() if v[i] is not None and not
                      math.isnan(v[i])) for i in range(n)]
        g = self.num_generations
        groups = [totals[i:i + g] for i in range(0, n - n % g, g)] if g > 1 else []
        zero = [_std(grp) < ZERO_STD for grp in groups]
        kept = [any(isinstance(m, Mapping) and m.get("role") == "tool" for m in c) if isinstance(c, list) else False
                for c in completions]
        envs = list(environments or [None] * n)
        t1, t2, areas, ok = [], [], [], []
        for env, zoomed in zip(envs, kept, strict=False):
            tokens = list(getattr(env, "vision_tokens", []) or [])
            if tokens:
                t1.append(tokens[0])
            if zoomed and env is not None and getattr(env, "zooms", None):
                t2.append(tokens[1] if len(tokens) > 1 else 0)
                ok.append(1.0 if env.zoom_ok else 0.0)
                areas.append(env.zoom_area_frac)
        return {
            "ergo/zoom_rate": sum(kept) / n if n else math.nan,
            "ergo/zoom_ok_rate": _mean(ok),
            "ergo/zoom_area_frac": _mean(areas),
            "ergo/vision_tokens_turn1": _mean(t1),
            "ergo/vision_tokens_turn2": _mean(t2),
            "ergo/vision_tokens_total": (sum(t1) + sum(t2)) / len(t1) if t1 else math.nan,
            "ergo/zero_variance_groups": sum(zero) / len(zero) if zero else math.nan,
            "ergo/reward_total": _mean(totals),
        }


def _mean(xs: Sequence[float]) -> float:
    return sum(xs) / len(xs) if xs else math.nan


def _std(xs: Sequence[float]) -> float:
    m = _mean(xs)
    return math.sqrt(sum((x - m) ** 2 for x in xs) / len(xs)) if xs else math.nan


class RewardComponent:
    """A reward as TRL sees it: named after the component (TRL logs ``rewards/<name>/mean``), feeding
    ``StepMetrics``."""

    def __init__(self, name: str, func: Any, metrics: StepMetrics | None) -> None:
        self.__name__ = name
        self.func = func
        self.metrics = metrics

    def __call__(self, prompts, completions, completion_ids=None, **kwargs):
        values = self.func(prompts=prompts, completions=completions, completion_ids=completion_ids, **kwargs)
        if self.metrics is not None:
            self.metrics.record(self.__name__, values, completions, kwargs)
        return values


def reward_weights(spec: Mapping[str, float | Mapping[str, Any]]) -> dict[str, float]:
    """``{name: weight}`` from the recipe's ``rewards`` (a weight, or a mapping with ``weight`` and options)."""
    out = {}
    for name, value in spec.items():
        weight = value.get("weight", 1.0) if isinstance(value, Mapping) else value
        try:
            out[name] = float(weight)
        except (TypeError, ValueError):
            raise RecipeError(f"rewards.{name}: weight {weight!r} is not a number") from None
    return out


def build_reward_funcs(spec: Mapping[str, float | Mapping[str, Any]], max_pixels: int,
                       num_generations: int = 1) -> tuple[list[RewardComponent], StepMetrics]:
    """TRL reward callables for the recipe's ``rewards``: ``ergo_train.rewards.make_reward(name, **options)``
    with the rollout's ``max_pixels`` bound (zoom boxes live on the coarse view of that budget).

    >>> funcs, _ = build_reward_funcs({"r_acc": 1.0, "r_box": {"weight": 0.5, "gamma": 0.6}}, 50176)
    >>> [f.__name__ for f in funcs], funcs[1].func.keywords
    (['r_acc', 'r_box'], {'gamma': 0.6, 'max_pixels': 50176})
    """
    from ergo_train.judges import JudgeError
    from ergo_train.rewards import REWARD_REGISTRY, RewardConfigError, make_reward, reward_params

    if not spec:
        raise RecipeError("rewards: empty; name at least one of " + ", ".join(REWARD_REGISTRY))
    weights = reward_weights(spec)
    metrics = StepMetrics(weights, num_generations)
    funcs = []
    for name, value in spec.items():
        if name not in REWARD_REGISTRY:
            raise RecipeError(f"rewards: unknown reward {name!r}; valid: {', '.join(REWARD_REGISTRY)}")
        options = {k: v for k, v in value.items() if k != "weight"} if isinstance(value, Mapping) else {}
        if "max_pixels" in reward_params(name) and options.setdefault("max_pixels", max_pixels) != max_pixels:
            raise RecipeError(f"rewards.{name}.max_pixels {options['max_pixels']} differs from the rollout's "
                                  f"{max_pixels} (budget_tokens): the zoom boxes would be mis-scaled")
        try:
            funcs.append(RewardComponent(name, make_reward(name, **options), metrics))
        except (RewardConfigError, JudgeError) as e:
            raise RecipeError(f"rewards.{name}: {e}") from None
    return funcs, metrics


# ---- config and trainer ----------------------------------------------------------------------------
def grpo_config_kwargs(recipe: TrainRecipe, *, use_vllm: bool | None = None,
                       suppress_token_ids: Sequence[int] = ()) -> dict[str, Any]:
    """GRPOConfig arguments: ERGO's fixed settings <- the preset <- the recipe's ``grpo`` section."""
    import torch

    kw: dict[str, Any] = {
        "output_dir": recipe.output_dir, "seed": recipe.seed, "report_to": "none",
        "max_tool_calling_iterations": 1,  # turn 1 -> zoom -> turn 2
        "log_completions": False,  # image tool results break TRL's completions table (TRL_FACTS pitfall 3)
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
    if suppress_token_ids and not vllm:  # a model that samples a vision placeholder breaks Qwen's rope index
        gen = dict(kw.get("generation_kwargs") or {})
        gen["suppress_tokens"] = sorted(set(gen.get("suppress_tokens", [])) | set(suppress_token_ids))
        kw["generation_kwargs"] = gen
    return kw


def _dtype(name: str, bf16: bool):
    import torch

    if name == "auto":
        return torch.bfloat16 if bf16 else torch.float32
    return getattr(torch, name)


@dataclass
class TrainerParts:
    trainer: Any
    model: Any
    processor: Any
    dataset: Any
    metrics: StepMetrics
    config: Any


def build_trainer(recipe: TrainRecipe) -> TrainerParts:
    """Load the model and processor, the curated set and the rewards; return a ready ``GRPOTrainer``."""
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")  # environment_factory is marked experimental
    from trl import GRPOConfig, GRPOTrainer

    from ergo_train.tiny import load_model, vision_token_ids

    bf16 = bool(grpo_config_kwargs(recipe)["bf16"])  # validates the recipe before loading a model
    model, processor = load_model(recipe.model, max_pixels=recipe.max_pixels, dtype=_dtype(recipe.dtype, bf16))
    use_tool_chat_template(processor)
    config_kw = grpo_config_kwargs(recipe, suppress_token_ids=_known_ids(processor.tokenizer, vision_token_ids))
    try:
        config = GRPOConfig(**config_kw)
    except TypeError as e:
        raise RecipeError(f"grpo: {e} (keys must be trl.GRPOConfig fields)") from None
    except ValueError as e:
        raise RecipeError(f"grpo: {e}") from None
    dataset = load_curated(recipe.data, recipe.max_pixels)
    funcs, metrics = build_reward_funcs(recipe.rewards, recipe.max_pixels, config.num_generations)
    peft_config = None
    if recipe.lora is not None:
        from peft import LoraConfig

        peft_config = LoraConfig(r=recipe.lora.r, lora_alpha=recipe.lora.alpha, lora_dropout=recipe.lora.dropout,
                                 target_modules=recipe.lora.target_modules, task_type="CAUSAL_LM")
    trainer = GRPOTrainer(model=model, args=config, train_dataset=dataset, reward_funcs=funcs,
                          processing_class=processor, environment_factory=zoom_env_factory(recipe.max_pixels),
                          peft_config=peft_config)
    return TrainerParts(trainer, model, processor, dataset, metrics, config)


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
    out = Path(recipe.output_dir)
    trainer.save_model(str(out))
    save_processor(parts.processor, out)
    return TrainResult(out, list(trainer.state.log_history), list(parts.metrics.history), trainer.state.global_step)
