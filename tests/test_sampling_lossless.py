"""Lossless sampling: every rule reproduces the target's distribution; deliberately wrong rules are caught.

Toy logit-table models (tests/toy.py) have peaked, exactly known distributions, so chi-square tests on
the first tokens of tens of thousands of seeded generations have real power. Each case runs the engine's
own Decoder, verifier and drafters.
"""

from __future__ import annotations

import pytest
import torch

from harness import tree as T
from harness.decoder import Decoder
from harness.drafter import Drafter, NoDraft
from harness.proposal import Proposal
from harness.sampling import Sampling, sample, warp
from harness.verify import RejectionVerifier, VerifyResult, make_verifier
from methods.pld import PLDConfig, PromptLookup
from methods.sps import DraftModel, SpSConfig

from .toy import TableLM, chi_square, sample_outputs

V = 8
STOP = 7
PROMPT = [1, 2, 3, 1, 2]
LENGTH = 3
N = 20000
ALPHA = 1e-4  # a lossless rule must not be rejected at this level (deterministic seeds)
POWER = 1e-8  # a wrong rule must be rejected at least this strongly

TARGET = TableLM(V, seed=0, stop_ids={STOP})
DRAFT = TableLM(V, seed=1, sharpness=1.5)
SETTINGS = {
    "t1": Sampling(1.0),
    "t07_top4": Sampling(0.7, top_k=4),
    "top_p08": Sampling(1.2, top_p=0.8),
}


class ToyTree(Drafter):
    """Expands every node into ``branch`` children down to ``depth`` from the toy draft's q.

    mode ``iid``: children drawn independently from q (each carries q); ``without_replacement``: child j
    drawn from q with earlier siblings removed (carries that renormalised q); ``topk``: the most likely
    children, deterministic (q is None).
    """

    def __init__(self, draft: TableLM, sampling: Sampling, depth: int, branch: int, mode: str):
        self.draft, self.sampling, self.depth, self.branch, self.mode = draft, sampling, depth, branch, mode

    def propose(self, state, max_depth):
        g = state.generator
        tokens, parents, qs = [], [], []
        frontier = [(-1, state.ids[-2], state.ids[-1])]
        for _ in range(min(self.depth, max_depth)):
            nxt = []
            for node, prev, cur in frontier:
                q = warp(self.draft.table[prev, cur], self.sampling)
                if self.mode == "topk":
                    picks = [(int(x), None) for x in torch.topk(q, self.branch).indices]
                elif self.mode == "iid":
                    picks = [(sample(q, g), q) for _ in range(self.branch)]
                else:
                    picks, rest = [], q.clone()
                    for _ in range(self.branch):
                        if rest.sum() <= 0:
                            break
                        qj = rest / rest.sum()
                        x = sample(qj, g)
                        picks.append((x, qj))
                        rest = rest.clone()
                        rest[x] = 0
                for x, qx in picks:
                    tokens.append(x)
                    parents.append(node)
                    qs.append(qx)
                    nxt.append((len(tokens) - 1, cur, x))
            frontier = nxt
        q = None if self.mode == "topk" else torch.stack(qs)
        return Proposal(tokens, parents, q)


class AcceptIfQBelowP(RejectionVerifier):
    """Wrong: accepts a drafted token exactly when q(x) <= p(x), instead of with probability min(1, p/q)."""

    def verify(self, logits, proposal, generator=None):
        path, row = [], 0
        while True:
            p = warp(logits[row], self.sampling)
            kids = T.children(proposal.parents)[row] if proposal.tokens else []
            if not kids:
                return VerifyResult(path, sample(p, generator), len(path))
            c = kids[0]
            x = proposal.tokens[c]
            if float(proposal.q[c][x]) <= float(p[x]):
                path.append(c)
                row = c + 1
                continue
            residual = torch.clamp(p - proposal.q[c], min=0)
            return VerifyResult(path, sample(residual / residual.sum(), generator), len(path))


class PerPathSampling(RejectionVerifier):
    """Wrong (Spec-Bench's REST top-p rule): an independent target sample per (path, position); the path
    with the longest run of matches wins, so a node shared by m paths gets m chances."""

    def verify(self, logits, proposal, generator=None):
        if not proposal.tokens:
            return VerifyResult([], sample(warp(logits[0], self.sampling), generator), 0)
        best = None
        for path in T.paths(proposal.parents):
            accepted, row = [], 0
            for node in path:
                y = sample(warp(logits[row], self.sampling), generator)
                if y != proposal.tokens[node]:
                    break
                accepted.append(node)
                row = node + 1
            else:
                y = sample(warp(logits[row], self.sampling), generator)
            if best is None or len(accepted) > len(best[0]):
                best = (accepted, y)
        return VerifyResult(best[0], best[1], len(best[0]))


def run_case(drafter, sampling, verifier=None, n=N, seed=0):
    verifier = verifier or make_verifier(sampling)
    counts = sample_outputs(Decoder(TARGET, verifier), drafter, PROMPT, LENGTH, n, seed)
    return chi_square(counts, TARGET.law(PROMPT, LENGTH, sampling))


def sps(sampling, k):
    return DraftModel(DRAFT, sampling, SpSConfig(k=k), None)


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize(
    "case",
    ["ar", "pld", "sps_k1", "sps_k3", "tree_iid", "tree_without_replacement", "tree_topk"],
)
def test_lossless_rules_reproduce_the_target(case, setting):
    s = SETTINGS[setting]
    drafter = {
        "ar": lambda: NoDraft(),
        "pld": lambda: PromptLookup(PLDConfig(max_ngram=2, num_draft=3), TARGET.stop_ids),
        "sps_k1": lambda: sps(s, 1),
        "sps_k3": lambda: sps(s, 3),
        "tree_iid": lambda: ToyTree(DRAFT, s, depth=2, branch=3, mode="iid"),
        "tree_without_replacement": lambda: ToyTree(DRAFT, s, depth=2, branch=3, mode="without_replacement"),
        "tree_topk": lambda: ToyTree(DRAFT, s, depth=3, branch=2, mode="topk"),
    }[case]()
    pvalue, tv = run_case(drafter, s)
    assert pvalue > ALPHA, f"{case}/{setting}: p={pvalue:.2e}, TV={tv:.4f}"


def test_accept_if_q_below_p_is_caught():
    s = SETTINGS["t1"]
    pvalue, tv = run_case(sps(s, 3), s, AcceptIfQBelowP(s))
    assert pvalue < POWER, f"p={pvalue:.2e}, TV={tv:.4f}"


def test_counting_a_shared_node_once_per_path_is_caught():
    s = SETTINGS["t1"]
    pvalue, tv = run_case(ToyTree(DRAFT, s, depth=2, branch=3, mode="topk"), s, PerPathSampling(s))
    assert pvalue < POWER, f"p={pvalue:.2e}, TV={tv:.4f}"


def test_drafting_greedily_but_reporting_softmax_q_is_caught():
    """transformers #32867: the draft picked argmax tokens but the ratio used its softmax."""
    s = SETTINGS["t1"]

    class GreedyPickSoftmaxQ(DraftModel):
        def propose(self, state, max_depth):
            greedy = Sampling()
            tokens, qs = [], []
            prev, cur = state.ids[-2], state.ids[-1]
            for _ in range(min(2, max_depth)):
                logits = DRAFT.table[prev, cur]
                x = int(warp(logits, greedy).argmax())
                tokens.append(x)
                qs.append(warp(logits, s))
                prev, cur = cur, x
            return Proposal.chain(tokens, q=torch.stack(qs))

    pvalue, tv = run_case(GreedyPickSoftmaxQ(DRAFT, s, SpSConfig(k=2), None), s)
    assert pvalue < POWER, f"p={pvalue:.2e}, TV={tv:.4f}"


def test_warp_matches_transformers_processors():
    from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    logits = torch.randn(3, 50, generator=torch.Generator().manual_seed(0)) * 3
    for s in (Sampling(0.7), Sampling(1.0, top_k=5), Sampling(0.9, top_p=0.6), Sampling(1.3, top_k=10, top_p=0.5)):
        ref = TemperatureLogitsWarper(s.temperature)(None, logits.clone())
        if s.top_k:
            ref = TopKLogitsWarper(s.top_k)(None, ref)
        if s.top_p < 1:
            ref = TopPLogitsWarper(s.top_p)(None, ref)
        torch.testing.assert_close(warp(logits, s), ref.softmax(-1))
