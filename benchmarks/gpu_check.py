"""GPU check: SFT, GRPO with the real zoom rollout, and ``ergo eval`` in every mode on a 7B-shaped Qwen2.5-VL.

Run through ``scripts/gpu_check.sh`` (it installs the carried wheels first and keeps a log). One random-weight
Qwen2.5-VL-7B body (bf16, the 7B's vocabulary of 152,064, no hub) is built on the GPU once and kept in memory:
SFT steps with LoRA r=64 and activation checkpointing (the adapter merged in memory), then GRPO steps (GSPO
preset, 32 rollouts per generation, completions up to 2,048 tokens at the 1,280-token budget) in which every
turn 1 is forced to write a valid zoom (``tests/support/scripted.py``, a check/test-only hook), so TRL's tool
loop, the crop and turn 2 run; then every evaluation mode. Each phase runs under its own time limit and reports
step time, tokens/s, peak GPU memory and host vs GPU time; one phase failing still reports the others.
``--dry-run`` walks the same code on CPU with a small body (``sized.py``'s "dry") and small sizes.

    scripts/gpu_check.sh --dry-run            # CPU rehearsal of the code (scripts/gpu_rehearsal.sh runs it in
                                              # the GPU machine's package set)
    scripts/gpu_check.sh                      # one H100: ~2.5 minutes estimated (docs/training.md)
    scripts/gpu_check.sh --phase grpo         # rerun one phase (its prerequisites curate + build run first)
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")

PHASES = ("imports", "curate", "build", "sft", "grpo", "eval", "vllm")
NEEDS = {"sft": ("curate", "build"), "grpo": ("curate", "build"), "eval": ("build",), "build": (), "curate": ()}
# seconds per phase on one H100: ~2-3x the estimate of docs/training.md, 6 minutes in all at worst, so that two
# runs fit in 15 minutes of machine time with its start-up; on CPU for the dry run
LIMITS = {"imports": 30, "curate": 30, "build": 45, "sft": 45, "grpo": 150, "eval": 55, "vllm": 5}
DRY_LIMITS = {"imports": 300, "curate": 120, "build": 120, "sft": 300, "grpo": 600, "eval": 300, "vllm": 10}


class PhaseTimeout(Exception):
    """A phase ran past its time limit."""


class GpuSampler:
    """GPU utilisation sampled every 0.2 s while a phase runs (``torch.cuda.utilization``, which needs pynvml, or
    ``nvidia-smi``): GPU-busy seconds = wall seconds x mean utilisation. None where neither is available."""

    def __init__(self, cuda: bool) -> None:
        self.cuda, self.samples, self._stop = cuda, [], threading.Event()
        self._thread: threading.Thread | None = None

    def _read(self) -> float | None:
        import torch

        try:
            return float(torch.cuda.utilization())
        except (ImportError, ModuleNotFoundError, RuntimeError):  # no pynvml: ask the driver's tool
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits",
                                      "-i", "0"], check=True, capture_output=True, text=True, timeout=5)
                return float(out.stdout.strip().splitlines()[0])
            except (OSError, subprocess.SubprocessError, ValueError, IndexError):
                return None

    def _loop(self) -> None:
        while not self._stop.wait(0.2):
            try:
                value = self._read()
            except Exception:  # noqa: BLE001 - a driver error (e.g. pynvml's NVMLError) only ends the sampling
                return
            if value is None:
                return
            self.samples.append(value)

    def __enter__(self) -> Self:
        if self.cuda:
            self._thread = threading.Thread(target=self._loop, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=6)

    def mean(self) -> float | None:
        return sum(self.samples) / len(self.samples) / 100 if self.samples else None


def _on_alarm(signum: int, frame: Any) -> None:
    raise PhaseTimeout("time limit reached")


def run_phase(name: str, fn, limit_s: float, cuda: bool, report: dict[str, Any]) -> bool:
    """Run ``fn(entry)`` under ``limit_s``; record status, wall/host/GPU seconds, peak GPU memory in ``report``."""
    import torch

    entry: dict[str, Any] = {"status": "running", "limit_s": limit_s}
    report["phases"][name] = entry
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0, c0 = time.perf_counter(), time.process_time()
    signal.signal(signal.SIGALRM, _on_alarm)
    signal.setitimer(signal.ITIMER_REAL, limit_s)
    with GpuSampler(cuda) as sampler:
        try:
            fn(entry)
            if cuda:
                torch.cuda.synchronize()
            entry["status"] = "passed" if entry.get("status") == "running" else entry["status"]
        except PhaseTimeout:
            entry.update(status="timeout", error=f"over its limit of {limit_s:.0f} s")
        except BaseException as e:  # a failure is reported, and the next phase still runs
            if isinstance(e, KeyboardInterrupt):
                raise
            entry.update(status="failed", error=f"{type(e).__name__}: {e}",
                         traceback=traceback.format_exc(limit=-6).splitlines()[-14:])
        finally:
            signal.setitimer(signal.ITIMER_REAL, 0)
    wall = time.perf_counter() - t0
    entry.update(wall_s=round(wall, 2), host_cpu_s=round(time.process_time() - c0, 2))
    busy = sampler.mean()
    entry["gpu_busy_s"] = round(wall * busy, 2) if busy is not None else None
    if cuda:
        entry["peak_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        entry["peak_gpu_reserved_gib"] = round(torch.cuda.max_memory_reserved() / 2**30, 2)
    shown = {k: v for k, v in entry.items() if k not in ("traceback", "limit_s")}
    print(f"[{name}] {json.dumps(shown, default=str)}", flush=True)
    if entry.get("traceback"):
        print("\n".join(entry["traceback"]), flush=True)
    return entry["status"] == "passed"


def environment(cuda: bool) -> dict[str, Any]:
    """What ran: device, Python, key versions, and the whole ``pip freeze`` (so the machine's list becomes exact)."""
    import torch

    freeze = subprocess.run([sys.executable, "-m", "pip", "freeze"], check=False, capture_output=True, text=True,
                            timeout=120)
    versions = {}
    for mod in ("transformers", "trl", "peft", "accelerate", "datasets", "numpy", "huggingface_hub", "torchvision"):
        try:
            versions[mod] = __import__(mod).__version__
        except ImportError as e:
            versions[mod] = f"absent ({type(e).__name__})"
    return {"device": torch.cuda.get_device_name(0) if cuda else f"cpu ({os.cpu_count()} cores)",
            "python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
            "versions": versions, "pip_freeze": freeze.stdout.splitlines()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="CPU, small body and sizes, the same code")
    parser.add_argument("--phase", action="append", choices=PHASES, help="run only this phase (repeatable); "
                        "its prerequisites (curate, build) run first")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT") or ROOT / "out" / "gpu_check"),
                        help="where gpu_check.json goes (the log is written beside it by gpu_check.sh)")
    parser.add_argument("--work", type=Path, default=None, help="scratch folder (default: a new one under /tmp)")
    args = parser.parse_args(argv)
    import torch

    cuda = torch.cuda.is_available() and not args.dry_run
    if not cuda and not args.dry_run:
        print("no CUDA device: run with --dry-run to rehearse on CPU", file=sys.stderr)
        return 2
    from gpu_check_phases import Settings, phase_functions

    settings = Settings.dry() if args.dry_run else Settings.full()
    work = args.work or Path(tempfile.mkdtemp(prefix="ergo-gpu-check-"))
    args.out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"dry_run": args.dry_run, "settings": settings.__dict__, "work": str(work),
                              "phases": {}, **environment(cuda)}
    print(f"gpu check on {report['device']} (python {report['python']}, torch {report['torch']}, transformers "
          f"{report['versions']['transformers']}); {settings.describe()}", flush=True)
    wanted = args.phase or list(PHASES)
    plan = [p for p in PHASES if p in wanted or p == "imports" or any(p in NEEDS.get(w, ()) for w in wanted)]
    functions, state = phase_functions(settings, work, cuda), {}
    limits = DRY_LIMITS if args.dry_run else LIMITS
    started = time.perf_counter()
    for name in plan:
        missing = [n for n in NEEDS.get(name, ()) if report["phases"].get(n, {}).get("status") != "passed"]
        if missing:
            report["phases"][name] = {"status": "skipped", "error": f"needs {', '.join(missing)}"}
            print(f"[{name}] skipped: needs {', '.join(missing)}", flush=True)
            continue
        run_phase(name, lambda entry, fn=functions[name]: fn(entry, state), limits[name], cuda, report)
        (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    report["total_s"] = round(time.perf_counter() - started, 1)
    statuses = {n: e["status"] for n, e in report["phases"].items()}
    report["summary"] = statuses
    (args.out / "gpu_check.json").write_text(json.dumps(report, indent=2, default=str))
    print(f"gpu check: {json.dumps(statuses)} in {report['total_s']} s; report {args.out / 'gpu_check.json'}")
    return 0 if all(s in ("passed", "not run") for s in statuses.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
