"""The decoding loop for a batch of generations: every step, each row drafts its own proposal, one target forward
verifies them all, and each row keeps its own accepted path.

Rows are ragged. Each has its own drafter (:meth:`Drafter.fork` of the method's), its own draft length or tree,
its own committed length in the batch KV cache (rejected tokens' slots dropped per row), its own stop token and
budget, and its own random generator, so a row samples exactly as it would alone. What rows share is the forward:
the linear layers see all rows' tokens at once (harness/model/batch_forward.py).

Two ways to feed the batch (``refill``):
* continuous batching (``refill=True``): a row that finishes is replaced at once by the next prompt in the queue,
  whose prefill runs as its own forward between two decoding steps (no chunked prefill);
* draining (``refill=False``): ``batch_size`` prompts start together and the next ones wait until all have finished.

Per row, the :class:`PromptResult` counts that row's own steps and tokens; its ``wall_time`` runs from its admission
to its last token (its draft time is its own drafter's, its verify time the shared forwards it took part in). The
batch's own figures (wall time, each request's latency from the batch's start) are in :class:`BatchResult`.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.core.errors import SpeclabError
from harness.engine import tree as T
from harness.engine.decoder import PromptResult
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.proposal import Proposal
from harness.engine.verifiers import Verifier
from harness.model.batch_forward import forward_rows, new_batch_cache, unsupported
from harness.model.device import synchronize
from harness.model.target import TargetModel

SPARE_SLOTS = 80  # the widest draft a row may add past its budget's slots (a 64-node tree and its root, rounded up)


@dataclass
class BatchResult:
    results: list[PromptResult]  # per prompt, in the order given
    wall_time: float  # the whole batch, first admission to last token
    latency: list[float] = field(default_factory=list)  # per prompt: seconds from the batch's start to its last token

    @property
    def tokens_per_s(self) -> float:
        return sum(r.new_tokens for r in self.results) / self.wall_time if self.wall_time > 0 else 0.0


@dataclass
class _Row:
    index: int  # the prompt's position in the batch's input
    state: DecodeState
    drafter: Drafter
    result: PromptResult
    admitted: float
    stop: str | None = None


class BatchDecoder:
    def __init__(self, target: TargetModel, verifier: Verifier, batch_size: int, refill: bool = True,
                 stop_ids: set[int] | None = None) -> None:
        problem = unsupported(target)
        if problem is not None:
            raise SpeclabError(f"batch_size={batch_size}: {target.info.name} cannot decode in a batch ({problem}); "
                               "set batch_size=1")
        if batch_size < 1:
            raise SpeclabError(f"batch_size must be >= 1, got {batch_size}")
        self.target, self.verifier, self.batch_size, self.refill = target, verifier, batch_size, refill
        self.stop_ids = target.stop_ids if stop_ids is None else set(stop_ids)

    def _commit(self, row: _Row, tokens: list[int]) -> int:
        """Append tokens up to the row's first stop token or budget; returns how many were committed."""
        state = row.state
        room = state.max_new_tokens - state.new_tokens
        for i, tok in enumerate(tokens[:room]):
            state.ids.append(tok)
            if tok in self.stop_ids:
                row.stop = "eos"
                return i + 1
        if state.new_tokens >= state.max_new_tokens:
            row.stop = "max_new_tokens"
        return min(len(tokens), room)

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], drafter: Drafter, max_new_tokens: int,
                 generators: list[torch.Generator | None] | None = None) -> BatchResult:
        """Decode every prompt, at most ``batch_size`` at a time, with a fork of ``drafter`` per row."""
        if not drafter.batchable:
            raise SpeclabError(f"{drafter.name} drafts on the target's own KV cache and cannot decode in a batch; "
                               "set batch_size=1")
        if max_new_tokens <= 0:
            raise SpeclabError(f"max_new_tokens must be positive, got {max_new_tokens}")
        target, device = self.target, self.target.device
        generators = generators or [None] * len(prompts)
        longest = max(len(p) for p in prompts)
        if longest + max_new_tokens > target.max_positions:
            raise SpeclabError(f"a prompt of {longest} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
                               f"context of {target.max_positions}; lower max_new_tokens or shorten the prompts")
        rows_wanted = min(self.batch_size, len(prompts))
        cache = new_batch_cache(target, rows_wanted, longest + max_new_tokens + SPARE_SLOTS)
        hidden = drafter.hidden_layers
        queue = deque(range(len(prompts)))
        rows: list[_Row] = []
        done: dict[int, PromptResult] = {}
        latency: dict[int, float] = {}
        synchronize(device)
        t_batch = time.perf_counter()

        def finish(i: int) -> None:
            row = rows[i]
            synchronize(device)
            now = time.perf_counter()
            row.result.wall_time = now - row.admitted
            row.result.token_ids = row.state.ids[row.state.prompt_len:]
            row.result.stop_reason = row.stop
            done[row.index], latency[row.index] = row.result, now - t_batch
            last = len(rows) - 1
            if i != last:  # the last active row takes the finished one's slot: active rows stay a prefix
                cache.move_row(last, i)
                rows[i] = rows[last]
            rows.pop()

        def admit() -> None:
            while queue and len(rows) < rows_wanted and (self.refill or not rows):
                index = queue.popleft()
                r, prompt = len(rows), prompts[index]
                cache.reset_row(r)
                t0 = time.perf_counter()
                out = forward_rows(target, cache, range(r, r + 1), [prompt], [None], hidden, last_logits=True)[0]
                cache.keep(r, range(len(prompt)))
                state = DecodeState(list(prompt), len(prompt), max_new_tokens, target, self.verifier.sampling,
                                    generators[index])
                first = self.verifier.verify(out.logits, Proposal(), generators[index])
                result = PromptResult(len(prompt), [], "", steps=1, top2=first.top2)
                row = _Row(index, state, drafter.fork(), result, t0)
                rows.append(row)
                self._commit(row, [first.token])
                synchronize(device)
                t1 = time.perf_counter()
                result.prefill_time = t1 - t0
                row.drafter.begin(state, out)
                result.draft_time += time.perf_counter() - t1
                if row.stop is not None:
                    finish(len(rows) - 1)

        admit()
        while rows:
            t0 = time.perf_counter()
            depths = [row.state.max_new_tokens - row.state.new_tokens - 1 for row in rows]  # the target adds one
            proposals = drafter.propose_batch([(row.drafter, row.state, d) for row, d in zip(rows, depths)])
            for i, (p, d) in enumerate(zip(proposals, depths)):
                if p.tokens and max(T.depths(p.parents)) > d:
                    proposals[i] = p.restrict(T.prune_depth(p.parents, d))
            synchronize(device)
            t1 = time.perf_counter()
            drafting = [(t1 - t0) / len(rows)] * len(rows)  # the rows drafted in turn: each is charged its share
            inputs = [[row.state.ids[-1]] + p.tokens for row, p in zip(rows, proposals)]
            trees = [None if T.is_chain(p.parents) else ([0] + T.depths(p.parents), T.ancestor_mask(p.parents))
                     for p in proposals]
            outs = forward_rows(target, cache, range(len(rows)), inputs, trees, hidden)
            verified = []
            for i, (row, p, out) in enumerate(zip(rows, proposals, outs)):
                vr = self.verifier.verify(out.logits, p, row.state.generator)
                cache.keep(i, [0] + [a + 1 for a in vr.accepted])
                emitted = self._commit(row, [p.tokens[a] for a in vr.accepted] + [vr.token])
                if row.result.top2 is not None:
                    row.result.top2 = None if vr.top2 is None else row.result.top2 + vr.top2[:emitted]
                verified.append((vr, emitted))
            synchronize(device)
            t2 = time.perf_counter()
            drafter.observe_batch(len(rows), sum(len(x) for x in inputs), t2 - t1)
            for row, p, out, (vr, emitted), draft_s in zip(rows, proposals, outs, verified, drafting):
                t3 = time.perf_counter()
                row.drafter.observe(row.state, p, vr, out)
                r = row.result
                r.steps += 1
                r.drafted.append(len(p.tokens))
                r.accepted.append(len(vr.accepted))
                r.reached.append(vr.reached)
                r.emitted.append(emitted)
                r.verify_time += t2 - t1
                r.draft_time += draft_s + time.perf_counter() - t3
            for i in reversed(range(len(rows))):
                if rows[i].stop is not None:
                    finish(i)
            admit()
        synchronize(device)
        wall = time.perf_counter() - t_batch
        return BatchResult([done[i] for i in range(len(prompts))], wall, [latency[i] for i in range(len(prompts))])


def batch_extra(batch: BatchResult, batch_size: int) -> dict[str, Any]:
    """The columns every row decoded in ``batch`` gets: its batch's size and throughput."""
    return {"batch_size": batch_size, "batch_tokens_per_s": batch.tokens_per_s, "batch_wall_time_s": batch.wall_time}
