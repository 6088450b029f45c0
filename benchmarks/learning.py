"""Proof that the training loop learns, on CPU: cold-start SFT, then GRPO (GSPO preset), on a generated set.

    .venv/bin/python benchmarks/learning.py                 # ~6-10 minutes on 2 cores
    .venv/bin/python benchmarks/learning.py --quick         # the short version the test suite runs

1. **Data** — the project's own generators: ``pipelines/learning.yaml`` pastes one exactly-known shape into
   each of the example photos (downscaled copies, for speed), asks its colour with four options and splits
   train / held-out by image. The pasted box is the region.
2. **Before** — the tiny model (``tiny-wide``: the real Qwen2.5-VL architecture, random weights) writes turn 1
   greedily on every held-out sample: the share whose turn 1 is a well-formed zoom (read by the rewards' own
   parser) is ``valid_zoom_before``.
3. **SFT** — ``ergo sft`` on the train split (episodes token-identical to the rollout), then the same
   measure: ``valid_zoom_after_sft``.
4. **GRPO** — ``ergo train`` from the SFT checkpoint with the full ERGO reward (r_format + r_acc + r_region +
   0.5 r_box). r_region's judge is the stored-label judge over the pasted boxes (a perfect judge of "does the
   crop hold the target"), so the region reward is exact and cheap on CPU. ``steps_per_generation = 2``:
   every generation is used for two optimizer steps, so GSPO's sequence-level clipping runs (``clip_ratio``).

It prints one row per optimizer step, writes ``learning_curve.png`` and ``learning.json`` into ``--out``, and
ends with the line ``learning: valid_zoom_before=.. valid_zoom_after_sft=.. reward_start=.. reward_end=..
steps=..`` (reward start/end: mean weighted reward per group over the first and last quarter of the
generations, with a 95% interval over groups).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

COMPONENTS = ("r_format", "r_acc", "r_region", "r_box")
FULL = {"per_background": 10, "sft_steps": 200, "grpo_steps": 100, "batch": 8, "max_side": 1600}
QUICK = {"per_background": 4, "sft_steps": 150, "grpo_steps": 4, "batch": 8, "max_side": 960}


def prepare_backgrounds(out: Path, max_side: int) -> Path:
    """Downscaled copies of the example photos (same names), EXIF orientation applied."""
    from PIL import Image, ImageOps

    dst = out / f"backgrounds-{max_side}"
    dst.mkdir(parents=True, exist_ok=True)
    for src in sorted((ROOT / "examples" / "vstar").glob("*.*")):
        if src.suffix.lower() not in (".jpg", ".jpeg", ".png"):
            continue
        target = dst / f"{src.stem}.jpg"
        if not target.exists():
            im = ImageOps.exif_transpose(Image.open(src)).convert("RGB")
            im.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            im.save(target, quality=92)
    return dst


def curate(out: Path, backgrounds: Path, per_background: int) -> Path:
    from ergo_data.pipeline.executor.local import run_pipeline
    from ergo_data.pipeline.recipe import load_recipe

    set_dir = out / "set"
    recipe = load_recipe(ROOT / "pipelines" / "learning.yaml", [
        f"sources.0.path={backgrounds}", f"sources.0.out_dir={out / 'composites'}",
        f"sources.0.composites_per_background={per_background}"])
    stats = run_pipeline(recipe, set_dir, quiet=True)
    assert stats["invariant"]["ok"], stats["sources"]
    return set_dir


def write_region_labels(set_dir: Path, path: Path) -> Path:
    """One ``region_answerable`` label per sample on its pasted box: what a perfect region judge knows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ergo_data.core.schema import LABELS_SCHEMA
    from ergo_data.pipeline.outputs import read_parts
    from ergo_train.rewards.judges import labels_from_boxes

    rows = labels_from_boxes(read_parts(set_dir / "data", "*.parquet").to_pylist(), annotator="pasted-box")
    pq.write_table(pa.Table.from_pylist(rows, schema=LABELS_SCHEMA), path)
    return path


def valid_zoom_rate(model_name: str, rows: list[dict[str, Any]], max_pixels: int, max_new_tokens: int) -> float:
    """Share of ``rows`` whose greedy turn 1 is a well-formed, usable zoom (``ZoomEnv.zoom_ok``)."""
    from ergo_train.models.loaders import load_model
    from ergo_train.rollout.chat import TransformersChat
    from ergo_train.rollout.env import first_turn, use_tool_chat_template

    model, processor = load_model(model_name, max_pixels=max_pixels)
    chat = TransformersChat(model, use_tool_chat_template(processor), max_new_tokens=max_new_tokens,
                            generate_kwargs={"do_sample": False})  # greedy, vision placeholders suppressed
    ok = 0
    for row in rows:
        *_, env = first_turn(chat, row, max_pixels)
        ok += int(env.zoom_ok)
    return ok / len(rows)


def interval(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of a normal 95% interval."""
    n = len(values)
    mean = sum(values) / n
    sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1)) if n > 1 else 0.0
    return mean, 1.96 * sd / math.sqrt(n)


def plot(history: list[dict[str, Any]], groups: list[list[float]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    xs = list(range(1, len(groups) + 1))
    means = [interval(g)[0] for g in groups]
    half = [interval(g)[1] for g in groups]
    ax1.plot(xs, means, marker="o", color="tab:blue", label="mean weighted reward per group")
    ax1.fill_between(xs, [m - h for m, h in zip(means, half)], [m + h for m, h in zip(means, half)],
                     color="tab:blue", alpha=0.2, label="95% interval over groups")
    ax1.set_xlabel("generation (each feeds 2 optimizer steps)")
    ax1.set_ylabel("R = r_format + r_acc + r_region + 0.5 r_box")
    ax1.set_title("GRPO (GSPO preset) from the SFT checkpoint")
    ax1.legend(fontsize=8)
    steps = [h["step"] for h in history]
    for name in COMPONENTS:
        ax2.plot(steps, [h.get(f"rewards/{name}/mean", math.nan) for h in history], marker=".", label=name)
    ax2.set_xlabel("optimizer step")
    ax2.set_ylabel("component mean")
    ax2.set_title("reward components")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "learning")
    parser.add_argument("--quick", action="store_true", help="the short version (the test suite's)")
    parser.add_argument("--model", default="tiny-wide", help="the policy to start from")
    parser.add_argument("--budget-tokens", type=int, default=16, help="vision tokens per image (both turns)")
    parser.add_argument("--sft-steps", type=int)
    parser.add_argument("--grpo-steps", type=int)
    parser.add_argument("--lr", type=float, default=2e-4, help="GRPO learning rate")
    parser.add_argument("--temperature", type=float, default=0.7, help="GRPO sampling temperature")
    args = parser.parse_args(argv)
    size = dict(QUICK if args.quick else FULL)
    size.update({k: v for k, v in (("sft_steps", args.sft_steps), ("grpo_steps", args.grpo_steps)) if v})
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()

    from ergo_train.train.data import load_split
    from ergo_train.train.grpo import build_trainer, train
    from ergo_train.train.recipe import DataSpec, TrainRecipe
    from ergo_train.train.sft import SftRecipe, run_sft

    set_dir = curate(out, prepare_backgrounds(out, size["max_side"]), size["per_background"])
    labels = write_region_labels(set_dir, out / "region_labels.parquet")
    held_out = list(load_split(DataSpec(path=str(set_dir), split="val")))
    n_train = len(load_split(DataSpec(path=str(set_dir), split="train")))
    max_pixels = args.budget_tokens * 28 * 28
    print(f"data: {n_train} train / {len(held_out)} held-out samples ({time.perf_counter() - t0:.0f} s)")

    before = valid_zoom_rate(args.model, held_out, max_pixels, 100)
    print(f"valid zoom on held-out before SFT: {before:.2f}")
    sft = SftRecipe(name="learning_sft", model=args.model, dtype="float32", data=DataSpec(path=str(set_dir)),
                    budget_tokens=args.budget_tokens, margin=0.5, output_dir=str(out / "sft"), sft={
                        "max_steps": size["sft_steps"], "per_device_train_batch_size": 4, "learning_rate": 3e-3,
                        "lr_scheduler_type": "cosine", "warmup_steps": 0.05, "logging_steps": 25, "save_strategy": "no",
                        "use_cpu": True, "bf16": False, "dataloader_num_workers": 0, "disable_tqdm": True})
    sft_result = run_sft(sft)
    sft_losses = [(h["step"], h["loss"]) for h in sft_result.log_history if "loss" in h]
    print("SFT loss by step: " + ", ".join(f"{s}: {v:.3f}" for s, v in sft_losses))
    after_sft = valid_zoom_rate(str(out / "sft"), held_out, max_pixels, 100)
    print(f"valid zoom on held-out after SFT: {after_sft:.2f}")

    grpo = TrainRecipe(
        name="learning_grpo", model=str(out / "sft"), dtype="float32", data=DataSpec(path=str(set_dir)),
        budget_tokens=args.budget_tokens, preset="gspo", output_dir=str(out / "grpo"),
        rewards={"r_format": 1.0, "r_acc": 1.0,
                 "r_region": {"weight": 1.0, "judge": {"type": "stored", "labels": str(labels), "min_cover": 0.9}},
                 "r_box": {"weight": 0.5, "gamma": 0.6}},
        grpo={"max_steps": size["grpo_steps"], "per_device_train_batch_size": size["batch"], "num_generations": 4,
              "steps_per_generation": 2, "learning_rate": args.lr, "temperature": args.temperature,
              "max_completion_length": 400, "generation_kwargs": {"max_new_tokens": 100},
              "logging_steps": 1, "save_strategy": "no", "use_cpu": True, "bf16": False,
              "dataloader_num_workers": 0, "disable_tqdm": True, "activation_checkpointing": False})
    parts = build_trainer(grpo)
    start_weights = {k: v.detach().clone() for k, v in parts.model.named_parameters()}
    result = train(grpo, parts)
    moved = sum(1 for k, v in parts.model.named_parameters() if not bool((v.detach() == start_weights[k]).all()))
    history = [h for h in result.log_history if "loss" in h]
    print_table(history)
    groups = parts.metrics.group_totals
    quarter = max(1, len(groups) // 4)
    start = interval([g for call in groups[:quarter] for g in call])
    end = interval([g for call in groups[-quarter:] for g in call])
    spread = {name: max((h.get(f"ergo/group_std/{name}") or 0.0) for h in parts.metrics.history) for name in COMPONENTS}
    clip = max((h.get("clip_ratio/region_mean", 0.0) for h in history), default=0.0)
    after_grpo = valid_zoom_rate(str(out / "grpo"), held_out, max_pixels, 100)
    plot(history, groups, out / "learning_curve.png")
    summary = {
        "valid_zoom_before": before, "valid_zoom_after_sft": after_sft, "valid_zoom_after_grpo": after_grpo,
        "reward_start": start, "reward_end": end, "steps": result.global_step, "generations": len(groups),
        "max_group_std": spread, "max_clip_ratio": clip, "tensors_moved": moved, "train": n_train,
        "held_out": len(held_out), "sft_loss": sft_losses, "seconds": time.perf_counter() - t0,
        "model": args.model, "budget_tokens": args.budget_tokens,
    }
    (out / "learning.json").write_text(json.dumps(summary, indent=2))
    print(f"max within-group std per component: {', '.join(f'{k} {v:.3f}' for k, v in spread.items())}; "
          f"max clip_ratio {clip:.3f}; {moved} tensors moved; valid zoom after GRPO {after_grpo:.2f}; "
          f"curve: {out / 'learning_curve.png'} ({summary['seconds']:.0f} s)")
    print(f"learning: valid_zoom_before={before:.2f} valid_zoom_after_sft={after_sft:.2f} "
          f"reward_start={start[0]:.3f}±{start[1]:.3f} reward_end={end[0]:.3f}±{end[1]:.3f} steps={result.global_step}")
    return summary


def print_table(history: list[dict[str, Any]]) -> None:
    cols = ["step", "reward", "reward_std"] + [f"rewards/{c}/mean" for c in COMPONENTS] + \
        [f"ergo/group_std/{c}" for c in COMPONENTS] + ["clip_ratio/region_mean", "loss"]
    short = [c.replace("rewards/", "").replace("/mean", "").replace("ergo/group_std/", "sd:")
             .replace("clip_ratio/region_mean", "clip") for c in cols]
    print(" ".join(f"{s:>9}" for s in short))
    for h in history:
        cells = []
        for c in cols:
            v = h.get(c)
            cells.append(f"{v:>9.3f}" if isinstance(v, float) and not math.isnan(v) else f"{v if v is not None else '-':>9}")
        print(" ".join(cells))


if __name__ == "__main__":
    main()
