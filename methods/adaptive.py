"""adaptive: any engine drafter, asked each step for the draft depth with the most expected tokens per second.

The wrapper chooses the ``max_depth`` it hands the inner drafter (``method.inner``: pld, sps, eagle2, ...), so
the inner drafter builds its proposal as it always does, only shorter; what the target verifies is the inner
drafter's own output and the verifier is unchanged, so the method is as lossless as the inner one.

The estimates (acceptance per depth and context, verification seconds per width, drafting seconds per depth; on a
Mixture-of-Experts target, ``moe_aware``, widths priced by the experts they activate) and the choice of depth live
in ``harness/drafting/depth_policy.py``. This module drives them per step:

- with ``prompt_carry`` < 1, a new prompt starts from the run's rates at that share of their weight (0.2: about
  10 steps' worth against a memory of 50), a prior the prompt's own acceptance overrides within its first steps.
  Spec-Bench's groups follow one another, and a translation prompt after the chat groups spent ~40 of its 70
  steps climbing from the chat rates (depth-1 acceptance after a full accept 0.17) to its own (0.7). Measured on
  the MoE testbed, 0.2 changed nothing beyond noise (BENCHMARKS.md section 9), so the default, 1.0, carries the
  counts whole;
- the context of a step is the outcome of the previous one (nothing accepted, part of the draft, all of it). A
  context whose best depth is 0 would never be left, so after ``EXPLORE_EVERY`` undrafted steps in a row one step
  drafts a single token;
- an inner drafter whose drafting costs the same at any depth and that grades its proposals
  (``Drafter.grades_proposals``; prompt lookup: the length of the matched suffix) drafts in full, and the context
  adds the grade: the wrapper reads it and cuts the draft to the best depth at that grade (``graded``, default
  on). On the MoE testbed's Spec-Bench answers a 1-token match's first token is accepted 15% of the time and a
  3-token match's after a full accept 87%: the previous outcome alone cannot tell a likely copy from a stray
  common token, so ungraded the wrapper drafted the same depth for both;
- a verification's seconds are measured between the end of ``propose`` and the start of ``observe``; the inner
  drafter's own seconds per step are its propose plus its observe.

At temperature 1.0 prompt lookup's 10-token drafts are rarely accepted past the first token while verifying
11 tokens costs about 1.35 plain steps here: ``pld`` runs below ``ar`` (BENCHMARKS.md); wrapped it drafts
as deep as its acceptance pays for, and not at all when nothing does.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable
from dataclasses import dataclass

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from harness.drafting.depth_policy import (
    MISS,
    AcceptanceEstimate,
    BatchStepModel,
    CostModel,
    best_depth,
    outcome,
    plan_batch,
)
from harness.engine import tree as T
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.method import EngineGenerator, MethodContext, inner_drafter
from harness.engine.proposal import Proposal
from harness.engine.verifiers import VerifyResult
from harness.model.experts import ExpertCounter
from harness.model.target import ForwardOutput

EXPLORE_EVERY = 8


@dataclass
class AdaptiveConfig(MethodConfig):
    name: str = "adaptive"
    family: str = "adaptive"
    inner: str = "pld"  # the wrapped engine method: a conf/method preset with optional overrides ("pld num_draft=16")
    max_depth: int = 16  # the deepest draft it may ask for (the inner drafter may cap it lower)
    expert_term: bool | None = None  # price widths by the experts they activate; None: on for MoE targets
    prompt_carry: float = 1.0  # share of the run's acceptance counts' weight a new prompt starts from (1: all)
    graded: bool = True  # keep rates per grade of proposal when the inner drafter grades them (pld: match length)


class AdaptiveDrafter(Drafter):
    name = "adaptive"

    def __init__(self, inner: Drafter, max_depth: int, curve: Callable[[int], float], experts: ExpertCounter | None = None,
                 prompt_carry: float = 1.0, graded: bool = True,
                 batch_surface: Callable[[], Callable[[float, float], float]] | None = None) -> None:
        self.inner = inner
        self.batchable = inner.batchable
        self._batch_surface = batch_surface  # measured on first batched use only: batch-1 runs never pay for it
        self.batch_step: BatchStepModel | None = None
        self.in_batch = False  # a row of a batch: its verification's seconds are the batch's, recorded once for all
        self.graded = graded and inner.grades_proposals
        self.prompt_carry = prompt_carry
        self.experts = experts  # the target's router hooks: the expert term is on
        self.max_depth = max_depth
        self.hidden_layers = inner.hidden_layers
        self.lossless = getattr(inner, "lossless", True)
        self.acceptance = AcceptanceEstimate(max_depth)
        self.cost = CostModel(max_depth, curve, experts)
        self.context = MISS
        self.grade: int | None = None  # the grade of the proposal being verified
        self._idle = 0  # undrafted steps in a row
        self._asked = 0
        self._t_proposed = 0.0
        self._t_draft = 0.0

    def fork(self) -> "AdaptiveDrafter":
        clone = copy.copy(self)  # acceptance and cost stay shared: estimates pooled over the batch's rows
        clone.inner = self.inner.fork()
        return clone

    def best_depth(self, cap: int, context: int | None = None, grade: int | None = None) -> int:
        return best_depth(self.acceptance.reach(context, grade), self.cost.step_seconds, min(cap, self.max_depth))

    def choose(self, cap: int) -> int:
        """The depth to ask for in the current context; one token after ``EXPLORE_EVERY`` undrafted steps."""
        asked = self.best_depth(cap, self.context, self.grade)
        self._idle = self._idle + 1 if asked == 0 else 0
        if self._idle > EXPLORE_EVERY and cap > 0:
            asked, self._idle = 1, 0
        return asked

    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        if self.prompt_carry < 1:
            self.acceptance.carry(self.prompt_carry)
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

    def propose_batch(self, rows: list[tuple[Drafter, DecodeState, int]]) -> list[Proposal]:
        """One batched step's proposals, planned for the whole batch (depth_policy.plan_batch): each row's acceptance
        in its context (its previous outcome, and the grade of its full draft where the inner drafter grades them),
        the batch step's price on the c(B, k) surface, each depth's drafting time. At a batch size whose step is
        already past the surface's flat part the plan drafts nothing, and the batch decodes as batched ``ar``."""
        if self.batch_step is None:
            if self._batch_surface is None:
                return super().propose_batch(rows)
            self.batch_step = BatchStepModel(self._batch_surface())
        drafters = [d for d, _, _ in rows]
        caps = [min(m, self.max_depth) if m > 0 else 0 for _, _, m in rows]
        full: list[Proposal | None] = []
        for d, (_, state, _), cap in zip(drafters, rows, caps):
            d.in_batch, d.grade = True, None
            proposal = d.inner.propose(state, cap) if self.graded and cap else None
            if proposal is not None and proposal.tokens:
                d.grade = int(proposal.meta["grade"])
            full.append(proposal)
        reach = [self.acceptance.reach(d.context, d.grade) for d in drafters]
        floor = [1 if d._idle > EXPLORE_EVERY and cap else 0 for d, cap in zip(drafters, caps)]
        draft_s = self.cost.draft_s

        def drafting(depth: int) -> float:
            return draft_s[depth].value if draft_s[depth].count else 0.0

        depths = plan_batch(reach, caps, drafting, self.batch_step, floor)
        proposals = []
        for d, (_, state, _), depth, proposal in zip(drafters, rows, depths, full):
            t0 = time.perf_counter()
            if self.graded:
                proposal = proposal if proposal is not None and proposal.tokens else Proposal()
                proposal = proposal.restrict(T.prune_depth(proposal.parents, depth))
            else:
                proposal = d.inner.propose(state, depth) if depth else Proposal()
            d._asked = depth if proposal.tokens else 0
            d._idle = d._idle + 1 if not d._asked else 0
            d._t_draft = time.perf_counter() - t0
            proposals.append(proposal)
        return proposals

    def observe_batch(self, rows: int, tokens: int, seconds: float) -> None:
        if self.batch_step is not None:
            self.batch_step.record(rows, tokens, seconds)

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        t0 = time.perf_counter()
        verify_s = t0 - self._t_proposed
        experts = self.experts.mean_distinct() if self.experts is not None else None
        accepted = len(result.accepted)
        self.acceptance.record(self._asked, accepted, (self.grade, self.context))
        if proposal.tokens:  # an undrafted step (none asked, or the inner drafter had none) says nothing new
            self.context = outcome(len(proposal.tokens), accepted)
        self.inner.observe(state, proposal, result, out)
        draft_s = self._t_draft + time.perf_counter() - t0
        if self.in_batch:  # the batch's step time is recorded once, by observe_batch
            self.cost.draft_s[self._asked].add(draft_s)
        else:
            self.cost.record(self._asked, 1 + len(proposal.tokens), verify_s, draft_s, experts)


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
    drafter = AdaptiveDrafter(inner, cfg.max_depth, ctx.verify_cost(), use, cfg.prompt_carry, cfg.graded, ctx.batch_cost)
    return EngineGenerator.with_rule(cfg.name, ctx.target, drafter, ctx.sampling, cfg.rule)


FAMILIES = [Family("adaptive", AdaptiveConfig, build)]
