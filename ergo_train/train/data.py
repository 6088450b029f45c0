"""The curated set as a ``datasets.Dataset`` for TRL: Parquet shards -> rows with the turn-1 prompt and coarse view."""

from __future__ import annotations

import glob
from pathlib import Path
from typing import Any

from ergo_data.core.errors import RecipeError
from ergo_train.rollout.env import build_turn1_prompt
from ergo_train.rollout.views import shared_coarse_view
from ergo_train.train.recipe import DataSpec

REQUIRED_COLUMNS = ("id", "image", "question", "options", "answer", "boxes", "width", "height")


# ---- data ------------------------------------------------------------------------------------------
def parquet_files(path: str) -> list[str]:
    """The Parquet files of an ``ergo run`` output directory, a directory of shards, a file or a glob."""
    p = Path(path)
    if p.is_dir():
        for pattern in ("data/*.parquet", "*.parquet"):
            files = sorted(glob.glob(str(p / pattern)))
            if files:
                return files
    elif p.is_file():
        return [str(p)]
    else:
        files = sorted(glob.glob(path))
        if files:
            return files
    raise RecipeError(f"no Parquet files at {path!r} (run a curation first, e.g. "
                      "`ergo run pipelines/demo.yaml --out out/demo`)")


def load_curated(spec: DataSpec, max_pixels: int):
    """The curated set as a ``datasets.Dataset``; each row gets ``prompt`` (turn 1) and ``images`` (the coarse view).

    ``image`` stays the full-resolution original (the zoom tool and the rewards crop from it); TRL shows
    ``images`` in turn 1, the exact view ``ergo_train.rollout.zoom.coarse_view`` gives evaluation too, made once
    per image and shared by every fetch and rollout (``ergo_train.rollout.views``).
    """
    return load_split(spec).with_transform(_turn1_transform(max_pixels))


def load_split(spec: DataSpec):
    """The curated rows of ``spec`` (its split, its limit) as a ``datasets.Dataset``; ``image`` stays the
    ``{bytes, path}`` of the file (not decoded), so the coarse view and the crop decode only what they need."""
    import datasets

    ds = datasets.load_dataset("parquet", data_files=parquet_files(spec.path), split="train")
    if "image" in ds.column_names:
        ds = ds.cast_column("image", datasets.Image(decode=False))
    missing = [c for c in REQUIRED_COLUMNS if c not in ds.column_names]
    if missing:
        raise RecipeError(f"curated set {spec.path!r} lacks columns {missing} (has {ds.column_names})")
    if spec.split is not None:
        if "split" not in ds.column_names:
            raise RecipeError(f"curated set {spec.path!r} has no 'split' column; set data.split: null")
        counts: dict[str, int] = {}
        for s in ds["split"]:
            counts[str(s)] = counts.get(str(s), 0) + 1
        ds = ds.filter(lambda s: s == spec.split, input_columns=["split"], keep_in_memory=True)
        if len(ds) == 0:
            raise RecipeError(f"curated set {spec.path!r} has no rows with split {spec.split!r} (splits: {counts})")
    if spec.limit is not None:
        ds = ds.select(range(min(spec.limit, len(ds))))
    return ds


def _turn1_transform(max_pixels: int):
    def transform(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        n = len(batch["id"])
        rows = [{k: v[i] for k, v in batch.items()} for i in range(n)]
        batch["prompt"] = [build_turn1_prompt(r, max_pixels) for r in rows]
        batch["images"] = [[shared_coarse_view(r["image"], max_pixels)[0]] for r in rows]
        return batch

    return transform
