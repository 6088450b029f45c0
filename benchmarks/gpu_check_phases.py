"""The GPU check's phases (``benchmarks/gpu_check.py`` runs them, each under its own time limit).

Every phase is ``fn(entry, state)``: it fills ``entry`` (its part of gpu_check.json) and hands on what later
phases need through ``state`` (the curated set, the one model in memory and its processor).
"""

from __future__ import annotations

import importlib
import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Self

ROOT = Path(__file__).resolve().parent.parent
# what the check imports beyond the machine's stack (carried as wheels, scripts/gpu_wheels.txt)
CARRIED = ("trl", "datasets", "pydantic", "imagehash", "simplejpeg", "pyvips")
THE_CHECK = ("torch", "transformers", "peft", "accelerate", "numpy", "pyarrow", "PIL", "yaml",
             "ergo_data.pipeline.executor.local", "ergo_train.train.grpo", "ergo_train.train.sft",
             "ergo_train.eval.evaluate", "ergo_train.models.sized", "tests.support.scripted")


@dataclass
class Settings:
    """Sizes of one run: ``full()`` for one H100, ``dry()`` for the CPU rehearsal (same code, small sizes)."""

    size: str
    dtype: str
    budget: int  # tokens per image (both turns)
    lora_r: int
    sft_steps: int
    sft_batch: int
    num_generations: int  # rollouts per prompt
    per_device_batch: int
    steps_per_generation: int
    grpo_steps: int
    max_completion: int  # turn 1 + tool answer (crop tokens) + turn 2
    turn_max_new: int  # new tokens per turn (>= the forced zoom call's 48 tokens)
    zoom: tuple[int, int, int, int]  # the box turn 1 is forced to write, on the coarse view
    eval_items: int
    eval_max_new: int
    full_max_pixels: int | None  # direct_full's budget (None: Qwen's own default, 16384 tokens)
    rollouts: int = field(init=False)

    def __post_init__(self) -> None:
        self.rollouts = self.per_device_batch * self.steps_per_generation

    @classmethod
    def full(cls) -> Settings:
        return cls(size="7b", dtype="bfloat16", budget=1280, lora_r=64, sft_steps=4, sft_batch=4,
                   num_generations=8, per_device_batch=4, steps_per_generation=8, grpo_steps=8,
                   max_completion=2048, turn_max_new=640, zoom=(64, 64, 704, 704), eval_items=2, eval_max_new=64,
                   full_max_pixels=None)

    @classmethod
    def dry(cls) -> Settings:
        return cls(size="dry", dtype="bfloat16", budget=64, lora_r=64, sft_steps=2, sft_batch=2,
                   num_generations=4, per_device_batch=2, steps_per_generation=2, grpo_steps=2,
                   max_completion=256, turn_max_new=64, zoom=(10, 20, 150, 150), eval_items=1, eval_max_new=64,
                   full_max_pixels=4 * 64 * 28 * 28)

    def describe(self) -> str:
        return (f"{self.size} body in {self.dtype}, budget {self.budget} tokens, LoRA r={self.lora_r}, "
                f"{self.rollouts} rollouts per generation, completion up to {self.max_completion} tokens")


def zoom_call(box: tuple[int, int, int, int]) -> str:
    """Turn 1's forced text: a valid ``zoom`` call in the Hermes format TRL parses, ending the turn."""
    args = dict(zip(("x1", "y1", "x2", "y2"), box, strict=True))
    return f'<tool_call>\n{json.dumps({"name": "zoom", "arguments": args})}\n</tool_call><|im_end|>'


class GenerationLog:
    """Wraps ``model.generate`` to count, per turn, the rows, the new tokens (up to EOS) and the seconds, and for
    turn 2 the image tokens of the crop (those after the last ``<tool_response>``)."""

    def __init__(self, model, tokenizer, cuda: bool) -> None:
        self.model, self.cuda = model, cuda
        self.response_id = tokenizer.convert_tokens_to_ids("<tool_response>")
        self.image_id = tokenizer.convert_tokens_to_ids("<|image_pad|>")
        self.eos = {tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.pad_token_id}
        self.turns: dict[int, dict[str, float]] = {1: Counter(), 2: Counter()}

    def __enter__(self) -> Self:
        import torch

        original = self.model.generate

        def generate(*args: Any, **kwargs: Any):
            ids = kwargs.get("input_ids", args[0] if args else None)
            t0 = time.perf_counter()
            out = original(*args, **kwargs)
            if self.cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            if ids is not None:
                seqs = getattr(out, "sequences", out)
                turn = 2 if bool((ids == self.response_id).any()) else 1
                log = self.turns[turn]
                log["calls"] += 1
                log["rows"] += ids.shape[0]
                log["seconds"] += seconds
                for row_in, row_out in zip(ids, seqs[:, ids.shape[1]:], strict=True):
                    new = row_out.tolist()
                    log["new_tokens"] += next((i for i, t in enumerate(new) if t in self.eos), len(new))
                    if turn == 2:
                        last = (row_in == self.response_id).nonzero()
                        if len(last):
                            log["crop_tokens"] += int((row_in[int(last[-1]):] == self.image_id).sum())
            return out

        self.model.generate = generate
        return self

    def __exit__(self, *exc: object) -> None:
        self.model.__dict__.pop("generate", None)

    def summary(self) -> dict[str, Any]:
        out = {}
        for turn, log in self.turns.items():
            rows = max(log["rows"], 1)
            out[f"turn{turn}"] = {"rows": int(log["rows"]), "new_tokens": int(log["new_tokens"]),
                                  "seconds": round(log["seconds"], 2),
                                  "tokens_per_s": round(log["new_tokens"] / max(log["seconds"], 1e-9), 1)}
            if turn == 2:
                out["turn2"]["crop_tokens_per_rollout"] = round(log["crop_tokens"] / rows, 1)
        return out


def phase_functions(s: Settings, work: Path, cuda: bool) -> dict[str, Any]:
    """The phase bodies, bound to the settings, the scratch folder and the device."""
    from ergo_data.core.vision import budget_pixels

    device_kw = {"use_cpu": not cuda, "bf16": s.dtype == "bfloat16", "dataloader_num_workers": 0,
                 "disable_tqdm": True, "save_strategy": "no", "logging_steps": 1, "report_to": "none",
                 "activation_checkpointing": True}

    def imports(entry: dict[str, Any], state: dict[str, Any]) -> None:
        missing = {}
        for name in (*CARRIED, *THE_CHECK):
            try:
                importlib.import_module(name)
            except ImportError as e:
                missing[name] = f"{type(e).__name__}: {e}"
        entry["checked"] = len(CARRIED) + len(THE_CHECK)
        if missing:
            raise ModuleNotFoundError("the check needs modules this machine lacks and .whl/ did not carry: "
                                      + "; ".join(f"{k} ({v})" for k, v in missing.items()))

    def curate(entry: dict[str, Any], state: dict[str, Any]) -> None:
        from ergo_data.pipeline.executor.local import run_pipeline
        from ergo_data.pipeline.recipe import load_recipe

        recipe = load_recipe(ROOT / "pipelines" / "demo.yaml", [
            f"sources.0.path={ROOT / 'examples' / 'vstar'}", f"sources.1.path={ROOT / 'examples' / 'coco'}"])
        # the demo's `sql` stage needs DuckDB, which the GPU machine lacks; it rejects none of the examples
        recipe = recipe.model_copy(update={"stages": [st for st in recipe.stages if st["type"] != "sql"]})
        stats = run_pipeline(recipe, work / "demo", quiet=True)
        entry.update(kept=stats["totals"]["kept"], stages=[st["type"] for st in recipe.stages])
        state["demo"] = work / "demo"

    def build(entry: dict[str, Any], state: dict[str, Any]) -> None:
        from ergo_train.models.sized import build_sized

        model, processor = build_sized(s.size, dtype=s.dtype, max_pixels=budget_pixels(s.budget))
        state.update(model=model, processor=processor)
        entry.update(parameters_b=round(sum(p.numel() for p in model.parameters()) / 1e9, 3),
                     vocab_size=model.config.text_config.vocab_size, tokenizer_size=len(processor.tokenizer),
                     dtype=str(model.dtype), device=str(model.device))

    def sft(entry: dict[str, Any], state: dict[str, Any]) -> None:
        from ergo_train.train.recipe import DataSpec, LoraSpec
        from ergo_train.train.sft import SftRecipe, build_sft_trainer

        recipe = SftRecipe(name="gpu_check_sft", model="in-memory", dtype=s.dtype,
                           data=DataSpec(path=str(state["demo"]), split=None), budget_tokens=s.budget,
                           lora=LoraSpec(r=s.lora_r, alpha=2 * s.lora_r), output_dir=str(work / "sft"),
                           sft={"max_steps": s.sft_steps, "per_device_train_batch_size": s.sft_batch,
                                "learning_rate": 1e-4, **device_kw})
        parts = build_sft_trainer(recipe, loaded=(state["model"], state["processor"]))
        trainer = parts.trainer
        entry["trainable_params_m"] = round(sum(p.numel() for p in trainer.model.parameters()
                                                if p.requires_grad) / 1e6, 1)
        trainer.train()
        state["model"] = trainer.model.merge_and_unload()  # as `ergo sft` does, in memory: no multi-GB save
        logs = [h for h in trainer.state.log_history if "loss" in h]
        runtime = next(h["train_runtime"] for h in trainer.state.log_history if "train_runtime" in h)
        entry.update(steps=trainer.state.global_step, step_s=round(runtime / max(trainer.state.global_step, 1), 3),
                     tokens=logs[-1].get("num_tokens"), tokens_per_s=round(logs[-1].get("num_tokens", 0) / runtime, 1),
                     loss=logs[-1]["loss"])
        if not all(math.isfinite(h["loss"]) for h in logs):
            raise ValueError(f"non-finite SFT loss: {[h['loss'] for h in logs]}")

    def grpo(entry: dict[str, Any], state: dict[str, Any]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        from ergo_data.core.schema import LABELS_SCHEMA
        from ergo_data.pipeline.outputs import read_parts
        from ergo_train.rewards.judges import labels_from_boxes
        from ergo_train.train.grpo import build_trainer
        from ergo_train.train.recipe import DataSpec, LoraSpec, TrainRecipe
        from tests.support.scripted import scripted_first_turn  # check/test-only: forces turn 1's zoom

        labels = work / "region_labels.parquet"
        rows = [r for r in read_parts(state["demo"] / "data", "*.parquet").to_pylist() if r.get("boxes")]
        pq.write_table(pa.Table.from_pylist(labels_from_boxes(rows), schema=LABELS_SCHEMA), labels)
        recipe = TrainRecipe(
            name="gpu_check_grpo", model="in-memory", dtype=s.dtype, data=DataSpec(path=str(state["demo"]), split=None),
            budget_tokens=s.budget, preset="gspo", lora=LoraSpec(r=s.lora_r, alpha=2 * s.lora_r),
            output_dir=str(work / "grpo"),
            rewards={"r_format": 1.0, "r_acc": 1.0, "r_region": {"weight": 1.0, "judge": {
                "type": "stored", "labels": str(labels)}}, "r_box": {"weight": 0.5, "gamma": 0.6}},
            grpo={"max_steps": s.grpo_steps, "per_device_train_batch_size": s.per_device_batch,
                  "num_generations": s.num_generations, "steps_per_generation": s.steps_per_generation,
                  "learning_rate": 1e-5, "max_completion_length": s.max_completion,
                  "generation_kwargs": {"max_new_tokens": s.turn_max_new}, **device_kw})
        model, processor = state["model"], state["processor"]
        parts = build_trainer(recipe, loaded=(model, processor))
        trainer = parts.trainer
        with GenerationLog(model, processor.tokenizer, cuda) as gen, \
                scripted_first_turn(model, processor.tokenizer, [zoom_call(s.zoom)]):
            try:
                trainer.train()
            finally:
                entry["generation"] = gen.summary()
        state["model"] = trainer.model.merge_and_unload() if hasattr(trainer.model, "merge_and_unload") else model
        logs = [h for h in trainer.state.log_history if "loss" in h]
        step_times = [h["step_time"] for h in logs if "step_time" in h]
        generated = [h for h in logs if "reward" in h]  # the steps that generated (one per steps_per_generation)
        entry.update(steps=trainer.state.global_step, rollouts_per_generation=s.rollouts,
                     step_s=round(sum(step_times) / max(len(step_times), 1), 3),
                     tool_calls=max((h.get("tools/call_frequency", 0.0) for h in logs), default=0.0),
                     turn2_tokens=entry["generation"]["turn2"]["new_tokens"],
                     completion_mean_length=[h.get("completions/mean_length") for h in generated],
                     reward=[h.get("reward") for h in generated], loss=[h["loss"] for h in logs])
        if not entry["tool_calls"] or not entry["turn2_tokens"]:
            raise AssertionError(f"the tool loop did not run: tool_calls {entry['tool_calls']}, "
                                 f"turn-2 tokens {entry['turn2_tokens']}")

    def evaluate(entry: dict[str, Any], state: dict[str, Any]) -> None:
        from ergo_train.eval.evaluate import FULL_RES_MAX_PIXELS, EvalSettings, run_eval
        from ergo_train.models.loaders import set_max_pixels
        from tests.support.scripted import scripted_first_turn

        model, processor = state["model"], state["processor"]
        model.eval()  # after training: in train mode with checkpointing, generate would run without its KV cache
        if getattr(model, "is_gradient_checkpointing", False):
            model.gradient_checkpointing_disable()
        full = s.full_max_pixels or FULL_RES_MAX_PIXELS
        set_max_pixels(processor, max(full, budget_pixels(s.budget)))  # views are sized by the eval itself
        settings = EvalSettings(max_pixels=budget_pixels(s.budget), max_new_tokens=s.eval_max_new,
                                full_max_pixels=full)
        bench = ROOT / "examples" / "vstar"
        records = []
        for modes, forced in ((["direct", "oracle_crop", "direct_full"], False), (["coarse_to_fine"], True)):
            out = work / f"eval_{'_'.join(modes)}"
            with scripted_first_turn(model, processor.tokenizer, [zoom_call(s.zoom)] if forced else []):
                files = run_eval("vstar", bench, f"random {s.size}", modes, out, settings=settings,
                                 limit=s.eval_items, model_and_processor=(model, processor))
            records += [json.loads(line) for line in Path(files["results"]).read_text().splitlines()]
        for mode in ("direct", "coarse_to_fine", "oracle_crop", "direct_full"):
            mine = [r for r in records if r.get("mode") == mode]
            tokens = sum(r.get("generated_tokens") or 0 for r in mine)
            seconds = sum(r.get("wall_s") or 0.0 for r in mine)
            entry[mode] = {"items": len(mine), "statuses": dict(Counter(r.get("status") for r in mine)),
                           "generated_tokens": tokens, "tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
                           "seconds": round(seconds, 2)}
        errors = [r for r in records if r.get("status") in ("exception", "server_error")]
        if errors:
            raise RuntimeError(f"{len(errors)} evaluation records failed: {errors[0].get('error')}")

    def vllm(entry: dict[str, Any], state: dict[str, Any]) -> None:
        import importlib.util

        present = importlib.util.find_spec("vllm") is not None
        entry.update(status="not run", reason=(
            "vLLM is installed, but this check does not drive it" if present else
            "vLLM is not on this machine and cannot travel to it (~400 MB; 64 MiB carried at most)"))

    return {"imports": imports, "curate": curate, "build": build, "sft": sft, "grpo": grpo, "eval": evaluate,
            "vllm": vllm}
