"""Greedy equivalence: a method's token ids against the baseline's, and where they part, how close the target's
top two logits were at the baseline's own step that chose the token (a numerical tie, or a bug).

Logits leave the LM head in the model's dtype, so two candidates a tie apart may differ by a single step of that
dtype: in bf16 one step is 0.125 for logits between 16 and 32. A divergence is a near tie when the margin is at
most :data:`TIE_STEPS` steps of the dtype at the logits' magnitude, and never under the dtype's floor
(:data:`NEAR_TIE_FLOOR`: the spread of one computation of the model against another, measured).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch

from harness.model.target import TargetModel
from harness.results.metrics import first_divergence

NEAR_TIE_FLOOR = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 1e-1}
MANTISSA_BITS = {"float32": 23, "float16": 10, "bfloat16": 7}
TIE_STEPS = 2


def resolution(dtype: str, magnitude: float) -> float:
    """The spacing of ``dtype``'s representable values at ``magnitude`` (one step, or ulp)."""
    exponent = math.floor(math.log2(max(abs(magnitude), 2.0 ** -14)))
    return 2.0 ** (exponent - MANTISSA_BITS.get(dtype, 23))


def near_tie_threshold(dtype: str, top1: float, top2: float) -> float:
    """The largest top-1/top-2 margin that still counts as a numerical tie for logits of ``dtype``."""
    return max(NEAR_TIE_FLOOR.get(dtype, NEAR_TIE_FLOOR["float32"]),
               TIE_STEPS * resolution(dtype, max(abs(top1), abs(top2))))


def recomputed_top2(target: TargetModel, prompt_ids: list[int], reference_ids: list[int], pos: int) -> tuple[float, float]:
    """The target's two best logits after prompt + reference[:pos], by a fresh prefill: for a baseline whose own
    steps were not recorded (baseline-cache entries from before they were)."""
    cache = target.new_cache(len(prompt_ids) + pos + 1)
    logits = target.forward(cache, prompt_ids + reference_ids[:pos], logits_rows=[-1]).logits[-1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0]), float(top[1])


def equivalence(target: TargetModel, prompt_ids: list[int], method_ids: list[int], baseline_ids: list[int],
                baseline_top2: Sequence[Sequence[float]] | None = None) -> dict[str, Any]:
    """Greedy equivalence of a method's output with the baseline's: identical or not, the first divergence, the
    target's top-1/top-2 margin at the baseline's step there (``baseline_top2``, one pair per baseline token;
    recomputed when absent), the near-tie threshold for the logits' dtype and magnitude, and ``near_tie``. A near tie
    is still a mismatch: ``equivalent`` is False."""
    div = first_divergence(method_ids, baseline_ids)
    out: dict[str, Any] = {"equivalent": div is None, "first_divergence": div, "divergence_margin": None,
                           "near_tie_threshold": None, "near_tie": False}
    if div is None or div >= len(baseline_ids):  # identical, or the baseline stopped where the method went on
        return out
    if baseline_top2 is not None and div < len(baseline_top2):
        top1, top2 = baseline_top2[div]
    else:
        top1, top2 = recomputed_top2(target, prompt_ids, baseline_ids, div)
    margin = float(top1) - float(top2)
    threshold = near_tie_threshold(target.info.dtype, top1, top2)
    return {**out, "divergence_margin": margin, "near_tie_threshold": threshold, "near_tie": margin <= threshold}
