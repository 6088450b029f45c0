"""Re-score predictions without a model: our ``results.jsonl`` or a VLMEvalKit result file (``ergo eval score``).

- ``results.jsonl`` (``ergo eval``): every record that reached an answer (``ok`` / ``unparseable``) is parsed again
  with the current matcher; failures before an output (bad item, bad image, exception, server error, timeout)
  stay wrong as they were.
- a VLMEvalKit result (``<model>_<dataset>.tsv|xlsx|json``: ``index, question, A.., answer, prediction, category
  [, cycle_category, l2-category]``): one record per row, mode ``vlmeval`` (or the folder name our run wrote it
  into), scored by the project's matcher (``parse_choice``) and by VLMEvalKit's rule (``ergo_train.eval.vlmeval``).

The dataset (and so VLMEvalKit's scoring: HR-Bench's cycle averaging, MME-RealWorld's regex) comes from
``bench``, else from the file name's ``_<dataset>`` suffix, else ``cycle`` when the file has ``cycle_category``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ergo_train.eval.evaluate import MATCHER, parse_choice
from ergo_train.eval.loaders import BENCH_PROFILES, LETTERS

ANSWERED = ("ok", "unparseable")


def detect_bench(path: Path, rows: list[dict[str, str]] | None = None) -> str:
    """The bench a predictions file belongs to, from its name (``Qwen_HRBench4K.tsv`` -> ``HRBench4K``).

    >>> detect_bench(Path("out/Qwen2.5-VL-7B_MME-RealWorld.xlsx")), detect_bench(Path("x/preds.tsv"), [{}])
    ('MME-RealWorld', 'tsv')
    """
    stem = path.stem
    for name in sorted((b for b in BENCH_PROFILES if BENCH_PROFILES[b][1] == b), key=len, reverse=True):
        if stem.endswith("_" + name) or stem == name:
            return name
    if rows and any("cycle_category" in r for r in rows[:1]):
        return "HRBench4K"
    return "tsv"


def rescore_records(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Parse the outputs of answered records again with the current matcher."""
    out = []
    for r in records:
        r = dict(r)
        if r.get("status") in ANSWERED and r.get("options"):
            letter, why = parse_choice(r.get("output") or "", r["options"])
            r["pred_letter"], r["correct"] = letter, letter is not None and letter == r.get("answer_letter")
            if letter is None:
                note = f" (turn 1: {r['zoom_error']})" if r.get("zoom_error") else ""
                r.update(status="unparseable", error=why + note)
            else:
                r.update(status="ok", error=None)
        out.append(r)
    return out


def records_from_vlmeval(rows: list[dict[str, str]], bench: str, mode: str = "vlmeval") -> list[dict[str, Any]]:
    """Records (as ``ergo eval`` writes them) from VLMEvalKit result rows; a row without a usable answer or
    options is a ``bad_item`` (wrong, listed)."""
    records = []
    for n, row in enumerate(rows):
        index = (row.get("index") or "").strip() or f"row{n}"
        options = []
        for letter in LETTERS:
            text = row.get(letter)
            if text is None or not str(text).strip() or str(text) == "nan":
                break
            options.append(str(text))
        answer = (row.get("answer") or "").strip().upper()
        prediction = row.get("prediction")
        rec: dict[str, Any] = {
            "id": row.get("ergo_id") or f"{bench.lower()}/{index}", "bench": bench, "mode": mode, "seed": 0,
            "index": index, "question": row.get("question"), "category": row.get("category") or None,
            "cycle_category": row.get("cycle_category") or None, "options": options, "answer_letter": answer,
            # VLMEvalKit reads the column with pandas and str()s it: an empty cell is 'nan'
            "output": prediction if prediction not in (None, "") else "nan",
            "status": "ok", "correct": False, "error": None}
        if len(options) < 2 or answer not in LETTERS[: len(options)]:
            rec.update(status="bad_item", options=[], error=f"row {n} (index {index}): needs options A, B.. and an "
                                                             f"answer among them, got answer {answer!r}")
        elif row.get("ergo_status") not in (None, "", *ANSWERED):
            rec.update(status=row["ergo_status"], error="failed in the run that wrote this file")
        else:
            rec["pred_letter"], why = parse_choice(rec["output"], options)
            rec["correct"] = rec["pred_letter"] == answer
            if rec["pred_letter"] is None:
                rec.update(status="unparseable", error=why)
        records.append(rec)
    return records


def score_file(path: str | Path, out_dir: str | Path, bench: str | None = None) -> dict[str, Path]:
    """Re-score ``path`` (``results.jsonl`` or a VLMEvalKit result file) and write the report into ``out_dir``."""
    from ergo_train.eval.report import write_report
    from ergo_train.eval.vlmeval import read_predictions

    p = Path(path)
    if not p.is_file():
        raise ValueError(f"predictions file {str(p)!r} does not exist")
    if p.suffix == ".jsonl":
        records = [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
        if not records or "mode" not in records[0]:
            raise ValueError(f"{p.name}: not an `ergo eval` results.jsonl (no 'mode' in the first record)")
        bench = bench or records[0].get("bench") or "tsv"
        records, source = rescore_records(records), "ergo eval results.jsonl"
    else:
        rows = read_predictions(p)
        missing = [c for c in ("index", "answer", "prediction", "A", "B") if rows and c not in rows[0]]
        if not rows or missing:
            raise ValueError(f"{p.name}: not a VLMEvalKit result file (missing column(s) {missing or 'all: empty'})")
        bench = bench or detect_bench(p, rows)
        mode = p.parent.name.split("-seed")[0] if p.parent.parent.name == "vlmeval" else "vlmeval"
        records, source = records_from_vlmeval(rows, bench, mode), "VLMEvalKit result file"
    if bench not in BENCH_PROFILES:
        raise ValueError(f"unknown bench {bench!r}; valid: {', '.join(BENCH_PROFILES)}")
    meta = {"bench": bench, "path": str(p), "model": f"(re-scored {source})", "modes": ", ".join(
        dict.fromkeys(r["mode"] for r in records)), "items": len(records), "matcher": MATCHER}
    paths = write_report(records, out_dir, meta, scoring=BENCH_PROFILES[bench][2])
    return paths
