"""adaptive: the depth it asks its inner drafter for follows the acceptance and the cost it measures."""

import time

import pytest
import torch

from harness.core.errors import SpeclabError
from harness.drafting.depth_policy import ALL, MISS, PRIOR_RATE
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.proposal import Proposal
from harness.engine.sampling import Sampling
from harness.engine.verifiers import VerifyResult
from methods.adaptive import EXPLORE_EVERY, AdaptiveDrafter

from .test_training_free import build_method


class Chain(Drafter):
    """Proposes a chain as deep as it is asked, and nothing every fourth step (prompt lookup without a match);
    the test decides how much of it the target accepts."""

    def __init__(self):
        self.asked = []

    def propose(self, state, max_depth):
        self.asked.append(max_depth)
        return Proposal() if len(self.asked) % 4 == 0 else Proposal.chain(list(range(max_depth)))


def steps(drafter, accept, n, verify_s=None):
    """``n`` steps in which the target accepts ``accept(depth)`` tokens; verification takes ``verify_s(width)``.
    Returns (grade, drafted tokens) of each step."""
    state = DecodeState([1, 2, 3], 3, 10_000, None, Sampling(), None)
    drafted = []
    for _ in range(n):
        proposal = drafter.propose(state, 64)
        if verify_s is not None:
            drafter._t_proposed -= verify_s(1 + len(proposal))  # as if the forward had taken that long
        a = accept(len(proposal))
        drafted.append((drafter.grade, len(proposal)))
        drafter.observe(state, proposal, VerifyResult(list(range(a)), 0, a), None)
    return drafted


def linear(k):
    return 1.0 + 0.1 * (k - 1)


def test_untried_depths_start_at_the_prior_and_unaccepted_drafts_stop():
    d = AdaptiveDrafter(Chain(), 8, linear)
    assert d.acceptance.reach()[:3] == pytest.approx([1.0, PRIOR_RATE, PRIOR_RATE**2])  # untried: each level the one above
    steps(d, lambda depth: 0, 40, verify_s=lambda w: 0.05 * linear(w))
    assert d.inner.asked[0] > 1 and d.best_depth(64, d.context) == 0  # explored, learned that nothing is accepted, stopped


def test_accepted_drafts_go_as_deep_as_allowed():
    d = AdaptiveDrafter(Chain(), 8, linear)
    steps(d, lambda depth: depth, 40, verify_s=lambda w: 0.05 * linear(w))
    assert d.inner.asked[-1] == 8


def test_a_steep_measured_cost_shortens_drafts_the_curve_called_flat():
    """The c(k) prior says verification is free; the timings say otherwise, and they win."""
    d = AdaptiveDrafter(Chain(), 8, lambda k: 1.0)
    steps(d, lambda depth: min(depth, 2), 60, verify_s=lambda w: 0.05 * (1 + 0.5 * (w - 1)))  # 2 right, the rest never
    assert d.best_depth(64) == 2


def test_bad_settings_get_one_clear_line(tiny_target):
    with pytest.raises(SpeclabError, match="max_depth"):
        build_method(tiny_target, "method=adaptive", "method.max_depth=0")
    with pytest.raises(SpeclabError, match="prompt_carry"):
        build_method(tiny_target, "method=adaptive", "method.prompt_carry=1.5")
    with pytest.raises(SpeclabError, match="cannot wrap itself"):
        build_method(tiny_target, "method=adaptive", "method.inner=adaptive")
    with pytest.raises(SpeclabError, match="not an engine method"):
        build_method(tiny_target, "method=adaptive", "method.inner=hf_pld")


def test_reach_is_a_product_of_conditional_rates():
    d = AdaptiveDrafter(Chain(), 3, linear)
    d.acceptance.tried[1], d.acceptance.passed[1] = 96, 96
    assert d.acceptance.reach()[1] == pytest.approx((96 + PRIOR_RATE * 4) / 100)
    assert torch.tensor(d.acceptance.reach()).diff().le(0).all()


def test_acceptance_in_runs_gets_deeper_drafts_after_a_full_accept():
    """Copied spans are accepted whole and free text not at all: after a fully accepted draft it drafts deep,
    after a miss it drafts little or nothing."""
    d = AdaptiveDrafter(Chain(), 8, linear)

    def accept(depth):  # runs: accepted whole after a whole accept but every eleventh step; every fifth starts one
        step = len(d.inner.asked)
        return depth if (d.context == ALL and step % 11) or step % 5 == 0 else 0

    steps(d, accept, 300, verify_s=lambda w: 0.05 * (1 + 0.5 * (w - 1)))
    assert d.best_depth(64, ALL) >= 4 > d.best_depth(64, MISS)
    assert d.acceptance.reach(ALL)[2] > 2 * d.acceptance.reach(MISS)[2]


def test_a_context_that_stopped_drafting_explores_again():
    d = AdaptiveDrafter(Chain(), 8, linear)
    steps(d, lambda depth: 0, 60, verify_s=lambda w: 0.05 * linear(w))
    asked = []
    for _ in range(3 * EXPLORE_EVERY):
        steps(d, lambda depth: 0, 1, verify_s=lambda w: 0.05 * linear(w))
        asked.append(d._asked)
    assert 1 in asked and set(asked) == {0, 1}  # a one-token probe now and then, nothing deeper


def test_a_depth_is_priced_by_the_widths_it_produced_not_their_mean():
    """Prompt lookup asked for one token finds a match on half the steps: half its verifications are one token
    wide and cost a plain step, half two tokens and cost twice that. The depth costs 1.5 steps, not the 2 of
    the mean width's (1.5, rounded) verification, which made the MoE drafter too cautious on qa and math."""
    d = AdaptiveDrafter(Chain(), 4, linear)
    state = DecodeState([1, 2, 3], 3, 10_000, None, Sampling(), None)
    for width, seconds in [(1, 1.0), (2, 2.0)] * 20:
        d._asked, d._t_draft = 1, 0.0
        d._t_proposed = time.perf_counter() - seconds
        d.observe(state, Proposal.chain([0]) if width == 2 else Proposal(), VerifyResult([], 0, 0), None)
    assert d.cost.verify_seconds(2) == pytest.approx(2.0, rel=0.05)
    assert d.cost.step_seconds(1) == pytest.approx(1.5, rel=0.05)
    assert d.cost.step_seconds(2) == pytest.approx(2.0 / linear(2) * linear(3), rel=0.05)  # untried: its full width


class Experts:
    """A stand-in for the router hooks: the distinct experts of the last verification, as the test sets them."""

    num_experts, top_k = 8, 2

    def __init__(self):
        self.value = 2.0

    def mean_distinct(self):
        return self.value


def test_expert_term_prices_untimed_widths_by_the_experts_they_activate():
    counter = Experts()
    d = AdaptiveDrafter(Chain(), 16, linear, counter)
    state = DecodeState([1, 2, 3], 3, 10_000, None, Sampling(), None)
    # widths 1 and 2 timed: 2 and 4 experts, 1.0 and 2.0 seconds (0.5 s per expert)
    for width, experts, seconds in [(1, 2.0, 1.0), (2, 4.0, 2.0)] * 4:
        d._asked, d._t_draft = width - 1, 0.0
        d._t_proposed = time.perf_counter() - seconds
        counter.value = experts
        proposal = Proposal.chain(list(range(width - 1))) if width > 1 else Proposal()
        d.observe(state, proposal, VerifyResult([], 0, 0), None)
    e9 = d.cost.distinct_experts(9)
    assert 6.5 < e9 < 8.0  # past the widest measured width (4 of 8 at width 2), the uniform form: saturating
    assert d.cost.verify_seconds(9) == pytest.approx(2.0 + 0.5 * (e9 - 4.0), rel=0.02)  # by experts, not 9x width 1
    assert d.cost.verify_seconds(1) == pytest.approx(1.0, rel=0.02)


def test_expert_term_is_not_thrown_by_two_widths_with_about_the_same_experts():
    """Widths 2 and 3 read 3.0 and 3.05 experts but differ by 0.1 s of noise: a slope through those two alone
    (2 s per expert) would price width 9 at over 8 s; the line through all timed widths stays near 0.5 s per expert."""
    counter = Experts()
    d = AdaptiveDrafter(Chain(), 16, linear, counter)
    state = DecodeState([1, 2, 3], 3, 10_000, None, Sampling(), None)
    for width, experts, seconds in [(1, 2.0, 1.0), (2, 3.0, 1.5), (3, 3.05, 1.6)] * 4:
        d._asked, d._t_draft = width - 1, 0.0
        d._t_proposed = time.perf_counter() - seconds
        counter.value = experts
        d.observe(state, Proposal.chain(list(range(width - 1))) if width > 1 else Proposal(), VerifyResult([], 0, 0), None)
    e9 = d.cost.distinct_experts(9)
    assert e9 > 4.5
    assert d.cost.verify_seconds(9) == pytest.approx(1.0 + 0.55 * (e9 - 2.0), rel=0.1)


def test_untried_widths_between_measured_ones_read_interpolated_experts():
    """Routing is correlated: 11 tokens read 4.5 experts where uniform routing would read 7.5. Width 5 lies
    between the measured widths, so it reads about 3 experts, not the 6 of a p fitted to the one-token steps."""
    counter = Experts()
    d = AdaptiveDrafter(Chain(), 16, linear, counter)
    state = DecodeState([1, 2, 3], 3, 10_000, None, Sampling(), None)
    for width, experts in [(1, 2.0)] * 50 + [(11, 4.5)]:
        d._asked, d._t_draft, d._t_proposed = width - 1, 0.0, time.perf_counter()
        counter.value = experts
        d.observe(state, Proposal.chain(list(range(width - 1))) if width > 1 else Proposal(), VerifyResult([], 0, 0), None)
    assert d.cost.distinct_experts(5) == pytest.approx(3.0)
    assert 4.5 < d.cost.distinct_experts(16) < 6.0  # past width 11: the uniform form through 4.5 experts at 11 tokens


def test_expert_term_needs_an_moe_target(tiny_target):
    with pytest.raises(SpeclabError, match="not a Mixture-of-Experts"):
        build_method(tiny_target, "method=moe_aware")
    assert build_method(tiny_target, "method=adaptive").drafter.experts is None


def test_adaptive_turns_the_expert_term_on_for_moe_targets():
    from .test_moe import tiny_moe

    target = tiny_moe("mixtral", "speclab")
    assert build_method(target, "method=adaptive").drafter.experts is target.experts
    assert build_method(target, "method=adaptive", "method.expert_term=false").drafter.experts is None


def test_counts_fade_so_a_change_of_regime_is_followed():
    """After 150 steps where every draft passes, drafts stop passing: the depth comes down within 60 steps."""
    d = AdaptiveDrafter(Chain(), 8, linear)
    steps(d, lambda depth: depth, 150, verify_s=lambda w: 0.05 * linear(w))
    assert d.best_depth(64, d.context) == 8
    steps(d, lambda depth: 0, 60, verify_s=lambda w: 0.05 * linear(w))
    assert d.best_depth(64, d.context) == 0


def test_a_new_prompt_keeps_the_run_rates_at_a_fraction_of_their_weight():
    """After a long run where nothing passes, a prompt whose drafts all pass gets deep drafts within a few steps:
    the run's counts carry into it as a light prior, with their rates unchanged."""
    d = AdaptiveDrafter(Chain(), 8, linear, prompt_carry=0.2)
    steps(d, lambda depth: 0, 150, verify_s=lambda w: 0.05 * linear(w))
    rate, weight = d.acceptance.passed[1] / d.acceptance.tried[1], d.acceptance.tried[1]
    d.begin(DecodeState([1, 2, 3], 3, 10_000, None, Sampling(), None), None)
    assert d.acceptance.passed[1] / d.acceptance.tried[1] == pytest.approx(rate)
    assert d.acceptance.tried[1] == pytest.approx(weight * 0.2) and d.context == MISS
    asked_before = len(d.inner.asked)
    steps(d, lambda depth: depth, 30, verify_s=lambda w: 0.05 * linear(w))
    assert max(d.inner.asked[asked_before:]) == 8


def test_prompt_carry_one_keeps_the_counts_whole():
    d = AdaptiveDrafter(Chain(), 8, linear)
    steps(d, lambda depth: min(depth, 2), 40, verify_s=lambda w: 0.05 * linear(w))
    before = (list(d.acceptance.tried), list(d.acceptance.passed), d.context)
    d.begin(DecodeState([1, 2, 3], 3, 10_000, None, Sampling(), None), None)
    assert (d.acceptance.tried, d.acceptance.passed, d.context) == before


class GradedChain(Drafter):
    """Proposes a chain as deep as allowed, graded 3 (a long match: accepted whole) on every third step and
    1 (a one-token match: never accepted) otherwise, as prompt lookup grades its drafts."""

    grades_proposals = True

    def __init__(self):
        self.asked = []

    def propose(self, state, max_depth):
        self.asked.append(max_depth)
        return Proposal.chain(list(range(max_depth)), grade=3 if len(self.asked) % 3 == 0 else 1)


def test_graded_proposals_are_cut_by_the_acceptance_seen_at_their_grade():
    d = AdaptiveDrafter(GradedChain(), 8, linear)
    drafted = steps(d, lambda depth: depth if d.grade == 3 else 0, 300, verify_s=lambda w: 0.05 * (1 + 0.3 * (w - 1)))
    cut = {g: [n for grade, n in drafted if grade == g] for g in (1, 3)}
    assert set(d.inner.asked) == {8}  # always drafted in full: the cut is the wrapper's
    assert d.best_depth(64, d.context, grade=1) == 0 and d.best_depth(64, d.context, grade=3) == 8
    assert sum(n > 0 for n in cut[1][-60:]) <= 60 // EXPLORE_EVERY + 1  # one-token probes only
    assert cut[3][-20:] == [8] * 20


def test_graded_false_asks_for_a_depth_and_ignores_grades():
    d = AdaptiveDrafter(GradedChain(), 8, linear, graded=False)
    state = DecodeState([1, 2, 3], 3, 10_000, None, Sampling(), None)
    proposal = d.propose(state, 64)
    assert d.grade is None and d.inner.asked == [len(proposal)]


def test_prompt_lookup_grades_a_draft_by_the_length_of_its_match():
    from methods.pld import PLDConfig, PromptLookup

    pld = PromptLookup(PLDConfig(), set())
    state = DecodeState([5, 6, 7, 8, 9, 1, 6, 7], 8, 10_000, None, Sampling(), None)
    assert pld.propose(state, 4).meta["grade"] == 2 and pld.propose(state, 4).tokens == [8, 9, 1, 6]
    state.ids = [5, 6, 7, 8, 9, 1, 7]
    assert pld.propose(state, 2).meta["grade"] == 1 and pld.propose(state, 2).tokens == [8, 9]
    state.ids = [5, 6, 7]
    assert pld.propose(state, 2).tokens == [] and pld.grades_proposals
