"""Provenance (code version, packages, hardware) and a monitor of other processes' CPU use while timing.

On a shared 2-core machine another busy process can slow multi-row matrix kernels many times over (OpenMP
threads spin-waiting on a shared core) while one-row kernels barely notice, so a speedup measured under
load is meaningless. Every timed generation records the share of the machine's CPU that other processes
used meanwhile, and the runner warns when it is high.
"""

from __future__ import annotations

import functools
import hashlib
import os
import platform
import subprocess
import time
from dataclasses import dataclass

from harness.core.config import REPO


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


@functools.lru_cache(maxsize=1)
def git_sha() -> str:
    try:
        sha = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True, timeout=5)
        dirty = subprocess.run(["git", "-C", str(REPO), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True, timeout=5)
        if sha.returncode != 0:
            return "unknown"
        return sha.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


@functools.lru_cache(maxsize=None)
def source_hash(*paths: str) -> str:
    """sha256 over the Python sources at ``paths`` (repository-relative files, or every .py below a folder).

    Unlike the git sha it changes with uncommitted edits and only with the files named, so it says which code
    a measurement was taken with. Hashed once per process: the code that runs is the code that was loaded.
    """
    files = sorted({f for p in paths for f in ([REPO / p] if (REPO / p).is_file() else (REPO / p).rglob("*.py"))})
    h = hashlib.sha256()
    for f in files:
        h.update(str(f.relative_to(REPO)).encode())
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": platform.python_version()}
    for pkg in ("torch", "transformers", "hydra-core", "numpy"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def hardware() -> dict[str, object]:
    return {"host": platform.node(), "cpu": cpu_model(), "cpu_count": os.cpu_count() or 1, "gpu": _gpu_name(),
            "omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "default")}


def _gpu_name() -> str | None:
    try:
        import torch

        return torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    except Exception:  # a broken CUDA install should not stop a CPU run
        return None


def _machine_busy_seconds() -> float | None:
    """Busy CPU-seconds of the whole machine since boot (all cores), from /proc/stat."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()[1:]
    except OSError:
        return None
    ticks = [int(x) for x in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    return (sum(ticks[:8]) - idle) / os.sysconf("SC_CLK_TCK")


def _own_cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system + t.children_user + t.children_system


@dataclass
class LoadSample:
    foreign_load: float | None  # other processes' CPU-seconds per second of wall time, in cores


class LoadMonitor:
    """``with LoadMonitor() as m: ...`` then ``m.result.foreign_load``: cores used by other processes."""

    def __enter__(self) -> "LoadMonitor":
        self._wall = time.perf_counter()
        self._busy = _machine_busy_seconds()
        self._own = _own_cpu_seconds()
        return self

    def __exit__(self, *exc) -> None:
        wall = time.perf_counter() - self._wall
        busy = _machine_busy_seconds()
        if busy is None or self._busy is None or wall <= 0.05:
            self.result = LoadSample(None)
            return
        foreign = (busy - self._busy) - (_own_cpu_seconds() - self._own)
        self.result = LoadSample(max(0.0, foreign / wall))
