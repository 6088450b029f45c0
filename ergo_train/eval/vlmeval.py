"""VLMEvalKit interop: its result layout (write and read) and its rule-based scoring, for comparison.

VLMEvalKit writes predictions as ``<model>_<dataset>.xlsx`` (``PRED_FORMAT=tsv``: ``.tsv``, all fields quoted;
``json``: a list of rows): every column of the dataset's TSV except ``image``, plus ``prediction``. Its rule scoring
(``exact_matching``, no judge model) is, as read in its ``vlmeval/utils/matching_util.py`` and
``vlmeval/dataset/utils/{multiple_choice,hrbench}.py``:

- multiple-choice sets (``VStarBench``, ``HRBench4K/8K``): ``can_infer(prediction, {letter: option})``: the
  prediction with ``.()[],:;!*#{}`` turned into spaces is split on whitespace; exactly one option letter among the
  words, and among the last four words -> that letter; else ``answer is X`` / ``correct answer is X`` (X in A-D,
  any case); else exactly one option text (lowercase) inside the prediction (lowercase), if the prediction is at
  most twice as long as all option texts together. Nothing inferred -> ``Z`` (wrong).
  Accuracy: the mean hit; HR-Bench averages it over ``cycle_category`` groups (the mean of the groups' accuracies,
  overall and per ``category``).
- ``MME-RealWorld``: ``extract_characters_regex``: the ``<answer>`` inside, if any, upper-cased; the prefixes
  ``The best answer is`` ... removed; more than 10 words without a capital A-E -> no answer; else the first
  capital A-E anywhere; else (no capital A-E) the first ``(X)`` choice the text is part of (so an empty text is A).
  Accuracy: the plain mean.

These are implemented here (not imported) to score our records the same way and to re-score VLMEvalKit files;
``ergo eval score`` reports them beside the project's matcher and lists the items where the two disagree.

>>> can_infer("The answer is B", {"A": "red", "B": "blue"}), can_infer("B. blue", {"A": "red", "B": "blue"})
('B', 'B')
>>> can_infer("A or B", {"A": "red", "B": "blue"}), can_infer("it is blue", {"A": "red", "B": "blue"})
(False, 'B')
>>> extract_characters_regex("<answer>c</answer>"), extract_characters_regex("")
('C', 'A')
"""

from __future__ import annotations

import csv
import json
import re
import statistics
import sys
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ergo_train.eval.loaders import LETTERS
from ergo_train.rollout.parsing import parse_answer

FAIL_MSG = "Failed to obtain answer via API"
REJECT_TO_ANSWER = ("Sorry, I can't help with images of people yet.", "I can't process this file.",
                    "I'm sorry, but without the image provided", "Cannot determine the answer")
_VERBOSE_ANSWER = re.compile(r"(?i)(?:correct\s+)?answer\s+is\s+\**([ABCD])\**")
_ANSWER_PREFIXES = ("The best answer is", "The correct answer is", "The answer is", "The answer",
                    "The best option is", "The correct option is", "Best answer:", "Best option:")
SCORERS = {"plain": "VLMEvalKit rule (can_infer), mean hit",
           "cycle": "VLMEvalKit rule (can_infer), mean over cycle_category groups",
           "mme": "VLMEvalKit rule (extract_characters_regex), mean hit"}


# ---- VLMEvalKit's rules --------------------------------------------------------------------------
def can_infer_option(answer: str, choices: Mapping[str, str]) -> str | bool:
    if FAIL_MSG in answer:
        return False
    if any(phrase in answer for phrase in REJECT_TO_ANSWER):
        return "Z"
    mod = answer
    for c in ".()[],:;!*#{}":
        mod = mod.replace(c, " ")
    words = mod.split()
    count = sum(1 for c in choices if c in words)
    if count == 1:
        for ch in choices:
            if ch in words and words.index(ch) > len(words) - 5:
                return ch
    elif count == 0 and "Z" in words:
        return "Z"
    m = _VERBOSE_ANSWER.search(answer or "")
    if m and m.group(1).upper() in choices:
        return m.group(1).upper()
    return False


def can_infer_text(answer: str, choices: Mapping[str, str]) -> str | bool:
    answer = answer.lower()
    if len(answer) > 2 * sum(len(str(v)) for v in choices.values()):
        return False
    found = [k for k, v in choices.items() if str(v).lower() in answer]
    return found[0] if len(found) == 1 else False


def can_infer(answer: Any, choices: Mapping[str, str]) -> str | bool:
    """VLMEvalKit's ``can_infer``: a letter, ``"Z"`` (refused), or False (nothing inferred)."""
    answer = str(answer)
    return can_infer_option(answer, choices) or can_infer_text(answer, choices)


def extract_characters_regex(s: str, choices: Sequence[str] = ("(A)", "(B)", "(C)", "(D)", "(E)")) -> str:
    """MME-RealWorld's rule (with its ``<answer>`` step first); ``""`` is no answer."""
    m = re.search(r"<answer>(.*?)</answer>", s, re.DOTALL)
    s = (m.group(1).strip().upper() if m else s).strip()
    for prefix in _ANSWER_PREFIXES:
        s = s.replace(prefix, "")
    if len(s.split()) > 10 and not re.search("[ABCDE]", s):
        return ""
    m = re.search(r"[ABCDE]", s)
    if m is None:
        return next((c[1] for c in choices if s.lower() in c.lower()), "")
    return m[0]


def vlmeval_choice(prediction: str, options: Sequence[str], scoring: str) -> str | None:
    """The letter VLMEvalKit's rule reads from ``prediction`` (None: no answer, scored wrong)."""
    if scoring == "mme":
        return extract_characters_regex(prediction) or None
    got = can_infer(prediction, {LETTERS[i]: o for i, o in enumerate(options)})
    return got if got and got != "Z" else None


def vlmeval_accuracy(records: Sequence[Mapping[str, Any]], scoring: str, key: str = "correct") -> dict[str, Any]:
    """Accuracy as VLMEvalKit reports it for ``scoring`` (``plain``, ``cycle``, ``mme``), from ``record[key]``.

    >>> recs = [{"cycle_category": c, "category": "x", "correct": h} for c, h in [("0", 1), ("0", 1), ("1", 0)]]
    >>> vlmeval_accuracy(recs, "cycle")["overall"], vlmeval_accuracy(recs, "plain")["overall"]
    (0.5, 0.6666666666666666)
    """
    def mean_hits(rs: Iterable[Mapping[str, Any]]) -> float:
        return statistics.fmean(1.0 if r.get(key) else 0.0 for r in rs)

    if not records:
        return {"overall": None, "categories": {}, "groups": 0}
    by_cat: dict[str, list] = defaultdict(list)
    for r in records:
        by_cat[str(r.get("category"))].append(r)
    if scoring != "cycle" or not any(r.get("cycle_category") is not None for r in records):
        return {"overall": mean_hits(records), "categories": {c: mean_hits(v) for c, v in sorted(by_cat.items())},
                "groups": 1}
    groups: dict[str, list] = defaultdict(list)
    for r in records:
        groups[str(r.get("cycle_category"))].append(r)
    totals: dict[str, float] = defaultdict(float)
    for rs in groups.values():  # VLMEvalKit: per group, 'all' and each category present; summed, / #groups
        totals["all"] += mean_hits(rs)
        cats: dict[str, list] = defaultdict(list)
        for r in rs:
            cats[str(r.get("category"))].append(r)
        for c, v in cats.items():
            totals[c] += mean_hits(v)
    n = len(groups)
    return {"overall": totals.pop("all") / n, "categories": {c: t / n for c, t in sorted(totals.items())},
            "groups": n}


# ---- predictions as VLMEvalKit writes them ---------------------------------------------------------
def prediction_text(record: Mapping[str, Any]) -> str:
    """The ``prediction`` of a record in the letters it was shown: the one ``<answer>`` inside, else the output."""
    output = record.get("output") or ""
    inner, _ = parse_answer(output)
    return inner if inner is not None else output


def vlmeval_row(record: Mapping[str, Any], n: int, columns: Mapping[str, str] | None = None) -> dict[str, str]:
    """One result row in the FILE's letters: a shuffled run maps its chosen option back to the file's letter
    (``Z`` when no option could be read), an unshuffled run writes what the model answered."""
    options, order = list(record.get("options") or []), record.get("option_order")
    if order is not None:
        file_options = [""] * len(options)
        for shown, original in enumerate(order):
            file_options[original] = options[shown]
        answer = LETTERS[order[LETTERS.index(record["answer_letter"])]] if record.get("answer_letter") else ""
        pred = record.get("pred_letter")
        prediction = LETTERS[order[LETTERS.index(pred)]] if pred else "Z"
    else:
        file_options, answer, prediction = options, record.get("answer_letter") or "", prediction_text(record)
    row: dict[str, str] = dict(columns or {})
    row.setdefault("index", str(record.get("index") if record.get("index") is not None else n))
    row.setdefault("question", str(record.get("question") or ""))
    for i, o in enumerate(file_options):
        row[LETTERS[i]] = o
    row["answer"] = answer
    if record.get("category") is not None:
        row.setdefault("category", str(record["category"]))
    if record.get("cycle_category") is not None:
        row.setdefault("cycle_category", str(record["cycle_category"]))
    row["prediction"] = prediction
    row["ergo_id"], row["ergo_status"] = str(record.get("id")), str(record.get("status"))
    return row


def write_predictions(records: Sequence[Mapping[str, Any]], out_dir: str | Path, model: str,
                      dataset: str) -> dict[str, Path]:
    """``out_dir/<mode>[-seed<k>]/<model>_<dataset>.tsv`` per mode and seed, in VLMEvalKit's layout."""
    out = Path(out_dir)
    groups: dict[tuple[str, Any], list] = defaultdict(list)
    for r in records:
        groups[(r["mode"], r.get("seed", 0))].append(r)
    seeds = {s for _, s in groups}
    name = f"{Path(str(model)).name or 'model'}_{dataset}.tsv"
    for (mode, seed), recs in groups.items():
        folder = out / (mode if len(seeds) == 1 else f"{mode}-seed{seed}")
        folder.mkdir(parents=True, exist_ok=True)
        rows = [vlmeval_row(r, n, r.get("columns")) for n, r in enumerate(recs)]
        header = list(dict.fromkeys(k for row in rows for k in row))
        header = [h for h in header if h not in ("prediction", "ergo_id", "ergo_status")] + \
            ["prediction", "ergo_id", "ergo_status"]
        with (folder / name).open("w", encoding="utf-8", newline="") as f:
            w = csv.writer(f, delimiter="\t", quoting=csv.QUOTE_ALL)
            w.writerow(header)
            for row in rows:
                w.writerow([row.get(h, "") for h in header])
    return {"vlmeval": out}


def read_predictions(path: str | Path) -> list[dict[str, str]]:
    """Rows of a VLMEvalKit result file (``.tsv``, ``.xlsx`` with openpyxl installed, ``.json``), as strings."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix == ".tsv":
        old = csv.field_size_limit()
        csv.field_size_limit(sys.maxsize)
        try:
            with p.open(encoding="utf-8", newline="") as f:
                return [{k: v for k, v in row.items() if k is not None} for row in csv.DictReader(f, delimiter="\t")]
        finally:
            csv.field_size_limit(old)
    if suffix == ".json":
        data = json.loads(p.read_text(encoding="utf-8"))
        if not isinstance(data, list):
            raise ValueError(f"{p.name}: a VLMEvalKit json result is a list of rows")
        return [{k: "" if v is None else str(v) for k, v in row.items()} for row in data]
    if suffix == ".xlsx":
        try:
            import openpyxl
        except ImportError:
            raise ValueError(f"{p.name}: reading .xlsx needs openpyxl (pip install openpyxl), or write the "
                             "predictions as TSV with VLMEvalKit's PRED_FORMAT=tsv") from None
        sheet = openpyxl.load_workbook(p, read_only=True).active
        rows = list(sheet.iter_rows(values_only=True))
        header = [str(h) for h in rows[0]] if rows else []
        return [{h: "" if v is None else str(v) for h, v in zip(header, r)} for r in rows[1:]]
    raise ValueError(f"{p.name}: not a VLMEvalKit result file (.tsv, .xlsx or .json)")
