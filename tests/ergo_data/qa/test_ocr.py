"""OCR with the real RapidOCR engine: the queue_time board at full resolution, a rendered document
(texts and boxes), tiling without downscaling, and the ``ocr_docs`` source built on it."""

from __future__ import annotations

import importlib.util
import itertools
import json

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ergo_data.core.boxes import Box
from ergo_data.core.imageio import open_rgb
from ergo_data.qa.ocr import (
    OcrEngine,
    OcrLine,
    OcrUnavailableError,
    merge_tile_lines,
    tile_origins,
    to_rgb_array,
)
from ergo_data.sources.ocr_docs import OcrDocsSource, cut_by_region, render_document
from tests.support.paths import EXAMPLES, ROOT

BOARD = Box(1567, 1518, 1742, 1672)  # hand-labelled box of the black framed board (examples/boxes.jsonl)
DOC_LINES = ["WAREHOUSE RECEIPT", "Order 4471", "Coffee beans 12.50", "Paper filters 3.20", "Total due 15.70"]


@pytest.fixture(scope="module")
def engine() -> OcrEngine:
    return OcrEngine()


@pytest.fixture(scope="module")
def queue_time() -> np.ndarray:
    return np.asarray(open_rgb((EXAMPLES / "vstar" / "queue_time.jpg").read_bytes()))


@pytest.fixture(scope="module")
def document():
    return render_document(DOC_LINES, (900, 560), font_px=40)


@pytest.mark.integration
def test_reads_the_board_at_full_resolution(engine, queue_time):
    assert queue_time.shape[:2] == (3024, 4032)  # no downscaling before the crop
    region = BOARD.expand(0.5, (4032, 3024))
    lines = engine.read(queue_time, region=region)
    by_text = {ln.text: ln for ln in lines}
    assert {"STAND-BY", "ENTRANCE"} <= set(by_text), [ln.text for ln in lines]
    stand_by, entrance = by_text["STAND-BY"], by_text["ENTRANCE"]
    for ln in (stand_by, entrance):
        assert ln.score > 0.95
        assert ln.box.intersection_area(BOARD) / ln.box.area > 0.9  # the text lies on the board
    assert stand_by.box.center[1] < entrance.box.center[1]  # STAND-BY is printed above ENTRANCE


@pytest.mark.integration
def test_reads_a_rendered_document_with_boxes_on_the_text(engine, document):
    page, truth = document
    lines = engine.read(page)
    assert [ln.text for ln in lines] == DOC_LINES
    for ln, (text, true_box) in zip(lines, truth):
        assert ln.box.iou(true_box) > 0.6, (text, ln.box, true_box)


@pytest.mark.integration
def test_tiles_merge_to_the_same_lines_as_one_pass(engine, document):
    page, truth = document
    # 900x560 page in 500-px tiles overlapping by 240 px: every line (<= 416 px wide) lies whole in the
    # first tile column and is cut in the others; the cut readings ("IPT", "RECEIPT"...) must be merged away.
    tiled = OcrEngine(tile_side=500, tile_overlap=240)
    tiled._engine = engine.engine  # share the loaded models (a second model load only costs time)
    assert tile_origins(900, 500, 240) == [0, 260, 400] and tile_origins(560, 500, 240) == [0, 60]
    lines = tiled.read(page)
    assert [ln.text for ln in lines] == DOC_LINES
    for ln, (_, true_box) in zip(lines, truth):
        assert ln.box.iou(true_box) > 0.6


@pytest.mark.integration
def test_blank_image_gives_no_lines(engine):
    assert engine.read(np.full((200, 300, 3), 255, np.uint8)) == []


@given(st.integers(1, 5000), st.integers(64, 2000), st.data())
def test_tile_origins_cover_with_overlap(length, tile, data):
    overlap = data.draw(st.integers(0, tile // 2 - 1))
    starts = tile_origins(length, tile, overlap)
    assert starts[0] == 0 and starts == sorted(set(starts))
    assert min(starts[-1] + tile, length) == length or starts[-1] + tile >= length
    for a, b in itertools.pairwise(starts):
        assert a + tile - b >= overlap  # neighbours share at least `overlap` px


def test_merge_keeps_the_uncut_reading():
    whole = OcrLine(Box(100, 10, 300, 40), "ENTRANCE", 0.99)
    cut = OcrLine(Box(200, 10, 300, 40), "ANCE", 0.999)
    other = OcrLine(Box(100, 60, 300, 90), "STAND-BY", 0.99)
    assert [ln.text for ln in merge_tile_lines([cut, other, whole])] == ["ENTRANCE", "STAND-BY"]


def test_input_checks():
    with pytest.raises(TypeError, match="uint8"):
        to_rgb_array(np.zeros((4, 4, 3), np.float32))
    with pytest.raises(TypeError, match="shape"):
        to_rgb_array(np.zeros((4, 4, 5), np.uint8))
    assert to_rgb_array(np.zeros((4, 5), np.uint8)).shape == (4, 5, 3)
    with pytest.raises(ValueError, match="tile_side"):
        OcrEngine(tile_side=4000)


def test_missing_extra_names_the_install_command(monkeypatch):
    # Uninstalling rapidocr from the shared venv is not an option: fake its absence for the import check.
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "rapidocr" else real(name, *a))
    with pytest.raises(OcrUnavailableError, match=r"pip install 'ergo-workbench\[ocr\]'"):
        OcrEngine()


@pytest.mark.integration
def test_ocr_docs_source_asks_about_the_board(engine, tmp_path):
    ann = tmp_path / "board.jsonl"
    ann.write_text('{"image": "vstar/queue_time.jpg", "objects": [{"label": "black framed board", '
                   '"box_xyxy": [1567, 1518, 1742, 1672], "box_source": "human"}]}\n')
    rows = [r for r in OcrDocsSource(name="ocr", path=str(EXAMPLES), annotations=str(ann)).read()
            if isinstance(r, dict)]
    entrance = [r for r in rows if r["answer"] == "ENTRANCE"]
    assert entrance and entrance[0]["question"] == 'What is written directly below "STAND-BY" on the black framed board?'
    row = entrance[0]
    assert row["category"] == "ocr" and row["needs_review"] is False
    assert [(b["label"], b["source"]) for b in row["boxes"]] == [("answer text", "ocr"), ("anchor text", "ocr")]
    assert row["answer_letter"] and row["options"][ord(row["answer_letter"]) - 65] == "ENTRANCE"
    # lines read with low confidence (the garbled "WAIT TIME" line, score ~0.8) are flagged, not silently kept
    scores = {r["answer"]: json.loads(r["provenance"])["score"] for r in rows}
    assert all(r["needs_review"] == (scores[r["answer"]] < 0.9) for r in rows)
    assert any(r["needs_review"] for r in rows)


@pytest.mark.integration
def test_ocr_docs_source_reads_a_rendered_document(tmp_path, document, engine):
    page, truth = document
    (tmp_path / "docs").mkdir()
    page.save(tmp_path / "docs" / "receipt.png")
    rows = list(OcrDocsSource(name="docs", path=str(tmp_path / "docs")).read())
    assert all(isinstance(r, dict) for r in rows), rows
    assert sorted(r["answer"] for r in rows) == sorted(DOC_LINES)
    true_box = dict(truth)
    for r in rows:
        answer_box = Box.from_record(r["boxes"][0])
        assert answer_box.iou(true_box[r["answer"]]) > 0.6
        assert r["question"].startswith("What is written directly ")
        assert r["image"]["path"] == str(tmp_path / "docs" / "receipt.png")


def test_text_cut_by_the_read_region_is_rejected():
    assert cut_by_region(Box(10, 10, 50, 20), Box(10, 0, 100, 100), (200, 200))
    assert not cut_by_region(Box(20, 10, 50, 20), Box(10, 0, 100, 100), (200, 200))
    assert ROOT.is_dir()
