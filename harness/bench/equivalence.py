"""Greedy equivalence: a method's token ids against the baseline's, and where they part, how close the target's
top two logits were (a numerical tie, or a bug)."""

from __future__ import annotations

from typing import Any

import torch

from harness.model.target import TargetModel
from harness.results.metrics import first_divergence

NEAR_TIE_MARGIN = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 1e-1}


def divergence_margin(target: TargetModel, prompt_ids: list[int], reference_ids: list[int], pos: int) -> float | None:
    """The target's top-1 minus top-2 logit after prompt + reference[:pos] (where the outputs diverged)."""
    if pos >= len(reference_ids):
        return None
    cache = target.new_cache(len(prompt_ids) + pos + 1)
    logits = target.forward(cache, prompt_ids + reference_ids[:pos], logits_rows=[-1]).logits[-1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def equivalence(
    target: TargetModel, prompt_ids: list[int], method_ids: list[int], baseline_ids: list[int], near_tie: float
) -> dict[str, Any]:
    """Greedy equivalence of a method's output with the baseline's: identical or not, the first divergence,
    the target's top-1/top-2 margin there, and ``near_tie`` when that margin is under ``near_tie`` (a numerical
    tie, expected in low precision). A near tie is still a mismatch: ``equivalent`` is False."""
    div = first_divergence(method_ids, baseline_ids)
    margin = divergence_margin(target, prompt_ids, baseline_ids, div) if div is not None else None
    return {
        "equivalent": div is None,
        "first_divergence": div,
        "divergence_margin": margin,
        "near_tie": margin is not None and margin < near_tie,
    }
