"""The tree a head grows in one step: each node's token, parent, depth and score, the head's output at every fed
node, and the head-cache slot it was fed at (its descendants attend to it there)."""

from __future__ import annotations

import torch


class DraftTree:
    """Nodes grown in one step: token, parent, depth, score, the head output of fed nodes and their cache slot."""

    def __init__(self) -> None:
        self.tokens: list[int] = []
        self.parents: list[int] = []
        self.depth: list[int] = []
        self.score: list[float] = []
        self.q: list[torch.Tensor | None] = []
        self.out: dict[int, torch.Tensor] = {}  # node -> head output [H] (-1: the root)
        self.slot: dict[int, int] = {}  # node -> head cache slot

    def add(self, token: int, parent: int, score: float, q: torch.Tensor | None = None) -> int:
        self.tokens.append(token)
        self.parents.append(parent)
        self.depth.append(1 if parent < 0 else self.depth[parent] + 1)
        self.score.append(score)
        self.q.append(q)
        return len(self.tokens) - 1

    def ancestors(self, node: int) -> list[int]:
        out = []
        while node >= 0:
            out.append(node)
            node = self.parents[node]
        return out
