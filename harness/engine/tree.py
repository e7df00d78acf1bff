"""Draft trees: parent lists -> depths, attention masks, positions and root-to-leaf paths.

A draft is a tree whose root is the last committed token (index 0 in the verification input, not yet
in the KV cache). Draft nodes are numbered 0..n-1 in the order they are fed to the target, which must
be topological (a parent comes before its children); ``parents[i] == -1`` makes node i a child of the
root. A chain of n tokens has parents ``[-1, 0, 1, ..., n-2]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def validate(parents: Sequence[int]) -> None:
    for i, p in enumerate(parents):
        if not -1 <= p < i:
            raise ValueError(f"draft node {i} has parent {p}; parents must come before their children (-1 = root)")


def chain_parents(n: int) -> list[int]:
    return list(range(-1, n - 1))


def is_chain(parents: Sequence[int]) -> bool:
    return all(p == i - 1 for i, p in enumerate(parents))


def depths(parents: Sequence[int]) -> list[int]:
    """Depth of every node; children of the root have depth 1."""
    out: list[int] = []
    for p in parents:
        out.append(1 if p < 0 else out[p] + 1)
    return out


def children(parents: Sequence[int]) -> list[list[int]]:
    """children[0] lists the root's children; children[i + 1] those of node i."""
    out: list[list[int]] = [[] for _ in range(len(parents) + 1)]
    for i, p in enumerate(parents):
        out[p + 1].append(i)
    return out


def ancestor_mask(parents: Sequence[int]) -> torch.Tensor:
    """Boolean [n+1, n+1] over (root, nodes): row i may attend to column j iff j is i or an ancestor of i."""
    n = len(parents)
    mask = torch.zeros(n + 1, n + 1, dtype=torch.bool)
    mask[:, 0] = True
    mask[0, 0] = True
    for i, p in enumerate(parents):
        row = i + 1
        if p >= 0:
            mask[row] = mask[p + 1]
        mask[row, row] = True
    return mask


def positions(parents: Sequence[int], cache_len: int) -> torch.Tensor:
    """Position ids of (root, nodes): the root sits at ``cache_len``, a node at ``cache_len + depth``."""
    return torch.tensor([cache_len] + [cache_len + d for d in depths(parents)], dtype=torch.long)


def paths(parents: Sequence[int]) -> list[list[int]]:
    """Every root-to-leaf path as a list of node indices."""
    kids = children(parents)
    out: list[list[int]] = []
    for i in range(len(parents)):
        if not kids[i + 1]:
            path = [i]
            while parents[path[-1]] >= 0:
                path.append(parents[path[-1]])
            out.append(path[::-1])
    return out


def prune_depth(parents: Sequence[int], max_depth: int) -> list[int]:
    """Indices of the nodes whose depth is at most ``max_depth`` (keeps topological order)."""
    return [i for i, d in enumerate(depths(parents)) if d <= max_depth]


def subset(parents: Sequence[int], keep: Sequence[int]) -> list[int]:
    """Parent list of the sub-tree made of ``keep`` (which must be closed under taking parents)."""
    index = {old: new for new, old in enumerate(keep)}
    return [index[parents[i]] if parents[i] >= 0 else -1 for i in keep]
