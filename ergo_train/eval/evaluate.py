"""Evaluation on V*, HR-Bench and MME-RealWorld: four inference modes on any VLM, in process or served.

- ``direct``: the full image resized to the pixel budget, the question with lettered options.
- ``direct_full``: the same at the model's own default budget (``max_pixels`` 16384*28*28): the full-resolution
  baseline ERGO compares against (4,471 vs 1,025 vision tokens on V*).
- ``coarse_to_fine``: the two-turn ERGO rollout of training (``ergo_train.rollout.env.two_turn_rollout``):
  turn 1 on the coarse view, the ``zoom`` tool, turn 2 on the full-resolution crop.
- ``oracle_crop``: the ground-truth box (union) cropped at full resolution and resized to the budget,
  with the same prompt as ``direct``: an upper bound on what a better box would give.

Every mode talks to a chat backend (``ergo_train.rollout.chat``): ``TransformersChat`` (``model.generate``) or
``ergo_train.models.served.ServedChat`` (an OpenAI-compatible server); prompts, views, coordinates and crops are
built here, the same for both. Each (item, mode, seed) gives one record; a malformed item, an unreadable image, an
exception, a server error, a timeout or an unparseable answer is WRONG and stays in the denominator.

>>> from ergo_train.eval.loaders import BadItem
>>> rec = evaluate_item(BadItem("vstar/x", "vstar", "missing_box", "x.json: no 'bbox' list"), "direct",
...                     None, EvalSettings())
>>> rec["status"], rec["correct"], rec["error"]
('bad_item', False, "missing_box: x.json: no 'bbox' list")
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ergo_data.core.boxes import Box
from ergo_data.core.imageio import DecodeError, ImageSource
from ergo_train.eval.loaders import LETTERS, BadItem, BenchItem
from ergo_train.rollout.chat import ChatBackend, TransformersChat
from ergo_train.rollout.env import turn2_text, two_turn_rollout
from ergo_train.rollout.matching import answer_matches
from ergo_train.rollout.parsing import parse_answer
from ergo_train.rollout.zoom import budget_max_pixels, coarse_view, crop_at_budget

MODES = ("direct", "coarse_to_fine", "oracle_crop", "direct_full")
REGION_HIT_COVER = 0.9  # a zoom "hits" when its crop holds this share of the ground-truth region (the stored judge's)
FULL_RES_MAX_PIXELS = budget_max_pixels(16384)  # Qwen2.5-VL's own default max_pixels
MATCHER = "ergo rule matcher (ergo_train.rollout.matching.answer_matches on parsing.parse_answer's <answer>, else the whole output)"


@dataclass
class EvalSettings:
    """Inference settings shared by the modes. ``generate_kwargs`` are extra ``model.generate`` arguments (in
    process); ``concurrency`` items run at once (served backends); ``temperature`` 0 is greedy."""

    max_pixels: int = budget_max_pixels(1280)  # budget of every image shown (Qwen smart_resize)
    max_new_tokens: int = 256  # per generation (per turn in coarse_to_fine)
    timeout_s: float | None = None  # an item over this wall time is a timeout (WRONG)
    generate_kwargs: dict[str, Any] = field(default_factory=dict)
    full_max_pixels: int = FULL_RES_MAX_PIXELS  # budget of direct_full
    concurrency: int = 1
    temperature: float = 0.0


# ---- answers -----------------------------------------------------------------------------------
def parse_choice(text: str, options: list[str]) -> tuple[str | None, str | None]:
    """``(letter, None)`` for the option the output chose, or ``(None, why)`` when none can be read.

    The answer is the one ``<answer>…</answer>`` (``ergo_train.rollout.parsing.parse_answer``, as in training); an
    output without answer tags is read whole, as VLMEvalKit reads a prediction (``B``, ``The answer is B``,
    ``B. text``, an option's text), which is how base models answer "with the option's letter directly". The
    letter is matched with the training reward's matcher (``answer_matches``, ergo_train/rollout/matching.py).

    >>> opts = ["evian", "Fiji"]
    >>> parse_choice("<answer>B</answer>", opts), parse_choice("b. Fiji", opts), parse_choice("Fiji", opts)
    (('B', None), ('B', None), ('B', None))
    >>> parse_choice("I think it is B", opts), parse_choice("A or B, hard to say", opts)
    (('B', None), (None, "no <answer> and the output is not a choice: 'A or B, hard to say'"))
    >>> parse_choice("<answer>C</answer>", opts)
    (None, "<answer> names no option: 'C'")
    """
    pred, error = parse_answer(text)
    if pred is None and error != "no <answer>":
        return None, f"{error}: {text.strip()[:120]!r}"
    where = "<answer> names no option" if pred is not None else "no <answer> and the output is not a choice"
    pred = pred if pred is not None else text.strip()
    for i, option in enumerate(options):
        if answer_matches(pred, options, option, LETTERS[i]):
            return LETTERS[i], None
    return None, f"{where}: {pred[:120]!r}"


# ---- backends ----------------------------------------------------------------------------------
def in_process_chat(model, processor, settings: EvalSettings) -> TransformersChat:
    """The in-process backend with the run's decoding: greedy (or ``temperature``), ``max_time`` = the timeout."""
    kwargs: dict[str, Any] = {"do_sample": False}
    if settings.temperature > 0:
        kwargs.update(do_sample=True, temperature=settings.temperature)
    if settings.timeout_s:
        kwargs["max_time"] = float(settings.timeout_s)
    kwargs.update(settings.generate_kwargs)
    return TransformersChat(model, processor, max_new_tokens=settings.max_new_tokens, generate_kwargs=kwargs)


def _single_turn(chat: ChatBackend, image: Image.Image, text: str, seed: int | None) -> dict[str, Any]:
    """One user turn (``image`` then ``text``) with the model's own chat template."""
    turn = chat.complete([{"role": "user", "content": [{"type": "image", "image": image},
                                                       {"type": "text", "text": text}]}], seed=seed)
    return {"output": turn.text, "vision_tokens": turn.vision_tokens, "vision_tokens_turns": [turn.vision_tokens],
            "generated_tokens": turn.generated_tokens}


# ---- one item, one mode ------------------------------------------------------------------------
def _base_record(item: BenchItem | BadItem, mode: str, seed: int) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": item.id, "bench": item.bench, "mode": mode, "seed": seed, "category": item.category,
                           "status": "ok", "correct": False, "error": None}
    if isinstance(item, BenchItem):
        gt = item.gt_box
        rec.update(question=item.question, answer_letter=item.answer_letter, answer=item.answer, options=item.options,
                   gt_box=list(gt.as_tuple()) if gt else None, index=item.index,
                   cycle_category=item.cycle_category, option_order=item.option_order,
                   shuffle_seed=item.shuffle_seed)
        if item.columns:
            rec["columns"] = item.columns
    return rec


def _run_direct(item: BenchItem, image: Image.Image, chat: ChatBackend, s: EvalSettings,
                seed: int | None) -> dict[str, Any]:
    view, _ = coarse_view(image, s.max_pixels)
    return {**_single_turn(chat, view, turn2_text(item.question, item.options), seed), "box_area_frac": 1.0}


def _run_direct_full(item: BenchItem, image: Image.Image, chat: ChatBackend, s: EvalSettings,
                     seed: int | None) -> dict[str, Any]:
    view, _ = coarse_view(image, s.full_max_pixels)
    return {**_single_turn(chat, view, turn2_text(item.question, item.options), seed), "box_area_frac": 1.0}


def _run_oracle(item: BenchItem, image: Image.Image, chat: ChatBackend, s: EvalSettings,
                seed: int | None) -> dict[str, Any]:
    gt = item.gt_box
    crop = crop_at_budget(image, gt, s.max_pixels)
    return {**_single_turn(chat, crop, turn2_text(item.question, item.options), seed),
            "pred_box": list(gt.as_tuple()), "box_area_frac": gt.area / (image.size[0] * image.size[1])}


def _run_coarse_to_fine(item: BenchItem, image: Image.Image, chat: ChatBackend, s: EvalSettings,
                        seed: int | None) -> dict[str, Any]:
    row = {"id": item.id, "image": image, "question": item.question, "options": item.options,
           "answer": item.answer}
    res = two_turn_rollout(chat, row, s.max_pixels, seed=seed)
    zoom = res.zoom
    pred: Box | None = zoom.box if zoom is not None and zoom.ok else None
    gt = item.gt_box
    return {
        "output": res.final_text, "turn1_output": res.turn1_text, "zoom_args": _jsonable(res.zoom_args),
        "zoom_ok": bool(zoom is not None and zoom.ok),
        "zoom_error": "no zoom call in turn 1" if zoom is None else zoom.error,
        "pred_box": list(pred.as_tuple()) if pred else None,
        "iou": (pred.iou(gt) if pred else 0.0) if gt else None,
        "region_hit": (bool(pred and pred.intersection_area(gt) >= REGION_HIT_COVER * gt.area)) if gt else None,
        "box_area_frac": zoom.area_frac if zoom is not None else None,
        "vision_tokens": sum(res.vision_tokens), "vision_tokens_turns": list(res.vision_tokens),
        "generated_tokens": res.generated_tokens,
    }


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "direct": _run_direct, "coarse_to_fine": _run_coarse_to_fine, "oracle_crop": _run_oracle,
    "direct_full": _run_direct_full,
}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def _request_seed(seed: int, item_id: str, mode: str) -> int:
    return int.from_bytes(hashlib.sha256(f"{seed}:{item_id}:{mode}".encode()).digest()[:4], "little")


def _failure_status(e: Exception) -> str:
    reason = getattr(e, "reason", None)  # ergo_train.models.served.ServedError
    if reason == "timeout":
        return "timeout"
    return "server_error" if reason is not None else "exception"


def evaluate_item(item: BenchItem | BadItem, mode: str, chat: ChatBackend | None, settings: EvalSettings,
                  image: Image.Image | Exception | None = None, seed: int = 0) -> dict[str, Any]:
    """Run ``mode`` on one item; never raises for the item's faults: they become a failed record.

    ``image`` is the decoded image (or the exception decoding raised); None decodes it here. ``seed`` is the run's
    seed (recorded; it seeds sampling when ``settings.temperature > 0``).
    """
    if mode not in RUNNERS:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    rec = _base_record(item, mode, seed)
    if isinstance(item, BadItem):
        return {**rec, "status": "bad_item", "error": f"{item.reason}: {item.detail}"}
    if image is None:
        image = decode_item_image(item)
    if isinstance(image, Exception):
        status = "bad_image" if isinstance(image, (DecodeError, OSError)) else "exception"
        return {**rec, "status": status, "error": f"{type(image).__name__}: {image}"}
    rec["image_size"] = list(image.size)
    if mode == "oracle_crop" and item.gt_box is None:
        return {**rec, "status": "no_gt_box", "error": "oracle_crop needs a ground-truth box; the item has none"}
    request_seed = _request_seed(seed, item.id, mode) if settings.temperature > 0 else None
    start = time.perf_counter()
    try:
        rec.update(RUNNERS[mode](item, image, chat, settings, request_seed))
    except Exception as e:  # noqa: BLE001 - any failure of inference is a WRONG answer, listed with its cause
        rec.update(status=_failure_status(e), error=f"{type(e).__name__}: {e}")
    rec["wall_s"] = time.perf_counter() - start
    if rec["status"] == "ok":
        rec["pred_letter"], why = parse_choice(rec.get("output") or "", item.options)
        if rec["pred_letter"] is None:
            zoom_note = f" (turn 1: {rec['zoom_error']})" if rec.get("zoom_error") else ""
            rec.update(status="unparseable", error=why + zoom_note)
        rec["correct"] = rec["pred_letter"] == item.answer_letter
    if settings.timeout_s is not None and rec["wall_s"] > settings.timeout_s and rec["status"] != "timeout":
        rec.update(status="timeout", correct=False,
                   error=f"{rec['wall_s']:.1f} s > time limit {settings.timeout_s} s")
    return rec


def decode_item_image(item: BenchItem) -> ImageSource | Exception:
    """The item's image for the crop path (its header read; pixels decoded where a view or a crop needs them),
    or the exception that reading it raised (recorded, not raised)."""
    try:
        return ImageSource.open(item.read_bytes())
    except Exception as e:  # noqa: BLE001 - an unreadable image is a failed record in every mode
        return e


def _check_modes(modes: Sequence[str]) -> None:
    bad = [m for m in modes if m not in RUNNERS]
    if bad or not modes:
        raise ValueError(f"unknown mode(s) {bad or list(modes)}; valid: {', '.join(MODES)}")


def evaluate(items: Iterable[BenchItem | BadItem], chat: ChatBackend, modes: Iterable[str], settings: EvalSettings,
             on_record: Callable[[dict[str, Any]], None] | None = None, seed: int = 0) -> list[dict[str, Any]]:
    """Every mode on every item (the image is decoded once per item); records in item order.

    With ``settings.concurrency > 1`` that many items run at once (for served backends); at most twice that many
    are held in memory. ``on_record`` sees the records in item order.
    """
    modes = list(modes)
    _check_modes(modes)

    def item_records(item: BenchItem | BadItem) -> list[dict[str, Any]]:
        image = decode_item_image(item) if isinstance(item, BenchItem) else None
        return [evaluate_item(item, mode, chat, settings, image, seed) for mode in modes]

    records: list[dict[str, Any]] = []

    def emit(recs: list[dict[str, Any]]) -> None:
        for rec in recs:
            records.append(rec)
            if on_record is not None:
                on_record(rec)

    workers = max(1, int(settings.concurrency))
    if workers == 1:
        for item in items:
            emit(item_records(item))
        return records
    with ThreadPoolExecutor(workers, thread_name_prefix="ergo-eval") as pool:
        pending: deque = deque()
        for item in items:
            pending.append(pool.submit(item_records, item))
            while len(pending) >= 2 * workers:
                emit(pending.popleft().result())
        while pending:
            emit(pending.popleft().result())
    return records


# ---- a whole run -------------------------------------------------------------------------------
def load_eval_model(name: str, max_pixels: int, device: str = "auto", dtype: str = "auto"):
    """``(model, processor)`` for ``tiny``, a local checkpoint directory (e.g. from ``ergo train``) or a hub name."""
    import torch

    from ergo_train.models.loaders import load_model

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if dtype == "auto":
        dtype = "bfloat16" if device.startswith("cuda") else "float32"
    model, processor = load_model(name, max_pixels=max_pixels, dtype=getattr(torch, dtype))
    return model.to(device), processor


def run_eval(bench: str, path: str | Path, model_name: str, modes: list[str], out_dir: str | Path, *,
             settings: EvalSettings | None = None, limit: int | None = None, seeds: Sequence[int] = (0,),
             shuffle: bool | None = None, device: str = "auto", dtype: str = "auto",
             model_and_processor: tuple[Any, Any] | None = None, chat: ChatBackend | None = None,
             on_record: Callable[[dict[str, Any]], None] | None = None, split: str | None = None) -> dict[str, Path]:
    """Run ``modes`` of ``model_name`` on ``bench`` once per seed; write ``results.jsonl`` (streamed), the
    VLMEvalKit-layout predictions (``vlmeval/``) and the report.

    ``chat`` (e.g. a ``ServedChat``) replaces the in-process model. Each seed reshuffles the options (where the
    bench shuffles) and seeds sampling. Items are read lazily; input errors (path, header) are raised before the
    model loads. ``on_record(record)`` is called after each record.
    """
    from ergo_train.eval.loaders import BENCH_PROFILES, BENCHES_WITH_BOXES, load_bench
    from ergo_train.eval.report import write_report
    from ergo_train.eval.vlmeval import write_predictions

    settings = settings or EvalSettings()
    _check_modes(modes)
    if "oracle_crop" in modes and bench not in BENCHES_WITH_BOXES:
        raise ValueError(f"oracle_crop needs ground-truth boxes and {bench} has none (only "
                         f"{', '.join(BENCHES_WITH_BOXES)})")
    seeds = list(seeds) or [0]
    first_items = iter(load_bench(bench, path, shuffle_seed=seeds[0], shuffle=shuffle, limit=limit, split=split))
    first = next(first_items, None)  # reads the header / first item now: input errors before the model loads
    if chat is None:
        budget = max([settings.max_pixels] + ([settings.full_max_pixels] if "direct_full" in modes else []))
        model, processor = model_and_processor or load_eval_model(model_name, budget, device, dtype)
        chat = in_process_chat(model, processor, settings)
        backend = f"in process (transformers generate on {getattr(model, 'device', '?')})"
    else:
        backend = f"served: {getattr(chat, 'api_base', '?')} (OpenAI chat completions, concurrency " \
                  f"{settings.concurrency})"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    records: list[dict[str, Any]] = []
    with results.open("w", encoding="utf-8") as f:
        def write(rec: dict[str, Any]) -> None:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            if on_record is not None:
                on_record(rec)

        for n, seed in enumerate(seeds):
            items = itertools.chain([first] if first is not None else [], first_items) if n == 0 else \
                load_bench(bench, path, shuffle_seed=seed, shuffle=shuffle, limit=limit, split=split)
            records += evaluate(items, chat, modes, settings, on_record=write, seed=seed)
    _, dataset, _, default_shuffle = BENCH_PROFILES[bench]
    shuffled = default_shuffle if shuffle is None else shuffle
    n_items = len(records) // max(len(modes) * len(seeds), 1)
    meta = {"bench": bench, "path": str(path) + (f" (split {split})" if split else ""), "model": model_name, "backend": backend, "modes": ", ".join(modes),
            "items": n_items,
            "malformed items": sum(r["status"] == "bad_item" for r in records) // max(len(modes) * len(seeds), 1),
            "seeds": ", ".join(map(str, seeds)), "max_pixels": settings.max_pixels,
            "max_new_tokens": settings.max_new_tokens, "timeout_s": settings.timeout_s,
            "decoding": "greedy" if settings.temperature == 0 else f"sampling, temperature {settings.temperature}",
            "options": "shuffled per item and seed (order recorded per record)" if shuffled
            else "in the file's order (the file fixes the letters)",
            "matcher": MATCHER, "started": started}
    if "direct_full" in modes:
        meta["direct_full max_pixels"] = settings.full_max_pixels
    paths = write_report(records, out, meta, scoring=BENCH_PROFILES[bench][2])
    paths.update(write_predictions(records, out / "vlmeval", model_name, dataset or bench))
    return {"results": results, **paths}
