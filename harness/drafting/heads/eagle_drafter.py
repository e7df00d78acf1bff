"""The drafter behind every EAGLE method: a draft head that runs ahead of the target on its own KV cache.

Per step: *catch up* on the pairs (target feature f_t, token x_{t+1}) committed since the last step (the
target's own states, so draft errors never persist), then grow a tree from the last catch-up output:

* ``static``: a choices list (EAGLE-1); each level of internal nodes is one head forward.
* ``dynamic``: EAGLE-2's expansion: the ``top_k`` children of the ``top_k`` best frontier nodes by cumulative
  draft log-probability, ``depth`` levels, then the ``total_tokens - 1`` best nodes overall.

Tree nodes fed to the head sit after the committed pairs in its cache, see the committed prefix, their
ancestors and themselves, at position ``t + depth``; the cache is cut back to the committed pairs before
the target verifies, so only accepted tokens (recomputed from the target's states) ever stay.

Sampling (temperature > 0): static trees draw each node's children without replacement from the warped
draft distribution and hand the verifier each child's q given its earlier siblings; dynamic trees keep
EAGLE-2's deterministic top-k children (q = one-hot: the verifier's point-mass rule), because choosing
which sampled nodes to keep by their score would bias the draws the verifier assumes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Optional

import torch

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.drafting import tree_shapes
from harness.drafting.heads import eagle_batch
from harness.drafting.heads.draft_tree import DraftTree
from harness.drafting.heads.eagle_head import EagleHead
from harness.drafting.heads.head_files import head_path
from harness.drafting.heads.layers import causal_mask, visible_mask
from harness.drafting.vocab import frequency_vocab
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.proposal import Proposal
from harness.engine.sampling import Sampling, warp
from harness.engine.verifiers import VerifyResult
from harness.model.target import ForwardOutput


@dataclass
class TreeShape:
    kind: str  # static | dynamic
    choices: list[tuple[int, ...]] | None = None  # static
    depth: int = 4  # dynamic
    top_k: int = 2
    total_tokens: int = 8  # verification width, root included

    def __post_init__(self) -> None:
        if self.kind == "static":
            if not self.choices:
                raise ValueError("a static tree needs choices")
        elif self.kind == "dynamic":
            if self.depth < 1 or self.top_k < 1 or self.total_tokens < 2:
                raise ValueError(
                    f"a dynamic tree needs depth >= 1, top_k >= 1 and total_tokens >= 2; got depth={self.depth}, "
                    f"top_k={self.top_k}, total_tokens={self.total_tokens}"
                )
        else:
            raise ValueError(f"unknown tree kind {self.kind!r}; choose static or dynamic")


class HeadDrafter(Drafter):
    name = "eagle"

    def __init__(self, head: EagleHead, shape: TreeShape, sampling: Sampling) -> None:
        self.head = head
        self.shape = shape
        self.sampling = sampling
        self.hidden_layers = head.target_layers
        self.static_parents = tree_shapes.choices_parents(shape.choices) if shape.kind == "static" else None
        self.device = head.fc.weight.device if hasattr(head, "fc") else next(head.parameters()).device
        self.vocab_ids = head.vocab.ids.to(self.device) if head.vocab is not None else None
        self.cache = None
        self.pending: tuple[dict, list[int]] | None = None
        self.batch = None  # batched decoding: the rows' head caches as one (batch_slots.SlotCache), shared by forks
        self.generation = object()  # which generation this drafter serves (its slot in the batch's cache)

    # -- the committed pairs -------------------------------------------------------------------------------
    def begin(self, state: DecodeState, prefill: ForwardOutput) -> None:
        self.generation = object()
        self.cache = self.head.new_cache(len(state.ids) + state.max_new_tokens + 64)
        # prompt states f_0..f_{P-1} pair with tokens x_1..x_P (x_P: the token the prefill emitted)
        self.pending = ({k: v for k, v in prefill.hidden.items()}, state.ids[1:])

    def observe(self, state: DecodeState, proposal: Proposal, result: VerifyResult, out: ForwardOutput) -> None:
        rows = [0] + [i + 1 for i in result.accepted]
        tokens = [proposal.tokens[i] for i in result.accepted] + [result.token]
        hidden = {k: v[rows] for k, v in out.hidden.items()}
        if self.pending is not None:  # another drafter proposed last step (SAM's auxiliary use): keep both
            old_hidden, old_tokens = self.pending
            hidden = {k: torch.cat([old_hidden[k], v]) for k, v in hidden.items()}
            tokens = old_tokens + tokens
        self.pending = (hidden, tokens)

    def _catch_up(self) -> torch.Tensor:
        hidden, tokens = self.pending
        start = self.cache.length
        n = len(tokens)
        h = self.head.features(hidden)
        dtype = h.dtype
        dev = self.device
        out = self.head(torch.tensor([tokens], device=dev), h[None], torch.arange(start, start + n, device=dev)[None],
                        self.cache, causal_mask(start, n, dtype, dev))
        self.pending = None
        return out[0, -1]

    # -- the tree ------------------------------------------------------------------------------------------
    def _distribution(self, out: torch.Tensor) -> torch.Tensor:
        """Draft log-probabilities [n, V_draft] for head outputs [n, H]."""
        return torch.log_softmax(self.head.logits(out), dim=-1)

    def _target_ids(self, idx: torch.Tensor) -> list[int]:
        return (self.vocab_ids[idx] if self.vocab_ids is not None else idx).tolist()

    def _feed(self, tree: DraftTree, nodes: Sequence[int], stable: int) -> torch.Tensor:
        """Run the head on ``nodes`` (each with its parent's output as feature); returns their log-probs."""
        start = self.cache.length
        h = torch.stack([tree.out[tree.parents[n]] for n in nodes])
        rows = []
        for j, n in enumerate(nodes):
            seen = [tree.slot[a] for a in tree.ancestors(tree.parents[n])] + [start + j]
            rows.append(list(range(stable)) + seen)
            tree.slot[n] = start + j
        positions = torch.tensor([[stable - 1 + tree.depth[n] for n in nodes]], device=self.device)
        tokens = torch.tensor([[tree.tokens[n] for n in nodes]], device=self.device)
        out = self.head(tokens, h[None], positions, self.cache, visible_mask(start, rows, h.dtype, self.device))[0]
        for j, n in enumerate(nodes):
            tree.out[n] = out[j]
        return out

    def _children(self, logits: torch.Tensor, count: int, generator) -> tuple[list[int], list[float], list[torch.Tensor | None]]:
        """``count`` children from one node's draft logits: top-k when greedy or deterministic, else sampled
        without replacement (Gumbel top-k) with each child's q given its earlier siblings."""
        logp = torch.log_softmax(logits, dim=-1)
        count = min(count, logp.numel())
        if self.sampling.greedy or self.shape.kind == "dynamic":
            top = torch.topk(logp, count)
            return self._target_ids(top.indices), top.values.tolist(), [None] * count
        q = warp(logits, self.sampling)
        # uniforms from the run's host generator, so a seeded run draws the same on every device
        gumbel = -torch.log(-torch.log(torch.rand(q.shape, generator=generator).clamp_(1e-20, 1.0))).to(q.device)
        keys = torch.where(q > 0, q.log() + gumbel, torch.full_like(q, -float("inf")))
        draws = torch.topk(keys, min(count, int((q > 0).sum()))).indices
        qs, left = [], q.clone()
        for d in draws.tolist():
            qs.append(self._full(left / left.sum()))
            left[d] = 0.0
        return self._target_ids(draws), logp[draws].tolist(), qs

    def _full(self, q: torch.Tensor) -> torch.Tensor:
        if self.vocab_ids is None:
            return q
        full = torch.zeros(self.head.vocab.target_vocab, dtype=q.dtype, device=q.device)
        full[self.vocab_ids] = q
        return full

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        with torch.inference_mode():
            root = self._catch_up()
            stable = self.cache.length
            tree = DraftTree()
            tree.out[-1] = root
            tree.slot[-1] = stable - 1
            if self.shape.kind == "static":
                self._grow_static(tree, root, stable, max_depth, state.generator)
                keep = list(range(len(tree.tokens)))
            else:
                self._grow_dynamic(tree, root, stable, max_depth)
                keep = tree_shapes.best_first(tree.score, tree.parents, self.shape.total_tokens - 1)
            self.cache.truncate(stable)
        parents = [tree.parents[i] for i in keep]
        index = {old: new for new, old in enumerate(keep)}
        parents = [index[p] if p >= 0 else -1 for p in parents]
        q = None
        if any(tree.q[i] is not None for i in keep):
            q = torch.stack([tree.q[i] for i in keep])
        return Proposal([tree.tokens[i] for i in keep], parents, q)

    def propose_batch(self, rows: list[tuple[Drafter, DecodeState, int]]) -> list[Proposal]:
        """Dynamic trees: every row's level in one head forward (eagle_batch.py); static trees: row by row."""
        if self.shape.kind != "dynamic":
            return super().propose_batch(rows)
        return eagle_batch.propose_batch(self, rows)

    def _grow_static(self, tree: DraftTree, root: torch.Tensor, stable: int, max_depth: int, generator) -> None:
        tree_shapes.grow_choices(self.shape.choices, max_depth, self.head.logits(root[None])[0],
                           lambda logits, n: self._children(logits, n, generator), tree.add,
                           lambda nodes: self.head.logits(self._feed(tree, nodes, stable)))

    def _grow_dynamic(self, tree: DraftTree, root: torch.Tensor, stable: int, max_depth: int) -> None:
        k = self.shape.top_k
        depth = min(self.shape.depth, max_depth)
        logp = self._distribution(root[None])[0]
        top = torch.topk(logp, min(k, logp.numel()))
        frontier = [tree.add(t, -1, s) for t, s in zip(self._target_ids(top.indices), top.values.tolist())]
        for _ in range(depth - 1):
            outs = self._feed(tree, frontier, stable)
            logp = self._distribution(outs)
            top = torch.topk(logp, min(k, logp.shape[-1]), dim=-1)
            scores = torch.tensor([tree.score[n] for n in frontier], device=top.values.device)[:, None] + top.values
            children = []
            for j, n in enumerate(frontier):
                for t, s in zip(self._target_ids(top.indices[j]), scores[j].tolist()):
                    children.append(tree.add(t, n, s))
            best = sorted(children, key=lambda c: -tree.score[c])[:k]
            frontier = sorted(best)


def build_head_generator(cfg: Any, ctx: Any, default_head: str, shape: TreeShape) -> Any:
    """An engine generator for an EAGLE-family method config (``head``, ``vocab_size``, ``dtype`` keys)."""
    from harness.drafting.heads.eagle_checkpoints import load_head
    from harness.engine.method import EngineGenerator
    from harness.model.kernels import apply_kernel, draft_dtype

    target = ctx.target
    dtype = draft_dtype(cfg.dtype, target.dtype, target.device, ctx.engine.kernel)
    path = head_path(cfg, ctx, default_head, f"python scripts/train_eagle.py --variant {default_head}")
    head, _ = load_head(path, target, dtype)
    head.to(target.device)
    if head.variant == "eagle":
        vocab = frequency_vocab(cfg, path, target.vocab_size)
        if vocab is not None:
            head.vocab = vocab
            rows = vocab.rows(target.lm_head.weight, dtype)
            head.set_target_head(apply_kernel(torch.nn.Sequential(rows), ctx.engine.kernel))
    apply_kernel(head, ctx.engine.kernel)
    drafter = HeadDrafter(head, shape, ctx.sampling)
    drafter.name = cfg.name
    drafter.draft_dtype = str(dtype).removeprefix("torch.")
    drafter.draft_vocab_size = target.vocab_size if head.vocab is None else len(head.vocab)
    return EngineGenerator.with_rule(cfg.name, target, drafter, ctx.sampling, cfg.rule)


@dataclass
class DynamicTreeConfig(MethodConfig):
    """What every method drafting EAGLE-2's dynamic tree with a head sets."""

    head: Optional[str] = None  # HF id or folder; null = the model's default head under drafts/
    dtype: str = "auto"  # auto: bfloat16 where bf16 linears run natively, else the target's dtype
    depth: int = 5
    top_k: int = 2
    total_tokens: int = 8  # verification width, root included


def dynamic_shape(cfg: Any) -> TreeShape:
    """The dynamic tree a :class:`DynamicTreeConfig` describes (one line for a bad setting)."""
    try:
        return TreeShape("dynamic", depth=cfg.depth, top_k=cfg.top_k, total_tokens=cfg.total_tokens)
    except ValueError as e:
        raise SpeclabError(f"method: {e}") from None
