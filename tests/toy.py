"""Toy logit-table language models with exactly known distributions, for statistical losslessness tests.

A :class:`TableLM` has a small vocabulary and peaked next-token logits indexed by the last two tokens
of a node's own context (the cached prefix plus its ancestors in the draft tree), so it honours tree
masks exactly like a transformer would. It implements the parts of ``TargetModel`` that the decoder and
drafters use, so the real engine loop, verifiers and drafters run on it unchanged, at thousands of
generations per second.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import stats

from harness.engine.sampling import Sampling, warp
from harness.model.target import ForwardOutput


class ToyCache:
    def __init__(self) -> None:
        self.contexts: list[tuple[int, int]] = []  # (previous, current) token per slot

    @property
    def length(self) -> int:
        return len(self.contexts)

    def truncate(self, n: int) -> None:
        del self.contexts[n:]

    def keep(self, start: int, offsets) -> None:
        kept = [self.contexts[start + o] for o in offsets]
        self.contexts[start:] = kept


class TableLM:
    """Next-token logits = table[previous token, current token]."""

    def __init__(self, vocab: int, seed: int, sharpness: float = 2.5, stop_ids: set[int] | None = None) -> None:
        g = torch.Generator().manual_seed(seed)
        self.table = torch.randn(vocab, vocab, vocab, generator=g) * sharpness
        self.vocab_size = vocab
        self.max_positions = 1 << 20
        self.stop_ids = set(stop_ids or ())
        self.experts = None  # a dense model: no expert accounting
        self.device = torch.device("cpu")
        # what a method's registry build reads of a target: no text (no digits-testbed vocabulary), fp32 logits
        self.tokenizer = None
        self.dtype = self.table.dtype

    def new_cache(self, capacity: int) -> ToyCache:
        return ToyCache()

    def forward(self, cache, tokens, positions=None, tree=None, logits_rows=None, hidden_layers=()):
        tokens = [int(t) for t in tokens]
        prev_token = cache.contexts[-1][1] if cache.contexts else 0
        rows = []
        for i, tok in enumerate(tokens):
            if tree is None:  # causal: the previous token is the one before
                prev = tokens[i - 1] if i else prev_token
            else:  # the nearest ancestor in the draft tree
                ancestors = [j for j in range(i) if tree[i, j]]
                prev = tokens[ancestors[-1]] if ancestors else prev_token
            rows.append((prev, tok))
        cache.contexts.extend(rows)
        logits = torch.stack([self.table[p, t] for p, t in rows])
        if logits_rows is not None:
            logits = logits[logits_rows]
        return ForwardOutput(logits, {})

    def law(self, prompt: list[int], length: int, sampling: Sampling) -> dict[tuple[int, ...], float]:
        """Exact probability of every output prefix of ``length`` tokens (shorter if it ends in a stop token)."""
        out: dict[tuple[int, ...], float] = {}

        def walk(prev: int, cur: int, seq: tuple[int, ...], prob: float) -> None:
            if len(seq) == length or (seq and seq[-1] in self.stop_ids):
                out[seq] = out.get(seq, 0.0) + prob
                return
            p = warp(self.table[prev, cur], sampling)
            for x in range(self.vocab_size):
                if p[x] > 0:
                    walk(cur, x, seq + (x,), prob * float(p[x]))

        walk(prompt[-2] if len(prompt) > 1 else 0, prompt[-1], (), 1.0)
        return out


def chi_square(counts: dict[tuple[int, ...], int], law: dict[tuple[int, ...], float]) -> tuple[float, float]:
    """(p-value, total variation) of observed outcome counts against the exact law; sparse cells pooled."""
    n = sum(counts.values())
    unexpected = sum(c for k, c in counts.items() if law.get(k, 0.0) == 0.0)
    if unexpected:
        return 0.0, unexpected / n
    cells = sorted(law, key=law.get, reverse=True)
    obs, exp = [], []
    pool_o = pool_e = 0.0
    for c in cells:
        e = law[c] * n
        if e >= 5:
            obs.append(counts.get(c, 0))
            exp.append(e)
        else:
            pool_o += counts.get(c, 0)
            pool_e += e
    if pool_e > 0:
        obs.append(pool_o)
        exp.append(pool_e)
    exp = np.asarray(exp) * (sum(obs) / sum(exp))
    pvalue = float(stats.chisquare(obs, exp).pvalue) if len(obs) > 1 else 1.0
    tv = 0.5 * sum(abs(counts.get(c, 0) / n - law[c]) for c in cells)
    return pvalue, tv


def sample_outputs(decoder, drafter, prompt: list[int], length: int, n: int, seed: int) -> dict[tuple[int, ...], int]:
    gen = torch.Generator().manual_seed(seed)
    counts: dict[tuple[int, ...], int] = {}
    for _ in range(n):
        ids = tuple(decoder.generate(prompt, drafter, length, gen).token_ids)
        counts[ids] = counts.get(ids, 0) + 1
    return counts

