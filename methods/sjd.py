"""sjd: Speculative Jacobi Decoding (Teng et al., 2024), and its coupled variant MC-SJD (2025), training-free.

A window of ``window`` draft tokens rides ahead of the committed text. Each forward verifies the whole window as
a chain and, in the same forward, re-predicts every position of it: draft i was drawn from the distribution
the previous forward gave its position (conditioned on the drafts before it then), and the verifier accepts
it with min(1, p / q) against the distribution it has now, resampling the first rejection from the residual
(the engine's lossless rejection verifier). The positions past the first rejection are then redrawn from
this forward's distributions, and new positions at the end start from the last distribution the forward gave.
At temperature 0 it is Jacobi decoding: every draft is the argmax of its position's last prediction.

``coupled=true`` (MC-SJD, "speculative coupled decoding"): a redrawn position keeps its previous draft with
probability min(1, p_new / q_old) and otherwise draws from the residual max(0, p_new - q_old): the maximal
coupling of the two distributions, so each draft is still distributed as the p_new recorded for it, but drafts
stop flickering between iterations and the window converges.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.method import EngineGenerator, MethodContext
from harness.engine.proposal import Proposal
from harness.engine.sampling import Sampling, sample, warp
from harness.engine.verifiers import VerifyResult
from harness.model.target import ForwardOutput


@dataclass
class SJDConfig(MethodConfig):
    name: str = "sjd"
    family: str = "sjd"
    window: int = 16  # draft tokens verified and re-predicted each forward
    coupled: bool = False  # MC-SJD: redraw each position maximally coupled to its previous draft


class JacobiWindow(Drafter):
    name = "sjd"

    def __init__(self, cfg: SJDConfig, sampling: Sampling) -> None:
        self.cfg = cfg
        self.sampling = sampling
        self.tokens: list[int] = []
        self.q: list[torch.Tensor] = []  # the distribution each draft was drawn from

    def _draw(self, p: torch.Tensor, old: int | None, q_old: torch.Tensor | None, generator) -> int:
        if self.sampling.greedy:
            return int(p.argmax())
        if self.cfg.coupled and old is not None and q_old is not None:
            keep = min(1.0, float(p[old] / q_old[old])) if q_old[old] > 0 else 0.0
            if float(torch.rand((), generator=generator)) < keep:
                return old
            residual = (p - q_old).clamp_min(0)
            if residual.sum() > 0:
                return sample(residual / residual.sum(), generator)
        return sample(p, generator)

    def _fill(self, last: torch.Tensor, generator) -> None:
        """Fill the window to its length from ``last``, the furthest distribution known."""
        while len(self.tokens) < self.cfg.window:
            self.tokens.append(self._draw(last, None, None, generator))
            self.q.append(last)

    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        self.tokens, self.q = [], []
        self._fill(warp(prefill.logits[-1], self.sampling), state.generator)

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        n = min(max_depth, len(self.tokens))
        if n <= 0:
            return Proposal()
        q = None if self.sampling.greedy else torch.stack(self.q[:n])
        return Proposal.chain(self.tokens[:n], q)

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        n, a = len(proposal.tokens), len(result.accepted)
        # inputs were [root, d_0 .. d_{n-1}]; row r predicted d_r's position. d_0..d_{a-1} and the target's
        # token at d_a's position are committed; d_{a+1}.. are redrawn from the rows that now predicted them
        tokens, q = [], []
        for r in range(a + 1, n):
            p = warp(out.logits[r], self.sampling)
            tokens.append(self._draw(p, self.tokens[r], self.q[r], state.generator))
            q.append(p)
        self.tokens, self.q = tokens, q
        last = warp(out.logits[n], self.sampling) if a < n else (q[-1] if q else warp(out.logits[n], self.sampling))
        self._fill(last, state.generator)


def build(cfg: SJDConfig, ctx: MethodContext) -> EngineGenerator:
    if cfg.window < 1:
        raise SpeclabError(f"method.window must be >= 1, got {cfg.window}")
    return EngineGenerator.with_rule(cfg.name, ctx.target, JacobiWindow(cfg, ctx.sampling), ctx.sampling, cfg.rule)


FAMILIES = [Family("sjd", SJDConfig, build)]
