"""Global pHash stages: ``dedup`` (near-duplicate images within the set) and ``decontaminate``
(near-duplicates of evaluation images, e.g. V* / HR-Bench, in a reference folder).

Both compare 64-bit pHashes (computed by ``decode``) by Hamming distance. They are barriers: the
result does not depend on input order (the first image by sorted id wins).

>>> import pyarrow as pa
>>> rows = [{"id": "s/a", "source": "s", "image_sha256": "1", "image_phash": "ffff000000000000"},
...         {"id": "s/b", "source": "s", "image_sha256": "2", "image_phash": "ffff000000000001"}]
>>> DedupStage().process(pa.Table.from_pylist(rows)).rejected[0]["detail"]
'near-duplicate of s/a (pHash distance 1 <= 4)'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ergo_data.core.errors import RecipeError
from ergo_data.core.files import IMAGE_EXTENSIONS
from ergo_data.core.schema import SAMPLE_SCHEMA, rows_to_table
from ergo_data.core.vision import BUDGETS
from ergo_data.pipeline.contract import GlobalStage, Params, StageResult
from ergo_data.pipeline.registry import stage_registry


def phash_ints(hexes: list[str]) -> np.ndarray:
    return np.array([int(h, 16) for h in hexes], dtype=np.uint64)


def hamming(a: np.uint64, many: np.ndarray) -> np.ndarray:
    x = np.bitwise_xor(many, a)
    return np.unpackbits(x.view(np.uint8).reshape(-1, 8), axis=1).sum(axis=1)


def _need_phash(table: pa.Table, stage: str) -> None:
    if "image_phash" not in table.column_names:
        raise RecipeError(f"stage {stage!r} needs the `image_phash` column: put `decode` before it")


class DedupParams(Params):
    max_distance: int = 4  # Hamming distance of 64-bit pHashes at or below which two images are duplicates


@stage_registry.register("dedup")
class DedupStage(GlobalStage):
    """Drop samples whose image is a near-duplicate of another image kept earlier (by sorted id).

    Samples that share the SAME image (several questions on one image) are not duplicates of each other.
    """

    Params = DedupParams

    key_columns = ("id", "source", "image_sha256", "image_phash")

    def select(self, keys: pa.Table) -> tuple[pa.Array, list[dict[str, str]]]:
        """The ids to keep and the rejects, from the key columns of every row (any order)."""
        _need_phash(keys, self.name)
        if keys.num_rows == 0:
            return pa.array([], pa.string()), []
        keys = keys.take(pc.sort_indices(keys.column("id")))  # by id (UTF-8 byte order = code point order)
        ids = keys.column("id").to_pylist()
        shas = keys.column("image_sha256").to_pylist()
        first_by_sha: dict[str, int] = {}
        for i, sha in enumerate(shas):
            first_by_sha.setdefault(sha, i)
        images = list(first_by_sha.values())  # row index of the first sample of each distinct image
        hashes = phash_ints(keys.column("image_phash").take(images).to_pylist())
        owner: dict[str, str] = {}  # sha -> id of the kept image it duplicates, and the distance
        kept_idx: list[int] = []
        for i, row in enumerate(images):
            if kept_idx:
                d = hamming(hashes[i], hashes[kept_idx])
                j = int(np.argmin(d))
                if d[j] <= self.params.max_distance:
                    owner[shas[row]] = f"{ids[images[kept_idx[j]]]}\t{int(d[j])}"
                    continue
            kept_idx.append(i)
        sources = keys.column("source").to_pylist()
        kept, rejected = [], []
        for i, sha in enumerate(shas):
            if sha not in owner:
                kept.append(ids[i])
                continue
            other, dist = owner[sha].split("\t")
            rejected.append(self.reject({"id": ids[i], "source": sources[i]}, "near_duplicate",
                                        f"near-duplicate of {other} (pHash distance {dist} <= {self.params.max_distance})"))
        return pa.array(kept, pa.string()), rejected

    def process(self, table: pa.Table) -> StageResult:
        if table.num_rows == 0:
            return StageResult(table)
        _need_phash(table, self.name)
        keep_ids, rejected = self.select(table.select(list(self.key_columns)))
        if not len(keep_ids):
            return StageResult(table.schema.empty_table(), rejected)
        table = table.take(pc.sort_indices(table.column("id")))  # one order whatever order the rows came in
        return StageResult(canonical_rows(table.filter(pc.is_in(table.column("id"), value_set=keep_ids))), rejected)

def canonical_rows(table: pa.Table, slice_rows: int = 256) -> pa.Table:
    """``rows_to_table(table.to_pylist())`` a slice at a time: the same table, without every row as a dict.

    >>> t = pa.table({"id": ["s/a", "s/b"], "source": ["s", "s"], "score": [1, None]})
    >>> canonical_rows(t, slice_rows=1).equals(rows_to_table(t.to_pylist()))
    True
    """
    # the types rows_to_table would infer over all rows, one column at a time
    extra = {c: pa.array(table.column(c).to_pylist()).type for c in table.column_names if c not in SAMPLE_SCHEMA.names}
    parts = [rows_to_table(b.to_pylist(), extra) for b in table.to_batches(max_chunksize=slice_rows)]
    return pa.concat_tables(parts) if parts else rows_to_table([])


class DecontaminateParams(Params):
    reference: str  # folder of evaluation images (searched recursively)
    max_distance: int = 6
    name: str | None = None  # name of the eval set for the card; default: the folder name


@stage_registry.register("decontaminate")
class DecontaminateStage(GlobalStage):
    """Drop samples whose image is a near-duplicate of an evaluation image; the reason names the match."""

    Params = DecontaminateParams

    def __init__(self, **params: Any) -> None:
        super().__init__(**params)
        self.reference = Path(self.params.reference).expanduser().resolve()
        if not self.reference.is_dir():
            raise RecipeError(f"stage 'decontaminate': reference folder {str(self.reference)!r} does not exist")
        self._ref: tuple[list[str], np.ndarray] | None = None

    def reference_hashes(self) -> tuple[list[str], np.ndarray]:
        if self._ref is None:
            from ergo_data.core.imageio import DecodeError, decode_coarse, phash_hex

            names, hashes = [], []
            for p in sorted(self.reference.rglob("*")):
                if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file():
                    try:
                        view = decode_coarse(p.read_bytes(), BUDGETS[1280])
                    except DecodeError:
                        continue
                    names.append(str(p.relative_to(self.reference)))
                    hashes.append(phash_hex(view.array))  # the same hash as `decode` makes
            self._ref = (names, phash_ints(hashes))
        return self._ref

    def summary(self) -> dict[str, Any]:
        names, _ = self.reference_hashes()
        return {"eval_set": self.params.name or self.reference.name, "reference": str(self.reference),
                "reference_images": len(names), "max_distance": self.params.max_distance}

    def process(self, table: pa.Table) -> StageResult:
        if table.num_rows == 0:
            return StageResult(table)
        _need_phash(table, self.name)
        names, ref = self.reference_hashes()
        kept, rejected = [], []
        label = self.params.name or self.reference.name
        for r in sorted(table.to_pylist(), key=lambda r: r["id"]):
            if len(names):
                d = hamming(phash_ints([r["image_phash"]])[0], ref)
                j = int(np.argmin(d))
                if d[j] <= self.params.max_distance:
                    rejected.append(self.reject(r, "eval_contamination", f"matches eval image {label}/{names[j]} "
                                                f"(pHash distance {int(d[j])} <= {self.params.max_distance})"))
                    continue
            kept.append(r)
        return StageResult(rows_to_table(kept) if kept else table.schema.empty_table(), rejected)
