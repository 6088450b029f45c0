"""Qwen2.5-VL at a published size with random weights, built offline from the architecture's numbers.

For GPU checks without hub access: the real 3B (or 7B) body, vision tower and processor, with the tiny
model's locally trained tokenizer (so the embedding table is small; everything else is full size). The
numbers are Qwen2.5-VL's released configs.

>>> cfg = sized_config("3b", vocab_size=640, token_ids={"image": 1, "video": 2, "vision_start": 3,
...                    "vision_end": 4, "eos": 5, "pad": 6})
>>> cfg.text_config.hidden_size, cfg.text_config.num_hidden_layers, cfg.vision_config.depth
(2048, 36, 32)
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

SIZES: dict[str, dict[str, Any]] = {
    "3b": {"text": {"hidden_size": 2048, "intermediate_size": 11008, "num_hidden_layers": 36,
                    "num_attention_heads": 16, "num_key_value_heads": 2},
           "out_hidden_size": 2048},
    "7b": {"text": {"hidden_size": 3584, "intermediate_size": 18944, "num_hidden_layers": 28,
                    "num_attention_heads": 28, "num_key_value_heads": 4},
           "out_hidden_size": 3584},
}
VISION = {"depth": 32, "hidden_size": 1280, "intermediate_size": 3420, "num_heads": 16, "patch_size": 14,
          "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
          "fullatt_block_indexes": [7, 15, 23, 31]}


def sized_config(size: str, vocab_size: int, token_ids: dict[str, int]):
    """``Qwen2_5_VLConfig`` of a published ``size`` ("3b", "7b") for a tokenizer of ``vocab_size``."""
    from transformers import Qwen2_5_VLConfig

    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; known: {', '.join(SIZES)}")
    spec = SIZES[size]
    text = {**spec["text"], "vocab_size": vocab_size, "max_position_embeddings": 32768,
            "rope_parameters": {"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
            "bos_token_id": token_ids["pad"], "eos_token_id": token_ids["eos"], "pad_token_id": token_ids["pad"]}
    return Qwen2_5_VLConfig(text_config=text, vision_config={**VISION, "out_hidden_size": spec["out_hidden_size"]},
                            image_token_id=token_ids["image"], video_token_id=token_ids["video"],
                            vision_start_token_id=token_ids["vision_start"],
                            vision_end_token_id=token_ids["vision_end"], tie_word_embeddings=False)


def save_sized(directory: str | os.PathLike, size: str, dtype: str = "bfloat16", seed: int = 0) -> Path:
    """Write a random-weight Qwen2.5-VL of ``size`` with the tiny tokenizer/processor as a checkpoint directory."""
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration

    from ergo_train.models.processor import save_processor
    from ergo_train.models.tiny import build_tiny

    _, processor = build_tiny(seed)
    tok = processor.tokenizer
    ids = {k: tok.convert_tokens_to_ids(t) for k, t in (
        ("image", "<|image_pad|>"), ("video", "<|video_pad|>"), ("vision_start", "<|vision_start|>"),
        ("vision_end", "<|vision_end|>"), ("eos", "<|im_end|>"), ("pad", "<|endoftext|>"))}
    config = sized_config(size, len(tok), ids)
    torch.manual_seed(seed)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = Qwen2_5_VLForConditionalGeneration(config).to(getattr(torch, dtype))
    model.generation_config = GenerationConfig(eos_token_id=[ids["eos"], ids["pad"]], pad_token_id=ids["pad"],
                                               bos_token_id=ids["pad"])
    out = Path(directory)
    model.save_pretrained(out)
    save_processor(processor, out)
    return out
