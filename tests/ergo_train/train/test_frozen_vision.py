"""LoRA + activation checkpointing: the frozen vision tower stays out of the backward pass (a real SFT step and a
real GRPO step with the zoom, so both turns' images go through the tower)."""

from __future__ import annotations

import pytest
import torch
from transformers import TrainingArguments

from ergo_train.train.frozen_vision import frozen_towers
from ergo_train.train.grpo import build_trainer
from ergo_train.train.recipe import load_train_recipe
from ergo_train.train.sft import build_sft_trainer, load_sft_recipe
from tests.support.paths import ROOT
from tests.support.scripted import scripted_first_turn

# the checkpointing field of the installed transformers (activation_checkpointing from 5.2x, before: gradient_...)
CHECKPOINTING = next(k for k in ("activation_checkpointing", "gradient_checkpointing")
                     if k in TrainingArguments.__dataclass_fields__)
ZOOMS = [f'<tool_call>\n{{"name": "zoom", "arguments": {box}}}\n</tool_call><|im_end|>'
         for box in ('{"x1": 10, "y1": 20, "x2": 60, "y2": 70}', '{"x1": 0, "y1": 0, "x2": 400, "y2": 400}')]
ANSWERS = ["<answer>C</answer><|im_end|>", "<answer>A</answer><|im_end|>"]  # rewards differ within each group


def _requires_grad(output) -> bool | None:
    t = output if torch.is_tensor(output) else getattr(output, "last_hidden_state", None)
    if t is None and isinstance(output, tuple) and output and torch.is_tensor(output[0]):
        t = output[0]
    return None if t is None or not torch.is_grad_enabled() else bool(t.requires_grad)


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["sft", "grpo"])
def test_under_lora_and_checkpointing_no_vision_activation_requires_grad(kind, demo_set, tmp_path):
    common = [f"data.path={demo_set}", f"output_dir={tmp_path}", "model=tiny", "lora.r=4", "lora.alpha=8"]
    if kind == "sft":
        recipe = load_sft_recipe(ROOT / "pipelines" / "sft_tiny.yaml", [*common, "sft.max_steps=1", f"sft.{CHECKPOINTING}=true"])
        parts = build_sft_trainer(recipe)
    else:
        recipe = load_train_recipe(ROOT / "pipelines" / "train_tiny.yaml",
                                   [*common, "grpo.max_steps=1", f"grpo.{CHECKPOINTING}=true"])
        parts = build_trainer(recipe)
    model = parts.trainer.model
    tower = model.get_base_model().model.visual
    assert not any(p.requires_grad for p in tower.parameters())
    assert frozen_towers(model) == []  # build_*trainer took it out: it reports no input embedding to hook any more
    seen: dict[str, list[bool]] = {"vision": [], "text": []}

    def record(part):
        def hook(module, args, output):
            flag = _requires_grad(output)
            if flag is not None:
                seen[part].append(flag)
        return hook

    for m in tower.modules():
        m.register_forward_hook(record("vision"))
    for layer in model.get_base_model().model.language_model.layers:
        layer.register_forward_hook(record("text"))
    lora_before = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    with scripted_first_turn(parts.model, parts.processor.tokenizer, ZOOMS, ANSWERS):
        parts.trainer.train()  # Trainer.train enables checkpointing and calls enable_input_require_grads again
    assert seen["vision"] and not any(seen["vision"]), "a vision activation required grad"
    assert any(seen["text"]), "the language model's activations must carry grad (LoRA + checkpointing)"
    lora_after = dict(model.named_parameters())
    assert any(not torch.equal(lora_after[n], v) for n, v in lora_before.items()), "the step must move the adapters"
