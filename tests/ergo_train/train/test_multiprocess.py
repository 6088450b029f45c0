"""Two processes on CPU (``accelerate launch`` with the shipped 4-GPU config and ``--num_processes 2``, gloo):
``ergo sft`` with LoRA, then ``ergo train`` from its output with a policy that zooms, then the same ``ergo train``
resumed from its checkpoint.

The processes are real (``tests.support.launched`` is the ``ergo`` command with the test hooks: turn 1 forced to
a zoom, each rank's batches, scoring calls and saves recorded). Checked: the SFT ranks trained on different rows,
one process merged and saved; every GRPO group is complete across the two ranks and the step metrics were formed
from the whole groups; one checkpoint is written, once, and loads; the resumed run continues at step 2.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from ergo_train.models.loaders import load_model
from tests.support.paths import ROOT

pytestmark = pytest.mark.integration

TURN1 = [f'<tool_call>\n{{"name": "zoom", "arguments": {box}}}\n</tool_call><|im_end|>'
         for box in ('{"x1": 10, "y1": 20, "x2": 60, "y2": 70}', '{"x1": 0, "y1": 0, "x2": 400, "y2": 400}')]
TURN2 = ["<answer>C</answer><|im_end|>", "<answer>A</answer><|im_end|>"]
ACCELERATE_CONFIG = ROOT / "pipelines" / "accelerate" / "multi_gpu_4.yaml"
GENERATIONS = 4  # one group of 4 per step, 2 rollouts on each rank: every group spans both processes


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args: list[str], record: Path) -> str:
    """``accelerate launch`` of the ``ergo`` command on 2 CPU processes; its output (the run must succeed)."""
    record.mkdir(parents=True)
    env = {**os.environ, "ERGO_TEST_RECORD": str(record), "ERGO_TEST_TURN1": json.dumps(TURN1),
           "ERGO_TEST_TURN2": json.dumps(TURN2), "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    # the shipped 4-GPU config, with 2 processes and no mixed precision on CPU (the tiny recipes set use_cpu: gloo)
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(ACCELERATE_CONFIG),
           "--num_processes", "2", "--mixed_precision", "no", "--main_process_port", str(_free_port()),
           "-m", "tests.support.launched", *args]
    proc = subprocess.run(cmd, check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{' '.join(args)}\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return proc.stdout


def _events(record: Path, event: str) -> dict[int, list[dict]]:
    by_rank: dict[int, list[dict]] = {0: [], 1: []}
    for path in sorted(record.glob("rank*.jsonl")):
        for line in path.read_text(encoding="utf-8").splitlines():
            e = json.loads(line)
            if e["event"] == event:
                by_rank[e["rank"]].append(e)
    return by_rank


@pytest.fixture(scope="module")
def runs(demo_set, tmp_path_factory):
    root = tmp_path_factory.mktemp("multiprocess")
    sft, grpo = root / "sft", root / "grpo"
    out = {"sft": sft, "grpo": grpo, "records": root / "records"}
    out["sft_stdout"] = _launch(["sft", "pipelines/sft_tiny.yaml", "--set", f"data.path={demo_set}",
                                 "--set", "sft.max_steps=1", "--set", "lora.r=4", "--set", "lora.alpha=8",
                                 "--out", str(sft)], root / "records" / "sft")
    grpo_args = ["train", "pipelines/train_tiny.yaml", "--model", str(sft), "--set", f"data.path={demo_set}",
                 "--set", "grpo.per_device_train_batch_size=2", "--set", f"grpo.num_generations={GENERATIONS}",
                 "--set", "grpo.save_strategy=steps", "--set", "grpo.save_steps=1", "--out", str(grpo)]
    out["grpo_stdout"] = _launch([*grpo_args, "--set", "grpo.max_steps=1"], root / "records" / "grpo")
    out["checkpoints_after_1"] = sorted(p.name for p in grpo.glob("checkpoint-*"))
    out["resume_stdout"] = _launch([*grpo_args, "--set", "grpo.max_steps=2", "--set", "resume_from_checkpoint=true"],
                                   root / "records" / "resume")
    return out


def test_sft_ranks_trained_on_different_rows_and_one_process_merged_and_saved(runs):
    record = runs["records"] / "sft"
    batches = _events(record, "sft_batch")
    first = {rank: set(b[0]["ids"]) for rank, b in batches.items()}
    assert all(b[0]["world"] == 2 for b in batches.values())
    assert len(first[0]) == len(first[1]) == 2 and not first[0] & first[1], first
    assert {r: len(e) for r, e in _events(record, "merge").items()} == {0: 1, 1: 0}
    assert {r: len(e) for r, e in _events(record, "save_processor").items()} == {0: 1, 1: 0}
    assert runs["sft_stdout"].count("sft_tiny: 1 steps") == 1  # the report comes from the main process only
    model, _ = load_model(str(runs["sft"]))
    assert not any("lora_" in n for n, _ in model.named_parameters())


def test_every_grpo_group_is_complete_across_the_ranks(runs):
    scored = _events(runs["records"] / "grpo", "scored")
    assert [len(scored[0]), len(scored[1])] == [1, 1]  # one scoring call per step and rank
    a, b = scored[0][0], scored[1][0]
    assert a["world"] == b["world"] == 2 and len(a["ids"]) == len(b["ids"]) == GENERATIONS // 2
    groups = Counter(a["ids"] + b["ids"])
    assert set(groups.values()) == {GENERATIONS}, groups  # each prompt's 4 rollouts: 2 here, 2 there
    assert all(roles == ["assistant", "tool", "assistant"] for roles in a["roles"] + b["roles"])  # the policy zoomed
    # the step metrics were formed from the whole groups, the same on both ranks
    assert len(a["group_totals"]) == len(groups) and a["group_totals"] == b["group_totals"]
    assert a["metrics"] == b["metrics"] and a["metrics"]["ergo/zoom_rate"] == 1.0
    assert a["metrics"]["ergo/judge_failure_rate"] == 0.0  # the in-process judge answered every query


def test_one_checkpoint_is_written_once_and_it_loads(runs):
    assert runs["checkpoints_after_1"] == ["checkpoint-1"]
    saves = _events(runs["records"] / "grpo", "save_processor")
    assert [len(saves[0]), len(saves[1])] == [1, 0]
    state = json.loads((runs["grpo"] / "checkpoint-1" / "trainer_state.json").read_text())
    assert state["global_step"] == 1
    model, processor = load_model(str(runs["grpo"] / "checkpoint-1"))
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration" and processor is not None
    assert runs["grpo_stdout"].count("train_tiny: 1 steps") == 1


def test_resume_continues_from_the_checkpoint(runs):
    scored = _events(runs["records"] / "resume", "scored")
    assert [e["step"] for e in scored[0]] == [e["step"] for e in scored[1]] == [1]  # step 1 was not done again
    assert sorted(p.name for p in runs["grpo"].glob("checkpoint-*")) == ["checkpoint-1", "checkpoint-2"]
    state = json.loads((runs["grpo"] / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and [h["step"] for h in state["log_history"] if "loss" in h] == [1, 2]
    assert "train_tiny: 2 steps" in runs["resume_stdout"]
    load_model(str(runs["grpo"]))
