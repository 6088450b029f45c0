"""``load_model`` / ``load_processor`` for ``"tiny"`` (the cached tiny checkpoint) or any Qwen-VL checkpoint.

>>> model, processor = load_model("tiny", max_pixels=64 * 28 * 28)  # integration; "tiny" is cached per seed and version
>>> type(model).__name__, processor.image_processor.size["longest_edge"]
('Qwen2_5_VLForConditionalGeneration', 50176)
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from ergo_train.models.processor import make_processor
from ergo_train.models.tiny import TINY_SIZES, tiny_checkpoint

if TYPE_CHECKING:
    import torch


def image_processor_of(name_or_path: str, **kwargs: Any):
    """The checkpoint's image processor; without torchvision, Qwen-VL's PIL image processor.

    transformers 5.24's ``AutoImageProcessor`` picks the PIL class itself when torchvision is absent; in 5.17
    ``AutoImageProcessor`` itself requires torchvision (``ImportError``), so the PIL class is loaded directly.
    """
    try:
        from transformers import AutoImageProcessor

        return AutoImageProcessor.from_pretrained(name_or_path, **kwargs)
    except ImportError:
        from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

        return Qwen2VLImageProcessorPil.from_pretrained(name_or_path, **kwargs)


def load_processor(name_or_path: str, max_pixels: int | None = None):
    """Processor of a checkpoint; without torchvision, the video-less Qwen processor is built instead."""
    from transformers import AutoProcessor, AutoTokenizer

    if name_or_path in TINY_SIZES:
        name_or_path = str(tiny_checkpoint(name=name_or_path))
    kwargs: dict[str, Any] = {}
    if max_pixels is not None:
        kwargs["max_pixels"] = max_pixels
    try:
        processor = AutoProcessor.from_pretrained(name_or_path, **kwargs)
        if not hasattr(processor, "image_processor"):
            raise ValueError("not a multimodal processor")
    except (ImportError, ValueError, TypeError, OSError):
        tokenizer = AutoTokenizer.from_pretrained(name_or_path)
        image_processor = image_processor_of(name_or_path, **kwargs)
        processor = make_processor(tokenizer, image_processor, chat_template=tokenizer.chat_template)
        template = Path(name_or_path) / "chat_template.jinja"
        if template.exists():
            processor.chat_template = template.read_text(encoding="utf-8")
    if max_pixels is not None:
        set_max_pixels(processor, max_pixels)
    return processor


def set_max_pixels(processor, max_pixels: int) -> None:
    """Set a loaded processor's image budget (the processor call reads ``size``; the legacy attribute follows)."""
    processor.image_processor.size = {**dict(processor.image_processor.size), "longest_edge": max_pixels}
    if hasattr(processor.image_processor, "max_pixels"):
        processor.image_processor.max_pixels = max_pixels


def load_model(name_or_path: str, *, max_pixels: int | None = None, dtype: torch.dtype | str | None = None,
               seed: int = 0, **model_kwargs: Any):
    """``(model, processor)`` for ``"tiny"`` / ``"tiny-wide"`` (the cached tiny checkpoint) or any Qwen-VL checkpoint.

    ``name_or_path`` is ``"tiny"``, a local directory or a hub name (``Qwen/Qwen2.5-VL-7B-Instruct``).
    ``max_pixels`` sets the processor's image budget; ``dtype`` e.g. ``torch.bfloat16`` or ``"auto"``.
    """
    from transformers import AutoModelForImageTextToText

    path = str(tiny_checkpoint(seed, name_or_path)) if name_or_path in TINY_SIZES else str(name_or_path)
    if dtype is not None:
        model_kwargs["dtype"] = dtype
    try:
        model = AutoModelForImageTextToText.from_pretrained(path, **model_kwargs)
    except OSError as e:
        raise OSError(f"cannot load model {name_or_path!r}: {e} (use 'tiny', a local checkpoint directory, "
                      "or a hub name available offline)") from e
    return model.eval(), load_processor(path, max_pixels)
