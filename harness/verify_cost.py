"""The verify cost curve c(k): time of one target forward over k tokens on top of a cache, relative to k = 1.

Measured through the same :meth:`TargetModel.forward` calls the decoder makes (a root plus a chain of
k - 1 draft tokens with its tree mask), so it prices exactly what a verification step costs in this
engine. Measurements are cached per model weights, dtype, attention, kernel, threads, host and torch
version; the runner reads the matching one to report each method's speedup bound:

    bound = (P + n - 1) / (P + sum_steps c(1 + drafted_step) + D)

with n new tokens, P the prefill and D the drafting time in units of a 1-token step: autoregressive
decoding costs P + n - 1 such steps, and a speculative run at least the denominator.
"""

from __future__ import annotations

import hashlib
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import hostinfo
from . import tree as T
from .loading import cache_dir
from .model import TargetModel

CACHE_LEN = 256  # the cache length c(k) is measured at (stated with every curve)


def curve_key(target: TargetModel, kernel: str, threads: int, cache_len: int) -> dict[str, Any]:
    info = target.info
    return {
        "model": info.name, "weights_hash": info.weights_hash, "dtype": info.dtype,
        "attention": target.model.config._attn_implementation, "kernel": kernel, "threads": threads,
        "host": hostinfo.hardware()["host"], "cpu": hostinfo.cpu_model(), "torch": hostinfo.versions().get("torch"),
        "omp_wait_policy": hostinfo.hardware()["omp_wait_policy"], "cache_len": cache_len,
    }


def _path(key: dict[str, Any]) -> Path:
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return cache_dir() / "verify_cost" / f"{key['model']}-{digest}.json"


@torch.inference_mode()
def measure(target: TargetModel, ks: Sequence[int] = tuple(range(1, 33)), cache_len: int = CACHE_LEN, repeats: int = 10,
            warmup: int = 2, seed: int = 0) -> dict[int, float]:
    """Median milliseconds of one verification forward over k tokens, for each k.

    Rounds visit every k once, so drift on a shared machine spreads over all k instead of biasing some.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = target.vocab_size
    cache = target.new_cache(cache_len + max(ks) + 1)
    target.forward(cache, torch.randint(0, vocab, (cache_len,), generator=g).tolist(), logits_rows=[-1])
    inputs = {k: torch.randint(0, vocab, (k,), generator=g).tolist() for k in ks}
    times: dict[int, list[float]] = {k: [] for k in ks}
    for round_ in range(warmup + repeats):
        for k in ks:
            parents = T.chain_parents(k - 1)
            t0 = time.perf_counter()
            if k == 1:
                target.forward(cache, inputs[k])
            else:
                target.forward(cache, inputs[k], positions=T.positions(parents, cache_len), tree=T.ancestor_mask(parents))
            dt = time.perf_counter() - t0
            cache.truncate(cache_len)
            if round_ >= warmup:
                times[k].append(dt)
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def save(key: dict[str, Any], ms: dict[int, float]) -> Path:
    path = _path(key)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, "ms": {str(k): v for k, v in ms.items()}, "measured_at": time.time()}, indent=1))
    return path


def load(key: dict[str, Any]) -> dict[int, float] | None:
    path = _path(key)
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {int(k): v for k, v in data["ms"].items()} if data.get("key") == key else None


class Curve:
    """c(k) from measured milliseconds, linearly interpolated (and extrapolated past the largest k)."""

    def __init__(self, ms: dict[int, float]) -> None:
        self.k = np.array(sorted(ms), dtype=float)
        self.ms = np.array([ms[int(k)] for k in self.k])
        self.t1 = float(ms[1])

    def __call__(self, k: float) -> float:
        if k <= self.k[-1]:
            return float(np.interp(k, self.k, self.ms)) / self.t1
        slope = (self.ms[-1] - self.ms[-2]) / (self.k[-1] - self.k[-2])
        return float(self.ms[-1] + slope * (k - self.k[-1])) / self.t1

    def bound(self, new_tokens: int, drafted_per_step: Sequence[int], prefill_s: float, draft_s: float) -> float:
        t1 = self.t1 / 1e3
        prefill = prefill_s / t1
        cost = prefill + sum(self(1 + d) for d in drafted_per_step) + draft_s / t1
        return (prefill + new_tokens - 1) / cost if cost > 0 else float("nan")
