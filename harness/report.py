"""Tables and plots from a results frame (run folder or collected sweep)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pandas as pd


def write_reports(df: pd.DataFrame, summary: pd.DataFrame, out_dir: Path, cfg: Any = None) -> None:
    if summary is not None and len(summary):
        summary.to_parquet(out_dir / "summary.parquet", index=False)
