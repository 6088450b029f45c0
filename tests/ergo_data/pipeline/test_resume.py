"""Resume after kill -9: `ergo run` in real subprocesses, killed at several points, started again with
the same command, ends with data/ and rejects/ row-identical to an uninterrupted run.

One output folder goes through a chain of kills, each run resuming the previous one:
1. killed from outside (SIGKILL to its process group, workers included) once chunk markers exist;
2. killed while the global `dedup` stage writes its output (a part written, no marker);
3. killed between two data shards of the final write;
4. left to finish.
Points 2 and 3 are hit exactly by a hook that SIGKILLs the process itself when it is about to rename a given
file into place (fault injection: the only way to stop at an exact instruction; the kill is real).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pyarrow.parquet as pq
import pytest
import yaml

from ergo_data.pipeline.executor.local import run_pipeline
from ergo_data.pipeline.recipe import load_recipe
from tests.data.make_bad_inputs import encode, photo
from tests.support.paths import EXAMPLES, ROOT

N_SYNTHETIC = 30

# Runs the real CLI; SIGKILLs itself when a file whose path contains KILL_AT is about to be renamed into place.
HOOK = """
import os, signal, sys
orig = os.replace
def replace(src, dst, *a, **k):
    if os.environ["KILL_AT"] in str(dst).replace(os.sep, "/"):
        os.kill(os.getpid(), signal.SIGKILL)
    return orig(src, dst, *a, **k)
os.replace = replace
from ergo_data.cli.app import main
sys.argv = ["ergo"] + sys.argv[1:]
main()
"""


@pytest.fixture(scope="module")
def recipe_path(tmp_path_factory):
    root = tmp_path_factory.mktemp("resume")
    synth = root / "synth"
    synth.mkdir()
    for i in range(N_SYNTHETIC):
        (synth / f"img{i:03d}.jpg").write_bytes(encode(photo(448, 336, seed=i), "JPEG", quality=85,
                                                       orientation=6 if i % 3 == 0 else 1))
        bbox = [[10 + 5 * (i % 40), 10 + 3 * (i % 30), 20 + i % 17, 15 + i % 11]]
        (synth / f"img{i:03d}.json").write_text(json.dumps(
            {"question": f"What is in region {i}?", "options": ["a", "b", "c"], "bbox": bbox}))
    recipe = {
        "name": "resume",
        "sources": [{"type": "vstar", "name": "synth", "path": str(synth)},
                    {"type": "vstar", "name": "examples", "path": str(EXAMPLES / "vstar")},
                    {"type": "coco", "name": "terrain", "path": str(EXAMPLES / "coco"),
                     "annotations": "terrain2_coco.json"}],
        "stages": [{"type": "decode"}, {"type": "box_check"},
                   {"type": "visibility", "min_side_px": 4, "max_side_px": 60, "min_zoom_gain": 0},  # 448x336 images
                   {"type": "dedup"}, {"type": "split", "val": 0.2, "test": 0.2}],
        "output": {"chunk_rows": 2, "shard_rows": 10, "plots": False},
    }
    path = root / "recipe.yaml"
    path.write_text(yaml.safe_dump(recipe))
    return path


def ergo_run(recipe, out, kill_at: str | None = None) -> subprocess.Popen:
    """The same command every time: ``ergo run RECIPE --out OUT --workers 2 --quiet``."""
    args = ["run", str(recipe), "--out", str(out), "--workers", "2", "--quiet"]
    env = dict(os.environ, KILL_AT=kill_at or "<never>")
    return subprocess.Popen([sys.executable, "-c", HOOK, *args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def read_dir(folder):
    files = sorted(folder.glob("*.parquet"))
    return [f.name for f in files], [row for f in files for row in pq.read_table(f).to_pylist()]


def without_timings(stats):
    drop = {"seconds", "seconds_total", "write_seconds"}
    if isinstance(stats, dict):
        return {k: without_timings(v) for k, v in stats.items() if k not in drop}
    if isinstance(stats, list):
        return [without_timings(v) for v in stats]
    return stats


def test_killed_runs_resume_to_identical_outputs(recipe_path, tmp_path):
    reference = tmp_path / "reference"
    ref_stats = run_pipeline(load_recipe(recipe_path), reference, quiet=True)
    assert ref_stats["invariant"]["ok"] and len(read_dir(reference / "data")[0]) >= 3  # several shards
    out = tmp_path / "killed"
    work = out / ".work"

    # 1. kill -9 from outside, mid-way through the per-chunk segment
    proc = ergo_run(recipe_path, out)
    deadline = time.monotonic() + 120
    while len(list(work.glob("seg00/part-*.json"))) < 3:
        assert proc.poll() is None, f"run ended before it could be killed:\n{proc.stdout.read().decode()}"
        assert time.monotonic() < deadline
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    n_chunks = json.loads((work / "inputs" / "_DONE.json").read_text())["chunks"]
    survivors = {p: p.stat().st_mtime_ns for p in work.glob("seg00/part-*.json")}
    assert 3 <= len(survivors) < n_chunks and not (out / "stats.json").exists()
    fingerprint = (work / "recipe.fingerprint").read_text()

    # 2-3. each restart is killed at the next point; the state left behind is checked
    for kill_at, left_behind in [
        ("seg01/part-00001.parquet", lambda: (work / "seg01" / "part-00000.parquet").exists()
         and not (work / "seg01" / "_DONE.json").exists()),
        ("data/part-00001-of-", lambda: [p.name[:10] for p in (out / "data").glob("*.parquet")] == ["part-00000"]),
    ]:
        proc = ergo_run(recipe_path, out, kill_at=kill_at)
        output = proc.communicate(timeout=180)[0].decode()
        assert proc.returncode == -signal.SIGKILL, f"not killed at {kill_at}:\n{output[-3000:]}"
        assert left_behind(), f"unexpected state after the kill at {kill_at}"

    # 4. the same command finishes the job
    proc = ergo_run(recipe_path, out)
    output = proc.communicate(timeout=180)[0].decode()
    assert proc.returncode == 0, output
    assert (work / "recipe.fingerprint").read_text() == fingerprint  # same recipe and code throughout
    assert {p: p.stat().st_mtime_ns for p in survivors} == survivors  # finished chunks were not redone
    for sub in ("data", "rejects"):
        names, rows = read_dir(out / sub)
        ref_names, ref_rows = read_dir(reference / sub)
        assert names == ref_names, sub
        assert len(rows) == len(ref_rows) and rows == ref_rows, sub
    assert not list(out.rglob(".*.tmp-*"))  # no half-written file left
    stats = json.loads((out / "stats.json").read_text())
    assert without_timings(stats) == without_timings(json.loads((reference / "stats.json").read_text()))
