"""The verify cost surface c(B, k): the time of one target forward over B rows of k tokens each, on B rows of
committed context, relative to B rows of one token (batched decoding's own step).

Where speculative decoding stops paying under load is read off it: a batch step verifies B x k tokens, and once
the linear layers are past the size at which reading the weights dominates, every drafted token costs a share of a
step, so the tokens a draft wins no longer pay for the width it adds. Measured through the same batched forward
the batch decoder runs (harness/model/batch_forward.py), cached per model, kernel, threads and host like c(k)
(harness/engine/cost_curve.py), and read by the batch-aware draft length (harness/drafting/depth_policy.py).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.core.diskcache import cache_dir, keyed_cache_path, read_keyed, write_keyed
from harness.engine.cost_curve import CACHE_LEN, curve_key
from harness.model.batch_forward import forward_rows, new_batch_cache
from harness.model.device import synchronize
from harness.model.target import TargetModel

BATCHES = (1, 2, 4, 8, 16)
WIDTHS = (1, 2, 3, 4, 6, 8, 11, 16)


@torch.inference_mode()
def measure(target: TargetModel, batches: Sequence[int] = BATCHES, ks: Sequence[int] = WIDTHS,
            cache_len: int = CACHE_LEN, repeats: int = 5, warmup: int = 1, seed: int = 0) -> dict[tuple[int, int], float]:
    """Median milliseconds of one batched forward of B rows x k tokens (a chain each) on ``cache_len`` slots a row.

    Rounds visit every (B, k) once, so drift on a shared machine spreads over the whole surface."""
    g = torch.Generator().manual_seed(seed)
    vocab = target.vocab_size
    caches = {}
    for b in batches:
        cache = new_batch_cache(target, b, cache_len + max(ks) + 1)
        for r in range(b):
            forward_rows(target, cache, range(r, r + 1), [torch.randint(0, vocab, (cache_len,), generator=g).tolist()], [None])
            cache.keep(r, range(cache_len))
        caches[b] = cache
    times: dict[tuple[int, int], list[float]] = {(b, k): [] for b in batches for k in ks}
    for round_ in range(warmup + repeats):
        for b in batches:
            for k in ks:
                inputs = [torch.randint(0, vocab, (k,), generator=g).tolist() for _ in range(b)]
                synchronize(target.device)
                t0 = time.perf_counter()
                forward_rows(target, caches[b], range(b), inputs, [None] * b)
                synchronize(target.device)
                if round_ >= warmup:
                    times[(b, k)].append(time.perf_counter() - t0)
                for r in range(b):
                    caches[b].keep(r, [])  # nothing committed: the next round starts from the same slots
    return {bk: 1e3 * statistics.median(v) for bk, v in times.items()}


def _path(key: dict[str, Any]) -> Path:
    return keyed_cache_path(cache_dir() / "batch_cost", key, f"{key['model']}-")


def surface_key(target: TargetModel, kernel: str, threads: int) -> dict[str, Any]:
    return {**curve_key(target, kernel, threads, CACHE_LEN), "surface": "batch"}


def save(key: dict[str, Any], ms: dict[tuple[int, int], float]) -> Path:
    return write_keyed(_path(key), key, {"ms": [[b, k, v] for (b, k), v in ms.items()], "measured_at": time.time()})


def load(key: dict[str, Any]) -> dict[tuple[int, int], float] | None:
    data = read_keyed(_path(key), key)
    return {(int(b), int(k)): float(v) for b, k, v in data["ms"]} if data else None


def cached_or_measured(target: TargetModel, kernel: str, threads: int, log: Any = None) -> dict[tuple[int, int], float]:
    key = surface_key(target, kernel, threads)
    ms = load(key)
    if ms is None:
        if log is not None:
            log.info("measuring the batch verify cost surface c(B, k) of %s on this machine (once; cached)", target.info.name)
        ms = measure(target)
        save(key, ms)
    return ms


class Surface:
    """Milliseconds of a batched forward of B rows x k tokens, interpolated (and extrapolated along the measured
    edge) from a measured grid; c(B, k) is that over B rows of one token."""

    def __init__(self, ms: dict[tuple[int, int], float]) -> None:
        self.batches = np.array(sorted({b for b, _ in ms}), dtype=float)
        self.ks = np.array(sorted({k for _, k in ms}), dtype=float)
        self.grid = np.array([[ms[(int(b), int(k))] for k in self.ks] for b in self.batches])

    @staticmethod
    def _interp(x: float, xs: np.ndarray, ys: np.ndarray) -> float:
        if x <= xs[-1]:
            return float(np.interp(x, xs, ys))
        slope = (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
        return float(ys[-1] + slope * (x - xs[-1]))

    def ms(self, batch: float, k: float) -> float:
        along_k = np.array([self._interp(k, self.ks, row) for row in self.grid])
        return self._interp(batch, self.batches, along_k)

    def __call__(self, batch: float, k: float) -> float:
        return self.ms(batch, k) / self.ms(batch, 1)
