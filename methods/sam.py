"""SAM-Decoding (Hu et al., ACL 2025): draft by suffix automaton, hand over to another drafter when the match is short.

A dynamic suffix automaton over prompt + output gives, after every committed token (amortised constant time),
the longest suffix of the text that occurred earlier and where it first occurred; the tokens that followed
are the draft. With ``static=true`` a second automaton over the datastore's corpus is matched too, and wins
when its match is longer by more than ``len_bias``. When neither match reaches ``threshold`` tokens the
auxiliary drafter ``aux`` (any engine method preset: pld, recycling, eagle2, ...) proposes instead; it
sees every verification, whoever drafted, so its state stays current.

Chain length: without an auxiliary drafter ``min(n_predicts, 1 + alpha x match)``, with one ``n_predicts``
(the paper's rules), then, with ``max_tokens=auto``, cut to the length with the most expected tokens per
unit of measured verification cost, the acceptance of the automaton's drafts estimated as it runs, per
match-length bucket (a 12-token match is right more often than a 2-token one).
Drafts are deterministic chains, so greedy verification matches ``ar`` and sampling is lossless.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from harness.drafting.datastore import load_for, resolve_datastore
from harness.drafting.suffix_automaton import Matcher, SuffixAutomaton
from harness.drafting.tree_shapes import cost_optimal_size
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.method import EngineGenerator, MethodContext, inner_drafter
from harness.engine.proposal import Proposal
from harness.engine.verifiers import VerifyResult
from harness.model.target import ForwardOutput

PRIOR_ACCEPT, PRIOR_WEIGHT = 0.6, 10.0  # a draft token's acceptance before any is verified, worth 10 observations
MATCH_BUCKETS = 6  # acceptance is tracked per match length 1, 2-3, 4-7, 8-15, 16-31, 32+
_STATIC: dict[tuple[str, int], SuffixAutomaton] = {}  # built once per process and datastore


@dataclass
class SAMConfig(MethodConfig):
    name: str = "sam"
    family: str = "sam"
    n_predicts: int = 40  # chain length (with an auxiliary drafter; the cap without one)
    alpha: float = 4.0  # without one: 1 + alpha x match length
    threshold: int = 5  # shorter matches hand over to aux
    len_bias: int = 5  # the static match must beat the dynamic one by more than this
    static: bool = False  # also match against the datastore's corpus
    datastore: Optional[str] = None  # for static; null: the model's default
    aux: str = "none"  # none, or a method preset (pld, recycling, eagle2, ...) with optional overrides
    max_tokens: Any = "auto"  # verification width cap, root included: an int, or auto (by the verify-cost curve)


class SuffixAutomatonDrafter(Drafter):
    name = "sam"

    def __init__(self, cfg: SAMConfig, aux: Drafter | None, static: SuffixAutomaton | None,
                 cost: Callable[[int], float] | None) -> None:
        if cfg.n_predicts < 1 or cfg.threshold < 1 or cfg.alpha <= 0:
            raise SpeclabError(f"sam needs n_predicts >= 1, threshold >= 1 and alpha > 0; got {cfg.n_predicts}, "
                               f"{cfg.threshold}, {cfg.alpha}")
        if cfg.max_tokens != "auto" and (isinstance(cfg.max_tokens, bool) or not isinstance(cfg.max_tokens, int) or cfg.max_tokens < 2):
            raise SpeclabError(f"method.max_tokens must be auto or a verification width >= 2 (root included), got {cfg.max_tokens!r}")
        self.cfg, self.aux, self.cost = cfg, aux, cost
        self.hidden_layers = aux.hidden_layers if aux is not None else ()
        self.static = Matcher(static) if static is not None else None
        # acceptance per match-length bucket, kept across the prompts of a run: it calibrates the cost cut, and a
        # prompt's first steps would otherwise start from the prior every time
        self.reached = [0.0] * MATCH_BUCKETS
        self.accepted = [0.0] * MATCH_BUCKETS

    def fork(self) -> "SuffixAutomatonDrafter":
        clone = copy.copy(self)
        clone.static = copy.copy(self.static)  # a match state of its own over the shared static automaton
        clone.aux = self.aux.fork() if self.aux is not None else None
        return clone

    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        self.sam = SuffixAutomaton()
        self.dynamic = Matcher(self.sam)
        if self.static is not None:
            self.static.reset()
        self.fed = 0
        self._feed(state.ids)
        if self.aux is not None:
            self.aux.begin(state, prefill)

    def _feed(self, ids: list[int]) -> None:
        for t in ids[self.fed :]:
            self.dynamic.feed(t)  # against the earlier text, then the text grows by t
            self.sam.extend(t)
            if self.static is not None:
                self.static.feed(t)
        self.fed = len(ids)

    def _length(self, match: int, max_depth: int) -> int:
        c = self.cfg
        n = c.n_predicts if self.aux is not None else min(c.n_predicts, 1 + int(c.alpha * match))
        n = min(n, max_depth)
        if c.max_tokens == "auto":
            b = bucket(match)
            a = (self.accepted[b] + PRIOR_ACCEPT * PRIOR_WEIGHT) / (self.reached[b] + PRIOR_WEIGHT)
            # at least one token: a match length whose drafts stopped would never be measured again
            return max(1 if n else 0, cost_optimal_size([a ** d for d in range(1, n + 1)], self.cost, n))
        return min(n, int(c.max_tokens) - 1)

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        c = self.cfg
        dyn = self.dynamic.length
        stat = self.static.length - c.len_bias if self.static is not None else -1
        if max(dyn, stat) >= c.threshold or self.aux is None:
            source, matcher, match = ("static", self.static, self.static.length) if stat > dyn else ("dynamic", self.dynamic, dyn)
            draft = matcher.draft(self._length(match, max_depth)) if match else []
            if draft:
                return Proposal.chain(draft, source=source, root=state.ids[-1], match=match)
            if self.aux is None:
                return Proposal(meta={"source": "none"})
        proposal = self.aux.propose(state, max_depth)
        proposal.meta = {**proposal.meta, "source": "aux"}
        return proposal

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        if proposal.meta.get("source") in ("dynamic", "static"):
            b = bucket(proposal.meta["match"])
            self.reached[b] += result.reached
            self.accepted[b] += len(result.accepted)
        self._feed(state.ids)
        if self.aux is not None:
            self.aux.observe(state, proposal, result, out)


def bucket(match: int) -> int:
    """Longer matches are more often right: their drafts' acceptance is estimated apart."""
    return min(max(match, 1).bit_length() - 1, MATCH_BUCKETS - 1)


def static_automaton(target: Any, path: str | None) -> SuffixAutomaton:
    from tqdm import tqdm

    store = load_for(target, path)
    key = (str(resolve_datastore(path, target.info.name)), len(store))
    if key not in _STATIC:
        sam = SuffixAutomaton(boundary=store.separator)
        for t in tqdm(store.tokens.tolist(), desc="static suffix automaton", unit="tok", mininterval=1.0, leave=False):
            sam.extend(int(t))
        _STATIC[key] = sam
    return _STATIC[key]


def build(cfg: SAMConfig, ctx: MethodContext) -> EngineGenerator:
    aux = inner_drafter(cfg.aux, ctx, "sam") if cfg.aux and cfg.aux != "none" else None
    static = static_automaton(ctx.target, cfg.datastore) if cfg.static else None
    cost = ctx.verify_cost() if cfg.max_tokens == "auto" else None
    return EngineGenerator.with_rule(cfg.name, ctx.target, SuffixAutomatonDrafter(cfg, aux, static, cost), ctx.sampling, cfg.rule)


FAMILIES = [Family("sam", SAMConfig, build)]
