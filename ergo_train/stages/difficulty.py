"""``difficulty``: profile each sample with a policy before training (Mini-o3 style).

The stage runs a policy ``k`` times per sample through the training rollout (``ergo_train.rollout
.run_two_turns``: coarse view, zoom tool, crop), scores every run with the training rewards, and adds:

| column | meaning |
|---|---|
| ``pass_at_k`` | 1.0 if any of the k runs answered correctly (``r_acc``), else 0.0 |
| ``acc_rate`` | fraction of the k runs that answered correctly |
| ``reward_mean`` / ``reward_std`` | mean and (population) std of the weighted reward over the k runs |
| ``zero_variance`` | ``reward_std < 1e-4``: a GRPO group on this sample would teach nothing |
| ``zoom_rate`` | fraction of runs that called the zoom tool |
| ``difficulty_k`` | k |
| ``difficulty_runs`` | with ``keep_runs: true``: JSON list of the runs (turn texts, zoom, rewards) |

It scores with the training reward set: ``rewards_from: pipelines/train_tiny.yaml`` takes a training recipe's
``rewards`` (and its ``budget_tokens``) so difficulty sees what training will; without it, ERGO's set
``R = r_TCE + r_acc + r_format`` with ``r_region`` judged by ``judge`` (default: the profiled model itself, which
is cheap but grades its own crops; on a GPU point ``rewards_from`` at the recipe whose judge is a larger model).

A later ``sql`` stage can then drop zero-variance items (``where: "NOT zero_variance"``) or keep a target
mix (``where: "acc_rate BETWEEN 0.1 AND 0.9"``). Runs are seeded per sample id, so the values do not depend
on the order or the chunking of the rows. Any Hugging Face Qwen-VL checkpoint works (``model: tiny`` in tests).

>>> from ergo_data.pipeline.registry import stage_registry
>>> stage = stage_registry.get("difficulty")(model="tiny", k=2, budget_tokens=64, max_new_tokens=8)  # integration
>>> stage.params.k, stage.reward_names
(2, ['r_format', 'r_acc', 'r_region', 'r_box'])
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Iterable, Iterator
from typing import Any

from pydantic import Field

from ergo_data.core.errors import RecipeError
from ergo_data.core.vision import budget_pixels
from ergo_data.pipeline.contract import Params, Reject, RowStage
from ergo_data.pipeline.recipe import read_yaml_file
from ergo_data.pipeline.registry import stage_registry
from ergo_train.rewards.reward_set import ERGO_REWARD_WEIGHTS, ZERO_STD, build_reward_funcs, reward_weights
from ergo_train.rollout.env import ZoomEnv, row_image, run_two_turns, use_tool_chat_template


class DifficultyParams(Params):
    model: str = "tiny"  # "tiny", a checkpoint directory or a hub name (the policy to profile with)
    k: int = Field(8, ge=1)  # runs per sample
    budget_tokens: int = Field(1280, gt=0)  # max_pixels = budget_tokens * 28 * 28, as in training
    rewards: dict[str, float | dict[str, Any]] = Field(default_factory=lambda: dict(ERGO_REWARD_WEIGHTS))
    rewards_from: str | None = None  # a training recipe: its rewards and budget_tokens replace the two above
    judge: dict[str, Any] | None = None  # r_region's judge when its entry has none (default: {type: vlm, model})
    temperature: float = Field(1.0, gt=0)
    top_p: float = Field(1.0, gt=0, le=1)
    max_new_tokens: int = Field(256, gt=0)  # per turn
    seed: int = 0
    dtype: str = "auto"  # auto (bfloat16 on GPU, float32 on CPU), bfloat16, float16, float32
    device: str | None = None  # e.g. "cuda"; default: where the model loads (CPU without accelerate maps)
    keep_runs: bool = False  # also store each run (turn texts, zoom, rewards) as JSON in `difficulty_runs`


@stage_registry.register("difficulty")
class DifficultyStage(RowStage):
    """Run a policy k times per sample through the zoom rollout; add pass@k, reward mean/std, zero_variance."""

    Params = DifficultyParams
    stateful = True  # holds a model: one per Ray actor

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        rewards, budget = self._training_reward_set()
        self.max_pixels = budget_pixels(budget)
        # validates the reward names and options now (a judge model loads here too)
        try:
            self.funcs, _ = build_reward_funcs(rewards, self.max_pixels)
        except OSError as e:  # the judge's model
            raise RecipeError(f"stage 'difficulty': cannot load model for the r_region judge: {e}") from None
        self.weights = reward_weights(rewards)
        self.reward_names = list(self.weights)
        self._policy: tuple[Any, Any] | None = None

    def _training_reward_set(self) -> tuple[dict[str, Any], int]:
        """The reward spec and budget to score with: a training recipe's, or the params' with r_region's judge."""
        if self.params.rewards_from:
            recipe = read_yaml_file(self.params.rewards_from, "training recipe")
            if not isinstance(recipe, dict) or not isinstance(recipe.get("rewards"), dict):
                raise RecipeError(f"stage 'difficulty': rewards_from {self.params.rewards_from!r} has no 'rewards' "
                                  "mapping (is it a training recipe?)")
            return dict(recipe["rewards"]), int(recipe.get("budget_tokens", self.params.budget_tokens))
        rewards = dict(self.params.rewards)
        for name in ("r_region", "r_tce", "total"):
            spec = rewards.get(name)
            if spec is not None and not (isinstance(spec, dict) and "judge" in spec):
                weight = spec.get("weight", 1.0) if isinstance(spec, dict) else spec
                judge = self.params.judge or {"type": "vlm", "model": self.params.model,
                                              "max_pixels": budget_pixels(self.params.budget_tokens)}
                rewards[name] = {**(spec if isinstance(spec, dict) else {}), "weight": weight, "judge": judge}
        return rewards, self.params.budget_tokens

    @property
    def num_gpus(self) -> float:  # type: ignore[override]
        return 1.0 if (self.params.device or "").startswith("cuda") else 0.0

    def _load(self) -> tuple[Any, Any]:
        if self._policy is None:
            import torch

            from ergo_train.models.loaders import load_model

            dtype = self.params.dtype
            if dtype == "auto":
                dtype = "bfloat16" if torch.cuda.is_available() else "float32"
            try:
                model, processor = load_model(self.params.model, max_pixels=self.max_pixels,
                                              dtype=getattr(torch, dtype))
            except (OSError, AttributeError) as e:
                raise RecipeError(f"stage 'difficulty': cannot load model {self.params.model!r}: {e}") from None
            if self.params.device:
                model.to(self.params.device)
            self._policy = (model, use_tool_chat_template(processor))
        return self._policy

    def _generate_kwargs(self, processor) -> dict[str, Any]:
        from ergo_train.models.processor import VISION_TOKENS

        tok = processor.tokenizer
        unk = getattr(tok, "unk_token_id", None)
        suppress = [i for i in (tok.convert_tokens_to_ids(t) for t in VISION_TOKENS) if i is not None and i != unk]
        return {"do_sample": True, "temperature": self.params.temperature, "top_p": self.params.top_p,
                "suppress_tokens": suppress}

    def run(self, rows: Iterable[dict[str, Any]]) -> Iterator[dict[str, Any] | Reject]:
        for row in rows:
            try:
                yield {**row, **self.profile(row)}
            except RecipeError:
                raise
            except Exception as e:  # noqa: BLE001 - one bad sample leaves with a reason; the run goes on
                yield Reject(row, "difficulty_failed", f"{type(e).__name__}: {e}")

    def profile(self, row: dict[str, Any]) -> dict[str, Any]:
        """The difficulty columns of one sample (k seeded runs, scored with the configured rewards)."""
        import torch

        model, processor = self._load()
        image = row_image(row["image"])
        sample = {**row, "image": image}
        kwargs = self._generate_kwargs(processor)
        completions, envs, results = [], [], []
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.params.seed, str(row.get("id"))))
            if torch.cuda.is_available():
                torch.cuda.manual_seed_all(_sample_seed(self.params.seed, str(row.get("id"))))
            for _ in range(self.params.k):
                env = ZoomEnv(self.max_pixels)
                res = run_two_turns(model, processor, sample, self.max_pixels,
                                    max_new_tokens=self.params.max_new_tokens, generate_kwargs=kwargs, env=env)
                completions.append(res.completion)
                envs.append(env)
                results.append(res)
        k = self.params.k
        columns = {key: [value] * k for key, value in sample.items()}
        columns["environments"] = envs
        scores = {f.__name__: f(prompts=[None] * k, completions=completions, **columns) for f in self.funcs}
        from ergo_train.rewards.functions import r_acc

        correct = r_acc(prompts=[None] * k, completions=completions, **columns)
        totals = [sum(self.weights[n] * _num(v[i]) for n, v in scores.items()) for i in range(k)]
        mean = sum(totals) / k
        std = math.sqrt(sum((t - mean) ** 2 for t in totals) / k)
        out = {
            "pass_at_k": 1.0 if any(c == 1.0 for c in correct) else 0.0,
            "acc_rate": sum(correct) / k,
            "reward_mean": mean,
            "reward_std": std,
            "zero_variance": std < ZERO_STD,
            "zoom_rate": sum(1 for e in envs if e.zoomed) / k,
            "difficulty_k": k,
        }
        if self.params.keep_runs:
            out["difficulty_runs"] = json.dumps([
                {"turn1": r.turn1_text, "turn2": r.turn2_text, "zoom": r.zoom_args,
                 "zoom_error": r.zoom.error if r.zoom is not None else None,
                 "rewards": {n: scores[n][i] for n in scores}, "total": totals[i]}
                for i, r in enumerate(results)])
        return out


def _num(value: float | None) -> float:
    return 0.0 if value is None or math.isnan(value) else float(value)


def _sample_seed(seed: int, sample_id: str) -> int:
    """A seed per (recipe seed, sample id): the same runs whatever the row order or chunking."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{sample_id}".encode()).digest()[:8], "little") % (2**63)
