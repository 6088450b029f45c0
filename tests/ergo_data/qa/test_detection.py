"""Detection sets in their own layouts (YOLO, Pascal VOC, LabelMe, CVAT, Open Images) -> questions.

The real set is ``tests/data/detection`` (three V* photos and the sahi aerial image, hand-checked boxes, in
five layouts written by its ``make_detection_set.py``); the bad-input corpus is ``tests/data/make_bad_detection.py``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from ergo_data.cli.app import app
from ergo_data.core.errors import RecipeError
from ergo_data.pipeline.contract import Reject
from ergo_data.pipeline.executor.local import run_pipeline
from ergo_data.pipeline.recipe import parse_recipe
from ergo_data.qa.detection import Settings, read_detection
from ergo_data.qa.detection_tables import TableColumns
from ergo_data.qa.objects import AnnotatedImage, LoadProblem, load_annotated_images
from ergo_data.sources.questions import QuestionsSource
from tests.data.make_bad_detection import build
from tests.support.paths import ROOT

SET = ROOT / "tests" / "data" / "detection"
LAYOUTS = {
    "yolo": {"annotations": "data.yaml"},
    "voc": {"format": "voc", "annotations": "Annotations", "images": "images"},
    "labelme": {"format": "labelme", "annotations": "labelme"},
    "cvat": {"annotations": "cvat.xml"},
    "openimages": {"annotations": "openimages/boxes.csv", "names": "openimages/class-descriptions-boxable.csv"},
    "parquet": {"annotations": "hf/train.parquet"},
}


def objects_of(fmt: str, root: Path = SET) -> dict[str, list[tuple[str, tuple[float, ...]]]]:
    kw = dict(LAYOUTS[fmt])
    fmt_name = kw.pop("format", fmt)
    out = {}
    for im in read_detection(fmt_name, root, kw.pop("annotations"), settings=Settings(root.resolve(), True), **kw):
        assert isinstance(im, AnnotatedImage), im
        out[im.key] = sorted((o.label, o.box.as_tuple()) for o in im.objects)
    return out


def test_six_layouts_give_the_same_objects():
    reference = objects_of("yolo")
    assert sorted(reference) == ["images/doll", "images/queue_time", "images/terrain2", "images/vending_machine"]
    assert sum(map(len, reference.values())) == 18
    for fmt in ("voc", "labelme", "cvat", "openimages", "parquet"):
        got = objects_of(fmt)
        assert sorted(got) == sorted(reference), fmt
        for key, objs in reference.items():
            for (la, a), (lb, b) in zip(objs, got[key], strict=True):
                # the files round differently (YOLO 6 decimals normalised, VOC 0.1 px, CVAT 0.01 px, HF float32)
                assert la == lb and max(abs(p - q) for p, q in zip(a, b)) < 0.06, (fmt, key, la)


def test_ids_do_not_depend_on_where_the_set_lies(tmp_path):
    """Same set at two paths -> the same ids, none of them holding a path; also for a jsonl that names its
    images by absolute path (the issue's `aerial//tmp/...` ids)."""
    ids = []
    for where in (tmp_path / "a" / "set", tmp_path / "b" / "deeper" / "copy"):
        shutil.copytree(SET, where, ignore=shutil.ignore_patterns("*.py"))
        rows = list(QuestionsSource(name="det", path=str(where), exhaustive=True, **LAYOUTS["yolo"]).read())
        ids.append(sorted(r["id"] if isinstance(r, dict) else r.row["id"] for r in rows))
        assert not any(str(tmp_path) in i for i in ids[-1])
        line = {"image": str(where / "images" / "doll.jpg"),
                "objects": [{"label": "doll", "box_xyxy": [1194, 790, 1261, 906]}]}
        (where / "abs.jsonl").write_text(json.dumps(line) + "\n")
        [doll] = load_annotated_images(where / "abs.jsonl", where)
        assert doll.key == "images/doll"
    assert ids[0] == ids[1] and len(set(ids[0])) == len(ids[0]) > 0


def test_class_names_are_checked(tmp_path):
    root = tmp_path / "set"
    shutil.copytree(SET, root, ignore=shutil.ignore_patterns("*.py"))
    (root / "data.yaml").write_text("nc: 3\nnames: [car, truck]\n")
    with pytest.raises(RecipeError, match="nc = 3 but `names` has 2"):
        list(QuestionsSource(name="d", path=str(root), **LAYOUTS["yolo"]).read())
    (root / "data.yaml").write_text("names: [car]\n")  # every class id above 0 is now outside the names
    rows = list(QuestionsSource(name="d", path=str(root), **LAYOUTS["yolo"]).read())
    unknown = [r for r in rows if isinstance(r, Reject) and r.reason == "unknown_class"]
    lines = [t for f in sorted((root / "labels").glob("*.txt")) for t in f.read_text().splitlines()]
    assert len(unknown) == sum(not t.startswith("0 ") for t in lines) > 10
    assert any("labels/doll.txt:1: class id 2 is outside the names (0..0)" in r.detail for r in unknown)
    (root / "data.yaml").unlink()
    with pytest.raises(RecipeError, match="no class names"):
        list(QuestionsSource(name="d", path=str(root), format="yolo").read())
    rows = list(QuestionsSource(name="d", path=str(SET), classes=["doll"], **LAYOUTS["cvat"]).read())
    assert {r.reason for r in rows if isinstance(r, Reject) and "/object" in r.row["id"]} == {"unknown_class"}


def test_bad_input_corpus_each_fault_is_a_reject_naming_file_and_line(tmp_path):
    """Through the real pipeline: each fault a reject of the source naming file and line, the good items
    (and the good box of an image with bad lines) still make questions, inputs = kept + rejected."""
    specs, expects = build(tmp_path / "corpus")
    recipe = {"name": "bad_detection", "sources": [dict(s, templates=["spatial", "counting"]) for s in specs],
              "stages": [{"type": "decode"}, {"type": "box_check"}], "output": {"plots": False}}
    stats = run_pipeline(parse_recipe(recipe), tmp_path / "out", quiet=True)
    assert stats["invariant"]["ok"]
    rejects = {r["id"]: r for r in pq.read_table(tmp_path / "out" / "rejects").to_pylist()}
    for e in expects:
        assert e.id in rejects, (e, sorted(rejects))
        r = rejects[e.id]
        assert (r["stage"], r["reason"]) == ("source:questions", e.reason) and e.detail in r["detail"], (e, r)
    kept = pq.read_table(tmp_path / "out" / "data").to_pylist()
    images = {r["id"].rsplit("/", 2)[0] for r in kept}
    assert images == {"yolo/images/good", "voc/JPEGImages/good", "labelme/good"}
    # lines.jpg keeps its one good car, but its bad lines (one of unknown class) end exhaustiveness: no count
    assert rejects["yolo/images/lines/counting/car"]["reason"] == "count_not_exhaustive"


def test_bad_lines_end_exhaustiveness_of_their_label(tmp_path):
    build(tmp_path)
    images = {i.key: i for i in read_detection("yolo", tmp_path / "yolo", exhaustive=True)
              if isinstance(i, AnnotatedImage)}
    assert images["images/good"].exhaustive is True
    # lines.txt has a class id outside the names: which label it meant is unknown, so nothing is exhaustive
    assert images["images/lines"].exhaustive is False and len(images["images/lines"].objects) == 1
    voc = {i.key: i for i in read_detection("voc", tmp_path / "voc", exhaustive=True,
                                            classes=frozenset({"car", "person"}))
           if isinstance(i, AnnotatedImage)}
    assert voc["JPEGImages/outside"].exhaustive == frozenset({"person"})  # the bad car box: car not exhaustive
    problems = [p for p in read_detection("labelme", tmp_path / "labelme") if isinstance(p, LoadProblem)]
    assert {p.reason for p in problems} == {"unsupported_shape", "path_escapes_root", "malformed_json"}


def test_ergo_run_on_yolo_voc_and_labelme_folders(tmp_path, monkeypatch):
    """``ergo run pipelines/detection_<fmt>.yaml``: a curated set with questions, rejects with reasons
    (the aerial image's zoom adds nothing) and a card with the zoom-gain histogram; the three layouts of the
    same set give the same samples."""
    monkeypatch.chdir(ROOT)
    summaries = {}
    for fmt in ("yolo", "voc", "labelme"):
        out = tmp_path / fmt
        res = CliRunner().invoke(app, ["run", f"pipelines/detection_{fmt}.yaml", "--out", str(out), "-q"],
                                 catch_exceptions=False)
        assert res.exit_code == 0, res.output
        stats = json.loads((out / "stats.json").read_text())
        assert stats["invariant"]["ok"]
        kept = pq.read_table(out / "data").to_pylist()
        rejects = pq.read_table(out / "rejects").to_pylist()
        assert kept and all(r["boxes"] and r["question"] and r["answer"] for r in kept)
        assert {"no_unique_referent", "region_legible_without_zoom", "zoom_adds_no_detail"} <= {
            r["reason"] for r in rejects}
        terrain = [r for r in rejects if r["id"].startswith("detection/images/terrain2/")]
        assert any(r["reason"] == "zoom_adds_no_detail" for r in terrain)
        assert not any(r["id"].startswith("detection/images/terrain2/") for r in kept)
        card = (out / "README.md").read_text()
        assert "Zoom gain per item" in card and (out / "plots" / "zoom_gain.png").is_file()
        summaries[fmt] = sorted((r["id"], r["answer"], r["category"]) for r in kept)
    assert summaries["yolo"] == summaries["voc"] == summaries["labelme"]


def test_hugging_face_parquet_with_a_bbox_column(tmp_path):
    """A HF object-detection table written by ``datasets`` (Image with embedded bytes, ``objects.bbox`` in
    COCO xywh, ``objects.category`` a ClassLabel whose names live in the Parquet metadata) gives the same
    objects as the YOLO layout of the same set."""
    import datasets

    images = [i for i in read_detection("yolo", SET) if isinstance(i, AnnotatedImage)]
    names = sorted({o.label for i in images for o in i.objects})
    features = datasets.Features({
        "image": datasets.Image(), "width": datasets.Value("int32"), "height": datasets.Value("int32"),
        "objects": datasets.Sequence({"bbox": datasets.Sequence(datasets.Value("float32"), length=4),
                                      "category": datasets.ClassLabel(names=names)})})
    rows = {"image": [{"bytes": i.image_path.read_bytes(), "path": i.image_path.name} for i in images],
            "width": [i.size[0] for i in images], "height": [i.size[1] for i in images],
            "objects": [{"bbox": [o.box.to_coco() for o in i.objects], "category": [names.index(o.label) for o in i.objects]}
                        for i in images]}
    rows["objects"][0]["category"].append(0)  # one label too many: the row cannot be paired up
    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(tmp_path / "train.parquet"))
    got = {i.key: i for i in read_detection("parquet", tmp_path, "train.parquet", exhaustive=True,
                                            table=TableColumns(images_out=str(tmp_path / "extracted")))}
    first = images[0].image_path.stem
    assert isinstance(got[first], LoadProblem) and got[first].reason == "malformed_row"
    assert "train.parquet row 0" in got[first].detail
    for i in images[1:]:
        hf = got[i.image_path.stem]
        assert isinstance(hf, AnnotatedImage) and hf.size == i.size
        for a, b in zip(sorted((o.label, o.box.as_tuple()) for o in hf.objects),
                        sorted((o.label, o.box.as_tuple()) for o in i.objects), strict=True):
            assert a[0] == b[0] and max(abs(p - q) for p, q in zip(a[1], b[1])) < 1e-3  # float32 in the table
    without = list(read_detection("parquet", tmp_path, "train.parquet"))
    assert {p.reason for p in without} == {"image_not_extracted", "malformed_row"}


def test_yolo_boxes_on_the_stored_frame_use_the_stored_size(tmp_path):
    """A phone photo stored 64x32 with EXIF orientation 6 (displayed 32x64): normalised boxes scale by the
    size of the frame they were drawn on (``boxes_frame``); ``decode`` later turns stored boxes upright."""
    from tests.data.make_bad_inputs import encode, photo

    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    (tmp_path / "images" / "phone.jpg").write_bytes(encode(photo(64, 32), "JPEG", orientation=6))
    (tmp_path / "labels" / "phone.txt").write_text("0 0.25 0.5 0.25 0.5\n")
    (tmp_path / "classes.txt").write_text("sign\n")
    [displayed] = read_detection("yolo", tmp_path)
    [stored] = read_detection("yolo", tmp_path, stored_frame=True)
    assert displayed.size == (32, 64) and displayed.objects[0].box.as_tuple() == (4.0, 16.0, 12.0, 48.0)
    assert stored.size == (64, 32) and stored.objects[0].box.as_tuple() == (8.0, 8.0, 24.0, 24.0)


def test_a_cvat_video_export_is_a_clear_error(tmp_path):
    (tmp_path / "video.xml").write_text('<annotations><track id="0" label="car"><box frame="0" xtl="1" ytl="1" '
                                        'xbr="5" ybr="5"/></track></annotations>')
    with pytest.raises(RecipeError, match="CVAT for video"):
        list(QuestionsSource(name="v", path=str(tmp_path), annotations="video.xml").read())
