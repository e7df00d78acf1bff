"""KV cache ops: a preallocated per-layer buffer with crop and accepted-path gather.

transformers' DynamicLayer concatenates on every update, copying the whole cache each step; here each
layer owns a buffer that grows geometrically, so an update writes only the new slots, crop moves a
length pointer and keeping an accepted tree path is one in-place gather over the verified slots.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers.cache_utils import Cache, DynamicLayer


class BufferLayer(DynamicLayer):
    """One attention layer's keys and values in a [batch, kv_heads, capacity, head_dim] buffer."""

    def __init__(self, capacity: int = 256) -> None:
        super().__init__()
        self.capacity = max(int(capacity), 16)
        self.length = 0
        self._k: torch.Tensor | None = None
        self._v: torch.Tensor | None = None
        # static mode (harness/model/cuda_graphs.py): new keys go to these slots and attention reads the whole
        # buffer, so a forward has the same shapes and addresses every step (what a CUDA graph replays)
        self.slots: torch.Tensor | None = None

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        b, h, _, d = key_states.shape
        self.device = key_states.device
        self._k = key_states.new_empty(b, h, self.capacity, d)
        self._v = value_states.new_empty(b, h, self.capacity, value_states.shape[-1])
        self.length = 0
        self.is_initialized = True

    def _reserve(self, needed: int) -> None:
        if needed <= self.capacity:
            return
        cap = self.capacity
        while cap < needed:
            cap *= 2
        for name in ("_k", "_v"):
            old = getattr(self, name)
            # zeros: the static path attends over the whole buffer, masked slots included (0 x NaN is NaN)
            new = old.new_zeros(old.shape[0], old.shape[1], cap, old.shape[3])
            new[:, :, : self.length] = old[:, :, : self.length]
            setattr(self, name, new)
        self.capacity = cap

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        if self.slots is not None:  # the caller masks the slots a token may not see and advances the length
            self._k.index_copy_(2, self.slots, key_states)
            self._v.index_copy_(2, self.slots, value_states)
            return self._k, self._v
        n = key_states.shape[-2]
        self._reserve(self.length + n)
        self._k[:, :, self.length : self.length + n] = key_states
        self._v[:, :, self.length : self.length + n] = value_states
        self.length += n
        return self.keys, self.values

    @property
    def keys(self) -> torch.Tensor | None:  # type: ignore[override]
        return None if self._k is None else self._k[:, :, : self.length]

    @keys.setter
    def keys(self, value) -> None:  # DynamicLayer.__init__ assigns None
        pass

    @property
    def values(self) -> torch.Tensor | None:  # type: ignore[override]
        return None if self._v is None else self._v[:, :, : self.length]

    @values.setter
    def values(self, value) -> None:
        pass

    def get_seq_length(self) -> int:
        return self.length

    def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
        return self.length + query_length, 0

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative count of tokens to remove")
        self.length = max(0, self.length + tokens_to_remove)

    def truncate(self, length: int) -> None:
        self.length = min(self.length, max(0, int(length)))

    def gather(self, start: int, keep: torch.Tensor) -> None:
        """Keep slots ``start + keep`` (ascending offsets) contiguously from ``start``; drop the rest."""
        src = keep + start
        n = keep.numel()
        self._k[:, :, start : start + n] = self._k.index_select(2, src)
        self._v[:, :, start : start + n] = self._v.index_select(2, src)
        self.length = start + n

    def reset(self) -> None:
        self.length = 0


class KVCache(Cache):
    """A transformers ``Cache`` made of :class:`BufferLayer`; the engine's only KV store."""

    def __init__(self, num_layers: int, capacity: int = 256) -> None:
        super().__init__(layers=[BufferLayer(capacity) for _ in range(num_layers)])

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def length(self) -> int:
        return self.layers[0].length if self.layers else 0

    def truncate(self, length: int) -> None:
        for layer in self.layers:
            layer.truncate(length)

    def keep(self, start: int, offsets: Sequence[int]) -> None:
        """After verifying slots ``start..``, keep only ``start + offsets`` (ascending), contiguously.

        A prefix ``0..m-1`` (a chain, or no acceptance) is a plain crop; anything else is a gather.
        """
        offsets = list(offsets)
        if offsets == list(range(len(offsets))):
            self.truncate(start + len(offsets))
            return
        idx = torch.tensor(offsets, dtype=torch.long)
        on: dict[torch.device, torch.Tensor] = {}  # one copy per device (a model may be split over several)
        with torch.inference_mode():  # the buffers are inference tensors (filled by TargetModel.forward)
            for layer in self.layers:
                if layer._k is not None:
                    dev = layer._k.device
                    layer.gather(start, on.setdefault(dev, idx.to(dev, non_blocking=True)))

    def allocate(self, like: torch.Tensor, kv_heads: int, head_dim: int, value_dim: int | None = None) -> None:
        """Allocate every layer's buffers now (static mode: their addresses must not change later)."""
        for layer in self.layers:
            # zeros, not garbage: a masked slot gets weight 0, and 0 x NaN would still be NaN
            layer._k = like.new_zeros(1, kv_heads, layer.capacity, head_dim)
            layer._v = like.new_zeros(1, kv_heads, layer.capacity, value_dim or head_dim)
            layer.device, layer.length, layer.is_initialized = like.device, 0, True

    def set_slots(self, slots: torch.Tensor | None) -> None:
        for layer in self.layers:
            layer.slots = slots

    def set_length(self, length: int) -> None:
        for layer in self.layers:
            layer.length = int(length)

    def kv(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        lay = self.layers[layer]
        return lay.keys, lay.values
