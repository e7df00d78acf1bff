#!/usr/bin/env python
"""Merge a sweep's runs into one frame and write its leaderboard, summary, heatmap and plots.

    python scripts/collect.py results/multirun/spec_bench/smollm2-135m [--out DIR]

Every run folder under SWEEP_DIR (Hydra's multirun layout ``<sweep dir>/<method>-<hash>/``, or any
nesting of them; finished, under way or killed, see harness/results/store.py) is merged into
``DIR/collected.parquet`` (default DIR: SWEEP_DIR/collected), with a ``label`` column naming each
method of each run by its name and whatever settings set it apart. Written beside it: ``leaderboard.{md,csv,tex}`` in
Spec-Bench's layout, ``summary.{md,csv,tex}`` per method and group, ``heatmap.png`` and the plots of
``harness.results.tables`` across methods. Numbers come only from the merged rows (harness.results.metrics).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))  # runnable from a checkout without `pip install -e .`

from harness.results.batch_sweep import CAPTION as BATCH_CAPTION
from harness.results.batch_sweep import batch_table, crossovers, plot_speedup_vs_batch
from harness.results.figures import figures, plot_heatmap, save_figures
from harness.results.report import Report
from harness.results.store import RESULTS, ResultsStore, read_results, run_folders  # noqa: E402
from harness.results.tables import CAPTION, summarize_frame, summary_table, with_labels, write_leaderboard, write_table

ROW_KEY = ["run_id", *ResultsStore.ROW_KEY]  # a compare run has a row per method for each prompt, turn and repeat
MERGED = "collected.parquet"


def find_runs(sweep_dir: Path, exclude: Path | None = None) -> list[Path]:
    """Every run folder under ``sweep_dir``, outside ``exclude`` (an earlier collect's output)."""
    folders = run_folders(sweep_dir)
    if exclude is not None:
        folders = [f for f in folders if exclude.resolve() not in (f.resolve(), *f.resolve().parents)]
    return folders


def merge(folders: list[Path]) -> pd.DataFrame:
    """One frame from many runs; a run found twice (a copied folder) counts once, its latest rows kept."""
    frames = [read_results(f).assign(source=str(f)) for f in folders]
    df = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if df.empty:
        return df
    latest_last = df.sort_values("timestamp", kind="stable") if "timestamp" in df else df
    dup = latest_last.duplicated(ROW_KEY, keep="last")
    if dup.any():
        print(f"collect: {int(dup.sum())} rows of runs found twice are counted once", file=sys.stderr)
    return df.loc[sorted(dup.index[~dup])].reset_index(drop=True)


def collect(sweep_dir: Path, out_dir: Path | None = None) -> Report:
    """Merge ``sweep_dir`` and write the merged parquet, tables and figures into ``out_dir``."""
    sweep_dir = Path(sweep_dir)
    out_dir = Path(out_dir) if out_dir else sweep_dir / "collected"
    folders = find_runs(sweep_dir, exclude=out_dir)
    if not folders:
        raise SystemExit(f"error: no {RESULTS} under {sweep_dir}; "
                         "pass a sweep folder such as results/multirun/<task>/<model>")
    df = with_labels(merge(folders))
    print(f"collect: {df.run_id.nunique()} runs, {len(df)} rows from {len(folders)} run folders under {sweep_dir}")
    out_dir.mkdir(parents=True, exist_ok=True)
    df.to_parquet(out_dir / MERGED, index=False)
    summary = summarize_frame(df)
    summary.to_parquet(out_dir / "summary.parquet", index=False)
    tables = write_leaderboard(summary, out_dir / "leaderboard")
    tables += write_table(summary_table(summary), out_dir / "summary", caption=CAPTION)
    plots = {"heatmap": plot_heatmap(summary), **figures(df, summary)}
    if "batch_size" in df and df.batch_size.fillna(1).nunique() > 1:  # a sweep over batch sizes: where SD stops paying
        by_batch = batch_table(df)
        tables += write_table(by_batch, out_dir / "batch_sweep", caption=BATCH_CAPTION)
        tables += write_table(crossovers(by_batch), out_dir / "crossovers")
        plots["speedup_vs_batch"] = plot_speedup_vs_batch(by_batch)
    figs = save_figures(plots, out_dir)
    return Report(summary, [out_dir / MERGED, *tables], figs)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sweep_dir", type=Path,
                        help="a Hydra multirun folder, e.g. results/multirun/spec_bench/smollm2-135m")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default: SWEEP_DIR/collected)")
    args = parser.parse_args(argv)
    report = collect(args.sweep_dir, args.out)
    leaderboard_md = next(p for p in report.tables if p.name == "leaderboard.md")
    print(leaderboard_md.read_text())
    print(f"merged: {report.tables[0]}")
    print(f"leaderboard: {leaderboard_md}")
    print(f"figures: {', '.join(str(p) for p in report.figures.values())}")


if __name__ == "__main__":
    main()
