"""The `labels` merge stage and the `parquet` source (no server: labels tables are written here)."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from ergo_data.core.boxes import Box
from ergo_data.core.errors import RecipeError
from ergo_data.core.schema import LABELS_SCHEMA, make_row, rows_to_table, validate_row
from ergo_data.pipeline.executor.local import run_pipeline
from ergo_data.pipeline.recipe import parse_recipe
from ergo_data.pipeline.registry import source_registry, stage_registry
from ergo_data.stages.filters import refresh_derived
from tests.support.paths import EXAMPLES

W, H = 400, 300


def sample(sid: str, boxes=((10.0, 10.0, 50.0, 40.0),), label: str = "cat") -> dict:
    row = make_row(
        id=sid,
        image_path=str(EXAMPLES / "vstar" / "flag.JPG"),
        question="What colour?",
        answer="red",
        source="s",
        needs_review=True,
        boxes=[
            {"x1": b[0], "y1": b[1], "x2": b[2], "y2": b[3], "label": label, "source": "annotation"}
            for b in boxes
        ],
    )
    row.update(width=W, height=H, image_sha256="0" * 64)
    return refresh_derived(row)


def label(
    sid: str,
    box=(100.0, 100.0, 150.0, 140.0),
    answer_correct=True,
    region_answerable=True,
    created_at="2026-01-01T10:00:00Z",
    annotator="ann@example.com",
    comment=None,
) -> dict:
    x1, y1, x2, y2 = box if box else (None,) * 4
    return {
        "id": sid,
        "annotator": annotator,
        "region_answerable": region_answerable,
        "answer_correct": answer_correct,
        "x1": x1,
        "y1": y1,
        "x2": x2,
        "y2": y2,
        "lead_time_s": 5.0,
        "created_at": created_at,
        "comment": comment,
    }


@pytest.fixture
def write_labels(tmp_path):
    def write(rows: list[dict]) -> str:
        path = tmp_path / "labels.parquet"
        pq.write_table(pa.Table.from_pylist(rows, schema=LABELS_SCHEMA), path)
        return str(path)

    return write


def run_stage(rows: list[dict], labels_path: str, **params):
    stage = stage_registry.get("labels")(labels=labels_path, **params)
    return stage.process(rows_to_table(rows))


def test_replace_reject_and_pass_through(write_labels):
    path = write_labels([label("s/moved"), label("s/wrong", answer_correct=False)])
    res = run_stage([sample("s/moved"), sample("s/wrong"), sample("s/untouched")], path)
    kept = {r["id"]: r for r in res.kept.to_pylist()}
    assert set(kept) == {"s/moved", "s/untouched"}
    assert [(r["id"], r["reason"], r["stage"]) for r in res.rejected] == [
        ("s/wrong", "human_rejected_answer", "labels")
    ]
    assert "ann@example.com" in res.rejected[0]["detail"] and "'red'" in res.rejected[0]["detail"]
    moved = kept["s/moved"]
    assert moved["boxes"] == [
        {"x1": 100.0, "y1": 100.0, "x2": 150.0, "y2": 140.0, "label": "cat", "source": "human"}
    ]
    assert moved["needs_review"] is False
    assert moved["box_area_frac"] == pytest.approx(50 * 40 / (W * H))
    assert (moved["annotators"], moved["region_answerable"], moved["review_reason"]) == (1, True, None)
    validate_row(moved)
    untouched = sample("s/untouched")
    assert {k: kept["s/untouched"][k] for k in untouched} == untouched
    assert kept["s/untouched"]["annotators"] == 0 and kept["s/untouched"]["review_reason"] is None


def test_join_keeps_machine_boxes_and_is_idempotent(write_labels):
    path = write_labels([label("s/a")])
    once = run_stage([sample("s/a")], path, box="join").kept
    twice = run_stage(once.to_pylist(), path, box="join").kept
    boxes = once.to_pylist()[0]["boxes"]
    assert [b["source"] for b in boxes] == ["annotation", "human"]
    assert twice.to_pylist()[0]["boxes"] == boxes
    union = Box.union(Box.from_record(b) for b in boxes)
    assert once.to_pylist()[0]["box_area_frac"] == pytest.approx(union.area / (W * H))


def test_an_annotators_latest_label_wins_and_missing_box_keeps_machine_boxes(write_labels):
    path = write_labels(
        [
            label("s/a", answer_correct=False, created_at="2026-01-01T10:00:00Z", annotator="ann"),
            label("s/a", box=None, answer_correct=True, created_at="2026-01-02T10:00:00Z", annotator="ann"),
        ]
    )
    res = run_stage([sample("s/a")], path)
    assert res.rejected == []
    row = res.kept.to_pylist()[0]
    assert row["boxes"] == sample("s/a")["boxes"] and row["needs_review"] is False and row["annotators"] == 1


def test_unanswerable_is_flagged_by_default_rejected_when_asked(write_labels):
    path = write_labels([label("s/a", region_answerable=False)])
    row = run_stage([sample("s/a")], path).kept.to_pylist()[0]
    assert row["needs_review"] is True and row["region_answerable"] is False
    assert "region_answerable: ann@example.com says no" in row["review_reason"]
    res = run_stage([sample("s/a")], path, on_unanswerable="reject")
    assert res.kept.num_rows == 0 and res.rejected[0]["reason"] == "human_region_unanswerable"


def test_two_annotators_agree_disagree_and_comments(write_labels):
    a, b = "a@example.com", "b@example.com"
    path = write_labels(
        [
            # agree on everything, boxes overlap (IoU 0.8): their union replaces the machine box
            label("s/agree", box=(100.0, 100.0, 150.0, 140.0), annotator=a, comment="fine"),
            label("s/agree", box=(100.0, 100.0, 140.0, 140.0), annotator=b, comment="  "),
            # disagree on the answer: kept for review, machine boxes untouched by the disputed answer
            label("s/answer", answer_correct=True, annotator=a),
            label("s/answer", answer_correct=False, annotator=b, comment="it is blue"),
            # both say wrong: rejected
            label("s/wrong", answer_correct=False, annotator=a),
            label("s/wrong", answer_correct=False, annotator=b),
            # boxes far apart: the machine boxes stay, flagged
            label("s/boxes", box=(0.0, 0.0, 40.0, 40.0), annotator=a),
            label("s/boxes", box=(300.0, 200.0, 340.0, 240.0), annotator=b),
            # one annotator only, two required
            label("s/single", annotator=a),
        ]
    )
    rows = [sample(s) for s in ("s/agree", "s/answer", "s/wrong", "s/boxes", "s/single")]
    res = run_stage(rows, path, min_annotators=2)
    kept = {r["id"]: r for r in res.kept.to_pylist()}
    assert [(r["id"], r["reason"]) for r in res.rejected] == [("s/wrong", "human_rejected_answer")]
    assert f"{a}, {b} marked the answer 'red' wrong" in res.rejected[0]["detail"]

    agree = kept["s/agree"]
    assert (agree["needs_review"], agree["annotators"], agree["review_reason"]) == (False, 2, None)
    assert agree["review_comment"] == f"{a}: fine"
    assert [(b_["x1"], b_["x2"], b_["source"]) for b_ in agree["boxes"]] == [(100.0, 150.0, "human")]

    answer = kept["s/answer"]
    assert answer["needs_review"] is True and answer["annotators"] == 2
    assert answer["review_reason"] == f"answer_correct: {a} says correct, {b} says wrong"
    assert answer["review_comment"] == f"{b}: it is blue"

    boxes = kept["s/boxes"]
    assert boxes["needs_review"] is True and boxes["boxes"] == sample("s/boxes")["boxes"]
    assert f"box: {a} and {b} overlap with IoU 0.00 < 0.5" in boxes["review_reason"]

    single = kept["s/single"]
    assert single["needs_review"] is True and single["review_reason"] == "1 annotator(s), 2 required"

    strict = run_stage(rows, path, on_disagreement="reject")
    assert sorted((r["id"], r["reason"]) for r in strict.rejected) == [
        ("s/answer", "human_disagreement"), ("s/boxes", "human_disagreement"), ("s/wrong", "human_rejected_answer")
    ]
    assert strict.kept.schema.field("annotators").type == pa.int32()
    assert strict.kept.schema.field("region_answerable").type == pa.bool_()


def test_review_columns_keep_their_types_in_a_batch_nobody_reviewed(write_labels):
    path = write_labels([label("s/a")])
    table = run_stage([sample("s/other")], path).kept
    assert table.schema.field("region_answerable").type == pa.bool_()
    assert table.schema.field("review_comment").type == pa.string()


def test_human_box_outside_the_image(write_labels):
    path = write_labels(
        [
            label("s/clamped", box=(350.0, 250.0, 420.0, 320.0)),
            label("s/outside", box=(500.0, 500.0, 600.0, 600.0)),
        ]
    )
    res = run_stage([sample("s/clamped"), sample("s/outside")], path)
    assert res.kept.to_pylist()[0]["boxes"][0] == {
        "x1": 350.0,
        "y1": 250.0,
        "x2": 400.0,
        "y2": 300.0,
        "label": "cat",
        "source": "human",
    }
    assert [(r["id"], r["reason"]) for r in res.rejected] == [("s/outside", "human_box_invalid")]
    assert "outside" in res.rejected[0]["detail"]


def test_bad_labels_file_is_a_recipe_error(tmp_path):
    with pytest.raises(RecipeError, match="not found"):
        stage_registry.get("labels")(labels=str(tmp_path / "nope.parquet"))
    pq.write_table(pa.table({"id": ["a"], "x1": [1.0]}), tmp_path / "partial.parquet")
    with pytest.raises(RecipeError, match="lacks columns"):
        stage_registry.get("labels")(labels=str(tmp_path / "partial.parquet"))
    (tmp_path / "text.parquet").write_text("not parquet")
    with pytest.raises(RecipeError, match="not a Parquet file"):
        stage_registry.get("labels")(labels=str(tmp_path / "text.parquet"))
    with pytest.raises(RecipeError, match="box"):
        stage_registry.get("labels")(labels=str(tmp_path / "partial.parquet"), box="merge")
    with pytest.raises(RecipeError, match="min_annotators"):
        stage_registry.get("labels")(labels=str(tmp_path / "partial.parquet"), min_annotators=0)


def test_parquet_source_keeps_ids_and_rejects_bad_rows(tmp_path):
    good = sample("old/a")
    bad = dict(sample("old/b"), question="  ")
    (tmp_path / "data").mkdir()
    pq.write_table(rows_to_table([good, bad]), tmp_path / "data" / "part-0.parquet")
    items = list(source_registry.get("parquet")(name="v1", path=str(tmp_path)).read())
    row, reject = items
    assert row["id"] == "old/a" and row["source"] == "v1"
    assert json.loads(row["provenance"])["previous_source"] == "s"
    assert reject.row["id"] == "old/b" and reject.reason == "bad_record" and "question" in reject.detail
    (tmp_path / "empty").mkdir()
    with pytest.raises(RecipeError, match="no .parquet files"):
        list(source_registry.get("parquet")(name="v1", path=str(tmp_path / "empty")).read())


def test_merge_recipe_end_to_end(tmp_path, write_labels):
    curated = tmp_path / "v1"
    (curated / "data").mkdir(parents=True)
    pq.write_table(
        rows_to_table([sample("s/a"), sample("s/b"), sample("s/c")]), curated / "data" / "part.parquet"
    )
    path = write_labels([label("s/a"), label("s/b", answer_correct=False)])
    recipe = parse_recipe(
        {
            "name": "merge",
            "sources": [{"type": "parquet", "name": "v1", "path": str(curated)}],
            "stages": [{"type": "labels", "labels": path}, {"type": "box_check"}],
        }
    )
    stats = run_pipeline(recipe, tmp_path / "v2", quiet=True)
    assert stats["invariant"]["ok"] and stats["totals"] == {"inputs": 3, "kept": 2, "rejected": 1}
    kept = {r["id"]: r for r in pq.read_table(tmp_path / "v2" / "data").to_pylist()}
    assert kept["s/a"]["boxes"][0]["source"] == "human" and kept["s/c"]["boxes"][0]["source"] == "annotation"
    rejects = pq.read_table(tmp_path / "v2" / "rejects").to_pylist()
    assert [(r["id"], r["reason"]) for r in rejects] == [("s/b", "human_rejected_answer")]


def test_labels_written_before_comments_still_load(tmp_path):
    old_schema = pa.schema([f for f in LABELS_SCHEMA if f.name != "comment"])
    path = tmp_path / "old.parquet"
    row = {k: v for k, v in label("s/a").items() if k != "comment"}
    pq.write_table(pa.Table.from_pylist([row], schema=old_schema), path)
    kept = run_stage([sample("s/a")], str(path)).kept.to_pylist()[0]
    assert kept["annotators"] == 1 and kept["review_comment"] is None
