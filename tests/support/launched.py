"""Test-only: the ``ergo`` command line for ``accelerate launch``, with test hooks switched on by environment variables.

A test cannot monkeypatch the processes ``accelerate launch`` starts, so this entry point installs the hooks in each
of them and then runs the real ``ergo`` app with the given arguments:

- ``ERGO_TEST_TURN1`` / ``ERGO_TEST_TURN2``: JSON lists of texts that every GRPO turn 1 (turn 2) writes in turn
  (``tests.support.scripted.scripted_first_turn`` on the trainer's model): a policy that zooms. TRL's parsing,
  the tool loop, the crop, the rewards and the update are the real path.
- ``ERGO_TEST_RECORD``: a folder; each process appends JSON lines to ``rank<N>.jsonl``: the row ids of every SFT
  batch it collated, the rollouts and step metrics of every GRPO scoring call, and every processor save and
  LoRA merge (which rank wrote).

    ERGO_TEST_RECORD=/tmp/rec python -m accelerate.commands.launch --multi_gpu --num_processes 2 \\
        -m tests.support.launched sft pipelines/sft_tiny.yaml --set sft.max_steps=1
"""

from __future__ import annotations

import json
import os
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

_STACK = ExitStack()  # the scripted turns stay on for the life of the process


def rank() -> int:
    return int(os.environ.get("RANK", "0"))


def record(event: str, **data: Any) -> None:
    folder = os.environ.get("ERGO_TEST_RECORD")
    if folder:
        with open(Path(folder) / f"rank{rank()}.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps({"event": event, "rank": rank(), **data}) + "\n")


def _texts(name: str) -> list[str]:
    return json.loads(os.environ.get(name, "[]"))


def install() -> None:
    """Wrap the builders the ``ergo sft`` / ``ergo train`` commands call (they import them when they run)."""
    from peft.tuners.tuners_utils import BaseTuner

    from ergo_train.train import grpo, saving, sft

    real_save, real_merge = saving.save_processor, BaseTuner.merge_and_unload
    real_grpo, real_sft = grpo.build_trainer, sft.build_sft_trainer

    def save_processor(processor, directory):
        record("save_processor", dir=str(directory))
        return real_save(processor, directory)

    def merge_and_unload(self, *args, **kwargs):
        record("merge")
        return real_merge(self, *args, **kwargs)

    def build_sft_trainer(recipe):
        parts = real_sft(recipe)
        collate = parts.collator.__call__

        def collator(rows):
            record("sft_batch", ids=[r["id"] for r in rows], world=parts.trainer.accelerator.num_processes)
            return collate(rows)

        parts.trainer.data_collator = collator  # the dataloader is built in train(), with this
        return parts

    def build_trainer(recipe):
        parts = real_grpo(recipe)
        if _texts("ERGO_TEST_TURN1"):
            _STACK.enter_context(grpo_scripted(parts))
        metrics, real_record = parts.metrics, parts.metrics.record

        def scored(name, values, completions, kwargs):
            before = len(metrics.history)
            real_record(name, values, completions, kwargs)
            if len(metrics.history) > before:  # the last component of the call: the step metrics are in
                record("scored", step=kwargs["trainer_state"].global_step, ids=list(kwargs["id"]),
                       roles=[[m["role"] for m in c] for c in completions], group_totals=metrics.group_totals[-1],
                       metrics=metrics.history[-1], world=parts.trainer.accelerator.num_processes)

        metrics.record = scored
        return parts

    saving.save_processor = save_processor
    BaseTuner.merge_and_unload = merge_and_unload
    grpo.build_trainer, sft.build_sft_trainer = build_trainer, build_sft_trainer


def grpo_scripted(parts):
    from tests.support.scripted import scripted_first_turn

    return scripted_first_turn(parts.model, parts.processor.tokenizer, _texts("ERGO_TEST_TURN1"),
                               _texts("ERGO_TEST_TURN2") or None)


def main() -> int:
    from ergo_data.cli import main as ergo

    install()
    return ergo()


if __name__ == "__main__":
    sys.exit(main())
