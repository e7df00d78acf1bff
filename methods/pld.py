"""Prompt lookup decoding (Saxena, 2023): copy the continuation of an earlier occurrence of the current suffix.

For n = max_ngram down to min_ngram, the last n tokens of prompt + generated text are searched for in
the earlier text; the first n with a match wins, and the ``num_draft`` tokens after the match become a
chain draft. With ``match=first`` (the leftmost occurrence that has a continuation) and stop tokens cut
from the draft this is exactly transformers' ``prompt_lookup_num_tokens`` candidate rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.method import EngineGenerator, MethodContext
from harness.engine.proposal import Proposal


@dataclass
class PLDConfig(MethodConfig):
    name: str = "pld"
    family: str = "pld"
    max_ngram: int = 3
    min_ngram: int = 1
    num_draft: int = 10
    match: str = "first"  # first | last occurrence of the suffix
    stop_at_eos: bool = True  # cut the draft before a stop token, as transformers does


def match_suffix(seq: np.ndarray, max_ngram: int, min_ngram: int, match: str) -> tuple[int, int]:
    """(n, start): the longest suffix n-gram of ``seq`` found earlier in it, and where its continuation starts;
    (0, len(seq)) when none is."""
    length = len(seq)
    for n in range(min(max_ngram, length - 1), min_ngram - 1, -1):
        # windows start at 0..length-1-n, so every match has at least one token after it
        windows = sliding_window_view(seq[: length - 1], n)
        hits = np.flatnonzero((windows == seq[length - n :]).all(axis=1))
        if hits.size:
            return n, int(hits[0] if match == "first" else hits[-1]) + n
    return 0, length


def lookup(seq: np.ndarray, max_ngram: int, min_ngram: int, num_draft: int, match: str) -> np.ndarray:
    """The continuation (at most ``num_draft`` tokens) of the longest suffix n-gram found earlier in ``seq``."""
    _, start = match_suffix(seq, max_ngram, min_ngram, match)
    return seq[start : start + num_draft]


class PromptLookup(Drafter):
    name = "pld"
    # a draft's grade is the length of the matched suffix: on the MoE testbed's greedy Spec-Bench answers a
    # 1-token match's first token is accepted 16% of the time, a 3-token match's 84% (BENCHMARKS.md section 9)
    grades_proposals = True

    def __init__(self, cfg: PLDConfig, stop_ids: set[int]) -> None:
        if not 1 <= cfg.min_ngram <= cfg.max_ngram:
            raise SpeclabError(
                f"pld needs 1 <= min_ngram <= max_ngram, got {cfg.min_ngram}..{cfg.max_ngram}; fix method.min_ngram/max_ngram"
            )
        if cfg.num_draft < 1:
            raise SpeclabError(f"method.num_draft must be >= 1, got {cfg.num_draft}")
        if cfg.match not in ("first", "last"):
            raise SpeclabError(f"method.match must be 'first' or 'last', got {cfg.match!r}")
        self.cfg = cfg
        self.stop_ids = np.array(sorted(stop_ids) if cfg.stop_at_eos else [], dtype=np.int64)

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        c = self.cfg
        seq = np.asarray(state.ids, dtype=np.int64)
        n, start = match_suffix(seq, c.max_ngram, c.min_ngram, c.match)
        draft = seq[start : start + min(c.num_draft, max_depth)]
        if self.stop_ids.size and draft.size:
            stops = np.flatnonzero(np.isin(draft, self.stop_ids))
            if stops.size:
                draft = draft[: stops[0]]
        return Proposal.chain(draft.tolist(), grade=n)


def build(cfg: PLDConfig, ctx: MethodContext) -> EngineGenerator:
    return EngineGenerator.with_rule(cfg.name, ctx.target, PromptLookup(cfg, ctx.target.stop_ids), ctx.sampling, cfg.rule)


FAMILIES = [Family("pld", PLDConfig, build)]
