"""Region judges behind one protocol: ``judge(crop_image, question, options, answer) -> Verdict``.

A judge sees ONLY a crop and the question and says whether the crop lets one answer correctly (ERGO's
r_region; the paper uses a frozen Qwen2.5-VL-72B). Three kinds, built by name with ``build_judge``:

- ``vlm``: a transformers VLM (any Qwen-VL checkpoint, ``"tiny"`` in tests), batched; the confidence is
  the probability of the correct option's letter among the option letters (one forward pass, no sampling).
- ``ocr``: reads the crop with the project's OCR engine and matches the text against the options; for
  text questions (signs, logos with words, boards). Reads nothing -> not answerable.
- ``stored``: human ``region_answerable`` labels (the Label Studio pull) looked up by sample id and box.

``judge_regions`` crops the original images (``ergo_data.core.imageio.ImageSource``: region-limited decode, crops
sized as ``crop_at_budget``) and caches verdicts by (judge, image sha256, box, question, options, answer, view) in a
``JudgeCache`` (memory, or SQLite on disk; ``ergo_train.rewards.verdicts``, with ``Verdict``).

>>> judge = build_judge({"type": "stored", "labels": [{"id": "s/1", "region_answerable": True,
...     "x1": 10.0, "y1": 10.0, "x2": 20.0, "y2": 20.0}]})
>>> judge(None, "What?", ["a", "b"], "a", sample_id="s/1", box=Box(0, 0, 50, 50))
Verdict(correct=True, confidence=1.0, detail='covers 100% of the best human-answerable region')
"""

from __future__ import annotations

import functools
import hashlib
import math
import re
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image

from ergo_data.core.boxes import Box
from ergo_data.core.errors import ConfigError, ErgoError
from ergo_data.core.imageio import ImageSource
from ergo_train.rewards.verdicts import JudgeCache, Verdict
from ergo_train.rollout.matching import answer_matches, normalize_answer
from ergo_train.rollout.zoom import DEFAULT_BUDGET_TOKENS, budget_max_pixels, fit_aspect

DEFAULT_MAX_PIXELS = budget_max_pixels(DEFAULT_BUDGET_TOKENS)


class JudgeError(ErgoError, ValueError):
    """A judge that cannot give a verdict for an item; the message names the item and the reason."""


class JudgeConfigError(JudgeError, ConfigError):
    """A judge that cannot be built as configured (unknown name, bad parameter, missing labels file)."""


@dataclass
class JudgeRequest:
    """One item for ``Judge.judge_batch``; ``sample_id`` and ``box`` are context some judges need."""

    crop: Image.Image | None
    question: str
    options: list[str]
    answer: str
    answer_letter: str | None = None
    sample_id: str | None = None
    box: Box | None = None


class Judge:
    """Base class. Subclasses implement ``judge_one`` (or ``judge_batch`` when batching pays)."""

    name = "judge"
    needs_image = True  # False: the judge ignores the crop (stored labels), so no image is decoded
    max_pixels = DEFAULT_MAX_PIXELS  # crops are resized under this budget before the judge sees them

    def __call__(self, crop_image: Image.Image | None, question: str, options: Sequence[str] | None,
                 answer: str, **context: Any) -> Verdict:
        return self.judge_batch([JudgeRequest(crop_image, question, list(options or []), answer, **context)])[0]

    def judge_batch(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        return [self.judge_one(r) for r in requests]

    def judge_one(self, request: JudgeRequest) -> Verdict:  # pragma: no cover - abstract
        raise NotImplementedError

    @property
    def fingerprint(self) -> str:
        """Identity for the cache: verdicts of two judges with different fingerprints never mix."""
        return f"{self.name}:{self.max_pixels}"


# ---- (a) a transformers VLM ----------------------------------------------------------------------
class VLMJudge(Judge):
    """A frozen VLM answers the question from the crop alone (options lettered as in the rollout's turn 2).

    ``model``: ``"tiny"``, a checkpoint directory, a hub name available offline, or a ``(model, processor)``
    pair; ``dtype``, ``device`` or ``device_map="auto"`` place a large judge. Multiple-choice items take one
    batched forward pass: verdict = the most likely option letter is the correct one, confidence = its
    probability renormalized over the option letters. Open questions generate greedily (``max_new_tokens``)
    and compare normalized text (confidence None).
    """

    name = "vlm"

    def __init__(self, model: Any = "tiny", *, max_pixels: int = DEFAULT_MAX_PIXELS, batch_size: int = 8,
                 max_new_tokens: int = 16, dtype: str | None = None, device: str | None = None,
                 device_map: str | None = None, api_base: str | None = None, api_key_env: str = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout_s: float = 120.0, retries: int = 4) -> None:
        from ergo_train.models.loaders import load_model

        self.served = None
        if api_base:  # a served judge (e.g. Qwen2.5-VL-72B on vLLM): ``model`` is its served name
            import os

            from ergo_train.models.served import ServedChat

            self.served = ServedChat(api_base, str(model), api_key=os.environ.get(api_key_env),
                                     max_new_tokens=max_new_tokens, temperature=0.0, timeout_s=timeout_s,
                                     retries=retries, max_concurrency=concurrency)
            self.model_name, self.max_pixels = f"{api_base}#{model}", int(max_pixels)
            self.max_new_tokens, self.batch_size = int(max_new_tokens), max(1, int(batch_size))
            return
        if isinstance(model, (tuple, list)):
            self.model, self.processor = model
            self.model_name = str(getattr(self.model.config, "_name_or_path", "") or f"in-memory-{id(self.model)}")
        else:
            extra = {"device_map": device_map} if device_map else {}
            self.model, self.processor = load_model(str(model), max_pixels=max_pixels, dtype=dtype, **extra)
            self.model_name = str(model)
        if device:
            self.model.to(device)
        self.max_pixels = int(max_pixels)
        self.batch_size = max(1, int(batch_size))
        self.max_new_tokens = int(max_new_tokens)
        self.tokenizer = self.processor.tokenizer
        self._lock = threading.Lock()  # the processor's padding side is flipped per call
        # never generate vision placeholders: Qwen's rope index would look for images that do not exist
        vocab = self.tokenizer.get_vocab()
        self._suppress = [vocab[t] for t in ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>",
                                              "<|video_pad|>") if t in vocab]

    @property
    def fingerprint(self) -> str:
        return f"vlm:{self.model_name}:{self.max_pixels}"

    def _letter_ids(self, n: int) -> list[int] | None:
        ids = [self.tokenizer.encode(chr(65 + i), add_special_tokens=False) for i in range(n)]
        return [i[0] for i in ids] if all(len(i) == 1 for i in ids) else None

    def _inputs(self, requests: Sequence[JudgeRequest]):
        from ergo_train.rollout.env import turn2_text

        texts, images = [], []
        for r in requests:
            if r.crop is None:
                raise JudgeError(f"sample {r.sample_id!r}: the VLM judge needs a crop image")
            messages = [{"role": "user", "content": [{"type": "image", "image": r.crop},
                                                     {"type": "text", "text": turn2_text(r.question, r.options)}]}]
            texts.append(self.processor.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
            images.append(r.crop)
        inputs = self.processor(text=texts, images=images, padding=True, return_tensors="pt")
        return inputs.to(self.model.device)

    def judge_batch(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        if self.served is not None:
            from concurrent.futures import ThreadPoolExecutor

            with ThreadPoolExecutor(self.served.max_concurrency, thread_name_prefix="ergo-judge") as pool:
                return list(pool.map(self._served_verdict, requests))
        out: list[Verdict | None] = [None] * len(requests)
        mc = [i for i, r in enumerate(requests) if r.options and self._letter_ids(len(r.options))]
        mc_set = set(mc)
        open_ = [i for i in range(len(requests)) if i not in mc_set]
        for chunk in _chunks(mc, self.batch_size):
            for i, v in zip(chunk, self._choose([requests[i] for i in chunk])):
                out[i] = v
        for chunk in _chunks(open_, self.batch_size):
            for i, v in zip(chunk, self._generate([requests[i] for i in chunk])):
                out[i] = v
        return out  # type: ignore[return-value]

    def _choose(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        import torch

        with self._lock, _left_padding(self.tokenizer), torch.no_grad():
            inputs = self._inputs(requests)
            logits = self.model(**inputs).logits[:, -1, :].float()
        verdicts = []
        for row, r in zip(logits, requests):
            ids = self._letter_ids(len(r.options))
            probs = torch.softmax(row[ids], dim=-1)
            want = ord(r.answer_letter or _letter_for(r)) - 65
            picked = int(torch.argmax(probs))
            verdicts.append(Verdict(picked == want, float(probs[want]), f"picked {chr(65 + picked)}"))
        return verdicts

    def _generate(self, requests: Sequence[JudgeRequest]) -> list[Verdict]:
        import torch

        with self._lock, _left_padding(self.tokenizer), torch.no_grad():
            inputs = self._inputs(requests)
            out = self.model.generate(**inputs, max_new_tokens=self.max_new_tokens, do_sample=False,
                                      suppress_tokens=self._suppress or None)
        texts = self.tokenizer.batch_decode(out[:, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
        return [Verdict(answer_matches(t.strip(), r.options, r.answer, r.answer_letter), None, f"said {t.strip()!r}")
                for t, r in zip(texts, requests)]


    def _served_verdict(self, r: JudgeRequest) -> Verdict:
        """The served judge: the same prompt; the option letter from the first token's logprobs (multiple choice)
        or the greedy reply (open questions). A request that fails for good is a failed verdict with its reason."""
        from ergo_train.models.served import ServedError
        from ergo_train.rollout.env import turn2_text

        if r.crop is None:
            raise JudgeError(f"sample {r.sample_id!r}: the VLM judge needs a crop image")
        messages = [{"role": "user", "content": [{"type": "image", "image": r.crop},
                                                 {"type": "text", "text": turn2_text(r.question, r.options)}]}]
        try:
            if not r.options:
                said = self.served.complete(messages).text.strip()
                return Verdict(answer_matches(said, r.options, r.answer, r.answer_letter), None, f"said {said!r}")
            top = self.served.next_token_logprobs(messages)
        except ServedError as e:
            return Verdict(False, None, f"served judge failed: {e}", failed=True)
        letters = [chr(65 + i) for i in range(len(r.options))]
        logps = [top.get(letter) for letter in letters]
        if all(lp is None for lp in logps):
            return Verdict(False, 0.0, f"no option letter among the top {len(top)} first tokens")
        probs = [math.exp(lp) if lp is not None else 0.0 for lp in logps]
        total = sum(probs)
        want = ord(r.answer_letter or _letter_for(r)) - 65
        picked = max(range(len(probs)), key=probs.__getitem__)
        absent = [letter for letter, lp in zip(letters, logps) if lp is None]
        note = f"; {', '.join(absent)} not among the top {len(top)} first tokens" if absent else ""
        return Verdict(picked == want, probs[want] / total, f"picked {letters[picked]}{note}")


class _left_padding:
    """Left padding while batching (the last position is then every row's next token)."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer

    def __enter__(self):
        self.saved = self.tokenizer.padding_side
        self.tokenizer.padding_side = "left"

    def __exit__(self, *exc):
        self.tokenizer.padding_side = self.saved


def _letter_for(r: JudgeRequest) -> str:
    want = normalize_answer(r.answer)
    for i, o in enumerate(r.options):
        if normalize_answer(o) == want:
            return chr(65 + i)
    raise JudgeError(f"sample {r.sample_id!r}: answer {r.answer!r} is not one of the options {r.options}")


def _chunks(items: list[int], n: int) -> Iterable[list[int]]:
    for i in range(0, len(items), n):
        yield items[i:i + n]


# ---- (b) OCR + rules, for text questions -----------------------------------------------------------
_STOPWORDS = frozenset(["a", "an", "the", "is", "are", "of", "on", "in", "to", "for", "and", "or", "at", "by", "it", "its", "this", "that", "with", "from"])
_TOKEN = re.compile(r"[0-9a-z]+")


def _tokens(text: str) -> list[str]:
    return _TOKEN.findall(normalize_answer(text))


class OCRJudge(Judge):
    """Reads the crop with ``ergo_data.qa.ocr`` and asks whether the text names the answer, and no other option.

    Each option is reduced to its distinctive words (not shared with another option, not stopwords); a word
    is found when it appears in the read text (numbers: as a whole token; words of 3+ letters: as a substring
    or a close match, ``difflib`` ratio >= ``fuzzy``). An option scores the best match of its words (0..1).
    Verdict: the correct option scores >= ``threshold`` and strictly above every other option. Open questions:
    the answer's best fuzzy match in the text. Confidence = (correct score - best other score + 1) / 2.
    """

    name = "ocr"

    def __init__(self, *, min_score: float = 0.5, threshold: float = 0.8, fuzzy: float = 0.8,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        from ergo_data.qa.ocr import shared_engine

        self.engine = shared_engine(min_score=min_score)
        self.threshold, self.fuzzy, self.max_pixels = float(threshold), float(fuzzy), int(max_pixels)

    @property
    def fingerprint(self) -> str:
        return f"ocr:{self.engine.min_score}:{self.threshold}:{self.fuzzy}:{self.max_pixels}"

    def judge_one(self, request: JudgeRequest) -> Verdict:
        if request.crop is None:
            raise JudgeError(f"sample {request.sample_id!r}: the OCR judge needs a crop image")
        lines = self.engine.read(request.crop)
        read = " | ".join(line.text for line in lines)
        if not lines:
            return Verdict(False, 0.0, "no text read")
        words = _tokens(read)
        squashed = "".join(words)
        if not request.options:
            score = self._phrase_score(request.answer, words, squashed)
            return Verdict(score >= self.threshold, score, f"read {read!r}")
        scores = [self._option_score(o, request.options, words, squashed) for o in request.options]
        want = ord(request.answer_letter or _letter_for(request)) - 65
        best_other = max((s for i, s in enumerate(scores) if i != want), default=0.0)
        ok = scores[want] >= self.threshold and scores[want] > best_other
        return Verdict(ok, (scores[want] - best_other + 1.0) / 2.0, f"read {read!r}; scores {scores}")

    def _found(self, word: str, words: list[str], squashed: str) -> float:
        if word.isdigit() or len(word) < 3:
            return 1.0 if word in words else 0.0
        if word in squashed:
            return 1.0
        from difflib import SequenceMatcher

        best = max((SequenceMatcher(None, word, w).ratio() for w in words), default=0.0)
        return best if best >= self.fuzzy else 0.0

    def _option_score(self, option: str, options: Sequence[str], words: list[str], squashed: str) -> float:
        mine = [t for t in _tokens(option) if t not in _STOPWORDS]
        others = {t for o in options if o != option for t in _tokens(o)}
        distinctive = [t for t in mine if t not in others] or mine
        return max((self._found(t, words, squashed) for t in distinctive), default=0.0)

    def _phrase_score(self, answer: str, words: list[str], squashed: str) -> float:
        want = "".join(_tokens(answer))
        if not want:
            return 0.0
        if want in squashed:
            return 1.0
        from difflib import SequenceMatcher

        return SequenceMatcher(None, want, squashed).find_longest_match().size / len(want)


# ---- (c) stored human labels ------------------------------------------------------------------------
class StoredLabelJudge(Judge):
    """Human ``region_answerable`` labels (``LABELS_SCHEMA`` rows), looked up by sample id and zoom box.

    A region a human found answerable stays answerable inside any larger crop, so: the verdict is True when the
    zoom box covers at least ``min_cover`` of a human box whose labels say answerable (several annotators on
    the same region, IoU >= 0.9, vote by majority). Confidence = the best ``yes-fraction x coverage`` over the
    labelled boxes (a box covering 35% of the answerable region scores 0.35). A sample without labels is an
    error naming it.
    """

    name = "stored"
    needs_image = False

    def __init__(self, labels: Any, *, min_cover: float = 0.9) -> None:
        rows = _label_rows(labels)
        self.source = str(labels) if isinstance(labels, (str, Path)) else f"{len(rows)} rows"
        self.min_cover = float(min_cover)
        raw: dict[str, list[tuple[Box, bool]]] = {}
        for r in rows:
            if r.get("region_answerable") is None:
                continue
            coords = [r.get(k) for k in ("x1", "y1", "x2", "y2")]
            if any(c is None or not math.isfinite(c) for c in coords):
                continue  # a label without a human box cannot be matched to a zoom
            try:
                box = Box(*coords)
            except ValueError as e:
                raise JudgeError(f"sample {r.get('id')!r}: bad human box in {self.source}: {e}") from None
            raw.setdefault(str(r["id"]), []).append((box, bool(r["region_answerable"])))
        # per sample: (box, fraction of the labels on that region saying answerable)
        self.by_id: dict[str, list[tuple[Box, float]]] = {
            sid: [(b, sum(ok for b2, ok in labs if b.iou(b2) >= 0.9) / sum(1 for b2, _ in labs if b.iou(b2) >= 0.9))
                  for b, _ in labs]
            for sid, labs in raw.items()
        }

    @property
    def fingerprint(self) -> str:
        return f"stored:{self.source}:{self.min_cover}"

    def judge_one(self, request: JudgeRequest) -> Verdict:
        labels = self.by_id.get(str(request.sample_id))
        if not labels:
            raise JudgeError(f"sample {request.sample_id!r} has no human region label (with a box) in {self.source}")
        if request.box is None:
            raise JudgeError(f"sample {request.sample_id!r}: the stored-label judge needs the zoom box")
        best_cover, best_score = 0.0, 0.0
        for box, yes in labels:
            cover = request.box.intersection_area(box) / box.area
            best_score = max(best_score, yes * cover)
            if yes > 0.5:
                best_cover = max(best_cover, cover)
        ok = best_cover >= self.min_cover
        return Verdict(ok, best_score, f"covers {best_cover:.0%} of the best human-answerable region")


def labels_from_boxes(rows: Iterable[Mapping[str, Any]], annotator: str = "annotation") -> list[dict[str, Any]]:
    """``region_answerable`` labels on each sample's own region (the union of its boxes): with them the
    ``stored`` judge answers "does the crop hold the labelled region", a perfect judge where the boxes are exact
    (pasted targets, hand-checked boxes). For CPU experiments and GPU checks without a judge model.

    >>> labels_from_boxes([{"id": "s/1", "boxes": [{"x1": 0, "y1": 0, "x2": 5, "y2": 5}]}])[0]["x2"]
    5.0
    """
    from ergo_train.rollout.zoom import region_of

    out = []
    for r in rows:
        b = region_of(r)
        out.append({"id": r["id"], "annotator": annotator, "region_answerable": True, "answer_correct": True,
                    "x1": b.x1, "y1": b.y1, "x2": b.x2, "y2": b.y2, "lead_time_s": None, "created_at": None,
                    "comment": None})
    return out


def _label_rows(labels: Any) -> list[Mapping[str, Any]]:
    if isinstance(labels, (str, Path)):
        import pyarrow.parquet as pq

        path = Path(labels)
        if not path.exists():
            raise JudgeConfigError(f"labels file {path} does not exist")
        return labels_from_boxes(pq.read_table(path / "data").to_pylist(), "curated-box") if path.is_dir() \
            else pq.read_table(path).to_pylist()  # a curated set's folder: its own boxes are the labels
    if hasattr(labels, "to_pylist"):
        return labels.to_pylist()
    return list(labels)


JUDGES: dict[str, type[Judge]] = {"vlm": VLMJudge, "ocr": OCRJudge, "stored": StoredLabelJudge}


def build_judge(spec: Judge | str | Mapping[str, Any], **params: Any) -> Judge:
    """A judge from a name (``"ocr"``), a spec (``{"type": "vlm", "model": "tiny"}``) or a judge (returned as is)."""
    if isinstance(spec, Judge):
        return spec
    if isinstance(spec, Mapping):
        params = {**{k: v for k, v in spec.items() if k != "type"}, **params}
        spec = spec.get("type", "")
    if spec not in JUDGES:
        raise JudgeConfigError(f"unknown judge {spec!r}; valid judges: {', '.join(sorted(JUDGES))}")
    try:
        return JUDGES[spec](**params)
    except TypeError as e:
        raise JudgeConfigError(f"judge {spec!r}: {e}") from None


# ---- judging regions of original images (cropping + cache) -------------------------------------------
@dataclass
class RegionQuery:
    """A region of a sample's original image to judge. ``image``: PIL, ``{bytes, path}``, path or bytes."""

    image: Any
    box: Box
    question: str
    options: list[str]
    answer: str
    answer_letter: str | None = None
    sample_id: str | None = None
    image_sha256: str | None = None
    view: str = "crop"  # "crop" = the box at full resolution; other views supply ``crop`` themselves
    crop: Image.Image | None = field(default=None, repr=False)  # a ready view (skips decoding + cropping)


def image_sha256(value: Any) -> str:
    """sha256 of a row image's file bytes (PIL images: of their pixels); files are hashed once per process."""
    if isinstance(value, Image.Image):
        return hashlib.sha256(value.tobytes()).hexdigest()
    if isinstance(value, Mapping):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray)):
        return hashlib.sha256(bytes(value)).hexdigest()
    if value is None:
        raise JudgeError("the row image has neither bytes nor path")
    return _file_sha256(str(value))


@functools.lru_cache(maxsize=4096)
def _file_sha256(path: str) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def _cache_identity(q: RegionQuery) -> str:
    """The image part of a cache key: its sha256, else (no image to hash) the sample id."""
    if q.image_sha256:
        return q.image_sha256
    try:
        return image_sha256(q.image)
    except (JudgeError, OSError):
        if q.sample_id is None:
            raise JudgeError("cannot cache a verdict: the query has no image sha256, no readable image and no id")
        return f"id:{q.sample_id}"


def judge_regions(judge: Judge, queries: Sequence[RegionQuery], cache: JudgeCache | None = None) -> list[Verdict]:
    """Verdicts for ``queries``: cached ones first; the rest cropped (``ImageSource``: region-limited, each
    image decoded at most once) and batched."""
    verdicts: list[Verdict | None] = [None] * len(queries)
    keys: list[str | None] = [None] * len(queries)
    todo: list[int] = []
    first_of: dict[str, int] = {}  # a key seen earlier in this call: judged once, shared
    duplicates: list[tuple[int, int]] = []
    identities: dict[int, str] = {}  # id(row image) -> sha256: a GRPO group shares one image object
    for i, q in enumerate(queries):
        if cache is not None:
            if id(q.image) not in identities:
                identities[id(q.image)] = _cache_identity(q)
            keys[i] = key = JudgeCache.key(judge.fingerprint, identities[id(q.image)], q.box, q.question, q.options,
                                           q.answer, q.view)
            if key in first_of:
                duplicates.append((i, first_of[key]))
                cache.hits += 1
                continue
            first_of[key] = i
            verdicts[i] = cache.get(key)
        if verdicts[i] is None:
            todo.append(i)
    sources: dict[Any, ImageSource] = {}  # one per image: the first crop decodes no row below its box,
    requests = []  # a second decodes the image once and every further crop is a cut
    for i in todo:
        q = queries[i]
        crop = q.crop
        if crop is None and judge.needs_image:
            key = q.image_sha256 or (q.image.get("path") if isinstance(q.image, Mapping) else None) or id(q.image)
            if key not in sources:
                sources[key] = ImageSource.open(q.image)
            src = sources[key]
            crop = src.crop(fit_aspect(q.box, src.size), judge.max_pixels)
        requests.append(JudgeRequest(crop, q.question, list(q.options), q.answer, q.answer_letter, q.sample_id, q.box))
    for i, v in zip(todo, judge.judge_batch(requests) if requests else []):
        verdicts[i] = v
        if cache is not None and keys[i] is not None and not v.failed:
            cache.put(keys[i], v)
    for i, j in duplicates:
        verdicts[i] = verdicts[j]
    if any(v is None for v in verdicts):
        raise JudgeError(f"judge {judge.name!r} returned fewer verdicts than items")
    return verdicts  # type: ignore[return-value]
