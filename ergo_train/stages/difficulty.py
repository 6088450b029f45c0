"""``difficulty``: profile each sample with a policy before training (Mini-o3 style).

The stage runs a policy ``k`` times per sample through the training rollout (``ergo_train.rollout.env
.two_turn_rollout``: coarse view, zoom tool, crop), in process or against an OpenAI-compatible server
(``api_base``, e.g. vLLM; ``model`` is then the served name, the key is read from ``api_key_env``), scores every
run with the training rewards, and adds:

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
from ergo_train.rollout.env import ZoomEnv, row_image, two_turn_rollout, use_tool_chat_template


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
    api_base: str | None = None  # an OpenAI-compatible server (vLLM): `model` is then the served model's name
    api_key_env: str = "OPENAI_API_KEY"  # environment variable holding its key (the key never enters the recipe)
    concurrency: int = Field(8, ge=1)  # runs in flight against api_base
    timeout_s: float = Field(600.0, gt=0)  # per request
    retries: int = Field(4, ge=0)  # per request, on 429/5xx/connection errors, with exponential backoff


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
        self._backend: Any = None

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
        """``(model, processor)`` of the in-process policy (loaded once)."""
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

    def _chat(self):
        """The chat backend the runs use: the served model (``api_base``) or the in-process policy."""
        if self._backend is None:
            p = self.params
            if p.api_base:
                import os

                from ergo_train.models.served import ServedChat

                self._backend = ServedChat(p.api_base, p.model, api_key=os.environ.get(p.api_key_env),
                                           max_new_tokens=p.max_new_tokens, temperature=p.temperature,
                                           top_p=p.top_p, timeout_s=p.timeout_s, retries=p.retries,
                                           max_concurrency=p.concurrency)
            else:
                from ergo_train.rollout.chat import TransformersChat

                model, processor = self._load()
                self._backend = TransformersChat(model, processor, max_new_tokens=p.max_new_tokens,
                                                 generate_kwargs=self._generate_kwargs(processor))
        return self._backend

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
        chat = self._chat()
        image = row_image(row["image"])
        sample = {**row, "image": image}
        envs = [ZoomEnv(self.max_pixels) for _ in range(self.params.k)]
        seed = _sample_seed(self.params.seed, str(row.get("id")))
        if self.params.api_base:  # served: the k runs in parallel, each with its own request seed
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(min(self.params.k, chat.max_concurrency)) as pool:
                results = list(pool.map(lambda i: two_turn_rollout(chat, sample, self.max_pixels, env=envs[i],
                                                                   seed=(seed + 2 * i) % (2**31)), range(self.params.k)))
        else:
            import torch

            results = []
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                if torch.cuda.is_available():
                    torch.cuda.manual_seed_all(seed)
                for env in envs:
                    results.append(two_turn_rollout(chat, sample, self.max_pixels, env=env))
        completions = [r.completion for r in results]
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
