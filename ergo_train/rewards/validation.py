"""Validate rewards against human labels: each judge's r_region verdict vs ``region_answerable``, and r_acc's
parser vs ``answer_correct`` where completions exist. Metrics from scikit-learn, 95% bootstrap CIs, PNG plots
(matplotlib) and a Markdown report.

Inputs: a labels table (``LABELS_SCHEMA``: ``id, annotator, region_answerable, answer_correct, x1..y2`` = the
human box, ...; from ``ergo ls pull``) and the samples it labels (a curated-set directory or a Parquet file).
A labels row may carry a ``completion`` (a model's answer turn, text or JSON messages): ``answer_correct`` is
then the human's verdict on that completion's answer, which r_acc's parser must reproduce.

>>> m = binary_metrics([True, True, False, False], [True, False, False, False], [0.9, 0.4, 0.3, 0.1], n_boot=200)
>>> m["n"], m["accuracy"]["value"], m["recall"]["value"], m["roc_auc"]["value"], m["confusion"]
(4, 0.75, 0.5, 1.0, {'tn': 2, 'fp': 0, 'fn': 1, 'tp': 1})
"""

from __future__ import annotations

import json
import math
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ergo_data.core.boxes import Box, BoxError
from ergo_data.core.errors import ConfigError
from ergo_data.core.labels import QuestionAgreement, agreement
from ergo_train.rewards.judges import Judge, JudgeCache, JudgeError, RegionQuery, judge_regions
from ergo_train.rollout.matching import answer_matches
from ergo_train.rollout.parsing import parse_completion

REQUIRED_LABEL_COLUMNS = ("id", "region_answerable", "x1", "y1", "x2", "y2")
METRICS = ("accuracy", "precision", "recall", "cohen_kappa", "roc_auc")


class ValidationError(ConfigError, ValueError):
    """Labels or samples that cannot be validated; the message names the file and what is wrong."""


# ---- inputs ----------------------------------------------------------------------------------------
def load_labels(path: str | Path) -> list[dict[str, Any]]:
    """The labels table as rows; raises ValidationError naming missing columns."""
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.exists():
        raise ValidationError(f"labels file {path} does not exist")
    table = pq.read_table(path)
    missing = [c for c in REQUIRED_LABEL_COLUMNS if c not in table.column_names]
    if missing:
        raise ValidationError(f"labels file {path} lacks column(s) {', '.join(missing)} "
                              f"(has: {', '.join(table.column_names)})")
    return table.to_pylist()


def load_samples(path: str | Path, image_root: str | Path | None = None) -> dict[str, dict[str, Any]]:
    """Samples by id from a curated-set directory (``data/*.parquet``) or a Parquet file.

    Relative image paths are resolved against ``image_root`` (default: the current directory).
    """
    import pyarrow.parquet as pq

    from ergo_data.pipeline.outputs import read_parts

    path = Path(path)
    if path.is_dir():
        table = read_parts(path / "data" if (path / "data").is_dir() else path, "*.parquet")
    elif path.exists():
        table = pq.read_table(path)
    else:
        raise ValidationError(f"samples {path} do not exist (a curated-set directory or a Parquet file)")
    if "id" not in table.column_names or table.num_rows == 0:
        raise ValidationError(f"samples {path} hold no sample rows")
    root = Path(image_root) if image_root is not None else Path.cwd()
    out = {}
    for row in table.to_pylist():
        img = row.get("image")
        if isinstance(img, Mapping) and img.get("path") and not img.get("bytes") and not Path(img["path"]).is_absolute():
            row["image"] = {"bytes": None, "path": str(root / img["path"])}
        out[row["id"]] = row
    return out


# ---- metrics ---------------------------------------------------------------------------------------
def binary_metrics(y_true: Sequence[bool], y_pred: Sequence[bool], scores: Sequence[float | None] | None = None,
                   *, n_boot: int = 2000, seed: int = 0) -> dict[str, Any]:
    """Confusion matrix, accuracy, precision, recall, Cohen's kappa, ROC-AUC (when ``scores`` exist), with a
    95% percentile-bootstrap CI each (``n_boot`` resamples; undefined resamples are skipped). Values that are
    undefined on the data (e.g. AUC with one class) are None."""
    from sklearn.metrics import (
        accuracy_score,
        cohen_kappa_score,
        confusion_matrix,
        precision_score,
        recall_score,
        roc_auc_score,
    )

    t = np.asarray(y_true, dtype=bool)
    p = np.asarray(y_pred, dtype=bool)
    n = len(t)
    s = None
    if scores is not None and len(scores) == n and n and all(v is not None for v in scores):
        s = np.asarray(scores, dtype=float)
    out: dict[str, Any] = {"n": n, "positives": int(t.sum()), "predicted_positive": int(p.sum())}
    if n == 0:
        out["confusion"] = {"tn": 0, "fp": 0, "fn": 0, "tp": 0}
        out.update({m: {"value": None, "ci95": None} for m in METRICS})
        return out
    tn, fp, fn, tp = (int(v) for v in confusion_matrix(t, p, labels=[False, True]).ravel())
    out["confusion"] = {"tn": tn, "fp": fp, "fn": fn, "tp": tp}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        values = {
            "accuracy": float(accuracy_score(t, p)),
            "precision": float(precision_score(t, p, zero_division=np.nan)),
            "recall": float(recall_score(t, p, zero_division=np.nan)),
            "cohen_kappa": float(cohen_kappa_score(t, p)),
            "roc_auc": float(roc_auc_score(t, s)) if s is not None and 0 < t.sum() < n else math.nan,
        }
    idx = np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    boots = _bootstrap(t[idx], p[idx], s[idx] if s is not None else None)
    for name in METRICS:
        v = values[name]
        vals = boots[name][np.isfinite(boots[name])]
        ci = [float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))] if len(vals) and math.isfinite(v) \
            else None
        out[name] = {"value": v if math.isfinite(v) else None, "ci95": ci, "boot_n": len(vals)}
    return out


def _bootstrap(t: np.ndarray, p: np.ndarray, s: np.ndarray | None) -> dict[str, np.ndarray]:
    """The metrics of every resample (rows), vectorized; same definitions as scikit-learn's."""
    n = t.shape[1]
    tp = (t & p).sum(1).astype(float)
    fp = (~t & p).sum(1).astype(float)
    fn = (t & ~p).sum(1).astype(float)
    tn = n - tp - fp - fn
    with np.errstate(divide="ignore", invalid="ignore"):
        acc = (tp + tn) / n
        prec = tp / (tp + fp)
        rec = tp / (tp + fn)
        pe = ((tp + fn) * (tp + fp) + (tn + fp) * (tn + fn)) / (n * n)
        kappa = (acc - pe) / (1 - pe)
        auc = np.full(len(t), np.nan)
        if s is not None:
            from scipy.stats import rankdata

            ranks = rankdata(s, axis=1)  # average ranks for ties, as roc_auc_score's Mann-Whitney form
            npos = t.sum(1).astype(float)
            nneg = n - npos
            auc = ((ranks * t).sum(1) - npos * (npos + 1) / 2) / (npos * nneg)
    return {"accuracy": acc, "precision": prec, "recall": rec, "cohen_kappa": kappa, "roc_auc": auc}


# ---- the two validations ---------------------------------------------------------------------------
@dataclass
class Comparison:
    """Human labels vs one automatic verdict, item by item, plus the items left out and why."""

    title: str
    rows: list[dict[str, Any]] = field(default_factory=list)  # id, human, auto, confidence, detail, ...
    skipped: list[dict[str, str]] = field(default_factory=list)  # id, reason
    metrics: dict[str, Any] = field(default_factory=dict)

    def compute(self, n_boot: int = 2000, seed: int = 0) -> Comparison:
        conf = [r["confidence"] for r in self.rows]
        self.metrics = binary_metrics([r["human"] for r in self.rows], [r["auto"] for r in self.rows],
                                      conf if all(c is not None for c in conf) else None, n_boot=n_boot, seed=seed)
        return self


def validate_judge(judge: Judge, labels: Sequence[Mapping[str, Any]], samples: Mapping[str, Mapping[str, Any]],
                   cache: JudgeCache | None = None) -> Comparison:
    """The judge's verdict on each human box crop vs the human ``region_answerable``."""
    comp = Comparison(f"r_region judge `{judge.fingerprint}` vs human region_answerable")
    queries, meta = [], []
    for lab in labels:
        sid = str(lab.get("id"))
        if lab.get("region_answerable") is None:
            comp.skipped.append({"id": sid, "reason": "no region_answerable label"})
            continue
        sample = samples.get(sid)
        if sample is None:
            comp.skipped.append({"id": sid, "reason": "sample not in the samples table"})
            continue
        try:
            box = _label_box(lab, sample)
        except (BoxError, TypeError) as e:
            comp.skipped.append({"id": sid, "reason": f"no usable box: {e}"})
            continue
        queries.append(RegionQuery(
            image=sample["image"], box=box, question=sample["question"], options=list(sample.get("options") or []),
            answer=sample["answer"], answer_letter=sample.get("answer_letter"), sample_id=sid,
            image_sha256=sample.get("image_sha256")))
        meta.append((lab, box))
    try:
        verdicts: list[Any] = judge_regions(judge, queries, cache)  # one batched call
    except JudgeError:  # find the items the judge refuses, keep the others
        verdicts = []
        for q in queries:
            try:
                verdicts.append(judge_regions(judge, [q], cache)[0])
            except JudgeError as e:
                verdicts.append(e)
    for (lab, box), q, v in zip(meta, queries, verdicts):
        if isinstance(v, JudgeError):
            comp.skipped.append({"id": str(q.sample_id), "reason": str(v)})
        else:
            comp.rows.append(_judge_row(lab, box, v))
    return comp


def _judge_row(lab: Mapping[str, Any], box: Box, v) -> dict[str, Any]:
    return {"id": str(lab["id"]), "box_kind": lab.get("box_kind"), "box": [round(c, 1) for c in box.as_tuple()],
            "human": bool(lab["region_answerable"]), "auto": bool(v.correct), "confidence": v.confidence,
            "detail": v.detail}


def _label_box(lab: Mapping[str, Any], sample: Mapping[str, Any]) -> Box:
    coords = [lab.get(k) for k in ("x1", "y1", "x2", "y2")]
    if all(c is not None for c in coords):
        return Box(*coords)
    boxes = sample.get("boxes") or []
    if not boxes:
        raise BoxError("the label has no human box and the sample has no boxes")
    return Box.union(Box.from_record(b) for b in boxes)  # no human box drawn: the sample's own region


def validate_answers(labels: Sequence[Mapping[str, Any]], samples: Mapping[str, Mapping[str, Any]]) -> Comparison:
    """r_acc's parser on each labelled ``completion`` vs the human ``answer_correct``."""
    comp = Comparison("r_acc parser vs human answer_correct")
    for lab in labels:
        sid = str(lab.get("id"))
        completion = lab.get("completion")
        if completion is None:
            continue
        if lab.get("answer_correct") is None:
            comp.skipped.append({"id": sid, "reason": "completion without an answer_correct label"})
            continue
        sample = samples.get(sid)
        if sample is None:
            comp.skipped.append({"id": sid, "reason": "sample not in the samples table"})
            continue
        parsed = parse_completion(_completion_value(completion))
        ok = answer_matches(parsed.answer, sample.get("options"), sample["answer"], sample.get("answer_letter"))
        comp.rows.append({"id": sid, "box_kind": lab.get("box_kind"), "human": bool(lab["answer_correct"]),
                          "auto": ok, "confidence": None,
                          "detail": f"completion {completion!r} -> answer {parsed.answer!r}"
                                    + (f" ({parsed.answer_error})" if parsed.answer_error else "")})
    return comp


def _completion_value(value: Any) -> Any:
    if isinstance(value, str) and value.lstrip().startswith("["):
        try:
            return json.loads(value)
        except ValueError:
            return value
    return value


# ---- report ----------------------------------------------------------------------------------------
def write_report(out_dir: str | Path, comparisons: Sequence[Comparison], inputs: Mapping[str, str],
                 label_agreement: Mapping[str, QuestionAgreement] | None = None) -> Path:
    """``report.md``, ``metrics.json``, ``items.jsonl`` and PNG plots into ``out_dir``; returns the report path.

    ``label_agreement`` (``ergo_data.core.labels.agreement`` of the labels) adds how far the human labels
    themselves can be trusted: the annotators' agreement per question.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = ["# Reward validation report", ""]
    lines += [f"- {k}: `{v}`" for k, v in inputs.items()]
    if label_agreement is not None:
        lines += _agreement_lines(label_agreement)
    summary = []
    with open(out / "items.jsonl", "w", encoding="utf-8") as items:
        for i, comp in enumerate(comparisons):
            slug = f"{i}_{_slug(comp.title)}"
            lines += ["", f"## {comp.title}", ""]
            summary.append({"title": comp.title, "metrics": comp.metrics, "skipped": comp.skipped})
            items.writelines(json.dumps({"comparison": comp.title, **r}, default=str) + "\n" for r in comp.rows)
            if not comp.rows:
                lines.append("No labelled items to compare" + (" (no completions in the labels)." if
                                                               "r_acc" in comp.title else "."))
                lines += _skipped_lines(comp)
                continue
            lines += _metric_lines(comp.metrics)
            lines += ["", f"![confusion matrix]({_plot_confusion(comp, out / f'{slug}_confusion.png').name})"]
            if comp.metrics["roc_auc"]["value"] is not None:
                lines.append(f"![ROC]({_plot_roc(comp, out / f'{slug}_roc.png').name})")
            lines += _breakdown_lines(comp) + _disagreement_lines(comp) + _skipped_lines(comp)
    doc = {"inputs": dict(inputs), "comparisons": summary,
           "label_agreement": {q: a.as_dict() for q, a in (label_agreement or {}).items()}}
    (out / "metrics.json").write_text(json.dumps(doc, indent=2, default=str), encoding="utf-8")
    report = out / "report.md"
    report.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return report


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text.lower())[:40].strip("_")


def _fmt(v: Any) -> str:
    return "n/a" if v is None else f"{v:.3f}"


def _metric_lines(m: Mapping[str, Any]) -> list[str]:
    c = m["confusion"]
    lines = [f"n = {m['n']} (human positive: {m['positives']}, automatic positive: {m['predicted_positive']})", "",
             "| metric | value | 95% bootstrap CI |", "|---|---|---|"]
    for name in METRICS:
        ci = m[name]["ci95"]
        lines.append(f"| {name} | {_fmt(m[name]['value'])} | "
                     + (f"[{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "n/a") + " |")
    lines += ["", "| | automatic: no | automatic: yes |", "|---|---|---|",
              f"| human: no | {c['tn']} | {c['fp']} |", f"| human: yes | {c['fn']} | {c['tp']} |"]
    return lines


def _agreement_lines(label_agreement: Mapping[str, QuestionAgreement]) -> list[str]:
    intro = ("Agreement between annotators on the samples two or more of them labelled (each annotator's latest "
             "label); a judge cannot be shown to agree with humans better than they agree with each other.")
    lines = ["", "## How far the human labels can be trusted", "", intro, ""]
    if not any(a.overlapping for a in label_agreement.values()):
        return lines + [("No sample was labelled by two annotators: agreement unmeasured (have two annotators "
                         "review a shared subset to measure it).")]
    return lines + [f"- {a.summary()}" for a in label_agreement.values()]


def _breakdown_lines(comp: Comparison) -> list[str]:
    kinds = sorted({r["box_kind"] for r in comp.rows if r.get("box_kind")})
    if len(kinds) < 2:
        return []
    lines = ["", "| box kind | n | human yes | automatic yes | agree |", "|---|---|---|---|---|"]
    for k in kinds:
        rs = [r for r in comp.rows if r.get("box_kind") == k]
        lines.append(f"| {k} | {len(rs)} | {sum(r['human'] for r in rs)} | {sum(r['auto'] for r in rs)} | "
                     f"{sum(r['human'] == r['auto'] for r in rs)} |")
    return lines


def _disagreement_lines(comp: Comparison, limit: int = 25) -> list[str]:
    bad = [r for r in comp.rows if r["human"] != r["auto"]]
    if not bad:
        return ["", "No disagreements."]
    lines = ["", f"Disagreements ({len(bad)}):", "", "| id | box kind | human | automatic | confidence | detail |",
             "|---|---|---|---|---|---|"]
    for r in bad[:limit]:
        detail = str(r["detail"]).replace("|", "\\|").replace("\n", " ")[:120]
        lines.append(f"| {r['id']} | {r.get('box_kind') or ''} | {r['human']} | {r['auto']} | "
                     f"{_fmt(r['confidence'])} | {detail} |")
    return lines


def _skipped_lines(comp: Comparison) -> list[str]:
    if not comp.skipped:
        return []
    return ["", f"Left out ({len(comp.skipped)}):", ""] + [f"- {s['id']}: {s['reason']}" for s in comp.skipped]


def _plot_confusion(comp: Comparison, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import ConfusionMatrixDisplay

    fig, ax = plt.subplots(figsize=(4, 3.5))
    ConfusionMatrixDisplay.from_predictions([r["human"] for r in comp.rows], [r["auto"] for r in comp.rows],
                                            labels=[False, True], display_labels=["no", "yes"], ax=ax,
                                            colorbar=False)
    ax.set_xlabel("automatic")
    ax.set_ylabel("human")
    ax.set_title(comp.title[:48], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_roc(comp: Comparison, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from sklearn.metrics import RocCurveDisplay

    fig, ax = plt.subplots(figsize=(4, 3.5))
    RocCurveDisplay.from_predictions([r["human"] for r in comp.rows], [r["confidence"] for r in comp.rows], ax=ax,
                                     name="automatic confidence")
    ax.plot([0, 1], [0, 1], ls="--", c="grey", lw=0.8)
    ax.set_title(comp.title[:48], fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run_validation(labels_path: str | Path, samples_path: str | Path, judges: Sequence[Judge], out_dir: str | Path,
                   *, image_root: str | Path | None = None, cache: JudgeCache | None = None,
                   n_boot: int = 2000, seed: int = 0) -> tuple[Path, list[Comparison]]:
    """Everything ``ergo rewards validate`` does: load, compare each judge and the r_acc parser, write the report."""
    labels = load_labels(labels_path)
    samples = load_samples(samples_path, image_root)
    comps = [validate_judge(j, labels, samples, cache).compute(n_boot, seed) for j in judges]
    comps.append(validate_answers(labels, samples).compute(n_boot, seed))
    inputs = {"labels": str(labels_path), "samples": str(samples_path), "label rows": str(len(labels)),
              "bootstrap": f"{n_boot} resamples, seed {seed}"}
    return write_report(out_dir, comps, inputs, agreement(labels)), comps
