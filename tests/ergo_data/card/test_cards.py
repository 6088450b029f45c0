"""Data cards (offline, parse only): the card parses as a DatasetCard, every plot is a valid PNG, the card's
numbers equal stats.json, licenses are read beside the sources, galleries survive broken samples.

The demo recipe is run once into a temporary folder; the card is written through ``ergo card``. Budget < 60 s.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from huggingface_hub import DatasetCard
from PIL import Image
from typer.testing import CliRunner

from ergo_data.card.card import find_license_ids, find_source_license, license_from_file
from ergo_data.card.gallery import safe_tile, tile_width
from ergo_data.cli.app import app
from ergo_data.core.boxes import Box
from ergo_data.core.schema import LABELS_SCHEMA, make_row
from ergo_data.core.vision import BUDGETS, zoom_gain
from ergo_data.pipeline.executor.local import run_pipeline
from ergo_data.pipeline.recipe import parse_recipe
from ergo_data.pipeline.recipe_record import legacy_overrides, read_recipe_record
from ergo_data.stages.filters import MIN_ZOOM_GAIN
from tests.support.paths import ROOT

DEMO = ROOT / "pipelines" / "demo.yaml"
# Hand-written labels for the test (NOT from a Label Studio pull): three samples of the demo set, one human
# box identical to the curated box, one shifted, one answer marked wrong; `judge_region` is a made-up judge.
HAND_LABELS = [
    {"id": "examples/flag", "shift": 0.0, "region_answerable": True, "answer_correct": True, "judge_region": True},
    {"id": "examples/doll", "shift": 40.0, "region_answerable": True, "answer_correct": False, "judge_region": False},
    {"id": "terrain/1/3", "shift": 10.0, "region_answerable": False, "answer_correct": True, "judge_region": False},
]


@pytest.fixture(scope="module")
def card_dir(demo_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("card") / "demo"
    shutil.copytree(demo_run.out, out)
    stats = demo_run.stats
    kept = {r["id"]: r for r in pq.read_table(out / "data").to_pylist()}
    labels = []
    for lab in HAND_LABELS:
        b = kept[lab["id"]]["boxes"][0]
        s = lab["shift"]
        labels.append({"id": lab["id"], "annotator": "test", "region_answerable": lab["region_answerable"],
                       "answer_correct": lab["answer_correct"], "x1": b["x1"] + s, "y1": b["y1"], "x2": b["x2"] + s,
                       "y2": b["y2"], "lead_time_s": 3.0, "created_at": "2025-01-01T00:00:00Z",
                       "judge_region": lab["judge_region"]})
    schema = LABELS_SCHEMA.append(pa.field("judge_region", pa.bool_()))
    pq.write_table(pa.Table.from_pylist(labels, schema=schema), out / "labels.parquet")
    result = CliRunner().invoke(app, ["card", str(out), "--quiet", "--kept", "4", "--per-reason", "2"])
    assert result.exit_code == 0, result.output
    return out, stats, kept, (out / "README.md").read_text(encoding="utf-8")


def md_rows(text: str, header_start: str) -> list[dict[str, str]]:
    """Rows of the Markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    i = next(n for n, ln in enumerate(lines) if ln.startswith(header_start))
    head = [c.strip() for c in lines[i].strip("|").split("|")]
    rows = []
    for ln in lines[i + 2:]:
        if not ln.startswith("|"):
            break
        rows.append(dict(zip(head, (c.strip() for c in ln.strip("|").split("|")))))
    return rows


def test_card_parses_as_dataset_card(card_dir):
    out, stats, kept, _ = card_dir
    card = DatasetCard.load(out / "README.md")
    data = card.data.to_dict()
    assert data["license"] == ["mit"]  # both sources are MIT per examples/LICENSES.md
    assert data["size_categories"] == ["n<1K"]
    assert "visual-question-answering" in data["task_categories"]
    pattern = data["configs"][0]["data_files"][0]["path"]
    assert sorted(p.relative_to(out).as_posix() for p in out.glob(pattern)) == sorted(stats["files"]["data"])
    schema = pq.read_schema(out / stats["files"]["data"][0])
    assert [f["name"] for f in data["dataset_info"]["features"]] == schema.names
    assert next(f for f in data["dataset_info"]["features"] if f["name"] == "image")["dtype"] == "image"
    assert data["dataset_info"]["splits"][0]["num_examples"] == stats["totals"]["kept"] == len(kept)


def test_every_plot_exists_and_is_a_valid_png(card_dir):
    out, _, _, text = card_dir
    links = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)
    names = {Path(link).stem for link in links}
    assert {"per_source", "box_area_frac", "box_short_side", "vision_tokens", "questions", "resolution", "labels",
            "gallery-kept", "gallery-rejected-visibility-region_legible_without_zoom"} <= names
    for link in links:
        assert not link.startswith(("/", "http")), link
        with Image.open(out / link) as im:
            assert im.format == "PNG"
            im.verify()
    assert sorted(p.name for p in (out / "plots").glob("*.png")) == sorted(Path(link).name for link in links)


def test_links_work_from_a_copy_of_card_stats_and_plots(card_dir, tmp_path):
    out, _, _, text = card_dir
    for name in ("README.md", "stats.json"):  # what `make demo` copies into data_cards/demo
        shutil.copy(out / name, tmp_path / name)
    shutil.copytree(out / "plots", tmp_path / "plots")
    for link in re.findall(r"\]\(([^)#]+)\)", text):
        assert (tmp_path / link).is_file(), link


def test_funnel_numbers_equal_stats(card_dir):
    _, stats, _, text = card_dir
    rows = md_rows(text, "| stage | in | out |")
    assert [r["stage"] for r in rows] == [s["stage"] for s in stats["stages"]]
    for r, s in zip(rows, stats["stages"]):
        assert (int(r["in"]), int(r["out"]), int(r["rejected"])) == (s["in"], s["out"], sum(s["rejected"].values()))
        pairs = [] if r["rejected by reason"] == "-" else [p.split(": ") for p in r["rejected by reason"].split(", ")]
        shown = {k: int(v) for k, v in pairs}
        assert shown == s["rejected"]
        assert r["in = out + rejected"] == "ok"
    t = stats["totals"]
    assert f"Totals: inputs {t['inputs']} = kept {t['kept']} + rejected {t['rejected']}: **ok**" in text
    assert f"**{t['kept']} samples kept** of {t['inputs']} inputs" in text


def test_source_numbers_and_licenses(card_dir):
    _, stats, kept, text = card_dir
    rows = {r["source"]: r for r in md_rows(text, "| source | type |")}
    assert set(rows) == set(stats["sources"])
    for name, c in stats["sources"].items():
        r = rows[name]
        assert (int(r["inputs"]), int(r["kept"]), int(r["rejected"])) == (c["inputs"], c["kept"], c["rejected"])
        assert r["license"] == "mit" and r["license read from"] == "examples/LICENSES.md"
    splits = {}
    for row in kept.values():
        splits[row["split"]] = splits.get(row["split"], 0) + 1
    assert "`split` column (assigned per image): " + ", ".join(f"{k} {n}" for k, n in sorted(splits.items())) in text


def test_recipe_embedded_verbatim_and_no_contamination_check(card_dir):
    _, _, _, text = card_dir
    assert DEMO.read_text(encoding="utf-8").rstrip() in text
    assert "None performed: the recipe has no `decontaminate` stage" in text


def test_zoom_gain_plot_and_limitation_match_the_kept_rows(card_dir):
    """The demo keeps its 1024x682 aerial cars (min_zoom_gain: 0): the card says how many kept items gain
    under the default from zooming, and the zoom-gain plot's note gives the kept median."""
    out, _, kept, text = card_dir
    gains = sorted(zoom_gain(Box.union(Box.from_record(b) for b in r["boxes"]), (r["width"], r["height"]),
                             BUDGETS[1280]) for r in kept.values())
    low = sum(g < MIN_ZOOM_GAIN for g in gains)
    assert low and f"{low} of {len(kept)} samples have a zoom gain under {MIN_ZOOM_GAIN:g}" in text
    assert f"kept: median zoom gain {statistics.median(gains):.2f}" in text and (out / "plots" / "zoom_gain.png").is_file()


def test_label_agreement_numbers(card_dir):
    _, _, kept, text = card_dir
    ious = []
    for lab in HAND_LABELS:
        b = kept[lab["id"]]["boxes"][0]
        curated = Box(b["x1"], b["y1"], b["x2"], b["y2"])
        ious.append(curated.iou(Box(b["x1"] + lab["shift"], b["y1"], b["x2"] + lab["shift"], b["y2"])))
    median = sorted(ious)[1]
    agree = sum(lab["judge_region"] == lab["region_answerable"] for lab in HAND_LABELS)
    assert f"median IoU {median:.2f} over 3 boxes" in text
    assert f"judge_region vs human region_answerable: {agree} of 3 agree" in text
    assert "3 labels on 3 samples; region answerable: 2 yes, 1 no; answer correct: 2 yes, 1 no" in text


def test_decontamination_reported_from_the_stage_summary(tmp_path):
    os.chdir(ROOT)
    data = yaml.safe_load(DEMO.read_text(encoding="utf-8"))
    data["sources"] = data["sources"][:1]  # the V* examples only: fewer images to decode
    data["stages"].insert(5, {"type": "decontaminate", "reference": "examples/vstar", "name": "vstar-examples"})
    data["output"]["plots"] = False
    stats = run_pipeline(parse_recipe(data), tmp_path, quiet=True)
    from ergo_data.card.card import write_card

    card = write_card(tmp_path, quiet=True).read_text(encoding="utf-8")
    stage = next(s for s in stats["stages"] if s["stage"] == "decontaminate")
    removed = sum(stage["rejected"].values())
    assert removed == 6  # the six V* examples that survive visibility are the eval images themselves
    assert f"against **vstar-examples** ({stage['summary']['reference_images']} reference images" in card
    assert f"{removed} matches removed (eval_contamination: {removed})" in card
    assert "Not drawn: the recipe sets `output.plots: false`." in card
    assert not (tmp_path / "plots").exists()


def test_show_renders_a_rejected_sample(card_dir, tmp_path):
    out, _, _, _ = card_dir
    runner = CliRunner()
    png = tmp_path / "blackmug.png"  # a rejected sample: its row comes from .work/inputs
    res = runner.invoke(app, ["show", str(out), "--id", "examples/blackmug", "--out", str(png)])
    assert res.exit_code == 0, res.output
    assert "region_legible_without_zoom" in res.output
    with Image.open(png) as im:
        assert im.format == "PNG" and im.width > im.height
    bad = runner.invoke(app, ["show", str(out), "--id", "examples/nope"])
    assert bad.exit_code == 2 and "examples/nope" in bad.output


def test_broken_samples_become_placeholder_tiles(tmp_path):
    corrupt = tmp_path / "broken.jpg"
    corrupt.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    box = [{"x1": 1.0, "y1": 1.0, "x2": 5.0, "y2": 5.0, "label": "", "source": "annotation"}]
    for path in (tmp_path / "missing.jpg", corrupt):
        row = make_row(id=f"t/{path.stem}", image_path=str(path), question="Q?", answer="a", source="t", boxes=box)
        tile = safe_tile(row["id"], row, BUDGETS[1280], {"stage": "decode", "reason": "x", "detail": "y"})
        assert tile.width == tile_width()
    assert safe_tile("t/gone", None, BUDGETS[1280]).width == tile_width()


def test_license_detection(tmp_path):
    assert find_license_ids("images CC BY-SA 4.0, code Apache License, Version 2.0") == ["cc-by-sa-4.0", "apache-2.0"]
    (tmp_path / "data" / "a").mkdir(parents=True)
    (tmp_path / "data" / "b").mkdir(parents=True)
    (tmp_path / "data" / "LICENSES.md").write_text("- `a/`: photos under\n  CC-BY-4.0\n- `b/`: MIT or CC0\n")
    assert find_source_license(tmp_path / "data" / "a") == (["cc-by-4.0"], tmp_path / "data" / "LICENSES.md")
    assert find_source_license(tmp_path / "data" / "b")[0] == ["mit", "cc0-1.0"]
    (tmp_path / "data" / "c").mkdir()  # not listed: the list's licenses are not guessed for it
    assert find_source_license(tmp_path / "data" / "c") == ([], None)
    (tmp_path / "data" / "c" / "README.md").write_text("Photos by us, released under CC BY 4.0.\n")
    assert find_source_license(tmp_path / "data" / "c")[0] == ["cc-by-4.0"]
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "README.md").write_text("---\nlicense: odc-by\n---\n# a dataset card\n")
    assert license_from_file(tmp_path / "hf" / "README.md", tmp_path / "hf") == ["odc-by"]
    code = tmp_path / "proj"
    (code / "imgs").mkdir(parents=True)
    (code / "pyproject.toml").write_text("[project]\n")
    (code / "LICENSE").write_text("MIT License\n")  # the code's license, not the data's
    assert find_source_license(code / "imgs") == ([], None)


def test_missing_recipe_and_outputs_of_older_versions(tmp_path):
    rec = read_recipe_record(tmp_path)
    assert rec.recipe is None and "recipe.json and recipe.yaml are missing" in rec.problem
    # older versions wrote only recipe.yaml, with the overrides in a last comment: still read
    assert legacy_overrides("x: 1\n# overrides: stages.3.where=a <= 0.5 AND b = 1 output.license=cc-by-4.0\n") == [
        "stages.3.where=a <= 0.5 AND b = 1", "output.license=cc-by-4.0"]
    (tmp_path / "recipe.yaml").write_text(DEMO.read_text() + "\n# overrides: output.license=cc-by-4.0\n")
    rec = read_recipe_record(tmp_path)
    assert rec.problem is None and rec.recipe.output.license == "cc-by-4.0"
    assert rec.overrides == ["output.license=cc-by-4.0"] and rec.file_text.startswith(DEMO.read_text())
    assert json.loads(json.dumps(rec.recipe.model_dump()))["name"] == "demo"
    (tmp_path / "recipe.json").write_text("{not json")
    assert "recipe.json could not be read" in read_recipe_record(tmp_path).problem
