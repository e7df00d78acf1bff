"""Which linear kernel ``engine.kernel=auto`` means on this host, from a timing of the model's own 1-token step."""

from __future__ import annotations

import torch

from harness.model.kernels import OneDNNLinear

SLOW_ONE_ROW = 1.1  # oneDNN's 1-token step this much slower than MKL's: the engine's ar is a handicapped baseline


CHECK_PARAMS = 50_000_000  # below this a 1-token step is too short to time reliably (tiny test models)


def one_row_ratio(target, repeats: int = 8, cache_len: int = 64) -> float:
    """Time of a 1-token forward through oneDNN's padded kernel over the same forward through torch's ``F.linear``
    (MKL's sgemv) on the same weights, the median of ``repeats`` interleaved pairs. Measured once per host, model,
    dtype, threads and torch version, then cached."""
    import statistics
    import time

    from harness.core import hostinfo
    from harness.core.diskcache import cache_dir, keyed_cache_path, read_keyed, write_keyed

    key = {"weights_hash": target.info.weights_hash, "dtype": target.info.dtype, "threads": torch.get_num_threads(),
           "host": hostinfo.hardware()["host"], "cpu": hostinfo.cpu_model(), "torch": torch.__version__}
    path = keyed_cache_path(cache_dir() / "kernel_check", key)
    cached = read_keyed(path, key)
    if cached:
        return float(cached["ratio"])
    linears = [m for m in target.model.modules() if isinstance(m, OneDNNLinear)]
    cache = target.new_cache(cache_len + 2)
    target.forward(cache, list(range(3, 3 + cache_len)), logits_rows=[-1])
    times: dict[int, list[float]] = {0: [], 1: []}
    try:
        for _ in range(repeats + 1):  # the first pair warms both paths up
            for rows in (0, 1):
                for m in linears:
                    m.mkl_rows = rows
                t0 = time.perf_counter()
                target.forward(cache, [7])
                times[rows].append(time.perf_counter() - t0)
                cache.truncate(cache_len)
    finally:
        for m in linears:
            m.mkl_rows = 0
    ratio = statistics.median(times[0][1:]) / statistics.median(times[1][1:])
    write_keyed(path, key, {"ratio": ratio})
    return ratio


def warn_if_slow_one_row(target, kernel: str, log) -> float | None:
    """With the oneDNN kernel on a real model, warn when its 1-token step is slower than MKL's here: every speedup
    over the engine's ``ar`` then overstates what this host gains (BENCHMARKS.md section 11)."""
    if kernel != "onednn" or target.info.num_params < CHECK_PARAMS:
        return None
    ratio = one_row_ratio(target)
    if ratio > SLOW_ONE_ROW:
        log.warning("on this host oneDNN's 1-token step takes %.2fx MKL's: the engine's ar (engine.kernel=onednn) is "
                    "slower than plain transformers, so speedups over it overstate; run with engine.kernel=hybrid, or "
                    "add compare=[hf_compiled] to see speedup_vs_hf_compiled (BENCHMARKS.md section 11)", ratio)
    return ratio
