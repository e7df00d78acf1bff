"""What a drafter hands the engine: candidate tokens as a tree, with the draft distribution if sampled."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from harness.engine import tree as T


@dataclass
class Proposal:
    """Candidate tokens as a tree rooted at the last committed token.

    ``tokens[i]`` is node i, ``parents[i]`` its parent (-1 = the root); nodes are in topological order.
    ``q`` is ``[n, vocab]``: the (warped) distribution node i was actually drawn from, given its earlier
    siblings; ``None`` means the candidates are deterministic (retrieval, top-k trees), which the
    verifier treats as one-hot.
    """

    tokens: list[int] = field(default_factory=list)
    parents: list[int] = field(default_factory=list)
    q: torch.Tensor | None = None
    meta: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.parents):
            raise ValueError(f"{len(self.tokens)} draft tokens but {len(self.parents)} parents")
        if self.q is not None and self.q.shape[0] != len(self.tokens):
            raise ValueError(f"q has {self.q.shape[0]} rows for {len(self.tokens)} draft tokens")

    @classmethod
    def chain(cls, tokens: list[int], q: torch.Tensor | None = None, **meta: Any) -> "Proposal":
        return cls(list(tokens), T.chain_parents(len(tokens)), q, dict(meta))

    def __len__(self) -> int:
        return len(self.tokens)

    def restrict(self, keep: list[int]) -> "Proposal":
        """The sub-tree made of nodes ``keep`` (closed under parents, in order).

        ``meta`` is shared as is: drafters whose meta holds node indices cut their trees to ``max_depth``
        themselves, so the engine never renumbers them.
        """
        if len(keep) == len(self.tokens):
            return self
        q = None if self.q is None else self.q[keep]
        return Proposal([self.tokens[i] for i in keep], T.subset(self.parents, keep), q, self.meta)
