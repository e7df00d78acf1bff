"""Which linear kernel the target runs on this host.

``engine.kernel=auto`` times the model's own 1-token step through oneDNN's padded kernel and through MKL's sgemv
(torch's ``F.linear``) and takes oneDNN where it is not slower, else the hybrid kernel (MKL for the 1-token step,
oneDNN for verification; harness/model/kernels.py). The autoregressive baseline is every speedup's denominator, so
its step must be as fast as plain transformers' on every host: on an Intel Xeon without AMX oneDNN's padded step
took 1.20x MKL's, and speedups over it overstated what the host gains (BENCHMARKS.md section 11). The timing is
taken once per host, model, dtype, threads and torch version, then cached; rows record the choice and both times.

An explicit ``engine.kernel=onednn`` is run as asked, with a warning when its 1-token step is the slower one.
"""

from __future__ import annotations

import statistics
import time
from dataclasses import dataclass
from typing import Any

import torch

from harness.core import hostinfo
from harness.core.diskcache import cache_dir, keyed_cache_path, read_keyed, write_keyed
from harness.model.kernels import OneDNNLinear, apply_kernel, resolve_kernel

BUSY = 0.25  # cores other processes used while timing: above this the timing is used for this run but not cached
NOT_SLOWER = 1.02  # oneDNN's 1-token step within this of MKL's counts as not slower (the timing's own spread)
SLOW_ONE_ROW = 1.1  # an explicit onednn kernel this much slower than MKL's at one token is warned about
CHECK_PARAMS = 50_000_000  # below this a 1-token step is too short to time reliably (tiny test models)


@dataclass
class KernelChoice:
    kernel: str  # what the target runs: onednn | hybrid | torch
    onednn_ms: float | None = None  # the model's 1-token step through oneDNN's padded kernel, when timed
    mkl_ms: float | None = None  # the same step through MKL's sgemv

    def row_fields(self) -> dict[str, Any]:
        return {"kernel_onednn_ms": self.onednn_ms, "kernel_mkl_ms": self.mkl_ms}


def _set_mkl_rows(target: Any, rows: int) -> None:
    for m in target.model.modules():
        if isinstance(m, OneDNNLinear):
            m.mkl_rows = rows


def one_row_times(target: Any, repeats: int = 8, cache_len: int = 64) -> tuple[float, float]:
    """Milliseconds of a 1-token forward through oneDNN's padded kernel and through MKL's sgemv on the same weights
    (the target's linears must be oneDNN's), the medians of ``repeats`` interleaved pairs; cached per host."""
    key = {"weights_hash": target.info.weights_hash, "dtype": target.info.dtype, "threads": torch.get_num_threads(),
           "host": hostinfo.hardware()["host"], "cpu": hostinfo.cpu_model(), "torch": torch.__version__}
    path = keyed_cache_path(cache_dir() / "kernel_timing", key)
    cached = read_keyed(path, key)
    if cached:
        return float(cached["onednn_ms"]), float(cached["mkl_ms"])
    cache = target.new_cache(cache_len + 2)
    target.forward(cache, list(range(3, 3 + cache_len)), logits_rows=[-1])
    times: dict[int, list[float]] = {0: [], 1: []}
    try:
        with hostinfo.LoadMonitor() as monitor:
            for _ in range(repeats + 1):  # the first pair warms both paths up
                for rows in (0, 1):
                    _set_mkl_rows(target, rows)
                    t0 = time.perf_counter()
                    target.forward(cache, [7])
                    times[rows].append(time.perf_counter() - t0)
                    cache.truncate(cache_len)
    finally:
        _set_mkl_rows(target, 0)
    onednn_ms, mkl_ms = (1e3 * statistics.median(times[r][1:]) for r in (0, 1))
    load = monitor.result.foreign_load
    if load is None or load <= BUSY:  # a busy machine's timing decides this run only (None: too short to tell)
        write_keyed(path, key, {"onednn_ms": onednn_ms, "mkl_ms": mkl_ms})
    return onednn_ms, mkl_ms


def choose_kernel(target: Any, requested: str, log: Any) -> KernelChoice:
    """Apply the kernel ``engine.kernel=requested`` means on this host to the target's linears; returns the choice."""
    resolved = resolve_kernel(requested, target.dtype, target.device)
    timed = resolved == "onednn" and target.info.num_params >= CHECK_PARAMS
    apply_kernel(target.model, resolved)
    if not timed:
        return KernelChoice(resolved)
    onednn_ms, mkl_ms = one_row_times(target)
    ratio = onednn_ms / mkl_ms
    if requested == "auto":
        kernel = "onednn" if ratio <= NOT_SLOWER else "hybrid"
        if kernel == "hybrid":
            _set_mkl_rows(target, 1)
        log.info("engine.kernel=auto: %s (the 1-token step takes %.1f ms through oneDNN, %.1f ms through MKL)",
                 kernel, onednn_ms, mkl_ms)
        return KernelChoice(kernel, onednn_ms, mkl_ms)
    if ratio > SLOW_ONE_ROW:
        log.warning("on this host oneDNN's 1-token step takes %.2fx MKL's: the engine's ar (engine.kernel=onednn) is "
                    "slower than plain transformers, so speedups over it overstate; run with engine.kernel=auto (or "
                    "hybrid), or add compare=[hf_compiled] to see speedup_vs_hf_compiled (BENCHMARKS.md section 11)",
                    ratio)
    return KernelChoice(resolved, onednn_ms, mkl_ms)
