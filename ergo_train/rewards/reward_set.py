"""The reward set a trainer (or the ``difficulty`` stage) scores with: recipe ``rewards`` -> TRL reward callables
with weights, and the ERGO step metrics logged beside them.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from ergo_data.core.errors import ErgoError, RecipeError

ERGO_REWARD_WEIGHTS = {"r_format": 1.0, "r_acc": 1.0, "r_region": 1.0, "r_box": 0.5}  # R = r_TCE + r_acc + r_format
ZERO_STD = 1e-4  # Mini-o3: a group whose reward std is below this gives no learning signal


# ---- rewards and step metrics ----------------------------------------------------------------------
class JudgeFailureError(ErgoError):
    """The region judge failed (a served judge that did not answer) on more of a step's queries than allowed."""


class StepMetrics:
    """Collects every reward component of one scoring call, then logs the ERGO step metrics once.

    ``ergo/zoom_rate`` (rollouts whose zoom was executed), ``ergo/zoom_ok_rate`` (well-formed zooms),
    ``ergo/zoom_area_frac`` (crop area / image area), ``ergo/zoom_too_small_rate`` (zooms under one patch in the
    coarse view: r_box pays nothing for them), ``ergo/vision_tokens_turn1|turn2|total`` and
    ``ergo/zero_variance_groups`` (groups whose weighted reward std < 1e-4, Mini-o3's criterion; TRL also
    logs ``frac_reward_zero_std`` with an exact-zero test) and ``ergo/group_std/<component>`` (the mean over groups
    of each component's std within its group: where it is 0 the component teaches nothing), and
    ``ergo/judge_failure_rate`` (region queries the judge could not answer / region queries; the rollouts concerned
    score ``r_region = 0``). Above ``max_judge_failure_rate`` the scoring call raises ``JudgeFailureError``.

    Under several processes (``accelerate launch``) each rank scores its slice of a generation and a GRPO group
    can span ranks: the per-rollout figures of every rank are gathered (in rank order, TRL's order) before the
    groups are formed, so every rank logs the metrics of the whole generation and stops (or not) together.
    """

    def __init__(self, weights: Mapping[str, float], num_generations: int,
                 max_judge_failure_rate: float | None = None) -> None:
        self.weights = dict(weights)
        self.num_generations = num_generations
        self.max_judge_failure_rate = max_judge_failure_rate
        self._pending: dict[str, list[float | None]] = {}
        self._judge = [0, 0, ""]  # this scoring call: region queries, failed ones, the first failure's reason
        self.history: list[dict[str, float]] = []  # one entry per scoring call (also on the trainer's log)
        self.group_totals: list[list[float]] = []  # per scoring call: each group's mean weighted reward

    def judge_report(self, queries: int, failed: int, detail: str = "") -> None:
        """A judged reward's account of one scoring call (passed to the rewards as ``judge_report``)."""
        self._judge[0] += queries
        self._judge[1] += failed
        self._judge[2] = self._judge[2] or detail

    def record(self, name: str, values: Sequence[float | None], completions: Sequence[Any],
               kwargs: Mapping[str, Any]) -> None:
        self._pending[name] = list(values)
        if set(self._pending) != set(self.weights):
            return
        local = (_rollouts(self._pending, completions, kwargs.get("environments")), tuple(self._judge))
        self._pending, self._judge = {}, [0, 0, ""]
        ranks = _all_ranks(local)
        rollouts = [r for rows, _ in ranks for r in rows]
        queries, failed = sum(j[0] for _, j in ranks), sum(j[1] for _, j in ranks)
        metrics = self.compute(rollouts)
        metrics["ergo/judge_failure_rate"] = failed / queries if queries else math.nan
        self.history.append(metrics)
        log_metric = kwargs.get("log_metric")
        if log_metric is not None:
            for k, v in metrics.items():
                if not math.isnan(v):
                    log_metric(k, v)
        limit = self.max_judge_failure_rate
        if limit is not None and queries and failed / queries > limit:
            state = kwargs.get("trainer_state")
            step = f" at step {state.global_step + 1}" if getattr(state, "global_step", None) is not None else ""
            detail = next((j[2] for _, j in ranks if j[2]), "")
            raise JudgeFailureError(
                f"the region judge failed on {failed} of {queries} region queries{step} ({failed / queries:.1%}, "
                f"above judge_max_failure_rate {limit:.1%}); those rollouts would score r_region = 0. First failure: "
                f"{detail}. Check the judge server (rewards.<name>.judge.api_base), or raise judge_max_failure_rate")

    def compute(self, rollouts: Sequence[Mapping[str, Any]]) -> dict[str, float]:
        """The step metrics of one generation's rollouts (``_rollouts`` rows, every rank's, in order)."""
        n = len(rollouts)
        values = {name: [r["values"][name] for r in rollouts] for name in self.weights}
        totals = [sum(self.weights[k] * v[i] for k, v in values.items() if v[i] is not None and not
                      math.isnan(v[i])) for i in range(n)]
        g = self.num_generations
        groups = [totals[i:i + g] for i in range(0, n - n % g, g)] if g > 1 else []
        zero = [_std(grp) < ZERO_STD for grp in groups]
        self.group_totals.append([_mean(grp) for grp in groups])
        spread = {f"ergo/group_std/{name}": _mean([_std([_num(x) for x in v[i:i + g]]) for i in range(0, n - n % g, g)])
                  if g > 1 else math.nan for name, v in values.items()}
        t1 = [r["t1"] for r in rollouts if r["t1"] is not None]
        zoomed = [r for r in rollouts if r["t2"] is not None]
        t2 = [r["t2"] for r in zoomed]
        return {
            "ergo/zoom_rate": sum(r["kept"] for r in rollouts) / n if n else math.nan,
            "ergo/zoom_ok_rate": _mean([r["ok"] for r in zoomed]),
            "ergo/zoom_area_frac": _mean([r["area"] for r in zoomed]),
            "ergo/zoom_too_small_rate": _mean([r["small"] for r in zoomed]),
            "ergo/vision_tokens_turn1": _mean(t1),
            "ergo/vision_tokens_turn2": _mean(t2),
            "ergo/vision_tokens_total": (sum(t1) + sum(t2)) / len(t1) if t1 else math.nan,
            "ergo/zero_variance_groups": sum(zero) / len(zero) if zero else math.nan,
            "ergo/reward_total": _mean(totals),
            **spread,
        }


def _rollouts(values: Mapping[str, Sequence[float | None]], completions: Sequence[Any],
              environments: Sequence[Any] | None) -> list[dict[str, Any]]:
    """One plain row per rollout (component values, zoom and vision-token figures): what ranks exchange."""
    envs = list(environments or [None] * len(completions))
    rows = []
    for i, (c, env) in enumerate(zip(completions, envs, strict=False)):
        kept = isinstance(c, list) and any(isinstance(m, Mapping) and m.get("role") == "tool" for m in c)
        tokens = list(getattr(env, "vision_tokens", []) or [])
        row = {"values": {k: v[i] for k, v in values.items()}, "kept": kept, "t1": tokens[0] if tokens else None,
               "t2": None, "ok": None, "area": None, "small": None}
        if kept and env is not None and getattr(env, "zooms", None):
            row.update(t2=tokens[1] if len(tokens) > 1 else 0, ok=1.0 if env.zoom_ok else 0.0,
                       area=env.zoom_area_frac, small=1.0 if env.zooms[0].too_small else 0.0)
        rows.append(row)
    return rows


def _all_ranks(obj: Any) -> list[Any]:
    """``obj`` of every process of a torch.distributed run, in rank order; ``[obj]`` in a single process."""
    dist = sys.modules.get("torch.distributed")  # never initialized if torch was never imported
    if dist is None or not dist.is_available() or not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


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
        if self.metrics is not None:  # the judged rewards count their judge's failures there
            kwargs = {**kwargs, "judge_report": self.metrics.judge_report}
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
                       num_generations: int = 1, max_judge_failure_rate: float | None = None,
                       ) -> tuple[list[RewardComponent], StepMetrics]:
    """TRL reward callables for the recipe's ``rewards``: ``ergo_train.rewards.functions.make_reward(name, **options)``
    with the rollout's ``max_pixels`` bound (zoom boxes live on the coarse view of that budget), and the
    ``StepMetrics`` they feed (``max_judge_failure_rate``: stop a scoring call above it; None: never).

    >>> funcs, _ = build_reward_funcs({"r_acc": 1.0, "r_box": {"weight": 0.5, "gamma": 0.6}}, 50176)
    >>> [f.__name__ for f in funcs], funcs[1].func.keywords
    (['r_acc', 'r_box'], {'gamma': 0.6, 'max_pixels': 50176})
    """
    from ergo_train.rewards.functions import REWARD_REGISTRY, RewardConfigError, make_reward, reward_params
    from ergo_train.rewards.judges import JudgeError

    if not spec:
        raise RecipeError("rewards: empty; name at least one of " + ", ".join(REWARD_REGISTRY))
    weights = reward_weights(spec)
    metrics = StepMetrics(weights, num_generations, max_judge_failure_rate)
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
