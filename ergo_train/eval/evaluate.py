"""Evaluation on V*, HR-Bench and MME-RealWorld: three inference modes on any Hugging Face VLM.

- ``direct``: the full image resized to the pixel budget, the question with lettered options.
- ``coarse_to_fine``: the two-turn ERGO rollout of training (``ergo_train.rollout.env.run_two_turns``):
  turn 1 on the coarse view, the ``zoom`` tool, turn 2 on the full-resolution crop.
- ``oracle_crop``: the ground-truth box (union) cropped at full resolution and resized to the budget,
  with the same prompt as ``direct``: an upper bound on what a better box would give.

Each (item, mode) gives one record; a malformed item, an unreadable image, an exception, a timeout or
an unparseable answer is WRONG and stays in the denominator (``eval_report`` counts and lists them).

>>> from ergo_train.eval.loaders import BadItem
>>> rec = evaluate_item(BadItem("vstar/x", "vstar", "missing_box", "x.json: no 'bbox' list"), "direct",
...                     None, None, EvalSettings())
>>> rec["status"], rec["correct"], rec["error"]
('bad_item', False, "missing_box: x.json: no 'bbox' list")
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ergo_data.core.boxes import Box
from ergo_data.core.imageio import DecodeError
from ergo_train.eval.loaders import LETTERS, BadItem, BenchItem
from ergo_train.rollout.env import run_two_turns, turn2_text, use_tool_chat_template
from ergo_train.rollout.parsing import answer_matches, parse_answer
from ergo_train.rollout.zoom import budget_max_pixels, coarse_view, crop_at_budget

MODES = ("direct", "coarse_to_fine", "oracle_crop")


@dataclass
class EvalSettings:
    """Inference settings shared by the modes. ``generate_kwargs`` are extra ``model.generate`` arguments."""

    max_pixels: int = budget_max_pixels(1280)  # budget of every image shown (Qwen smart_resize)
    max_new_tokens: int = 256  # per generation (per turn in coarse_to_fine)
    timeout_s: float | None = None  # an item over this wall time is a timeout (WRONG)
    generate_kwargs: dict[str, Any] = field(default_factory=dict)


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


# ---- generation --------------------------------------------------------------------------------
def _generation_kwargs(processor, settings: EvalSettings) -> dict[str, Any]:
    """Greedy decoding, vision placeholders suppressed (a random model would emit them), optional max_time."""
    from ergo_train.models.processor import VISION_TOKENS

    tok = processor.tokenizer
    unk = getattr(tok, "unk_token_id", None)
    ids = [i for i in (tok.convert_tokens_to_ids(t) for t in VISION_TOKENS) if i is not None and i != unk]
    kwargs: dict[str, Any] = {"do_sample": False}
    if ids:
        kwargs["suppress_tokens"] = ids
    if settings.timeout_s:
        kwargs["max_time"] = float(settings.timeout_s)
    kwargs.update(settings.generate_kwargs)
    return kwargs


def generate_single(model, processor, image: Image.Image, text: str, settings: EvalSettings) -> tuple[str, int, int]:
    """One user turn (``image`` then ``text``) with the processor's own chat template.

    Returns ``(output text, vision tokens in the input, generated tokens)``; the vision tokens are counted
    in the processor's ``input_ids``, so they are what the model actually saw.
    """
    import torch

    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": text}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt").to(model.device)
    image_token_id = getattr(model.config, "image_token_id", None)
    seen = int((inputs["input_ids"] == image_token_id).sum()) if image_token_id is not None else None
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=settings.max_new_tokens,
                             **_generation_kwargs(processor, settings))
    new_ids = out[0, inputs["input_ids"].shape[1]:]
    return processor.tokenizer.decode(new_ids, skip_special_tokens=True), seen, int(new_ids.numel())


@contextlib.contextmanager
def tool_chat_template(processor) -> Iterator[None]:
    """Use TRL's tool-calling template (what training uses) for the duration; restore the original after."""
    tok = getattr(processor, "tokenizer", None)
    saved = (processor.chat_template, getattr(tok, "chat_template", None))
    use_tool_chat_template(processor)
    try:
        yield
    finally:
        processor.chat_template = saved[0]
        if tok is not None:
            tok.chat_template = saved[1]


# ---- one item, one mode ------------------------------------------------------------------------
def _base_record(item: BenchItem | BadItem, mode: str) -> dict[str, Any]:
    rec: dict[str, Any] = {"id": item.id, "bench": item.bench, "mode": mode, "category": item.category,
                           "status": "ok", "correct": False, "error": None}
    if isinstance(item, BenchItem):
        gt = item.gt_box
        rec.update(answer_letter=item.answer_letter, answer=item.answer, options=item.options,
                   gt_box=list(gt.as_tuple()) if gt else None)
    return rec


def _run_direct(item: BenchItem, image: Image.Image, model, processor, s: EvalSettings) -> dict[str, Any]:
    view, _ = coarse_view(image, s.max_pixels)
    text, tokens, gen = generate_single(model, processor, view, turn2_text(item.question, item.options), s)
    return {"output": text, "vision_tokens": tokens, "vision_tokens_turns": [tokens], "generated_tokens": gen,
            "box_area_frac": 1.0}


def _run_oracle(item: BenchItem, image: Image.Image, model, processor, s: EvalSettings) -> dict[str, Any]:
    gt = item.gt_box
    crop = crop_at_budget(image, gt, s.max_pixels)
    text, tokens, gen = generate_single(model, processor, crop, turn2_text(item.question, item.options), s)
    return {"output": text, "vision_tokens": tokens, "vision_tokens_turns": [tokens], "generated_tokens": gen,
            "pred_box": list(gt.as_tuple()), "box_area_frac": gt.area / (image.size[0] * image.size[1])}


def _run_coarse_to_fine(item: BenchItem, image: Image.Image, model, processor, s: EvalSettings) -> dict[str, Any]:
    row = {"id": item.id, "image": image, "question": item.question, "options": item.options,
           "answer": item.answer}
    with tool_chat_template(processor):
        res = run_two_turns(model, processor, row, s.max_pixels, max_new_tokens=s.max_new_tokens,
                            generate_kwargs=_generation_kwargs(processor, s))
    zoom = res.zoom
    pred: Box | None = zoom.box if zoom is not None and zoom.ok else None
    gt = item.gt_box
    return {
        "output": res.final_text, "turn1_output": res.turn1_text, "zoom_args": _jsonable(res.zoom_args),
        "zoom_ok": bool(zoom is not None and zoom.ok),
        "zoom_error": "no zoom call in turn 1" if zoom is None else zoom.error,
        "pred_box": list(pred.as_tuple()) if pred else None,
        "iou": (pred.iou(gt) if pred else 0.0) if gt else None,
        "box_area_frac": zoom.area_frac if zoom is not None else None,
        "vision_tokens": sum(res.vision_tokens), "vision_tokens_turns": list(res.vision_tokens),
        "generated_tokens": res.generated_tokens,
    }


RUNNERS: dict[str, Callable[..., dict[str, Any]]] = {
    "direct": _run_direct, "coarse_to_fine": _run_coarse_to_fine, "oracle_crop": _run_oracle,
}


def _jsonable(value: Any) -> Any:
    try:
        json.dumps(value)
        return value
    except (TypeError, ValueError):
        return repr(value)


def evaluate_item(item: BenchItem | BadItem, mode: str, model, processor, settings: EvalSettings,
                  image: Image.Image | Exception | None = None) -> dict[str, Any]:
    """Run ``mode`` on one item; never raises for the item's faults: they become a failed record.

    ``image`` is the decoded image (or the exception decoding raised); None decodes it here.
    """
    if mode not in RUNNERS:
        raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")
    rec = _base_record(item, mode)
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
    start = time.perf_counter()
    try:
        rec.update(RUNNERS[mode](item, image, model, processor, settings))
    except Exception as e:  # noqa: BLE001 - any failure of inference is a WRONG answer, listed with its cause
        rec.update(status="exception", error=f"{type(e).__name__}: {e}")
    rec["wall_s"] = time.perf_counter() - start
    if rec["status"] == "ok":
        rec["pred_letter"], why = parse_choice(rec.get("output") or "", item.options)
        if rec["pred_letter"] is None:
            zoom_note = f" (turn 1: {rec['zoom_error']})" if rec.get("zoom_error") else ""
            rec.update(status="unparseable", error=why + zoom_note)
        rec["correct"] = rec["pred_letter"] == item.answer_letter
    if settings.timeout_s is not None and rec["wall_s"] > settings.timeout_s:
        rec.update(status="timeout", correct=False,
                   error=f"{rec['wall_s']:.1f} s > time limit {settings.timeout_s} s")
    return rec


def decode_item_image(item: BenchItem) -> Image.Image | Exception:
    """The full-resolution image, or the exception that decoding raised (recorded, not raised)."""
    try:
        return item.load_image()
    except Exception as e:  # noqa: BLE001 - an unreadable image is a failed record in every mode
        return e


def evaluate(items: Iterable[BenchItem | BadItem], model, processor, modes: Iterable[str], settings: EvalSettings,
             on_record: Callable[[dict[str, Any]], None] | None = None) -> list[dict[str, Any]]:
    """Every mode on every item (the image is decoded once per item); records in item order."""
    modes = list(modes)
    for m in modes:
        if m not in RUNNERS:
            raise ValueError(f"unknown mode {m!r}; valid: {', '.join(MODES)}")
    records = []
    for item in items:
        image = decode_item_image(item) if isinstance(item, BenchItem) else None
        for mode in modes:
            rec = evaluate_item(item, mode, model, processor, settings, image)
            records.append(rec)
            if on_record is not None:
                on_record(rec)
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
             settings: EvalSettings | None = None, limit: int | None = None, shuffle_seed: int = 0,
             device: str = "auto", dtype: str = "auto", model_and_processor: tuple[Any, Any] | None = None,
             on_record: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Path]:
    """Run ``modes`` of ``model_name`` on ``bench``; write ``results.jsonl`` (streamed) and the report.

    Items are read lazily (HR-Bench images are not all held in memory); input errors (path, header) are
    raised before the model loads. ``on_record(record)`` is called after each record.
    """
    from ergo_train.eval.loaders import BENCHES_WITH_BOXES, load_bench
    from ergo_train.eval.report import write_report

    settings = settings or EvalSettings()
    bad = [m for m in modes if m not in RUNNERS]
    if bad:
        raise ValueError(f"unknown mode(s) {bad}; valid: {', '.join(MODES)}")
    if "oracle_crop" in modes and bench not in BENCHES_WITH_BOXES:
        raise ValueError(f"oracle_crop needs ground-truth boxes and {bench} has none (only "
                         f"{', '.join(BENCHES_WITH_BOXES)})")
    items = iter(load_bench(bench, path, shuffle_seed=shuffle_seed, limit=limit))
    first = next(items, None)  # reads the header / first item now: input errors before the model loads
    items = itertools.chain([first] if first is not None else [], items)
    model, processor = model_and_processor or load_eval_model(model_name, settings.max_pixels, device, dtype)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    started = time.strftime("%Y-%m-%d %H:%M:%S")
    with results.open("w", encoding="utf-8") as f:
        def write(rec: dict[str, Any]) -> None:
            f.write(json.dumps(rec, default=str) + "\n")
            f.flush()
            if on_record is not None:
                on_record(rec)

        records = evaluate(items, model, processor, modes, settings, on_record=write)
    meta = {"bench": bench, "path": str(path), "model": model_name, "modes": ", ".join(modes),
            "items": len(records) // max(len(modes), 1),
            "malformed items": sum(r["status"] == "bad_item" for r in records) // max(len(modes), 1),
            "max_pixels": settings.max_pixels, "max_new_tokens": settings.max_new_tokens,
            "timeout_s": settings.timeout_s, "device": str(getattr(model, "device", "?")),
            "option shuffle seed": shuffle_seed if bench == "vstar" else "n/a (the file fixes the letters)",
            "started": started}
    paths = write_report(records, out, meta)
    return {"results": results, **paths}
