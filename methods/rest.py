"""REST (He et al., NAACL 2024): draft from a datastore by longest suffix match.

The last ``max_suffix`` .. ``min_suffix`` tokens of prompt + output are looked up in the datastore's
suffix array; the continuations of the longest suffix found (at most ``max_hits`` of them, ``length``
tokens each) are merged into a prefix tree whose node counts say how many continuations pass through
each node. The nodes go best-first by count; the verification width (root included, as EAGLE's
``total_tokens``) is ``total_tokens``, or with ``total_tokens=auto`` the width with the most expected tokens
per unit of verification cost on this
machine (node probability = count / (hits + 1), cost = the measured c(k) curve). Drafts are
deterministic, so greedy verification matches ``ar`` and sampled verification (one-hot q, each node
tried once) is lossless. Differences from the reference code: 32-bit token ids, no dummy draft when
nothing matches (a plain step), continuations never cross from one corpus entry into the next.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Optional

import numpy as np

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from harness.drafting import datastore as ds
from harness.drafting.datastore import load_for
from harness.drafting.tree_shapes import best_first_order, check_budget, cost_optimal_size, prefix_tree
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.method import EngineGenerator, MethodContext
from harness.engine.proposal import Proposal


@dataclass
class RESTConfig(MethodConfig):
    name: str = "rest"
    family: str = "rest"
    datastore: Optional[str] = None  # .npz from scripts/build_datastore.py; null: the model's default under drafts/
    max_suffix: int = 16
    min_suffix: int = 2
    max_hits: int = 5000  # continuations retrieved per step (the reference's k)
    length: int = 10  # tokens per continuation
    total_tokens: Any = "auto"  # tokens verified per step, root included: an int, or auto (by the verify-cost curve)
    max_tokens: int = 32  # cap on auto


class RetrievalDrafter(Drafter):
    name = "rest"

    def __init__(self, cfg: RESTConfig, store: ds.Datastore, cost: Callable[[int], float] | None) -> None:
        if not 1 <= cfg.min_suffix <= cfg.max_suffix:
            raise SpeclabError(f"rest needs 1 <= min_suffix <= max_suffix, got {cfg.min_suffix}..{cfg.max_suffix}")
        if cfg.max_hits < 1 or cfg.length < 1:
            raise SpeclabError(f"method.max_hits and method.length must be >= 1, got {cfg.max_hits} and {cfg.length}")
        check_budget(cfg.total_tokens, cfg.max_tokens)
        self.cfg, self.store, self.cost = cfg, store, cost

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        c = self.cfg
        grid, _ = self.store.continuation_grid(state.ids, c.max_suffix, c.min_suffix, c.max_hits, min(c.length, max_depth))
        if not len(grid):
            return Proposal(meta={"source": "none"})
        rows, counts = unique_rows(grid)
        tree = prefix_tree(rows, counts)
        hits = float(sum(counts))
        probs = [n / (hits + 1.0) for n in tree.counts]  # +1: one hit is a guess, not a certainty
        order = best_first_order([math.log(p) for p in probs], tree.parents)
        if c.total_tokens == "auto":
            n = cost_optimal_size([probs[i] for i in order], self.cost, c.max_tokens - 1)
        else:
            n = int(c.total_tokens) - 1
        keep = sorted(order[:n])
        if not keep:
            return Proposal(meta={"source": "none"})
        return Proposal(tree.tokens, tree.parents, meta={"source": "datastore"}).restrict(keep)


def unique_rows(grid: np.ndarray) -> tuple[list[list[int]], list[int]]:
    """Distinct continuations (rows, -1 padded) and how often each was retrieved: the tree is built once per
    distinct one."""
    uniq, counts = np.unique(grid, axis=0, return_counts=True)
    order = np.argsort(-counts, kind="stable")  # most retrieved first: siblings are tried in that order
    return [[int(t) for t in uniq[i] if t >= 0] for i in order], [int(counts[i]) for i in order]


def build(cfg: RESTConfig, ctx: MethodContext) -> EngineGenerator:
    check_budget(cfg.total_tokens, cfg.max_tokens)
    store = load_for(ctx.target, cfg.datastore)
    cost = ctx.verify_cost() if cfg.total_tokens == "auto" else None
    return EngineGenerator.with_rule(cfg.name, ctx.target, RetrievalDrafter(cfg, store, cost), ctx.sampling, cfg.rule)


FAMILIES = [Family("rest", RESTConfig, build)]
