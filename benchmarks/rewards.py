"""Reward throughput: completions/s of the rule rewards on one core, and judge throughput batched vs not.

Rule rewards: ``r_format``, ``r_acc``, ``r_box`` one by one (each parses the completion, as TRL calls them
separately) and ``reward_components`` (all three from one parse), on a mix of completions in TRL's message
layout (structured tool call), Hermes ``<tool_call>`` text, the paper's tag form as a plain string, and
malformed ones. The process is pinned to one CPU; the rate uses the process's CPU time (best of the repeats),
so a busy shared machine slows it less than wall time would (wall time is printed too). Target: >= 100k/s.

Judges: the VLM judge on the tiny random Qwen2.5-VL (``ergo_train.models.tiny``), the same crops judged one by one
(batch 1) and in batches, crops/s and the ratio from the same run.

    .venv/bin/python benchmarks/rewards.py                      # 20000 completions x 5 repeats, 32 crops
    .venv/bin/python benchmarks/rewards.py --n 5000 --repeats 2 --crops 8   # a quick run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

TARGET_PER_S = 100_000
SIZE = (4240, 2700)
OPTIONS = ["bear", "eagle", "lion", "tiger"]


def completions(n: int) -> list:
    """A deterministic mix: 60% structured tool calls, 15% Hermes text, 15% tag strings, 10% malformed."""
    import random

    rng = random.Random(0)
    out = []
    for i in range(n):
        x1, y1 = rng.uniform(-50, 1100), rng.uniform(-50, 700)
        x2, y2 = x1 + rng.uniform(1, 400), y1 + rng.uniform(1, 300)
        answer = rng.choice(["D", "A", "tiger", "D. tiger", "(D)", "lion"])
        kind = i % 20
        if kind < 12:
            call = {"type": "function", "function": {"name": "zoom", "arguments": {
                "x1": round(x1, 1), "y1": round(y1, 1), "x2": round(x2, 1), "y2": round(y2, 1)}}}
            out.append([{"role": "assistant", "content": "The sign is on the right.", "tool_calls": [call]},
                        {"role": "tool", "name": "zoom", "content": [{"type": "text", "text": "crop"}]},
                        {"role": "assistant", "content": f"A tiger. <answer>{answer}</answer>"}])
        elif kind < 15:
            args = json.dumps({"x1": round(x1), "y1": round(y1), "x2": round(x2), "y2": round(y2)})
            out.append([{"role": "assistant", "content": f'<tool_call>\n{{"name": "zoom", "arguments": {args}}}\n'
                                                          "</tool_call>"},
                        {"role": "tool", "name": "zoom", "content": [{"type": "text", "text": "crop"}]},
                        {"role": "assistant", "content": f"<answer>{answer}</answer>"}])
        elif kind < 18:
            out.append(f"<think>the red sign</think> <zoom>[{x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f}]</zoom> "
                       f"<answer>{answer}</answer>")
        else:
            out.append([{"role": "assistant", "content": f"<answer>{answer}</answer><answer>A</answer>"}])
    return out


def columns(n: int) -> dict:
    return {"width": [SIZE[0]] * n, "height": [SIZE[1]] * n, "options": [OPTIONS] * n, "answer": ["tiger"] * n,
                "answer_letter": ["D"] * n, "question": ["What animal is drawn on that red sign?"] * n}


def best_rate(fn, n: int, repeats: int) -> tuple[float, float]:
    """(completions/s by CPU time, by wall time), best of ``repeats``."""
    cpu, wall = [], []
    for _ in range(repeats):
        c0, w0 = time.process_time(), time.perf_counter()
        fn()
        cpu.append(time.process_time() - c0)
        wall.append(time.perf_counter() - w0)
    return n / max(min(cpu), 1e-9), n / max(min(wall), 1e-9)


def bench_rules(n: int, repeats: int) -> dict:
    from ergo_train.rewards.functions import r_acc, r_box, r_format, reward_components

    comps, cols = completions(n), columns(n)
    r_format(None, comps[:100], **cols)  # warm caches (smart_resize per size, regexes)
    results = {}
    for name, fn in [("r_format", lambda: r_format(None, comps, **cols)), ("r_acc", lambda: r_acc(None, comps, **cols)),
                     ("r_box", lambda: r_box(None, comps, **cols)),
                     ("components (format+acc+box, one parse)", lambda: reward_components(comps, cols))]:
        results[name] = best_rate(fn, n, repeats)
    return results


def bench_judge(n_crops: int, batch: int, repeats: int) -> dict:
    import numpy as np
    from PIL import Image

    from ergo_train.models.tiny import build_tiny
    from ergo_train.rewards.judges import JudgeRequest, VLMJudge

    model, processor = build_tiny(seed=0, max_pixels=64 * 28 * 28)
    rng = np.random.default_rng(0)
    crops = [Image.fromarray(rng.integers(0, 255, (int(rng.integers(84, 224)), int(rng.integers(84, 224)), 3),
                                          dtype=np.uint8)) for _ in range(n_crops)]
    reqs = [JudgeRequest(c, "What animal is drawn on that red sign?", OPTIONS, "tiger", "D") for c in crops]
    out = {}
    for b in (1, batch):
        judge = VLMJudge((model, processor), max_pixels=64 * 28 * 28, batch_size=b)
        judge.judge_batch(reqs[:2])  # warm-up
        rates = [n_crops / _timed(judge.judge_batch, reqs) for _ in range(repeats)]
        out[b] = max(rates)
    return out


def _timed(fn, *args) -> float:
    t = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=20000, help="completions per repeat")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--crops", type=int, default=32, help="crops for the judge benchmark (0: skip it)")
    ap.add_argument("--batch", type=int, default=8, help="judge batch size compared with 1")
    ap.add_argument("--strict", action="store_true", help="exit 1 when the rule rewards miss the target")
    args = ap.parse_args()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})  # one core
    c0 = time.process_time()
    for _ in range(10_000_000):
        pass
    loop_s = time.process_time() - c0
    print(f"python {platform.python_version()}, {platform.machine()}, load average "
          f"{' '.join(f'{v:.2f}' for v in os.getloadavg())}, pinned to one CPU; core speed reference: "
          f"10M empty Python loop iterations take {loop_s:.2f} s CPU (a quiet desktop core: about 0.2 s)")
    print(f"\nrule rewards: {args.n} completions (60% tool call, 15% Hermes, 15% tag string, 10% malformed), "
          f"best of {args.repeats}")
    ok = True
    for name, (cpu_rate, wall_rate) in bench_rules(args.n, args.repeats).items():
        meets = cpu_rate >= TARGET_PER_S
        ok &= meets or not name.startswith("components")
        print(f"  {name:40s} {cpu_rate:>10,.0f}/s (CPU time)  {wall_rate:>10,.0f}/s (wall)  "
              f"target {TARGET_PER_S:,}/s: {'met' if meets else 'NOT met'}")
    if args.crops:
        import torch

        print(f"\nVLM judge (tiny random Qwen2.5-VL, {args.crops} crops of 84-224 px, multiple choice, "
              f"torch threads {torch.get_num_threads()}), best of {args.repeats}")
        rates = bench_judge(args.crops, args.batch, max(1, min(args.repeats, 3)))
        print(f"  batch 1: {rates[1]:.1f} crops/s   batch {args.batch}: {rates[args.batch]:.1f} crops/s   "
              f"ratio batched/unbatched: {rates[args.batch] / rates[1]:.2f}x")
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
