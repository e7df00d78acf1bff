"""Speculative decoding under load: a method's speedup over batched ``ar`` at each batch size of a sweep
(``python run.py -m batch_size=1,2,4,8,16 ...``, collected), and the batch size where it stops paying.

Per (method, batch size): the geometric mean of per-prompt speedups with its bootstrap interval (as every summary),
the batch throughput ratio (the method's tokens over its batches' wall time, over the batched baseline's, per
run), tau and the equivalence rate. The crossover of a method is the smallest batch size whose speedup's geometric
mean is under 1 (``significant`` when its interval lies below 1 too).
"""

from __future__ import annotations

import math

import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from harness.results.metrics import bootstrap_ci, geomean, per_prompt_speedups

CAPTION = ("speedup: geometric mean of per-prompt speedups over batched ar at the same batch size, 95% bootstrap "
           "interval; throughput_ratio: the method's batch throughput over batched ar's (geometric mean over runs); "
           "equivalence_rate: rows equal to their prompt's batch-1 output")


def _throughput(rows: pd.DataFrame) -> float:
    """Tokens over the wall time of the batches they were decoded in (each batch counted once)."""
    if "batch_id" not in rows or rows.batch_id.isna().all():  # batch 1: generations one after another
        return float(rows.new_tokens.sum() / rows.wall_time_s.sum())
    walls = rows.drop_duplicates(["run_id", "batch_id", "repeat"]).batch_wall_time_s.sum()
    return float(rows.new_tokens.sum() / walls)


def batch_table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per method and batch size of a frame holding runs at several batch sizes."""
    df = df.assign(batch_size=df.batch_size.fillna(1).astype(int) if "batch_size" in df else 1)
    out = []
    for (method, size), m in df[df.role == "method"].groupby(["method", "batch_size"], sort=True):
        b = df[(df.role == "baseline") & df.run_id.isin(m.run_id.unique())]
        speedups = per_prompt_speedups(m, b).tolist()
        lo, hi = bootstrap_ci(speedups)
        ratios = [_throughput(m[m.run_id == r]) / _throughput(b[b.run_id == r]) for r in m.run_id.unique()]
        eq = m.equivalent.dropna().astype(bool) if "equivalent" in m else pd.Series(dtype=bool)
        out.append({"method": method, "batch_size": size, "prompts": m.prompt_id.nunique(),
                    "speedup_geomean": geomean(speedups), "speedup_ci_low": lo, "speedup_ci_high": hi,
                    "throughput_ratio": geomean(ratios), "tau": float(m.new_tokens.sum() / m.steps.sum()),
                    "baseline_batch_tokens_per_s": _throughput(b), "equivalence_rate": float(eq.mean()) if len(eq) else math.nan})
    return pd.DataFrame(out)


def crossovers(table: pd.DataFrame) -> pd.DataFrame:
    """Per method: the smallest batch size where its speedup is under 1, and whether its interval is too."""
    out = []
    for method, t in table.sort_values("batch_size").groupby("method", sort=False):
        under = t[t.speedup_geomean < 1.0]
        first = under.iloc[0] if len(under) else None
        out.append({"method": method, "crossover_batch_size": None if first is None else int(first.batch_size),
                    "significant": None if first is None else bool(first.speedup_ci_high < 1.0),
                    "largest_batch_tried": int(t.batch_size.max())})
    return pd.DataFrame(out)


def plot_speedup_vs_batch(table: pd.DataFrame) -> Figure:
    """Speedup over batched ar against batch size (log 2 axis), one line per method with its interval."""
    fig = Figure(figsize=(7.0, 4.0), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    for method, t in table.sort_values("batch_size").groupby("method", sort=False):
        ax.plot(t.batch_size, t.speedup_geomean, marker="o", label=method)
        ax.fill_between(t.batch_size, t.speedup_ci_low, t.speedup_ci_high, alpha=0.15)
    ax.axhline(1.0, color="grey", lw=1, ls="--")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(table.batch_size.unique()), labels=[str(b) for b in sorted(table.batch_size.unique())])
    ax.set_xlabel("batch size")
    ax.set_ylabel("speedup over batched ar (geomean, 95% CI)")
    ax.legend(fontsize=8)
    return fig
