"""A tiny random Qwen2.5-VL (~0.2 M parameters) built offline, cached as a checkpoint directory.

"tiny" anywhere in the project (``--model tiny``, ``model: tiny`` in a recipe) means this model: the real
Qwen2.5-VL architecture, vision tower and processor with random weights and a byte-level BPE tokenizer
trained locally, so tests run GRPO, evaluation and judges without the hub or a GPU. Any other name is
a local checkpoint directory or a hub name, loaded with ``from_pretrained``.

>>> model, processor = build_tiny(seed=0)  # integration: builds the tiny model
>>> model.config.model_type, processor.image_processor.patch_size, processor.image_processor.merge_size
('qwen2_5_vl', 14, 2)
>>> processor.tokenizer.convert_ids_to_tokens(model.config.image_token_id)
'<|image_pad|>'
>>> import tempfile
>>> path = save_tiny(tempfile.mkdtemp(), seed=0)
>>> from ergo_train.models.loaders import load_model
>>> model2, processor2 = load_model(str(path))
>>> type(model2).__name__
'Qwen2_5_VLForConditionalGeneration'

The processor comes from ``processor.py`` (no torchvision); ``loaders.load_model("tiny")`` reads the cached copy.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from ergo_train.models.processor import make_processor, save_processor

TINY_NAME = "tiny"
# Named sizes: (text hidden size, attention heads, text layers, vision hidden size). "tiny" is the tests' model;
# "tiny-wide" has the capacity to learn the two-turn episode's structure on CPU in minutes (benchmarks/learning.py);
# "tiny-mini" (~1 M parameters) learns where to look and what the crop shows (benchmarks/miniature.py).
TINY_SIZES = {"tiny": (32, 2, 2, 32), "tiny-wide": (64, 4, 2, 32), "tiny-mini": (128, 8, 4, 64)}
TINY_VERSION = 1  # bump when the tiny architecture, tokenizer corpus or processor changes
TINY_VOCAB_SIZE = 640
SPECIAL_TOKENS = (  # Qwen2.5-VL's special tokens, in Qwen's order
    "<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
    "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
    "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>",
)
ORDINARY_ADDED_TOKENS = ("<tool_call>", "</tool_call>", "<tool_response>", "</tool_response>")

_CORPUS = """\
You are a careful visual assistant. Look at the image, reason about the region that answers the question,
then call the zoom tool with the box [x1, y1, x2, y2] in pixels of the image you see.
What is the logo on that bag of bottles carried by the man? Which company does that little doll belong to?
What animal is drawn on that red sign? What kind of drink can we buy from that vending machine?
What is the colour of the car? Is the cup on the left or the right of the plate? How many people are there?
Answer with the option's letter from the given choices directly. <answer>A</answer> <answer>B</answer>
<answer>C</answer> <answer>D</answer> <zoom>[12, 34, 56, 78]</zoom> A. B. C. D. yes no left right
{"name": "zoom", "arguments": {"x1": 10, "y1": 20, "x2": 300, "y2": 400}}
{"type": "function", "function": {"name": "zoom", "description": "Zoom into a region.", "parameters":
{"type": "object", "properties": {"x1": {"type": "number", "description": "left edge"}}, "required": []}}}
# Tools You may call one or more functions to assist with the user query. function signatures
0 1 2 3 4 5 6 7 8 9 10 100 1000 0.5 3.14 red green blue yellow white black tiger lion bear eagle
"""


def _train_tokenizer_files(directory: Path) -> None:
    """Train a byte-level BPE on a small fixed corpus; write vocab.json + merges.txt (deterministic)."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=TINY_VOCAB_SIZE, min_frequency=1, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=[],
    )
    tok.train_from_iterator(_CORPUS.splitlines() * 3, trainer=trainer)
    model = json.loads(tok.to_str())["model"]
    (directory / "vocab.json").write_text(json.dumps(model["vocab"], ensure_ascii=False), encoding="utf-8")
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    (directory / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")


def build_tokenizer(directory: Path | None = None):
    """The tiny ``Qwen2Tokenizer`` with Qwen's special tokens (``<tool_call>`` etc. as ordinary tokens)."""
    from tokenizers import AddedToken
    from transformers import Qwen2Tokenizer

    with tempfile.TemporaryDirectory() as tmp:
        d = Path(directory or tmp)
        if not (d / "vocab.json").exists():
            _train_tokenizer_files(d)
        vocab = json.loads((d / "vocab.json").read_text(encoding="utf-8"))
        lines = (d / "merges.txt").read_text(encoding="utf-8").splitlines()
        merges = [tuple(line.split(" ")) for line in lines[1:] if line]  # tuples: "a b" strings fail
    tokenizer = Qwen2Tokenizer(vocab=vocab, merges=merges, unk_token=None, eos_token="<|im_end|>",
                               pad_token="<|endoftext|>")
    tokenizer.add_special_tokens({"additional_special_tokens": [AddedToken(t, special=True) for t in SPECIAL_TOKENS]})
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t in ORDINARY_ADDED_TOKENS])
    return tokenizer


def tiny_config(tokenizer, name: str = TINY_NAME):
    """The tiny Qwen2.5-VL config: 2 text layers (hidden 32; 64 for "tiny-wide"; 4 layers of 128 for "tiny-mini"),
    2 vision blocks (hidden 32; 64 for "tiny-mini"), 14-px patches. Heads keep head_dim 16, so Qwen's mrope sections
    stay as they are."""
    hidden, heads, layers, vision_hidden = TINY_SIZES[name]
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    text = {
        "vocab_size": len(tokenizer), "hidden_size": hidden, "intermediate_size": 2 * hidden, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": heads // 2, "max_position_embeddings": 4096,
        # mrope_section sums to head_dim / 2 (head_dim = hidden / heads = 16)
        "rope_parameters": {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {"depth": 2, "hidden_size": vision_hidden, "intermediate_size": 2 * vision_hidden,
              "num_heads": vision_hidden // 16, "out_hidden_size": hidden,
              "patch_size": 14, "spatial_merge_size": 2, "temporal_patch_size": 2, "window_size": 112,
              "fullatt_block_indexes": [1]}
    return Qwen2_5_VLConfig(
        text_config=text, vision_config=vision, image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"], vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"], tie_word_embeddings=False,
    )


def build_tiny(seed: int = 0, max_pixels: int | None = None, name: str = TINY_NAME):
    """Build the tiny random Qwen2.5-VL and its processor in memory; same ``seed`` -> same weights.

    The processor uses TRL's ``qwen3_vl`` chat template (Hermes-style tool calls, which Qwen2.5-VL's own
    template lacks); ``max_pixels`` sets the image processor's budget (default 1280 * 28 * 28).
    """
    import torch
    from transformers import GenerationConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil
    from trl.chat_template_utils import qwen3_vl_chat_template

    from ergo_data.core.vision import MIN_PIXELS, budget_pixels

    tokenizer = build_tokenizer()
    tokenizer.chat_template = qwen3_vl_chat_template
    image_processor = Qwen2VLImageProcessorPil(min_pixels=MIN_PIXELS, max_pixels=max_pixels or budget_pixels(1280),
                                               patch_size=14, temporal_patch_size=2, merge_size=2)
    processor = make_processor(tokenizer, image_processor, chat_template=qwen3_vl_chat_template)
    config = tiny_config(tokenizer, name)
    with torch.random.fork_rng(devices=[]):  # CPU generator only; the caller's RNG is left as it was
        torch.manual_seed(seed)
        model = Qwen2_5_VLForConditionalGeneration(config)
    eos = [tokenizer.convert_tokens_to_ids("<|im_end|>"), tokenizer.convert_tokens_to_ids("<|endoftext|>")]
    model.generation_config = GenerationConfig(eos_token_id=eos, pad_token_id=tokenizer.pad_token_id,
                                               bos_token_id=tokenizer.pad_token_id)
    return model.eval(), processor


def save_tiny(directory: str | os.PathLike, seed: int = 0, name: str = TINY_NAME) -> Path:
    """Write the tiny model + processor as a checkpoint directory that ``load_model`` reads back."""
    model, processor = build_tiny(seed, name=name)
    out = Path(directory)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    save_processor(processor, out)
    (out / "ergo_tiny.json").write_text(json.dumps({"tiny_version": TINY_VERSION, "seed": seed, "size": name}))
    return out


def tiny_cache_dir(seed: int = 0, name: str = TINY_NAME) -> Path:
    """Where the tiny checkpoint for ``seed`` is cached (``$ERGO_CACHE`` or ``~/.cache/ergo``)."""
    root = Path(os.environ.get("ERGO_CACHE", Path.home() / ".cache" / "ergo"))
    return root / f"{name}-v{TINY_VERSION}-seed{seed}"


def tiny_checkpoint(seed: int = 0, name: str = TINY_NAME) -> Path:
    """A directory checkpoint of a tiny model (``name`` in ``TINY_SIZES``), built once per version and seed."""
    final = tiny_cache_dir(seed, name)
    if (final / "ergo_tiny.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=final.name + ".", dir=final.parent))
    save_tiny(tmp, seed, name)
    try:
        tmp.rename(final)
    except OSError:  # another process won the race: use its copy
        shutil.rmtree(tmp, ignore_errors=True)
    return final
