"""Label Studio round trip against a REAL server (tests/support/ls_server.py): push, annotate, pull, merge.

Budget: under 3 minutes for the module, server start included (the first run on a fresh machine also
installs .venv-ls and builds its template database, once).
"""

from __future__ import annotations

import functools
import http.server
import json
import secrets
import shutil
import threading
import time

import pyarrow.parquet as pq
import pytest
from hypothesis import given
from hypothesis import strategies as st
from typer.testing import CliRunner

from ergo_data.cli.app import app
from ergo_data.core.boxes import Box
from ergo_data.core.schema import LABELS_SCHEMA, validate_row
from ergo_data.labelstudio.client import IMAGE_STORE_TITLE, Connection, LabelStudioError
from ergo_data.labelstudio.pull import PullReport, convert_export, parse_annotation, pull
from ergo_data.labelstudio.push import prediction_result, push, select_samples
from ergo_data.labelstudio.server import free_port
from ergo_data.pipeline.executor.local import run_pipeline
from ergo_data.pipeline.recipe import load_recipe
from tests.support.ls_server import choice, rectangle
from tests.support.paths import ROOT

integration = pytest.mark.integration


@pytest.fixture(scope="module")
def annotator(ls_server):
    """A second account, signed up through the web form; its SDK client and email."""
    email = f"annotator-{secrets.token_hex(3)}@example.com"
    token = ls_server.sign_up(email, secrets.token_urlsafe(12))
    return ls_server.connection(token).client(), email


def unique_title(prefix: str) -> str:
    return f"{prefix} {secrets.token_hex(3)}"


def assert_close(box: Box, expected: Box, tol: float = 0.5) -> None:
    diffs = [abs(a - b) for a, b in zip(box.as_tuple(), expected.as_tuple())]
    assert max(diffs) <= tol, f"{box} differs from {expected} by {max(diffs):.3f} px"


@integration
def test_round_trip_push_annotate_pull_merge(ls_server, annotator, demo_set, tmp_path):
    conn = ls_server.connection()
    title = unique_title("round trip")
    rows = select_samples(demo_set)
    by_id = {r["id"]: r for r in rows}
    n_images = len({r["image_sha256"] for r in rows})

    first = push(demo_set, title, conn)
    assert (first.created, first.already_present, first.failed) == (len(rows), 0, [])
    assert first.images_uploaded + first.images_reused == n_images
    again = push(demo_set, title, conn)
    assert (again.created, again.already_present, again.images_uploaded) == (0, len(rows), 0)

    admin = conn.client()
    tasks = list(admin.tasks.list(project=first.project_id, fields="all"))
    assert sorted(t.data["sample_id"] for t in tasks) == sorted(by_id), "one task per sample, no duplicates"
    task_of = {t.data["sample_id"]: t for t in tasks}
    for sid, task in task_of.items():  # predictions carry the pipeline boxes, through the converters
        row = by_id[sid]
        size = (row["width"], row["height"])
        predicted = [
            Box.from_labelstudio(r["value"], (r["original_width"], r["original_height"]))
            for r in task.predictions[0].result
        ]
        assert [r["original_width"] for r in task.predictions[0].result] == [size[0]] * len(predicted)
        for got, rec in zip(predicted, row["boxes"]):
            assert_close(got, Box.from_record(rec), tol=1e-6)
        assert task.meta["external_id"] == sid

    ann_client, ann_email = annotator
    moved_id, rejected_id, two_boxes_id, rotated_id = sorted(by_id)[:4]
    drawn: dict[str, list[Box]] = {}

    def annotate(sid: str, result: list[dict], lead_time: float) -> None:
        ann_client.annotations.create(id=task_of[sid].id, result=result, lead_time=lead_time)

    row = by_id[moved_id]  # the annotator moves and enlarges the box; answer correct, answerable
    size = (row["width"], row["height"])
    machine = Box.from_record(row["boxes"][0])
    drawn[moved_id] = [
        Box(machine.x1 + 37.25, machine.y1 - 12.5, machine.x2 + 57.25, machine.y2 - 4.5).clamp(size)
    ]
    annotate(
        moved_id,
        [
            rectangle(drawn[moved_id][0], size, "h0"),
            choice("answer_correct", "correct"),
            choice("region_answerable", "yes"),
            {
                "from_name": "comment",
                "to_name": "question",
                "type": "textarea",
                "value": {"text": ["moved the box onto the object"]},
            },
        ],
        lead_time=12.5,
    )

    row = by_id[rejected_id]  # keeps the predicted box but rejects the answer
    size = (row["width"], row["height"])
    drawn[rejected_id] = [Box.from_record(b) for b in row["boxes"]]
    annotate(
        rejected_id,
        [rectangle(b, size, f"p{i}") for i, b in enumerate(drawn[rejected_id])]
        + [choice("answer_correct", "wrong"), choice("region_answerable", "no")],
        lead_time=4.0,
    )

    row = by_id[two_boxes_id]  # adds a second box
    size = (row["width"], row["height"])
    first_box = Box.from_record(row["boxes"][0])
    drawn[two_boxes_id] = [first_box, Box(10.5, 20.25, 60.75, 90.125)]
    annotate(
        two_boxes_id,
        [rectangle(b, size, f"b{i}") for i, b in enumerate(drawn[two_boxes_id])]
        + [choice("answer_correct", "correct"), choice("region_answerable", "yes")],
        lead_time=7.0,
    )

    row = by_id[rotated_id]  # a rotated rectangle cannot be a canonical box
    annotate(
        rotated_id,
        [rectangle(Box.from_record(row["boxes"][0]), (row["width"], row["height"]), "r0", rotation=30.0)],
        lead_time=3.0,
    )

    out = tmp_path / "review"
    report = pull(title, out, conn)
    assert report.tasks == len(rows)
    assert sorted(report.unannotated) == sorted(set(by_id) - set(drawn) - {rotated_id})
    assert len(report.errors) == 1 and rotated_id in report.errors[0] and "rotat" in report.errors[0]
    assert (report.samples, report.rejected, report.labels) == (2, 1, 3)

    labels = pq.read_table(out / "labels.parquet")
    assert labels.schema.equals(LABELS_SCHEMA)
    label_of = {r["id"]: r for r in labels.to_pylist()}
    assert set(label_of) == set(drawn)
    for sid, boxes in drawn.items():
        lab = label_of[sid]
        assert lab["annotator"] == ann_email
        assert_close(Box(lab["x1"], lab["y1"], lab["x2"], lab["y2"]), Box.union(boxes))
        assert lab["created_at"]
    assert (label_of[moved_id]["answer_correct"], label_of[moved_id]["region_answerable"]) == (True, True)
    assert (label_of[rejected_id]["answer_correct"], label_of[rejected_id]["region_answerable"]) == (
        False,
        False,
    )
    assert (label_of[two_boxes_id]["answer_correct"], label_of[two_boxes_id]["region_answerable"]) == (
        True,
        True,
    )
    assert label_of[moved_id]["lead_time_s"] == pytest.approx(12.5)
    assert label_of[moved_id]["comment"] == "moved the box onto the object"

    # data/: the samples as the merge policy makes them; rejects/: the answer marked wrong
    samples = {r["id"]: r for r in pq.read_table(out / "data").to_pylist()}
    assert set(samples) == {moved_id, two_boxes_id}
    for sid, sample in samples.items():
        validate_row(sample)
        union = Box.union(drawn[sid])
        assert [b["source"] for b in sample["boxes"]] == ["human"]
        assert_close(Box.from_record(sample["boxes"][0]), union)
        assert sample["box_area_frac"] == pytest.approx(union.area / (sample["width"] * sample["height"]))
        assert (sample["needs_review"], sample["annotators"], sample["region_answerable"]) == (False, 1, True)
        assert sample["question"] == by_id[sid]["question"] and sample["answer"] == by_id[sid]["answer"]
    assert samples[moved_id]["boxes"][0]["label"] == by_id[moved_id]["boxes"][0]["label"]
    assert samples[moved_id]["review_comment"] == f"{ann_email}: moved the box onto the object"
    pulled_rejects = pq.read_table(out / "rejects").to_pylist()
    assert [(r["id"], r["reason"]) for r in pulled_rejects] == [(rejected_id, "human_rejected_answer")]

    first_tables = (pq.read_table(out / "labels.parquet"), pq.read_table(out / "data"))
    report2 = pull(title, out, conn)  # pulling again rewrites the same content
    assert (report2.samples, report2.labels, report2.unannotated) == (2, 3, report.unannotated)
    assert pq.read_table(out / "labels.parquet").equals(first_tables[0])
    assert pq.read_table(out / "data").equals(first_tables[1])

    # Close the loop: the next version of the set from the curated set + the pulled labels.
    merged = tmp_path / "v2"
    recipe = load_recipe(
        ROOT / "pipelines" / "review_merge.yaml",
        overrides=[f"sources.0.path={demo_set}", f"stages.0.labels={out / 'labels.parquet'}"],
    )
    stats = run_pipeline(recipe, merged, quiet=True)
    assert stats["invariant"]["ok"]
    kept = {r["id"]: r for r in pq.read_table(merged / "data").to_pylist()}
    rejects = pq.read_table(merged / "rejects").to_pylist()
    assert set(kept) == set(by_id) - {rejected_id}
    assert [(r["id"], r["reason"]) for r in rejects] == [(rejected_id, "human_rejected_answer")]
    assert_close(Box.from_record(kept[moved_id]["boxes"][0]), drawn[moved_id][0])
    assert kept[moved_id]["boxes"][0]["source"] == "human"
    assert_close(Box.from_record(kept[two_boxes_id]["boxes"][0]), Box.union(drawn[two_boxes_id]))
    for sid in set(by_id) - set(drawn):  # not reviewed: unchanged boxes
        assert kept[sid]["boxes"] == by_id[sid]["boxes"]


@integration
def test_cli_push_pull_twice_and_bad_image(ls_server, demo_set, tmp_path):
    runner = CliRunner()
    env = {"LABEL_STUDIO_URL": ls_server.url, "LABEL_STUDIO_API_KEY": ls_server.token}
    title = unique_title("cli")
    n = len(select_samples(demo_set, "split IS NOT NULL", 3))
    for attempt in range(2):
        res = runner.invoke(
            app,
            ["ls", "push", str(demo_set), "--project", title, "--where", "split IS NOT NULL", "--limit", "3"],
            env=env,
        )
        assert res.exit_code == 0, res.output
        assert f"{n} samples selected, {n * attempt} already in project" in res.output
    for _ in range(2):
        res = runner.invoke(
            app, ["ls", "pull", "--project", title, "--out", str(tmp_path / "pulled")], env=env
        )
        assert res.exit_code == 0, res.output
        assert f"{n} tasks have no submitted annotation" in res.output
        assert json.loads((tmp_path / "pulled" / "pull.json").read_text())["tasks"] == n

    # A sample whose image file is gone: named in the error, the others still pushed, exit code 1.
    broken = tmp_path / "broken"
    shutil.copytree(demo_set / "data", broken / "data")
    table = pq.read_table(min((broken / "data").glob("*.parquet")))
    rows = table.to_pylist()
    rows[0]["image"] = {"bytes": None, "path": str(tmp_path / "gone.jpg")}
    for f in (broken / "data").glob("*.parquet"):
        f.unlink()
    pq.write_table(table.from_pylist(rows, schema=table.schema), broken / "data" / "part-0.parquet")
    res = runner.invoke(app, ["ls", "push", str(broken), "--project", unique_title("broken")], env=env)
    assert res.exit_code == 1
    assert rows[0]["id"] in res.output and "cannot read image" in res.output
    assert f"{len(rows) - 1} tasks created" in res.output


@integration
def test_wrong_token_is_a_clear_401_and_leaves_nothing(ls_server, demo_set):
    title = unique_title("bad token")
    with pytest.raises(LabelStudioError) as e:
        push(demo_set, title, ls_server.connection(token="not-the-token"))
    assert "401" in str(e.value) and ls_server.url in str(e.value) and "LABEL_STUDIO_API_KEY" in str(e.value)
    assert "credentials.env" in str(e.value)  # where a local server's token is
    assert not [p for p in ls_server.connection().client().projects.list() if p.title == title]
    with pytest.raises(LabelStudioError, match="401"):
        pull(title, demo_set / "nowhere", ls_server.connection(token="not-the-token"))


@integration
def test_foreign_project_and_unknown_project(ls_server, demo_set, tmp_path):
    conn = ls_server.connection()
    title = unique_title("foreign")
    conn.client().projects.create(title=title, label_config='<View><Image name="img" value="$img"/></View>')
    with pytest.raises(LabelStudioError, match="not ergo's"):
        push(demo_set, title, conn, limit=1)
    with pytest.raises(LabelStudioError, match="no project titled"):
        pull(unique_title("never pushed"), tmp_path / "x", conn)
    with pytest.raises(LabelStudioError, match="not ergo's"):
        pull(title, tmp_path / "x", conn)


@integration
def test_the_image_store_is_not_a_review_project(ls_server, demo_set, tmp_path):
    env = {"LABEL_STUDIO_URL": ls_server.url, "LABEL_STUDIO_API_KEY": ls_server.token}
    push(demo_set, unique_title("store"), ls_server.connection(), limit=1)  # the store exists now
    for args in (["push", str(demo_set)], ["pull", "--out", str(tmp_path / "store")]):
        res = CliRunner().invoke(app, ["ls", *args, "--project", IMAGE_STORE_TITLE], env=env)
        assert res.exit_code == 1 and "keeps the images, not a review project" in res.output
    assert not (tmp_path / "store").exists()


def test_a_url_that_is_not_label_studio_says_what_was_expected(demo_set, tmp_path):
    # a real HTTP server that is not Label Studio: Python's file server (404 HTML for /api/...)
    (tmp_path / "www").mkdir()
    handler = functools.partial(_QuietFiles, directory=str(tmp_path / "www"))
    www = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=www.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{www.server_address[1]}"
    try:
        with pytest.raises(LabelStudioError) as e:
            push(demo_set, "not ls", Connection(url, "some-token", timeout=10))
        message = str(e.value)
        assert f"{url} is not a Label Studio server" in message and '{"status": "UP"}' in message
        assert f"GET {url}/health answered HTTP 404" in message and "base URL" in message
        res = CliRunner().invoke(app, ["ls", "pull", "--project", "not ls", "--out", str(tmp_path / "o"),
                                       "--url", url, "--api-key", "some-token"])
        assert res.exit_code == 1 and "is not a Label Studio server" in res.output
    finally:
        www.shutdown()
        www.server_close()


@integration
def test_a_path_after_the_port_is_named_too(ls_server, demo_set):
    with pytest.raises(LabelStudioError, match="no path after the port"):
        push(demo_set, "with path", Connection(ls_server.url + "/projects", ls_server.token, timeout=30), limit=1)


def test_server_down_names_the_url(demo_set, tmp_path):
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(LabelStudioError) as e:
        push(demo_set, "down test", Connection(url, "some-token", timeout=5))
    assert url in str(e.value) and "ergo ls serve" in str(e.value)
    res = CliRunner().invoke(
        app,
        [
            "ls",
            "pull",
            "--project",
            "down test",
            "--out",
            str(tmp_path / "o"),
            "--url",
            url,
            "--api-key",
            "some-token",
        ],
    )
    assert res.exit_code == 1 and url in res.output and "cannot reach" in res.output


class _QuietFiles(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args: object) -> None:
        pass


class _SlowHandler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        time.sleep(3)
        try:
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.end_headers()
            self.wfile.write(b"{}")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up, as it should

    def log_message(self, *args: object) -> None:
        pass


def test_slow_server_times_out_with_a_clear_error(demo_set, tmp_path):
    # A stand-in for a slow Label Studio: a real one cannot be made slow on demand, so this tiny local
    # HTTP server answers every request after 3 s, past the client's 0.5 s timeout.
    slow = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _SlowHandler)
    slow.daemon_threads = True
    threading.Thread(target=slow.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{slow.server_address[1]}"
    try:
        conn = Connection(url, "some-token", timeout=0.5)
        with pytest.raises(LabelStudioError) as e:
            push(demo_set, "slow test", conn)
        assert url in str(e.value) and "did not answer within 0.5 s" in str(e.value)
        with pytest.raises(LabelStudioError, match="did not answer within"):
            pull("slow test", tmp_path / "o", conn)
    finally:
        slow.shutdown()
        slow.server_close()


def test_bad_where_and_missing_key(demo_set):
    with pytest.raises(ValueError, match="--where"):
        select_samples(demo_set, "no_such_column = 1")
    with pytest.raises(LabelStudioError, match="LABEL_STUDIO_API_KEY"):
        Connection("http://127.0.0.1:8080", "")


# ---- conversions without a server ------------------------------------------------------------------
@given(
    size=st.tuples(st.integers(2, 20000), st.integers(2, 20000)),
    fx=st.floats(0, 0.99),
    fy=st.floats(0, 0.99),
    fw=st.floats(0.001, 1),
    fh=st.floats(0.001, 1),
)
def test_prediction_and_annotation_convert_back_exactly(size, fx, fy, fw, fh):
    w, h = size
    x1, y1 = fx * w, fy * h
    box = Box(x1, y1, x1 + max(fw * (w - x1), 1e-3), y1 + max(fh * (h - y1), 1e-3)).clamp(size)
    row = {"id": "s/a", "width": w, "height": h, "boxes": [box.to_record("cat")]}
    review = parse_annotation({"result": prediction_result(row)}, size, "someone")
    assert_close(review.boxes[0], box, tol=1e-6 * max(size))


def _export_task(tid: int, sid: str | None, annotations: list[dict], size=(200, 100)) -> dict:
    sample = {**_SAMPLE, "id": sid, "width": size[0], "height": size[1]}
    data = {"image": "/data/upload/1/abc-x.jpg", **({"sample_id": sid, "sample": sample} if sid else {})}
    return {"id": tid, "data": data, "annotations": annotations}


_SAMPLE = {
    "image": {"bytes": None, "path": None},
    "image_sha256": "0" * 64,
    "question": "Which?",
    "options": [],
    "answer": "red",
    "answer_letter": None,
    "source": "s",
    "category": None,
    "needs_review": True,
    "split": None,
    "provenance": "{}",
    "boxes": [{"x1": 10.0, "y1": 10.0, "x2": 20.0, "y2": 20.0, "label": "cat", "source": "annotation"}],
}


def _ann(result: list[dict], cancelled: bool = False, when: str = "2026-01-01T00:00:00Z") -> dict:
    return {
        "id": 7,
        "completed_by": 3,
        "result": result,
        "was_cancelled": cancelled,
        "lead_time": 2.0,
        "created_at": when,
        "updated_at": when,
    }


def answers(correct: str = "correct", answerable: str = "yes") -> list[dict]:
    return [choice("answer_correct", correct), choice("region_answerable", answerable)]


def test_convert_export_reports_every_task():
    size = (200, 100)
    tasks = [
        _export_task(1, "s/ok", [_ann([rectangle(Box(20, 20, 120, 70), size, "a"), *answers()])]),
        _export_task(2, "s/skipped", [_ann([], cancelled=True)]),
        _export_task(3, "s/none", []),
        _export_task(4, None, []),
        _export_task(5, "s/rotated", [_ann([rectangle(Box(20, 20, 120, 70), size, "r", rotation=90)])]),
        _export_task(6, "s/badchoice", [_ann([choice("answer_correct", "maybe")])]),
        _export_task(7, "s/otherimage", [_ann([rectangle(Box(20, 20, 60, 70), (100, 200), "o")])]),
        _export_task(8, "s/half", [_ann([rectangle(Box(20, 20, 60, 70), size, "h"), choice("answer_correct", "correct")])]),
        _export_task(9, "s/wrong", [_ann(answers("wrong"))]),
    ]
    report = PullReport("p", 1, "http://ls:8080", "/tmp/x")
    samples, labels, rejects = convert_export(tasks, {3: "ann@example.com"}, report)
    assert [s["id"] for s in samples] == ["s/ok"] and [lab["id"] for lab in labels] == ["s/ok", "s/wrong"]
    assert (
        samples[0]["image"]["path"] == "http://ls:8080/data/upload/1/abc-x.jpg"
    )  # the sample had bytes only
    assert labels[0]["annotator"] == "ann@example.com" and labels[0]["answer_correct"] is True
    assert [(r["id"], r["reason"], r["stage"]) for r in rejects] == [("s/wrong", "human_rejected_answer", "labels")]
    assert report.unannotated == ["s/none", "s/skipped"]
    # an annotation without both required answers is reported and not counted as reviewed
    assert report.incomplete == [{"id": "s/half", "annotator": "ann@example.com", "missing": ["region_answerable"]}]
    errors = "\n".join(report.errors)
    assert len(report.errors) == 4
    assert "task 4" in errors and "ergo ls push" in errors
    assert "'s/rotated'" in errors and "rotated rectangle" in errors
    assert "'s/badchoice'" in errors and "maybe" in errors
    assert "'s/otherimage'" in errors and "100x200" in errors


def test_each_annotation_a_label_the_annotators_latest_decides():
    size = (200, 100)
    early = _ann([rectangle(Box(0, 0, 10, 10), size, "e"), *answers()], when="2026-01-01T00:00:00Z")
    late = _ann([rectangle(Box(50, 50, 90, 90), size, "l"), *answers()], when="2026-01-02T00:00:00Z")
    report = PullReport("p", 1, "http://ls:8080", "/tmp/x")
    samples, labels, _ = convert_export([_export_task(1, "s/a", [late, early])], {}, report)
    assert samples[0]["boxes"][0]["x1"] == pytest.approx(50) and samples[0]["annotators"] == 1
    assert [lab["x1"] for lab in labels] == [pytest.approx(0), pytest.approx(50)]
    assert labels[0]["annotator"] == "3"  # user ids stand in when users cannot be listed
