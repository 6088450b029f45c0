"""Metrics and the report of an evaluation run: accuracy with n and a Wilson 95% CI, per mode and category.

Every record counts in the denominator: a failure (malformed item, unreadable image, exception, timeout,
unparseable answer) is WRONG and is listed, never dropped (the reference ERGO eval drops them).

>>> recs = [{"mode": "direct", "category": "ocr", "status": "ok", "correct": True, "vision_tokens": 100},
...         {"mode": "direct", "category": "ocr", "status": "timeout", "correct": False, "vision_tokens": 100},
...         {"mode": "direct", "category": None, "status": "unparseable", "correct": False}]
>>> s = summarize(recs)["modes"]["direct"]
>>> s["n"], s["correct"], round(s["accuracy"], 3), s["failures"], s["vision_tokens_mean"]
(3, 1, 0.333, {'timeout': 1, 'unparseable': 1}, 100.0)
>>> [round(v, 3) for v in (s["ci_low"], s["ci_high"])]
[0.061, 0.792]
"""

from __future__ import annotations

import html
import json
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

# Status of one (item, mode) result; anything but "ok" is a failure and counts as WRONG.
STATUSES = {
    "ok": "an answer was parsed and compared with the ground truth",
    "unparseable": "no answer could be parsed from the output",
    "exception": "inference raised an exception",
    "server_error": "the model server failed for good (HTTP error, connection, bad reply) after its retries",
    "timeout": "the item ran past the time limit",
    "bad_item": "the benchmark item is malformed (reason in the detail)",
    "bad_image": "the image could not be decoded",
    "no_gt_box": "oracle_crop needs a ground-truth box and the item has none",
}
CI_METHOD = "Wilson score interval, 95% (scipy.stats.binomtest(...).proportion_ci(method='wilson'))"
UNCATEGORIZED = "(none)"


def wilson_interval(correct: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion; ``(nan, nan)`` for ``n == 0``.

    >>> [round(v, 3) for v in wilson_interval(8, 10)]
    [0.49, 0.943]
    """
    if n == 0:
        return (math.nan, math.nan)
    from scipy.stats import binomtest

    ci = binomtest(int(correct), int(n)).proportion_ci(confidence_level=confidence, method="wilson")
    return (float(ci.low), float(ci.high))


def _mean(values: Iterable[Any]) -> float | None:
    vals = [float(v) for v in values if v is not None]
    return statistics.fmean(vals) if vals else None


def group_stats(records: list[Mapping[str, Any]]) -> dict[str, Any]:
    """Accuracy, CI, failures by status and per-item means for one group of records."""
    n = len(records)
    correct = sum(1 for r in records if r.get("correct"))
    low, high = wilson_interval(correct, n)
    failures: dict[str, int] = defaultdict(int)
    for r in records:
        if r.get("status") != "ok":
            failures[r.get("status") or "exception"] += 1
    with_box = [r for r in records if r.get("iou") is not None]
    turns = [r.get("vision_tokens_turns") or [] for r in records]
    walls = sorted(float(r["wall_s"]) for r in records if r.get("wall_s") is not None)
    return {
        "n": n, "correct": correct, "accuracy": correct / n if n else math.nan, "ci_low": low, "ci_high": high,
        "failures": dict(sorted(failures.items())), "n_failed": sum(failures.values()),
        "vision_tokens_mean": _mean(r.get("vision_tokens") for r in records),
        "n_measured": sum(1 for r in records if r.get("vision_tokens") is not None),
        "wall_s_mean": _mean(r.get("wall_s") for r in records),
        "iou_mean": _mean(r["iou"] for r in with_box), "n_iou": len(with_box),
        "box_area_frac_mean": _mean(r.get("box_area_frac") for r in records),
        "parseable": sum(1 for r in records if r.get("status") == "ok") / n if n else math.nan,
        "region_hit_rate": _mean(float(r["region_hit"]) for r in records if r.get("region_hit") is not None),
        "zoom_failed": sum(1 for r in records if r.get("zoom_ok") is False),
        "vision_tokens_turn1_mean": _mean(t[0] for t in turns if t),
        "vision_tokens_turn2_mean": _mean(t[1] for t in turns if len(t) > 1),
        "wall_s_p50": _quantile(walls, 0.5), "wall_s_p90": _quantile(walls, 0.9),
        "vlmeval_correct": sum(1 for r in records if r.get("vlmeval_correct")),
        "vlmeval_accuracy": (sum(1 for r in records if r.get("vlmeval_correct")) / n
                             if n and any("vlmeval_correct" in r for r in records) else None),
    }


def _quantile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return float(statistics.quantiles(sorted_values, n=100, method="inclusive")[int(q * 100) - 1]) \
        if len(sorted_values) > 1 else sorted_values[0]


def summarize(records: Iterable[Mapping[str, Any]], scoring: str = "plain") -> dict[str, Any]:
    """``{"modes": {mode: stats}, "categories": {mode: {category: stats}}, "vlmeval": {mode: ...}, "seeds": {mode:
    Avg@K}, "comparisons": {...}}`` in first-seen mode order.

    ``scoring`` is how VLMEvalKit scores the bench (``plain``, ``cycle`` for HR-Bench, ``mme``): ``vlmeval`` holds
    that accuracy for the project's matcher (``correct``) and for VLMEvalKit's rule (``vlmeval_correct``).
    """
    from ergo_train.eval.vlmeval import vlmeval_accuracy

    by_mode: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in records:
        by_mode[r["mode"]].append(r)
    out: dict[str, Any] = {"modes": {}, "categories": {}, "vlmeval": {}, "seeds": {}, "scoring": scoring}
    for mode, recs in by_mode.items():
        out["modes"][mode] = group_stats(recs)
        by_cat: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for r in recs:
            by_cat[r.get("category") or UNCATEGORIZED].append(r)
        out["categories"][mode] = {c: group_stats(v) for c, v in sorted(by_cat.items())}
        out["vlmeval"][mode] = {"ergo": vlmeval_accuracy(recs, scoring, "correct"),
                                "vlmeval_rule": vlmeval_accuracy(recs, scoring, "vlmeval_correct")
                                if any("vlmeval_correct" in r for r in recs) else None}
        by_seed: dict[Any, list[Mapping[str, Any]]] = defaultdict(list)
        for r in recs:
            by_seed[r.get("seed", 0)].append(r)
        accs = [vlmeval_accuracy(v, scoring, "correct")["overall"] for _, v in sorted(by_seed.items())]
        out["seeds"][mode] = {"k": len(accs), "seeds": sorted(by_seed), "accuracy": accs,
                              "mean": statistics.fmean(accs) if accs else None,
                              "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                              "min": min(accs, default=None), "max": max(accs, default=None)}
    out["comparisons"] = comparisons(out["modes"])
    return out


def comparisons(modes: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    """The token ratio coarse_to_fine / direct_full (ERGO: 1,025 / 4,471 = 0.23 on V*) and the oracle-crop bound."""
    out: dict[str, Any] = {}
    c2f, full, oracle = modes.get("coarse_to_fine"), modes.get("direct_full"), modes.get("oracle_crop")
    if c2f and full and c2f["vision_tokens_mean"] and full["vision_tokens_mean"]:
        out["token_ratio_c2f_over_full"] = c2f["vision_tokens_mean"] / full["vision_tokens_mean"]
    if c2f and oracle and c2f["n"] and oracle["n"]:
        out["oracle_gap"] = oracle["accuracy"] - c2f["accuracy"]
    return out


def mcnemar(a: Iterable[Mapping[str, Any]], b: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    """Exact McNemar test of two runs on the same items (paired by ``id`` and ``seed``): ``b_only`` items only ``b``
    got right, ``a_only`` only ``a``; ``p`` is the two-sided binomial p of the discordant pairs (1.0 when none).

    >>> a = [{"id": str(i), "correct": i < 5} for i in range(20)]
    >>> b = [{"id": str(i), "correct": i < 14} for i in range(20)]
    >>> r = mcnemar(a, b); r["n"], r["a_only"], r["b_only"], round(r["p"], 4)
    (20, 0, 9, 0.0039)
    """
    from scipy.stats import binomtest

    def key(r: Mapping[str, Any]) -> tuple[Any, Any]:
        return (r["id"], r.get("seed", 0))

    right_a = {key(r): bool(r.get("correct")) for r in a}
    right_b = {key(r): bool(r.get("correct")) for r in b}
    both = sorted(set(right_a) & set(right_b))
    a_only = sum(1 for k in both if right_a[k] and not right_b[k])
    b_only = sum(1 for k in both if right_b[k] and not right_a[k])
    p = float(binomtest(b_only, a_only + b_only).pvalue) if a_only + b_only else 1.0
    return {"n": len(both), "a_only": a_only, "b_only": b_only, "p": p}


def _fmt(v: Any, digits: int = 1, pct: bool = False) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.{digits}f}" if pct else f"{v:.{digits}f}"


def plot_accuracy_vs_tokens(summary: Mapping[str, Any], path: Path, title: str) -> Path:
    """One point per mode: mean vision tokens per item (x) vs accuracy with its 95% CI (y)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for mode, s in summary["modes"].items():
        x = s["vision_tokens_mean"] if s["vision_tokens_mean"] is not None else 0.0
        y = 100 * s["accuracy"] if s["n"] else math.nan
        err = [[y - 100 * s["ci_low"]], [100 * s["ci_high"] - y]] if s["n"] else None
        ax.errorbar([x], [y], yerr=err, fmt="o", capsize=4, label=f"{mode} (n={s['n']})")
        ax.annotate(mode, (x, y), textcoords="offset points", xytext=(6, 6), fontsize=8)
    ax.set_xlabel("vision tokens per item (all turns)")
    ax.set_ylabel("accuracy % (95% Wilson CI)")
    ax.set_ylim(-2, 102)
    xs = [s["vision_tokens_mean"] or 0.0 for s in summary["modes"].values()]
    ax.set_xlim(0, max(xs + [1.0]) * 1.3)  # room for the labels
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _table_row(cells: Iterable[Any]) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def render_markdown(summary: Mapping[str, Any], records: list[Mapping[str, Any]], meta: Mapping[str, Any],
                    plot_name: str | None, max_failures_listed: int = 50) -> str:
    """The Markdown report: run settings, a table per mode, VLMEvalKit-style scores, Avg@K, per category, the
    matcher disagreements and the failures."""
    lines = [f"# Evaluation: {meta.get('bench')} with {meta.get('model')}", ""]
    for k, v in meta.items():
        lines.append(f"- **{k}**: {v}")
    lines += [f"- **CI**: {CI_METHOD}",
              ("- Every failure (malformed item, bad image, exception, server error, timeout, unparseable answer) "
               "counts as WRONG and stays in the denominator."), "",
              "## Accuracy per mode", "",
              ("| mode | n | correct | accuracy % | 95% CI % | failed (counted wrong) | vision tokens / item "
               "| wall s / item | IoU with GT box (n) | box area frac | zoom failed | tokens turn 1 / turn 2 "
               "| latency s p50 / p90 | VLMEvalKit rule acc % | parsed % | region hit % |"),
              "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for mode, s in summary["modes"].items():
        failed = ", ".join(f"{k}: {v}" for k, v in s["failures"].items()) or "0"
        lines.append(
            f"| {mode} | {s['n']} | {s['correct']} | {_fmt(s['accuracy'], pct=True)} | "
            f"{_fmt(s['ci_low'], pct=True)}–{_fmt(s['ci_high'], pct=True)} | {failed} | "
            f"{_fmt(s['vision_tokens_mean'], 0)} | {_fmt(s['wall_s_mean'], 2)} | "
            f"{_fmt(s['iou_mean'], 3)} ({s['n_iou']}) | {_fmt(s['box_area_frac_mean'], 3)} | {s['zoom_failed']} | "
            f"{_fmt(s['vision_tokens_turn1_mean'], 0)} / {_fmt(s['vision_tokens_turn2_mean'], 0)} | "
            f"{_fmt(s['wall_s_p50'], 2)} / {_fmt(s['wall_s_p90'], 2)} | {_fmt(s['vlmeval_accuracy'], pct=True)} | "
            f"{_fmt(s.get('parseable'), pct=True)} | {_fmt(s.get('region_hit_rate'), pct=True)} |")
    lines += ["", ("Vision tokens and wall time are means over the items that reached inference (turn 2: over the "
              "items that zoomed); IoU is over the items with a ground-truth box (a missing or malformed zoom box "
              "counts as IoU 0); box area frac is the area of the region shown in the answer turn over the image "
              "area (1 = whole image); parsed is the share whose answer was read; a region hit is a zoom whose crop "
              "holds at least 90% of the ground-truth region. Scored by {meta.get('matcher', 'the ergo rule matcher')}; the last column "
              "re-scores the same outputs with VLMEvalKit's rule matcher."), ""]
    comp = summary.get("comparisons") or {}
    if comp:
        lines += ["## Budget and bound", ""]
        if "token_ratio_c2f_over_full" in comp:
            c2f, full = summary["modes"]["coarse_to_fine"], summary["modes"]["direct_full"]
            lines.append(f"- vision tokens coarse_to_fine / direct_full (full resolution): "
                         f"{_fmt(c2f['vision_tokens_mean'], 0)} / {_fmt(full['vision_tokens_mean'], 0)} = "
                         f"**{comp['token_ratio_c2f_over_full']:.3f}** (ERGO on V*: 1,025 / 4,471 = 0.229)")
        if "oracle_gap" in comp:
            lines.append(f"- oracle-crop bound: oracle_crop {_fmt(summary['modes']['oracle_crop']['accuracy'], pct=True)}"
                         f"% vs coarse_to_fine {_fmt(summary['modes']['coarse_to_fine']['accuracy'], pct=True)}% "
                         f"(gap {100 * comp['oracle_gap']:+.1f} points: what a better box could still give)")
        lines.append("")
    if plot_name:
        lines += [f"![accuracy vs vision tokens]({plot_name})", ""]
    lines += _vlmeval_section(summary) + _seeds_section(summary)
    lines += ["## Per category", "", "| mode | category | n | correct | accuracy % | 95% CI % | failed |",
              "|---|---|---|---|---|---|---|"]
    for mode, cats in summary["categories"].items():
        for cat, s in cats.items():
            lines.append(f"| {mode} | {cat} | {s['n']} | {s['correct']} | {_fmt(s['accuracy'], pct=True)} | "
                         f"{_fmt(s['ci_low'], pct=True)}–{_fmt(s['ci_high'], pct=True)} | {s['n_failed']} |")
    lines += _disagreements_section(records)
    failures = [r for r in records if r.get("status") != "ok"]
    lines += ["", f"## Failures ({len(failures)}, all counted wrong)", ""]
    if failures:
        lines += ["| mode | id | status | detail |", "|---|---|---|---|"]
        for r in failures[:max_failures_listed]:
            lines.append(f"| {r['mode']} | {r['id']} | {r.get('status')} | {_cell(r.get('error'))} |")
        if len(failures) > max_failures_listed:
            lines.append(f"\n{len(failures) - max_failures_listed} more: every failure is in `failures.jsonl`.")
    else:
        lines.append("None.")
    return "\n".join(lines) + "\n"


def _cell(value: Any, width: int = 200) -> str:
    return html.escape(str(value or "")[:width], quote=False).replace("|", "\\|").replace("\n", " ")


def _vlmeval_section(summary: Mapping[str, Any]) -> list[str]:
    from ergo_train.eval.vlmeval import SCORERS

    scoring = summary.get("scoring", "plain")
    lines = [f"## As VLMEvalKit reports it ({SCORERS.get(scoring, scoring)})", "",
             "| mode | matcher | overall % | " + ("cycle groups | " if scoring == "cycle" else "") + "per category % |",
             "|---|---|---|" + ("---|" if scoring == "cycle" else "") + "---|"]
    for mode, block in summary.get("vlmeval", {}).items():
        for label, acc in (("ergo rule matcher", block["ergo"]), ("VLMEvalKit rule", block["vlmeval_rule"])):
            if acc is None or acc["overall"] is None:
                continue
            cats = ", ".join(f"{c} {100 * v:.1f}" for c, v in acc["categories"].items())
            lines.append(f"| {mode} | {label} | {100 * acc['overall']:.1f} | "
                         + (f"{acc['groups']} | " if scoring == "cycle" else "") + f"{cats} |")
    return lines + [""]


def _seeds_section(summary: Mapping[str, Any]) -> list[str]:
    seeds = summary.get("seeds") or {}
    if not any(v["k"] > 1 for v in seeds.values()):
        return []
    lines = ["## Avg@K over seeds (each seed reshuffles the options where the bench shuffles, and seeds sampling)",
             "", "| mode | K | Avg@K % | sd | min % | max % | per seed % |", "|---|---|---|---|---|---|---|"]
    for mode, v in seeds.items():
        per = ", ".join(f"{s}: {100 * a:.1f}" for s, a in zip(v["seeds"], v["accuracy"]))
        lines.append(f"| {mode} | {v['k']} | {100 * v['mean']:.1f} | {100 * v['std']:.1f} | {100 * v['min']:.1f} | "
                     f"{100 * v['max']:.1f} | {per} |")
    return lines + [""]


def _disagreements_section(records: list[Mapping[str, Any]], limit: int = 50) -> list[str]:
    differ = [r for r in records if "vlmeval_correct" in r and bool(r.get("correct")) != bool(r["vlmeval_correct"])]
    lines = ["", f"## Where the ergo matcher and VLMEvalKit's rule disagree ({len(differ)})", ""]
    if not differ:
        return lines + ["None."]
    lines += ["| mode | id | prediction | ergo (letter) | VLMEvalKit rule (letter) | answer |",
              "|---|---|---|---|---|---|"]
    for r in differ[:limit]:
        lines.append(f"| {r['mode']} | {r['id']} | {_cell(r.get('vlmeval_prediction'), 80)} | "
                     f"{'right' if r.get('correct') else 'wrong'} ({r.get('pred_letter') or '–'}) | "
                     f"{'right' if r['vlmeval_correct'] else 'wrong'} ({r.get('vlmeval_pred') or '–'}) | "
                     f"{r.get('answer_letter')} |")
    return lines


def score_vlmeval_rule(records: list[dict[str, Any]], scoring: str) -> list[dict[str, Any]]:
    """Add ``vlmeval_prediction``, ``vlmeval_pred`` and ``vlmeval_correct`` (VLMEvalKit's rule on the same output)
    to each record that has options; failures before an output stay wrong."""
    from ergo_train.eval.vlmeval import prediction_text, vlmeval_choice

    for r in records:
        if not r.get("options"):
            continue
        answered = r.get("status") in ("ok", "unparseable") and r.get("output") is not None
        text = prediction_text(r) if answered else None
        pred = vlmeval_choice(text, r["options"], scoring) if text is not None else None
        r.update(vlmeval_prediction=text, vlmeval_pred=pred, vlmeval_correct=pred is not None and
                 pred == r.get("answer_letter"))
    return records


def write_report(records: list[Mapping[str, Any]], out_dir: str | Path, meta: Mapping[str, Any],
                 scoring: str = "plain") -> dict[str, Path]:
    """Write ``summary.json``, ``failures.jsonl``, ``accuracy_vs_tokens.png`` and ``report.md`` into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = score_vlmeval_rule([dict(r) for r in records], scoring)
    summary = summarize(records, scoring)
    paths = {"summary": out / "summary.json", "failures": out / "failures.jsonl",
             "plot": out / "accuracy_vs_tokens.png", "report": out / "report.md"}
    paths["summary"].write_text(json.dumps({"meta": dict(meta), "ci_method": CI_METHOD, **summary}, indent=2,
                                           default=str), encoding="utf-8")
    with paths["failures"].open("w", encoding="utf-8") as f:
        for r in records:
            if r.get("status") != "ok":
                f.write(json.dumps({k: r.get(k) for k in ("mode", "id", "category", "status", "error")}) + "\n")
    title = f"{meta.get('bench')} · {meta.get('model')}"
    plot_accuracy_vs_tokens(summary, paths["plot"], title)
    paths["report"].write_text(render_markdown(summary, records, meta, paths["plot"].name), encoding="utf-8")
    return paths
