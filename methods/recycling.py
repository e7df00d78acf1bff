"""Token Recycling (Luo et al., ACL 2025): draft from the target's own past top-k successors.

A successor matrix holds, for every vocabulary id, the ``top_k`` tokens the target last ranked highest
after it. Each step fills a static tree template from the last committed token: node ``[i0, i1, ...]``
is the i_d-th recorded successor of its parent's token. After the verification forward, every row the
target saw (root and all draft nodes, accepted or not) overwrites its token's successors with that row's
top-k. With ``persist=true`` (the paper's protocol) the matrix carries over between prompts within a run,
warm-up included, so results depend on prompt order; ``persist=false`` starts every prompt empty.
``context=n`` (n > 1, not in the paper) also records each row's top-k under the last n tokens it saw; a draft
node then takes the successors of its longest recorded context, so "of the" and "in the" stop sharing one list.
``recycle_prompt=true`` (not in the paper) also records the prefill's rows: the prefill computed the target's
state at every prompt position, and projecting them once gives each prompt token's successors in context, so
spans of the prompt are drafted as the answer copies them (``method=recycling_prompt`` sets both).

The reference verifies all 80 template nodes each step, which costs 2-3 one-token forwards on this CPU. Here
the template is cut: nodes go best-first by their observed acceptance rate (a Beta prior from their
ranks, updated after every step), and ``total_tokens - 1`` of them are verified beside the root, or with ``total_tokens=auto``
the number with the most expected tokens per unit of measured verification cost. Unknown successors
(never recorded) and repeated sibling tokens are left out, so every node is verified once and sampled
verification stays lossless.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from harness.drafting import tree_shapes
from harness.drafting.tree_shapes import check_budget
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.method import EngineGenerator, MethodContext
from harness.engine.proposal import Proposal
from harness.engine.verifiers import VerifyResult
from harness.model.target import ForwardOutput

PRIOR_WEIGHT = 2.0  # pseudo-observations behind a node's prior acceptance rate
MAX_CONTEXT = 4


@dataclass
class RecyclingConfig(MethodConfig):
    name: str = "recycling"
    family: str = "recycling"
    top_k: int = 8  # successors recorded per token
    template: Any = "recycling_80"  # a tree_shapes.CHOICES preset or a list of rank paths
    total_tokens: Any = "auto"  # tokens verified per step, root included: an int, or auto (by the verify-cost curve)
    max_tokens: int = 32  # cap on auto
    persist: bool = True  # keep the successor matrix across prompts (the paper's protocol)
    recycle_prompt: bool = False  # also record the top-k of every prompt position of the prefill (not in the paper)
    context: int = 1  # tokens a successor list is keyed by: 1 = the paper's matrix; n > 1 also keys by the last n tokens, longest match first


class TokenRecycling(Drafter):
    name = "recycling"

    def __init__(self, cfg: RecyclingConfig, vocab_size: int, cost: Callable[[int], float] | None) -> None:
        if cfg.top_k < 1:
            raise SpeclabError(f"method.top_k must be >= 1, got {cfg.top_k}")
        if not 1 <= cfg.context <= MAX_CONTEXT:
            raise SpeclabError(f"method.context must be 1 (the paper's successor matrix) to {MAX_CONTEXT} (keyed by the last "
                               f"n tokens), got {cfg.context}")
        check_budget(cfg.total_tokens, cfg.max_tokens)
        try:
            self.paths = tree_shapes.resolve_choices(cfg.template)
        except ValueError as e:
            raise SpeclabError(f"method.template: {e}") from None
        if max(max(p) for p in self.paths) >= cfg.top_k:
            raise SpeclabError(f"method.template uses successor ranks up to {max(max(p) for p in self.paths)} but "
                               f"method.top_k={cfg.top_k} records only ranks 0..{cfg.top_k - 1}; raise top_k or use a smaller template")
        self.cfg, self.cost, self.vocab_size = cfg, cost, vocab_size
        self.hidden_layers = ("final",) if cfg.recycle_prompt else ()
        self.parents = tree_shapes.choices_parents(self.paths)
        ranks = [p[-1] for p in self.paths]
        # prior acceptance of a node: 1/(2 + rank) per level, so deeper and lower-ranked nodes come later
        self.prior = np.array([math.prod(1.0 / (2 + r) for r in p) for p in self.paths])
        self.ranks = np.array(ranks)
        self.reset()

    def reset(self) -> None:
        self.successors = torch.full((self.vocab_size, self.cfg.top_k), -1, dtype=torch.long)
        # successors keyed by the last n tokens, n = 2..context: what the target ranked after that exact context
        self.keyed: dict[tuple[int, ...], list[int]] = {}
        self.seen = np.zeros(len(self.paths))
        self.accepted = np.zeros(len(self.paths))

    def acceptance(self) -> np.ndarray:
        return (self.accepted + PRIOR_WEIGHT * self.prior) / (self.seen + PRIOR_WEIGHT)

    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        if not self.cfg.persist:
            self.reset()
        if self.cfg.recycle_prompt:
            self._recycle_prompt(state, prefill.hidden["final"])
        # what followed the prompt
        self._recycle([tuple(state.ids[-self.cfg.context - 1:-1])], prefill.logits[-1:].topk(self.cfg.top_k, dim=-1).indices)

    def _recycle_prompt(self, state: DecodeState, final: torch.Tensor, chunk: int = 256) -> None:
        """The prefill computed the target's state at every prompt position: project them to the vocabulary and
        record each position's top-k, in order (a later position overwrites an earlier one, as steps do)."""
        ids, c = state.ids, self.cfg.context
        for lo in range(0, state.prompt_len - 1, chunk):
            hi = min(lo + chunk, state.prompt_len - 1)
            top = state.target.lm_head(final[lo:hi]).float().topk(self.cfg.top_k, dim=-1).indices
            self._recycle([tuple(ids[max(0, pos - c + 1): pos + 1]) for pos in range(lo, hi)], top)

    def _recycle(self, tails: list[tuple[int, ...]], top: torch.Tensor) -> None:
        """Record each row's top-k as the successors of its input token (the last of its tail) and, with
        ``context > 1``, of every longer suffix of its tail; rows in order, so a later row overwrites."""
        top = top.cpu()  # the matrix lives on the host: one copy of the rows
        for tail, row in zip(tails, top):
            self.successors[tail[-1]] = row
        if self.cfg.context > 1:
            for tail, row in zip(tails, top.tolist()):
                for n in range(2, len(tail) + 1):
                    self.keyed[tail[-n:]] = row

    def successor(self, tail: tuple[int, ...], rank: int) -> int:
        """The ``rank``-th recorded successor of the context ending ``tail``, longest recorded context first; -1 if none."""
        for n in range(len(tail), 1, -1):
            top = self.keyed.get(tail[-n:])
            if top is not None:
                return top[rank]
        return int(self.successors[tail[-1], rank])

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        p = self.acceptance()
        order = [i for i in tree_shapes.best_first_order(np.log(p).tolist(), self.parents) if len(self.paths[i]) <= max_depth]
        if self.cfg.total_tokens == "auto":
            n = tree_shapes.cost_optimal_size(p[order].tolist(), self.cost, self.cfg.max_tokens - 1)
        else:
            n = int(self.cfg.total_tokens) - 1
        tokens: list[int] = []
        parents: list[int] = []
        nodes: list[int] = []  # template node of each draft node
        slot: dict[int, int] = {}  # template node -> draft node
        taken: set[tuple[int, int]] = set()  # (draft parent, token): siblings are distinct
        root_tail = tuple(state.ids[-self.cfg.context:])
        tails: list[tuple[int, ...]] = []  # last `context` tokens ending at each draft node
        for i in sorted(order[:n]):
            par = self.parents[i]
            if par >= 0 and par not in slot:
                continue  # its parent had no recorded successor or repeated a sibling
            draft_parent = -1 if par < 0 else slot[par]
            parent_tail = root_tail if par < 0 else tails[draft_parent]
            tok = self.successor(parent_tail, int(self.ranks[i]))
            if tok < 0 or (draft_parent, tok) in taken:
                continue
            taken.add((draft_parent, tok))
            slot[i] = len(tokens)
            tokens.append(tok)
            tails.append((parent_tail + (tok,))[-self.cfg.context:])
            parents.append(draft_parent)
            nodes.append(i)
        return Proposal(tokens, parents, meta={"template_nodes": nodes, "tails": [root_tail] + tails})

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        tails = proposal.meta.get("tails")
        if tails is None:  # another drafter proposed this step (SAM's auxiliary use): its rows still teach the matrix
            root = state.ids[len(state.ids) - len(result.accepted) - 2]
            tails = [(token,) for token in [root] + proposal.tokens]
        self._recycle(tails, out.logits.topk(self.cfg.top_k, dim=-1).indices)
        nodes = proposal.meta.get("template_nodes", [])
        if nodes:
            np.add.at(self.seen, nodes, 1.0)
            np.add.at(self.accepted, [nodes[j] for j in result.accepted], 1.0)


def build(cfg: RecyclingConfig, ctx: MethodContext) -> EngineGenerator:
    check_budget(cfg.total_tokens, cfg.max_tokens)
    cost = ctx.verify_cost() if cfg.total_tokens == "auto" else None
    drafter = TokenRecycling(cfg, ctx.target.vocab_size, cost)
    return EngineGenerator.with_rule(cfg.name, ctx.target, drafter, ctx.sampling, cfg.rule)


FAMILIES = [Family("recycling", RecyclingConfig, build)]
