"""Test/check-only: force turn 1 of a random model to write a given text (a tool call), everything after is real.

Used by the tests and by the GPU check (benchmarks/gpu_check_phases.py), never by the package itself.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


# ---- test-only hook -------------------------------------------------------------------------------
def _scripted_turn_processor(rows: list[list[int]], prompt_len: int, offset: int):
    from transformers import LogitsProcessor

    class ScriptedTurn(LogitsProcessor):
        """Forces batch row ``b`` to write ``rows[(offset + b) % len(rows)]``; the model still runs every step."""

        def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
            step = input_ids.shape[1] - prompt_len
            for b in range(scores.shape[0]):
                seq = rows[(offset + b) % len(rows)]
                if step < len(seq):
                    scores[b] = float("-inf")
                    scores[b, seq[step]] = 0.0
            return scores

    return ScriptedTurn()


@contextmanager
def scripted_first_turn(model, tokenizer, texts: Sequence[str], answers: Sequence[str] | None = None
                        ) -> Iterator[None]:
    """TEST-ONLY HOOK: make every turn 1 write one of ``texts``, in turn (batch rows and calls continue the cycle).

    A random model never emits a tool call, so tests of the zoom path force turn 1 to write a valid
    ``<tool_call>`` with a logits processor; a ``generate`` whose prompt already holds a tool response
    (turn 2) runs freely, or writes one of ``answers`` in turn when they are given. Everything else (TRL's
    parsing, the tool loop, image injection, the loss) is the real path. End each text with ``<|im_end|>``
    so the turn stops there.
    """
    from transformers import LogitsProcessorList

    scripts = {False: [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts],
               True: [tokenizer(t, add_special_tokens=False)["input_ids"] for t in answers or ()]}
    response_id = tokenizer.convert_tokens_to_ids("<tool_response>")
    original = model.generate
    forced = {False: 0, True: 0}  # rows forced so far, per turn

    def generate(*args: Any, **kwargs: Any):
        ids = kwargs.get("input_ids", args[0] if args else None)
        turn2 = ids is not None and bool((ids == response_id).any())
        if ids is not None and scripts[turn2]:
            processors = kwargs.pop("logits_processor", None) or LogitsProcessorList()
            processors.append(_scripted_turn_processor(scripts[turn2], ids.shape[1], forced[turn2]))
            kwargs["logits_processor"] = processors
            forced[turn2] += ids.shape[0]
        return original(*args, **kwargs)

    model.generate = generate
    try:
        yield
    finally:
        del model.generate  # back to the class's method
