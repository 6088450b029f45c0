"""The tiny random Qwen2.5-VL: built offline, deterministic, a real checkpoint, a real processor."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from ergo_data.core.vision import budget_pixels, vision_tokens
from ergo_train.models.loaders import load_model
from ergo_train.models.processor import vision_token_ids
from ergo_train.models.tiny import SPECIAL_TOKENS, build_tiny, save_tiny, tiny_checkpoint
from tests.support.scripted import scripted_first_turn

pytestmark = pytest.mark.integration  # every test builds or loads the tiny model

BUDGET = budget_pixels(64)


def _same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_same_seed_same_weights_other_seed_other_weights():
    a, _ = build_tiny(seed=0)
    b, _ = build_tiny(seed=0)
    c, _ = build_tiny(seed=1)
    assert _same_weights(a, b)
    assert not _same_weights(a, c)


def test_build_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    build_tiny(seed=5)
    assert torch.equal(torch.rand(3), expected)


def test_tokenizer_has_qwen_special_tokens_as_single_ids_and_round_trips():
    model, processor = build_tiny()
    tok = processor.tokenizer
    for t in SPECIAL_TOKENS + ("<tool_call>", "</tool_call>"):
        assert len(tok(t, add_special_tokens=False)["input_ids"]) == 1, t
    text = 'Look. <tool_call>\n{"name": "zoom", "arguments": {"x1": 1.5, "y1": 2}}\n</tool_call> ünïcode 東京'
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert model.config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert model.config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert model.config.get_text_config().vocab_size == len(tok)
    assert tok.convert_tokens_to_ids("<|im_end|>") in model.generation_config.eos_token_id


def test_processor_budget_gives_qwen_vision_token_count():
    _, processor = build_tiny(max_pixels=BUDGET)
    image = Image.new("RGB", (1200, 900), (10, 200, 30))
    messages = [{"role": "user", "content": [{"type": "image", "image": image}, {"type": "text", "text": "What?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    n_image_tokens = int((inputs["input_ids"] == processor.image_token_id).sum())
    assert n_image_tokens == vision_tokens(image.size, BUDGET) == 54


def test_save_and_load_round_trip(tmp_path):
    model, _ = build_tiny(seed=3)
    path = save_tiny(tmp_path / "ckpt", seed=3)
    loaded, processor = load_model(str(path), max_pixels=BUDGET)
    assert type(loaded).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert _same_weights(model, loaded)
    assert processor.image_processor.size["longest_edge"] == BUDGET
    assert "<tool_call>" in processor.chat_template  # TRL's qwen3_vl template survives the round trip


def test_tiny_name_uses_the_cached_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("ERGO_CACHE", str(tmp_path))
    first = tiny_checkpoint()
    assert first.parent == tmp_path and (first / "config.json").exists()
    stamp = (first / "model.safetensors").stat().st_mtime_ns
    model, _ = load_model("tiny")
    assert (first / "model.safetensors").stat().st_mtime_ns == stamp  # reused, not rebuilt
    assert _same_weights(model, build_tiny(seed=0)[0])


def test_unknown_model_name_is_a_clear_error(tmp_path):
    with pytest.raises(OSError, match="cannot load model"):
        load_model(str(tmp_path / "no_such_checkpoint"))


def test_generate_with_an_image_and_the_scripted_first_turn():
    model, processor = build_tiny(max_pixels=BUDGET)
    tok = processor.tokenizer
    messages = [{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (300, 200))},
                                             {"type": "text", "text": "Where?"}]}]
    inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                           return_tensors="pt")
    free = model.generate(**inputs, max_new_tokens=12, do_sample=True, suppress_tokens=vision_token_ids(tok))
    new = free[0, inputs["input_ids"].shape[1]:].tolist()
    assert 0 < len(new) <= 12 and not set(new) & set(vision_token_ids(tok))
    script = '<tool_call>\n{"name": "zoom", "arguments": {"x1": 1, "y1": 2, "x2": 30, "y2": 40}}\n</tool_call><|im_end|>'
    with scripted_first_turn(model, tok, [script]):
        forced = model.generate(**inputs, max_new_tokens=80, do_sample=True)
    assert tok.decode(forced[0, inputs["input_ids"].shape[1]:]) == script
    assert "generate" not in vars(model)  # the hook is removed on exit
