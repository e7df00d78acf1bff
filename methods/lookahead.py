"""Lookahead decoding (Fu et al., ICML 2024): Jacobi guesses harvested into an n-gram pool, verified in the same forward.

State per generation: a window of ``ngram - 1`` levels of ``window`` guessed tokens (level 0 seeded from
random prompt tokens) and a pool mapping a token to at most ``guesses`` (ngram - 1)-token continuations
(least recently used dropped first). One target forward per step carries both branches:

* lookahead branch: level 0 is a chain after the root (column j, counted from 1, at depth j); level l of
  column j hangs under level l - 1 of the same column (depth j + l). This is the reference's attention pattern (each token sees
  level 0 up to its column and its own column's earlier levels) written as a tree, so the engine's tree mask
  and positions compute it exactly. The target's argmax at each column's deepest level is that column's
  next level (one Jacobi step); once ``ngram - 1`` levels exist, every column yields an n-gram
  (its levels + the new token) keyed by its first token, and the oldest level is dropped.
* verification branch: the pool's continuations of the root token. With ``pool_from_prompt`` (the reference's
  POOL_FROM_PROMPT) the pool also receives every n-gram of the prompt at the start and of the text as it is
  committed, so the branch copies spans of the prompt and the answer, as prompt lookup does.

Both branches are merged into one prefix tree of deterministic nodes, so the lookahead tokens are verified
too (a free chance), greedy output matches ``ar``, and sampled verification (one-hot q, every node once) is
lossless. Per step the target sees about 1 + window x (ngram - 1) + guesses x (ngram - 1) tokens: the
reference's (5, 7, 7) is 57, two to three one-token forwards on this CPU, so the defaults here are sized to
the flat part of the measured verify-cost curve (BENCHMARKS.md).
"""

from __future__ import annotations

import random
from collections import OrderedDict
from dataclasses import dataclass

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from harness.drafting.tree_shapes import prefix_tree
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.method import EngineGenerator, MethodContext
from harness.engine.proposal import Proposal
from harness.engine.verifiers import VerifyResult
from harness.model.target import ForwardOutput


@dataclass
class LookaheadConfig(MethodConfig):
    name: str = "lookahead"
    family: str = "lookahead"
    ngram: int = 3  # N: n-gram size (window levels = N - 1)
    window: int = 3  # W: future positions guessed in parallel
    guesses: int = 2  # G: pool continuations kept per token, all verified when the root matches
    seed: int = 10  # initial window: random prompt tokens
    pool_from_prompt: bool = False  # also pool the n-grams of the prompt and of the committed text (the reference's POOL_FROM_PROMPT)


class Lookahead(Drafter):
    name = "lookahead"

    def __init__(self, cfg: LookaheadConfig) -> None:
        if cfg.ngram < 2 or cfg.window < 1 or cfg.guesses < 0:
            raise SpeclabError(f"lookahead needs ngram >= 2, window >= 1 and guesses >= 0; got ngram={cfg.ngram}, "
                               f"window={cfg.window}, guesses={cfg.guesses}")
        self.cfg = cfg

    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        rng = random.Random(self.cfg.seed)
        prompt = state.ids[: state.prompt_len]
        self.levels: list[list[int]] = [[rng.choice(prompt) for _ in range(self.cfg.window)]]
        self.pool: dict[int, OrderedDict[tuple[int, ...], None]] = {}
        self._pooled_upto = self.cfg.ngram - 1  # text n-grams ending before this position are pooled
        self._pool_text(state.ids)

    def _pool_text(self, ids: list[int]) -> None:
        """Pool every n-gram of the prompt and committed text not pooled yet, oldest first (so the newest is kept)."""
        if not self.cfg.pool_from_prompt:
            return
        n = self.cfg.ngram
        for end in range(self._pooled_upto, len(ids)):
            self._remember(ids[end - n + 1], tuple(ids[end - n + 2: end + 1]))
        self._pooled_upto = len(ids)

    def _column_path(self, j: int, level: int) -> tuple[int, ...]:
        """Tokens from the root down to column j (0-based) at ``level``."""
        trunk = self.levels[0][: j + 1]
        return tuple(trunk + [self.levels[lv][j] for lv in range(1, level + 1)])

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        deepest = len(self.levels) - 1
        seqs = [self._column_path(j, deepest)[:max_depth] for j in range(self.cfg.window)]
        guesses = list(self.pool.get(state.ids[-1], {}))
        seqs += [g[:max_depth] for g in reversed(guesses)]  # most recently confirmed first
        tree = prefix_tree([s for s in seqs if s])
        return Proposal(tree.tokens, tree.parents, meta={"paths": tree.index})

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        self._pool_text(state.ids)
        if "paths" not in proposal.meta:
            return  # another drafter proposed this step (SAM's auxiliary use): no Jacobi step was computed
        c = self.cfg
        index = proposal.meta["paths"]
        deepest = len(self.levels) - 1
        new: list[int | None] = []
        for j in range(c.window):
            node = index.get(self._column_path(j, deepest))
            new.append(int(out.logits[node + 1].argmax()) if node is not None else None)  # None: cut by max_depth
        if len(self.levels) == c.ngram - 1:
            for j in range(c.window):
                if new[j] is not None:
                    column = [self.levels[lv][j] for lv in range(len(self.levels))] + [new[j]]
                    self._remember(column[0], tuple(column[1:]))
        level = [self.levels[-1][j] if t is None else t for j, t in enumerate(new)]  # a cut column keeps its guess
        self.levels = (self.levels[1:] if len(self.levels) == c.ngram - 1 else self.levels) + [level]

    def _remember(self, key: int, continuation: tuple[int, ...]) -> None:
        if self.cfg.guesses == 0:
            return
        slot = self.pool.setdefault(key, OrderedDict())
        if continuation in slot:
            slot.move_to_end(continuation)
            return
        if len(slot) >= self.cfg.guesses:
            slot.popitem(last=False)
        slot[continuation] = None


def build(cfg: LookaheadConfig, ctx: MethodContext) -> EngineGenerator:
    return EngineGenerator.with_rule(cfg.name, ctx.target, Lookahead(cfg), ctx.sampling, cfg.rule)


FAMILIES = [Family("lookahead", LookaheadConfig, build)]
