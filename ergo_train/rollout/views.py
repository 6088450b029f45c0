"""Each image's coarse view made once and shared: by every rollout of a GRPO group, by every fetch of a generation
batch, by the SFT episode, evaluation and the difficulty stage (all build turn 1 through here).

TRL fetches the generation batch once per optimizer step (``steps_per_generation``) and repeats each prompt
``num_generations`` times; without sharing, one generation of the 7B recipe decodes 128 coarse views where 4 are
needed. ``SHARED.coarse(image, max_pixels)`` keys a view by the file (path, size, mtime) or the bytes' hash and
keeps the last ``max_views``; ``prefetch`` makes views ahead on a background thread (the next generation's, while
the optimizer steps run). The views are ``SharedImage``s: deep copies of them (TRL deep-copies each generation's
prompts) are the view itself, so one image object stands for one view and the pixels are never copied.

>>> cache = ViewCache(max_views=4)
>>> a, size = cache.coarse({"bytes": None, "path": "examples/vstar/flag.JPG"}, 1280 * 28 * 28)
>>> b, _ = cache.coarse("examples/vstar/flag.JPG", 1280 * 28 * 28)
>>> a is b, size, cache.made
(True, (1232, 784), 1)
>>> import copy; copy.deepcopy({"image": a})["image"] is a
True
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Hashable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from ergo_data.core.boxes import Size
from ergo_data.core.imageio import ImageSource


class SharedImage(Image.Image):
    """A view that several rollouts share and nobody writes: ``copy.deepcopy`` returns it (``Image.copy()``
    still copies)."""

    def __deepcopy__(self, memo: dict) -> SharedImage:
        return self


def shared(image: Image.Image) -> Image.Image:
    """Mark ``image`` as shared (its class becomes ``SharedImage``; pixels and attributes untouched)."""
    if type(image) is Image.Image:
        image.__class__ = SharedImage
    return image


def image_key(value: Any) -> Hashable | None:
    """What identifies a row's image: its file (path, size, mtime) or the hash of its bytes; None for a PIL
    image (decoded already: nothing to share)."""
    if isinstance(value, Mapping):
        value = value.get("bytes") or value.get("path")
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ("bytes", hashlib.blake2b(bytes(value), digest_size=16).digest())
    if isinstance(value, (str, Path)):
        st = Path(value).stat()
        return ("file", str(Path(value).resolve()), st.st_size, st.st_mtime_ns)
    return None


class ViewCache:
    """Coarse views (and the file bytes behind them) by image, the last ``max_views`` kept; thread-safe, and a
    view asked for while another thread makes it is waited for, not made twice."""

    def __init__(self, max_views: int = 64) -> None:
        self.max_views = int(max_views)
        self._views: OrderedDict[Hashable, Future] = OrderedDict()
        self._bytes: OrderedDict[Hashable, bytes] = OrderedDict()
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        self.made = 0  # views decoded (the rest were shared)

    def source(self, value: Any) -> ImageSource:
        """A fresh ``ImageSource`` for ``value`` (header only), over file bytes read once."""
        key = None if isinstance(value, (Image.Image, ImageSource)) else image_key(value)
        if key is None or (isinstance(value, Mapping) and value.get("bytes")):
            return ImageSource.open(value)
        with self._lock:
            data = self._bytes.get(key)
        if data is None:
            path = value.get("path") if isinstance(value, Mapping) else value
            data = Path(path).read_bytes()
            with self._lock:
                self._bytes[key] = data
                while len(self._bytes) > self.max_views:
                    self._bytes.popitem(last=False)
        return ImageSource(data)

    def coarse(self, value: Any, max_pixels: int) -> tuple[Image.Image, Size]:
        """``ergo_train.rollout.zoom.coarse_view`` of the row image ``value``, made once per image and budget."""
        from ergo_train.rollout.zoom import coarse_view

        key = None if isinstance(value, (Image.Image, ImageSource)) else image_key(value)
        if key is None:
            view, size = coarse_view(ImageSource.open(value), max_pixels)
            return shared(view), size
        key = (key, int(max_pixels))
        with self._lock:
            fut = self._views.get(key)
            mine = fut is None
            if mine:
                fut = self._views[key] = Future()
                while len(self._views) > self.max_views:
                    self._views.popitem(last=False)
            else:
                self._views.move_to_end(key)
        if mine:
            try:
                view, size = coarse_view(self.source(value), max_pixels)
                self.made += 1
                fut.set_result((shared(view), size))
            except Exception as e:  # noqa: BLE001 - handed to every caller waiting for this view
                with self._lock:
                    if self._views.get(key) is fut:
                        del self._views[key]
                fut.set_exception(e)
        return fut.result()

    def prefetch(self, values: Iterable[Any], max_pixels: int) -> None:
        """Make the views of ``values`` on a background thread (errors surface when the view is asked for)."""
        with self._lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(1, thread_name_prefix="ergo-views")
        for value in values:
            self._pool.submit(self._quiet, value, max_pixels)

    def _quiet(self, value: Any, max_pixels: int) -> None:
        with contextlib.suppress(Exception):  # the fetch that needs this view raises it again, naming the sample
            self.coarse(value, max_pixels)


SHARED = ViewCache()


def shared_coarse_view(value: Any, max_pixels: int) -> tuple[Image.Image, Size]:
    """The process-wide shared coarse view of a row's image (see the module docstring)."""
    return SHARED.coarse(value, max_pixels)
