"""Benchmark loaders: V* (the project's examples and synthetic folders), HR-Bench TSV, MME-RealWorld json.

Every malformed item must come back as a BadItem with a reason, never be skipped.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from ergo_data.core.boxes import Box
from ergo_data.pipeline.registry import source_registry
from ergo_train.eval.loaders import BadItem, BenchFormatError, BenchItem, load_bench
from tests.support.paths import EXAMPLES

VSTAR = EXAMPLES / "vstar"


def png_bytes(size=(64, 48), color=(200, 30, 30)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


# ---- V* ----------------------------------------------------------------------------------------
def test_vstar_examples_load_with_shuffled_options_and_stored_letter():
    items = list(load_bench("vstar", VSTAR))
    jsons = sorted(VSTAR.glob("*.json"))
    assert len(items) == len(jsons) == 8
    assert all(isinstance(i, BenchItem) for i in items)
    for item, js in zip(items, jsons):
        meta = json.loads(js.read_text())
        assert item.id == f"vstar/{js.stem}"
        assert item.answer == meta["options"][0]  # the file puts the correct option first
        assert sorted(item.options) == sorted(meta["options"])
        assert item.options.index(meta["options"][0]) == ord(item.answer_letter) - ord("A")
        assert item.boxes == [Box.from_vstar(b) for b in meta["bbox"]]
        assert Path(item.image_path).stem == js.stem
    # the shuffle really moves the correct option off A for some items
    assert {i.answer_letter for i in items} != {"A"}


def test_vstar_uses_the_pipeline_reader_same_options_as_the_vstar_source():
    rows = list(source_registry.get("vstar")(name="vstar", path=str(VSTAR)).read())
    items = list(load_bench("vstar", VSTAR))
    assert [(r["id"], r["options"], r["answer_letter"]) for r in rows] == \
        [(i.id, i.options, i.answer_letter) for i in items]


def test_vstar_seed_changes_order_but_not_the_answer():
    a = list(load_bench("vstar", VSTAR, shuffle_seed=0))
    b = list(load_bench("vstar", VSTAR, shuffle_seed=1))
    assert [i.answer for i in a] == [i.answer for i in b]
    assert [i.options for i in a] != [i.options for i in b]
    assert [i.options for i in a] == [i.options for i in load_bench("vstar", VSTAR, shuffle_seed=0)]


def _vstar_item(folder: Path, stem: str, image: bool = True, **meta) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    body = {"question": "What colour is the mug?", "options": ["red", "blue"], "bbox": [[4, 4, 10, 8]],
            "target_object": ["mug"]}
    body.update(meta)
    (folder / f"{stem}.json").write_text(json.dumps(body))
    if image:
        (folder / f"{stem}.png").write_bytes(png_bytes())


def test_vstar_category_subfolders_and_malformed_items_are_listed(tmp_path):
    _vstar_item(tmp_path / "direct_attributes", "a")
    _vstar_item(tmp_path / "relative_position", "b")
    _vstar_item(tmp_path / "relative_position", "no_image", image=False)
    _vstar_item(tmp_path / "relative_position", "bad_box", bbox=[[1, 2, -3, 4]])
    _vstar_item(tmp_path / "relative_position", "no_options", options=[])
    (tmp_path / "relative_position" / "broken.json").write_text("{not json")
    (tmp_path / "relative_position" / "broken.png").write_bytes(png_bytes())
    items = {i.id: i for i in load_bench("vstar", tmp_path)}
    assert len(items) == 6  # one per json: nothing skipped
    assert items["vstar/direct_attributes/a"].category == "direct_attributes"
    assert items["vstar/relative_position/b"].category == "relative_position"
    bad = {k: (v.reason, v.category) for k, v in items.items() if isinstance(v, BadItem)}
    assert bad == {
        "vstar/relative_position/no_image": ("image_missing", "relative_position"),
        "vstar/relative_position/bad_box": ("bad_box", "relative_position"),
        "vstar/relative_position/no_options": ("bad_options", "relative_position"),
        "vstar/relative_position/broken": ("malformed_json", "relative_position"),
    }
    assert "broken.json" in items["vstar/relative_position/broken"].detail


def test_vstar_empty_or_missing_folder_is_an_error(tmp_path):
    with pytest.raises(BenchFormatError, match="no \\*.json"):
        list(load_bench("vstar", tmp_path))
    with pytest.raises(BenchFormatError, match="does not exist"):
        list(load_bench("vstar", tmp_path / "nope"))
    with pytest.raises(BenchFormatError, match="unknown bench"):
        list(load_bench("vqa", tmp_path))


def test_limit_keeps_the_first_items_bad_ones_included(tmp_path):
    _vstar_item(tmp_path, "a", image=False)
    _vstar_item(tmp_path, "b")
    _vstar_item(tmp_path, "c")
    items = list(load_bench("vstar", tmp_path, limit=2))
    assert [i.id for i in items] == ["vstar/a", "vstar/b"] and isinstance(items[0], BadItem)


# ---- HR-Bench ----------------------------------------------------------------------------------
HR_HEADER = ["index", "question", "answer", "category", "A", "B", "C", "D", "image", "cycle_category"]


def _write_tsv(path: Path, rows: list[list[str]], header=HR_HEADER) -> Path:
    with path.open("w", encoding="utf-8", newline="") as f:
        w = csv.writer(f, delimiter="\t")
        w.writerow(header)
        w.writerows(rows)
    return path


def test_hrbench_tsv_items_references_and_every_malformed_row(tmp_path):
    red = base64.b64encode(png_bytes(color=(255, 0, 0))).decode()
    blue = base64.b64encode(png_bytes((80, 60), (0, 0, 255))).decode()
    tsv = _write_tsv(tmp_path / "hr_bench_4k.tsv", [
        ["0", "What colour is the car?", "B", "single", "red", "blue", "green", "white", red, "0"],
        ["1", "Same image, other question?", "D", "single", "a", "b", "c", "d", "0", "1"],  # refers to row 0's image
        ["2", "Which one?", "a", "cross", "w", "x", "y", "z", blue, ""],  # lower-case letter accepted
        ["3", "Bad letter?", "E", "single", "a", "b", "c", "d", blue, ""],
        ["4", "", "A", "single", "a", "b", "c", "d", blue, ""],
        ["5", "Bad image?", "A", "single", "a", "b", "c", "d", "not*base64!", ""],
        ["6", "Gap?", "A", "single", "a", "", "c", "d", blue, ""],
        ["7", "Not an image?", "A", "single", "a", "b", "c", "d", base64.b64encode(b"hello" * 20).decode(), ""],
        ["2", "Duplicate index?", "A", "single", "a", "b", "c", "d", blue, ""],
        ["9", "Too few fields", "A"],
        ["10", "Dangling reference?", "A", "single", "a", "b", "c", "d", "42", ""],
    ])
    items = list(load_bench("hrbench", tsv))
    assert len(items) == 11  # one per data row
    good = [i for i in items if isinstance(i, BenchItem)]
    assert [(i.id, i.answer_letter, i.answer, i.category) for i in good] == [
        ("hrbench/0", "B", "blue", "single"), ("hrbench/1", "D", "d", "single"), ("hrbench/2", "A", "w", "cross")]
    assert good[0].options == ["red", "blue", "green", "white"]  # the file fixes the letters: no shuffle
    assert good[1].image_bytes == good[0].image_bytes
    assert good[2].load_image().size == (80, 60) and good[2].load_image().getpixel((0, 0)) == (0, 0, 255)
    assert good[0].boxes == [] and good[0].gt_box is None
    bad = {i.id: i.reason for i in items if isinstance(i, BadItem)}
    assert bad == {"hrbench/3": "bad_answer", "hrbench/4": "missing_question", "hrbench/5": "bad_base64",
                   "hrbench/6": "bad_options", "hrbench/7": "unreadable_image", "hrbench/2": "duplicate_index",
                   "hrbench/line11": "malformed_row", "hrbench/10": "image_missing"}
    assert all("hr_bench_4k.tsv line" in i.detail for i in items if isinstance(i, BadItem))


def test_hrbench_folder_of_tsvs_prefixes_ids_and_checks_the_header(tmp_path):
    img = base64.b64encode(png_bytes()).decode()
    _write_tsv(tmp_path / "hr_bench_4k.tsv", [["0", "Q?", "A", "single", "a", "b", "c", "d", img, ""]])
    _write_tsv(tmp_path / "hr_bench_8k.tsv", [["0", "Q?", "B", "cross", "a", "b", "c", "d", img, ""]])
    assert [i.id for i in load_bench("hrbench", tmp_path)] == ["hrbench/hr_bench_4k/0", "hrbench/hr_bench_8k/0"]
    bad = _write_tsv(tmp_path / "x.tsv", [["0", "Q?"]], header=["index", "question"])
    with pytest.raises(BenchFormatError, match="missing column"):
        list(load_bench("hrbench", bad))
    with pytest.raises(BenchFormatError, match="no .tsv"):
        list(load_bench("hrbench", _empty(tmp_path)))


def _empty(tmp_path: Path) -> Path:
    d = tmp_path / "empty"
    d.mkdir()
    return d


# ---- MME-RealWorld -----------------------------------------------------------------------------
def _mme_entry(qid: str, image: str = "imgs/a.png", **over) -> dict:
    entry = {"Question_id": qid, "Image": image, "Text": "What is the number of buses?",
             "Question Type": "Multiple Choice",
             "Answer choices": ["(A) 13", "(B) 90", "(C) 77", "(D) 6", "(E) The image does not feature the buses"],
             "Ground truth": "D", "Task": "Perception", "Subtask": "Monitoring", "Category": "Vehicle/counting"}
    entry.update(over)
    return entry


def test_mme_json_items_and_every_malformed_entry(tmp_path):
    (tmp_path / "imgs").mkdir()
    (tmp_path / "imgs" / "a.png").write_bytes(png_bytes())
    (tmp_path / "outside.png").write_bytes(png_bytes())
    entries = [
        _mme_entry("perception/monitoring/0001"),
        _mme_entry("reasoning/diagram/0002", Task="Reasoning", Subtask="Diagram and Table", **{"Ground truth": "b"}),
        _mme_entry("bad/choices", **{"Answer choices": ["(A) 1", "(C) 2"]}),
        _mme_entry("bad/truth", **{"Ground truth": "F"}),
        _mme_entry("bad/image", image="imgs/missing.png"),
        _mme_entry("bad/escape", image="../outside.png"),
        _mme_entry("perception/monitoring/0001"),
        {k: v for k, v in _mme_entry("bad/no_text").items() if k != "Text"},
        "not an object",
    ]
    (tmp_path / "MME_RealWorld.json").write_text(json.dumps(entries))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "outside.png").write_bytes(png_bytes())
    items = list(load_bench("mme", tmp_path))
    assert len(items) == len(entries)
    good = [i for i in items if isinstance(i, BenchItem)]
    assert [(i.id, i.answer_letter, i.answer, i.category) for i in good] == [
        ("mme/perception/monitoring/0001", "D", "6", "Perception/Monitoring"),
        ("mme/reasoning/diagram/0002", "B", "90", "Reasoning/Diagram and Table")]
    assert good[0].options[-1] == "The image does not feature the buses"  # "(E) " prefix stripped
    assert good[0].load_image().size == (64, 48)
    bad = {i.id: i.reason for i in items if isinstance(i, BadItem)}
    assert bad == {"mme/bad/choices": "bad_options", "mme/bad/truth": "bad_answer", "mme/bad/image": "image_missing",
                   "mme/bad/escape": "image_outside_root", "mme/perception/monitoring/0001": "duplicate_id",
                   "mme/bad/no_text": "missing_field", "mme/entry8": "malformed_entry"}


def test_mme_input_errors(tmp_path):
    (tmp_path / "a.json").write_text(json.dumps({"not": "a list"}))
    with pytest.raises(BenchFormatError, match="must be a list"):
        list(load_bench("mme", tmp_path))
    (tmp_path / "b.json").write_text("[]")
    with pytest.raises(BenchFormatError, match="expected one .json"):
        list(load_bench("mme", tmp_path))
    assert list(load_bench("mme", tmp_path / "b.json")) == []
    (tmp_path / "c.json").write_text("[1, 2")
    with pytest.raises(BenchFormatError, match="malformed JSON"):
        list(load_bench("mme", tmp_path / "c.json"))


option_text = st.text(st.characters(blacklist_categories=("Cs", "Cc", "Zs", "Zl", "Zp")), min_size=1, max_size=20)


@settings(max_examples=40)
@given(st.lists(option_text, min_size=2, max_size=6), st.data())
def test_mme_choices_round_trip_property(tmp_path_factory, options, data):
    root = tmp_path_factory.mktemp("mme")
    (root / "a.png").write_bytes(png_bytes((8, 8)))
    letter = data.draw(st.sampled_from("ABCDEF"[: len(options)]))
    entry = _mme_entry("q", image="a.png", **{"Answer choices": [f"({chr(65 + i)}) {o}" for i, o in enumerate(options)],
                                              "Ground truth": letter})
    (root / "q.json").write_text(json.dumps([entry]))
    (item,) = load_bench("mme", root)
    assert item.options == options and item.answer == options["ABCDEF".index(letter)]


def test_vstar_json_may_name_its_image_and_the_stem_rule_still_holds(tmp_path):
    (tmp_path / "street.png").write_bytes(png_bytes((640, 480)))
    (tmp_path / "pair.png").write_bytes(png_bytes((320, 240)))
    (tmp_path.parent / "outside.png").write_bytes(png_bytes())
    meta = {"options": ["red", "blue"], "bbox": [[10, 10, 40, 30]], "target_object": ["car"]}
    for stem, extra in [("q_car", {"image": "street.png"}), ("q_sign", {"image": "street.png"}), ("pair", {}),
                        ("q_gone", {"image": "nowhere.png"}), ("q_out", {"image": "../outside.png"})]:
        (tmp_path / f"{stem}.json").write_text(json.dumps({"question": f"{stem}?", **meta, **extra}))
    got = {i.id: i for i in load_bench("vstar", tmp_path)}
    assert got["vstar/q_car"].image_path == got["vstar/q_sign"].image_path == str(tmp_path / "street.png")
    assert got["vstar/pair"].image_path == str(tmp_path / "pair.png")  # the stem rule
    for bad in ("vstar/q_gone", "vstar/q_out"):
        assert isinstance(got[bad], BadItem) and got[bad].reason == "image_missing"
        assert "names image" in got[bad].detail
    rows = list(source_registry.get("vstar")(name="v", path=str(tmp_path)).read())  # the curation source too
    kept = {r["id"]: r for r in rows if isinstance(r, dict)}
    assert kept["v/q_car"]["image"]["path"] == kept["v/q_sign"]["image"]["path"]
    assert sorted(kept) == ["v/pair", "v/q_car", "v/q_sign"] and len(rows) == 5
