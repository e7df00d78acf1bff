"""Expert accounting for Mixture-of-Experts targets: distinct experts each MoE layer activates in a forward.

Verifying k tokens on an MoE target loads the union of the experts their tokens route to, so a verification's
cost grows with k faster than on a dense model (issue 14). transformers' MoE families here (Mixtral, Qwen2-MoE,
Qwen3-MoE, OLMoE, DeepSeek-V3, GPT-OSS) route through a ``*TopKRouter`` module whose output ends with the chosen
expert indices, [tokens, top_k]; a forward hook on each counts the distinct ones per call.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict

import torch
from torch import nn

ROUTER = re.compile(r"top_?k_?router$", re.IGNORECASE)
EXPERT_KEYS = ("num_local_experts", "num_experts", "n_routed_experts")


def uniform_distinct(num_experts: int, top_k: int, tokens: int) -> float:
    """Expected distinct experts of ``tokens`` tokens routed uniformly at random: E (1 - (1 - top_k/E)^tokens)."""
    return num_experts * (1.0 - (1.0 - top_k / num_experts) ** tokens)


class ExpertCounter:
    """Hooks every router of ``model``; :meth:`reset` before a forward, :meth:`mean_distinct` after it."""

    def __init__(self, model: nn.Module) -> None:
        config = model.config
        self.routers = [m for m in model.modules() if ROUTER.search(type(m).__name__)]
        self.num_experts = next((int(getattr(config, k)) for k in EXPERT_KEYS if getattr(config, k, None)), 0)
        self.top_k = int(getattr(config, "num_experts_per_tok", 0) or 0)
        self._distinct: list[torch.Tensor] = []
        for router in self.routers:
            router.register_forward_hook(self._hook)

    def _hook(self, module: nn.Module, args, output) -> None:
        indices = output[-1] if isinstance(output, tuple) else output
        # counted on the device and read once in mean_distinct: no host sync per layer
        size = self.num_experts or int(indices.max()) + 1  # configs name the count; a sync only where none does
        used = torch.zeros(size, dtype=torch.bool, device=indices.device)
        self._distinct.append(used.index_fill_(0, indices.reshape(-1).long(), True).sum())

    def reset(self) -> None:
        self._distinct = []

    def mean_distinct(self) -> float | None:
        """Distinct experts per MoE layer in the forwards since :meth:`reset`, averaged over layers."""
        return float(torch.stack(self._distinct).float().mean()) if self._distinct else None


def expert_counter(model: nn.Module) -> ExpertCounter | None:
    """A counter for an MoE model, None for a dense one."""
    counter = ExpertCounter(model)
    return counter if counter.routers else None


def summarize(widths: list[int], experts: list[float]) -> dict[str, float | str]:
    """Results-row fields of one generation: mean distinct experts per layer per verification, and by width."""
    by_width: dict[int, list[float]] = defaultdict(list)
    for w, e in zip(widths, experts):
        by_width[w].append(e)
    return {
        "experts_per_step": sum(experts) / len(experts),
        "experts_by_width": json.dumps({w: round(sum(v) / len(v), 3) for w, v in sorted(by_width.items())}),
    }
