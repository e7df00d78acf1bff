"""Timing one generation: the seed it draws with, and the CPU that other processes used while it ran.

On a shared machine another busy process slows multi-row kernels many times over while one-row kernels barely
notice, so every timed generation records that load (``foreign_load``) and the runner warns when it is high.
"""

from __future__ import annotations

import hashlib
import resource
import sys
import time
from dataclasses import dataclass

import torch

from harness.core.hostinfo import LoadMonitor
from harness.engine.decoder import PromptResult
from harness.engine.method import Generator

LOAD_WARNING = 0.25  # cores used by other processes during a timed generation


def derive_seed(seed: int, prompt_id: str, turn: int, repeat: int) -> int:
    """The seed of one generation: the same for every side of a prompt, turn and repeat, on every host."""
    digest = hashlib.sha256(f"{seed}|{prompt_id}|{turn}|{repeat}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass
class Timed:
    """A generation with what was measured around it."""

    result: PromptResult
    foreign_load: float | None
    peak_rss_mb: float


def timed_generate(gen: Generator, prompt_ids: list[int], max_new_tokens: int, seed: int | None) -> Timed:
    """One generation of ``gen`` (seeded when sampling) with the other processes' load meanwhile."""
    rng = torch.Generator().manual_seed(seed) if seed is not None else None
    with LoadMonitor() as mon:
        res = gen.generate(prompt_ids, max_new_tokens, rng)
    return Timed(res, mon.result.foreign_load, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def warn_if_busy(file=sys.stderr) -> None:
    """Before timing: warn when other processes keep the CPU busy (half a second's look)."""
    with LoadMonitor() as mon:
        time.sleep(0.5)
    load = mon.result.foreign_load
    if load is not None and load > LOAD_WARNING:
        file.write(
            f"WARNING: other processes are using {load:.1f} cores; timings taken now are not meaningful "
            "(multi-token kernels slow down far more than 1-token ones under contention)\n"
        )
