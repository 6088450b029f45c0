"""``ergo eval --bench curated``: a curated set's rows as benchmark items (one split, letters as stored, boxes for
``oracle_crop`` and region hits); malformed rows are listed, never skipped; the report's parsed share and hit rate."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ergo_data.core.boxes import Box
from ergo_train.eval.loaders import BadItem, BenchFormatError, BenchItem, load_bench
from ergo_train.eval.report import group_stats, mcnemar


def _write(tmp_path, rows):
    (tmp_path / "data").mkdir()
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "data" / "part-00000.parquet")
    return tmp_path


def _row(i, split, **kw):
    row = {"id": f"s/{i}", "image": {"bytes": None, "path": f"/x/{i}.png"}, "question": "Which way?",
           "options": ["horizontal", "vertical"], "answer_letter": "B", "category": "c", "split": split,
           "boxes": [{"x1": 1.0, "y1": 2.0, "x2": 30.0, "y2": 40.0, "label": "l", "source": "synthetic"}]}
    return {**row, **kw}


def test_a_curated_split_becomes_items_with_boxes_and_bad_rows_stay(tmp_path):
    folder = _write(tmp_path, [_row(0, "train"), _row(1, "val"), _row(2, "val", answer_letter="C"),
                               _row(3, "val", image={"bytes": None, "path": None})])
    items = list(load_bench("curated", folder, split="val"))
    assert [type(i) for i in items] == [BenchItem, BadItem, BadItem]
    assert items[0].id == "s/1" and items[0].answer == "vertical" and items[0].gt_box == Box(1, 2, 30, 40)
    assert items[0].option_order is None  # the set fixes the letters
    assert [i.reason for i in items[1:]] == ["bad_options", "image_missing"]
    assert len(list(load_bench("curated", folder))) == 4
    with pytest.raises(BenchFormatError, match="no rows with split 'test'"):
        list(load_bench("curated", folder, split="test"))
    with pytest.raises(BenchFormatError, match="--split applies to a curated set only"):
        list(load_bench("vstar", folder, split="val"))


def test_parsed_share_region_hits_and_the_paired_test():
    recs = [{"status": "ok", "correct": True, "region_hit": True, "id": "a"},
            {"status": "unparseable", "correct": False, "region_hit": False, "id": "b"},
            {"status": "ok", "correct": False, "region_hit": None, "id": "c"}]
    s = group_stats(recs)
    assert s["parseable"] == pytest.approx(2 / 3) and s["region_hit_rate"] == 0.5
    flipped = [{**r, "correct": not r["correct"]} for r in recs]
    assert mcnemar(recs, flipped) == {"n": 3, "a_only": 1, "b_only": 2, "p": 1.0}
