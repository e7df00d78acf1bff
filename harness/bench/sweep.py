"""Sweeps (``python run.py -m ...``): warn about launchers that run jobs side by side, and say where a
multirun's results are and how to collect them (a Hydra callback, registered in conf/config.yaml)."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, TextIO

from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

SEQUENTIAL_LAUNCHERS = {"basic"}
SHOW_RUNS = 20  # a long sweep's job list is cut here; collect finds them all anyway


def parallel_launcher_warning(launcher: str | None, exclusive: bool = False) -> str | None:
    """The warning for a launcher that may run jobs side by side on one machine, else None.

    ``exclusive``: the launcher gives every job a whole node (SLURM ``--exclusive``), so timings stand.
    """
    if launcher is None or launcher in SEQUENTIAL_LAUNCHERS or exclusive:
        return None
    return (
        f"WARNING: hydra/launcher={launcher} may run jobs side by side on one machine; their timings "
        "(speedup, tokens/s) are then not comparable. Time with the basic launcher, or on SLURM give each job "
        "a whole node (hydra/launcher=slurm_gpu does); tau and acceptance are unaffected."
    )


def warn_if_parallel(hydra_cfg: Any, file: TextIO | None = None) -> None:
    """Print :func:`parallel_launcher_warning` for a multirun's launcher (``hydra_cfg`` = the ``hydra`` node)."""
    if str(hydra_cfg.mode) not in ("MULTIRUN", "RunMode.MULTIRUN"):
        return
    launcher = hydra_cfg.runtime.choices.get("hydra/launcher")
    extra = OmegaConf.to_container(hydra_cfg.launcher, resolve=False).get("additional_parameters") or {}
    message = parallel_launcher_warning(launcher, bool(extra.get("exclusive")))
    if message:
        print(message, file=file or sys.stderr, flush=True)


def sweep_root(hydra_cfg: DictConfig) -> Path:
    """The part of ``hydra.sweep.dir`` every job shares: up to the first interpolation that may vary per job."""
    raw = str(OmegaConf.to_container(hydra_cfg.sweep, resolve=False)["dir"])
    if "${" not in raw:
        return Path(raw)
    head = raw.split("${", 1)[0]
    if not os.path.dirname(head):  # nothing fixed to search under: take the master config's resolution
        return Path(str(hydra_cfg.sweep.dir))
    return Path(head if head.endswith(("/", os.sep)) else os.path.dirname(head))


def finished_jobs(root: Path, since: float) -> list[Path]:
    """Job folders under ``root`` that Hydra started after ``since`` and that hold results.

    Hydra rewrites a job's ``.hydra/config.yaml`` at every start, so resumed (already complete) jobs count too.
    """
    jobs = [p.parent for p in root.rglob("results.parquet") if (p.parent / ".hydra" / "config.yaml").is_file()]
    return sorted(j for j in jobs if (j / ".hydra" / "config.yaml").stat().st_mtime >= since)


class SweepCallback(Callback):
    """Warn at the start of a parallel multirun; at its end list the jobs' folders and the collect command."""

    def __init__(self, file: TextIO | None = None) -> None:
        self.file = file
        self.start = time.time()

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.start = time.time() - 1.0  # file times can be coarser than the clock
        warn_if_parallel(config.hydra, self.file)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        out = self.file or sys.stdout
        jobs = finished_jobs(sweep_root(config.hydra), self.start)
        if not jobs:
            print("sweep: no job wrote results", file=out)
            return
        print(f"sweep: {len(jobs)} run{'' if len(jobs) == 1 else 's'} with results", file=out)
        for job in jobs[:SHOW_RUNS]:
            print(f"  {job / 'results.parquet'}", file=out)
        if len(jobs) > SHOW_RUNS:
            print(f"  ... and {len(jobs) - SHOW_RUNS} more", file=out)
        common = jobs[0].parent if len(jobs) == 1 else Path(os.path.commonpath([str(j) for j in jobs]))
        print(f"collect: python scripts/collect.py {common}", file=out, flush=True)
