"""Lossless sampling: every rule reproduces the target's distribution; deliberately wrong rules are caught.

Toy logit-table models (tests/toy.py) have peaked, exactly known distributions, so chi-square tests on
the first tokens of tens of thousands of seeded generations have real power. Each case runs the engine's
own Decoder, verifier and drafters. EAGLE's tree drafters run on the tiny transformer target with trained
heads (see "EAGLE trees" below); presets whose drafters need a transformer and learn over a generation
(recycling_prompt, moe_aware on a tiny MoE, sps with a reduced draft vocabulary) run whole generations on tiny
transformers (see "whole generations" at the end). Every family of rule has a deliberately wrong variant that the
same test must reject.
"""

from __future__ import annotations

import pytest
import torch

from harness.drafting.heads.eagle_drafter import HeadDrafter
from harness.engine import tree as T
from harness.engine.decoder import Decoder
from harness.engine.drafter import DecodeState, Drafter, NoDraft
from harness.engine.proposal import Proposal
from harness.engine.sampling import Sampling, sample, warp
from harness.engine.verifiers import RejectionVerifier, VerifyResult, make_verifier
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


class ResampleFromP(RejectionVerifier):
    """Wrong: after every draft at a position is rejected, the token is drawn from p instead of the residual, so a
    rejected draft token can come back."""

    def verify(self, logits, proposal, generator=None):
        res = super().verify(logits, proposal, generator)
        if res.reached > len(res.accepted):  # the drafts below the last accepted node were all rejected
            row = res.accepted[-1] + 1 if res.accepted else 0
            return VerifyResult(res.accepted, sample(warp(logits[row], self.sampling), generator), res.reached)
        return res


def run_case(drafter, sampling, verifier=None, n=N, seed=0, length=LENGTH):
    verifier = verifier or make_verifier(sampling)
    counts = sample_outputs(Decoder(TARGET, verifier), drafter, PROMPT, length, n, seed)
    return chi_square(counts, TARGET.law(PROMPT, length, sampling))


def sps(sampling, k):
    return DraftModel(DRAFT, sampling, SpSConfig(k=k), None)


def registry_method(target, spec: str, sampling: Sampling):
    """The engine generator ``spec`` (a conf/method preset with overrides) builds, as a run would."""
    from omegaconf import OmegaConf

    from harness.core.config import EngineConfig
    from harness.core.presets import method_node
    from harness.core.registry import METHODS
    from harness.engine.method import MethodContext

    engine = OmegaConf.structured(EngineConfig(kernel="torch"))
    return METHODS.build(method_node(spec), MethodContext(target, sampling, engine))


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


# -- EAGLE trees on a tiny transformer ---------------------------------------------------------------------
# A transformer's law over whole generations does not fit in memory, so these tests run one drafting and
# verification step at a fixed committed prefix, complete the emitted tokens to EAGLE_LENGTH with exact draws
# from the target, and compare the result with the target's own law over EAGLE_LENGTH tokens: equal iff the
# step is lossless. The heads (conftest.py, ``eagle_heads``) know the prefix's continuation, so paths of
# several nodes are accepted and every level of the tree takes part.

EAGLE_LENGTH = 3  # the step may emit up to 3 tokens: tree levels 1 and 2 plus the target's own token
EAGLE_N = 1500
# four siblings at the top (all of a top-4 draft's support), two levels of siblings below
WIDE = [[0], [1], [2], [3], [0, 0], [0, 1], [1, 0], [2, 0]]
EAGLE_SETTINGS = {
    "t1_top4": Sampling(1.0, top_k=4),
    "t07_top2": Sampling(0.7, top_k=2),  # two draws exhaust the draft's support: the second sibling's q is one-hot
    "t05": Sampling(0.5),
    "t07_top_p06": Sampling(0.7, top_p=0.6),
}


class TargetLaw:
    """The target's warped law over ``length`` tokens after ``prefix``, as chi-square cells.

    Every sequence with probability >= ``threshold`` is a cell; the rest of each expanded prefix u is the cell
    ``u + ("*",)``, so a bias in the first token shows even when its continuations are spread thin.
    """

    def __init__(self, target, prefix: list[int], sampling: Sampling, length: int, threshold: float) -> None:
        self.target, self.prefix, self.sampling, self.length = target, list(prefix), sampling, length
        self.memo: dict[tuple[int, ...], torch.Tensor] = {}
        self.cells: dict[tuple, float] = {}
        self.nodes: set[tuple[int, ...]] = set()
        self._expand((), 1.0, threshold)

    def p(self, seq) -> torch.Tensor:
        """The target's warped next-token distribution after prefix + seq."""
        seq = tuple(seq)
        if seq not in self.memo:
            ids = self.prefix + list(seq)
            with torch.inference_mode():
                logits = self.target.forward(self.target.new_cache(len(ids) + 1), ids, logits_rows=[-1]).logits[0]
            self.memo[seq] = warp(logits, self.sampling)
        return self.memo[seq]

    def _expand(self, u: tuple[int, ...], mass: float, threshold: float) -> None:
        self.nodes.add(u)
        if len(u) == self.length:
            self.cells[u] = mass
            return
        p = self.p(u)
        rest = mass
        for x in (p * mass >= threshold).nonzero().flatten().tolist():
            self._expand(u + (x,), mass * float(p[x]), threshold)
            rest -= mass * float(p[x])
        self.cells[u + ("*",)] = max(rest, 0.0)

    def cell(self, seq) -> tuple:
        u: tuple = ()
        while len(u) < self.length and u + (seq[len(u)],) in self.nodes:
            u += (seq[len(u)],)
        return u if len(u) == self.length else u + ("*",)


def eagle_step_test(target, drafter: Drafter, prefix: list[int], sampling: Sampling, n: int = EAGLE_N,
                    seed: int = 0) -> tuple[float, float, float]:
    """(p-value, TV, accepted tokens per step) of ``n`` seeded steps of ``drafter`` at ``prefix`` (a head drafter
    or any drafter that reads the target's cache, like layerskip's)."""
    gen = torch.Generator().manual_seed(seed)
    law = TargetLaw(target, prefix, sampling, EAGLE_LENGTH, 2.0 / n)
    verifier = RejectionVerifier(sampling)
    cache = target.new_cache(len(prefix) + 64)
    with torch.inference_mode():
        prefill = target.forward(cache, prefix[:-1], hidden_layers=drafter.hidden_layers)
    start = cache.length
    state = DecodeState(list(prefix), len(prefix), EAGLE_LENGTH + 1, target, sampling, gen, cache=cache)
    drafter.begin(state, prefill)
    if isinstance(drafter, HeadDrafter):
        with torch.inference_mode():
            root = drafter._catch_up()
        drafter._catch_up = lambda: root  # deterministic for a fixed prefix: recomputing it every step only costs time
    counts: dict[tuple, int] = {}
    accepted = 0
    for _ in range(n):
        proposal = drafter.propose(state, EAGLE_LENGTH - 1)
        with torch.inference_mode():
            out = target.forward(cache, [prefix[-1]] + proposal.tokens, positions=T.positions(proposal.parents, start),
                                 tree=T.ancestor_mask(proposal.parents))
        cache.truncate(start)
        result = verifier.verify(out.logits, proposal, gen)
        accepted += len(result.accepted)
        seq = [proposal.tokens[i] for i in result.accepted] + [result.token]
        while len(seq) < EAGLE_LENGTH:
            seq.append(sample(law.p(seq), gen))
        key = law.cell(seq)
        counts[key] = counts.get(key, 0) + 1
    pvalue, tv = chi_square(counts, law.cells)
    return pvalue, tv, accepted / n


@pytest.fixture(scope="module")
def eagle_prefix(tiny_target, tiny_prompts):
    """A tiny prompt and the first 15 tokens of its greedy answer, where the trained heads draft well."""
    prompt = tiny_prompts[0]
    ids = tiny_target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=15, pad_token_id=0)
    return ids[0].tolist()


def eagle_drafter(tiny_target, eagle_heads: dict, method: str, sampling: Sampling) -> HeadDrafter:
    """The method's drafter as its builder makes it, over a 64-token draft vocabulary."""
    from .test_eagle import build

    shape = {"choices": WIDE} if method == "eagle" else {"depth": 3, "top_k": 3, "total_tokens": 8}
    vocab = {} if method == "eagle3" else {"vocab_size": 64}  # EAGLE-3's head has its own 64 tokens (d2t)
    return build(tiny_target, eagle_heads, method, sampling, **vocab, **shape).drafter


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method,setting", [("eagle", "t07_top2"), ("eagle", "t07_top_p06"), ("eagle2", "t1_top4"),
                                            ("eagle2", "t05"), ("eagle3", "t1_top4"), ("eagle3", "t07_top_p06")])
def test_eagle_trees_reproduce_the_target(tiny_target, eagle_heads, eagle_prefix, method, setting):
    """``eagle``: a static tree whose siblings are drawn without replacement, each with its q given the earlier
    siblings; ``eagle2``: a dynamic tree of deterministic top-k children (q = one-hot); ``eagle3``: the same tree
    from the fused-feature head over its own 64-token vocabulary, mapped to target ids through d2t."""
    s = EAGLE_SETTINGS[setting]
    drafter = eagle_drafter(tiny_target, eagle_heads, method, s)
    if method == "eagle":
        assert drafter.shape.kind == "static" and len(drafter.shape.choices) == len(WIDE)
    if method == "eagle3":
        assert drafter.shape.kind == "dynamic" and len(drafter.vocab_ids) == 64 < tiny_target.vocab_size
    pvalue, tv, per_step = eagle_step_test(tiny_target, drafter, eagle_prefix, s)
    assert pvalue > ALPHA, f"{method}/{setting}: p={pvalue:.2e}, TV={tv:.4f}"
    assert per_step > 0.8  # paths are accepted: the deeper levels' q matter to the outcome


class SiblingsKeepTheirFirstQ(HeadDrafter):
    """Wrong: siblings drawn without replacement, but each reported with the undiminished q."""

    def _children(self, logits, count, generator):
        tokens, scores, qs = super()._children(logits, count, generator)
        return tokens, scores, [qs[0]] * len(qs) if qs and qs[0] is not None else qs


class TopRanksWithSampledQ(HeadDrafter):
    """Wrong: the most likely children (EAGLE-1's tree) verified with the q of sampling them."""

    def _children(self, logits, count, generator):
        q = warp(logits, self.sampling)
        picks = torch.topk(q, min(count, int((q > 0).sum()))).indices
        qs, left = [], q.clone()
        for d in picks.tolist():
            qs.append(self._full(left / left.sum()))
            left[d] = 0.0
        return self._target_ids(picks), torch.log_softmax(logits, -1)[picks].tolist(), qs


class DynamicWithSoftmaxQ(HeadDrafter):
    """Wrong: EAGLE-2's deterministic top-k children verified with the draft's warped distribution as q."""

    def _grow_dynamic(self, tree, root, stable, max_depth):
        super()._grow_dynamic(tree, root, stable, max_depth)
        for i, parent in enumerate(tree.parents):
            tree.q[i] = self._full(warp(self.head.logits(tree.out[parent][None])[0], self.sampling))


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("wrong,method,setting,n", [(SiblingsKeepTheirFirstQ, "eagle", "t07_top2", 1500),
                                                    (TopRanksWithSampledQ, "eagle", "t1_top4", 400),
                                                    (DynamicWithSoftmaxQ, "eagle2", "t1_top4", 400),
                                                    (DynamicWithSoftmaxQ, "eagle3", "t1_top4", 400)])
def test_wrong_eagle_tree_rules_are_caught(tiny_target, eagle_heads, eagle_prefix, wrong, method, setting, n):
    s = EAGLE_SETTINGS[setting]
    right = eagle_drafter(tiny_target, eagle_heads, method, s)
    pvalue, tv, _ = eagle_step_test(tiny_target, wrong(right.head, right.shape, s), eagle_prefix, s, n=n)
    assert pvalue < POWER, f"{wrong.__name__}: p={pvalue:.2e}, TV={tv:.4f}"


# -- training-free drafts (deterministic trees from a datastore, an automaton, a successor matrix, Jacobi guesses) --


def toy_datastore():
    """The toy target's own samples: retrieved continuations are often, not always, what it samples next."""
    from harness.drafting.datastore import Datastore

    gen = torch.Generator().manual_seed(5)
    decoder = Decoder(TARGET, make_verifier(SETTINGS["t1"]))
    entries = [PROMPT + decoder.generate(PROMPT, NoDraft(), 6, gen).token_ids for _ in range(60)]
    return Datastore.build(entries, V)


def retrieval_drafter(case: str):
    from methods.recycling import RecyclingConfig, TokenRecycling
    from methods.rest import RESTConfig, RetrievalDrafter
    from methods.sam import SAMConfig, SuffixAutomatonDrafter

    def recycling(context: int = 1):
        return TokenRecycling(RecyclingConfig(top_k=3, template=[[0], [1], [2], [0, 0], [1, 0], [0, 1]], total_tokens=6,
                                              context=context), V, None)

    if case == "rest":
        return RetrievalDrafter(RESTConfig(min_suffix=1, max_suffix=3, length=3, total_tokens=6), toy_datastore(), None)
    if case == "recycling":  # the matrix persists over the seeded generations, as across a run's prompts
        return recycling()
    if case == "lookahead":
        from methods.lookahead import Lookahead, LookaheadConfig

        return Lookahead(LookaheadConfig(ngram=3, window=2, guesses=2, pool_from_prompt=True))
    if case == "lookahead_prompt":  # the preset as the registry builds it (n-gram pool seeded from the prompt)
        gen = registry_method(TARGET, "lookahead_prompt", SETTINGS_OF_CASE[0])
        assert gen.name == "lookahead_prompt" and gen.drafter.cfg.pool_from_prompt
        return gen.drafter
    if case in ("sjd", "sjd_coupled"):
        from methods.sjd import JacobiWindow, SJDConfig

        return JacobiWindow(SJDConfig(window=3, coupled=case == "sjd_coupled"), SETTINGS_OF_CASE[0])
    if case == "adaptive":  # the depth it asks for changes as its estimates move: lossless whatever it picks
        from methods.adaptive import AdaptiveDrafter

        return AdaptiveDrafter(recycling(), 3, lambda k: 1.0 + 0.02 * (k - 1))
    return SuffixAutomatonDrafter(SAMConfig(threshold=1, max_tokens=3), recycling(context=2), None, None)


SETTINGS_OF_CASE: list = [None]  # the sampling settings a drafter that samples its own drafts (sjd) needs


def long_case(case: str) -> int:
    """Generation length for a training-free case: 5 where the tree's structure shows only past the first steps."""
    return 5 if case.startswith("sjd") or case == "lookahead_prompt" else LENGTH


@pytest.mark.parametrize("setting", sorted(SETTINGS))
@pytest.mark.parametrize("case", ["rest", "recycling", "sam_recycling", "lookahead", "lookahead_prompt", "adaptive",
                                  "sjd", "sjd_coupled"])
def test_training_free_drafts_reproduce_the_target(case, setting):
    s = SETTINGS[setting]
    SETTINGS_OF_CASE[0] = s
    drafter = retrieval_drafter(case)
    # Jacobi windows verify redrawn drafts only from the third token on, and lookahead's window columns share a
    # trunk only past depth 1 (at 3 tokens every draft is cut to one): 5 tokens, so they are on the path
    pvalue, tv = run_case(drafter, s, n=10000 if case.startswith("sjd") else 8000, length=long_case(case))
    assert pvalue > ALPHA, f"{case}/{setting}: p={pvalue:.2e}, TV={tv:.4f}"


def test_jacobi_drafts_kept_without_coupling_are_caught():
    """Wrong: redrawn positions keep their previous draft but report the new distribution as its q."""
    from methods.sjd import JacobiWindow, SJDConfig

    class KeepsOldDrafts(JacobiWindow):
        def _draw(self, p, old, q_old, generator):
            return old if old is not None else super()._draw(p, old, q_old, generator)

    s = SETTINGS["t1"]
    pvalue, tv = run_case(KeepsOldDrafts(SJDConfig(window=3, coupled=True), s), s, n=10000, length=5)
    assert pvalue < POWER, f"p={pvalue:.2e}, TV={tv:.4f}"


def test_rest_tree_counted_once_per_path_is_caught():
    """The REST reference's per-path sampling on a REST tree: a shared node gets one chance per path."""
    s = SETTINGS["t1"]
    pvalue, tv = run_case(retrieval_drafter("rest"), s, PerPathSampling(s), n=8000)
    assert pvalue < POWER, f"p={pvalue:.2e}, TV={tv:.4f}"


def test_lookahead_prompt_resampling_from_p_is_caught():
    """lookahead_prompt's window and pool branches verified with the replacement drawn from p, not the residual."""
    s = SETTINGS["t1"]
    SETTINGS_OF_CASE[0] = s
    pvalue, tv = run_case(retrieval_drafter("lookahead_prompt"), s, ResampleFromP(s), n=4000)
    assert pvalue < POWER, f"p={pvalue:.2e}, TV={tv:.4f}"


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("setting", ["t1_top4", "t05"])
def test_layerskip_drafts_reproduce_the_target(tiny_target, eagle_prefix, setting):
    """Self-speculation's early exit draws from the warped early-exit distribution on the target's own cache."""
    from methods.layerskip import EarlyExitDrafter, LayerSkipConfig

    s = EAGLE_SETTINGS[setting]
    drafter = EarlyExitDrafter(LayerSkipConfig(exit_layer=1, k=2, adapter="none"), tiny_target, None, s)
    pvalue, tv, accepted = eagle_step_test(tiny_target, drafter, eagle_prefix, s)
    assert pvalue > ALPHA, f"layerskip/{setting}: p={pvalue:.2e}, TV={tv:.4f}"
    assert accepted > 0.1, "the early exit's drafts must be accepted for this test to mean anything"


# -- Medusa / Hydra: deterministic top-k children of a static tree, verified as point masses --------------------------


def parallel_drafter(tiny_target, parallel_heads: dict, method: str):
    from .test_parallel_heads import build

    return build(tiny_target, parallel_heads, method, choices=WIDE, vocab_size=64).drafter


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("method,setting", [("medusa", "t1_top4"), ("medusa", "t05"), ("hydra", "t1_top4"),
                                            ("hydra", "t07_top_p06")])
def test_parallel_head_trees_reproduce_the_target(tiny_target, parallel_heads, eagle_prefix, method, setting):
    s = EAGLE_SETTINGS[setting]
    drafter = parallel_drafter(tiny_target, parallel_heads, method)
    pvalue, tv, per_step = eagle_step_test(tiny_target, drafter, eagle_prefix, s)
    assert pvalue > ALPHA, f"{method}/{setting}: p={pvalue:.2e}, TV={tv:.4f}"
    assert per_step > 0.5  # drafts are accepted: the test exercises acceptance, not only the residual


def test_medusa_top_k_with_softmax_q_is_caught(tiny_target, parallel_heads, eagle_prefix):
    """Wrong: Medusa's deterministic top-k children verified as if drawn from the head's softmax."""
    s = EAGLE_SETTINGS["t1_top4"]
    right = parallel_drafter(tiny_target, parallel_heads, "medusa")

    class SoftmaxQ(type(right)):
        def propose(self, state, max_depth):
            proposal = super().propose(state, max_depth)
            logits = self.heads.logits(self.h, self.heads.num_heads)
            depth = T.depths(proposal.parents)
            q = torch.zeros(len(proposal.tokens), tiny_target.vocab_size)
            for i, d in enumerate(depth):
                q[i, self.vocab_ids] = warp(logits[d - 1], self.sampling_for_test)
            proposal.q = q
            return proposal

    wrong = SoftmaxQ(right.heads, right.choices)
    wrong.set_vocab(right.vocab_ids)
    wrong.sampling_for_test = s
    with torch.no_grad():
        pvalue, tv, _ = eagle_step_test(tiny_target, wrong, eagle_prefix, s, n=400)
    assert pvalue < POWER, f"p={pvalue:.2e}, TV={tv:.4f}"



# -- whole generations on tiny transformers ---------------------------------------------------------------------------
# Drafters that learn within and across generations (a successor matrix fed by the prefill, the adaptive wrapper's
# estimates, a draft model's own cache) run whole seeded generations of GEN_LENGTH tokens: the first from the prefill,
# the rest from drafting steps. They are compared with the target's law over GEN_LENGTH tokens (``TargetLaw``). The
# drafter persists over the generations, as it does over a run's prompts.

GEN_LENGTH = 4  # the prefill's token, then steps of up to two drafted tokens and the target's own
GEN_N = 1000


def generation_test(target, gen, prompt: list[int], sampling: Sampling, n: int = GEN_N,
                    seed: int = 0) -> tuple[float, float, float]:
    """(p-value, TV, accepted tokens per generation) of ``n`` seeded generations of the engine generator ``gen``
    (stop tokens ignored, as the law does)."""
    law = TargetLaw(target, prompt, sampling, GEN_LENGTH, 2.0 / n)
    gen = gen.without_stop_tokens()
    g = torch.Generator().manual_seed(seed)
    counts: dict[tuple, int] = {}
    accepted = 0
    for _ in range(n):
        res = gen.generate(prompt, GEN_LENGTH, g)
        accepted += sum(res.accepted)
        key = law.cell(res.token_ids)
        counts[key] = counts.get(key, 0) + 1
    pvalue, tv = chi_square(counts, law.cells)
    return pvalue, tv, accepted / n


@pytest.fixture
def simulated_costs(tmp_path, monkeypatch):
    """Presets that size drafts by cost (total_tokens=auto; adaptive's per-width timings) read a simulated clock
    (tests/test_verify_cost.py: a fixed price per forward and per token), so they choose the same depths on every
    machine and every run; c(k) is measured on it into a scratch cache."""
    from types import SimpleNamespace

    import methods.adaptive
    from harness.engine import cost_curve
    from harness.model.target import TargetModel

    from .test_verify_cost import SimulatedClock

    clock = SimulatedClock()
    monkeypatch.setenv("SPECLAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(methods.adaptive, "time", SimpleNamespace(perf_counter=clock.perf_counter))
    monkeypatch.setattr(cost_curve, "time", SimpleNamespace(perf_counter=clock.perf_counter, time=clock.time))
    forward = TargetModel.forward

    def priced_forward(self, cache, tokens, *args, **kwargs):
        clock.charge(tokens)
        return forward(self, cache, tokens, *args, **kwargs)

    monkeypatch.setattr(TargetModel, "forward", priced_forward)


@pytest.mark.usefixtures("one_thread", "simulated_costs")
def test_recycling_prompt_reproduces_the_target(tiny_target, eagle_prefix):
    """The preset's successor matrix is seeded with the prefill's rows (every prompt position's top-k) and keyed by
    two tokens: the root's children are the target's own top-k there, so paths are accepted."""
    s = EAGLE_SETTINGS["t05"]
    gen = registry_method(tiny_target, "recycling_prompt", s)
    assert gen.drafter.cfg.recycle_prompt and gen.drafter.cfg.context == 2 and gen.lossless
    pvalue, tv, accepted = generation_test(tiny_target, gen, eagle_prefix, s)
    assert pvalue > ALPHA, f"recycling_prompt: p={pvalue:.2e}, TV={tv:.4f}"
    assert accepted > 0.5, "drafts must be accepted for this test to mean anything"


REDUCED_VOCAB = 32  # of the tiny target's 259 tokens: much of both the target's and the draft's mass lies outside


@pytest.fixture(scope="module")
def reduced_draft_folder(tmp_path_factory, layer_draft_folder, tiny_target, tiny_prompts):
    """The layer draft with a token_frequency.json: token ids by how often the target's greedy answers to the tiny
    prompts use them (then every other id), as the draft distiller writes it."""
    import json
    import shutil
    from collections import Counter

    folder = tmp_path_factory.mktemp("reduced_draft") / "draft"
    shutil.copytree(layer_draft_folder, folder)
    counts = Counter()
    for prompt in tiny_prompts:
        out = tiny_target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=32, pad_token_id=0)
        counts.update(out[0, len(prompt):].tolist())
    ranked = sorted(range(tiny_target.vocab_size), key=lambda t: (-counts[t], t))
    (folder / "token_frequency.json").write_text(json.dumps({"token_ids": ranked}))
    return folder


class FullVocabularyQ(DraftModel):
    """Wrong: drafts from the reduced vocabulary but reports each token's probability under the full head, as if
    restricting the head renormalised nothing (``sample`` draws from the restricted, unnormalised weights)."""

    def _distribution(self, logits, vocab):
        full = warp(logits, self.sampling)
        q = torch.zeros_like(full)
        q[self.token_ids] = full[self.token_ids]
        return q


@pytest.mark.usefixtures("one_thread")
def test_sps_with_a_reduced_draft_vocabulary_reproduces_the_target(tiny_target, eagle_prefix, reduced_draft_folder):
    """sps's default (method.vocab_size: the draft's head cut to the most frequent tokens of its
    token_frequency.json): q is zero outside the subset, and the target's own mass there comes from the residual."""
    s = EAGLE_SETTINGS["t1_top4"]  # top-k of the reduced head: the draft's four best tokens within the subset
    gen = registry_method(tiny_target, f"sps draft.path={reduced_draft_folder} vocab_size={REDUCED_VOCAB} k=2", s)
    drafter = gen.drafter
    assert len(drafter.token_ids) == REDUCED_VOCAB and drafter.draft.lm_head.out_features == REDUCED_VOCAB
    pvalue, tv, accepted = generation_test(tiny_target, gen, eagle_prefix, s)
    assert pvalue > ALPHA, f"sps vocab_size={REDUCED_VOCAB}: p={pvalue:.2e}, TV={tv:.4f}"
    assert accepted > 0.15, "drafts must be accepted for this test to mean anything"


@pytest.mark.usefixtures("one_thread")
def test_a_reduced_vocabulary_reported_with_the_full_heads_q_is_caught(tiny_target, eagle_prefix, reduced_draft_folder):
    from harness.drafting.draft_models import load_draft
    from harness.drafting.vocab import frequency_vocab
    from harness.engine.method import EngineGenerator

    s = EAGLE_SETTINGS["t05"]  # no top-k: the full head's top tokens may all lie outside the subset
    cfg = SpSConfig(k=2, vocab_size=REDUCED_VOCAB)
    ids = frequency_vocab(cfg, reduced_draft_folder, tiny_target.vocab_size).ids
    wrong = FullVocabularyQ(load_draft(str(reduced_draft_folder), tiny_target), s, cfg, ids)
    gen = EngineGenerator("sps", tiny_target, wrong, RejectionVerifier(s))
    pvalue, tv, _ = generation_test(tiny_target, gen, eagle_prefix, s, n=600)
    assert pvalue < POWER, f"p={pvalue:.2e}, TV={tv:.4f}"


@pytest.fixture(scope="module")
def moe_target_and_prefix():
    """The tiny Mixtral of test_moe.py and a prompt plus the first 15 tokens of its greedy answer."""
    from .conftest import TINY_TEXTS
    from .test_moe import tiny_moe

    target = tiny_moe("mixtral", "speclab")
    prompt = target.encode_chat([{"role": "user", "content": TINY_TEXTS[0]}])
    ids = target.model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=15, pad_token_id=0)
    return target, ids[0].tolist()


# A random target never continues as its prompt did, so moe_aware's default inner drafter (pld) would have nothing
# accepted; recycling's successors are the target's own top-k from earlier rows, so its paths are accepted.
MOE_AWARE = "moe_aware inner=recycling"


@pytest.mark.usefixtures("one_thread", "simulated_costs")
def test_moe_aware_reproduces_the_target(moe_target_and_prefix):
    """The adaptive wrapper with the expert term on an MoE target picks each step's depth from its estimates and the
    experts a width activates; whatever it picks, the inner drafter's proposal is verified as it is."""
    target, prefix = moe_target_and_prefix
    s = EAGLE_SETTINGS["t1_top4"]
    gen = registry_method(target, MOE_AWARE, s)
    assert gen.name == "moe_aware" and gen.drafter.experts is target.experts is not None
    pvalue, tv, accepted = generation_test(target, gen, prefix, s)
    assert pvalue > ALPHA, f"moe_aware: p={pvalue:.2e}, TV={tv:.4f}"
    assert accepted > 0.3, "drafts must be accepted for this test to mean anything"


@pytest.mark.usefixtures("one_thread", "simulated_costs")
@pytest.mark.parametrize("preset,n", [("moe_aware", 800), ("recycling_prompt", 700)])
def test_presets_resampling_from_p_are_caught(request, preset, n):
    """moe_aware's and recycling_prompt's drafts verified with the replacement drawn from p, not the residual."""
    from harness.engine.method import EngineGenerator

    if preset == "moe_aware":
        target, prefix = request.getfixturevalue("moe_target_and_prefix")
        spec, s = MOE_AWARE, EAGLE_SETTINGS["t1_top4"]
    else:
        target, prefix = request.getfixturevalue("tiny_target"), request.getfixturevalue("eagle_prefix")
        spec, s = preset, EAGLE_SETTINGS["t05"]
    wrong = EngineGenerator(preset, target, registry_method(target, spec, s).drafter, ResampleFromP(s))
    pvalue, tv, _ = generation_test(target, wrong, prefix, s, n=n)
    assert pvalue < POWER, f"{preset}: p={pvalue:.2e}, TV={tv:.4f}"
