"""Qwen2.5-VL's processor without torchvision, and saving it under Qwen's standard class names.

Torchvision is not needed: the PIL image processor (``Qwen2VLImageProcessorPil``) is used and the
processor class leaves the video processor out (``VisionOnlyQwenVLProcessor``).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

# Tokens a random model must never sample: generating them would make Qwen's rope index look for images
# that do not exist (docs/trl-pitfalls.md, 1). Suppress them in generation.
VISION_TOKENS = ("<|vision_start|>", "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")


def _processor_class():
    from transformers import Qwen2_5_VLProcessor
    from transformers.processing_utils import ProcessorMixin

    class VisionOnlyQwenVLProcessor(Qwen2_5_VLProcessor):
        """Qwen2.5-VL's processor without the video processor (which needs torchvision).

        ProcessorMixin reads ``__init__``'s signature to find its attributes, so leaving
        ``video_processor`` out of it is what drops the video processor.
        """

        def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
            self.image_token = getattr(tokenizer, "image_token", None) or "<|image_pad|>"
            self.video_token = getattr(tokenizer, "video_token", None) or "<|video_pad|>"
            self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
            self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
            ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)

    return VisionOnlyQwenVLProcessor


def make_processor(tokenizer, image_processor, chat_template: str | None = None):
    """A Qwen2.5-VL processor from a tokenizer and an image processor, without torchvision."""
    return _processor_class()(image_processor=image_processor, tokenizer=tokenizer, chat_template=chat_template)


def vision_token_ids(tokenizer) -> list[int]:
    """Ids of the vision placeholder tokens, for ``generation_kwargs={"suppress_tokens": ...}``."""
    return [tokenizer.convert_tokens_to_ids(t) for t in VISION_TOKENS]


def save_processor(processor, directory: str | os.PathLike) -> Path:
    """``processor.save_pretrained`` with Qwen's standard class names, so ``load_processor`` (and
    AutoProcessor where torchvision exists) read it back like any Qwen2.5-VL checkpoint."""
    out = Path(directory)
    processor.save_pretrained(out)
    pre = out / "preprocessor_config.json"
    cfg = json.loads(pre.read_text()) if pre.exists() else processor.image_processor.to_dict()
    if "Qwen2VLImageProcessor" in str(cfg.get("image_processor_type", "Qwen2VLImageProcessor")):
        cfg["image_processor_type"] = "Qwen2VLImageProcessor"  # AutoImageProcessor picks the PIL class itself
    pre.write_text(json.dumps(cfg, indent=2))
    proc = out / "processor_config.json"
    if proc.exists():
        pcfg = json.loads(proc.read_text())
        if pcfg.get("processor_class") == "VisionOnlyQwenVLProcessor":
            pcfg["processor_class"] = "Qwen2_5_VLProcessor"
        sub = pcfg.get("image_processor")
        if isinstance(sub, dict) and "Qwen2VLImageProcessor" in str(sub.get("image_processor_type", "")):
            sub["image_processor_type"] = "Qwen2VLImageProcessor"
        proc.write_text(json.dumps(pcfg, indent=2))
    return out
