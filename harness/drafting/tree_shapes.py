"""Tree builders shared by tree-drafting methods: static trees from a choices list, the best-first budget
cut of a dynamically expanded tree (EAGLE-2), prefix trees of retrieved continuations (REST), and the tree
size that the verify-cost curve pays for. The tree bookkeeping itself (masks, positions) is ``tree.py``.

A *choices list* names every node by its path of ranks from the root: ``[0]`` is the root's most likely
child, ``[0, 1]`` the second most likely child of that node. Ranks refer to the node's own parent's
(conditional) draft distribution, as in EAGLE; when sampling, rank r is the r-th draw without replacement.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from numbers import Integral
from typing import Any

import torch

from harness.core.errors import SpeclabError

# EAGLE-1's default tree (eagle/model/choices.py, "mc_sim_7b_63": 25 nodes, depth 5); not Medusa's tree of that name.
EAGLE_MC_SIM_7B_63 = [[0], [1], [2], [3], [0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [2, 0], [2, 1], [3, 0],
                      [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 1, 0], [0, 1, 1], [0, 2, 0], [0, 2, 1], [1, 0, 0],
                      [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 0, 0], [0, 0, 0, 0, 1]]

# Token Recycling's static template "2.2.2" (80 nodes, 8/21/25/15/8/3 per depth 1..6); rank r = the r-th
# recorded successor of the parent token.
RECYCLING_80 = [[0], [1], [2], [3], [4], [5], [6], [7],
                [0, 0], [0, 1], [0, 2], [0, 3], [0, 4], [0, 5], [0, 6], [0, 7], [1, 0], [1, 1], [1, 2], [1, 3],
                [2, 0], [2, 1], [2, 2], [3, 0], [3, 1], [4, 0], [5, 0], [6, 0], [7, 0],
                [0, 0, 0], [0, 0, 1], [0, 0, 2], [0, 0, 3], [0, 0, 4], [0, 0, 5], [0, 0, 6], [0, 0, 7], [0, 1, 0],
                [0, 1, 1], [0, 1, 2], [0, 2, 0], [0, 2, 1], [0, 3, 0], [0, 4, 0], [0, 5, 0], [0, 6, 0], [0, 7, 0],
                [1, 0, 0], [1, 0, 1], [1, 1, 0], [2, 0, 0], [3, 0, 0], [4, 0, 0], [5, 0, 0],
                [0, 0, 0, 0], [0, 0, 0, 1], [0, 0, 0, 2], [0, 0, 0, 3], [0, 0, 0, 4], [0, 0, 1, 0], [0, 0, 1, 1],
                [0, 0, 2, 0], [0, 0, 3, 0], [0, 0, 4, 0], [0, 1, 0, 0], [0, 2, 0, 0], [1, 0, 0, 0], [2, 0, 0, 0],
                [3, 0, 0, 0],
                [0, 0, 0, 0, 0], [0, 0, 0, 0, 1], [0, 0, 0, 0, 2], [0, 0, 0, 1, 0], [0, 0, 0, 2, 0], [0, 0, 1, 0, 0],
                [0, 1, 0, 0, 0], [1, 0, 0, 0, 0],
                [0, 0, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1], [0, 0, 0, 1, 0, 0]]

# Medusa's and Hydra's default tree (medusa_choices.py / hydra_choices.py, "mc_sim_7b_63": 63 nodes, depth 4,
# 10/28/23/2 per level); rank r at depth d is the r-th candidate of head d - 1 (Medusa: whatever the parent).
MEDUSA_MC_SIM_7B_63 = [[0], [0, 0], [1], [0, 1], [2], [0, 0, 0], [1, 0], [0, 2], [3], [0, 3], [4], [0, 4], [2, 0],
                       [0, 5], [0, 0, 1], [5], [0, 6], [6], [0, 7], [0, 1, 0], [1, 1], [7], [0, 8], [0, 0, 2], [3, 0],
                       [0, 9], [8], [9], [1, 0, 0], [0, 2, 0], [1, 2], [0, 0, 3], [4, 0], [2, 1], [0, 0, 4], [0, 0, 5],
                       [0, 0, 0, 0], [0, 1, 1], [0, 0, 6], [0, 3, 0], [5, 0], [1, 3], [0, 0, 7], [0, 0, 8], [0, 0, 9],
                       [6, 0], [0, 4, 0], [1, 4], [7, 0], [0, 1, 2], [2, 0, 0], [3, 1], [2, 2], [8, 0], [0, 5, 0], [1, 5],
                       [1, 0, 1], [0, 2, 1], [9, 0], [0, 6, 0], [0, 0, 0, 1], [1, 6], [0, 7, 0]]

CHOICES: dict[str, list[list[int]]] = {
    "eagle_mc_sim_7b_63": EAGLE_MC_SIM_7B_63,
    "medusa_mc_sim_7b_63": MEDUSA_MC_SIM_7B_63,
    # CPU-sized trees, named by verification width (root included): this CPU verifies up to ~6 tokens for the
    # price of one and 8 for ~1.3 (BENCHMARKS.md, "EAGLE tree shapes")
    "chain4": [[0], [0, 0], [0, 0, 0], [0, 0, 0, 0]],
    "cpu6": [[0], [1], [0, 0], [0, 0, 0], [0, 0, 0, 0]],
    "cpu8": [[0], [1], [0, 0], [0, 1], [0, 0, 0], [0, 0, 0, 0], [0, 0, 0, 0, 0]],
    # depth 4 for four Medusa/Hydra heads: more breadth near the root, where their guesses are surest
    "cpu8_d4": [[0], [1], [2], [0, 0], [1, 0], [0, 0, 0], [0, 0, 0, 0]],
    # the reference tree's 8 likeliest nodes (depth 3): Hydra's default, its fastest in the held-out sweep of
    # BENCHMARKS.md section 6 (Hydra pays a batched call per level; this tree has one level fewer than cpu8_d4)
    "medusa_mc8": MEDUSA_MC_SIM_7B_63[:8],
    "recycling_80": RECYCLING_80,
}


def _rank_path(choice: object) -> tuple[int, ...]:
    if isinstance(choice, (str, bytes)) or not isinstance(choice, Iterable):
        raise TypeError(choice)
    ranks = list(choice)
    if any(isinstance(r, bool) or not isinstance(r, Integral) for r in ranks):
        raise TypeError(choice)
    return tuple(int(r) for r in ranks)


def resolve_choices(choices: str | Sequence[Sequence[int]]) -> list[tuple[int, ...]]:
    """A named preset, ``<preset>:<n>`` (its first n paths: the reference trees list their likeliest first) or a
    literal list, validated and sorted into feeding order (by depth, then ranks)."""
    if isinstance(choices, str):
        name, _, count = choices.partition(":")
        if name not in CHOICES:
            raise ValueError(f"unknown tree choices {name!r}; presets: {', '.join(CHOICES)} (or give a list of rank paths)")
        if count and not (count.isdigit() and int(count) > 0):
            raise ValueError(f"tree choices {choices!r}: after ':' give how many of the preset's paths to keep, e.g. {name}:8")
        choices = CHOICES[name][: int(count)] if count else CHOICES[name]
    try:
        if not isinstance(choices, Iterable):
            raise TypeError(choices)
        given = [_rank_path(c) for c in choices]
    except TypeError:
        shown = repr(choices)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        # a flat list ([0, 1]) or a stray string is the usual slip; name the expected shape
        raise ValueError(f"tree choices must be a preset name or a list of rank paths such as [[0], [1], [0, 0]]; "
                         f"got {shown}") from None
    paths = sorted(set(given), key=lambda c: (len(c), c))
    if not paths:
        raise ValueError("tree choices are empty; give at least one path such as [[0]]")
    known = set(paths)
    for c in paths:
        if not c or min(c) < 0:
            raise ValueError(f"tree choice {list(c)} must be a non-empty list of ranks >= 0")
        if len(c) > 1 and c[:-1] not in known:
            raise ValueError(f"tree choice {list(c)} has no parent {list(c[:-1])} in the list")
        if c[-1] > 0 and c[:-1] + (c[-1] - 1,) not in known:
            # sampled siblings are consecutive draws, so rank r needs ranks 0..r-1 beside it
            raise ValueError(f"tree choice {list(c)} needs its lower-ranked sibling {list(c[:-1] + (c[-1] - 1,))}")
    return paths


def grow_choices(
    paths: Sequence[tuple[int, ...]],
    max_depth: int,
    root_logits: torch.Tensor,
    pick: Callable[[torch.Tensor, int], tuple[list[int], list[float], list]],
    add: Callable[[int, int, float, object], int],
    expand: Callable[[list[int]], torch.Tensor],
) -> None:
    """Grow a static tree from a resolved choices list, one level at a time (every static-tree drafter).

    ``pick(logits, n)`` -> (tokens, scores, qs): a node's ``n`` children from its draft logits (top-n, or drawn);
    ``add(token, parent, score, q)`` -> the new node's id (parent -1 = the root; score is cumulative);
    ``expand(nodes)`` -> draft logits [len(nodes), V] under each of a level's nodes that have children, called
    once per level so a drafter batches a level into one forward.
    """
    kids: dict[tuple[int, ...], list[tuple[int, ...]]] = {}
    for c in paths:
        kids.setdefault(c[:-1], []).append(c)
    node_of: dict[tuple[int, ...], int] = {(): -1}
    score_of: dict[tuple[int, ...], float] = {(): 0.0}
    logits_of = {(): root_logits}
    level: list[tuple[int, ...]] = [()]
    while level:
        grown = []
        for path in level:
            children = [c for c in kids.get(path, []) if len(c) <= max_depth]
            if not children:
                continue
            toks, scores, qs = pick(logits_of[path], len(children))
            for c in children:
                r = c[-1]
                if r < len(toks):  # fewer candidates than ranks (a tiny vocabulary, or few tokens left to draw)
                    score_of[c] = score_of[path] + scores[r]
                    node_of[c] = add(toks[r], node_of[path], score_of[c], qs[r])
                    grown.append(c)
        level = [c for c in grown if kids.get(c) and len(c) < max_depth]
        if level:
            for c, row in zip(level, expand([node_of[c] for c in level])):
                logits_of[c] = row


def choices_parents(paths: Sequence[tuple[int, ...]]) -> list[int]:
    """Parent index of every node of a resolved choices list (-1 = the root)."""
    index = {c: i for i, c in enumerate(paths)}
    return [index[c[:-1]] if len(c) > 1 else -1 for c in paths]


def best_first_order(scores: Sequence[float], parents: Sequence[int]) -> list[int]:
    """Nodes by decreasing score, every node after its parent: any prefix of the order is a tree.

    A node's score is capped at its parent's (cumulative log-probabilities already are; estimated rates, as
    recycling's per-node acceptance, need not be), and on a tie the shallower node comes first, so a node
    never sorts before its parent and every prefix is closed under parents.
    """
    depth: list[int] = []
    capped: list[float] = []
    for i, p in enumerate(parents):
        depth.append(1 if p < 0 else depth[p] + 1)
        capped.append(float(scores[i]) if p < 0 else min(float(scores[i]), capped[p]))
    order = sorted(range(len(scores)), key=lambda i: (-capped[i], depth[i], i))
    seen: set[int] = set()
    out: list[int] = []
    for i in order:
        if parents[i] < 0 or parents[i] in seen:
            seen.add(i)
            out.append(i)
    return out


def best_first(scores: Sequence[float], parents: Sequence[int], budget: int) -> list[int]:
    """The ``budget`` best nodes by score, closed under parents, in their original (topological) order."""
    return sorted(best_first_order(scores, parents)[:budget])


def cost_optimal_size(probs: Sequence[float], cost: Callable[[int], float], max_nodes: int) -> int:
    """How many of ``probs`` (acceptance probabilities of nodes in best-first order) to verify.

    The expected tokens of a step that verifies the first n nodes is 1 + sum of their probabilities (a node
    is emitted iff it is accepted); its cost is c(1 + n), the verify-cost curve. The n with the most
    expected tokens per unit of cost wins; ties go to the smaller tree.
    """
    best_n, best_rate, tokens = 0, 1.0 / cost(1), 1.0
    for n, p in enumerate(probs[:max_nodes], start=1):
        tokens += p
        rate = tokens / cost(1 + n)
        if rate > best_rate + 1e-12:
            best_n, best_rate = n, rate
    return best_n


@dataclass
class PrefixTree:
    """Candidate continuations merged by shared prefixes: node i is ``tokens[i]`` under ``parents[i]``, and
    ``counts[i]`` is how many continuations pass through it (their summed weights)."""

    tokens: list[int]
    parents: list[int]
    counts: list[float]
    index: dict[tuple[int, ...], int] = field(default_factory=dict)  # token path from the root -> node


def prefix_tree(seqs: Sequence[Sequence[int]], weights: Sequence[float] | None = None) -> PrefixTree:
    """Merge ``seqs`` into a prefix tree, breadth-first (a topological order); siblings keep first-seen order.

    A node shared by several continuations appears once, so a sampled verification tries it once.
    """
    count: dict[tuple[int, ...], float] = {}
    for j, seq in enumerate(seqs):
        w = 1.0 if weights is None else float(weights[j])
        seq = [int(t) for t in seq]
        for d in range(1, len(seq) + 1):
            key = tuple(seq[:d])
            count[key] = count.get(key, 0.0) + w
    order = sorted(count, key=len)  # stable: dicts keep first-seen order
    tree = PrefixTree([], [], [])
    for key in order:
        tree.index[key] = len(tree.tokens)
        tree.tokens.append(key[-1])
        tree.parents.append(tree.index[key[:-1]] if len(key) > 1 else -1)
        tree.counts.append(count[key])
    return tree


def check_budget(total_tokens: Any, max_tokens: int) -> None:
    """``total_tokens`` (a verification width, root included) is auto or at least 2; ``max_tokens`` caps auto."""
    if total_tokens != "auto" and (isinstance(total_tokens, bool) or not isinstance(total_tokens, int) or total_tokens < 2):
        raise SpeclabError(f"method.total_tokens must be auto or a verification width >= 2 (root included), got {total_tokens!r}")
    if max_tokens < 2:
        raise SpeclabError(f"method.max_tokens must be >= 2 (root included), got {max_tokens}")
