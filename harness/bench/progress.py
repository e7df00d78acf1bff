"""What a run prints: the progress bar's running figures, and the summary table at the end."""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from harness.bench.timing import LOAD_WARNING
from harness.results.metrics import COMPILED_PEER, summarize


class RunningFigures:
    """The progress bar's text: per method so far, the summary's speedup (geometric mean over prompts of
    per-prompt speedups, turns and repeats pooled, as :func:`metrics.per_prompt_speedups`) and tau.

    Kept up to date row by row, so a long run pays the same per prompt at its end as at its start.
    """

    def __init__(self, methods: list[str], rows: list[dict[str, Any]] = ()) -> None:
        self.methods = methods
        # (method, or None for the baseline; (run_id, prompt_id)) -> [new tokens, wall time]
        self.sums: dict[tuple[str | None, tuple[str, str]], list[float]] = {}
        self.steps = {m: [0, 0] for m in methods}  # new tokens, steps
        self.logs: dict[tuple[str, tuple[str, str]], float] = {}  # log speedup per (method, prompt)
        self.log_sums = {m: [0.0, 0] for m in methods}  # sum and count of the logs
        self.add(rows)

    def add(self, rows: list[dict[str, Any]]) -> None:
        touched = set()
        for r in rows:
            prompt = (r["run_id"], r["prompt_id"])
            side = r["method"] if r["role"] == "method" else None
            acc = self.sums.setdefault((side, prompt), [0, 0.0])
            acc[0] += r["new_tokens"]
            acc[1] += r["wall_time_s"]
            if side in self.steps:
                self.steps[side][0] += r["new_tokens"]
                self.steps[side][1] += r["steps"]
            touched.add(prompt)
        for prompt in touched:
            base = self.sums.get((None, prompt))
            for m in self.methods:
                own = self.sums.get((m, prompt))
                old = self.logs.pop((m, prompt), None)
                if old is not None:
                    self.log_sums[m][0] -= old
                    self.log_sums[m][1] -= 1
                if own and base and own[1] > 0 and base[0] > 0 and base[1] > 0:
                    speedup = (own[0] / own[1]) / (base[0] / base[1])
                    if speedup > 0:  # as metrics.geomean, which leaves out zero speedups
                        self.logs[(m, prompt)] = math.log(speedup)
                        self.log_sums[m][0] += math.log(speedup)
                        self.log_sums[m][1] += 1

    def __str__(self) -> str:
        parts = []
        for m in self.methods:
            total, count = self.log_sums[m]
            tau = self.steps[m][0] / max(1, self.steps[m][1])
            parts.append(f"{m} {math.exp(total / count):.2f}x tau {tau:.2f}" if count else f"{m} tau {tau:.2f}")
        return ", ".join(parts)


def running_figures(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """:class:`RunningFigures` of ``rows`` at once."""
    return str(RunningFigures(methods, rows))


def print_summary(df: pd.DataFrame, out_dir: Path, file=sys.stdout) -> pd.DataFrame:
    if "speedup" not in df or df[df.role == "baseline"].empty:
        return pd.DataFrame()
    summary = summarize(df)
    cols = ["method", "group", "prompts", "speedup_geomean", "speedup_ci_low", "speedup_ci_high", "speedup", "speedup_bound",
            "tau", "acceptance_rate", "equivalence_rate", "near_ties", "mismatches", "tokens_per_s", "baseline_tokens_per_s"]
    if summary.speedup_bound.isna().all():
        cols.remove("speedup_bound")
    if f"speedup_vs_{COMPILED_PEER}" in summary:
        cols.insert(cols.index("tau"), f"speedup_vs_{COMPILED_PEER}")
    synthetic = "synthetic" in df and df.synthetic.notna().any()
    if synthetic:
        cols.insert(cols.index("tau") + 1, "real_tau")
        for c in ("equivalence_rate", "near_ties", "mismatches"):  # outputs are not the target's by construction
            cols.remove(c)
    show = summary[[c for c in cols if c in summary]].copy()
    fmt = {c: "{:.2f}".format for c in show.columns if show[c].dtype.kind == "f"}
    if synthetic:
        print(f"SYNTHETIC acceptance ({df.synthetic.dropna().iloc[0]}): speedups project this machine's speed at the "
              "given acceptance; real_tau is the traced run's tau", file=file)
    print(show.to_string(index=False, formatters=fmt, na_rep="-"), file=file)
    load = df.foreign_load.dropna()
    if len(load) and load.median() > LOAD_WARNING:
        print(
            f"WARNING: other processes used {load.median():.2f} cores (median) while timing; speedups from this run "
            "are not meaningful. Re-run on an idle machine.", file=file,
        )
    print(f"results: {out_dir / 'results.parquet'}", file=file)
    return summary
