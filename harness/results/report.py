"""A run folder's reports: the summary as tables (parquet, CSV, markdown, LaTeX) and the standard plots."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from harness.results.figures import figures, save_figures
from harness.results.tables import CAPTION, summarize_frame, summary_table, write_table


@dataclass
class Report:
    """What :func:`write_reports` and ``scripts/collect.py`` wrote."""

    summary: pd.DataFrame
    tables: list[Path] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)


# -- the run folder -----------------------------------------------------------------------------------
def write_reports(df: pd.DataFrame, summary: pd.DataFrame | None, out_dir: Path, cfg: Any = None) -> Report:
    """Summary (parquet, CSV, markdown, LaTeX) and the standard PNGs of one run, into its folder.

    ``summary`` is the CLI's :func:`metrics.summarize` of ``df`` (recomputed when empty); ``cfg`` is accepted
    for the CLI's call but unused: every number and label is read from the frame.
    """
    out_dir = Path(out_dir)
    if df.empty or not (df.role == "method").any():
        return Report(pd.DataFrame())
    # the CLI's summary is empty for baseline=none runs; tau, acceptance and the plots still apply
    summary = summary if summary is not None and len(summary) else summarize_frame(df)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary.to_parquet(out_dir / "summary.parquet", index=False)
    tables = write_table(summary_table(summary), out_dir / "summary", caption=CAPTION)
    return Report(summary, tables, save_figures(figures(df, summary), out_dir))
