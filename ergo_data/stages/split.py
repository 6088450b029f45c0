"""Global, seeded, order-independent stages: ``stratify`` (cap per bucket) and ``split`` (by image).

>>> import pyarrow as pa
>>> rows = [{"id": f"s/{i}", "source": "s", "image_sha256": str(i // 2)} for i in range(40)]
>>> out = SplitStage(val=0.2, test=0.2, seed=1).process(pa.Table.from_pylist(rows)).kept.to_pylist()
>>> by_image = {}
>>> for r in out:
...     by_image.setdefault(r["image_sha256"], set()).add(r["split"])
>>> all(len(s) == 1 for s in by_image.values())  # both questions of an image share a split
True
"""

from __future__ import annotations

import bisect
import hashlib
from collections import defaultdict
from typing import Any

import pyarrow as pa
from pydantic import Field

from ergo_data.core.errors import RecipeError
from ergo_data.core.schema import rows_to_table
from ergo_data.pipeline.contract import GlobalStage, Params, StageResult
from ergo_data.pipeline.registry import stage_registry


def seeded_unit(seed: int, key: str) -> float:
    """A uniform number in [0, 1) that depends only on (seed, key): order-independent randomness."""
    h = hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(h, "big") / 2**64


class SplitParams(Params):
    val: float = 0.1
    test: float = 0.1
    seed: int = 0


@stage_registry.register("split")
class SplitStage(GlobalStage):
    """Assign train/val/test per IMAGE (sha256), so one image never lands in two splits."""

    Params = SplitParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        p = self.params
        if p.val < 0 or p.test < 0 or p.val + p.test >= 1:
            raise RecipeError("stage 'split': need val >= 0, test >= 0 and val + test < 1")

    def process(self, table: pa.Table) -> StageResult:
        if table.num_rows == 0:
            return StageResult(table)
        p = self.params
        rows = sorted(table.to_pylist(), key=lambda r: r["id"])
        for r in rows:
            u = seeded_unit(p.seed, r.get("image_sha256") or r["id"])
            r["split"] = "test" if u < p.test else "val" if u < p.test + p.val else "train"
        return StageResult(rows_to_table(rows))


class StratifyParams(Params):
    by: list[str] = Field(default_factory=lambda: ["source"])  # columns whose values form a bucket (e.g. source, category)
    area_bins: list[float] | None = Field(default_factory=lambda: [0.0, 0.0005, 0.005, 0.05, 1.0])  # box_area_frac bin edges; None: ignore
    max_per_bucket: int = 1000
    seed: int = 0


@stage_registry.register("stratify")
class StratifyStage(GlobalStage):
    """Keep at most ``max_per_bucket`` samples per (columns in ``by``, box-area bin), drawn with a seed."""

    Params = StratifyParams

    def process(self, table: pa.Table) -> StageResult:
        if table.num_rows == 0:
            return StageResult(table)
        p = self.params
        missing = [c for c in p.by + (["box_area_frac"] if p.area_bins else []) if c not in table.column_names]
        if missing:
            raise RecipeError(f"stage 'stratify': columns {missing} not in the data; have {table.column_names}")
        buckets: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
        for r in table.to_pylist():
            key = tuple(str(r.get(c)) for c in p.by)
            if p.area_bins:
                frac = r.get("box_area_frac")
                key += (None if frac is None else bisect.bisect_right(p.area_bins, frac),)
            buckets[key].append(r)
        kept, rejected = [], []
        for key in sorted(buckets, key=str):
            members = sorted(buckets[key], key=lambda r: seeded_unit(p.seed, r["id"]))
            kept += members[: p.max_per_bucket]
            rejected += [self.reject(r, "stratify_cap", f"bucket {key} over its cap of {p.max_per_bucket}")
                         for r in members[p.max_per_bucket:]]
        kept.sort(key=lambda r: r["id"])
        return StageResult(rows_to_table(kept) if kept else table.schema.empty_table(), rejected)
