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
- the counts fade by ``FADE`` per drafted step in their context (a memory of about 50 steps, under half a typical answer), so the
  rates follow the prompt at hand: a run moves between chat, where drafts die early, and summarization, where
  whole copied spans pass, and counts pooled since the first prompt would keep the first regime's depth;
- with ``prompt_carry`` < 1, a new prompt starts from the run's rates at that share of their weight (0.2: about
  10 steps' worth against a memory of 50), a prior the prompt's own acceptance overrides within its first steps.
  Spec-Bench's groups follow one another, and a translation prompt after the chat groups spent ~40 of its 70
  steps climbing from the chat rates (depth-1 acceptance after a full accept 0.17) to its own (0.7). Measured on
  the MoE testbed, 0.2 changed nothing beyond noise (BENCHMARKS.md section 9), so the default, 1.0, carries the
  counts whole;
- the rates are kept per context, the outcome of the previous step (nothing accepted, part of the draft, all
  of it), each shrunk toward the pooled rate: acceptance comes in runs (a copied span is accepted whole, free
  text is not), so the step after a fully accepted draft deserves a deeper draft than the step after a miss.
  A context whose best depth is 0 would never be left, so after ``EXPLORE_EVERY`` undrafted steps in a row one
  step drafts a single token;
- an inner drafter whose drafting costs the same at any depth and that grades its proposals
  (``Drafter.grades_proposals``; prompt lookup: the length of the matched suffix) drafts in full, and the context
  adds the grade: the wrapper reads it and cuts the draft to the best depth at that grade (``graded``, default
  on). On the MoE testbed's Spec-Bench answers a 1-token match's first token is accepted 15% of the time and a
  3-token match's after a full accept 87%: the previous outcome alone cannot tell a likely copy from a stray
  common token, so ungraded the wrapper drafted the same depth for both;
- the widths the inner drafter produces when capped at L (a chain's is 1 + its length; a tree's what it was;
  1 when it has nothing), as a running distribution: a step's price is the expected time of its verification;
- the seconds of a verification of each width, measured between the end of ``propose`` and the start of
  ``observe``; widths not yet measured are priced by the machine's c(k) curve, corrected by its ratio to the
  nearest measured widths;
- the inner drafter's own seconds per step at each depth (propose plus observe).

On a Mixture-of-Experts target (``moe_aware``: ``expert_term``, on by default there) a width not yet timed is
priced by the experts it would activate instead of by the dense-style curve: verifying more tokens costs what
the union of their experts costs, and that union saturates at E. The distinct experts per layer of each
verification are read from the router hooks (``harness/experts.py``); a width not yet seen is interpolated
between the widths seen, or past the widest one given the uniform-routing form E (1 - (1 - p)^w) with p fitted
to it (correlated routing gives p under top_k / E), and its time read off the least-squares line of the timed
widths' seconds against their experts.

At temperature 1.0 prompt lookup's 10-token drafts are rarely accepted past the first token while verifying
11 tokens costs about 1.35 plain steps here: ``pld`` runs below ``ar`` (BENCHMARKS.md); wrapped it drafts
as deep as its acceptance pays for, and not at all when nothing does.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from hydra.core.config_store import ConfigStore

from harness.engine import tree as T
from harness.core.config import MethodConfig
from harness.engine.drafter import DecodeState, Drafter
from harness.core.errors import SpeclabError
from harness.model.experts import ExpertCounter
from harness.engine.method import METHODS, EngineGenerator, MethodContext, inner_drafter
from harness.model.target import ForwardOutput
from harness.engine.proposal import Proposal
from harness.engine.verifiers import VerifyResult

PRIOR_RATE, PRIOR_WEIGHT = 0.6, 4.0  # depth 1's acceptance before it is tried, worth 4 steps
EMA = 0.1  # weight of a new timing in the running means (a few dozen steps of memory)
MISS, PART, ALL = range(3)  # the previous step's outcome: nothing accepted, part of its draft, all of it
EXPLORE_EVERY = 8
MIN_EXPERT_SPREAD = 0.1  # distinct experts a layer: timed widths closer than this give no slope
FADE = 0.02  # share of every acceptance count forgotten per drafted step: a memory of about 50 steps


def outcome(drafted: int, accepted: int) -> int:
    return MISS if accepted == 0 else ALL if accepted == drafted else PART


@dataclass
class AdaptiveConfig(MethodConfig):
    name: str = "adaptive"
    family: str = "adaptive"
    inner: str = "pld"  # the wrapped engine method: a conf/method preset with optional overrides ("pld num_draft=16")
    max_depth: int = 16  # the deepest draft it may ask for (the inner drafter may cap it lower)
    expert_term: bool | None = None  # price widths by the experts they activate; None: on for MoE targets
    prompt_carry: float = 1.0  # share of the run's acceptance counts' weight a new prompt starts from (1: all)
    graded: bool = True  # keep rates per grade of proposal when the inner drafter grades them (pld: match length)


class Running:
    """A running mean that starts at its first value, then moves by ``EMA`` per update."""

    def __init__(self) -> None:
        self.value: float | None = None
        self.count = 0

    def add(self, x: float) -> None:
        self.value = x if self.value is None else (1 - EMA) * self.value + EMA * x
        self.count += 1


class RunningShares:
    """A running distribution over values: each update moves ``EMA`` of the weight onto the value seen."""

    def __init__(self) -> None:
        self.shares: dict[int, float] = {}
        self.count = 0

    def add(self, x: int) -> None:
        for k in list(self.shares):
            self.shares[k] *= 1 - EMA
            if self.shares[k] < 1e-4:
                del self.shares[k]
        self.shares[x] = (self.shares.get(x, 0.0) + EMA) if self.count else 1.0
        self.count += 1

    def expect(self, f: Callable[[int], float]) -> float:
        return sum(share * f(x) for x, share in self.shares.items()) / sum(self.shares.values())


class AdaptiveDrafter(Drafter):
    name = "adaptive"

    def __init__(self, inner: Drafter, max_depth: int, curve: Callable[[int], float], experts: ExpertCounter | None = None,
                 prompt_carry: float = 1.0, graded: bool = True) -> None:
        self.inner = inner
        self.graded = graded and inner.grades_proposals
        self.prompt_carry = prompt_carry
        self.experts = experts  # the target's router hooks: the expert term is on
        self.experts_at: dict[int, Running] = {}  # distinct experts per layer of a verification of each width
        self.max_depth = max_depth
        self.curve = curve
        self.hidden_layers = inner.hidden_layers
        self.lossless = getattr(inner, "lossless", True)
        self.tried = [0.0] * (max_depth + 1)  # steps that asked for depth d and accepted depth d - 1
        self.passed = [0.0] * (max_depth + 1)  # ... and depth d accepted
        # the same, per context: (the proposal's grade, the previous step's outcome); the grade is None for an
        # inner drafter that does not grade its proposals
        self.tried_in: dict[tuple[int | None, int], list[float]] = defaultdict(lambda: [0.0] * (max_depth + 1))
        self.passed_in: dict[tuple[int | None, int], list[float]] = defaultdict(lambda: [0.0] * (max_depth + 1))
        self._no_counts = [0.0] * (max_depth + 1)
        self.context = MISS
        self.grade: int | None = None  # the grade of the proposal being verified
        self._idle = 0  # undrafted steps in a row
        self.width = [RunningShares() for _ in range(max_depth + 1)]  # verification widths when asked for depth L
        self.draft_s = [Running() for _ in range(max_depth + 1)]  # inner drafter's seconds per step at depth L
        self.verify_s: dict[int, Running] = {}  # seconds of a verification of each width
        self._asked = 0
        self._t_proposed = 0.0
        self._t_draft = 0.0

    # -- estimates -------------------------------------------------------------------------------
    def reach(self, context: int | None = None, grade: int | None = None) -> list[float]:
        """s_d for d = 0..max_depth (s_0 = 1: the target's own token), pooled or after a given outcome (and for a
        proposal of a given grade)."""
        s, rate, here = [1.0], PRIOR_RATE, None
        # read without inserting: a context never visited has no counts
        tried = self.tried_in.get((grade, context), self._no_counts)
        passed = self.passed_in.get((grade, context), self._no_counts)
        for d in range(1, self.max_depth + 1):
            # a depth's prior is the rate of the depth above it: acceptance rates along a draft change slowly,
            # so one level past what was tried looks about as good as the last tried level and gets explored
            rate = (self.passed[d] + rate * PRIOR_WEIGHT) / (self.tried[d] + PRIOR_WEIGHT)
            if context is not None:
                # in a context: depth 1 leans on the pooled rate, deeper levels on this context's level above,
                # so after a fully accepted draft (copying) the untried depths look as good as the tried ones
                prior = rate if here is None else here
                here = (passed[d] + prior * PRIOR_WEIGHT) / (tried[d] + PRIOR_WEIGHT)
            s.append(s[-1] * (rate if context is None else here))
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
        if self.experts is not None:
            return self.seconds_by_experts(width)
        ks, ratios = zip(*measured)
        return float(np.interp(width, ks, ratios)) * self.curve(width)

    def distinct_experts(self, width: float) -> float:
        """Distinct experts per layer a verification of ``width`` tokens activates: measured; else interpolated
        between the measured widths around it; past the widest measured one, the uniform form E (1 - (1 - p)^w)
        with p fitted to that widest width (so it saturates at E).

        Not one p fitted to all widths: tokens of one text route alike, so the p implied by a wide verification is
        far below top_k / E, and a p dominated by the many one-token steps would price every untried width at
        nearly uniform routing: too dear to try, hence never measured."""
        seen = self.experts_at.get(round(width))
        if seen is not None and seen.count >= 3:
            return seen.value
        E = self.experts.num_experts
        points = sorted((w, min(r.value, E - 1e-6)) for w, r in self.experts_at.items() if r.count)
        if not points:
            return E * (1 - (1 - self.experts.top_k / E) ** width)
        ws, es = zip(*points)
        es = np.maximum.accumulate(es)  # more tokens never read fewer experts: noise is not allowed to say so
        if width <= ws[-1]:
            return float(np.interp(width, ws, es))
        p = 1 - (1 - es[-1] / E) ** (1 / ws[-1])
        return float(E * (1 - (1 - p) ** width))

    def seconds_by_experts(self, width: float) -> float:
        """A verification's seconds from the experts it activates: the least-squares line of the timed widths'
        seconds against their experts (weighted by timings), evaluated at this width's experts.

        A line through all timed widths, not a segment through the last two: two widths a fraction of an expert
        apart whose timings differ by noise would give a slope of seconds per hundredth of an expert, pricing every
        wider verification at many plain steps, so the wide drafts that pay on copied text would never be tried."""
        timed = [(self.distinct_experts(w), r.value, r.count, w) for w, r in self.verify_s.items() if r.count >= 3]
        xs, ts, ns, ws = (np.array(v, dtype=float) for v in zip(*timed))
        ns = np.minimum(ns, 1 / EMA)  # a running mean holds about 1 / EMA timings, however many it has seen
        x0, t0 = np.average(xs, weights=ns), np.average(ts, weights=ns)
        spread = float(np.average((xs - x0) ** 2, weights=ns))
        if spread < MIN_EXPERT_SPREAD ** 2:  # the timed widths all read about the same experts: scale by the curve
            i = int(np.argmax(ns))
            return float(ts[i]) * self.curve(width) / self.curve(ws[i])
        slope = max(0.0, float(np.average((xs - x0) * (ts - t0), weights=ns)) / spread)
        return float(t0 + slope * (self.distinct_experts(width) - x0))

    def step_seconds(self, depth: int) -> float:
        """Drafting plus the expected verification at this depth, over the widths it produced: a drafter that
        proposes nothing on some steps (prompt lookup without a match) pays a one-token verification there, and
        pricing its mean width instead (1.5 rounds to 2) would charge every step the full draft's verification."""
        widths = self.width[depth]
        verify = widths.expect(self.verify_seconds) if widths.count else self.verify_seconds(1 + depth)
        draft = self.draft_s[depth].value if self.draft_s[depth].count else 0.0
        return draft + verify

    def best_depth(self, cap: int, context: int | None = None, grade: int | None = None) -> int:
        s = self.reach(context, grade)
        best, best_rate, tokens = 0, 1.0 / self.step_seconds(0), 1.0
        for depth in range(1, min(cap, self.max_depth) + 1):
            tokens += s[depth]
            rate = tokens / self.step_seconds(depth)
            if rate > best_rate * (1 + 1e-9):
                best, best_rate = depth, rate
        return best

    def choose(self, cap: int) -> int:
        """The depth to ask for in the current context; one token after ``EXPLORE_EVERY`` undrafted steps."""
        asked = self.best_depth(cap, self.context, self.grade)
        self._idle = self._idle + 1 if asked == 0 else 0
        if self._idle > EXPLORE_EVERY and cap > 0:
            asked, self._idle = 1, 0
        return asked

    # -- the drafter -------------------------------------------------------------------------------
    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        if self.prompt_carry < 1:
            # scaling tried and passed alike keeps every rate and only lowers the weight it holds against new steps
            for counts in (self.tried, self.passed, *self.tried_in.values(), *self.passed_in.values()):
                for d in range(len(counts)):
                    counts[d] *= self.prompt_carry
            self.context, self._idle = MISS, 0
        self.inner.begin(state, prefill)

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        t0 = time.perf_counter()
        cap = min(max_depth, self.max_depth)
        self.grade = None
        if self.graded:
            # drafting costs the same at any depth: draft in full, then size the draft by its grade
            proposal = self.inner.propose(state, cap)
            if not proposal.tokens:
                self._asked = 0
            else:
                self.grade = int(proposal.meta["grade"])
                self._asked = self.choose(cap)
                proposal = proposal.restrict(T.prune_depth(proposal.parents, self._asked))
        else:
            self._asked = self.choose(cap)
            proposal = self.inner.propose(state, self._asked) if self._asked else Proposal()
        self._t_proposed = time.perf_counter()
        self._t_draft = self._t_proposed - t0
        return proposal

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        t0 = time.perf_counter()
        width = 1 + len(proposal.tokens)
        self.verify_s.setdefault(width, Running()).add(t0 - self._t_proposed)
        if self.experts is not None:
            self.experts_at.setdefault(width, Running()).add(self.experts.mean_distinct())
        self.width[self._asked].add(width)
        accepted = len(result.accepted)
        key = (self.grade, self.context)
        if self._asked:  # acceptance counts fade, so a run that moves from chat to copying (or back) follows;
            # a context's own counts fade only when it is visited, so a rare context keeps what it learned
            for counts in (self.tried, self.passed, self.tried_in[key], self.passed_in[key]):
                for d in range(len(counts)):
                    counts[d] *= 1 - FADE
        # counted against the depth asked for, not drafted: a drafter that often has nothing (prompt lookup
        # without a match) is worth that much less per depth, as its mean width is that much smaller
        for d in range(1, self._asked + 1):
            if accepted < d - 1:
                break
            for tried, passed in ((self.tried, self.passed), (self.tried_in[key], self.passed_in[key])):
                tried[d] += 1
                passed[d] += accepted >= d
        if proposal.tokens:  # an undrafted step (none asked, or the inner drafter had none) says nothing new
            self.context = outcome(len(proposal.tokens), accepted)
        self.inner.observe(state, proposal, result, out)
        self.draft_s[self._asked].add(self._t_draft + time.perf_counter() - t0)


@METHODS.register("adaptive", AdaptiveConfig)
def build(cfg: AdaptiveConfig, ctx: MethodContext) -> EngineGenerator:
    if cfg.max_depth < 1:
        raise SpeclabError(f"method.max_depth must be >= 1, got {cfg.max_depth}")
    if not 0 <= cfg.prompt_carry <= 1:
        raise SpeclabError(f"method.prompt_carry must be in [0, 1] (1: a new prompt keeps the run's counts whole), "
                           f"got {cfg.prompt_carry}")
    experts = ctx.target.experts
    if cfg.expert_term and experts is None:
        raise SpeclabError(f"method {cfg.name!r} prices drafts by the experts they activate, but {ctx.target.info.name!r} "
                           "is not a Mixture-of-Experts model; use method=adaptive (or method.expert_term=false)")
    inner = inner_drafter(cfg.inner, ctx, "adaptive")
    use = experts if cfg.expert_term is not False else None
    return EngineGenerator(cfg.name, ctx.target, AdaptiveDrafter(inner, cfg.max_depth, ctx.verify_cost(), use, cfg.prompt_carry, cfg.graded), ctx.sampling, cfg.rule)


ConfigStore.instance().store(group="schema/method", name="adaptive", node=AdaptiveConfig)
