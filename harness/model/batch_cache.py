"""The KV cache of a batch of generations: one [rows, kv_heads, capacity, head_dim] buffer per layer, a length per
row, and forwards over any contiguous range of rows.

Rows are ragged: each has its own committed length, so a forward writes row r's new tokens at slots
``length[r] ..`` (one scatter per layer) and attends over the range's longest row, with a mask that hides every
slot a row has not filled (harness/model/batch_forward.py builds it). Rejected draft tokens are dropped per row: an
accepted chain is a length update, a tree path one gather inside the row. The active rows are kept as a prefix of
the buffer: a finished row's slot is taken by the last active row (:meth:`move_row`), so a forward over the active
rows reads a view, never a copy; SMC-SD's resampling copies whole rows (:meth:`copy_rows`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer


class BatchBufferLayer(DynamicLayer):
    """One attention layer's keys and values for every row of a batch."""

    def __init__(self, rows: int, capacity: int) -> None:
        super().__init__()
        self.rows, self.capacity = rows, capacity
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        # set by the cache before each forward: the row range it covers and where each row's new tokens go
        self.span = range(0)
        self.write: torch.Tensor | None = None  # [rows in span, width] slot of each new token
        self.kv_len = 0
        self.past = 0  # the span's longest committed row: what a forward's positions start after at most

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        _, h, _, d = key_states.shape
        # zeros: a masked slot gets weight 0, and 0 x NaN would still be NaN
        self._k = key_states.new_zeros(self.rows, h, self.capacity, d)
        self._v = value_states.new_zeros(self.rows, h, self.capacity, value_states.shape[-1])
        self.device = key_states.device
        self.is_initialized = True

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        rows = slice(self.span.start, self.span.stop)
        k, v = self._k[rows], self._v[rows]
        index = self.write[:, None, :, None]
        k.scatter_(2, index.expand(-1, k.shape[1], -1, k.shape[3]), key_states)
        v.scatter_(2, index.expand(-1, v.shape[1], -1, v.shape[3]), value_states)
        return k[:, :, : self.kv_len], v[:, :, : self.kv_len]

    def get_seq_length(self) -> int:
        return self.past

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.kv_len, 0


class BatchKVCache(Cache):
    """The engine's KV store for ``rows`` generations decoded together; ``lengths[r]`` slots of row r are committed."""

    def __init__(self, num_layers: int, rows: int, capacity: int) -> None:
        super().__init__(layers=[BatchBufferLayer(rows, capacity) for _ in range(num_layers)])
        self.rows, self.capacity = rows, capacity
        self.lengths = [0] * rows

    def __len__(self) -> int:
        return len(self.layers)

    def prepare(self, span: range, widths: Sequence[int], device: torch.device) -> int:
        """Before a forward over rows ``span`` with up to ``max(widths)`` new tokens each: where they go. Returns the
        slots the forward attends over (the range's longest committed row plus the width)."""
        width = max(widths)
        start = torch.tensor([self.lengths[r] for r in span], dtype=torch.long)
        need = int(start.max()) + width
        if need > self.capacity:
            raise ValueError(f"a batch forward needs {need} slots; the batch cache holds {self.capacity}")
        write = (start[:, None] + torch.arange(width)[None, :]).to(device, non_blocking=True)
        for layer in self.layers:
            layer.span, layer.write, layer.kv_len, layer.past = span, write, need, need - width
        return need

    @torch.inference_mode()  # the buffers are inference tensors (filled by forwards)
    def keep(self, row: int, offsets: Sequence[int]) -> None:
        """After verifying row ``row``'s new slots, keep only ``length + offsets`` (ascending) and commit them."""
        start, offsets = self.lengths[row], list(offsets)
        if offsets != list(range(len(offsets))):  # a tree path: gather it to the front (a chain is a length update)
            idx = torch.tensor(offsets, dtype=torch.long) + start
            for layer in self.layers:
                if layer._k is not None:
                    src = idx.to(layer._k.device)
                    layer._k[row, :, start:start + len(offsets)] = layer._k[row].index_select(1, src)
                    layer._v[row, :, start:start + len(offsets)] = layer._v[row].index_select(1, src)
        self.lengths[row] = start + len(offsets)

    @torch.inference_mode()  # the buffers are inference tensors (filled by forwards)
    def move_row(self, src: int, dst: int) -> None:
        """Row ``src``'s committed slots become row ``dst``'s (a finished row's slot taken by the last active one)."""
        n = self.lengths[src]
        for layer in self.layers:
            if layer._k is not None and src != dst:
                layer._k[dst, :, :n] = layer._k[src, :, :n]
                layer._v[dst, :, :n] = layer._v[src, :, :n]
        self.lengths[dst] = n

    @torch.inference_mode()  # the buffers are inference tensors (filled by forwards)
    def copy_rows(self, src: Sequence[int], dst: Sequence[int]) -> None:
        """Rows ``dst[i]`` become copies of rows ``src[i]`` (all at once: a row may be copied over and from)."""
        if not len(dst):
            return
        n = max(self.lengths[s] for s in src)
        for layer in self.layers:
            if layer._k is not None:
                s = torch.tensor(list(src), device=layer._k.device)
                d = torch.tensor(list(dst), device=layer._k.device)
                layer._k[d, :, :n] = layer._k[s, :, :n]
                layer._v[d, :, :n] = layer._v[s, :, :n]
        lengths = [self.lengths[s] for s in src]
        for d, n in zip(dst, lengths):
            self.lengths[d] = n

    def reset_row(self, row: int) -> None:
        self.lengths[row] = 0
