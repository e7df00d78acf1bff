"""How deep a draft pays: acceptance estimated online, the cost of drafting and verifying each depth, and the depth
with the most expected tokens per second.

For a depth L the expected committed tokens of a step are ``1 + s_1 + ... + s_L``, with s_d the probability that
the accepted path reaches depth d; its time is the drafter's own time at depth L plus the verification of the width
it produces at depth L. :class:`AcceptanceEstimate` holds the s_d, :class:`CostModel` the times, and
:func:`best_depth` weighs them. ``methods/adaptive.py`` drives them per step; every estimate comes from the run,
updated after each verification.

Acceptance (:class:`AcceptanceEstimate`):

- s_d as a product of conditional rates P(accept depth d | accepted d - 1 and asked for d), each a running count
  with a prior worth ``PRIOR_WEIGHT`` steps: ``PRIOR_RATE`` at depth 1, the estimate of the depth above it further
  down (so the level past the deepest tried looks like the last tried one, and gets explored);
- the counts fade by ``FADE`` per drafted step in their context (a memory of about 50 steps, under half a typical
  answer), so the rates follow the prompt at hand: a run moves between chat, where drafts die early, and
  summarization, where whole copied spans pass, and counts pooled since the first prompt would keep the first
  regime's depth;
- the rates are kept per context as well as pooled: a context is the outcome of the previous step (nothing
  accepted, part of the draft, all of it) and, for drafters that grade their proposals, the grade, each shrunk
  toward the pooled rate. Acceptance comes in runs (a copied span is accepted whole, free text is not), so the step
  after a fully accepted draft deserves a deeper draft than the step after a miss.

Cost (:class:`CostModel`):

- the widths a drafter produces when capped at L (a chain's is 1 + its length; a tree's what it was; 1 when it has
  nothing), as a running distribution: a step's price is the expected time of its verification;
- the seconds of a verification of each width as measured; widths not yet measured are priced by the machine's
  c(k) curve, corrected by its ratio to the nearest measured widths;
- the drafter's own seconds per step at each depth;
- on a Mixture-of-Experts target (the expert term), a width not yet timed is priced by the experts it would
  activate instead of by the dense-style curve: verifying more tokens costs what the union of their experts costs,
  and that union saturates at E. The distinct experts per layer of each verification are read from the router
  hooks (``harness/model/experts.py``); a width not yet seen is interpolated between the widths seen, or past the
  widest one given the uniform-routing form E (1 - (1 - p)^w) with p fitted to it (correlated routing gives p under
  top_k / E), and its time read off the least-squares line of the timed widths' seconds against their experts.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable

import numpy as np

from harness.model.experts import ExpertCounter

PRIOR_RATE, PRIOR_WEIGHT = 0.6, 4.0  # depth 1's acceptance before it is tried, worth 4 steps
EMA = 0.1  # weight of a new timing in the running means (a few dozen steps of memory)
MISS, PART, ALL = range(3)  # the previous step's outcome: nothing accepted, part of its draft, all of it
MIN_EXPERT_SPREAD = 0.1  # distinct experts a layer: timed widths closer than this give no slope
FADE = 0.02  # share of every acceptance count forgotten per drafted step: a memory of about 50 steps

Context = tuple[int | None, int]  # (the proposal's grade, or None; the previous step's outcome)


def outcome(drafted: int, accepted: int) -> int:
    return MISS if accepted == 0 else ALL if accepted == drafted else PART


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


class AcceptanceEstimate:
    """Per-depth acceptance counts, pooled and per context, with priors and fading (see the module docstring)."""

    def __init__(self, max_depth: int) -> None:
        self.max_depth = max_depth
        self.tried = [0.0] * (max_depth + 1)  # steps that asked for depth d and accepted depth d - 1
        self.passed = [0.0] * (max_depth + 1)  # ... and depth d accepted
        self.tried_in: dict[Context, list[float]] = defaultdict(lambda: [0.0] * (max_depth + 1))
        self.passed_in: dict[Context, list[float]] = defaultdict(lambda: [0.0] * (max_depth + 1))
        self._no_counts = [0.0] * (max_depth + 1)

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

    def record(self, asked: int, accepted: int, key: Context) -> None:
        """One verified step that asked for ``asked`` tokens and accepted ``accepted``, in context ``key``."""
        if asked:  # acceptance counts fade, so a run that moves from chat to copying (or back) follows;
            # a context's own counts fade only when it is visited, so a rare context keeps what it learned
            for counts in (self.tried, self.passed, self.tried_in[key], self.passed_in[key]):
                for d in range(len(counts)):
                    counts[d] *= 1 - FADE
        # counted against the depth asked for, not drafted: a drafter that often has nothing (prompt lookup
        # without a match) is worth that much less per depth, as its mean width is that much smaller
        for d in range(1, asked + 1):
            if accepted < d - 1:
                break
            for tried, passed in ((self.tried, self.passed), (self.tried_in[key], self.passed_in[key])):
                tried[d] += 1
                passed[d] += accepted >= d

    def carry(self, share: float) -> None:
        """Keep every rate but only ``share`` of the weight it holds against new steps (a new prompt)."""
        for counts in (self.tried, self.passed, *self.tried_in.values(), *self.passed_in.values()):
            for d in range(len(counts)):
                counts[d] *= share


class CostModel:
    """Seconds of a step at each depth: the drafter's own time and the expected verification of its widths.

    ``curve`` is the machine's c(k) (relative units), ``experts`` the target's router hooks when verifications are
    priced by the experts they activate (None: dense pricing).
    """

    def __init__(self, max_depth: int, curve: Callable[[int], float], experts: ExpertCounter | None = None) -> None:
        self.curve = curve
        self.experts = experts
        self.experts_at: dict[int, Running] = {}  # distinct experts per layer of a verification of each width
        self.width = [RunningShares() for _ in range(max_depth + 1)]  # verification widths when asked for depth L
        self.draft_s = [Running() for _ in range(max_depth + 1)]  # the drafter's seconds per step at depth L
        self.verify_s: dict[int, Running] = {}  # seconds of a verification of each width

    def record(self, asked: int, width: int, verify_s: float, draft_s: float, experts: float | None = None) -> None:
        """One step that asked for depth ``asked``, verified ``width`` tokens in ``verify_s`` (activating ``experts``
        distinct experts a layer, on an MoE target) and drafted in ``draft_s``."""
        self.verify_s.setdefault(width, Running()).add(verify_s)
        if self.experts is not None and experts is not None:
            self.experts_at.setdefault(width, Running()).add(experts)
        self.width[asked].add(width)
        self.draft_s[asked].add(draft_s)

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


def best_depth(reach: list[float], step_seconds: Callable[[int], float], cap: int) -> int:
    """The depth in 0..cap with the most expected tokens per second, for reach probabilities s_d (s_0 = 1)."""
    best, best_rate, tokens = 0, 1.0 / step_seconds(0), 1.0
    for depth in range(1, min(cap, len(reach) - 1) + 1):
        tokens += reach[depth]
        rate = tokens / step_seconds(depth)
        if rate > best_rate * (1 + 1e-9):
            best, best_rate = depth, rate
    return best


class BatchStepModel:
    """Seconds of one batched step (B rows, N tokens in all): the machine's c(B, k) surface
    (harness/engine/batch_cost.py) at the mean width N / B, times its running ratio to this run's own steps at B
    (the surface is measured on random tokens and a fixed context; a run's steps are what they are)."""

    def __init__(self, surface_ms: Callable[[float, float], float]) -> None:
        self.surface_ms = surface_ms
        self.ratio: dict[int, Running] = {}

    def seconds(self, rows: int, tokens: int) -> float:
        ratio = self.ratio.get(rows)
        scale = ratio.value if ratio is not None and ratio.count >= 3 else 1e-3  # ms -> s before any timing
        return scale * self.surface_ms(rows, tokens / rows)

    def record(self, rows: int, tokens: int, seconds: float) -> None:
        self.ratio.setdefault(rows, Running()).add(seconds / self.surface_ms(rows, tokens / rows))


def plan_batch(reach: list[list[float]], caps: list[int], draft_seconds: Callable[[int], float],
               step: BatchStepModel, floor: list[int] | None = None) -> list[int]:
    """Each row's draft depth for one batched step, for the most expected tokens per second of the whole batch.

    ``reach[r]`` are row r's s_d (s_0 = 1), ``caps[r]`` its deepest allowed depth, ``floor[r]`` a depth it must draft
    at least (exploration). Greedy over marginal gains: starting from the floors, the next token goes to the row whose
    next depth is the likeliest accepted, the batch's step time read off the c(B, k) surface at the new total; every
    allocation on the way is priced and the best one returned. Verifying a token costs the same whichever row it
    sits in, so the likeliest next token is the best buy, and a batch whose step is already past the flat part of the
    surface (large B) buys none: it decodes as batched ``ar``.
    """
    rows = len(reach)
    depth = list(floor) if floor is not None else [0] * rows
    tokens = sum(sum(reach[r][: d + 1]) for r, d in enumerate(depth))
    drafting = sum(draft_seconds(d) for d in depth)
    best, best_rate = list(depth), tokens / (step.seconds(rows, rows + sum(depth)) + drafting)
    while True:
        open_rows = [r for r in range(rows) if depth[r] < min(caps[r], len(reach[r]) - 1)]
        if not open_rows:
            return best
        r = max(open_rows, key=lambda i: reach[i][depth[i] + 1])
        drafting += draft_seconds(depth[r] + 1) - draft_seconds(depth[r])
        depth[r] += 1
        tokens += reach[r][depth[r]]
        rate = tokens / (step.seconds(rows, rows + sum(depth)) + drafting)
        if rate > best_rate * (1 + 1e-9):
            best, best_rate = list(depth), rate
