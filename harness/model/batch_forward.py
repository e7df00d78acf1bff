"""One target forward over several generations at once: each row feeds its own tokens (a prompt, or a root and its
draft tree) on top of its own committed length, in one call of the model.

Rows are padded to the widest; a row's query i sits at position ``length + depth(i)`` and sees the row's committed
slots, its tree ancestors and itself; padding queries see only themselves, and every slot a row has not filled
(another row's longer prefix, stale draft slots) is masked. The linear layers see every row's tokens at once, which
is what batching buys: on a CPU a forward over 8 rows costs little more than over 1 (BENCHMARKS.md, batched
decoding). Row r's logits and hidden states come back as row r's own ForwardOutput.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from harness.model.batch_cache import BatchKVCache
from harness.model.target import ForwardOutput, TargetModel, needs_layers


def unsupported(target: TargetModel) -> str | None:
    """Why ``target`` cannot decode in a batch, or None when it can."""
    if target.guided:
        return "classifier-free guidance already runs two rows per generation"
    if target.sliding_window:
        return "sliding-window layers need a window mask per row"
    if target.model.config._attn_implementation != "speclab":
        return f"model.attention={target.model.config._attn_implementation} (batches use the engine's attention kernel)"
    return None


def new_batch_cache(target: TargetModel, rows: int, capacity: int) -> BatchKVCache:
    return BatchKVCache(target.num_layers, rows, capacity)


Tree = tuple[Sequence[int], torch.Tensor]  # (depth of each input, [n, n] visibility among the inputs)


def row_layout(length: int, n: int, tree: Tree | None, width: int, kv_len: int) -> tuple[list[int], torch.Tensor]:
    """(positions [width], visibility [width, kv_len]) of one row: ``n`` real tokens after ``length`` committed slots
    (causal when ``tree`` is None), padded to ``width``."""
    if tree is None:
        depths, among = list(range(n)), torch.ones(n, n, dtype=torch.bool).tril_()
    else:
        depths, among = list(tree[0]), tree[1]
    visible = torch.zeros(width, kv_len, dtype=torch.bool)
    visible[:n, :length] = True
    visible[:n, length:length + n] = among
    pad = torch.arange(n, width)
    visible[pad, length + pad] = True  # a padding query sees only its own slot: no empty softmax
    return [length + d for d in depths] + [length] * (width - n), visible


@torch.inference_mode()
def forward_rows(target: TargetModel, cache: BatchKVCache, span: range, inputs: Sequence[Sequence[int]],
                 trees: Sequence[Tree | None], hidden_layers: Sequence[int | str] = (),
                 last_logits: bool = False) -> list[ForwardOutput]:
    """Rows ``span`` of ``cache`` each run ``inputs[i]`` (``trees[i]``: each input's depth below the first and their
    visibility among themselves, as the engine's tree arithmetic gives them; None for a causal run such as a
    prefill). The cache holds the new slots after each row's length until :meth:`BatchKVCache.keep`. With
    ``last_logits`` only each row's last input is projected to the vocabulary (a prefill's or a draft step's: the
    head is a large share of a small model's forward)."""
    widths = [len(x) for x in inputs]
    width = max(widths)
    device = target.device
    kv_len = cache.prepare(span, widths, device)
    ids = torch.zeros(len(span), width, dtype=torch.long)
    positions = torch.zeros(len(span), width, dtype=torch.long)
    visible = torch.zeros(len(span), width, kv_len, dtype=torch.bool)
    for i, (row, tokens) in enumerate(zip(span, inputs)):
        ids[i, : len(tokens)] = torch.as_tensor(list(tokens), dtype=torch.long)
        pos, vis = row_layout(cache.lengths[row], len(tokens), trees[i], width, kv_len)
        positions[i] = torch.tensor(pos)
        visible[i] = vis
    mask = torch.zeros(visible.shape, dtype=target.dtype).masked_fill_(~visible, torch.finfo(target.dtype).min)
    mask = mask[:, None]  # [rows, 1, width, kv_len], the additive form attention kernels take
    out = target.backbone(input_ids=ids.to(device, non_blocking=True),
                          position_ids=positions.to(device, non_blocking=True),
                          attention_mask=mask.to(device, non_blocking=True), cache=cache, use_cache=True,
                          output_hidden_states=needs_layers(hidden_layers))
    final = out.last_hidden_state
    projected = [1] * len(widths) if last_logits else widths
    real = torch.cat([final[i, n - m:n] for i, (n, m) in enumerate(zip(widths, projected))])
    logits = target.lm_head(real).float().split(projected)
    results = []
    for i, n in enumerate(widths):
        hidden = {layer: final[i, :n] if layer == "final" else out.hidden_states[layer][i, :n] for layer in hidden_layers}
        results.append(ForwardOutput(logits[i], hidden))
    return results
