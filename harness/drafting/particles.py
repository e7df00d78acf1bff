"""The particle arithmetic of sequential Monte Carlo drafting (SMC-SD): normalised weights, the effective sample
size, and the resampling schemes that choose each new particle's ancestor.

Log-weights stay in float64: a particle's weight is a sum over every drafted token of log p - log q, and their
differences decide which particles survive.
"""

from __future__ import annotations

import math

import torch

SCHEMES = ("systematic", "multinomial")


def normalized(log_weights: torch.Tensor) -> torch.Tensor:
    """Weights summing to one from log-weights (float64)."""
    return torch.softmax(log_weights.double(), dim=0)


def effective_size(log_weights: torch.Tensor) -> float:
    """ESS = 1 / sum of squared normalised weights: N when the weights are equal, 1 when one particle holds all."""
    w = normalized(log_weights)
    return float(1.0 / (w * w).sum())


def ancestors(log_weights: torch.Tensor, scheme: str, generator: torch.Generator | None) -> list[int]:
    """Each new particle's ancestor, drawn in proportion to the weights.

    ``systematic``: one uniform u, the N points (u + i) / N placed on the weights' cumulative sum (low variance: a
    particle of weight w has floor(N w) or ceil(N w) children). ``multinomial``: N independent draws."""
    n = log_weights.numel()
    w = normalized(log_weights)
    if scheme == "multinomial":
        return torch.multinomial(w.float(), n, replacement=True, generator=generator).tolist()
    if scheme != "systematic":
        raise ValueError(f"unknown resampling scheme {scheme!r}; choose {' or '.join(SCHEMES)}")
    u = float(torch.rand((), generator=generator, dtype=torch.float64))
    points = (u + torch.arange(n, dtype=torch.float64)) / n
    cumulative = torch.cumsum(w, dim=0)
    cumulative[-1] = 1.0  # rounding must not leave the last point past the end
    return torch.searchsorted(cumulative, points, right=True).clamp_(max=n - 1).tolist()


def log_mean_weight(log_weights: torch.Tensor) -> float:
    """log of the mean weight (the incremental normalising-constant estimate of an SMC step)."""
    return float(torch.logsumexp(log_weights.double(), dim=0)) - math.log(log_weights.numel())
