"""The recipes' checkpointing key reaches ``GRPOConfig``/``SFTConfig`` under the installed transformers' name
(``activation_checkpointing`` in 5.24, ``gradient_checkpointing`` in 5.17, where the new name is a TypeError)."""

from __future__ import annotations

import dataclasses

import pytest

from ergo_data.core.errors import RecipeError
from ergo_train.train.recipe import (
    checkpointing_key,
    grpo_config_kwargs,
    load_train_recipe,
    with_checkpointing_key,
)
from tests.support.paths import ROOT

OLD = dataclasses.make_dataclass("OldArguments", [("gradient_checkpointing", bool, False),
                                                  ("gradient_checkpointing_kwargs", dict, None)])


def test_either_name_becomes_the_installed_one():
    assert with_checkpointing_key({"gradient_checkpointing": True}, OLD) == {"gradient_checkpointing": True}
    assert with_checkpointing_key({"activation_checkpointing": True,
                                   "activation_checkpointing_kwargs": {"use_reentrant": False}}, OLD) == {
        "gradient_checkpointing": True, "gradient_checkpointing_kwargs": {"use_reentrant": False}}
    key = checkpointing_key()  # the installed transformers
    assert with_checkpointing_key({"gradient_checkpointing": False}) == {key: False}


def test_both_names_with_different_values_is_an_error():
    assert with_checkpointing_key({"activation_checkpointing": True, "gradient_checkpointing": True}, OLD) == {
        "gradient_checkpointing": True}
    with pytest.raises(RecipeError, match="both"):
        with_checkpointing_key({"activation_checkpointing": True, "gradient_checkpointing": False}, OLD)


def test_the_tiny_recipe_builds_a_grpo_config():
    from trl import GRPOConfig

    kw = grpo_config_kwargs(load_train_recipe(ROOT / "pipelines" / "train_tiny.yaml", ["grpo.max_steps=1"]),
                            use_vllm=False)
    config = GRPOConfig(**kw)
    assert config.gradient_checkpointing is False  # the recipe's false, not TRL's default true
