"""The trainer's host path at its floor: each image processed once per generation, crops made in parallel, the
next generation's coarse views made while the optimizer steps run (issue 27; ``benchmarks/host_path.py``
measures it).

What TRL 1.16 does per generation that this removes (``ErgoGRPOTrainer`` calls in here):

- the image processor runs on each rollout's images about three times: ``apply_chat_template`` per rollout in
  ``_tokenize_prompts``, again over every image in ``_tool_call_loop``, again when scoring; and the eight rollouts
  of a group render the same prompt eight times. ``generation_scope`` memoizes, for one generation, the image
  processor per image object (``MemoImageProcessor``) and ``apply_chat_template`` per conversation (the images by
  identity: rollouts of a group share one coarse view, ``ergo_train.rollout.views``); both are removed after it;
- the zoom tool runs rollout by rollout; ``prepare_zooms`` makes every rollout's crop first, in parallel
  (libjpeg-turbo and libvips release the GIL), and encodes the served judge's payload in the background;
- ``prefetching_sampler`` starts the next generation's coarse views while the current one's optimizer steps run.

Nothing changes in what the model sees: ``tests/ergo_train/train/test_rollout_golden.py``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from PIL import Image

from ergo_train.rollout.parsing import ZOOM_TOOL, normalize_tool_call
from ergo_train.rollout.views import SHARED


class _Unkeyable(Exception):
    pass


def _freeze(obj: Any, refs: list[Any]) -> Any:
    """A hashable stand-in for a chat-template argument: images and callables by identity (kept alive in
    ``refs`` while the key is in use), the rest by value."""
    if isinstance(obj, Image.Image):
        refs.append(obj)
        return ("image", id(obj))
    if isinstance(obj, (str, int, float, bool, type(None))):
        return obj
    if isinstance(obj, Mapping):
        return ("map", tuple((k, _freeze(v, refs)) for k, v in obj.items()))
    if isinstance(obj, (list, tuple)):
        return ("seq", tuple(_freeze(v, refs) for v in obj))
    if callable(obj):  # a tool: bound methods of one function render the same schema
        fn = getattr(obj, "__func__", obj)
        refs.append(fn)
        return ("callable", id(fn))
    raise _Unkeyable(type(obj).__name__)


def _copy_lists(value: Any) -> Any:
    """Fresh lists (token ids) around shared tensors: a caller that extends one rollout's ids alters no other."""
    if isinstance(value, list):
        return [_copy_lists(v) for v in value]
    if isinstance(value, Mapping):
        out = type(value)() if type(value) is dict else value.__class__(dict(value))
        for k, v in value.items():
            out[k] = _copy_lists(v)
        return out
    return value


class MemoImageProcessor:
    """The image processor with one pass per image object: a call's images are looked up one by one, the new
    ones processed in one batch, the results concatenated in order (the processor handles each image on its own,
    so this equals one batched call). Calls it cannot key (no ``return_tensors="pt"``, other outputs) pass through.
    Every other attribute is the wrapped processor's."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self._memo: dict[tuple, tuple[Image.Image, Any, Any]] = {}
        self.passes = 0  # images processed (the rest were reused)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def __call__(self, images: Any = None, **kwargs: Any) -> Any:
        import torch
        from transformers.feature_extraction_utils import BatchFeature

        flat = images if isinstance(images, (list, tuple)) else [images]
        flat = [im for group in flat for im in (group if isinstance(group, (list, tuple)) else [group])]
        wants = kwargs.get("return_tensors")
        if wants not in ("pt", None) or not flat or not all(isinstance(i, Image.Image) for i in flat):
            return self.inner(images=images, **kwargs)
        try:
            opts = _freeze({k: v for k, v in kwargs.items() if k != "return_tensors"}, [])
        except _Unkeyable:
            return self.inner(images=images, **kwargs)
        new = list({id(im): im for im in flat if (id(im), opts) not in self._memo}.values())
        if new:
            out = self.inner(images=new, **{**kwargs, "return_tensors": "pt"})
            if set(out.keys()) != {"pixel_values", "image_grid_thw"}:
                return self.inner(images=images, **kwargs)
            counts = out["image_grid_thw"].prod(-1).tolist()
            for im, pv, grid in zip(new, torch.split(out["pixel_values"], counts), out["image_grid_thw"], strict=True):
                self._memo[(id(im), opts)] = (im, pv, grid)
            self.passes += len(new)
        hits = [self._memo[(id(im), opts)] for im in flat]
        pixels, grids = torch.cat([h[1] for h in hits]), torch.stack([h[2] for h in hits])
        if wants is None:  # what the processor gives without return_tensors: numpy arrays
            pixels, grids = pixels.numpy(), grids.numpy()
        return BatchFeature({"pixel_values": pixels, "image_grid_thw": grids})


class MemoChatTemplate:
    """``processor.apply_chat_template`` once per distinct call (``tokenize=True``: the renders that run the image
    processor); an identical call returns fresh lists around the same tensors."""

    def __init__(self, method: Any) -> None:
        self.method = method
        self._memo: dict[Any, tuple[list[Any], Any]] = {}
        self.renders = 0

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if not kwargs.get("tokenize"):
            return self.method(*args, **kwargs)
        refs: list[Any] = []
        try:
            key = _freeze((args, kwargs), refs)
        except _Unkeyable:
            return self.method(*args, **kwargs)
        if key not in self._memo:
            self._memo[key] = (refs, self.method(*args, **kwargs))
            self.renders += 1
        return _copy_lists(self._memo[key][1])


@contextlib.contextmanager
def generation_scope(processor: Any) -> Iterator[MemoImageProcessor]:
    """For one generation: ``processor`` memoizes its image processor and its tokenizing chat-template renders;
    afterwards both are as before and the memo (its images and tensors) is dropped."""
    inner = processor.image_processor
    memo = MemoImageProcessor(inner)
    processor.image_processor = memo
    processor.apply_chat_template = MemoChatTemplate(processor.apply_chat_template)
    try:
        yield memo
    finally:
        processor.image_processor = inner
        del processor.apply_chat_template  # the class's method again


# ---- crops in parallel -----------------------------------------------------------------------------------
_POOL: ThreadPoolExecutor | None = None


def _pool() -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None:
        _POOL = ThreadPoolExecutor(max(2, min(16, os.cpu_count() or 2)), thread_name_prefix="ergo-zoom")
    return _POOL


def prepare_zooms(tool_dicts: Sequence[Mapping[str, Any]], completions: Sequence[Any],
                  encode_for_judge: bool = False) -> int:
    """Make the crop of every rollout's first zoom call in parallel, before TRL runs the tools one by one (each
    ``ZoomEnv.zoom`` then finds its crop made); with ``encode_for_judge`` the served judge's PNG payloads are
    encoded in the background. Returns the number of crops made."""
    jobs = []
    for tools, completion in zip(tool_dicts, completions, strict=False):
        first = completion[0] if completion else None
        calls = first.get("tool_calls") if isinstance(first, Mapping) else None
        zoom = dict.get(tools, ZOOM_TOOL) if isinstance(tools, dict) else None
        env = getattr(zoom, "__self__", None)
        if not calls or env is None or not hasattr(env, "_prepare_zoom"):
            continue
        fn = normalize_tool_call(calls[0])["function"]
        if fn["name"] == ZOOM_TOOL and isinstance(fn["arguments"], Mapping):
            jobs.append(_pool().submit(env._prepare_zoom, dict(fn["arguments"])))
    crops = [job.result() for job in jobs]
    if encode_for_judge:
        from ergo_train.models.served import encode_ahead

        encode_ahead([c for c in crops if c is not None], _pool())
    return len(jobs)


# ---- the next generation's coarse views during this one's optimizer steps ----------------------------------
class PrefetchingSampler:
    """TRL's ``RepeatSampler`` order, unchanged; on the third repeat of a generation's batch (fetched once the
    generation's rollouts are done: accelerate fetches one batch ahead) it starts the coarse views of the next
    generation's images on a background thread."""

    def __init__(self, sampler: Any, rows: Any, max_pixels: int) -> None:
        self.sampler, self.rows, self.max_pixels = sampler, rows, int(max_pixels)
        distinct = int(getattr(sampler, "batch_size", 1))
        self.batch = distinct * int(getattr(sampler, "mini_repeat_count", 1))  # one fetch of a generation
        self.generation = self.batch * int(getattr(sampler, "repeat_count", 1))
        self.trigger = min(2, int(getattr(sampler, "repeat_count", 1)) - 1) * self.batch

    def __len__(self) -> int:
        return len(self.sampler)

    def __iter__(self) -> Iterator[int]:
        order = list(iter(self.sampler))
        for pos, index in enumerate(order):
            if pos % self.generation == self.trigger:
                start = pos - self.trigger + self.generation
                upcoming = list(dict.fromkeys(order[start:start + self.batch]))
                if upcoming:
                    SHARED.prefetch([self.rows[i]["image"] for i in upcoming], self.max_pixels)
            yield index


def prefetching_sampler(sampler: Any, trainer: Any, dataset: Any = None) -> Any:
    """TRL's train sampler wrapped in a ``PrefetchingSampler`` when ``configure_host_path`` gave the trainer its
    budget (else as it is); the rows are read without the dataset's transform."""
    max_pixels = getattr(trainer, "ergo_max_pixels", None)
    dataset = trainer.train_dataset if dataset is None else dataset
    if not max_pixels or not hasattr(sampler, "mini_repeat_count"):
        return sampler
    rows = dataset.with_format(None) if hasattr(dataset, "with_format") else dataset  # no transform: no decode
    return PrefetchingSampler(sampler, rows, max_pixels)


def configure_host_path(trainer: Any, max_pixels: int, reward_funcs: Sequence[Any]) -> None:
    """Tell the trainer the rollout's budget (for the prefetch) and whether a served judge will want PNG payloads."""
    trainer.ergo_max_pixels = int(max_pixels)
    judges = [getattr(getattr(f, "func", None), "keywords", {}).get("judge") for f in reward_funcs]
    trainer.ergo_served_judge = any(getattr(j, "served", None) is not None for j in judges)
