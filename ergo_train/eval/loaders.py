"""Benchmark loaders for evaluation: V*, HR-Bench and MME-RealWorld, each item valid or listed as bad.

Every loader yields, in file order, a ``BenchItem`` (ready to evaluate) or a ``BadItem`` (malformed
input, with a short ``reason`` and a ``detail`` naming the item): bad items are never skipped, the
evaluator counts them as WRONG in every mode.

- ``vstar``: ``<stem>.json`` beside its image (or naming it: ``"image": "file.jpg"``), in one folder or in
  category subfolders; read by the pipeline's own reader (``ergo_data.sources.vstar``). The json puts the
  correct option first, so the options are shuffled with a seed and the order and correct letter are stored.
- VLMEvalKit TSVs, by VLMEvalKit's dataset names ``VStarBench``, ``HRBench4K``, ``HRBench8K``, ``MME-RealWorld``
  (``hrbench`` = ``HRBench4K``, ``tsv`` = any such TSV): ``index, question, answer (letter), category,
  A, B, C, D[, E], image`` (base64; a short number instead refers to the image of that ``index``), optional
  ``cycle_category`` / ``l2-category``. The file fixes the letters (only ``VStarBench`` is shuffled by default).
- ``curated``: a curated set of this project (an ``ergo run`` output folder, or a folder / glob of its Parquet
  shards), optionally one ``split``: its multiple-choice rows with their boxes, letters as stored (no shuffle).
- ``mme``: MME-RealWorld's json list (``Question_id, Image, Text, Answer choices ["(A) ...", ...],
  Ground truth, Task, Subtask, Category``) with ``Image`` relative to the json's folder.

>>> items = list(load_bench("vstar", "examples/vstar"))
>>> len(items), items[1].id, items[1].options, items[1].answer_letter
(8, 'vstar/blackmug', ['NeurIPS', 'CVPR', 'SIGGRAPH', 'ICCV'], 'C')
>>> items[1].answer, items[1].gt_box
('SIGGRAPH', Box(x1=2050.0, y1=1365.0, x2=2310.0, y2=1600.0))
"""

from __future__ import annotations

import base64
import binascii
import csv
import re
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ergo_data.core.boxes import Box
from ergo_data.core.errors import ConfigError, ItemError
from ergo_data.core.files import load_json_file
from ergo_data.core.imageio import DecodeError, open_rgb, read_info
from ergo_data.sources.vstar import VstarItemError, find_vstar_items, missing_image_detail, read_vstar_item

# bench name -> (reader, VLMEvalKit dataset name, how VLMEvalKit scores it, shuffle options by default)
BENCH_PROFILES: dict[str, tuple[str, str | None, str, bool]] = {
    "vstar": ("vstar", "VStarBench", "plain", True),
    "hrbench": ("tsv", "HRBench4K", "cycle", False),
    "mme": ("mme", "MME-RealWorld", "mme", False),
    "VStarBench": ("tsv", "VStarBench", "plain", True),
    "HRBench4K": ("tsv", "HRBench4K", "cycle", False),
    "HRBench8K": ("tsv", "HRBench8K", "cycle", False),
    "MME-RealWorld": ("tsv", "MME-RealWorld", "mme", False),
    "MME-RealWorld-Lite": ("tsv", "MME-RealWorld-Lite", "mme", False),
    "tsv": ("tsv", None, "plain", False),
    "curated": ("curated", None, "plain", False),
}
BENCHES = tuple(BENCH_PROFILES)
BENCHES_WITH_BOXES = ("vstar", "curated")  # ground-truth boxes: IoU, region hits and oracle_crop
LETTERS = "ABCDEFGHIJ"
TSV_REQUIRED = ("index", "question", "answer", "image", "A", "B")
MME_REQUIRED = ("Question_id", "Image", "Text", "Answer choices", "Ground truth")
_MME_CHOICE = re.compile(r"^\s*\(([A-Z])\)\s*(.*?)\s*$", re.DOTALL)


class BenchFormatError(ConfigError, ValueError):
    """The benchmark input as a whole cannot be read (wrong path, missing columns, not a list...)."""


@dataclass
class BenchItem:
    """One multiple-choice question on one image; ``boxes`` are canonical (may be empty)."""

    id: str
    bench: str
    question: str  # without options
    options: list[str]  # option texts in the order shown to the model (letters A, B, ...)
    answer_letter: str
    category: str | None
    boxes: list[Box] = field(default_factory=list)
    image_path: str | None = None
    image_bytes: bytes | None = field(default=None, repr=False)
    provenance: dict[str, Any] = field(default_factory=dict)
    index: str | None = None  # the VLMEvalKit ``index`` (TSV benches), written back into its result layout
    cycle_category: str | None = None  # HR-Bench: the option rotation group VLMEvalKit averages over
    option_order: list[int] | None = None  # shown option i is the file's option option_order[i]
    shuffle_seed: int | None = None  # the seed of that order (None: the file's order)
    columns: dict[str, str] = field(default_factory=dict, repr=False)  # the TSV row as read, image left out

    @property
    def answer(self) -> str:
        """Text of the correct option."""
        return self.options[LETTERS.index(self.answer_letter)]

    @property
    def gt_box(self) -> Box | None:
        """The union of the ground-truth boxes (the one region ERGO would zoom on), None without boxes."""
        return Box.union(self.boxes) if self.boxes else None

    def read_bytes(self) -> bytes:
        if self.image_bytes is not None:
            return self.image_bytes
        if self.image_path is None:
            raise DecodeError("image_missing", f"{self.id}: no image")
        return Path(self.image_path).read_bytes()

    def load_image(self) -> Image.Image:
        """Full-resolution RGB image as displayed (EXIF-transposed); raises DecodeError if unusable."""
        return open_rgb(self.read_bytes())


@dataclass
class BadItem:
    """A malformed benchmark item: counted WRONG in every mode, listed with its reason."""

    id: str
    bench: str
    reason: str
    detail: str
    category: str | None = None


def load_bench(bench: str, path: str | Path, *, shuffle_seed: int | None = 0, shuffle: bool | None = None,
               limit: int | None = None, split: str | None = None) -> Iterator[BenchItem | BadItem]:
    """Yield the items of ``bench`` (one of ``BENCHES``) under ``path``; ``limit`` keeps the first N.

    ``shuffle`` (None: the bench's default, on for V* only) reorders each item's options with ``shuffle_seed``
    (per item, ``ergo_data.qa.choices.shuffled_options``) and records the order in ``option_order``.
    ``split`` keeps one split of a ``curated`` set. Raises BenchFormatError when the input as a whole is unusable
    (path missing, header wrong...).
    """
    root = Path(path).expanduser()
    if bench not in BENCH_PROFILES:
        raise BenchFormatError(f"unknown bench {bench!r}; valid: {', '.join(BENCHES)}")
    if not root.exists():
        raise BenchFormatError(f"{bench}: path {str(root)!r} does not exist")
    reader, _, _, default_shuffle = BENCH_PROFILES[bench]
    seed = shuffle_seed if (default_shuffle if shuffle is None else shuffle) else None
    prefix = bench.lower()
    if split is not None and reader != "curated":
        raise BenchFormatError(f"{bench}: --split applies to a curated set only")
    readers = {"vstar": lambda: load_vstar(root, seed), "tsv": lambda: load_tsv(root, prefix, bench),
               "mme": lambda: load_mme(root), "curated": lambda: load_curated_items(root, split)}
    for n, item in enumerate(readers[reader]()):
        if limit is not None and n >= limit:
            return
        if reader != "vstar" and seed is not None and isinstance(item, BenchItem):
            shuffle_item(item, seed)
        yield item


def shuffle_item(item: BenchItem, seed: int) -> BenchItem:
    """Reorder ``item``'s options with ``seed`` (per item id) in place; the correct letter follows its option.

    >>> it = BenchItem("t/2", "t", "Q?", ["a", "b", "c", "d"], "B", None)
    >>> shuffle_item(it, 0).options, it.answer_letter, it.option_order
    (['b', 'c', 'd', 'a'], 'A', [1, 2, 3, 0])
    """
    from ergo_data.qa.choices import shuffled_options

    original = list(item.options)
    answer = LETTERS.index(item.answer_letter)
    order = list(range(len(original)))
    shuffled, _ = shuffled_options(order, answer, item.id, seed)
    item.options = [original[i] for i in shuffled]
    item.answer_letter = LETTERS[shuffled.index(answer)]
    item.option_order, item.shuffle_seed = shuffled, seed
    return item


# ---- V* ------------------------------------------------------------------------------------------
def load_vstar(root: Path, shuffle_seed: int | None = 0) -> Iterator[BenchItem | BadItem]:
    """V*-layout folder, read with the pipeline's ``find_vstar_items`` / ``read_vstar_item``."""
    if not root.is_dir():
        raise BenchFormatError(f"vstar: {str(root)!r} is not a folder of <stem>.json + image pairs")
    found = False
    for key, js, image, category in find_vstar_items(root.resolve()):
        found = True
        item_id = f"vstar/{key}"
        if image is None:
            yield BadItem(item_id, "vstar", "image_missing", missing_image_detail(js), category)
            continue
        try:
            rec = read_vstar_item(js, image, shuffle_seed, item_id, category)
        except VstarItemError as e:
            yield BadItem(item_id, "vstar", e.reason, str(e), category)
            continue
        yield BenchItem(
            id=item_id, bench="vstar", question=rec["question"], options=rec["options"],
            answer_letter=rec["answer_letter"], category=rec["category"],
            boxes=[Box.from_record(b) for b in rec["boxes"]], image_path=rec["image_path"],
            provenance={"file": str(js.relative_to(root.resolve())), "shuffle_seed": shuffle_seed},
            option_order=rec["option_order"] if shuffle_seed is not None else None, shuffle_seed=shuffle_seed,
        )
    if not found:
        raise BenchFormatError(f"vstar: no *.json items under {str(root)!r}")


# ---- a curated set of this project ---------------------------------------------------------------
def load_curated_items(root: Path, split: str | None = None) -> Iterator[BenchItem | BadItem]:
    """The multiple-choice rows of a curated set (``DIR/data/*.parquet``, ``DIR/*.parquet`` or one file), in file
    order; ``split`` keeps one split. A row without options, a valid letter or an image is a BadItem."""
    import pyarrow.parquet as pq

    files = [root] if root.is_file() else sorted(root.glob("data/*.parquet")) or sorted(root.glob("*.parquet"))
    if not files:
        raise BenchFormatError(f"curated: no Parquet shards under {str(root)!r} (an `ergo run` output folder?)")
    found = 0
    for f in files:
        for row in pq.read_table(f).to_pylist():
            if split is not None and row.get("split") != split:
                continue
            found += 1
            item_id, category = str(row.get("id")), row.get("category")
            options, letter = list(row.get("options") or []), row.get("answer_letter")
            image = row.get("image") or {}
            if not options or not letter or letter not in LETTERS[: len(options)]:
                yield BadItem(item_id, "curated", "bad_options", f"{f.name}: options {options}, letter {letter!r}",
                              category)
                continue
            if not image.get("bytes") and not image.get("path"):
                yield BadItem(item_id, "curated", "image_missing", f"{f.name}: the row has no image", category)
                continue
            yield BenchItem(id=item_id, bench="curated", question=row["question"], options=options,
                            answer_letter=letter, category=category,
                            boxes=[Box.from_record(b) for b in row.get("boxes") or []],
                            image_path=image.get("path"), image_bytes=image.get("bytes"),
                            provenance={"file": f.name, "split": row.get("split")})
    if not found:
        raise BenchFormatError(f"curated: no rows{f' with split {split!r}' if split else ''} under {str(root)!r}")


# ---- VLMEvalKit TSVs (HR-Bench, VStarBench, MME-RealWorld) ------------------------------------------------------------------------------
def _tsv_files(root: Path) -> list[Path]:
    files = [root] if root.is_file() else sorted(root.glob("*.tsv"))
    if not files:
        raise BenchFormatError(f"no .tsv file at {str(root)!r}")
    return files


def _tsv_rows(tsv: Path) -> Iterator[tuple[int, dict[str, str | None] | None, str]]:
    """``(line_no, row or None, problem)`` for each data row; the header is checked first."""
    old = csv.field_size_limit()
    csv.field_size_limit(sys.maxsize)  # base64 images are far above csv's 128 KiB default
    try:
        with tsv.open("r", encoding="utf-8", newline="") as f:
            reader = csv.reader(f, delimiter="\t")
            header = next(reader, None)
            missing = [c for c in TSV_REQUIRED if header is None or c not in header]
            if missing:
                raise BenchFormatError(f"{tsv.name}: missing column(s) {missing}; header is {header}")
            for fields in reader:
                line = reader.line_num
                if len(fields) != len(header):
                    yield line, None, f"{len(fields)} fields, header has {len(header)}"
                else:
                    yield line, dict(zip(header, fields)), ""
    except UnicodeDecodeError as e:
        raise BenchFormatError(f"{tsv.name}: not UTF-8 ({e.reason})") from None
    finally:
        csv.field_size_limit(old)


def _referenced_images(tsv: Path) -> set[str]:
    """Indices whose image other rows point to (a short number in ``image``), so only those are kept."""
    refs = set()
    for _, row, _ in _tsv_rows(tsv):
        img = (row or {}).get("image") or ""
        if 0 < len(img) <= 64 and img.strip().isdigit():
            refs.add(img.strip())
    return refs


def load_tsv(root: Path, id_prefix: str = "hrbench", bench: str = "hrbench") -> Iterator[BenchItem | BadItem]:
    """VLMEvalKit TSV file(s) (``VStarBench``, ``HRBench4K/8K``, ``MME-RealWorld``...): a .tsv path, or a folder whose
    *.tsv files are read in name order. Ids are ``<prefix>/<index>`` (``<prefix>/<file stem>/<index>`` for a folder)."""
    files = _tsv_files(root)
    for tsv in files:
        prefix = id_prefix if len(files) == 1 else f"{id_prefix}/{tsv.stem}"
        refs = _referenced_images(tsv)
        images: dict[str, bytes] = {}
        seen: set[str] = set()
        for line, row, problem in _tsv_rows(tsv):
            if row is None:
                yield BadItem(f"{prefix}/line{line}", bench, "malformed_row", f"{tsv.name} line {line}: {problem}")
                continue
            index = (row.get("index") or "").strip()
            item_id = f"{prefix}/{index or f'line{line}'}"
            category = (row.get("category") or "").strip() or None
            try:
                if not index:
                    raise ItemError("missing_index", "empty 'index'")
                if index in seen:
                    raise ItemError("duplicate_index", f"index {index!r} appears twice")
                seen.add(index)
                item = _tsv_item(row, item_id, category, images, bench)
                if index in refs:
                    images[index] = item.image_bytes
            except ItemError as e:  # DecodeError is one too
                yield BadItem(item_id, bench, e.reason, f"{tsv.name} line {line}: {e}", category)
                continue
            item.provenance = {"file": tsv.name, "line": line,
                               **{k: row[k] for k in ("cycle_category", "l2-category") if row.get(k)}}
            item.index, item.cycle_category = index, (row.get("cycle_category") or "").strip() or None
            item.columns = {k: v for k, v in row.items() if k not in ("image", "image_path") and v is not None}
            yield item


def _tsv_item(row: dict[str, Any], item_id: str, category: str | None, images: dict[str, bytes],
              bench: str) -> BenchItem:
    question = (row.get("question") or "").strip()
    if not question:
        raise ItemError("missing_question", "empty 'question'")
    options: list[str] = []
    for letter in LETTERS:
        text = (row.get(letter) or "").strip()
        if not text:
            break
        options.append(text)
    if len(options) < 2:
        raise ItemError("bad_options", f"needs at least options A and B, got {options}")
    if any((row.get(c) or "").strip() for c in LETTERS[len(options):]):
        raise ItemError("bad_options", f"a gap in the option columns after {LETTERS[len(options) - 1]}")
    answer = (row.get("answer") or "").strip().upper()
    if answer not in LETTERS[: len(options)]:
        raise ItemError("bad_answer", f"answer {row.get('answer')!r} is not one of {list(LETTERS[:len(options)])}")
    data = _tsv_image(row["image"].strip(), images)
    read_info(data)  # header check: unreadable images are listed now, not at inference
    return BenchItem(id=item_id, bench=bench, question=question, options=options, answer_letter=answer,
                     category=category, image_bytes=data)


def _tsv_image(field_text: str, images: dict[str, bytes]) -> bytes:
    if not field_text:
        raise DecodeError("image_missing", "empty 'image'")
    if len(field_text) <= 64 and field_text.isdigit():
        if field_text not in images:
            raise DecodeError("image_missing", f"'image' refers to index {field_text}, which has no earlier image")
        return images[field_text]
    try:
        return base64.b64decode(field_text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DecodeError("bad_base64", f"'image' is not valid base64 ({e})") from None


# ---- MME-RealWorld ---------------------------------------------------------------------------------
def _mme_json(root: Path) -> Path:
    if root.is_file():
        return root
    files = sorted(root.glob("*.json"))
    if len(files) != 1:
        raise BenchFormatError(f"mme: expected one .json in {str(root)!r}, found {[f.name for f in files]}; "
                               "pass the json file itself")
    return files[0]


def load_mme(root: Path) -> Iterator[BenchItem | BadItem]:
    """MME-RealWorld json (a list of questions); images resolve relative to the json's folder."""
    js = _mme_json(root)
    try:
        entries = load_json_file(js)
    except ValueError as e:
        raise BenchFormatError(f"mme: {e}") from None
    if not isinstance(entries, list):
        raise BenchFormatError(f"mme: {js.name}: top level must be a list of questions")
    base = js.parent.resolve()
    seen: set[str] = set()
    for n, entry in enumerate(entries):
        qid = entry.get("Question_id") if isinstance(entry, dict) else None
        item_id = f"mme/{qid}" if isinstance(qid, str) and qid.strip() else f"mme/entry{n}"
        category = _mme_category(entry) if isinstance(entry, dict) else None
        try:
            if item_id in seen:
                raise ItemError("duplicate_id", f"Question_id {qid!r} appears twice")
            seen.add(item_id)
            item = _mme_item(entry, item_id, category, base)
        except ItemError as e:  # DecodeError is one too
            yield BadItem(item_id, "mme", e.reason, f"{js.name} entry {n}: {e}", category)
            continue
        item.provenance = {"file": js.name, "entry": n,
                           **{k: entry[k] for k in ("Category", "Dataset") if isinstance(entry.get(k), str)}}
        yield item


def _mme_category(entry: dict[str, Any]) -> str | None:
    parts = [entry.get(k) for k in ("Task", "Subtask")]
    parts = [p.strip() for p in parts if isinstance(p, str) and p.strip()]
    return "/".join(parts) or (entry.get("Category") if isinstance(entry.get("Category"), str) else None)


def _mme_item(entry: Any, item_id: str, category: str | None, base: Path) -> BenchItem:
    if not isinstance(entry, dict):
        raise ItemError("malformed_entry", f"entry is a {type(entry).__name__}, not an object")
    missing = [k for k in MME_REQUIRED if k not in entry]
    if missing:
        raise ItemError("missing_field", f"missing {missing}")
    question = entry["Text"]
    if not isinstance(question, str) or not question.strip():
        raise ItemError("missing_question", "empty 'Text'")
    choices = entry["Answer choices"]
    if not isinstance(choices, list) or len(choices) < 2 or not all(isinstance(c, str) for c in choices):
        raise ItemError("bad_options", "'Answer choices' must be a list of at least 2 strings")
    options = []
    for i, choice in enumerate(choices):
        m = _MME_CHOICE.match(choice)
        if not m or m.group(1) != LETTERS[i] or not m.group(2):
            raise ItemError("bad_options", f"choice {i} {choice!r} is not '({LETTERS[i]}) text'")
        options.append(m.group(2))
    answer = entry["Ground truth"]
    if not isinstance(answer, str) or answer.strip().upper() not in LETTERS[: len(options)]:
        raise ItemError("bad_answer", f"'Ground truth' {answer!r} is not one of {list(LETTERS[:len(options)])}")
    image_rel = entry["Image"]
    if not isinstance(image_rel, str) or not image_rel.strip():
        raise DecodeError("image_missing", "empty 'Image'")
    image = (base / image_rel).resolve()
    if not image.is_relative_to(base):
        raise DecodeError("image_outside_root", f"'Image' {image_rel!r} leaves the benchmark folder")
    if not image.is_file():
        raise DecodeError("image_missing", f"image {image_rel!r} not found under {str(base)!r}")
    return BenchItem(id=item_id, bench="mme", question=question.strip(), options=options,
                     answer_letter=answer.strip().upper(), category=category, image_path=str(image))
