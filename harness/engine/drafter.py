"""The drafter interface every engine method implements, and the state it sees."""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

import torch

from harness.engine.proposal import Proposal
from harness.engine.sampling import Sampling
from harness.engine.verifiers import VerifyResult
from harness.model.target import ForwardOutput, TargetModel


@dataclass
class DecodeState:
    """What a drafter may read during one generation.

    ``ids`` holds prompt + committed tokens; its last token is the root of the next draft tree and is
    not yet in the target's KV cache.
    """

    ids: list[int]
    prompt_len: int
    max_new_tokens: int
    target: TargetModel
    sampling: Sampling
    generator: torch.Generator | None
    scratch: dict[str, Any] = field(default_factory=dict)
    cache: Any = None  # the target's KV cache (self-speculation drafts with the target's own first layers)

    @property
    def new_tokens(self) -> int:
        return len(self.ids) - self.prompt_len


class Drafter:
    """Proposes candidate tokens; learns from what the target accepted.

    ``hidden_layers`` names the target hidden states (layer indices or ``"final"``) the drafter reads
    from each verification forward (EAGLE, Medusa, Hydra); the engine returns them in ``observe``.
    """

    name = "drafter"
    hidden_layers: tuple[int | str, ...] = ()
    draft_dtype: str | None = None  # a learned head's weight dtype, as method.dtype resolved (result rows)
    draft_vocab_size: int | None = None  # tokens a draft can propose, as method.vocab_size resolved (result rows)
    # True: drafting costs the same at any depth, and every proposal carries ``meta["grade"]``, a small integer
    # that orders how far it is likely to be accepted (prompt lookup: the matched suffix's length), so a wrapper
    # that sizes drafts (``adaptive``) drafts in full and cuts the proposal by the acceptance seen at its grade
    grades_proposals: bool = False
    # False: it drafts on the target's own KV cache (layerskip), which a batch of generations does not have
    batchable: bool = True

    def fork(self) -> "Drafter":
        """A drafter for another generation decoded beside this one (batched decoding): it shares this one's weights
        and run-level statistics; its per-generation state is its own (a drafter sets it in :meth:`begin`). A
        drafter holding another drafter, or a per-generation object made in ``__init__``, forks those too."""
        return copy.copy(self)

    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        """Called once per generation after the prefill forward (which emitted ``state.ids[-1]``)."""

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        """Candidate tree of depth at most ``max_depth`` (the engine also enforces it)."""
        raise NotImplementedError

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        """Called after each verification, once ``state.ids`` holds the newly committed tokens."""

    def propose_batch(self, rows: list[tuple["Drafter", DecodeState, int]]) -> list[Proposal]:
        """The proposals of one batched step: ``rows`` holds each row's fork of this drafter, its state and its deepest
        allowed draft. By default each row proposes alone; a drafter that sizes drafts by what they cost (adaptive)
        plans the batch as a whole, since a batch step's price depends on every row's width."""
        return [d.propose(s, m) if m > 0 else Proposal() for d, s, m in rows]

    def observe_batch(self, rows: int, tokens: int, seconds: float) -> None:
        """After a batched step: ``tokens`` verified over ``rows`` rows took ``seconds`` (forward and verification)."""


class NoDraft(Drafter):
    """Proposes nothing: the engine's autoregressive baseline."""

    name = "ar"

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        return Proposal()
