"""The data card's plots (matplotlib, Agg backend): every figure and every marked line comes from the data.

Each ``plot_*`` function draws one PNG and returns a :class:`Plot` with the notes the card prints under
it (``None`` when there is nothing to draw). ``kept`` is a ``{column: list}`` mapping of the curated set;
``rejected`` lists rejected samples that could be measured (``stage``, ``reason`` and the derived columns).

>>> import tempfile
>>> p = plot_per_source({"a": {"inputs": 3, "kept": 2, "rejected": 1}}, [], Path(tempfile.mkdtemp()))
>>> p.path.name, p.notes[0]
('per_source.png', 'a: 2 kept, 1 rejected of 3 inputs')
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: no display, safe in workers and CI
import matplotlib.pyplot as plt
import numpy as np

from ergo_data.core.boxes import Box
from ergo_data.core.vision import BUDGETS, PATCH, zoom_gain

KEPT_COLOUR = "#2a7ab0"
DPI = 100


@dataclass
class Plot:
    name: str  # file stem in plots/
    title: str
    path: Path
    notes: list[str] = field(default_factory=list)  # one line each, printed under the plot in the card


@dataclass
class Band:
    """The visibility stage's keep band: box short side at ``max_pixels`` in [lo, hi] px."""

    lo: float
    hi: float
    max_pixels: int
    min_zoom_gain: float = 0.0  # the stage's zoom-gain floor (0: not applied)


def _save(fig, folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def _values(kept: dict[str, list], col: str) -> np.ndarray:
    return np.array([v for v in kept.get(col, []) if v is not None], dtype=float)


def _rejected_by_reason(rejected: list[dict[str, Any]], col: str) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {}
    for r in rejected:
        if r.get(col) is not None:
            out.setdefault(f"rejected: {r['reason']}", []).append(float(r[col]))
    return {k: np.array(v) for k, v in sorted(out.items())}


def _log_bins(arrays: list[np.ndarray], marks: list[float], n: int) -> np.ndarray:
    pos = np.concatenate([a[a > 0] for a in arrays] + [np.array([m for m in marks if m > 0], dtype=float)])
    lo, hi = pos.min() / 1.3, pos.max() * 1.3
    return np.logspace(np.log10(lo), np.log10(hi), n)


def _legend_below(ax, ncol: int = 2) -> None:
    """Legend under the axes: never over the bars."""
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=ncol, frameon=False)


def _integer_axis(axis) -> None:
    from matplotlib.ticker import MaxNLocator

    axis.set_major_locator(MaxNLocator(integer=True))


def _n_bins(n: int) -> int:
    return int(np.clip(2 * np.sqrt(max(n, 1)), 10, 60))


def _stacked_hist(ax, kept: np.ndarray, rejected: dict[str, np.ndarray], bins: np.ndarray) -> None:
    series = [kept] + list(rejected.values())
    labels = [f"kept (n={len(kept)})"] + [f"{k} (n={len(v)})" for k, v in rejected.items()]
    colours = [KEPT_COLOUR] + [plt.cm.Oranges(0.4 + 0.5 * i / max(len(rejected), 1)) for i in range(len(rejected))]
    ax.hist(series, bins=bins, stacked=True, label=labels, color=colours, edgecolor="white", linewidth=0.5)
    ax.set_xscale("log")
    ax.set_ylabel("samples")
    _integer_axis(ax.yaxis)


def plot_area(kept: dict[str, list], rejected: list[dict[str, Any]], gamma: float, folder: Path) -> Plot | None:
    """Box-area fraction (union box / image), log scale, with r_box's gamma marked."""
    k = _values(kept, "box_area_frac")
    rj = _rejected_by_reason(rejected, "box_area_frac")
    if not len(k) and not rj:
        return None
    fig, ax = plt.subplots(figsize=(8, 5))
    _stacked_hist(ax, k, rj, _log_bins([k, *rj.values()], [gamma], _n_bins(len(k) + sum(map(len, rj.values())))))
    ax.axvline(gamma, color="crimson", linestyle="--", label=f"γ = {gamma:g} (r_box = 0 above)")
    ax.set_xlabel("box area / image area (union of the boxes; log scale)")
    ax.set_title("Region size relative to the image")
    _legend_below(ax)
    notes = []
    if len(k):
        notes.append(f"kept: median {np.median(k):.3%}, range {k.min():.3%} .. {k.max():.3%} of the image; "
                     f"{int((k > gamma).sum())} of {len(k)} above γ = {gamma:g}")
    return Plot("box_area_frac", "Box area fraction", _save(fig, folder, "box_area_frac"), notes)


def plot_short_side(kept: dict[str, list], rejected: list[dict[str, Any]], band: Band | None,
                    folder: Path) -> Plot | None:
    """Box short side after downsampling at the 640 and 1280 budgets, one patch and the keep band marked."""
    cols = {tokens: f"box_short_side_{tokens}" for tokens in sorted(BUDGETS)}
    data = {t: (_values(kept, c), _rejected_by_reason(rejected, c)) for t, c in cols.items()}
    if not any(len(k) or rj for k, rj in data.values()):
        return None
    fig, axes = plt.subplots(1, len(cols), figsize=(5 * len(cols), 5.5), sharey=True)
    allv = [a for k, rj in data.values() for a in [k, *rj.values()]]
    bins = _log_bins(allv, [PATCH] + ([band.lo, band.hi] if band else []), _n_bins(sum(map(len, allv)) // len(cols)))
    notes = []
    for ax, (tokens, (k, rj)) in zip(np.atleast_1d(axes), data.items()):
        _stacked_hist(ax, k, rj, bins)
        ax.axvline(PATCH, color="black", linestyle=":", label=f"one patch ({PATCH} px)")
        if band and band.max_pixels == BUDGETS[tokens]:
            ax.axvspan(band.lo, band.hi, color="green", alpha=0.12, zorder=0, label=f"visibility band [{band.lo:g}, {band.hi:g}] px")
            for x in (band.lo, band.hi):
                ax.axvline(x, color="green", linewidth=1)
        ax.set_xlabel(f"box short side at the {tokens}-token budget (px, log scale)")
        ax.set_title(f"{tokens} tokens (max_pixels = {BUDGETS[tokens]})")
        _legend_below(ax, ncol=1)
        if len(k):
            notes.append(f"{tokens} tokens: kept median {np.median(k):.1f} px; {int((k < PATCH).sum())} of {len(k)} "
                         f"kept below one patch ({PATCH} px): the region needs zoom")
    if band and band.max_pixels not in BUDGETS.values():
        notes.append(f"visibility band [{band.lo:g}, {band.hi:g}] px is at max_pixels={band.max_pixels}, "
                     "not one of the plotted budgets: not drawn")
    return Plot("box_short_side", "Box short side at the budget", _save(fig, folder, "box_short_side"), notes)


def kept_zoom_gains(kept: dict[str, list], max_pixels: int = BUDGETS[1280]) -> np.ndarray:
    """Zoom gain (``core.vision.zoom_gain``) of each kept row's union box at ``max_pixels``."""
    out = []
    for w, h, boxes in zip(kept.get("width", []), kept.get("height", []), kept.get("boxes", [])):
        if w and h and boxes:
            g = zoom_gain(Box.union(Box.from_record(b) for b in boxes), (w, h), max_pixels)
            if g is not None:
                out.append(g)
    return np.array(out, dtype=float)


def plot_zoom_gain(kept: dict[str, list], rejected: list[dict[str, Any]], band: Band | None,
                   folder: Path) -> Plot | None:
    """How much more linear resolution the zoomed crop gives than the coarse view, per item, at 1280 tokens;
    the visibility stage's ``min_zoom_gain`` marked."""
    k = kept_zoom_gains(kept)
    rj = _rejected_by_reason(rejected, "zoom_gain_1280")
    if not len(k) and not rj:
        return None
    fig, ax = plt.subplots(figsize=(7, 4.6))
    allv = [k, *rj.values()]
    hi = max(float(a.max()) for a in allv if len(a))
    bins = np.linspace(0.8, max(hi * 1.05, 2.0), _n_bins(sum(map(len, allv))) + 1)
    _stacked_hist(ax, k, rj, bins)
    ax.set_xscale("linear")
    notes = []
    if band and band.min_zoom_gain and band.max_pixels == BUDGETS[1280]:
        ax.axvline(band.min_zoom_gain, color="green", linewidth=1.5, label=f"min_zoom_gain = {band.min_zoom_gain:g}")
    ax.axvline(1.0, color="black", linestyle=":", label="1 = the crop shows nothing new")
    ax.set(xlabel="zoom gain at 1280 tokens (crop linear resolution / coarse view's)", ylabel="samples",
           title="Zoom gain per item")
    _integer_axis(ax.yaxis)
    _legend_below(ax, ncol=1)
    if len(k):
        notes.append(f"kept: median zoom gain {np.median(k):.2f}, range {k.min():.2f} .. {k.max():.2f} (n={len(k)}); "
                     f"{int((k < 2).sum())} kept below 2 (the crop has under twice the coarse view's resolution)")
    for name, v in rj.items():
        notes.append(f"{name}: median {np.median(v):.2f} (n={len(v)})")
    return Plot("zoom_gain", "Zoom gain per item", _save(fig, folder, "zoom_gain"), notes)


def plot_tokens(kept: dict[str, list], folder: Path) -> Plot | None:
    """Vision tokens: the full image at native resolution vs ERGO's coarse view + crop (the token saving)."""
    cols = ("vision_tokens_full", "vision_tokens_1280", "crop_vision_tokens_1280")
    rows = [r for r in zip(*(kept.get(c, []) for c in cols)) if None not in r]
    if not rows:
        return None
    full, coarse, crop = (np.array(c, dtype=float) for c in zip(*rows))
    ergo = coarse + crop
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
    ax1.scatter(full, ergo, s=18, color=KEPT_COLOUR, alpha=0.7, label="samples")
    lim = [min(full.min(), ergo.min()) / 1.5, max(full.max(), ergo.max()) * 1.5]
    ax1.plot(lim, lim, color="grey", linestyle="--", label="equal tokens")
    ax1.set(xscale="log", yscale="log", xlim=lim, ylim=lim, xlabel="full image at native resolution (tokens)",
            ylabel="coarse @1280 + crop @1280 (tokens)", title="Tokens per sample")
    ax1.legend(fontsize=8)
    names = ["full (native)", "coarse @1280", "crop @1280", "coarse + crop"]
    means = [full.mean(), coarse.mean(), crop.mean(), ergo.mean()]
    bars = ax2.bar(names, means, color=["grey", KEPT_COLOUR, "#7fb8da", "#1b4f72"])
    ax2.bar_label(bars, fmt="%.0f", fontsize=8)
    ax2.set(ylabel="mean tokens per sample", title=f"Mean over {len(rows)} kept samples")
    ax2.tick_params(axis="x", labelsize=8)
    saving = 1 - ergo / full
    notes = [(f"mean tokens: full {full.mean():.0f}, coarse {coarse.mean():.0f} + crop {crop.mean():.0f} = "
             f"{ergo.mean():.0f}; median saving vs the full image {np.median(saving):.1%} (n={len(rows)})")]
    return Plot("vision_tokens", "Vision tokens: full image vs coarse view + crop", _save(fig, folder, "vision_tokens"),
                notes)


def question_template(row_question: str, provenance: str | None) -> str:
    """A generator's ``template`` from provenance, else the question's first two words.

    >>> question_template("What animal is drawn there?", '{"reader": "vstar"}')
    'what animal …'
    >>> question_template("How many cars?", '{"template": "count"}')
    'count'
    """
    try:
        tpl = json.loads(provenance or "{}").get("template")
    except (ValueError, AttributeError):
        tpl = None
    if tpl:
        return str(tpl)
    return " ".join(row_question.lower().split()[:2]) + " …"


def plot_questions(kept: dict[str, list], folder: Path, top: int = 15) -> Plot | None:
    """Categories and question templates (or openings) of the kept samples."""
    questions = kept.get("question", [])
    if not questions:
        return None
    cats = Counter("(none)" if c is None else str(c) for c in kept.get("category", [None] * len(questions)))
    provs = kept.get("provenance", [None] * len(questions))
    templates = Counter(question_template(q, p) for q, p in zip(questions, provs))
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.3 * min(top, len(templates)) + 1.5)))
    for ax, counts, title in ((ax1, cats, "category"), (ax2, templates, "question template / opening")):
        items = counts.most_common(top)[::-1]
        bars = ax.barh([k for k, _ in items], [v for _, v in items], color=KEPT_COLOUR)
        ax.bar_label(bars, fontsize=8)
        ax.set(xlabel="kept samples", title=title + (f" (top {top} of {len(counts)})" if len(counts) > top else ""))
        _integer_axis(ax.xaxis)
        ax.tick_params(axis="y", labelsize=8)
    notes = [f"{len(cats)} categories, {len(templates)} question templates/openings over {len(questions)} kept samples"]
    return Plot("questions", "Question categories and templates", _save(fig, folder, "questions"), notes)


def plot_resolution(kept: dict[str, list], folder: Path) -> Plot | None:
    """Image width vs height (one point per distinct image), by source, with the 1280 budget's pixels."""
    seen: dict[str, tuple[int, int, str]] = {}
    for sha, w, h, src in zip(*(kept.get(c, []) for c in ("image_sha256", "width", "height", "source"))):
        if w and h:
            seen.setdefault(sha or f"{src}:{w}x{h}:{len(seen)}", (w, h, src))
    if not seen:
        return None
    fig, ax = plt.subplots(figsize=(7, 5))
    by_src: dict[str, list[tuple[int, int]]] = {}
    for w, h, src in seen.values():
        by_src.setdefault(src, []).append((w, h))
    for src, wh in sorted(by_src.items()):
        ws, hs = zip(*wh)
        ax.scatter(ws, hs, s=30, alpha=0.75, label=f"{src} ({len(wh)} image{'s' if len(wh) > 1 else ''})")
    ws = np.array([v[0] for v in seen.values()], dtype=float)
    hs = np.array([v[1] for v in seen.values()], dtype=float)
    x = np.logspace(np.log10(ws.min() / 2), np.log10(ws.max() * 2), 100)
    ax.plot(x, BUDGETS[1280] / x, color="grey", linestyle="--", label="w·h = max_pixels @1280 (downsampled above)")
    ax.set(xscale="log", yscale="log", xlim=(ws.min() / 2, ws.max() * 2), ylim=(hs.min() / 2, hs.max() * 2),
           xlabel="width (px)", ylabel="height (px)", title="Image resolution (distinct images)")
    ax.legend(fontsize=8)
    mp = ws * hs / 1e6
    notes = [(f"{len(seen)} distinct images, {mp.min():.1f} .. {mp.max():.1f} MP (median {np.median(mp):.1f} MP); "
             f"{int((ws * hs > BUDGETS[1280]).sum())} above the 1280-token budget")]
    return Plot("resolution", "Image resolution", _save(fig, folder, "resolution"), notes)


def plot_per_source(sources: dict[str, dict[str, Any]], rejects: list[dict[str, Any]], folder: Path) -> Plot | None:
    """Per source: kept and rejected (by reason) samples, from stats.json and rejects/."""
    if not sources:
        return None
    reasons = sorted({r["reason"] for r in rejects})
    by = Counter((r["source"], r["reason"]) for r in rejects)
    names = list(sources)
    fig, ax = plt.subplots(figsize=(8, max(3, 0.6 * len(names) + 2)))
    left = np.zeros(len(names))
    kept = np.array([sources[n]["kept"] for n in names], dtype=float)
    ax.barh(names, kept, color=KEPT_COLOUR, label="kept")
    left += kept
    for i, reason in enumerate(reasons):
        vals = np.array([by[(n, reason)] for n in names], dtype=float)
        ax.barh(names, vals, left=left, label=f"rejected: {reason}",
                color=plt.cm.Oranges(0.4 + 0.5 * i / max(len(reasons), 1)))
        left += vals
    for y, n in enumerate(names):
        ax.text(left[y], y, f" {sources[n]['inputs']}", va="center", fontsize=8)
    ax.set(xlabel="samples (number at the bar end: inputs)", title="Per source: kept + rejected = inputs")
    _integer_axis(ax.xaxis)
    _legend_below(ax, ncol=min(3, 1 + len(reasons)))
    notes = [f"{n}: {s['kept']} kept, {s['rejected']} rejected of {s['inputs']} inputs" for n, s in sources.items()]
    return Plot("per_source", "Per-source counts", _save(fig, folder, "per_source"), notes)


def box_iou(a: tuple[float, ...], b: tuple[float, ...]) -> float:
    """IoU of two xyxy tuples (plain numbers: the human box may be absent or degenerate).

    >>> box_iou((0, 0, 2, 2), (1, 0, 3, 2))
    0.3333333333333333
    """
    w = min(a[2], b[2]) - max(a[0], b[0])
    h = min(a[3], b[3]) - max(a[1], b[1])
    inter = w * h if w > 0 and h > 0 else 0.0
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def label_agreement(labels: list[dict[str, Any]], kept_by_id: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """Human labels vs the set: box IoU with the curated union box, and each ``judge_*`` boolean column of the
    set (or of the labels) against the human ``region_answerable``."""
    ious = []
    judges: dict[str, list[tuple[bool, bool]]] = {}
    for lab in labels:
        row = kept_by_id.get(lab["id"])
        human = tuple(lab.get(k) for k in ("x1", "y1", "x2", "y2"))
        if row is not None and None not in human and row.get("boxes"):
            bx = row["boxes"]
            union = (min(b["x1"] for b in bx), min(b["y1"] for b in bx), max(b["x2"] for b in bx), max(b["y2"] for b in bx))
            ious.append(box_iou(union, human))
        merged = {**(row or {}), **lab}
        for col, v in merged.items():
            if col.startswith("judge") and isinstance(v, bool) and lab.get("region_answerable") is not None:
                judges.setdefault(col, []).append((v, bool(lab["region_answerable"])))
    answerable = Counter(lab.get("region_answerable") for lab in labels)
    correct = Counter(lab.get("answer_correct") for lab in labels)
    return {"n": len(labels), "ids": len({lab["id"] for lab in labels}), "ious": ious,
            "region_answerable": answerable, "answer_correct": correct,
            "judges": {k: {"n": len(v), "agree": sum(a == b for a, b in v),
                           "confusion": Counter(v)} for k, v in sorted(judges.items())}}


def plot_labels(labels: list[dict[str, Any]], kept_by_id: dict[str, dict[str, Any]], folder: Path) -> Plot | None:
    """Judge vs human agreement and human box vs curated box IoU, from a Label Studio ``labels`` table."""
    if not labels:
        return None
    ag = label_agreement(labels, kept_by_id)
    panels = 2 + len(ag["judges"])
    fig, axes = plt.subplots(1, panels, figsize=(4.2 * panels, 3.8))
    ax = axes[0]
    if ag["ious"]:
        ax.hist(ag["ious"], bins=np.linspace(0, 1, 11), color=KEPT_COLOUR, edgecolor="white")
    ax.set(xlabel="IoU(human box, curated box)", ylabel="labels", title=f"Box agreement (n={len(ag['ious'])})")
    _integer_axis(ax.yaxis)
    ax = axes[1]
    keys = [True, False, None]
    x = np.arange(len(keys))
    for off, (name, c) in zip((-0.2, 0.2), (("region answerable", ag["region_answerable"]),
                                             ("answer correct", ag["answer_correct"]))):
        ax.bar(x + off, [c.get(k, 0) for k in keys], width=0.4, label=name)
    ax.set_xticks(x, ["yes", "no", "unlabelled"])
    ax.set(title=f"Human labels (n={ag['n']})", ylabel="labels")
    _integer_axis(ax.yaxis)
    ax.legend(fontsize=8)
    notes = [(f"{ag['n']} labels on {ag['ids']} samples; region answerable: {ag['region_answerable'].get(True, 0)} yes, "
             f"{ag['region_answerable'].get(False, 0)} no; answer correct: {ag['answer_correct'].get(True, 0)} yes, "
             f"{ag['answer_correct'].get(False, 0)} no")]
    if ag["ious"]:
        notes.append(f"human box vs curated box: median IoU {np.median(ag['ious']):.2f} over {len(ag['ious'])} boxes")
    for ax, (name, j) in zip(axes[2:], ag["judges"].items()):
        m = np.array([[j["confusion"][(jv, hv)] for jv in (True, False)] for hv in (True, False)])
        ax.imshow(m, cmap="Blues")
        for (r, c), v in np.ndenumerate(m):
            ax.text(c, r, str(v), ha="center", va="center", color="white" if v > m.max() / 2 else "black")
        ax.set_xticks([0, 1], ["judge yes", "judge no"])
        ax.set_yticks([0, 1], ["human yes", "human no"])
        ax.set_title(f"{name}: {j['agree']}/{j['n']} agree", fontsize=9)
        notes.append(f"{name} vs human region_answerable: {j['agree']} of {j['n']} agree ({j['agree'] / j['n']:.0%})")
    if not ag["judges"]:
        notes.append("no judge column (boolean `judge_*`) in the set or the labels: judge agreement not plotted")
    return Plot("labels", "Human labels: judge vs human agreement", _save(fig, folder, "labels"), notes)
