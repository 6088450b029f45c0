"""The host path of GRPO training, measured as training runs it, beside its floor (issue 27).

The real ``ErgoGRPOTrainer`` (``ergo_train.train.grpo.build_trainer``) with the tiny random Qwen2.5-VL (its compute
is negligible next to the image work), the 7B recipe's shapes (budget 1280 tokens, 8 generations per prompt,
4 optimizer steps per generation: 4 images x 8 rollouts = 32 rollouts per generation) on real JPEGs of 4000 px
and more (the six example photos of ``examples/vstar`` and two generated ones, 4000x3000 and 4961x7016). Every
rollout writes a valid zoom (turn 1 is scripted with ``tests.support.scripted``: nine boxes in turn, from a
sliver to most of the view) and an answer; the rewards are the 7B recipe's (r_format, r_acc, r_region with a
served judge, r_box). The served judge is a real HTTP server in its own process that reads each request whole
and answers at once with fixed logprobs: what the trainer pays is the payload and the wire, the judge's model
runs on the GPU elsewhere.

Host time is wall time on the trainer's thread, split by part (each part's own time, nested parts taken out):

- ``fetch + coarse view``: the DataLoader's fetch (the dataset transform: turn-1 prompt and coarse view) and
  ``ZoomEnv.reset`` (the rollout's image header);
- ``zoom crop``: the zoom tool (``ZoomEnv._apply_zoom``) and any crops made ahead of it;
- ``image processor``: every pass of the real image processor;
- ``rewards``: the reward functions, less the judge;
- ``judge I/O``: the judge's calls (payload encoding, HTTP, waiting for the reply);
- ``TRL other``: the rest of TRL's generation step on the host (chat templates, tokenizer, parsing, padding).

The model's own time (``generate``, ``forward``) is device work and left out. Work done on other threads
(prefetch) is reported beside it as overlapped. The floor, measured in the same run on the same images and
boxes: one DCT-scaled coarse decode and one processor pass per distinct image of a generation, one
region-limited decode and one processor pass per crop.

    .venv/bin/python benchmarks/host_path.py               # 2 generations, the second measured
    .venv/bin/python benchmarks/host_path.py --generations 3 --json out/host_path.json
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

BUDGET_TOKENS = 1280
GOAL_RATIO = 1.5
PHOTOS = ("bag_of_bottle.jpeg", "blackmug.JPG", "doll.JPG", "flag.JPG", "queue_time.jpg", "signicade.JPG")
# turn-1 zooms on the coarse view (every view here is at least 700 x 500): a sliver to most of the image
BOXES = ([40, 40, 120, 110], [200, 100, 420, 300], [500, 300, 700, 480], [10, 10, 690, 490], [300, 50, 360, 100],
         [100, 350, 400, 480], [600, 20, 690, 200], [250, 250, 330, 330], [0, 200, 700, 260])
PARTS = ("fetch + coarse view", "zoom crop", "image processor", "rewards", "judge I/O", "TRL other")


# ---- the data: real JPEGs >= 4000 px ----------------------------------------------------------------
def bench_set(folder: Path) -> Path:
    """A curated-set Parquet of the example photos >= 4000 px and two generated ones; returns its path."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from benchmarks.curation import image_paths
    from ergo_data.core.boxes import Box
    from ergo_data.core.imageio import ImageSource

    rows = []
    for name in PHOTOS:
        path = ROOT / "examples" / "vstar" / name
        meta = json.loads(path.with_suffix(".json").read_text())
        rows.append((path, meta["question"], meta["options"], [Box.from_vstar(b) for b in meta["bbox"]]))
    for path in image_paths(1):  # benchmarks/_cache: 4000x3000 and 4961x7016, generated once
        size = ImageSource.open(path).size
        rows.append((path, "What number is written on the sign?", ["482913", "482931", "428913", "248913"],
                     [Box(0.55 * size[0], 0.3 * size[1], 0.6 * size[0], 0.33 * size[1])]))
    records = []
    for i, (path, question, options, boxes) in enumerate(rows):
        src = ImageSource.open(path)
        records.append({"id": f"host/{i}", "image": {"bytes": None, "path": str(path.resolve())},
                        "image_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "width": src.size[0],
                        "height": src.size[1], "question": question, "options": list(options),
                        "answer": options[0], "answer_letter": "A", "split": "train",
                        "boxes": [b.to_record("target") for b in boxes]})
    out = folder / "host_path.parquet"
    pq.write_table(pa.Table.from_pylist(records), out)
    return out


# ---- the served judge: a real HTTP server that answers at once ----------------------------------------
def serve_fixed_judge() -> None:
    """Serve ``/v1/chat/completions`` on 127.0.0.1 (port printed): read the body whole, answer "A" with logprobs."""
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    top = [{"token": "A", "logprob": -0.2}, {"token": "B", "logprob": -2.0}, {"token": "C", "logprob": -3.0},
           {"token": "D", "logprob": -3.5}]
    reply = json.dumps({"choices": [{"message": {"role": "assistant", "content": "A"},
                                     "logprobs": {"content": [{"token": "A", "logprob": -0.2, "top_logprobs": top}]}}],
                        "usage": {"completion_tokens": 1}}).encode()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args):
            pass

        def do_POST(self):
            json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    print(f"serving on http://127.0.0.1:{server.server_address[1]}/v1", flush=True)
    server.serve_forever()


# ---- the clock --------------------------------------------------------------------------------------
class Clock:
    """Wall time per part: on the trainer's thread each part's own time (nested parts taken out); on any other
    thread (prefetch, pools) the time is kept apart, as overlapped work."""

    def __init__(self) -> None:
        self.main = threading.main_thread()
        self.reset()

    def reset(self) -> None:
        self.own: dict[str, float] = defaultdict(float)
        self.overlapped: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self._stack: list[float] = []
        self.started = time.perf_counter()

    def wrap(self, part: str, fn):
        @functools.wraps(fn)
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            if threading.current_thread() is not self.main:
                try:
                    return fn(*args, **kwargs)
                finally:
                    self.overlapped[part] += time.perf_counter() - t0
            self._stack.append(0.0)
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                inner = self._stack.pop()
                self.own[part] += dt - inner
                self.calls[part] += 1
                if self._stack:
                    self._stack[-1] += dt

        return timed

    def patch(self, owner: Any, name: str, part: str) -> Any:
        """Time ``owner.name`` as ``part``; returns the original."""
        original = getattr(owner, name)
        setattr(owner, name, self.wrap(part, original))
        return original


# ---- the run ------------------------------------------------------------------------------------------
def _recipe(data: Path, api_base: str, out: Path, steps: int):
    from ergo_data.core.vision import budget_pixels
    from ergo_train.train.recipe import parse_train_recipe

    judge = {"type": "vlm", "model": "judge", "api_base": api_base, "max_pixels": budget_pixels(BUDGET_TOKENS),
             "concurrency": 16}
    return parse_train_recipe({
        "name": "host_path", "model": "tiny", "dtype": "float32", "data": {"path": str(data), "split": None},
        "budget_tokens": BUDGET_TOKENS, "preset": "gspo", "output_dir": str(out), "seed": 0,
        "rewards": {"r_format": 1.0, "r_acc": 1.0, "r_region": {"weight": 1.0, "judge": judge},
                    "r_box": {"weight": 0.5, "gamma": 0.6}},
        "grpo": {"num_generations": 8, "per_device_train_batch_size": 8, "gradient_accumulation_steps": 1,
                 "steps_per_generation": 4, "max_completion_length": 2048, "max_steps": steps, "use_cpu": True,
                 "bf16": False, "save_strategy": "no", "logging_steps": 1, "dataloader_num_workers": 0,
                 "activation_checkpointing": False, "generation_kwargs": {"max_new_tokens": 96},
                 "disable_tqdm": True}})


def cheap_vision(model) -> None:
    """Give the tiny model a vision encoder whose compute is negligible: each merged patch's embedding is the
    mean of its pixel values times a learned bias. The real tiny tower costs ~0.4 s per 1280-token image on
    these CPUs (window attention over 5000 patches), ~300 image passes per generation: minutes of device work
    that would swamp the run. What the host makes (views, crops, ``pixel_values``, tokens) is unchanged: the
    same tensors reach the model."""
    from transformers.modeling_outputs import BaseModelOutputWithPooling

    visual = model.model.visual
    bias = visual.merger.mlp[-1].bias
    merge = visual.spatial_merge_size ** 2

    def forward(hidden_states, grid_thw=None, **kwargs):
        means = hidden_states.reshape(-1, merge * hidden_states.shape[-1]).mean(-1, keepdim=True)
        return BaseModelOutputWithPooling(last_hidden_state=None, pooler_output=means * bias)

    visual.forward = forward


def _instrument(parts, clock: Clock, zooms: list) -> None:
    from ergo_train.rewards.judges import VLMJudge
    from ergo_train.rewards.reward_set import RewardComponent
    from ergo_train.rollout.env import ZoomEnv

    trainer = parts.trainer
    ds = trainer.train_dataset
    ds.__getitems__ = clock.wrap("fetch + coarse view", ds.__getitems__)
    clock.patch(ZoomEnv, "reset", "fetch + coarse view")
    apply_zoom = clock.wrap("zoom crop", ZoomEnv._apply_zoom)

    def recording_zoom(env, *args, **kwargs):
        out = apply_zoom(env, *args, **kwargs)
        zooms.append((env.row["image"]["path"], env.zooms[-1]))
        return out

    ZoomEnv._apply_zoom = recording_zoom
    for owner, name, part in _ahead_points():
        clock.patch(owner, name, part)
    clock.untimed_processor = clock.patch(type(parts.processor.image_processor), "__call__", "image processor")
    clock.patch(RewardComponent, "__call__", "rewards")
    clock.patch(VLMJudge, "judge_batch", "judge I/O")
    clock.patch(trainer, "_generate_and_score_completions", "TRL other")
    clock.patch(parts.model, "generate", "model")
    clock.patch(parts.model, "forward", "model")


def _ahead_points() -> list[tuple[Any, str, str]]:
    """Where work is done ahead of its use, where the code has such points: crops made before the tool calls
    (the trainer thread's wait, and each crop on its pool thread) and the judge's payloads encoded in the
    background; each counted in its part (on another thread: as overlapped)."""
    import importlib

    points = [("ergo_train.train.grpo", "prepare_zooms", "zoom crop"),
              ("ergo_train.rollout.env", "ZoomEnv._prepare_zoom", "zoom crop"),
              ("ergo_train.models.served", "_png_data_url", "judge I/O")]
    out = []
    for module, attr, part in points:
        owner = importlib.import_module(module)
        *path, name = attr.split(".")
        for p in path:
            owner = getattr(owner, p)
        if hasattr(owner, name):
            out.append((owner, name, part))
    return out


def _profile_last(trainer) -> None:
    """Print where the host time of the last ``_generate_and_score_completions`` went (cProfile, own time)."""
    import cProfile
    import pstats

    inner = trainer._generate_and_score_completions

    def profiled(*args, **kwargs):
        prof = cProfile.Profile()
        try:
            return prof.runcall(inner, *args, **kwargs)
        finally:
            pstats.Stats(prof).sort_stats("tottime").print_stats(30)

    trainer._generate_and_score_completions = profiled


def floor(zooms: list, image_processor, call, max_pixels: int) -> dict[str, float]:
    """The floor of one generation's image work, in ms: one DCT-scaled coarse decode and one processor pass
    (``call``, the processor's own ``__call__``) per distinct image, one region-limited decode and one processor
    pass per crop (fresh sources: nothing shared)."""
    from ergo_data.core.imageio import ImageSource
    from ergo_train.rollout.zoom import fit_aspect

    data = {path: Path(path).read_bytes() for path, _ in zooms}
    t = {"coarse": 0.0, "crop": 0.0, "coarse processor": 0.0, "crop processor": 0.0}
    for raw in data.values():
        t0 = time.perf_counter()
        view = ImageSource(raw).coarse(max_pixels)
        t1 = time.perf_counter()
        call(image_processor, images=[view], return_tensors="pt")
        t["coarse"] += t1 - t0
        t["coarse processor"] += time.perf_counter() - t1
    for path, z in zooms:
        src = ImageSource(data[path])
        t0 = time.perf_counter()
        crop = src.crop(fit_aspect(z.box, src.size), max_pixels)
        t1 = time.perf_counter()
        call(image_processor, images=[crop], return_tensors="pt")
        t["crop"] += t1 - t0
        t["crop processor"] += time.perf_counter() - t1
    return {k: 1000 * v for k, v in t.items()}


def host_path_figures(generations: int = 2, measured: int = 1, profile: bool = False) -> dict[str, Any]:
    """Run ``generations`` generations (the first ``generations - measured`` warm up) and measure the rest."""
    import os

    from transformers import TrainerCallback

    from ergo_train.train.grpo import build_trainer, train
    from tests.support.scripted import scripted_first_turn

    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    steps_per_gen, rollouts = 4, 32
    warm = generations - measured
    clock, zooms, marks = Clock(), [], {}

    class Window(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            # from the first optimizer step of the last warm-up generation: the fetches that follow (and the
            # next generation's prefetch they may start) belong to the measured generation
            if state.global_step == (warm - 1) * steps_per_gen + 1:
                clock.reset()
                zooms.clear()
                marks["start"] = time.perf_counter()

    with tempfile.TemporaryDirectory() as tmp:
        data = bench_set(Path(tmp))
        judge = subprocess.Popen([sys.executable, "-c", "from benchmarks.host_path import serve_fixed_judge as s; s()"],
                                 cwd=ROOT, stdout=subprocess.PIPE, text=True)
        try:
            api_base = judge.stdout.readline().split(" on ", 1)[1].strip()
            recipe = _recipe(data, api_base, Path(tmp) / "out", generations * steps_per_gen)
            parts = build_trainer(recipe)
            cheap_vision(parts.model)
            parts.trainer.add_callback(Window())
            _instrument(parts, clock, zooms)
            if profile:
                _profile_last(parts.trainer)
            calls = [('<tool_call>\n' + json.dumps({"name": "zoom", "arguments": dict(zip(("x1", "y1", "x2", "y2"), b))})
                      + '\n</tool_call><|im_end|>') for b in BOXES]
            t0 = time.perf_counter()
            with scripted_first_turn(parts.model, parts.processor.tokenizer, calls, ["<answer>A</answer><|im_end|>"]):
                train(recipe, parts)
            wall = time.perf_counter() - marks["start"]
            total_s = time.perf_counter() - t0
        finally:
            judge.terminate()
            judge.wait(timeout=30)
        fl = floor(zooms, parts.processor.image_processor, clock.untimed_processor, recipe.max_pixels)
    n = measured
    per_gen = {p: 1000 * clock.own.get(p, 0.0) / n for p in PARTS}
    overlapped = {p: 1000 * v / n for p, v in clock.overlapped.items()}
    host = sum(per_gen.values())
    floor_gen = sum(fl.values()) / n
    fig = {"generations_measured": n, "rollouts_per_generation": rollouts, "host_ms_per_generation": host,
           "host_ms_per_rollout": host / rollouts, "parts_ms_per_generation": per_gen,
           "overlapped_ms_per_generation": overlapped, "floor_ms_per_generation": floor_gen,
           "floor_ms_per_rollout": floor_gen / rollouts, "floor_parts_ms_per_generation": {k: v / n for k, v in fl.items()},
           "ratio": host / floor_gen, "crops": len(zooms) / n, "distinct_images": len({p for p, _ in zooms}) / n,
           "model_ms_per_generation": 1000 * clock.own.get("model", 0.0) / n,
           "window_wall_s_per_generation": wall / n, "seconds": total_s, "calls": dict(clock.calls)}
    report(fig)
    return fig


def report(fig: dict[str, Any]) -> None:
    r = fig["rollouts_per_generation"]
    print(f"host path of GRPO generation, budget {BUDGET_TOKENS}, {r} rollouts per generation "
          f"({fig['distinct_images']:.0f} distinct images, {fig['crops']:.0f} crops), {fig['generations_measured']} measured")
    print(f"  {'part':24s} {'ms/generation':>14s} {'ms/rollout':>11s}   calls")
    for p, v in fig["parts_ms_per_generation"].items():
        print(f"  {p:24s} {v:14.1f} {v / r:11.2f}   {fig['calls'].get(p, 0) / fig['generations_measured']:.0f}")
    print(f"  {'total on the trainer':24s} {fig['host_ms_per_generation']:14.1f} {fig['host_ms_per_rollout']:11.2f}")
    for p, v in fig["overlapped_ms_per_generation"].items():
        print(f"  overlapped (other threads): {p} {v:.1f} ms/generation")
    print("  floor: " + ", ".join(f"{k} {v:.1f}" for k, v in fig["floor_parts_ms_per_generation"].items())
          + f" = {fig['floor_ms_per_generation']:.1f} ms/generation")
    print(f"  model (tiny, device work, not host): {fig['model_ms_per_generation']:.0f} ms/generation; "
          f"window wall {fig['window_wall_s_per_generation']:.1f} s/generation")
    print(f"host path: {fig['host_ms_per_rollout']:.1f} ms per rollout, floor {fig['floor_ms_per_rollout']:.1f} ms, "
          f"ratio {fig['ratio']:.2f}")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--generations", type=int, default=2, help="generations run (the first one warms up)")
    ap.add_argument("--json", type=Path, help="also write the figures here")
    ap.add_argument("--profile", action="store_true", help="cProfile the measured generation's scoring step")
    args = ap.parse_args(argv)
    fig = host_path_figures(args.generations, args.generations - 1, profile=args.profile)
    if args.json:
        args.json.write_text(json.dumps(fig, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
