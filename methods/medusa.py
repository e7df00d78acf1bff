"""Medusa-1 (Cai et al., 2024): K heads on the target's last final state, a static tree from a choices list.

Head k's top candidates fill depth k + 1 of the tree whatever the parent (the heads never see drafted
tokens), so drafting costs K small MLPs and output layers, no extra forward over the context. Rank paths
as in ``harness/tree_shapes.py``: ``medusa_mc_sim_7b_63`` is the reference's 63-node tree; the CPU presets keep the
verification in the flat part of this machine's verify-cost curve.

Rules: greedy (token-identical to ``ar``), lossless rejection sampling with the candidates as point masses
(the children are a deterministic top-k), or Medusa's typical acceptance (``rule=typical``, lossy; its rows
say ``lossless=false``).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.registry import Family
from harness.drafting import tree_shapes
from harness.drafting.heads.medusa_drafter import ParallelHeadsConfig, ParallelHeadsDrafter, build_parallel_generator
from harness.engine.drafter import DecodeState
from harness.engine.method import EngineGenerator, MethodContext
from harness.engine.proposal import Proposal
from harness.engine.verifiers import VerifyResult
from harness.model.target import ForwardOutput


@dataclass
class MedusaConfig(ParallelHeadsConfig):
    name: str = "medusa"
    family: str = "medusa"


class MedusaDrafter(ParallelHeadsDrafter):
    name = "medusa"

    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        self.h = prefill.hidden["final"][-1]

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        self.h = self._committed(result, out)[-1]

    def grow(self, state, depth, add, tokens, parents) -> None:
        if depth < 1:
            return
        logits = self.heads.logits(self.h, depth)  # [depth, V]: head k fills depth k + 1

        def level(node: int) -> int:
            d = 0
            while node >= 0:
                d, node = d + 1, parents[node]
            return d

        # a node at depth d gets its children from head d, whatever its own token
        tree_shapes.grow_choices(self.choices, depth, logits[0], self._pick, add,
                           lambda nodes: logits[[level(n) for n in nodes]])


def build(cfg: MedusaConfig, ctx: MethodContext) -> EngineGenerator:
    return build_parallel_generator(cfg, ctx, MedusaDrafter)


FAMILIES = [Family("medusa", MedusaConfig, build)]
