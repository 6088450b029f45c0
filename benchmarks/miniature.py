"""ERGO in miniature, on CPU: does a trained policy answer held-out questions better by zooming?

    .venv/bin/python benchmarks/miniature.py                  # the whole experiment (docs/training.md)
    .venv/bin/python benchmarks/miniature.py --quick          # the short version the test suite runs
    .venv/bin/python benchmarks/miniature.py --backgrounds DIR --eval-only   # saved checkpoints, other backgrounds

1. **Task** (``pipelines/miniature.yaml``, the ``landmarks`` source): 448-px composites with four coloured landmarks;
   "Which way do the stripes run on the red disc?". At the policy's 16-token coarse view the landmark's colour says
   where to look and its stripes are gone; the zoom on its cell shows them at full resolution (the pixel-level
   check, ``legibility``, is printed). A train / held-out split by image, and a second held-out set on background
   kinds training never saw (smooth noise, and photos of other scenes).
2. **Policy**: ``tiny-wide`` (the real Qwen2.5-VL architecture, random weights, ~0.24 M parameters). Cold start
   (``ergo sft``) on the train split in every evaluation mode: two-turn zoom episodes (a short turn 1, the zoom on
   the landmark's cell, ``<answer>``) and one-turn ``direct`` / ``direct_full`` / ``oracle_crop`` episodes, so every
   baseline answers in a format that parses.
3. **RL**: ``ergo train`` (GSPO preset) from the SFT checkpoint with ERGO's reward, r_format + r_acc + r_region +
   0.5 r_box, whose r_region judge is the stored-label judge over the landmark boxes; and the same run without
   r_region and r_box (no TCE), same steps and seed. A third arm continues SFT from the same checkpoint for as many
   two-turn episodes as GRPO sampled (the SFT baseline given GRPO's data).
4. **The table**: ``ergo eval`` (``--bench curated``) of every checkpoint on the held-out sets in every mode:
   accuracy with its Wilson 95% interval, parsed share, vision tokens per item, region hit rate beside the mean crop
   area; GRPO vs the best SFT arm on unseen-background ``coarse_to_fine`` with an exact McNemar test.

Checkpoints land in ``--out`` (default ``out/miniature-run``: ``sft``, ``sft_more``, ``grpo``, ``grpo_no_tce``); the last line is
``miniature: direct=.. c2f=.. oracle=.. full=.. tokens_ratio=.. hit_sft=.. hit_grpo=.. c2f_sft=.. c2f_grpo=..
c2f_no_tce=.. p=..`` (unseen backgrounds, the GRPO policy's modes, accuracies and hit rates in %).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

BUDGET = 16  # coarse vision tokens: the geometry of the landmarks source is built for it (docs/training.md)
MODES = ("direct", "coarse_to_fine", "oracle_crop", "direct_full")
ARMS = ("sft", "sft_more", "grpo", "grpo_no_tce")
FULL = {"images": 300, "unseen_images": 30, "sft_steps": 400, "grpo_steps": 60, "batch": 8, "generations": 4,
        "heldout_limit": 60, "unseen_limit": None}
QUICK = {"images": 20, "unseen_images": 2, "sft_steps": 200, "grpo_steps": 2, "batch": 4, "generations": 2,
         "heldout_limit": 4, "unseen_limit": 4}
REASONING = "Zoom."  # turn 1's reasoning line: short, it dominates generation time
UNSEEN_PHOTOS = ("imgaug_quokka.jpg", "coco/terrain2.png")  # scenes unlike the V* photos of the train kinds


def set_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)


# ---- data -----------------------------------------------------------------------------------------------------
def curate(out: Path, name: str, overrides: list[str]) -> Path:
    from ergo_data.pipeline.executor.local import run_pipeline
    from ergo_data.pipeline.recipe import load_recipe

    set_dir = out / name
    recipe = load_recipe(ROOT / "pipelines" / "miniature.yaml",
                         [f"sources.0.out_dir={out / (name + '-composites')}", *overrides])
    stats = run_pipeline(recipe, set_dir, quiet=True)
    assert stats["invariant"]["ok"], stats["sources"]
    return set_dir


def unseen_photos(out: Path) -> Path:
    folder = out / "unseen-photos"
    folder.mkdir(parents=True, exist_ok=True)
    for rel in UNSEEN_PHOTOS:
        src = ROOT / "examples" / rel
        if not (folder / src.name).exists():
            shutil.copy(src, folder / src.name)
    return folder


def rows_of(set_dir: Path, split: str | None = None) -> list[dict[str, Any]]:
    from ergo_data.pipeline.outputs import read_parts

    rows = read_parts(set_dir / "data", "*.parquet").to_pylist()
    return [r for r in rows if split is None or r["split"] == split]


# ---- training -------------------------------------------------------------------------------------------------
def sft_recipe(out: Path, set_dir: Path, model: str, steps: int, batch: int, lr: float, name: str):
    from ergo_train.train.recipe import DataSpec
    from ergo_train.train.sft import SftRecipe

    return SftRecipe(
        name=name, model=model, dtype="float32", data=DataSpec(path=str(set_dir), split="train"),
        budget_tokens=BUDGET, margin=0.0, min_region=1.0, snap_to_patches=True, reasoning=REASONING,
        modes=list(MODES), cache_episodes=100_000, output_dir=str(out / name), seed=0,
        sft={"max_steps": steps, "per_device_train_batch_size": batch, "learning_rate": lr,
             "lr_scheduler_type": "cosine", "warmup_steps": 0.05, "logging_steps": 20, "save_strategy": "no",
             "use_cpu": True, "bf16": False, "dataloader_num_workers": 0, "disable_tqdm": True,
             "activation_checkpointing": False})


def grpo_recipe(out: Path, set_dir: Path, labels: Path, name: str, size: dict[str, Any], tce: bool,
                lr: float, temperature: float):
    from ergo_train.train.recipe import DataSpec, TrainRecipe

    rewards: dict[str, Any] = {"r_format": 1.0, "r_acc": 1.0}
    if tce:  # ERGO's TCE: alpha r_region (the stored-label judge over the landmark boxes) + beta r_box
        rewards["r_region"] = {"weight": 1.0, "judge": {"type": "stored", "labels": str(labels), "min_cover": 0.9}}
        rewards["r_box"] = {"weight": 0.5, "gamma": 0.6}
    return TrainRecipe(
        name=name, model=str(out / "sft"), dtype="float32", data=DataSpec(path=str(set_dir), split="train"),
        budget_tokens=BUDGET, preset="gspo", output_dir=str(out / name), seed=0, rewards=rewards,
        grpo={"max_steps": size["grpo_steps"], "per_device_train_batch_size": size["batch"],
              "num_generations": size["generations"], "steps_per_generation": 2, "learning_rate": lr,
              "temperature": temperature, "max_completion_length": 256, "generation_kwargs": {"max_new_tokens": 64},
              "logging_steps": 1, "save_strategy": "no", "use_cpu": True, "bf16": False,
              "dataloader_num_workers": 0, "disable_tqdm": True, "activation_checkpointing": False})


def run_sft_job(recipe, threads: int) -> dict[str, Any]:
    from ergo_train.train.sft import run_sft

    set_threads(threads)
    t0 = time.perf_counter()
    result = run_sft(recipe)
    losses = [(h["step"], h["loss"]) for h in result.log_history if "loss" in h]
    return {"name": recipe.name, "loss": losses, "steps": result.global_step, "seconds": time.perf_counter() - t0}


def run_grpo_job(recipe, threads: int) -> dict[str, Any]:
    from ergo_train.train.grpo import build_trainer, train

    set_threads(threads)
    t0 = time.perf_counter()
    parts = build_trainer(recipe)
    result = train(recipe, parts)
    history = [h for h in result.log_history if "loss" in h]
    keep = ("reward", "rewards/r_format/mean", "rewards/r_acc/mean", "rewards/r_region/mean", "rewards/r_box/mean",
            "tools/call_frequency", "ergo/zoom_area_frac", "loss")
    return {"name": recipe.name, "steps": result.global_step, "seconds": time.perf_counter() - t0,
            "history": [{k: h.get(k) for k in ("step", *keep)} for h in history],
            "group_totals": parts.metrics.group_totals}


def run_eval_job(checkpoint: str, sets: list[tuple[str, str, str | None, int | None]], modes: list[str], out: str,
                 threads: int) -> dict[str, Any]:
    """``ergo eval --bench curated`` of one checkpoint on each (name, set dir, split, limit); records + summary."""
    from ergo_train.eval.evaluate import EvalSettings, load_eval_model, run_eval

    set_threads(threads)
    settings = EvalSettings(max_pixels=BUDGET * 28 * 28, max_new_tokens=64)
    model = load_eval_model(checkpoint, settings.full_max_pixels, "cpu", "float32")
    res: dict[str, Any] = {}
    for name, set_dir, split, limit in sets:
        t0 = time.perf_counter()
        dest = Path(out) / f"{Path(checkpoint).name}-{name}"
        paths = run_eval("curated", set_dir, checkpoint, modes, dest, settings=settings, limit=limit, split=split,
                         model_and_processor=model)
        records = [json.loads(line) for line in Path(paths["results"]).read_text().splitlines()]
        res[name] = {"summary": json.loads(Path(paths["summary"]).read_text()), "seconds": time.perf_counter() - t0,
                     "records": [{k: r.get(k) for k in ("id", "seed", "mode", "correct", "status", "region_hit")}
                                 for r in records]}
    return res


def write_region_labels(set_dirs: list[Path], path: Path) -> Path:
    """One ``region_answerable`` label per sample on its landmark box: what a perfect region judge knows."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ergo_data.core.schema import LABELS_SCHEMA
    from ergo_train.rewards.judges import labels_from_boxes

    rows = [r for d in set_dirs for r in rows_of(d)]
    pq.write_table(pa.Table.from_pylist(labels_from_boxes(rows, annotator="landmark-box"), schema=LABELS_SCHEMA), path)
    return path


# ---- the table ------------------------------------------------------------------------------------------------
def pct(v: float | None) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{100 * v:.1f}"


def table(evals: dict[str, dict[str, Any]], set_name: str) -> list[str]:
    header = "| policy | mode | n | accuracy % (95% CI) | parsed % | vision tokens / item | region hit % | mean crop area % |"
    lines = [header, "|---|---|---|---|---|---|---|---|"]
    for arm, res in evals.items():
        if set_name not in res:
            continue
        for mode, s in res[set_name]["summary"]["modes"].items():
            hit = pct(s.get("region_hit_rate")) if mode == "coarse_to_fine" else "-"
            area = pct(s.get("box_area_frac_mean")) if mode in ("coarse_to_fine", "oracle_crop") else "100.0"
            lines.append(f"| {arm} | {mode} | {s['n']} | {pct(s['accuracy'])} ({pct(s['ci_low'])}-{pct(s['ci_high'])})"
                         f" | {pct(s.get('parseable'))} | {s['vision_tokens_mean'] or 0:.1f} | {hit} | {area} |")
    return lines


def final_line(evals: dict[str, dict[str, Any]], set_name: str = "unseen") -> tuple[str, dict[str, Any]]:
    from ergo_train.eval.report import mcnemar

    def stat(arm: str, mode: str, key: str = "accuracy") -> float | None:
        s = evals.get(arm, {}).get(set_name, {}).get("summary", {}).get("modes", {}).get(mode)
        return None if s is None else s.get(key)

    def c2f_records(arm: str) -> list[dict[str, Any]]:
        return [r for r in evals[arm][set_name]["records"] if r["mode"] == "coarse_to_fine"]

    best_sft = max(("sft", "sft_more"), key=lambda a: stat(a, "coarse_to_fine") or 0.0)
    test = mcnemar(c2f_records(best_sft), c2f_records("grpo"))
    full, c2f = (stat("grpo", m, "vision_tokens_mean") for m in ("direct_full", "coarse_to_fine"))
    ratio = c2f / full if c2f and full else math.nan
    line = (f"miniature: direct={pct(stat('grpo', 'direct'))} c2f={pct(stat('grpo', 'coarse_to_fine'))} "
            f"oracle={pct(stat('grpo', 'oracle_crop'))} full={pct(stat('grpo', 'direct_full'))} "
            f"tokens_ratio={ratio:.3f} hit_sft={pct(stat('sft', 'coarse_to_fine', 'region_hit_rate'))} "
            f"hit_grpo={pct(stat('grpo', 'coarse_to_fine', 'region_hit_rate'))} "
            f"c2f_sft={pct(stat(best_sft, 'coarse_to_fine'))} c2f_grpo={pct(stat('grpo', 'coarse_to_fine'))} "
            f"c2f_no_tce={pct(stat('grpo_no_tce', 'coarse_to_fine'))} p={test['p']:.3g}")
    return line, {"best_sft": best_sft, "mcnemar": test, "tokens_ratio": ratio}


def run_parallel(jobs: list[tuple[Any, tuple]], workers: int) -> list[Any]:
    """Each job (function, args) in its own process (``workers`` at once); in this process with one worker."""
    if workers <= 1:
        return [fn(*a) for fn, a in jobs]
    import multiprocessing as mp

    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
        futures = [pool.submit(fn, *a) for fn, a in jobs]
        return [f.result() for f in futures]


def evaluate_all(out: Path, arms: list[str], sets: list[tuple[str, str, str | None, int | None]], threads: int,
                 workers: int) -> dict[str, dict[str, Any]]:
    jobs = [(run_eval_job, (str(out / arm), sets, list(MODES) if arm != "grpo_no_tce" else ["coarse_to_fine"],
                            str(out / "eval"), threads)) for arm in arms]
    return dict(zip(arms, run_parallel(jobs, workers), strict=True))


def report(evals: dict[str, dict[str, Any]], out: Path, extra: dict[str, Any]) -> dict[str, Any]:
    for set_name, title in (("heldout", "held-out images, background kinds seen in training"),
                            ("unseen", "held-out images on background kinds training never saw")):
        if any(set_name in r for r in evals.values()):
            print(f"\n{title}:")
            print("\n".join(table(evals, set_name)))
    line, stats = final_line(evals)
    summary = {**extra, **stats, "line": line,
               "evals": {a: {s: v["summary"] for s, v in r.items()} for a, r in evals.items()}}
    (out / "miniature.json").write_text(json.dumps(summary, indent=2, default=str))
    print(f"\nGRPO vs the best SFT arm ({stats['best_sft']}) on unseen-background coarse_to_fine, exact McNemar: "
          f"{stats['mcnemar']}")
    print(line)
    return summary


# ---- main -----------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "out" / "miniature-run")
    parser.add_argument("--quick", action="store_true", help="the short version (the test suite's)")
    parser.add_argument("--model", default="tiny-wide", help="the policy to start from")
    parser.add_argument("--backgrounds", type=Path, help="with --eval-only: a folder of photos for a new held-out set")
    parser.add_argument("--eval-only", action="store_true", help="evaluate the saved checkpoints in --out")
    parser.add_argument("--sft-steps", type=int)
    parser.add_argument("--grpo-steps", type=int)
    parser.add_argument("--sft-lr", type=float, default=3e-3)
    parser.add_argument("--perception-steps", type=int, default=0, help="SFT steps on oracle crops alone before the "
                        "cold start in every mode (0: none)")
    parser.add_argument("--perception-lr", type=float, default=1e-3)
    parser.add_argument("--lr", type=float, default=2e-4, help="GRPO learning rate (benchmarks/learning.py's)")
    parser.add_argument("--temperature", type=float, default=0.7, help="GRPO sampling temperature (learning.py's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process (1: best on a shared "
                        "CPU, measured)")
    parser.add_argument("--workers", type=int, default=2, help="processes for the independent arms and evaluations")
    args = parser.parse_args(argv)
    size = dict(QUICK if args.quick else FULL)
    size.update({k: v for k, v in (("sft_steps", args.sft_steps), ("grpo_steps", args.grpo_steps)) if v})
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    set_threads(args.threads)
    t0 = time.perf_counter()
    from ergo_data.sources.landmarks import legibility

    if args.eval_only:
        missing = [a for a in ARMS if not (out / a / "config.json").exists()]
        if missing:
            raise SystemExit(f"--eval-only: no saved checkpoint for {missing} under {out} (run the benchmark first)")
        if args.backgrounds is None:
            raise SystemExit("--eval-only needs --backgrounds DIR (a folder of photos)")
        new = curate(out, "backgrounds-set", [f"sources.0.path={args.backgrounds.resolve()}",
                                              "sources.0.kinds=[photo]", f"sources.0.images={size['unseen_images']}",
                                              "sources.0.seed=2"])
        print(f"legibility on the new set: {legibility(rows_of(new)[:40])}")
        evals = evaluate_all(out, list(ARMS), [("unseen", str(new), None, size["unseen_limit"])], args.threads,
                             args.workers)
        return report(evals, out, {"backgrounds": str(args.backgrounds), "seconds": time.perf_counter() - t0})

    seen = curate(out, "set", [f"sources.0.images={size['images']}"])
    unseen = curate(out, "unseen", [f"sources.0.path={unseen_photos(out)}", "sources.0.kinds=[noise,photo]",
                                    f"sources.0.images={size['unseen_images']}", "sources.0.seed=1"])
    n_train, n_held, n_unseen = len(rows_of(seen, "train")), len(rows_of(seen, "val")), len(rows_of(unseen))
    leg = {"heldout": legibility(rows_of(seen, "val")[:40]), "unseen": legibility(rows_of(unseen)[:40])}
    print(f"data: {n_train} train / {n_held} held-out / {n_unseen} unseen-background items "
          f"({time.perf_counter() - t0:.0f} s)")
    for k, v in leg.items():
        print(f"legibility ({k}, nearest exact template): coarse {v['coarse_accuracy']:.2f} (chance 0.25, largest "
              f"template difference {v['coarse_template_max_diff']:.0f} grey levels), crop {v['crop_accuracy']:.2f} "
              f"(templates {v['crop_template_separation']:.1f} grey levels apart)")
    labels = write_region_labels([seen], out / "region_labels.parquet")

    start_model = args.model
    if args.perception_steps:  # a first cold-start phase on oracle crops only: the stripes, nothing else to learn
        first = sft_recipe(out, seen, args.model, args.perception_steps, size["batch"], args.perception_lr,
                           "sft_perception")
        first.modes = ["oracle_crop"]
        marker = out / "sft_perception" / "ergo_phase.json"
        settings = {"model": args.model, "steps": args.perception_steps, "lr": args.perception_lr,
                    "batch": size["batch"], "data": str(seen.resolve())}
        if marker.exists() and json.loads(marker.read_text())["settings"] == settings:
            phase = json.loads(marker.read_text())  # the same phase finished before: its checkpoint is reused
            print(f"SFT on oracle crops: reusing {marker.parent} ({phase['steps']} steps)")
        else:
            phase = run_sft_job(first, args.threads)
            marker.write_text(json.dumps({**phase, "settings": settings}))
            print(f"SFT on oracle crops: {phase['steps']} steps, {phase['seconds']:.0f} s; loss " +
                  ", ".join(f"{s}: {v:.3f}" for s, v in phase["loss"]))
        start_model = str(out / "sft_perception")
    sft = run_sft_job(sft_recipe(out, seen, start_model, size["sft_steps"], size["batch"], args.sft_lr, "sft"),
                      args.threads)
    print(f"SFT: {sft['steps']} steps, {sft['seconds']:.0f} s; loss " +
          ", ".join(f"{s}: {v:.3f}" for s, v in sft["loss"]))
    # the SFT arm given GRPO's data: as many two-turn episodes as GRPO trains on (grpo_steps x batch rollouts), in
    # SFT's mix of modes (one two-turn episode in len(MODES))
    more_steps = max(1, size["grpo_steps"] * len(MODES))
    more = sft_recipe(out, seen, str(out / "sft"), more_steps, size["batch"], args.sft_lr / 10, "sft_more")
    jobs = [(run_grpo_job, (grpo_recipe(out, seen, labels, "grpo", size, True, args.lr, args.temperature),
                            args.threads)),
            (run_grpo_job, (grpo_recipe(out, seen, labels, "grpo_no_tce", size, False, args.lr, args.temperature),
                            args.threads)),
            (run_sft_job, (more, args.threads))]
    grpo, no_tce, sft_more = run_parallel(jobs, args.workers)
    for g in (grpo, no_tce):
        scored = [h for h in g["history"] if h.get("reward") is not None]  # steps that generated
        first, last = scored[0], scored[-1]
        print(f"{g['name']}: {g['steps']} steps, {g['seconds']:.0f} s; reward {first['reward']:.3f} -> "
              f"{last['reward']:.3f}, zoom call frequency {first['tools/call_frequency']} -> "
              f"{last['tools/call_frequency']}, r_acc {first['rewards/r_acc/mean']:.3f} -> "
              f"{last['rewards/r_acc/mean']:.3f}")
    print(f"sft_more: {sft_more['steps']} steps, {sft_more['seconds']:.0f} s")
    # held-out images: the first heldout_limit items of the split keep the run within its budget
    sets = [("heldout", str(seen), "val", size["heldout_limit"]), ("unseen", str(unseen), None, size["unseen_limit"])]
    evals = evaluate_all(out, list(ARMS), sets, args.threads, args.workers)
    for arm, res in evals.items():
        print(f"eval {arm}: " + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in res.items()))
    extra = {"size": size, "model": args.model, "legibility": leg, "sft": sft, "grpo": grpo, "grpo_no_tce": no_tce,
             "sft_more": sft_more, "items": {"train": n_train, "heldout": n_held, "unseen": n_unseen},
             "seconds": time.perf_counter() - t0}
    print(f"wall time {extra['seconds']:.0f} s; checkpoints: " + ", ".join(str(out / a) for a in ARMS))
    return report(evals, out, extra)


if __name__ == "__main__":
    main()
