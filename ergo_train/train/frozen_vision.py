"""Keep a frozen vision tower out of the backward pass (LoRA + activation checkpointing).

With PEFT and checkpointing, TRL's trainers and ``Trainer.train`` call ``model.enable_input_require_grads()``,
which (transformers 5.17 and 5.24, read) hooks the input embedding of EVERY sub-model: the text embedding, and
also the vision tower's ``patch_embed``. The tower's activations then require grad, so the frozen tower is kept in
the autograd graph, recomputed under checkpointing and back-propagated through for nothing.
``keep_vision_out_of_backward`` removes the hooks on every frozen tower and makes the tower report no input
embedding, so later calls skip it too; the text embedding keeps its hook (LoRA on the language model needs it
with checkpointing).

Example (``ergo_train.train.grpo.build_trainer`` and ``ergo_train.train.sft.build_sft_trainer`` do this)::

    trainer = GRPOTrainer(model=model, ..., peft_config=lora)  # TRL hooks here, Trainer.train() again
    keep_vision_out_of_backward(trainer.model)                   # -> [the Qwen2.5-VL vision tower]
"""

from __future__ import annotations

from typing import Any


def frozen_towers(model: Any) -> list[Any]:
    """Sub-models whose input is not the text embedding (vision towers) and whose parameters are all frozen."""
    from transformers import PreTrainedModel

    text = model.get_input_embeddings()
    towers = []
    for m in model.modules():
        if m is model or not isinstance(m, PreTrainedModel):
            continue
        try:
            embed = m.get_input_embeddings()
        except NotImplementedError:
            continue
        if embed is None or embed is text or any(p.requires_grad for p in m.parameters()):
            continue
        towers.append(m)
    return towers


def _no_input_embeddings() -> None:
    return None


def _removed(handle: Any, hooks: dict) -> bool:
    if handle.id in hooks:
        handle.remove()
        return True
    return False


def keep_vision_out_of_backward(model: Any) -> list[Any]:
    """Drop the input-grad hooks of ``model``'s frozen towers and keep later ``enable_input_require_grads`` calls
    from adding them again; returns the towers. Call it after the PEFT wrap (before it nothing is frozen)."""
    towers = frozen_towers(model)
    for tower in towers:
        hooked = tower.get_input_embeddings()._forward_hooks
        for m in model.modules():  # the handles live on the model enable_input_require_grads was called on
            if getattr(m, "_require_grads_hooks", None):
                m._require_grads_hooks = [h for h in m._require_grads_hooks if not _removed(h, hooked)]
            single = getattr(m, "_require_grads_hook", None)  # the first hook (transformers keeps it for BC)
            if single is not None and _removed(single, hooked):
                del m._require_grads_hook
        tower.get_input_embeddings = _no_input_embeddings  # enable_input_require_grads skips a None embedding
    return towers
