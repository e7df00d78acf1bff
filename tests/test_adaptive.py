"""adaptive: the depth it asks its inner drafter for follows the acceptance and the cost it measures."""

import pytest
import torch

from harness.drafter import DecodeState, Drafter
from harness.errors import SpeclabError
from harness.proposal import Proposal
from harness.sampling import Sampling
from harness.verify import VerifyResult
from methods.adaptive import PRIOR_RATE, AdaptiveDrafter

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
    """``n`` steps in which the target accepts ``accept(depth)`` tokens; verification takes ``verify_s(width)``."""
    state = DecodeState([1, 2, 3], 3, 10_000, None, Sampling(), None)
    for _ in range(n):
        proposal = drafter.propose(state, 64)
        if verify_s is not None:
            drafter._t_proposed -= verify_s(1 + len(proposal))  # as if the forward had taken that long
        a = accept(len(proposal))
        drafter.observe(state, proposal, VerifyResult(list(range(a)), 0, a), None)


def linear(k):
    return 1.0 + 0.1 * (k - 1)


def test_untried_depths_start_at_the_prior_and_unaccepted_drafts_stop():
    d = AdaptiveDrafter(Chain(), 8, linear)
    assert d.reach()[:3] == pytest.approx([1.0, PRIOR_RATE, PRIOR_RATE**2])  # untried: each level the one above
    steps(d, lambda depth: 0, 40, verify_s=lambda w: 0.05 * linear(w))
    assert d.inner.asked[0] > 1 and d.best_depth(64) == 0  # explored, learned that nothing is accepted, stopped


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
    with pytest.raises(SpeclabError, match="cannot wrap itself"):
        build_method(tiny_target, "method=adaptive", "method.inner=adaptive")
    with pytest.raises(SpeclabError, match="not an engine method"):
        build_method(tiny_target, "method=adaptive", "method.inner=hf_pld")


def test_reach_is_a_product_of_conditional_rates():
    d = AdaptiveDrafter(Chain(), 3, linear)
    d.tried[1], d.passed[1] = 96, 96
    assert d.reach()[1] == pytest.approx((96 + PRIOR_RATE * 4) / 100)
    assert torch.tensor(d.reach()).diff().le(0).all()
