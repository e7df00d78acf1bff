"""EAGLE-2's dynamic trees for a whole batch at once: one head forward catches every row up, one more per tree level
expands every row's frontier, instead of a forward per row per level.

The rows' head caches are the rows of one batched cache (harness/drafting/batch_slots.py), so a
level's forward reads every row's own committed pairs and tree ancestors through a per-row mask. Each row's tree is
grown exactly as :class:`HeadDrafter` grows it alone (the ``top_k`` children of the ``top_k`` best frontier nodes by
cumulative draft log-probability, ``depth`` levels, then the ``total_tokens - 1`` best nodes), so a batch proposes
what its rows would propose one by one, and greedy outputs stay the target's.
"""

from __future__ import annotations

from typing import Any

import torch

from harness.drafting import tree_shapes
from harness.drafting.batch_slots import SlotCache, slot_cache_for
from harness.drafting.heads.draft_tree import DraftTree
from harness.engine.drafter import DecodeState
from harness.engine.proposal import Proposal

SPARE = 80  # slots past a row's prompt and budget: its tree's nodes while it is grown
ALONE = 16  # a catch-up longer than this (a new row's prompt) runs on its own row: padded to it, every other row
# would write as many padding slots past its own length


def _forward(proto: Any, batch: SlotCache, feeds: dict[int, tuple[list[int], torch.Tensor, list[int], list[list[int]]]],
             rows: range | None = None) -> dict[int, torch.Tensor]:
    """One head forward over the slots ``rows`` (all by default): ``feeds[slot]`` = (tokens, features [n, H],
    positions, the cache slots each token sees besides itself); slots without a feed are padding. Returns each fed
    slot's outputs [n, H]."""
    head, device, cache = proto.head, proto.device, batch.cache
    rows = range(cache.rows) if rows is None else rows
    widths = [len(feeds[s][0]) if s in feeds else 1 for s in rows]
    kv_len = cache.prepare(rows, widths, device)
    width = max(widths)
    dtype = head.fc.weight.dtype
    tokens = torch.zeros(len(rows), width, dtype=torch.long)
    positions = torch.zeros(len(rows), width, dtype=torch.long)
    feats = torch.zeros(len(rows), width, feeds[next(iter(feeds))][1].shape[-1], dtype=dtype, device=device)
    visible = torch.zeros(len(rows), width, kv_len, dtype=torch.bool)
    for r, s in enumerate(rows):
        start = cache.lengths[s]
        visible[r, torch.arange(width), start + torch.arange(width)] = True  # everyone sees itself
        if s not in feeds:
            continue
        toks, h, pos, seen = feeds[s]
        n = len(toks)
        tokens[r, :n] = torch.tensor(toks)
        positions[r, :n] = torch.tensor(pos)
        feats[r, :n] = h.to(dtype)
        for i, slots in enumerate(seen):
            visible[r, i, slots] = True
    mask = torch.zeros(visible.shape, dtype=dtype).masked_fill_(~visible, torch.finfo(dtype).min)[:, None]
    out = head(tokens.to(device), feats, positions.to(device), cache, mask.to(device))
    return {s: out[r, : len(feeds[s][0])] for r, s in enumerate(rows) if s in feeds}


def propose_batch(proto: Any, rows: list[tuple[Any, DecodeState, int]]) -> list[Proposal]:
    """Every row's dynamic tree, each level of all rows in one head forward (see the module docstring). ``proto`` is
    the run's HeadDrafter (its head, shape and draft vocabulary; it holds the batch's head cache), ``rows`` its
    forks with their states and deepest allowed drafts."""
    capacity = max(len(s.ids) + s.max_new_tokens - s.new_tokens for _, s, _ in rows) + SPARE
    batch = slot_cache_for(proto, "batch", 1, len(rows), capacity)
    slots = batch.assign([d for d, _, _ in rows], capacity)
    cache = batch.cache
    shape = proto.shape
    with torch.inference_mode():
        # catch up on the pairs each row committed since its last step
        feeds = {}
        for (d, _, _), s in zip(rows, slots):
            hidden, toks = d.pending
            start = cache.lengths[s]
            feeds[s] = (toks, proto.head.features(hidden), list(range(start, start + len(toks))),
                        [list(range(start + i)) for i in range(len(toks))])
            d.pending = None
        outs = {}
        for s in [s for s, feed in feeds.items() if len(feed[0]) > ALONE]:
            outs.update(_forward(proto, batch, {s: feeds.pop(s)}, range(s, s + 1)))
            cache.keep(s, range(len(outs[s])))
        if feeds:
            outs.update(_forward(proto, batch, feeds))
            for s, (toks, *_rest) in feeds.items():
                cache.keep(s, range(len(toks)))
        stable = {s: cache.lengths[s] for s in slots}
        trees: dict[int, DraftTree] = {}
        frontier: dict[int, list[int]] = {}
        depth = {s: min(shape.depth, m) for (_, _, m), s in zip(rows, slots)}
        roots = torch.stack([outs[s][-1] for s in slots])
        logp = proto._distribution(roots)
        for i, s in enumerate(slots):
            tree = trees[s] = DraftTree()
            tree.out[-1], tree.slot[-1] = roots[i], stable[s] - 1
            if depth[s] < 1:
                frontier[s] = []
                continue
            top = torch.topk(logp[i], min(shape.top_k, logp.shape[-1]))
            frontier[s] = [tree.add(t, -1, v) for t, v in zip(proto._target_ids(top.indices), top.values.tolist())]
        for level in range(1, max(depth.values(), default=0)):
            growing = [s for s in slots if level < depth[s] and frontier[s]]
            if not growing:
                break
            feeds = {}
            for s in growing:
                tree, nodes, start = trees[s], frontier[s], cache.lengths[s]
                seen = []
                for j, n in enumerate(nodes):
                    tree.slot[n] = start + j
                    seen.append(list(range(stable[s])) + [tree.slot[a] for a in tree.ancestors(tree.parents[n])])
                feeds[s] = ([tree.tokens[n] for n in nodes], torch.stack([tree.out[tree.parents[n]] for n in nodes]),
                            [stable[s] - 1 + tree.depth[n] for n in nodes], seen)
            outs = _forward(proto, batch, feeds)
            for s in growing:
                cache.keep(s, range(len(frontier[s])))  # the level's nodes stay visible to the levels below them
            flat = torch.cat([outs[s] for s in growing])
            logp = proto._distribution(flat)
            top = torch.topk(logp, min(shape.top_k, logp.shape[-1]), dim=-1)
            at = 0
            for s in growing:
                tree, nodes = trees[s], frontier[s]
                for j, n in enumerate(nodes):
                    tree.out[n] = outs[s][j]
                children = []
                for j, n in enumerate(nodes):
                    row = at + j
                    scores = (tree.score[n] + top.values[row]).tolist()
                    children += [tree.add(t, n, v) for t, v in zip(proto._target_ids(top.indices[row]), scores)]
                at += len(nodes)
                frontier[s] = sorted(sorted(children, key=lambda c: -tree.score[c])[: shape.top_k])
        proposals = []
        for s in slots:
            cache.lengths[s] = stable[s]  # the trees' slots are dropped; the target keeps what it accepts
            tree = trees[s]
            keep = tree_shapes.best_first(tree.score, tree.parents, shape.total_tokens - 1)
            index = {old: new for new, old in enumerate(keep)}
            proposals.append(Proposal([tree.tokens[i] for i in keep],
                                      [index[tree.parents[i]] if tree.parents[i] >= 0 else -1 for i in keep]))
    return proposals
