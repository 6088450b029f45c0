"""Qwen2.5-VL at a published size with random weights, built offline from the architecture's numbers.

For GPU checks without hub access: the real 3B (or 7B) body, vision tower and processor with random weights,
the 7B's vocabulary size (152,064 rows in the embedding and the head) and the tiny model's locally trained
tokenizer. The tokenizer knows 615 ids: an id past it (the random model samples them) decodes to nothing, as
the real Qwen tokenizer does for its 399 padding rows (151,665-152,063); it still counts as a generated token.
``"dry"`` is a small body of the same code for CPU rehearsals (benchmarks/gpu_check --dry-run).

>>> cfg = sized_config("3b", vocab_size=640, token_ids={"image": 1, "video": 2, "vision_start": 3,
...                    "vision_end": 4, "eos": 5, "pad": 6})
>>> cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers, cfg.vision_config.depth
(2048, 36, 32)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

QWEN25_VL_VOCAB = 152064  # Qwen2.5-VL-3B/7B's embedding rows (config.json's vocab_size)
VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
          "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
          "fullatt_block_indexes": [7, 15, 23, 31]}
SIZES: dict[str, dict[str, Any]] = {
    "3b": {"text": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                    "num_attention_heads": 16, "num_key_value_heads": 2},
           "out_hidden_size": 2048},
    "7b": {"text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4},
           "out_hidden_size": 3584},
    # CPU rehearsal: head_dim 128 like the real ones (mrope_section sums to 64), two layers, a two-block tower
    "dry": {"text": {"hidden_size": 256, "intermediate_size": 512, "num_hidden_layers": 2,
                     "num_attention_heads": 2, "num_key_value_heads": 1},
            "out_hidden_size": 256,
            "vision": {"depth": 2, "hidden_size": 64, "intermediate_size": 128, "num_heads": 2,
                       "fullatt_block_indexes": [1]}},
}


def sized_config(size: str, vocab_size: int, token_ids: dict[str, int]):
    """``Qwen2_5_VLConfig`` of a published ``size`` ("3b", "7b") for a tokenizer of ``vocab_size``."""
    from transformers import Qwen2_5_VLConfig

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    spec = SIZES[size]
    text = {**spec["text"], "vocab_size": vocab_size, "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            "bos_token_id": token_ids["pad"], "eos_token_id": token_ids["eos"], "pad_token_id": token_ids["pad"]}
    vision = {**VISION, **spec.get("vision", {}), "out_hidden_size": spec["out_hidden_size"]}
    return Qwen2_5_VLConfig(text_config=text, vision_config=vision,
                            image_token_id=token_ids["image"], video_token_id=token_ids["video"],
                            vision_start_token_id=token_ids["vision_start"],
                            vision_end_token_id=token_ids["vision_end"], tie_word_embeddings=False)


def build_sized(size: str, *, dtype: str = "bfloat16", device: str | None = None, seed: int = 0,
                vocab_size: int = QWEN25_VL_VOCAB, max_pixels: int | None = None):
    """``(model, processor)`` in memory: a random-weight Qwen2.5-VL of ``size`` built directly on ``device``
    (default: CUDA when present) in ``dtype``, with the tiny tokenizer/processor."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from ergo_train.models.tiny import build_tiny

    _, processor = build_tiny(seed, max_pixels=max_pixels)
    tok = processor.tokenizer
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (
        ("image", "<|image_pad|>"), ("video", "<|video_pad|>"), ("vision_start", "<|vision_start|>"),
        ("vision_end", "<|vision_end|>"), ("eos", "<|im_end|>"), ("pad", "<|endoftext|>"))}
    if vocab_size < len(tok):
        raise ValueError(f"vocab_size {vocab_size} is smaller than the tokenizer ({len(tok)} tokens)")
    config = sized_config(size, vocab_size, ids)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(seed)
    with torch.device(device):  # built in place in its dtype: a 7B in fp32 first would need 2x the memory
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=getattr(torch, dtype))
    model.generation_config = GenerationConfig(eos_token_id=[ids["eos"], ids["pad"]], pad_token_id=ids["pad"],
                                               bos_token_id=ids["pad"])
    return model.eval(), processor


def save_sized(directory: str | os.PathLike, size: str, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """Write a random-weight Qwen2.5-VL of ``size`` with the tiny tokenizer/processor as a checkpoint directory."""
    from ergo_train.models.processor import save_processor

    model, processor = build_sized(size, dtype=dtype, seed=seed)
    out = Path(directory)
    model.save_pretrained(out)
    save_processor(processor, out)
    return out
