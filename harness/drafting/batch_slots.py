"""A drafter's own KV cache for the rows of a batch: one batched buffer, a slot per generation.

Batched decoding keeps its active rows a prefix of the target's cache and moves them as rows finish; a drafter that
keeps a cache of its own (a draft model, an EAGLE head) cannot follow those moves, so each of its generations holds
a slot instead: given when the generation first drafts, kept while it is in the batch, reset and given to the next
one when it has left. A forward covers every slot; the slots of no live generation ride along as padding.
"""

from __future__ import annotations

from typing import Any

from harness.model.batch_cache import BatchKVCache


class SlotCache:
    def __init__(self, num_layers: int, rows: int, capacity: int) -> None:
        self.num_layers = num_layers
        self.cache = BatchKVCache(num_layers, rows, capacity)
        self.slots: dict[object, int] = {}  # a generation (the drafter's ``generation`` token) -> its slot

    @property
    def rows(self) -> int:
        return self.cache.rows

    def assign(self, drafters: list[Any], capacity: int) -> list[int]:
        """Each drafter's slot: kept while it is in the batch, freed when it has left, given to newcomers."""
        live = {d.generation for d in drafters}
        for key in [k for k in self.slots if k not in live]:  # a generation that has ended: its slot is padding
            self.cache.reset_row(self.slots.pop(key))
        free = sorted(set(range(self.cache.rows)) - set(self.slots.values()))
        for d in drafters:
            if d.generation not in self.slots:
                self.slots[d.generation] = free.pop(0)
                self.cache.reset_row(self.slots[d.generation])
        if capacity > self.cache.capacity:  # a longer prompt than the batch started with: a larger buffer
            self._grow(capacity)
        return [self.slots[d.generation] for d in drafters]

    def _grow(self, capacity: int) -> None:
        old = self.cache
        self.cache = BatchKVCache(self.num_layers, old.rows, capacity)
        self.cache.lengths = list(old.lengths)
        for layer, new in zip(old.layers, self.cache.layers):
            if layer._k is not None:
                new._k = layer._k.new_zeros(layer._k.shape[0], layer._k.shape[1], capacity, layer._k.shape[3])
                new._v = layer._v.new_zeros(layer._v.shape[0], layer._v.shape[1], capacity, layer._v.shape[3])
                new._k[:, :, : old.capacity] = layer._k
                new._v[:, :, : old.capacity] = layer._v
                new.device, new.is_initialized = layer.device, True


def slot_cache_for(holder: Any, attribute: str, num_layers: int, rows: int, capacity: int) -> SlotCache:
    """``holder``'s slot cache (made on first use, remade larger for a larger batch)."""
    cache = getattr(holder, attribute, None)
    if cache is None or cache.rows < rows:
        cache = SlotCache(num_layers, rows, capacity)
        setattr(holder, attribute, cache)
    return cache
