"""The decoding loop every engine method shares: prefill -> {propose, verify, commit, observe} -> PromptResult.

The autoregressive baseline is this same loop with a drafter that proposes nothing, so both sides of a
speedup are timed by the same code.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.core.errors import SpeclabError
from harness.engine import tree as T
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.proposal import Proposal
from harness.engine.verifiers import Verifier
from harness.model.device import synchronize
from harness.model.experts import summarize
from harness.model.target import TargetModel


@dataclass
class PromptResult:
    """One generation. Per-step lists cover the verification steps: every step after the prefill (step 0,
    which emits 1 token) in the engine; peers whose first forward also verifies drafts count it too."""

    prompt_len: int
    token_ids: list[int]
    stop_reason: str  # eos | max_new_tokens
    steps: int  # target forwards, prefill included
    drafted: list[int] = field(default_factory=list)  # draft nodes fed to the target
    accepted: list[int] = field(default_factory=list)  # draft tokens accepted
    reached: list[int] = field(default_factory=list)  # draft positions evaluated (see VerifyResult.reached)
    emitted: list[int] = field(default_factory=list)  # tokens committed (accepted + 1, cut at stop)
    wall_time: float = 0.0
    prefill_time: float = 0.0
    draft_time: float = 0.0
    verify_time: float = 0.0
    extra: dict[str, Any] = field(default_factory=dict)
    # greedy rules: the target's two best logits at the step that chose each emitted token (equivalence margins)
    top2: list[tuple[float, float]] | None = None

    @property
    def new_tokens(self) -> int:
        return len(self.token_ids)


class Decoder:
    def __init__(self, target: TargetModel, verifier: Verifier, stop_ids: set[int] | None = None) -> None:
        self.target = target
        self.verifier = verifier
        self.stop_ids = target.stop_ids if stop_ids is None else set(stop_ids)
        self.device = target.device

    def _verify(self, logits: torch.Tensor, proposal: Proposal, generator: torch.Generator | None):
        """Greedy rules read the argmax on the device (one transfer of a few ids); sampled rules walk the tree
        token by token, so they get one host copy of the logits and q and draw with the run's host generator,
        which also makes a seeded sampled run's draws independent of the device."""
        if logits.device.type != "cpu" and not self.verifier.sampling.greedy:
            logits = logits.cpu()
            if proposal.q is not None:
                proposal = Proposal(proposal.tokens, proposal.parents, proposal.q.cpu(), proposal.meta)
        return self.verifier.verify(logits, proposal, generator)

    def _commit(self, state: DecodeState, tokens: list[int]) -> tuple[int, str | None]:
        """Append tokens up to the first stop token or the token budget; returns (count, stop reason)."""
        room = state.max_new_tokens - state.new_tokens
        for i, tok in enumerate(tokens[:room]):
            state.ids.append(tok)
            if tok in self.stop_ids:
                return i + 1, "eos"
        n = min(len(tokens), room)
        return n, ("max_new_tokens" if state.new_tokens >= state.max_new_tokens else None)

    @torch.inference_mode()
    def generate(
        self,
        prompt_ids: list[int],
        drafter: Drafter,
        max_new_tokens: int,
        generator: torch.Generator | None = None,
    ) -> PromptResult:
        target = self.target
        if max_new_tokens <= 0:
            raise SpeclabError(f"max_new_tokens must be positive, got {max_new_tokens}")
        if not prompt_ids:
            raise SpeclabError("the prompt has no tokens; the prefill needs at least one")
        if len(prompt_ids) + max_new_tokens > target.max_positions:
            raise SpeclabError(
                f"prompt of {len(prompt_ids)} tokens + max_new_tokens={max_new_tokens} exceeds the model's "
                f"context of {target.max_positions}; lower max_new_tokens or shorten the prompt"
            )
        hidden = drafter.hidden_layers
        synchronize(self.device)
        t_start = time.perf_counter()
        cache = target.new_cache(len(prompt_ids) + max_new_tokens + 64)
        state = DecodeState(list(prompt_ids), len(prompt_ids), max_new_tokens, target, self.verifier.sampling, generator,
                            cache=cache)

        out = target.forward(cache, prompt_ids, logits_rows=[-1], hidden_layers=hidden)
        first = self._verify(out.logits, Proposal(), generator)
        _, stop = self._commit(state, [first.token])
        t_prefill = time.perf_counter()
        result = PromptResult(len(prompt_ids), [], "", steps=1, prefill_time=t_prefill - t_start, top2=first.top2)
        drafter.begin(state, out)
        synchronize(self.device)
        result.draft_time += time.perf_counter() - t_prefill
        experts: list[float] = []  # MoE targets: distinct experts per layer in each verification

        while stop is None:
            t0 = time.perf_counter()
            max_depth = state.max_new_tokens - state.new_tokens - 1  # the target adds one token itself
            proposal = drafter.propose(state, max_depth) if max_depth > 0 else Proposal()
            if proposal.tokens and max(T.depths(proposal.parents)) > max_depth:
                proposal = proposal.restrict(T.prune_depth(proposal.parents, max_depth))
            synchronize(self.device)  # the draft's queued kernels count as draft time
            t1 = time.perf_counter()

            start = cache.length
            inputs = [state.ids[-1]] + proposal.tokens
            if target.experts is not None:  # count the verification's experts only, not a drafter's own forwards
                target.experts.reset()
            if proposal.tokens:
                out = target.forward(
                    cache,
                    inputs,
                    positions=T.positions(proposal.parents, start),
                    tree=T.ancestor_mask(proposal.parents),
                    hidden_layers=hidden,
                )
            else:
                out = target.forward(cache, inputs, hidden_layers=hidden)
            if target.experts is not None:
                experts.append(target.experts.mean_distinct())
            vr = self._verify(out.logits, proposal, generator)
            cache.keep(start, [0] + [i + 1 for i in vr.accepted])
            emitted, stop = self._commit(state, [proposal.tokens[i] for i in vr.accepted] + [vr.token])
            if result.top2 is not None:
                result.top2 = None if vr.top2 is None else result.top2 + vr.top2[:emitted]
            synchronize(self.device)  # the cache gather is verification work
            t2 = time.perf_counter()
            drafter.observe(state, proposal, vr, out)
            synchronize(self.device)
            t3 = time.perf_counter()

            result.steps += 1
            source = proposal.meta.get("source")
            if source:  # drafters that switch between sources (SAM: automaton / aux) say which drafted each step
                result.extra[f"steps_{source}"] = result.extra.get(f"steps_{source}", 0) + 1
            result.drafted.append(len(proposal.tokens))
            result.accepted.append(len(vr.accepted))
            result.reached.append(vr.reached)
            result.emitted.append(emitted)
            result.draft_time += (t1 - t0) + (t3 - t2)
            result.verify_time += t2 - t1

        result.wall_time = time.perf_counter() - t_start
        if experts:
            result.extra.update(summarize([1 + d for d in result.drafted], experts))
        result.token_ids = state.ids[state.prompt_len :]
        result.stop_reason = stop
        return result
