"""GPU check: SFT, GRPO with the real rollout, and evaluation in every mode, on a full-size Qwen2.5-VL body.

Run through ``scripts/gpu_check.sh`` (it installs the carried wheels first). On CUDA it builds Qwen2.5-VL from
the 3B config with random weights in bf16 (no hub), curates the demo set, runs a few SFT steps, a few GRPO
steps (two-turn zoom rollout, the full ERGO reward with the stored-label region judge) and ``ergo eval`` on the
examples in every mode, and prints step time, tokens/s and peak GPU memory per phase. ``--dry-run`` runs the
same phases on CPU with the tiny model and one step each, to check the script without a GPU.

    scripts/gpu_check.sh --dry-run          # CPU, ~2 minutes: the script itself works
    scripts/gpu_check.sh                    # one H200, < 8 minutes
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")


class Phase:
    """Times a phase and reads the CUDA peak memory it reached."""

    def __init__(self, name: str, cuda: bool, report: dict[str, Any]) -> None:
        self.name, self.cuda, self.report = name, cuda, report

    def __enter__(self) -> dict[str, Any]:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        self.t0 = time.perf_counter()
        self.entry: dict[str, Any] = {}
        return self.entry

    def __exit__(self, *exc: object) -> None:
        import torch

        if self.cuda:
            torch.cuda.synchronize()
            self.entry["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
        self.entry["seconds"] = time.perf_counter() - self.t0
        self.report[self.name] = self.entry
        shown = ", ".join(f"{k} {v:.3g}" if isinstance(v, float) else f"{k} {v}" for k, v in self.entry.items())
        print(f"[{self.name}] {shown}", flush=True)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, tiny model, one step per phase")
    parser.add_argument("--size", default="3b", help="Qwen2.5-VL body to build with random weights (3b, 7b)")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "out" / "gpu_check"))
    parser.add_argument("--sft-steps", type=int, default=4)
    parser.add_argument("--grpo-steps", type=int, default=3)
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        raise SystemExit("no CUDA device: run with --dry-run to check the script on CPU")
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"device": torch.cuda.get_device_name(0) if cuda else "cpu", "torch": torch.__version__,
                              "dry_run": args.dry_run}
    budget = 1280 if cuda else 64
    steps = (args.sft_steps, args.grpo_steps) if cuda else (1, 1)
    dtype, bf16 = ("bfloat16", True) if cuda else ("float32", False)
    print(f"gpu check on {report['device']} (torch {torch.__version__}), budget {budget} tokens", flush=True)

    from ergo_data.pipeline.executor.local import run_pipeline
    from ergo_data.pipeline.recipe import load_recipe

    with Phase("curate", False, report) as entry:
        demo = out / "demo"
        stats = run_pipeline(load_recipe(ROOT / "pipelines" / "demo.yaml", [
            f"sources.0.path={ROOT / 'examples' / 'vstar'}", f"sources.1.path={ROOT / 'examples' / 'coco'}"]),
            demo, quiet=True)
        entry["kept"] = stats["totals"]["kept"]

    with Phase("build_model", cuda, report) as entry:
        if cuda:
            from ergo_train.models.sized import save_sized

            base = str(save_sized(out / f"qwen25vl-{args.size}-random", args.size, dtype=dtype))
        else:
            base = "tiny"
        entry["model"] = base

    report.update(run_phases(out, demo, base, budget, steps, dtype, bf16, cuda, report))
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"gpu check: {json.dumps({k: v for k, v in report.items() if isinstance(v, dict)}, default=str)}")
    print(f"report: {out / 'gpu_check.json'}")
    return report


def run_phases(out: Path, demo: Path, base: str, budget: int, steps: tuple[int, int], dtype: str, bf16: bool,
               cuda: bool, report: dict[str, Any]) -> dict[str, Any]:
    import pyarrow as pa
    import pyarrow.parquet as pq

    from ergo_data.core.schema import LABELS_SCHEMA
    from ergo_data.core.vision import budget_pixels
    from ergo_data.pipeline.outputs import read_parts
    from ergo_train.eval.evaluate import EvalSettings, run_eval
    from ergo_train.rewards.judges import labels_from_boxes
    from ergo_train.train.grpo import build_trainer, train
    from ergo_train.train.recipe import DataSpec, TrainRecipe
    from ergo_train.train.sft import SftRecipe, build_sft_trainer, run_sft

    device_kw = {"use_cpu": not cuda, "bf16": bf16, "dataloader_num_workers": 0, "disable_tqdm": True,
                 "save_strategy": "no", "logging_steps": 1, "report_to": "none"}
    with Phase("sft", cuda, report) as entry:
        sft = SftRecipe(name="gpu_sft", model=base, dtype=dtype, data=DataSpec(path=str(demo)), budget_tokens=budget,
                        output_dir=str(out / "sft"), sft={"max_steps": steps[0], "per_device_train_batch_size": 2,
                                                          "learning_rate": 1e-5, **device_kw})
        result = run_sft(sft, build_sft_trainer(sft))
        logs = [h for h in result.log_history if "loss" in h]
        runtime = next(h["train_runtime"] for h in result.log_history if "train_runtime" in h)
        entry.update(steps=result.global_step, step_s=runtime / max(result.global_step, 1),
                     tokens_per_s=logs[-1].get("num_tokens", 0.0) / runtime, loss=logs[-1]["loss"])

    labels = out / "region_labels.parquet"
    rows = read_parts(demo / "data", "*.parquet").to_pylist()
    pq.write_table(pa.Table.from_pylist(labels_from_boxes([r for r in rows if r.get("boxes")]), schema=LABELS_SCHEMA),
                   labels)
    with Phase("grpo", cuda, report) as entry:
        grpo = TrainRecipe(
            name="gpu_grpo", model=str(out / "sft"), dtype=dtype, data=DataSpec(path=str(demo)),
            budget_tokens=budget, preset="gspo", output_dir=str(out / "grpo"),
            rewards={"r_format": 1.0, "r_acc": 1.0, "r_region": {"weight": 1.0, "judge": {
                "type": "stored", "labels": str(labels)}}, "r_box": {"weight": 0.5, "gamma": 0.6}},
            grpo={"max_steps": steps[1], "per_device_train_batch_size": 4, "num_generations": 2,
                  "steps_per_generation": 1, "learning_rate": 1e-6, "max_completion_length": 2 * budget + 512,
                  "generation_kwargs": {"max_new_tokens": 128}, **device_kw})
        parts = build_trainer(grpo)
        result = train(grpo, parts)
        logs = [h for h in result.log_history if "loss" in h]
        entry.update(steps=result.global_step, step_s=sum(h.get("step_time", 0.0) for h in logs) / max(len(logs), 1),
                     completion_tokens_per_s=sum(h.get("completions/mean_length", 0.0) * 4 for h in logs)
                     / max(sum(h.get("step_time", 0.0) for h in logs), 1e-9),
                     tool_calls=logs[-1].get("tools/call_frequency"), reward=logs[-1].get("reward"))

    with Phase("eval", cuda, report) as entry:
        # on CPU, direct_full at a few megapixels is minutes per item: the dry run caps it and the item count
        settings = EvalSettings(max_pixels=budget_pixels(budget), max_new_tokens=128,
                                **({} if cuda else {"full_max_pixels": 4 * budget_pixels(budget)}))
        modes = ["direct", "coarse_to_fine", "oracle_crop", "direct_full"]
        files = run_eval("vstar", ROOT / "examples" / "vstar", str(out / "grpo"), modes, out / "eval",
                         settings=settings, limit=None if cuda else 2, device="cuda" if cuda else "cpu", dtype=dtype)
        records = [json.loads(line) for line in Path(files["results"]).read_text().splitlines()]
        for mode in modes:
            mine = [r for r in records if r.get("mode") == mode]
            tokens = [r.get("generated_tokens") or 0 for r in mine]
            seconds = [r.get("wall_s") or 0.0 for r in mine]
            entry[mode] = {"items": len(mine), "statuses": dict(Counter(r.get("status") for r in mine)),
                           "correct": sum(bool(r.get("correct")) for r in mine),
                           "tokens_per_s": sum(tokens) / max(sum(seconds), 1e-9)}
    return {}


if __name__ == "__main__":
    main()
