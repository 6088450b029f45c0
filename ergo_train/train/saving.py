"""Saving a trained policy once, on the main process, however many processes trained it (``accelerate launch``).

``trainer.save_model`` runs on every process (under FSDP or DeepSpeed it gathers the weights collectively and writes
on the main one); what the workbench adds (merging LoRA adapters, the processor with Qwen's class names) runs on the
main process only, and every process waits until the directory is complete before it returns.

Example (what ``ergo sft`` and ``ergo train`` do at the end)::

    trainer.train()
    save_trained(trainer, processor, "out/sft", merge_lora=True)   # a full checkpoint, written by rank 0
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ergo_train.models.processor import save_processor


def save_trained(trainer: Any, processor: Any, directory: str | os.PathLike, *, merge_lora: bool = False) -> Path:
    """Save ``trainer``'s model and ``processor`` into ``directory``; ``merge_lora``: merge the adapters first and
    save a full model (the adapters alone otherwise). Writes on the main process only; all processes return after."""
    out = Path(directory)
    acc = trainer.accelerator
    if merge_lora:  # the merged weights are written by one process; the others keep their (unused) adapters
        if acc.is_main_process:
            acc.unwrap_model(trainer.model).merge_and_unload().save_pretrained(str(out))
    else:
        trainer.save_model(str(out))  # collective under FSDP/DeepSpeed; writes on the main process
    if acc.is_main_process:
        save_processor(processor, out)
    acc.wait_for_everyone()
    return out
