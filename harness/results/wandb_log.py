"""``logger=wandb``: one run's config, per-prompt table, summary metrics and figures to Weights & Biases.

wandb is an optional extra (``pip install -e ".[wandb]"``) and imported only here. The mode comes from
``logger.mode`` or else ``$WANDB_MODE``; ``offline`` writes everything locally for ``wandb sync`` later.
"""

from __future__ import annotations

import math
import os
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from harness.core.errors import SpeclabError
from harness.results.report import Report
from harness.results.tables import summary_table

# Per-prompt columns worth browsing in the wandb UI (list columns and provenance stay in the parquet).
PROMPT_COLUMNS = (
    "prompt_id", "group", "category", "turn", "repeat", "prompt_tokens", "new_tokens", "steps", "tau",
    "acceptance_rate", "tokens_per_s", "wall_time_s", "draft_time_s", "verify_time_s", "speedup", "speedup_bound",
    "equivalent", "first_divergence", "near_tie", "stop_reason",
)
SUMMARY_METRICS = (
    "speedup", "speedup_total", "speedup_geomean", "speedup_ci_low", "speedup_ci_high", "speedup_bound", "tau",
    "acceptance_rate", "equivalence_rate", "near_ties", "tokens_per_s", "baseline_tokens_per_s",
)


def summary_metrics(summary: pd.DataFrame) -> dict[str, float]:
    """Flat metrics: ``<name>`` for the overall row, ``<group>/<name>`` per group (NaN left out)."""
    out: dict[str, float] = {}
    for row in summary.to_dict("records"):
        prefix = "" if row["group"] == "overall" else f"{row['group']}/"
        for key in SUMMARY_METRICS:
            v = row.get(key)
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                out[prefix + key] = float(v)
    return out


def log_run(df: pd.DataFrame, report: Report, cfg: DictConfig) -> None:
    """Log one finished run; raises SpeclabError (one clear line) when wandb is missing or not set up."""
    try:
        import wandb
    except ImportError:
        raise SpeclabError('logger=wandb needs wandb: pip install -e ".[wandb]" (or use logger=none)') from None
    lg = cfg.logger
    m = df[df.role == "method"]
    method = str(m.method.iloc[0]) if len(m) else cfg.method.name
    run_id = str(df.run_id.iloc[0]) if len(df) else None
    config = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else dict(cfg)
    try:
        run = wandb.init(
            project=lg.project, entity=lg.entity, mode=lg.mode or os.environ.get("WANDB_MODE"),
            name=f"{cfg.task.name}/{cfg.model.name}/{method}-{run_id}", group=f"{cfg.task.name}/{cfg.model.name}",
            job_type="bench", tags=[*lg.tags, method, cfg.task.name, cfg.model.name], config=config,
            dir=None if os.environ.get("WANDB_DIR") else cfg.out_dir, reinit="finish_previous",
        )
    except wandb.errors.UsageError as e:
        raise SpeclabError(f"wandb could not start ({e}); set logger.mode=offline to log locally") from None
    try:
        per_prompt = m[[c for c in PROMPT_COLUMNS if c in m]].astype(object).where(m.notna(), None)
        payload: dict[str, Any] = {"per_prompt": wandb.Table(dataframe=per_prompt.reset_index(drop=True))}
        if len(report.summary):
            scalars = summary_table(report.summary).astype(object).where(summary_table(report.summary).notna(), None)
            payload["summary"] = wandb.Table(dataframe=scalars)
        payload.update({f"figures/{name}": wandb.Image(str(path)) for name, path in report.figures.items()})
        run.log(payload)
        run.summary.update(summary_metrics(report.summary) if len(report.summary) else {})
    finally:
        run.finish()
