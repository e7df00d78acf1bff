"""adaptive: any engine drafter, asked each step for the draft depth with the most expected tokens per second.

The wrapper chooses the ``max_depth`` it hands the inner drafter (``method.inner``: pld, sps, eagle2, ...), so
the inner drafter builds its proposal as it always does, only shorter; what the target verifies is the inner
drafter's own output and the verifier is unchanged, so the method is as lossless as the inner one.

For a depth L the expected committed tokens of a step are ``1 + s_1 + ... + s_L``, with s_d the probability
that the accepted path reaches depth d; its time is the inner drafter's own time at depth L plus the
verification of the width it produces at depth L. Every estimate comes from this run, updated after each
verification:

- s_d as a product of conditional rates P(accept depth d | accepted d - 1 and asked for d), each a running
  count with a prior worth ``PRIOR_WEIGHT`` steps: ``PRIOR_RATE`` at depth 1, the estimate of the depth above
  it further down (so the level past the deepest tried looks like the last tried one, and gets explored);
- the width the inner drafter produces when capped at L (a chain's is 1 + its length; a tree's what it was);
- the seconds of a verification of each width, measured between the end of ``propose`` and the start of
  ``observe``; widths not yet measured are priced by the machine's c(k) curve, corrected by its ratio to the
  nearest measured widths;
- the inner drafter's own seconds per step at each depth (propose plus observe).

At temperature 1.0 prompt lookup's 10-token drafts are rarely accepted past the first token while verifying
11 tokens costs about 1.35 plain steps here: ``pld`` runs below ``ar`` (BENCHMARKS.md); wrapped it drafts
as deep as its acceptance pays for, and not at all when nothing does.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hydra.core.config_store import ConfigStore

from harness.config import MethodConfig
from harness.drafter import DecodeState, Drafter
from harness.errors import SpeclabError
from harness.generator import METHODS, EngineGenerator, MethodContext, inner_drafter
from harness.model import ForwardOutput
from harness.proposal import Proposal
from harness.verify import VerifyResult

PRIOR_RATE, PRIOR_WEIGHT = 0.6, 4.0  # depth 1's acceptance before it is tried, worth 4 steps
EMA = 0.1  # weight of a new timing in the running means (a few dozen steps of memory)


@dataclass
class AdaptiveConfig(MethodConfig):
    name: str = "adaptive"
    family: str = "adaptive"
    inner: str = "pld"  # the wrapped engine method: a conf/method preset with optional overrides ("pld num_draft=16")
    max_depth: int = 16  # the deepest draft it may ask for (the inner drafter may cap it lower)


class Running:
    """A running mean that starts at its first value, then moves by ``EMA`` per update."""

    def __init__(self) -> None:
        self.value: float | None = None
        self.count = 0

    def add(self, x: float) -> None:
        self.value = x if self.value is None else (1 - EMA) * self.value + EMA * x
        self.count += 1


class AdaptiveDrafter(Drafter):
    name = "adaptive"

    def __init__(self, inner: Drafter, max_depth: int, curve: Callable[[int], float]) -> None:
        self.inner = inner
        self.max_depth = max_depth
        self.curve = curve
        self.hidden_layers = inner.hidden_layers
        self.lossless = getattr(inner, "lossless", True)
        self.tried = [0.0] * (max_depth + 1)  # steps that asked for depth d and accepted depth d - 1
        self.passed = [0.0] * (max_depth + 1)  # ... and depth d accepted
        self.width = [Running() for _ in range(max_depth + 1)]  # verification width when asked for depth L
        self.draft_s = [Running() for _ in range(max_depth + 1)]  # inner drafter's seconds per step at depth L
        self.verify_s: dict[int, Running] = {}  # seconds of a verification of each width
        self._asked = 0
        self._t_proposed = 0.0
        self._t_draft = 0.0

    # -- estimates -------------------------------------------------------------------------------
    def reach(self) -> list[float]:
        """s_d for d = 0..max_depth (s_0 = 1: the target's own token)."""
        s, rate = [1.0], PRIOR_RATE
        for d in range(1, self.max_depth + 1):
            # a depth's prior is the rate of the depth above it: acceptance rates along a draft change slowly,
            # so one level past what was tried looks about as good as the last tried level and gets explored
            rate = (self.passed[d] + rate * PRIOR_WEIGHT) / (self.tried[d] + PRIOR_WEIGHT)
            s.append(s[-1] * rate)
        return s

    def verify_seconds(self, width: float) -> float:
        """Seconds of a verification of ``width`` tokens: measured, else the c(k) curve times its ratio to the
        measurements, interpolated between the nearest measured widths (so a curve too flat or too steep for
        this run, as under load or on an MoE target, is corrected where the run has timings)."""
        w = max(1, round(width))
        known = self.verify_s.get(w)
        if known is not None and known.count >= 3:
            return known.value
        measured = sorted((k, r.value / self.curve(k)) for k, r in self.verify_s.items() if r.count >= 3)
        if not measured:
            return self.curve(width)  # before any timing: relative units
        ks, ratios = zip(*measured)
        return float(np.interp(width, ks, ratios)) * self.curve(width)

    def step_seconds(self, depth: int) -> float:
        width = self.width[depth].value if self.width[depth].count else 1.0 + depth
        draft = self.draft_s[depth].value if self.draft_s[depth].count else 0.0
        return draft + self.verify_seconds(width)

    def best_depth(self, cap: int) -> int:
        s = self.reach()
        best, best_rate, tokens = 0, 1.0 / self.step_seconds(0), 1.0
        for depth in range(1, min(cap, self.max_depth) + 1):
            tokens += s[depth]
            rate = tokens / self.step_seconds(depth)
            if rate > best_rate * (1 + 1e-9):
                best, best_rate = depth, rate
        return best

    # -- the drafter -------------------------------------------------------------------------------
    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        self.inner.begin(state, prefill)

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        t0 = time.perf_counter()
        self._asked = self.best_depth(max_depth)
        proposal = self.inner.propose(state, self._asked) if self._asked else Proposal()
        self._t_proposed = time.perf_counter()
        self._t_draft = self._t_proposed - t0
        return proposal

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        t0 = time.perf_counter()
        width = 1 + len(proposal.tokens)
        self.verify_s.setdefault(width, Running()).add(t0 - self._t_proposed)
        self.width[self._asked].add(width)
        accepted = len(result.accepted)
        # counted against the depth asked for, not drafted: a drafter that often has nothing (prompt lookup
        # without a match) is worth that much less per depth, as its mean width is that much smaller
        for d in range(1, self._asked + 1):
            if accepted < d - 1:
                break
            self.tried[d] += 1
            self.passed[d] += accepted >= d
        self.inner.observe(state, proposal, result, out)
        self.draft_s[self._asked].add(self._t_draft + time.perf_counter() - t0)


@METHODS.register("adaptive", AdaptiveConfig)
def build(cfg: AdaptiveConfig, ctx: MethodContext) -> EngineGenerator:
    if cfg.max_depth < 1:
        raise SpeclabError(f"method.max_depth must be >= 1, got {cfg.max_depth}")
    inner = inner_drafter(cfg.inner, ctx, "adaptive")
    return EngineGenerator(cfg.name, ctx.target, AdaptiveDrafter(inner, cfg.max_depth, ctx.verify_cost()), ctx.sampling, cfg.rule)


ConfigStore.instance().store(group="schema/method", name="adaptive", node=AdaptiveConfig)
