"""What the model sees in a training rollout stays byte for byte the same: golden hashes recorded before the
host-path work (issue 27: coarse-view cache, processor memo, shared crops) changed how it is computed.

One real GRPO step of the tiny Qwen2.5-VL (``ErgoGRPOTrainer``, budget 1280, 2 generations, 2 steps per
generation, 4 distinct demo images with the forced zoom). Per rollout, in TRL's order: the prompt ids, the
completion ids (turn 1, the tool suffix with the crop's vision tokens, turn 2), the coarse view's and the crop's
pixels (as TRL holds them), and the processor's ``pixel_values``/``image_grid_thw`` the loss runs on.

Rewrite the golden file only on purpose (a deliberate change of what the model sees):
``python -m tests.ergo_train.train.test_rollout_golden DEMO_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.paths import ROOT

GOLDEN = Path(__file__).with_name("golden_rollout.json")
RECIPE = ROOT / "pipelines" / "train_tiny.yaml"
BOXES = ([10, 20, 60, 70], [100, 40, 420, 300])  # on the coarse view (every demo view at 1280 is >= 700 px wide)
ANSWERS = ["<answer>C</answer><|im_end|>", "<answer>A</answer><|im_end|>"]


def _call(box) -> str:
    return ('<tool_call>\n' + json.dumps({"name": "zoom", "arguments": dict(zip(("x1", "y1", "x2", "y2"), box))})
            + '\n</tool_call><|im_end|>')


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()[:20]


def _image_hash(image) -> str:
    return _sha(f"{image.mode}{image.size}".encode() + image.tobytes())


def _tensor_hash(t) -> str:
    return _sha(str(tuple(t.shape)).encode() + str(t.dtype).encode() + t.detach().cpu().contiguous().numpy().tobytes())


def rollout_hashes(demo_dir: Path, out_dir: Path) -> dict[str, Any]:
    """Run one real GRPO step and hash what the model saw (see the module docstring)."""
    from ergo_train.train.grpo import build_trainer, train
    from ergo_train.train.recipe import load_train_recipe
    from tests.support.scripted import scripted_first_turn

    recipe = load_train_recipe(RECIPE, [
        f"data.path={demo_dir}", "data.split=null", f"output_dir={out_dir}", "model=tiny", "budget_tokens=1280",
        "rewards={r_format: 1.0, r_box: 0.5}", "grpo.max_steps=1", "grpo.per_device_train_batch_size=4",
        "grpo.num_generations=2", "grpo.steps_per_generation=2", "grpo.max_completion_length=2048"])
    parts = build_trainer(recipe)
    trainer = parts.trainer
    seen: dict[str, Any] = {}
    generate, score = trainer._generate, trainer._generate_and_score_completions

    def recording_generate(prompts):
        out = generate(prompts)
        seen["prompt_ids"], seen["completion_ids"], seen["images"] = out[0], out[1], out[6]
        return out

    def recording_score(inputs):
        out = score(inputs)
        seen["pixel_values"], seen["image_grid_thw"] = out["pixel_values"], out["image_grid_thw"]
        return out

    trainer._generate, trainer._generate_and_score_completions = recording_generate, recording_score
    with scripted_first_turn(parts.model, parts.processor.tokenizer, [_call(b) for b in BOXES], ANSWERS):
        train(recipe, parts)
    rollouts = []
    for p, c, images in zip(seen["prompt_ids"], seen["completion_ids"], seen["images"], strict=True):
        rollouts.append({"prompt_ids": _sha(json.dumps(list(p)).encode()),
                         "completion_ids": _sha(json.dumps(list(c)).encode()),
                         "coarse": _image_hash(images[0]), "crop": _image_hash(images[1]),
                         "sizes": [list(im.size) for im in images]})
    return {"rollouts": rollouts, "pixel_values": _tensor_hash(seen["pixel_values"]),
            "image_grid_thw": seen["image_grid_thw"].tolist()}


@pytest.mark.integration
def test_a_training_rollout_shows_the_model_the_golden_tokens_and_pixels(demo_set, tmp_path):
    got = rollout_hashes(demo_set, tmp_path)
    want = json.loads(GOLDEN.read_text())
    assert len(got["rollouts"]) == 8 and len({r["coarse"] for r in got["rollouts"]}) == 4
    for i, (g, w) in enumerate(zip(got["rollouts"], want["rollouts"], strict=True)):
        assert g == w, f"rollout {i}: {g} != {w}"
    assert got["image_grid_thw"] == want["image_grid_thw"]
    assert got["pixel_values"] == want["pixel_values"]


if __name__ == "__main__":  # rewrite the golden file: python -m tests.ergo_train.train.test_rollout_golden DEMO_DIR
    import tempfile

    with tempfile.TemporaryDirectory() as tmp:
        GOLDEN.write_text(json.dumps(rollout_hashes(Path(sys.argv[1]).resolve(), Path(tmp)), indent=1) + "\n")
    print(f"wrote {GOLDEN}")
