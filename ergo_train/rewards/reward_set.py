"""The reward set a trainer (or the ``difficulty`` stage) scores with: recipe ``rewards`` -> TRL reward callables
with weights, and the ERGO step metrics logged beside them.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from ergo_data.core.errors import RecipeError

ERGO_REWARD_WEIGHTS = {"r_format": 1.0, "r_acc": 1.0, "r_region": 1.0, "r_box": 0.5}  # R = r_TCE + r_acc + r_format
ZERO_STD = 1e-4  # Mini-o3: a group whose reward std is below this gives no learning signal


# ---- rewards and step metrics ----------------------------------------------------------------------
class StepMetrics:
    """Collects every reward component of one scoring call, then logs the ERGO step metrics once.

    ``ergo/zoom_rate`` (rollouts whose zoom was executed), ``ergo/zoom_ok_rate`` (well-formed zooms),
    ``ergo/zoom_area_frac`` (crop area / image area), ``ergo/zoom_too_small_rate`` (zooms under one patch in the
    coarse view: r_box pays nothing for them), ``ergo/vision_tokens_turn1|turn2|total`` and
    ``ergo/zero_variance_groups`` (groups whose weighted reward std < 1e-4, Mini-o3's criterion; TRL also
    logs ``frac_reward_zero_std`` with an exact-zero test) and ``ergo/group_std/<component>`` (the mean over groups
    of each component's std within its group: where it is 0 the component teaches nothing).
    """

    def __init__(self, weights: Mapping[str, float], num_generations: int) -> None:
        self.weights = dict(weights)
        self.num_generations = num_generations
        self._pending: dict[str, list[float | None]] = {}
        self.history: list[dict[str, float]] = []  # one entry per scoring call (also on the trainer's log)
        self.group_totals: list[list[float]] = []  # per scoring call: each group's mean weighted reward

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
        self.group_totals.append([_mean(grp) for grp in groups])
        spread = {f"ergo/group_std/{name}": _mean([_std([_num(x) for x in v[i:i + g]]) for i in range(0, n - n % g, g)])
                  if g > 1 else math.nan for name, v in values.items()}
        kept = [any(isinstance(m, Mapping) and m.get("role") == "tool" for m in c) if isinstance(c, list) else False
                for c in completions]
        envs = list(environments or [None] * n)
        t1, t2, areas, ok, small = [], [], [], [], []
        for env, zoomed in zip(envs, kept, strict=False):
            tokens = list(getattr(env, "vision_tokens", []) or [])
            if tokens:
                t1.append(tokens[0])
            if zoomed and env is not None and getattr(env, "zooms", None):
                t2.append(tokens[1] if len(tokens) > 1 else 0)
                ok.append(1.0 if env.zoom_ok else 0.0)
                areas.append(env.zoom_area_frac)
                small.append(1.0 if env.zooms[0].too_small else 0.0)
        return {
            "ergo/zoom_rate": sum(kept) / n if n else math.nan,
            "ergo/zoom_ok_rate": _mean(ok),
            "ergo/zoom_area_frac": _mean(areas),
            "ergo/zoom_too_small_rate": _mean(small),
            "ergo/vision_tokens_turn1": _mean(t1),
            "ergo/vision_tokens_turn2": _mean(t2),
            "ergo/vision_tokens_total": (sum(t1) + sum(t2)) / len(t1) if t1 else math.nan,
            "ergo/zero_variance_groups": sum(zero) / len(zero) if zero else math.nan,
            "ergo/reward_total": _mean(totals),
            **spread,
        }


def _num(value: float | None) -> float:
    return 0.0 if value is None or math.isnan(value) else float(value)


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
    """TRL reward callables for the recipe's ``rewards``: ``ergo_train.rewards.functions.make_reward(name, **options)``
    with the rollout's ``max_pixels`` bound (zoom boxes live on the coarse view of that budget).

    >>> funcs, _ = build_reward_funcs({"r_acc": 1.0, "r_box": {"weight": 0.5, "gamma": 0.6}}, 50176)
    >>> [f.__name__ for f in funcs], funcs[1].func.keywords
    (['r_acc', 'r_box'], {'gamma': 0.6, 'max_pixels': 50176})
    """
    from ergo_train.rewards.functions import REWARD_REGISTRY, RewardConfigError, make_reward, reward_params
    from ergo_train.rewards.judges import JudgeError

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
