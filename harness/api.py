"""speclab's Python API, and the one path every run takes (``python run.py`` too).

    from harness.api import compose, run
    df = run(compose("method=pld", "task=spec_bench", "task.limit=2"))

:func:`run` times the method beside the baseline (``harness.bench.runner``), then writes the run folder's summary
tables, plots, the image report of image tasks and, with ``logger=wandb``, the wandb log: a run made from Python
leaves the same folder as one made from the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig

from harness.core import config as schemas
from harness.core import presets
from harness.core.presets import as_config
from harness.core.registry import METHODS, TASKS
from harness.core.registry import load_plugins as _load_plugins

PLUGIN_PACKAGES = {"methods": METHODS, "tasks": TASKS}


def load_plugins() -> None:
    """Register the run's schemas and resolvers, then every method and task family (safe to call again)."""
    schemas.register_schemas()
    schemas.register_resolvers()
    _load_plugins(PLUGIN_PACKAGES)


def compose(*overrides: str) -> DictConfig:
    """The config ``python run.py <overrides>`` runs, typed by its schema (without Hydra's own node)."""
    load_plugins()
    return as_config(presets.compose(list(overrides)))


def run(cfg: Any, out_dir: str | Path | None = None) -> pd.DataFrame:
    """Run a config (a DictConfig, a RunConfig or a dict), write its reports, return its results frame.

    ``out_dir`` (else ``cfg.out_dir``, else a folder named by the config under results/runs/) is the run folder.
    """
    from omegaconf import OmegaConf

    from harness.bench.progress import print_summary
    from harness.bench.runner import Runner
    from harness.results.report import write_reports

    load_plugins()
    cfg = as_config(cfg)
    if out_dir is not None:
        OmegaConf.set_readonly(cfg, False)
        cfg.out_dir = str(out_dir)
    runner = Runner(cfg)
    df = runner.run()
    folder = runner.store.dir
    summary = print_summary(df, folder)
    report = write_reports(df, summary, folder, cfg)
    if cfg.task.family == "digits":  # image runs: sample quality beside speed (issue 17)
        from harness.results.image_quality import image_report

        print(image_report([folder]), file=sys.stdout)
    if cfg.logger.name == "wandb":
        from harness.results.wandb_log import log_run

        log_run(df, report, cfg)
    return df
