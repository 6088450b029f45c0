"""ERGO's reward components as plain functions in TRL's reward signature, plus a name -> function registry.

Each function is ``f(prompts, completions, completion_ids=None, **columns) -> list[float]``: TRL passes
every dataset column by name (``image``, ``width``, ``height``, ``question``, ``options``, ``answer``,
``answer_letter``, ``id``, ``image_sha256``...) plus ``trainer_state``, ``log_metric``, ``environments``.
Completions are TRL's message lists (assistant with the zoom tool call / tool / assistant) or strings.

- ``r_format`` in {0,1}: one well-formed zoom in turn 1 (4 finite numbers, something of it on the image),
  then one ``<answer>``. A finite box partly outside the image is clamped and keeps format 1.
- ``r_acc`` in {0,1}: the final ``<answer>`` names the ground truth (option letter or normalized text).
- ``r_box`` = 1[area(crop) / area(image) <= gamma], gamma = 0.6, and the crop's short side in the coarse view
  at least ``min_region`` patches (default 1: a region the model could see); 0 without a usable zoom.
- ``r_region`` in {0,1}: a judge (``ergo_train.rewards.judges``) seeing ONLY the crop answers correctly.
- ``r_tce`` = alpha * r_region + beta * r_box (alpha = 1, beta = 0.5); ``total`` = r_tce + r_acc + r_format.

The gates that keep TCE from being farmed (docs/rewards.md, "Gates"): ``r_box`` and ``r_region`` pay only for a
*complete* episode (``complete_only``, default on): the zoom tool really ran (a tool message follows turn 1)
and the answer turn holds exactly one ``<answer>``. A zoom tag in a lone message, a good zoom with no answer or
with two answers earn no TCE, so none of them outscores a correct answer without zooming.

Zoom coordinates are on the coarse view (the original smart-resized to ``max_pixels``, which must match the
rollout's budget); the rule rewards compute on plain floats, ``r_region`` converts with ``Box.from_model``.
``make_reward(name, **params)`` binds gamma/alpha/beta/max_pixels/judge with ``functools.partial`` (TRL logs
it under the function's name).

>>> done = [{"role": "assistant", "content": "<zoom>[10, 10, 60, 60]</zoom>"},
...         {"role": "tool", "content": "crop"}, {"role": "assistant", "content": "<answer>B</answer>"}]
>>> cols = dict(width=[1000], height=[1000], options=[["cat", "dog"]], answer=["dog"], answer_letter=["B"])
>>> r_format([None], [done], **cols), r_acc([None], [done], **cols), r_box([None], [done], **cols)
([1.0], [1.0], [1.0])
>>> make_reward("r_box", gamma=0.001)([None], [done], **cols)
[0.0]
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from ergo_data.core.boxes import BoxError, Size
from ergo_data.core.errors import ConfigError
from ergo_data.core.vision import PATCH, resized_size
from ergo_train.rewards.judges import JudgeCache, RegionQuery, build_judge, judge_regions
from ergo_train.rollout.matching import answer_matches
from ergo_train.rollout.parsing import ParsedCompletion, parse_completion, zoom_on_original
from ergo_train.rollout.zoom import DEFAULT_BUDGET_TOKENS, MIN_REGION_PATCHES, budget_max_pixels

DEFAULT_MAX_PIXELS = budget_max_pixels(DEFAULT_BUDGET_TOKENS)
DEFAULT_GAMMA = 0.6
DEFAULT_ALPHA = 1.0
DEFAULT_BETA = 0.5


class RewardConfigError(ConfigError, ValueError):
    """A reward that cannot be built or computed as configured; the message says what is needed."""


# ---- sizes of the images (original and the coarse view the model saw) -----------------------------------
@lru_cache(maxsize=1 << 16)
def seen_size(width: int, height: int, max_pixels: int) -> Size:
    """The coarse view's ``(width, height)`` for an original of ``width x height`` (Qwen smart_resize)."""
    return resized_size((width, height), max_pixels)


@lru_cache(maxsize=4096)
def _file_size(path: str) -> Size:
    from ergo_data.core.imageio import read_info

    return read_info(Path(path).read_bytes()).size


def _image_size(value: Any) -> Size | None:
    if value is None:
        return None
    if hasattr(value, "size") and not isinstance(value, (bytes, bytearray, Mapping, str)):
        return tuple(value.size)  # a PIL image (datasets decodes and EXIF-transposes it)
    if isinstance(value, Mapping):
        if value.get("bytes"):
            from ergo_data.core.imageio import read_info

            return read_info(value["bytes"]).size
        value = value.get("path")
    return _file_size(str(value)) if value else None


def original_sizes(columns: Mapping[str, Any], n: int) -> list[Size]:
    """``(width, height)`` of each sample's original image: the ``width``/``height`` columns, else ``image``."""
    widths, heights, images = columns.get("width"), columns.get("height"), columns.get("image")
    if widths is not None and heights is not None and len(widths) == len(heights) == n:
        try:
            sizes = [(int(w), int(h)) for w, h in zip(widths, heights)]
            if all(w > 0 and h > 0 for w, h in sizes):
                return sizes
        except TypeError:  # some null: fall back to the image, item by item
            pass
    ids = columns.get("id")
    out: list[Size] = []
    for i in range(n):
        w = widths[i] if widths is not None else None
        h = heights[i] if heights is not None else None
        if w and h:
            out.append((int(w), int(h)))
            continue
        size = _image_size(images[i]) if images is not None else None
        if size is None:
            name = ids[i] if ids is not None else f"#{i}"
            raise RewardConfigError(f"sample {name!r}: box rewards need the 'width' and 'height' columns or 'image'")
        out.append(size)
    return out


def _column(columns: Mapping[str, Any], name: str, n: int) -> list[Any]:
    values = columns.get(name)
    return list(values) if values is not None else [None] * n


def _zoom_on_image(p: ParsedCompletion, size: Size, max_pixels: int):
    """The one zoom of turn 1 on the original (plain floats, clamped), or None if it is unusable."""
    if p.zoom is None or p.zoom_error is not None:
        return None
    return zoom_on_original(p.zoom, seen_size(size[0], size[1], max_pixels), size)


# ---- the rule rewards ---------------------------------------------------------------------------------
def r_format(prompts=None, completions=None, completion_ids=None, *, max_pixels: int = DEFAULT_MAX_PIXELS,
             **columns: Any) -> list[float]:
    """1 when turn 1 holds one usable zoom and turn 2 one answer, else 0."""
    parsed = [parse_completion(c) for c in completions]
    sizes = original_sizes(columns, len(parsed))
    return [1.0 if p.format_error is None and _zoom_on_image(p, s, max_pixels) is not None else 0.0
            for p, s in zip(parsed, sizes)]


def r_acc(prompts=None, completions=None, completion_ids=None, **columns: Any) -> list[float]:
    """1 when the final ``<answer>`` names the ground truth (letter or normalized option text), else 0."""
    n = len(completions)
    options, answers = _column(columns, "options", n), _column(columns, "answer", n)
    letters = _column(columns, "answer_letter", n)
    if columns.get("answer") is None:
        raise RewardConfigError("r_acc needs the 'answer' column")
    out = []
    for c, opts, ans, letter in zip(completions, options, answers, letters):
        p = parse_completion(c)
        out.append(1.0 if answer_matches(p.answer, opts, ans, letter) else 0.0)
    return out


def r_box(prompts=None, completions=None, completion_ids=None, *, gamma: float = DEFAULT_GAMMA,
          min_region: float = MIN_REGION_PATCHES, complete_only: bool = True,
          max_pixels: int = DEFAULT_MAX_PIXELS, **columns: Any) -> list[float]:
    """1 when the zoom covers at most ``gamma`` of the image and its short side in the coarse view is at least
    ``min_region`` patches (what the model could see); 0 without a usable zoom, and (``complete_only``) for an
    episode whose zoom never ran or whose answer turn lacks exactly one answer."""
    parsed = [parse_completion(c) for c in completions]
    return _box_scores(parsed, original_sizes(columns, len(parsed)), gamma, max_pixels, min_region, complete_only)


def _box_scores(parsed: Sequence[ParsedCompletion], sizes: Sequence[Size], gamma: float, max_pixels: int,
                min_region: float = MIN_REGION_PATCHES, complete_only: bool = True,
                zooms: Sequence[Any] | None = None) -> list[float]:
    """``r_box`` per item; ``zooms``: each item's ``_zoom_on_image`` when the caller has it already."""
    floor = min_region * PATCH
    out = []
    for i, (p, (w, h)) in enumerate(zip(parsed, sizes)):
        if complete_only and not p.complete:
            out.append(0.0)
            continue
        z = zooms[i] if zooms is not None else _zoom_on_image(p, (w, h), max_pixels)
        if z is None:
            out.append(0.0)
            continue
        sw, sh = seen_size(w, h, max_pixels)
        short_side_seen = min((z[2] - z[0]) * sw / w, (z[3] - z[1]) * sh / h)
        out.append(1.0 if short_side_seen >= floor and (z[2] - z[0]) * (z[3] - z[1]) <= gamma * (w * h) else 0.0)
    return out


# ---- the judged reward -----------------------------------------------------------------------------------
def r_region(prompts=None, completions=None, completion_ids=None, *, judge: Any = None, cache: Any = None,
             complete_only: bool = True, max_pixels: int = DEFAULT_MAX_PIXELS, **columns: Any) -> list[float]:
    """1 when the judge, seeing only the zoom's crop (full resolution, at the judge's budget), answers correctly;
    0 (``complete_only``) for an episode whose zoom never ran or whose answer turn lacks exactly one answer."""
    parsed = [parse_completion(c) for c in completions]
    return _region_scores(parsed, columns, _require_judge(judge, "r_region"), cache, max_pixels, complete_only)


def _region_scores(parsed: Sequence[ParsedCompletion], columns: Mapping[str, Any], judge, cache,
                   max_pixels: int, complete_only: bool = True) -> list[float]:
    n = len(parsed)
    if columns.get("image") is None or columns.get("question") is None:
        raise RewardConfigError("r_region needs the 'image' and 'question' columns")
    sizes = original_sizes(columns, n)
    cols = {k: _column(columns, k, n) for k in ("image", "question", "options", "answer", "answer_letter",
                                                   "id", "image_sha256")}
    envs = columns.get("environments")
    envs = envs if envs is not None and len(envs) == n else None
    queries, where = [], []
    for i, (p, size) in enumerate(zip(parsed, sizes)):
        if (complete_only and not p.complete) or _zoom_on_image(p, size, max_pixels) is None:
            continue
        try:
            box = p.box(seen_size(size[0], size[1], max_pixels), size)  # the canonical converter, at the edge
        except BoxError:
            continue
        queries.append(RegionQuery(
            image=cols["image"][i], box=box, question=cols["question"][i], options=list(cols["options"][i] or []),
            answer=cols["answer"][i], answer_letter=cols["answer_letter"][i], sample_id=cols["id"][i],
            image_sha256=cols["image_sha256"][i], crop=_env_crop(envs[i] if envs else None, box, judge)))
        where.append(i)
    cache = _cache_for(judge, cache)
    hits_before = cache.hits
    verdicts = judge_regions(judge, queries, cache)
    out = [0.0] * n
    for i, v in zip(where, verdicts):
        out[i] = 1.0 if v.correct else 0.0
    log_metric = columns.get("log_metric")
    if callable(log_metric) and queries:
        log_metric("r_region/judge_cache_hit_rate", (cache.hits - hits_before) / len(queries))
    report = columns.get("judge_report")  # the reward set's StepMetrics: the judge's failure rate, and the stop
    if callable(report):
        failed = [v for v in verdicts if v.failed]
        report(len(queries), len(failed), failed[0].detail if failed else "")
    return out


def _env_crop(env: Any, box, judge):
    """The crop the rollout already showed (``ZoomEnv.zooms``), when it is the same box at the judge's budget."""
    zooms = getattr(env, "zooms", None)
    if not zooms or not getattr(judge, "needs_image", True) or getattr(env, "max_pixels", None) != judge.max_pixels:
        return None
    z = zooms[0]
    return z.image if z.ok and z.box == box else None


def _require_judge(judge: Any, name: str):
    if judge is None:
        raise RewardConfigError(
            f"{name} needs a region judge: make_reward({name!r}, judge={{'type': 'vlm', 'model': 'tiny'}}) "
            "(judges: vlm, ocr, stored; see ergo_train.rewards.judges)")
    return build_judge(judge)


def _cache_for(judge, cache: Any) -> JudgeCache:
    if isinstance(cache, JudgeCache):
        return cache
    if cache is not None:
        return _disk_cache(str(cache))
    if getattr(judge, "_reward_cache", None) is None:
        judge._reward_cache = JudgeCache()  # per judge, in memory: a GRPO group often zooms on the same region
    return judge._reward_cache


@lru_cache(maxsize=16)
def _disk_cache(path: str) -> JudgeCache:
    return JudgeCache(path)


# ---- sums ----------------------------------------------------------------------------------------------
def reward_components(completions: Sequence[Any], columns: Mapping[str, Any], *, gamma: float = DEFAULT_GAMMA,
                      alpha: float = DEFAULT_ALPHA, beta: float = DEFAULT_BETA, judge: Any = None, cache: Any = None,
                      min_region: float = MIN_REGION_PATCHES, complete_only: bool = True,
                      max_pixels: int = DEFAULT_MAX_PIXELS) -> dict[str, list[float | None]]:
    """Every component for a batch with one parse per completion; ``r_region``/``r_tce``/``total`` are None
    per item when no judge is given."""
    parsed = [parse_completion(c) for c in completions]
    n = len(parsed)
    sizes = original_sizes(columns, n)
    zooms = [_zoom_on_image(p, s, max_pixels) for p, s in zip(parsed, sizes)]
    fmt = [1.0 if p.format_error is None and z is not None else 0.0 for p, z in zip(parsed, zooms)]
    options, answers = _column(columns, "options", n), _column(columns, "answer", n)
    letters = _column(columns, "answer_letter", n)
    acc = [1.0 if answer_matches(p.answer, o, a, le) else 0.0 for p, o, a, le in zip(parsed, options, answers, letters)]
    box = _box_scores(parsed, sizes, gamma, max_pixels, min_region, complete_only, zooms)
    out: dict[str, list[float | None]] = {"r_format": fmt, "r_acc": acc, "r_box": box}
    if judge is None:
        out["r_region"] = out["r_tce"] = out["total"] = [None] * n
        return out
    region = _region_scores(parsed, columns, build_judge(judge), cache, max_pixels, complete_only)
    tce = [alpha * r + beta * b for r, b in zip(region, box)]
    out.update(r_region=region, r_tce=tce, total=[t + a + f for t, a, f in zip(tce, acc, fmt)])
    return out


def r_tce(prompts=None, completions=None, completion_ids=None, *, alpha: float = DEFAULT_ALPHA,
          beta: float = DEFAULT_BETA, gamma: float = DEFAULT_GAMMA, judge: Any = None, cache: Any = None,
          min_region: float = MIN_REGION_PATCHES, complete_only: bool = True,
          max_pixels: int = DEFAULT_MAX_PIXELS, **columns: Any) -> list[float]:
    """Task-driven contextual exploration: ``alpha * r_region + beta * r_box`` (paid for complete episodes only)."""
    parsed = [parse_completion(c) for c in completions]
    region = _region_scores(parsed, columns, _require_judge(judge, "r_tce"), cache, max_pixels, complete_only)
    box = _box_scores(parsed, original_sizes(columns, len(parsed)), gamma, max_pixels, min_region, complete_only)
    return [alpha * r + beta * b for r, b in zip(region, box)]


def total(prompts=None, completions=None, completion_ids=None, *, alpha: float = DEFAULT_ALPHA,
          beta: float = DEFAULT_BETA, gamma: float = DEFAULT_GAMMA, judge: Any = None, cache: Any = None,
          min_region: float = MIN_REGION_PATCHES, complete_only: bool = True,
          max_pixels: int = DEFAULT_MAX_PIXELS, **columns: Any) -> list[float]:
    """ERGO's reward ``R = r_TCE + r_acc + r_format`` (use it alone, or the components with weights)."""
    comps = reward_components(completions, columns, gamma=gamma, alpha=alpha, beta=beta,
                              judge=_require_judge(judge, "total"), cache=cache, min_region=min_region,
                              complete_only=complete_only, max_pixels=max_pixels)
    return [float(t) for t in comps["total"]]


REWARD_REGISTRY: dict[str, Callable[..., list[float]]] = {
    "r_format": r_format, "r_acc": r_acc, "r_box": r_box, "r_region": r_region, "r_tce": r_tce, "total": total,
}
NEEDS_JUDGE = frozenset({"r_region", "r_tce", "total"})


def reward_params(name: str) -> dict[str, Any]:
    """The configurable parameters of reward ``name`` with their defaults.

    >>> reward_params("r_tce")["beta"]
    0.5
    """
    func = _lookup(name)
    return {k: p.default for k, p in inspect.signature(func).parameters.items() if p.kind is p.KEYWORD_ONLY}


def make_reward(name: str, **params: Any) -> Callable[..., list[float]]:
    """Reward ``name`` with ``params`` bound (a ``functools.partial`` TRL logs under ``name``).

    ``judge`` may be a judge, a name or a spec dict (built once here); ``cache`` a ``JudgeCache`` or a path.

    >>> make_reward("r_box", gama=0.5)
    Traceback (most recent call last):
    ...
    ergo_train.rewards.functions.RewardConfigError: reward 'r_box' has no parameter 'gama'; valid: gamma, min_region, complete_only, max_pixels
    """
    func = _lookup(name)
    valid = reward_params(name)
    for key, value in params.items():
        if key not in valid:
            raise RewardConfigError(f"reward {name!r} has no parameter {key!r}; valid: {', '.join(valid) or '(none)'}")
        if key in ("gamma", "alpha", "beta", "min_region") and (not isinstance(value, (int, float)) or not math.isfinite(value)):
            raise RewardConfigError(f"reward {name!r}: {key} must be a finite number, got {value!r}")
        if key == "complete_only" and not isinstance(value, bool):
            raise RewardConfigError(f"reward {name!r}: complete_only must be true or false, got {value!r}")
    if name in NEEDS_JUDGE:
        params["judge"] = _require_judge(params.get("judge"), name)
    if params.get("cache") is not None and not isinstance(params["cache"], JudgeCache):
        params["cache"] = _disk_cache(str(params["cache"]))
    bound = functools.partial(func, **params)
    bound.__name__ = func.__name__  # type: ignore[attr-defined]
    return bound


def _lookup(name: str) -> Callable[..., list[float]]:
    if name not in REWARD_REGISTRY:
        raise RewardConfigError(f"unknown reward {name!r}; valid rewards: {', '.join(REWARD_REGISTRY)}")
    return REWARD_REGISTRY[name]
