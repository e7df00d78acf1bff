"""Losses the head trainers share."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy of ``logits`` against a distribution over the same columns."""
    return -(target_probs * F.log_softmax(logits.float(), dim=-1)).sum(-1)
