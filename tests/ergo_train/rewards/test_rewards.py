"""The reward functions in TRL's signature: unit and property tests."""

from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ergo_data.core.vision import resized_size
from ergo_train.rewards.functions import (
    DEFAULT_MAX_PIXELS,
    REWARD_REGISTRY,
    RewardConfigError,
    make_reward,
    r_acc,
    r_box,
    r_format,
    r_region,
    reward_components,
    reward_params,
    total,
)
from ergo_train.rewards.judges import JudgeCache, StoredLabelJudge
from tests.support.paths import ROOT

SIZE = (4240, 2700)  # the signicade fixture
VIEW = resized_size(SIZE, DEFAULT_MAX_PIXELS)  # (1232, 784): the coarse view the zoom coordinates refer to
OPTIONS, ANSWER, LETTER = ["bear", "eagle", "lion", "tiger"], "tiger", "D"
TARGET = (2193.0, 1350.0, 2285.0, 1482.0)


def zoom_completion(x1, y1, x2, y2, answer="<answer>D</answer>"):
    call = {"type": "function", "function": {"name": "zoom", "arguments": {"x1": x1, "y1": y1, "x2": x2, "y2": y2}}}
    return [{"role": "assistant", "content": "", "tool_calls": [call]},
            {"role": "tool", "name": "zoom", "content": [{"type": "text", "text": "crop"}]},
            {"role": "assistant", "content": answer}]


def columns(n, **extra):
    cols = {"id": ["examples/signicade"] * n, "width": [SIZE[0]] * n, "height": [SIZE[1]] * n,
                "question": ["What animal is drawn on that red signicade?"] * n, "options": [OPTIONS] * n,
                "answer": [ANSWER] * n, "answer_letter": [LETTER] * n, "image": [{"bytes": None, "path": None}] * n}
    cols.update(extra)
    return cols


def labels():
    x1, y1, x2, y2 = TARGET
    return [{"id": "examples/signicade", "region_answerable": True, "x1": x1, "y1": y1, "x2": x2, "y2": y2}]


def target_on_view(grow=0.2):
    sx, sy = VIEW[0] / SIZE[0], VIEW[1] / SIZE[1]
    x1, y1, x2, y2 = TARGET
    dx, dy = grow * (x2 - x1), grow * (y2 - y1)
    return ((x1 - dx) * sx, (y1 - dy) * sy, (x2 + dx) * sx, (y2 + dy) * sy)


def test_trl_calling_convention_every_registered_reward():
    """TRL 1.16 calls f(prompts=, completions=, completion_ids=, **columns, trainer_state, log_extra, log_metric)."""
    comps = [zoom_completion(*target_on_view()), zoom_completion(0, 0, *VIEW, answer="<answer>A</answer>")]
    logged = {}
    trl_kwargs = {"trainer_state": None, "log_extra": lambda c, v: None, "log_metric": lambda k, v: logged.update({k: v})}
    judge = StoredLabelJudge(labels())
    got = {}
    for name in REWARD_REGISTRY:
        params = {"judge": judge} if "judge" in reward_params(name) else {}
        f = make_reward(name, **params)
        got[name] = f(prompts=[[{"role": "user", "content": "q"}]] * 2, completions=comps, completion_ids=[[1], [2]],
                      **columns(2), **trl_kwargs)
    assert got == {"r_format": [1.0, 1.0], "r_acc": [1.0, 0.0], "r_box": [1.0, 0.0], "r_region": [1.0, 1.0],
                   "r_tce": [1.5, 1.0], "total": [3.5, 2.0]}
    assert "r_region/judge_cache_hit_rate" in logged


def test_make_reward_names_params_and_errors():
    f = make_reward("r_box", gamma=0.5)  # TRL names a partial after the function it wraps: "r_box"
    assert isinstance(f, functools.partial) and f.func is r_box and f.__name__ == "r_box"
    with pytest.raises(RewardConfigError, match="unknown reward 'r_boxx'; valid rewards: r_format"):
        make_reward("r_boxx")
    with pytest.raises(RewardConfigError, match="has no parameter 'gama'; valid: gamma, min_region, complete_only, max_pixels"):
        make_reward("r_box", gama=0.5)
    with pytest.raises(RewardConfigError, match="gamma must be a finite number"):
        make_reward("r_box", gamma=float("nan"))
    with pytest.raises(RewardConfigError, match="r_region needs a region judge"):
        make_reward("r_region")
    with pytest.raises(RewardConfigError, match="needs a region judge"):
        total(None, [zoom_completion(1, 1, 5, 5)], **columns(1))
    with pytest.raises(RewardConfigError, match="needs the 'answer' column"):
        r_acc(None, ["<answer>A</answer>"])
    with pytest.raises(RewardConfigError, match="sample 'examples/signicade'.*'width' and 'height'"):
        r_format(None, [zoom_completion(1, 1, 5, 5)], **columns(1, width=[None], image=[None]))


def test_gamma_alpha_beta_are_configurable():
    half = zoom_completion(0, 0, VIEW[0] / 2, VIEW[1])  # half of the image
    cols = columns(1)
    assert make_reward("r_box", gamma=0.5)(None, [half], **cols) == [1.0]
    assert make_reward("r_box", gamma=0.49)(None, [half], **cols) == [0.0]
    judge = StoredLabelJudge(labels())
    good = zoom_completion(*target_on_view())
    assert make_reward("r_tce", judge=judge, alpha=2.0, beta=0.25)(None, [good], **cols) == [2.25]
    assert make_reward("total", judge=judge, alpha=0.0, beta=1.0)(None, [good], **cols) == [3.0]


def test_sizes_from_the_image_column_when_width_height_are_missing():
    img = Image.new("RGB", SIZE)
    comp = [zoom_completion(*target_on_view())]
    assert r_box(None, comp, **columns(1, width=[None], height=[None], image=[img])) == [1.0]
    path = ROOT / "examples" / "vstar" / "signicade.JPG"
    assert r_format(None, comp, **columns(1, width=[None], height=[None], image=[{"bytes": None, "path": str(path)}])) \
        == [1.0]


def test_r_region_caches_by_image_box_question_and_reuses_the_rollout_crop():
    from ergo_train.rewards.functions import _env_crop
    from ergo_train.rollout.env import ZoomEnv

    judge = StoredLabelJudge(labels())
    cache = JudgeCache()
    comps = [zoom_completion(*target_on_view())] * 4 + [zoom_completion(0, 0, 10, 10)]
    cols = columns(5, image_sha256=["abc"] * 5)
    assert r_region(None, comps, judge=judge, cache=cache, **cols) == [1.0] * 4 + [0.0]
    assert (cache.misses, cache.hits) == (2, 3)  # a group zooming on the same region is judged once
    env = ZoomEnv(max_pixels=64 * 28 * 28)
    env.reset(image=Image.new("RGB", (1200, 900)), question="q?", options=["a", "b"], answer="a")
    env.zoom(0, 0, 126, 84)
    assert _env_crop(env, env.zoom_box, type("J", (), {"needs_image": True, "max_pixels": 64 * 28 * 28})) \
        is env.zooms[0].image
    assert _env_crop(env, env.zoom_box, type("J", (), {"needs_image": True, "max_pixels": 1280 * 28 * 28})) is None


# ---- properties --------------------------------------------------------------------------------------
coord = st.floats(-3000, 3000, allow_nan=False)


@given(coord, coord, coord, coord)
def test_box_rewards_follow_the_clamped_area(x1, y1, x2, y2):
    cols = columns(1)
    comp = [zoom_completion(x1, y1, x2, y2)]
    fmt, box = r_format(None, comp, **cols)[0], r_box(None, comp, **cols)[0]
    W, H = VIEW
    cx1, cy1, cx2, cy2 = max(x1, 0), max(y1, 0), min(x2, W), min(y2, H)
    usable = x1 < x2 and y1 < y2 and cx1 < cx2 and cy1 < cy2
    assert fmt == (1.0 if usable else 0.0)  # partly outside: clamped, format kept; wholly outside: 0
    if usable:
        frac = (cx2 - cx1) * (cy2 - cy1) / (W * H)
        short = min(cx2 - cx1, cy2 - cy1)  # on the view the model saw: under one 28-px patch it saw nothing
        if abs(frac - 0.6) > 1e-9 and abs(short - 28) > 1e-6:  # away from the thresholds: exactly the two tests
            assert box == (1.0 if frac <= 0.6 and short >= 28 else 0.0)
    else:
        assert box == 0.0


@given(st.floats(0, 200), st.floats(0, 200), st.floats(0, 200), st.floats(0, 200))
def test_a_box_covering_the_whole_image_never_earns_r_box(a, b, c, d):
    comp = [zoom_completion(-a, -b, VIEW[0] + c, VIEW[1] + d)]
    assert r_box(None, comp, **columns(1)) == [0.0]
    assert r_format(None, comp, **columns(1)) == [1.0]


malformed_turn1 = st.one_of(
    st.text(max_size=80).filter(lambda t: "<zoom>" not in t and "<tool_call>" not in t),
    st.just('<tool_call>{"name": "zoom", "arguments": {"x1": NaN, "y1": 0, "x2": 5, "y2": 5}}</tool_call>'),
    st.just("<zoom>[1, 2, 3]</zoom>"), st.just("<zoom>[1,2,3,4]</zoom><zoom>[1,2,3,4]</zoom>"),
    st.just("<zoom>[5, 5, 1, 1]</zoom>"), st.just("<zoom>[5000, 5000, 6000, 6000]</zoom>"),
)


@settings(max_examples=80)
@given(malformed_turn1, st.sampled_from(["<answer>D</answer>", "D", "<answer>D</answer><answer>A</answer>"]))
def test_malformed_output_never_earns_r_format_r_box_or_r_region(turn1, answer):
    comp = [{"role": "assistant", "content": turn1}, {"role": "tool", "content": "x"},
            {"role": "assistant", "content": answer}]
    comps = reward_components([comp], columns(1), judge=StoredLabelJudge(labels()))
    assert comps["r_format"] == [0.0] and comps["r_box"] == [0.0] and comps["r_region"] == [0.0]


@settings(max_examples=60)
@given(st.lists(st.tuples(coord, coord, coord, coord, st.sampled_from(["A", "D", "tiger", "", "D. lion"])),
                min_size=1, max_size=6),
       st.floats(0.05, 1.0), st.floats(0, 2), st.floats(0, 2))
def test_total_is_the_sum_of_its_components(items, gamma, alpha, beta):
    comps = [zoom_completion(x1, y1, x2, y2, f"<answer>{a}</answer>") for x1, y1, x2, y2, a in items]
    cols = columns(len(comps))
    judge = StoredLabelJudge(labels())
    kw = {"gamma": gamma, "alpha": alpha, "beta": beta, "judge": judge}
    t = total(None, comps, **cols, **kw)
    region = r_region(None, comps, judge=judge, **cols)
    parts = [r_format(None, comps, **cols), r_acc(None, comps, **cols), r_box(None, comps, gamma=gamma, **cols)]
    for i in range(len(comps)):
        want = alpha * region[i] + beta * parts[2][i] + parts[1][i] + parts[0][i]
        assert t[i] == pytest.approx(want)
