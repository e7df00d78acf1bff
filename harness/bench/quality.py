"""What a generation is worth to the target, beside how fast it came: its negative log-likelihood per token under
the target's own distribution (temperature 1), for lossy methods (SMC-SD, typical acceptance, relaxed rules) set
beside the lossless ones and plain sampling in the same run (``nll=true``; computed after timing, untimed)."""

from __future__ import annotations

import torch

from harness.model.target import TargetModel


@torch.inference_mode()
def nll_per_token(target: TargetModel, prompt_ids: list[int], output_ids: list[int]) -> float | None:
    """Mean -log p(token | prompt, earlier tokens) over ``output_ids`` under the target at temperature 1."""
    if not output_ids:
        return None
    ids = list(prompt_ids) + list(output_ids)
    rows = list(range(len(prompt_ids) - 1, len(ids) - 1))  # the rows that predict each output token
    logits = target.forward(target.new_cache(len(ids) + 1), ids, logits_rows=rows).logits
    logp = torch.log_softmax(logits.float(), dim=-1)
    return float(-logp[torch.arange(len(output_ids)), torch.tensor(output_ids)].mean())
