"""Draft-model speculative sampling (Leviathan et al., 2023; Chen et al., 2023).

A smaller model sharing the target's tokenizer drafts a chain of k tokens, greedily or by sampling from
its warped distribution q (recorded for the verifier's min(1, p/q) test), and keeps its own KV cache,
cropped back to the committed prefix after every verification. ``adaptive`` uses transformers'
heuristic schedule (k += 2 after a fully accepted draft, else k -= 1).

``vocab_size`` restricts the draft's output head to the target tokens listed, most frequent first, in
the draft folder's ``token_frequency.json`` (``auto``: 8192 of them when the folder has the file, else the
full head): the 49152-way head is a large share of a small draft's step. The rule stays lossless: the draft simply never proposes the other tokens (q is zero there).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from harness.drafting.batch_chains import draft_chains
from harness.drafting.batch_slots import slot_cache_for
from harness.drafting.draft_models import DraftModelConfig, default_draft, load_draft
from harness.drafting.vocab import frequency_vocab
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.method import EngineGenerator, MethodContext
from harness.engine.proposal import Proposal
from harness.engine.sampling import Sampling, sample, warp
from harness.engine.verifiers import VerifyResult
from harness.model import cuda_graphs
from harness.model.kernels import apply_kernel
from harness.model.target import ForwardOutput, TargetModel


@dataclass
class SpSConfig(MethodConfig):
    name: str = "sps"
    family: str = "sps"
    draft: DraftModelConfig = field(default_factory=DraftModelConfig)
    k: int = 2  # draft tokens per step
    adaptive: bool = False
    k_min: int = 1
    k_max: int = 16
    vocab_size: Any = "auto"  # auto: 8192 tokens with a token_frequency.json, else all; null: all; or a number


class DraftModel(Drafter):
    name = "sps"

    def __init__(self, draft: TargetModel, sampling: Sampling, cfg: SpSConfig, token_ids: torch.Tensor | None) -> None:
        if not 1 <= cfg.k_min <= cfg.k <= cfg.k_max:
            raise SpeclabError(f"sps needs 1 <= k_min <= k <= k_max, got {cfg.k_min}, {cfg.k}, {cfg.k_max}")
        self.draft = draft
        self.sampling = sampling
        self.cfg = cfg
        self.k = cfg.k
        self.token_ids = token_ids  # draft head row -> target token id (None: identity)
        self.cache = None
        self._fed_before = 0
        self.batch = None  # batched decoding: the rows' draft caches as one (batch_slots.SlotCache), shared by forks
        self.generation = object()  # which generation this drafter serves (its slot in the batch's cache)
        self.slot: int | None = None

    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        self.cache = self.draft.new_cache(len(state.ids) + state.max_new_tokens + self.cfg.k_max + 8)
        self.k = self.cfg.k
        self.generation, self.slot = object(), None

    def _distribution(self, logits: torch.Tensor, vocab: int) -> torch.Tensor:
        probs = warp(logits, self.sampling)
        if self.token_ids is None:
            return probs
        full = torch.zeros(vocab, dtype=probs.dtype, device=probs.device)
        full[self.token_ids] = probs
        return full

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        k = min(self.k, max_depth)
        if k <= 0:
            return Proposal()
        vocab = state.target.vocab_size
        self._fed_before = len(state.ids)
        logits = self.draft.forward(self.cache, state.ids[self.cache.length :], logits_rows=[-1]).logits[-1]
        tokens: list[int] = []
        qs: list[torch.Tensor] = []
        for i in range(k):
            q = self._distribution(logits, vocab)
            x = int(q.argmax()) if self.sampling.greedy else sample(q, state.generator)
            tokens.append(x)
            qs.append(q)
            if i + 1 < k:
                logits = self.draft.forward(self.cache, [x], logits_rows=[-1]).logits[-1]
        return Proposal.chain(tokens, q=None if self.sampling.greedy else torch.stack(qs))

    def propose_batch(self, rows: list[tuple[Drafter, DecodeState, int]]) -> list[Proposal]:
        """Every row's chain with one draft forward a step over all rows (harness/drafting/batch_chains.py)."""
        capacity = max(len(s.ids) + s.max_new_tokens - s.new_tokens for _, s, _ in rows) + self.cfg.k_max + 16
        batch = slot_cache_for(self, "batch", self.draft.num_layers, len(rows), capacity)
        slots = batch.assign([d for d, _, _ in rows], capacity)
        feeds, lengths = [[0]] * batch.rows, [0] * batch.rows
        owner: dict[int, tuple[DraftModel, DecodeState]] = {}
        for (d, state, max_depth), s in zip(rows, slots):
            d.batch, d.slot, d._fed_before = batch, s, len(state.ids)
            feeds[s], lengths[s] = state.ids[batch.cache.lengths[s]:], max(0, min(d.k, max_depth))
            owner[s] = (d, state)
        qs: dict[int, list[torch.Tensor]] = {s: [] for s in slots}

        def choose(s: int, logits: torch.Tensor) -> int:
            d, state = owner[s]
            q = d._distribution(logits, state.target.vocab_size)
            qs[s].append(q)
            return int(q.argmax()) if self.sampling.greedy else sample(q, state.generator)

        drafted = draft_chains(self.draft, batch.cache, feeds, lengths, choose)
        return [Proposal.chain(drafted[s], q=None if self.sampling.greedy or not drafted[s] else torch.stack(qs[s]))
                for s in slots]

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        if not proposal.tokens:
            return
        # the draft cache holds the committed prefix plus drafted tokens 1..k-1; keep what was accepted
        kept = self._fed_before + min(len(result.accepted), len(proposal.tokens) - 1)
        if self.slot is not None:  # a row of a batch: its slot of the batch's draft cache
            self.batch.cache.lengths[self.slot] = kept
        else:
            self.cache.truncate(kept)
        if self.cfg.adaptive:
            full = len(result.accepted) == len(proposal.tokens)
            self.k = min(self.cfg.k_max, self.k + 2) if full else max(self.cfg.k_min, self.k - 1)


def build(cfg: SpSConfig, ctx: MethodContext) -> EngineGenerator:
    draft = load_draft(cfg.draft.path, ctx.target, cfg.draft.dtype)
    token_ids = None
    path = Path(cfg.draft.path).expanduser() if cfg.draft.path else default_draft(ctx.target.info.name)
    vocab = frequency_vocab(cfg, path, ctx.target.vocab_size)
    if vocab is not None:
        token_ids = vocab.ids.to(ctx.target.device)
        # the head over a subset of the vocabulary: rows of the (tied) output matrix
        draft.model.set_output_embeddings(vocab.rows(draft.lm_head.weight))
    apply_kernel(draft.model, ctx.engine.kernel)
    if ctx.target.static is not None:  # the draft's per-token forwards are launch-bound on a GPU too
        cuda_graphs.enable(draft, "on", list(ctx.engine.graph_widths))
    drafter = DraftModel(draft, ctx.sampling, cfg, token_ids)
    drafter.draft_vocab_size = ctx.target.vocab_size if vocab is None else len(vocab)
    return EngineGenerator.with_rule(cfg.name, ctx.target, drafter, ctx.sampling, cfg.rule)


FAMILIES = [Family("sps", SpSConfig, build)]
