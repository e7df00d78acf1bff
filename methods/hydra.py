"""Hydra (Ankner et al., 2024): sequentially dependent heads (Hydra++'s grounded ``prefix-mlp`` heads).

A prefix layer with its own KV cache reads the target's final states of every committed token; head i
drafts depth i + 1 of the tree from ``[c_t ; E(root) ; E(path so far)]``, so unlike Medusa a node's children
depend on the tokens above it. One level of the tree is one batched call of one head. Tree, draft vocabulary
and rules as ``medusa`` (greedy, lossless rejection with point-mass candidates, or lossy ``rule=typical``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harness.core.registry import Family
from harness.drafting import tree_shapes
from harness.drafting.heads.layers import causal_mask
from harness.drafting.heads.medusa_drafter import ParallelHeadsConfig, ParallelHeadsDrafter, build_parallel_generator
from harness.engine.drafter import DecodeState
from harness.engine.method import EngineGenerator, MethodContext
from harness.engine.proposal import Proposal
from harness.engine.verifiers import VerifyResult
from harness.model.target import ForwardOutput


@dataclass
class HydraConfig(ParallelHeadsConfig):
    name: str = "hydra"
    family: str = "hydra"
    choices: Any = "medusa_mc8"  # one level fewer than Medusa's default: each level is a batched head call


class HydraDrafter(ParallelHeadsDrafter):
    name = "hydra"

    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        self.cache = self.heads.new_cache(len(state.ids) + state.max_new_tokens + 64)
        self.pending = prefill.hidden["final"]  # final states of positions 0..P-1, not yet in the prefix cache

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        new = self._committed(result, out)
        self.pending = new if self.pending is None else torch.cat([self.pending, new])

    def _prefix(self) -> torch.Tensor:
        """Run the prefix layer over the committed states it has not seen; returns c_t of the last one."""
        if self.pending is None:  # nothing committed since the last call (a repeated proposal)
            return self.c
        start, n = self.cache.length, self.pending.shape[0]
        h = self.pending[None]
        weight = self.heads.prefix_embeding_layer.norm.weight
        out = self.heads.prefix(h, torch.arange(start, start + n, device=h.device)[None], self.cache,
                                causal_mask(start, n, weight.dtype, h.device))
        self.pending = None
        self.c = out[0, -1]
        return self.c

    def grow(self, state, depth, add, tokens, parents) -> None:
        c = self._prefix()
        if depth < 1:
            return
        inputs: dict[int, torch.Tensor] = {-1: torch.cat([c, self.heads.embed(torch.tensor(state.ids[-1], device=c.device))])}
        level: dict[int, int] = {-1: 0}

        def expand(nodes: list[int]) -> torch.Tensor:
            for n in nodes:
                level[n] = level[parents[n]] + 1
                inputs[n] = torch.cat([inputs[parents[n]], self.heads.embed(torch.tensor(tokens[n], device=c.device))])
            # one level at a time, so every node here sits at the same depth and uses the same head
            return self.heads.head_logits(level[nodes[0]], torch.stack([inputs[n] for n in nodes]))

        tree_shapes.grow_choices(self.choices, depth, self.heads.head_logits(0, inputs[-1]), self._pick, add, expand)


def build(cfg: HydraConfig, ctx: MethodContext) -> EngineGenerator:
    return build_parallel_generator(cfg, ctx, HydraDrafter)


FAMILIES = [Family("hydra", HydraConfig, build)]
