"""The verify cost curve c(k): time of one target forward over k tokens on top of a cache, relative to k = 1.

Measured through the same :meth:`TargetModel.forward` calls the decoder makes (a root plus a chain of
k - 1 draft tokens with its tree mask), so it prices exactly what a verification step costs in this
engine. Measurements are cached per model weights, dtype, attention, kernel, threads, host and torch
version; the runner reads the matching one to bound each engine method's speedup (README, "Definitions")
by the least time its run could take:

    min_time = P + F * sum over its decode steps of c(1 + drafted_step)

with P the method's own prefill and F the paired baseline's measured forward time per decode step: every
step at least one verification forward, drafting free, no loop overhead.
"""

from __future__ import annotations

import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from harness.core import hostinfo
from harness.core.diskcache import cache_dir, keyed_cache_path, read_keyed, write_keyed
from harness.engine import tree as T
from harness.model.device import synchronize
from harness.model.target import TargetModel

CACHE_LEN = 256  # the cache length c(k) is measured at (stated with every curve)


def curve_key(target: TargetModel, kernel: str, threads: int, cache_len: int) -> dict[str, Any]:
    info = target.info
    return {
        "model": info.name, "weights_hash": info.weights_hash, "dtype": info.dtype,
        "attention": target.model.config._attn_implementation, "kernel": kernel, "threads": threads,
        "host": hostinfo.hardware()["host"], "cpu": hostinfo.cpu_model(), "torch": hostinfo.versions().get("torch"),
        "omp_wait_policy": hostinfo.hardware()["omp_wait_policy"], "cache_len": cache_len,
        **({"rows": 2} if target.guided else {}),  # classifier-free guidance runs two rows a forward
        **({"gpu": hostinfo.hardware()["gpu"]} if target.device.type == "cuda" else {}),
        **({"static": "captured" if target.static.capture else "uncaptured"} if target.static is not None else {}),
    }


def _guided(row: Any) -> bool:
    g = row.get("guidance") if hasattr(row, "get") else None
    return g is not None and g == g and float(g) != 1.0  # absent, NaN (rows from before the column) or 1: unguided


def curve_key_fields(row: Any, attention: str, cache_len: int = CACHE_LEN) -> dict[str, Any]:
    """The key of the curve that prices a results row (its model, engine and host; ``attention`` from its config)."""
    versions = row["versions"]
    versions = json.loads(versions) if isinstance(versions, str) else versions
    return {
        "model": row["model"], "weights_hash": row["weights_hash"], "dtype": row["dtype"], "attention": attention,
        "kernel": row["kernel"], "threads": int(row["threads"]), "host": row["host"], "cpu": row["cpu"],
        "torch": versions.get("torch"), "omp_wait_policy": row["omp_wait_policy"], "cache_len": cache_len,
        **({"rows": 2} if _guided(row) else {}),
        **({"gpu": row["gpu"]} if str(row.get("device", "cpu")).startswith("cuda") else {}),
        **({"static": row["cuda_graphs"]} if isinstance(row.get("cuda_graphs"), str) and row["cuda_graphs"] != "off" else {}),
    }


def _path(key: dict[str, Any]) -> Path:
    return keyed_cache_path(cache_dir() / "verify_cost", key, f"{key['model']}-")


@torch.inference_mode()
def measure(target: TargetModel, ks: Sequence[int] = tuple(range(1, 33)), cache_len: int = CACHE_LEN, repeats: int = 10,
            warmup: int = 2, seed: int = 0, text: Sequence[int] | None = None,
            experts: dict[int, float] | None = None) -> dict[int, float]:
    """Median milliseconds of one verification forward over k tokens, for each k.

    Rounds visit every k once, so drift on a shared machine spreads over all k instead of biasing some.
    Tokens are random unless ``text`` (token ids) is given: then the cache holds its first ``cache_len`` tokens
    and each round verifies the next k tokens from a different offset, as a draft of real text would be (an
    MoE target routes real text less diversely than random ids). On an MoE target ``experts``, if given, gets
    the mean distinct experts per layer of the k-token forwards.
    """
    g = torch.Generator().manual_seed(seed)
    vocab = target.vocab_size
    rounds = warmup + repeats
    if text is not None and len(text) < cache_len + max(ks) + rounds:
        raise ValueError(f"text has {len(text)} tokens; measuring needs {cache_len + max(ks) + rounds}")
    cache = target.new_cache(cache_len + max(ks) + 1)
    prefix = list(text[:cache_len]) if text is not None else torch.randint(0, vocab, (cache_len,), generator=g).tolist()
    target.forward(cache, prefix, logits_rows=[-1])
    random_inputs = {k: torch.randint(0, vocab, (k,), generator=g).tolist() for k in ks}
    times: dict[int, list[float]] = {k: [] for k in ks}
    seen: dict[int, list[float]] = {k: [] for k in ks}
    counter = target.experts if experts is not None else None
    for round_ in range(rounds):
        for k in ks:
            inputs = random_inputs[k] if text is None else list(text[cache_len + round_ : cache_len + round_ + k])
            parents = T.chain_parents(k - 1)
            if counter is not None:
                counter.reset()
            synchronize(target.device)
            t0 = time.perf_counter()
            if k == 1:
                target.forward(cache, inputs)
            else:
                target.forward(cache, inputs, positions=T.positions(parents, cache_len), tree=T.ancestor_mask(parents))
            synchronize(target.device)
            dt = time.perf_counter() - t0
            cache.truncate(cache_len)
            if round_ >= warmup:
                times[k].append(dt)
                if counter is not None:
                    seen[k].append(counter.mean_distinct())
    if counter is not None:
        experts.update({k: statistics.mean(v) for k, v in seen.items()})
    return {k: 1e3 * statistics.median(v) for k, v in times.items()}


def save(key: dict[str, Any], ms: dict[int, float]) -> Path:
    return write_keyed(_path(key), key, {"ms": {str(k): v for k, v in ms.items()}, "measured_at": time.time()})


def load(key: dict[str, Any]) -> dict[int, float] | None:
    data = read_keyed(_path(key), key)
    return {int(k): v for k, v in data["ms"].items()} if data else None


def cached_or_measured(target: TargetModel, kernel: str, threads: int, log: Any = None) -> dict[int, float]:
    """This machine's curve for ``target``: the cached one, else measured now (a minute or two on a real model)
    and cached for every later run."""
    key = curve_key(target, kernel, threads, CACHE_LEN)
    ms = load(key)
    if ms is None:
        if log is not None:
            log.info("measuring the verify cost curve c(k) of %s on this machine (once; cached)", target.info.name)
        ms = measure(target, cache_len=CACHE_LEN)
        save(key, ms)
    return ms


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

    def min_time(self, prefill_s: float, drafted_per_step: Sequence[int], forward_s: float) -> float:
        """Seconds: ``prefill_s`` plus, per decode step, c(1 + drafted) x ``forward_s`` (a 1-token forward)."""
        return prefill_s + forward_s * sum(self(1 + d) for d in drafted_per_step)


def speedup_bound(curve: Curve, prefill_s: float, drafted: Sequence[int], new_tokens: int,
                  b_steps: int, b_verify_s: float, b_tokens_per_s: float | None) -> dict[str, float | None]:
    """The verify-cost bound of one method generation against its paired baseline (README, "Definitions").

    min_time_s: the least time the method could have taken: its own prefill, then per step c(1 + drafted)
    times the baseline's forward time per decode step (its verify time), with free drafting and no overhead.
    speedup_bound: the speedup that time would give, over the baseline's whole measured time.
    """
    if (len(drafted) and b_steps < 2) or not b_tokens_per_s:
        return {"min_time_s": None, "speedup_bound": None}  # no baseline decode step to price the method's
    forward_s = b_verify_s / (b_steps - 1) if b_steps > 1 else 0.0
    min_time = curve.min_time(prefill_s, drafted, forward_s)
    return {"min_time_s": min_time, "speedup_bound": new_tokens / min_time / b_tokens_per_s}
