"""Relaxed acceptance rules (issue 17): LANTERN, grouped (GSD) and margin-aware (MARS) verification. Each is
labelled lossy, relaxes exactly where it says, and reduces to the lossless rule where its budget is zero."""

from __future__ import annotations

import pytest
import torch

from harness.engine.sampling import Sampling
from harness.engine.verifiers import GroupedVerifier, LanternVerifier, MarginVerifier, RejectionVerifier, make_verifier
from harness.loading.digits import PIXEL0, token_neighbours, tokenizer

T1 = Sampling(1.0)
NEIGHBOURS = token_neighbours(tokenizer())


def dist(pairs: dict[int, float], vocab: int = 31) -> torch.Tensor:
    p = torch.zeros(vocab)
    for i, v in pairs.items():
        p[i] = v
    return p / p.sum()


def test_relaxed_rules_are_labelled_lossy_and_the_lossless_one_is_not():
    for rule in ("lantern", "gsd", "mars"):
        assert not make_verifier(T1, rule, NEIGHBOURS).lossless
    assert make_verifier(T1, "auto", NEIGHBOURS).lossless


def test_lantern_pools_the_nearest_levels_within_its_budget():
    x = PIXEL0 + 5
    p = dist({x: 0.1, x - 1: 0.2, x + 1: 0.3, x + 6: 0.4})
    q = dist({x: 1.0})
    exact = RejectionVerifier(T1).accept_probability(p, q, x)
    assert exact == pytest.approx(0.1)
    assert LanternVerifier(T1, NEIGHBOURS, k=2, delta=0.25).accept_probability(p, q, x) == pytest.approx(0.3)  # +0.2 only
    assert LanternVerifier(T1, NEIGHBOURS, k=2, delta=1.0).accept_probability(p, q, x) == pytest.approx(0.6)
    assert LanternVerifier(T1, NEIGHBOURS, k=3, delta=0.0).accept_probability(p, q, x) == pytest.approx(exact)


def test_grouped_acceptance_judges_the_group():
    x = PIXEL0 + 8
    p = dist({x - 1: 0.5, x + 1: 0.5})
    q = dist({x: 1.0})
    assert RejectionVerifier(T1).accept_probability(p, q, x) == 0.0
    assert GroupedVerifier(T1, NEIGHBOURS, radius=1).accept_probability(p, q, x) == pytest.approx(1.0)
    assert GroupedVerifier(T1, NEIGHBOURS, radius=0).accept_probability(p, q, x) == 0.0


def test_margin_rule_takes_the_second_choice_only_when_the_target_is_torn():
    p = dist({3: 0.5, 4: 0.4, 5: 0.1})
    q = dist({4: 1.0})
    assert MarginVerifier(T1, ratio=0.7).accept_probability(p, q, 4) == pytest.approx(0.5)  # 0.4/0.5 >= 0.7: as token 3
    assert MarginVerifier(T1, ratio=0.9).accept_probability(p, q, 4) == pytest.approx(0.4)  # not torn: lossless
    assert MarginVerifier(T1, ratio=0.7).accept_probability(p, dist({5: 1.0}), 5) == pytest.approx(0.1)


def test_rule_strings_carry_options_and_bad_ones_name_the_fix():
    assert make_verifier(T1, "lantern k=4 delta=0.3", NEIGHBOURS).k == 4
    with pytest.raises(ValueError, match="neighbourhoods"):
        make_verifier(T1, "lantern")  # a text model has no code neighbourhoods
    with pytest.raises(ValueError, match="key=value"):
        make_verifier(T1, "lantern k", NEIGHBOURS)
    with pytest.raises(ValueError, match="temperature"):
        make_verifier(Sampling(0.0), "gsd", NEIGHBOURS)
    assert token_neighbours(type("Tok", (), {"get_vocab": lambda self: {"p0": 0}})()) is None


def test_positional_rule_strings_fit_in_compare_entries():
    from harness.engine.verifiers import parse_rule

    assert parse_rule("lantern:3:0.2") == ("lantern", {"k": 3, "delta": 0.2})
    assert parse_rule("mars:0.6") == ("mars", {"ratio": 0.6})
    with pytest.raises(ValueError, match="positional"):
        parse_rule("gsd:1:2")


def test_greedy_margin_rule_accepts_the_close_second_choice_only():
    """MARS at temperature 0: a drafted second choice passes when the target's softmax gives it at least ratio
    times the first's probability; the argmax child still wins among siblings, and the emitted token is the argmax."""
    from harness.engine.proposal import Proposal
    from harness.engine.verifiers import GreedyVerifier

    g = Sampling(0.0)
    rule = make_verifier(g, "mars:0.7")
    assert rule.name == "mars" and not rule.lossless
    torn = torch.log(dist({3: 0.5, 4: 0.4, 5: 0.1}))  # 0.4 / 0.5 = 0.8
    sure = torch.log(dist({3: 0.9, 4: 0.1}))
    logits = torch.stack([torn, sure, torn])
    chain = Proposal(tokens=[4, 4], parents=[-1, 0])  # second choice at the root (torn), then at a sure row
    assert rule.verify(logits, chain).accepted == [0] and rule.verify(logits, chain).token == 3
    assert GreedyVerifier(g).verify(logits, chain).accepted == []
    assert make_verifier(g, "mars:0.9").verify(logits, chain).accepted == []  # 0.8 < 0.9: not torn enough
    siblings = Proposal(tokens=[4, 3], parents=[-1, -1])
    assert rule.verify(torch.stack([torn, sure, sure]), siblings).accepted == [1]  # the argmax child first
