"""Draft-model chains for every row of a batch: each draft step is one forward of the draft model over all rows.

Each row first feeds what its draft cache has not read yet (a new row's whole prompt runs on its own row: padded
to it, every other row would write as many padding slots), then rows draft token by token, each as long as it
asks; rows with nothing to draft ride along as padding. ``choose(row, logits)`` picks a row's next token from the
draft's logits (argmax, or a draw that also records q). A row's cache then holds its fed tokens and every drafted
token but the last, as a chain drafter's does alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from harness.model.batch_cache import BatchKVCache
from harness.model.batch_forward import forward_rows
from harness.model.target import TargetModel

ALONE = 16  # a feed longer than this runs on its own row


@torch.inference_mode()
def draft_chains(draft: TargetModel, cache: BatchKVCache, feeds: Sequence[Sequence[int]], lengths: Sequence[int],
                 choose: Callable[[int, torch.Tensor], int]) -> list[list[int]]:
    """``lengths[r]`` tokens drafted for each row r of ``cache`` (all its rows), after feeding ``feeds[r]``."""
    rows = range(cache.rows)
    drafted: list[list[int]] = [[] for _ in rows]
    logits: dict[int, torch.Tensor] = {}
    for r in [r for r in rows if len(feeds[r]) > ALONE and lengths[r]]:
        logits[r] = forward_rows(draft, cache, range(r, r + 1), [feeds[r]], [None], last_logits=True)[0].logits[-1]
        cache.keep(r, range(len(feeds[r])))
    short = [r for r in rows if r not in logits and lengths[r]]
    if short:
        outs = forward_rows(draft, cache, rows, [feeds[r] if r in short else [0] for r in rows], [None] * len(rows),
                            last_logits=True)
        for r in short:
            logits[r] = outs[r].logits[-1]
            cache.keep(r, range(len(feeds[r])))
    for step in range(max(lengths, default=0)):
        going = [r for r in rows if lengths[r] > step]
        for r in going:
            drafted[r].append(choose(r, logits[r]))
        feeding = [r for r in going if lengths[r] > step + 1]  # the last token of a chain is not fed
        if not feeding:
            break
        outs = forward_rows(draft, cache, rows, [[drafted[r][-1]] if r in feeding else [0] for r in rows],
                            [None] * len(rows), last_logits=True)
        for r in feeding:
            logits[r] = outs[r].logits[-1]
            cache.keep(r, [0])
    return drafted
