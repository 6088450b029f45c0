"""Each built-in stage on small in-memory batches: kept rows, rejects with reasons, params errors."""

from __future__ import annotations

import pyarrow as pa
import pytest

from ergo_data.core.boxes import Box
from ergo_data.core.errors import RecipeError
from ergo_data.core.schema import BoxRecord, make_row
from ergo_data.core.vision import derived_columns
from ergo_data.pipeline.registry import stage_registry
from ergo_data.stages.dedup import DedupStage
from ergo_data.stages.filters import AreaStage, BoxCheckStage, VisibilityStage
from ergo_data.stages.split import SplitStage, StratifyStage
from ergo_data.stages.sql import SqlStage


def row(i, box=(100, 100, 140, 130), size=(4000, 3000), sha=None, phash="0" * 16, source="s"):
    r = make_row(id=f"{source}/{i:03d}", image_path="/x.jpg", question="q?", answer="a", source=source,
                 boxes=[BoxRecord(*box, "obj", "annotation")])
    r.update(width=size[0], height=size[1], image_sha256=sha or f"sha{i}", image_phash=phash)
    r.update(derived_columns(size, [Box(*box)]))
    return r


def table(rows):
    return pa.Table.from_pylist(rows)


def test_registry_lists_core_stages_and_errors_name_valid_ones():
    names = stage_registry.names()
    for n in ("decode", "box_check", "visibility", "area", "dedup", "decontaminate", "sql", "stratify", "split"):
        assert n in names
    with pytest.raises(KeyError, match="valid stage types: .*decode"):
        stage_registry.get("decodee")


def test_unknown_param_lists_valid_keys():
    with pytest.raises(RecipeError, match=r"max_side_pix.*Valid keys: max_pixels"):
        VisibilityStage(max_side_pix=3)
    with pytest.raises(RecipeError, match="min_side_px must be <= max_side_px"):
        VisibilityStage(min_side_px=60, max_side_px=10)


def test_box_check_reasons():
    rows = [row(0), row(1, box=(0, 0, 5000, 10)), row(2)]
    rows[2]["boxes"] = [{"x1": 1.0, "y1": 1.0, "x2": 1.0, "y2": 5.0, "label": "", "source": "annotation"}]
    nob = row(3)
    nob["boxes"] = []
    res = BoxCheckStage().process(table(rows + [nob]))
    assert res.kept.column("id").to_pylist() == ["s/000"]
    assert {r["id"]: r["reason"] for r in res.rejected} == {
        "s/001": "box_outside_image", "s/002": "box_degenerate", "s/003": "no_box"}
    assert all(r["stage"] == "box_check" and r["detail"] for r in res.rejected)


def test_box_check_clamps_within_tolerance():
    res = BoxCheckStage(tolerance_px=1.0).process(table([row(0, box=(-0.5, 10, 4000.5, 20))]))
    b = res.kept.column("boxes").to_pylist()[0][0]
    assert (b["x1"], b["x2"]) == (0.0, 4000.0)


def test_visibility_band():
    # 4000x3000 at 1280 budget -> 1148x840 (x scale 0.287, y scale 0.28)
    tiny, mid, big = row(0, box=(0, 0, 10, 10)), row(1, box=(0, 0, 100, 100)), row(2, box=(0, 0, 1000, 1000))
    res = VisibilityStage(min_side_px=8, max_side_px=56).process(table([tiny, mid, big]))
    assert res.kept.column("id").to_pylist() == ["s/001"]
    assert {r["id"]: r["reason"] for r in res.rejected} == {
        "s/000": "region_too_small", "s/002": "region_legible_without_zoom"}


def test_area_bounds():
    res = AreaStage(max_frac=0.6).process(table([row(0), row(1, box=(0, 0, 4000, 2500))]))
    assert res.kept.column("id").to_pylist() == ["s/000"]
    assert res.rejected[0]["reason"] == "box_area_too_large"


def test_sql_null_counts_as_false_and_bad_sql_is_clear():
    rows = [row(0), row(1)]
    rows[1]["box_area_frac"] = None
    res = SqlStage(where="box_area_frac < 0.5").process(table(rows))
    assert res.kept.column("id").to_pylist() == ["s/000"]
    with pytest.raises(RecipeError, match="cannot evaluate WHERE"):
        SqlStage(where="no_such_column > 1").process(table(rows))


def test_dedup_keeps_first_by_id_and_is_order_independent():
    a = row(0, phash="ffff0000ffff0000")
    b = row(1, phash="ffff0000ffff0001")  # distance 1 from a: duplicate
    c = row(2, phash="0000ffff0000ffff")  # far away
    same_image = row(3, sha="sha0", phash="ffff0000ffff0000")  # another question on a's image
    for order in ([a, b, c, same_image], [same_image, c, b, a]):
        res = DedupStage(max_distance=4).process(table(order))
        assert sorted(res.kept.column("id").to_pylist()) == ["s/000", "s/002", "s/003"]
        assert [r["id"] for r in res.rejected] == ["s/001"]
        assert "s/000" in res.rejected[0]["detail"]


def test_split_by_image_seeded_and_fractions():
    rows = [row(i, sha=f"img{i // 3}") for i in range(600)]
    out = SplitStage(val=0.2, test=0.1, seed=7).process(table(rows)).kept.to_pylist()
    per_image = {}
    for r in out:
        per_image.setdefault(r["image_sha256"], set()).add(r["split"])
    assert all(len(s) == 1 for s in per_image.values())
    counts = {s: sum(r["split"] == s for r in out) for s in ("train", "val", "test")}
    assert 0.1 < counts["val"] / 600 < 0.3 and 0.03 < counts["test"] / 600 < 0.2
    again = SplitStage(val=0.2, test=0.1, seed=7).process(table(list(reversed(rows)))).kept.to_pylist()
    assert {r["id"]: r["split"] for r in again} == {r["id"]: r["split"] for r in out}
    other = SplitStage(val=0.2, test=0.1, seed=8).process(table(rows)).kept.to_pylist()
    assert {r["id"]: r["split"] for r in other} != {r["id"]: r["split"] for r in out}


def test_stratify_caps_buckets():
    rows = [row(i, source="a") for i in range(10)] + [row(i, source="b") for i in range(3)]
    res = StratifyStage(by=["source"], area_bins=None, max_per_bucket=4, seed=0).process(table(rows))
    kept = res.kept.column("source").to_pylist()
    assert kept.count("a") == 4 and kept.count("b") == 3
    assert len(res.rejected) == 6 and all(r["reason"] == "stratify_cap" for r in res.rejected)
    res2 = StratifyStage(by=["source"], area_bins=None, max_per_bucket=4, seed=0).process(table(rows[::-1]))
    assert sorted(res2.kept.column("id").to_pylist()) == sorted(res.kept.column("id").to_pylist())


def _dedup_by_rows(table: pa.Table, max_distance: int = 4):
    """The row-dict implementation dedup had before it kept the rows in Arrow (the reference)."""
    import numpy as np

    from ergo_data.core.schema import rows_to_table
    from ergo_data.stages.dedup import hamming, phash_ints

    rows = sorted(table.to_pylist(), key=lambda r: r["id"])
    first_by_sha: dict = {}
    for r in rows:
        first_by_sha.setdefault(r["image_sha256"], r)
    images = list(first_by_sha.values())
    hashes = phash_ints([r["image_phash"] for r in images])
    owner, kept_idx = {}, []
    for i, r in enumerate(images):
        if kept_idx:
            d = hamming(hashes[i], hashes[kept_idx])
            j = int(np.argmin(d))
            if d[j] <= max_distance:
                owner[r["image_sha256"]] = (images[kept_idx[j]]["id"], int(d[j]))
                continue
        kept_idx.append(i)
    kept = [r for r in rows if r["image_sha256"] not in owner]
    rejected = []
    for r in rows:
        if r["image_sha256"] in owner:
            other, dist = owner[r["image_sha256"]]
            rejected.append((r["id"], f"near-duplicate of {other} (pHash distance {dist} <= {max_distance})"))
    return rows_to_table(kept), rejected


def _dedup_case(seed: int) -> pa.Table:
    import random

    rng = random.Random(seed)
    base = [rng.getrandbits(64) for _ in range(6)]
    rows = []
    for i in rng.sample(range(1000), 60):  # ids out of order; shared images; hashes a few bits apart
        img = rng.randrange(40)
        h = base[img % 6] ^ (1 << rng.randrange(64) if rng.random() < 0.5 else 0) ^ (img // 6 << 20)
        rows.append({"id": f"s/{i:04d}", "source": "s", "image_sha256": f"sha{img}", "image_phash": f"{h:016x}",
                     "score": rng.choice([None, 1.5, 2.0])})
    return pa.Table.from_pylist(rows)


@pytest.mark.parametrize("seed", range(5))
def test_dedup_in_arrow_equals_the_row_dict_reference(seed):
    table = _dedup_case(seed)
    got = DedupStage().process(table)
    want_kept, want_rejected = _dedup_by_rows(table)
    assert got.kept.equals(want_kept) and got.kept.schema == want_kept.schema
    assert [(r["id"], r["detail"]) for r in got.rejected] == want_rejected
    assert want_rejected  # the case covers duplicates


@pytest.mark.parametrize("seed", range(3))
def test_dedup_streamed_by_the_local_executor_equals_the_whole_table(seed, tmp_path):
    """The local executor reads only dedup's key columns of all chunks, then streams each chunk through the
    kept ids: the same kept rows (in input order) and rejects as ``process`` on the whole table."""
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    from ergo_data.pipeline.executor.segments import _stream_through_kept
    from ergo_data.pipeline.outputs import write_parquet_atomic

    table = _dedup_case(seed)
    files = []
    for i, start in enumerate(range(0, table.num_rows, 7)):  # chunks of 7 rows, the last one short
        files.append(tmp_path / "prev" / f"part-{i:05d}.parquet")
        write_parquet_atomic(table.slice(start, 7), files[-1])
    n_in, n_out, n_chunks, rejected = _stream_through_kept(DedupStage(), files, tmp_path, size=5)
    whole = DedupStage().process(table)
    chunks = [pq.read_table(tmp_path / f"part-{i:05d}.parquet") for i in range(n_chunks)]
    assert [c.num_rows for c in chunks[:-1]] == [5] * (n_chunks - 1) and 0 < chunks[-1].num_rows <= 5
    streamed = pa.concat_tables(chunks)
    assert (n_in, n_out) == (table.num_rows, whole.kept.num_rows) and rejected == whole.rejected
    input_order = [i for i in table.column("id").to_pylist() if i in set(whole.kept.column("id").to_pylist())]
    assert streamed.column("id").to_pylist() == input_order
    by_id = streamed.take(pc.sort_indices(streamed.column("id")))
    assert by_id.to_pylist() == whole.kept.to_pylist()
