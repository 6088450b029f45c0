"""The host path's caches (issue 27): each one gives exactly what the work it saves gave, and saves it."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from PIL import Image

from ergo_data.core.vision import budget_pixels
from ergo_train.rollout.env import ZoomEnv
from ergo_train.rollout.views import SharedImage, ViewCache, shared
from ergo_train.rollout.zoom import coarse_view
from ergo_train.train.host_cache import PrefetchingSampler, generation_scope, prepare_zooms
from tests.support.paths import EXAMPLES

MP = budget_pixels(1280)
PHOTO = EXAMPLES / "vstar" / "flag.JPG"


def _image_processor():
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    return Qwen2VLImageProcessorPil(min_pixels=56 * 56, max_pixels=MP, patch_size=14, temporal_patch_size=2,
                                    merge_size=2)


class _Processor:
    """The two attributes ``generation_scope`` swaps (a full processor needs the tiny model's files)."""

    def __init__(self) -> None:
        self.image_processor = _image_processor()
        self.rendered = 0

    def apply_chat_template(self, conversation, tokenize=False, **kwargs):
        self.rendered += 1
        return {"input_ids": [[len(str(conversation))]], "pixel_values": torch.zeros(1)}


def test_a_coarse_view_is_made_once_per_image_and_is_the_same_pixels():
    cache = ViewCache()
    a, size = cache.coarse({"bytes": None, "path": str(PHOTO)}, MP)
    b, _ = cache.coarse(str(PHOTO), MP)
    c, _ = cache.coarse({"bytes": PHOTO.read_bytes(), "path": None}, MP)
    ref, ref_size = coarse_view(cache.source(str(PHOTO)), MP)
    assert a is b and cache.made == 2  # the path twice, the bytes once
    assert size == ref_size and np.array_equal(np.asarray(a), np.asarray(ref)) and np.array_equal(np.asarray(c),
                                                                                                 np.asarray(ref))
    assert isinstance(a, SharedImage) and copy.deepcopy([a])[0] is a and a.copy() is not a


def test_a_prefetched_view_is_the_one_the_fetch_gets():
    cache = ViewCache()
    cache.prefetch([str(PHOTO)], MP)
    view, _ = cache.coarse(str(PHOTO), MP)
    assert cache.made == 1 and cache.coarse(str(PHOTO), MP)[0] is view


def test_memo_image_processor_equals_the_batched_call_and_processes_each_image_once():
    views = [shared(Image.new("RGB", (280, 196), (i * 40, 20, 200 - i * 30))) for i in range(3)]
    images = [views[0], views[1], views[0], views[2], views[1]]
    processor = _Processor()
    direct = processor.image_processor(images=images, return_tensors="pt")
    direct_np = processor.image_processor(images=images)
    with generation_scope(processor) as memo:
        got = processor.image_processor(images=images[:2], return_tensors="pt")
        got = processor.image_processor(images=images, return_tensors="pt")
        got_np = processor.image_processor(images=images)
        assert memo.passes == 3
        prompt = [{"role": "user", "content": [{"type": "image", "image": views[0]}, {"type": "text", "text": "q"}]}]
        first = processor.apply_chat_template(prompt, tokenize=True)
        first["input_ids"][0].append(99)  # a caller that extends its ids alters no other rollout's
        again = processor.apply_chat_template(copy.deepcopy(prompt), tokenize=True)
        assert processor.rendered == 1 and again["input_ids"] == [[len(str(prompt))]]
    assert torch.equal(got["pixel_values"], direct["pixel_values"])
    assert torch.equal(got["image_grid_thw"], direct["image_grid_thw"])
    assert isinstance(got_np["pixel_values"], np.ndarray) and np.array_equal(got_np["pixel_values"],
                                                                             direct_np["pixel_values"])
    assert type(processor.image_processor).__name__ == "Qwen2VLImageProcessorPil"
    assert "apply_chat_template" not in vars(processor)  # the class's method again after the generation


def test_crops_made_ahead_in_parallel_equal_the_crops_the_tool_makes():
    envs, calls = [], []
    boxes = [[10, 20, 200, 180], [300, 100, 700, 500], [5, 5, 1, 1], [0, 0, 1176, 756]]
    for box in boxes:
        env = ZoomEnv(MP)
        env.reset(image={"bytes": None, "path": str(PHOTO)}, question="Q?", options=["a", "b"], answer="a")
        envs.append(env)
        calls.append([{"role": "assistant", "tool_calls": [
            {"type": "function", "function": {"name": "zoom", "arguments": dict(zip(("x1", "y1", "x2", "y2"), box))}}]}])
    assert prepare_zooms([{"zoom": e.zoom} for e in envs], calls) == 4
    assert all(e._prepared is not None for e in envs)
    for env, box in zip(envs, boxes, strict=True):
        fresh = ZoomEnv(MP)
        fresh.reset(image=str(PHOTO), question="Q?", options=["a", "b"], answer="a")
        want, got = fresh.zoom(*box), env.zoom(*box)
        assert env._prepared is None and env.zoom_ok == fresh.zoom_ok and env.zoom_box == fresh.zoom_box
        assert np.array_equal(np.asarray(got[0]["image"]), np.asarray(want[0]["image"])) and got[1] == want[1]


def test_the_prefetching_sampler_keeps_trl_order_and_prefetches_the_next_generation(monkeypatch):
    from trl.trainer.utils import RepeatSampler

    rows = [{"image": f"img-{i}"} for i in range(12)]
    asked: list[list[str]] = []

    class Recorder:
        def prefetch(self, values, max_pixels):
            asked.append(list(values))

    sampler = RepeatSampler(rows, mini_repeat_count=2, batch_size=3, repeat_count=4, seed=7)
    want = list(RepeatSampler(rows, mini_repeat_count=2, batch_size=3, repeat_count=4, seed=7))
    wrapped = PrefetchingSampler(sampler, rows, MP)
    monkeypatch.setattr("ergo_train.train.host_cache.SHARED", Recorder())  # records what would be prefetched
    got = list(wrapped)
    assert got == want and len(wrapped) == len(want)
    generations = [list(dict.fromkeys(want[g:g + 6])) for g in range(0, len(want), 24)]
    assert asked == [[rows[i]["image"] for i in gen] for gen in generations[1:]]


@pytest.mark.parametrize("bad", [b"", b"not an image"])
def test_a_view_that_cannot_be_made_raises_for_every_caller_and_is_not_kept(bad):
    cache = ViewCache()
    for _ in range(2):
        with pytest.raises(Exception, match="zero-byte|not a known|neither"):
            cache.coarse({"bytes": bad, "path": None}, MP)
    assert cache.made == 0
