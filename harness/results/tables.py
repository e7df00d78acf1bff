"""Tables and plots from a results frame: one run folder, or a collected sweep of several methods.

Every number comes from the results rows through :func:`harness.results.metrics.summarize` (never from logs).
A frame may hold several runs, each of one or more methods (``compare=[...]``), and runs of one method
with different settings (a sweep over ``max_new_tokens``, ``method.num_draft``, ...): :func:`with_labels`
names each (run, method) by its method and what sets it apart, and tables and plots key on that label so
different methods or settings are never pooled. Figures are drawn on matplotlib's Agg canvas
without pyplot, so they work headless, leave no global state, and display as they are in a notebook.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from harness.results.metrics import summarize

SPEC_BENCH_GROUPS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
TITLES = {
    "mt_bench": "MT-bench", "translation": "Translation", "summarization": "Summarization", "qa": "QA",
    "math_reasoning": "Math reasoning", "rag": "RAG", "tau": "Mean accepted tokens", "overall": "Overall",
}
# Settings that make two runs of one method different experiments (joined to the label when they vary).
RUN_SETTINGS = ("synthetic", "model", "task", "device", "dtype", "temperature", "top_k", "top_p", "guidance", "max_new_tokens",
                "kernel", "threads", "batch_size", "batch_mode")
SUMMARY_COLUMNS = (
    "method", "group", "lossless", "prompts", "speedup", "speedup_total", "speedup_geomean", "speedup_ci_low", "speedup_ci_high",
    "speedup_bound", "speedup_vs_hf_compiled", "tau", "real_tau", "acceptance_rate", "equivalence_rate", "near_ties", "mismatches",
    "tokens_per_s", "baseline_tokens_per_s",
)
TIME_PARTS = (
    ("prefill", "prefill_time_s"), ("draft", "draft_time_s"), ("verify", "verify_time_s"), ("other", "other_time_s"),
)
CAPTION = (
    "speedup: ratio of mean tokens/s (Spec-Bench); speedup_total: total tokens / total time over the baseline's; "
    "speedup_geomean: geometric mean of per-prompt speedups with a bootstrap 95% interval (ci_low, ci_high); "
    "speedup_bound: the speedup at the least time c(k) allows each engine method (README, Definitions), aggregated "
    "as speedup_geomean; speedup_vs_hf_compiled (runs that time hf_compiled): the same geometric mean over the "
    "compiled stock baseline; tau: new tokens per target forward; near_ties: mismatches at a top-1/top-2 "
    "logit margin within the logits' dtype resolution (expected in bf16/fp16); mismatches: divergences at a clear margin (a bug); lossless: false for lossy acceptance rules (typical acceptance), whose score_* columns (when "
    "the task scores answers) sit beside the baseline's."
)


# -- frames -------------------------------------------------------------------------------------------
def with_labels(df: pd.DataFrame) -> pd.DataFrame:
    """The frame with a ``label`` column. A method row's label is its method name, plus the settings that
    differ between runs of that method; a baseline row's is ``"<its run's method labels>: baseline"``."""
    if "label" in df:
        return df
    methods = df[df.role == "method"].drop_duplicates(["run_id", "method"])
    varying = [c for c in RUN_SETTINGS if c in methods and methods[c].map(_setting).nunique(dropna=False) > 1]
    labels: dict[tuple[str, str], str] = {}
    for method, r in methods.groupby("method", sort=False):
        configs = {rid: json.loads(mc) if isinstance(mc, str) else {} for rid, mc in zip(r.run_id, r.method_config)}
        keys = sorted({k for c in configs.values() for k in c
                       if len({json.dumps(x.get(k)) for x in configs.values()}) > 1})
        for _, row in r.iterrows():
            # a setting a run lacks (real rows have no ``synthetic``) stays out of its label
            parts = [f"{c}={row[c]}" for c in varying if not _missing(row[c])] + [f"{k}={configs[row.run_id].get(k)}" for k in keys]
            labels[(row.run_id, method)] = f"{method} ({', '.join(parts)})" if parts else str(method)
    per_run: dict[str, list[str]] = {}
    for (run_id, _), label in labels.items():
        per_run.setdefault(run_id, []).append(label)
    baselines = {run_id: f"{', '.join(labs)}: baseline" for run_id, labs in per_run.items()}
    label = [labels.get((rid, m)) if role == "method" else baselines.get(rid, "baseline")
             for rid, m, role in zip(df.run_id, df.method, df.role)]
    return df.assign(label=label)


def _missing(value: object) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _setting(value: object) -> str | None:
    """A run setting as a label compares it: absent (None, NaN, NA) or its text."""
    return None if _missing(value) else str(value)


def _ordered(labels: Sequence[str]) -> list[str]:
    """ar (the engine's noise floor) first, then in order of appearance."""
    seen = list(dict.fromkeys(labels))
    return sorted(seen, key=lambda x: (not (x == "ar" or str(x).startswith("ar (")), seen.index(x)))


def summarize_frame(df: pd.DataFrame) -> pd.DataFrame:
    """:func:`metrics.summarize` per run label: the one summary of a frame."""
    df = with_labels(df)
    summary = summarize(df.assign(method=df.label))
    if len(summary):
        order = {label: i for i, label in enumerate(_ordered(summary.method.tolist()))}
        summary = summary.sort_values("method", key=lambda s: s.map(order), kind="stable").reset_index(drop=True)
    return summary


def summary_table(summary: pd.DataFrame) -> pd.DataFrame:
    """The scalar columns of a summary, the bound only when it was measured, task scores and the target's NLL of
    the outputs when the run has them."""
    cols = [c for c in SUMMARY_COLUMNS if c in summary]
    cols += [c for c in summary.columns if c.startswith(("score_", "baseline_score_", "target_nll", "baseline_target_nll"))]
    if "speedup_bound" in cols and summary.speedup_bound.isna().all():
        cols.remove("speedup_bound")
    return summary[cols].reset_index(drop=True)


def leaderboard(summary: pd.DataFrame, value: str = "speedup") -> pd.DataFrame:
    """Spec-Bench's layout: one row per method; a column per group, mean accepted tokens, overall.

    Spec-Bench's six groups come first in their order, any other group after them.
    """
    per_group = summary[summary.group != "overall"]
    groups = [g for g in SPEC_BENCH_GROUPS if g in set(per_group.group)]
    groups += [g for g in dict.fromkeys(per_group.group) if g not in groups]
    table = per_group.pivot_table(index="method", columns="group", values=value, aggfunc="first", sort=False)
    table = table.reindex(columns=groups)
    overall = summary[summary.group == "overall"].set_index("method")
    table["tau"] = overall.tau
    table["overall"] = overall[value]
    table = table.reindex(_ordered(summary.method.tolist()))
    table.index.name = "method"
    table.columns.name = None
    return table


# -- writing tables -----------------------------------------------------------------------------------
def _formatted(frame: pd.DataFrame, digits: int, suffix: dict[str, str]) -> pd.DataFrame:
    def fmt(col: str, v: Any) -> str:
        if v is None or (isinstance(v, float) and math.isnan(v)):
            return "-"
        if isinstance(v, (float, np.floating)):
            return f"{v:.{digits}f}{suffix.get(col, '')}"
        return str(v)

    return pd.DataFrame({c: [fmt(c, v) for v in frame[c]] for c in frame.columns})


def to_markdown(frame: pd.DataFrame, digits: int = 2, suffix: dict[str, str] | None = None) -> str:
    """A GitHub markdown table (numbers right-aligned), without the optional ``tabulate`` dependency."""
    text = _formatted(frame, digits, suffix or {})
    numeric = [frame[c].dtype.kind in "if" for c in frame.columns]
    header = "| " + " | ".join(str(c) for c in text.columns) + " |"
    rule = "|" + "|".join("---:" if n else ":---" for n in numeric) + "|"
    body = ["| " + " | ".join(row) + " |" for row in text.itertuples(index=False)]
    return "\n".join([header, rule, *body]) + "\n"


def to_latex(frame: pd.DataFrame, digits: int = 2, suffix: dict[str, str] | None = None) -> str:
    """A booktabs tabular; LaTeX special characters in names (``mt_bench``) are escaped."""
    text = _formatted(frame, digits, {k: v.replace("x", r"$\times$") for k, v in (suffix or {}).items()})
    text.columns = [str(c) for c in frame.columns]
    numeric = [frame[c].dtype.kind in "if" for c in frame.columns]
    align = "".join("r" if n else "l" for n in numeric)

    def esc(s: str) -> str:
        if s.endswith(r"$\times$"):
            return s
        for a, b in (("\\", r"\textbackslash{}"), ("&", r"\&"), ("%", r"\%"), ("_", r"\_"), ("#", r"\#"), ("$", r"\$")):
            s = s.replace(a, b)
        return s

    lines = [rf"\begin{{tabular}}{{{align}}}", r"\toprule", " & ".join(esc(c) for c in text.columns) + r" \\"]
    lines += [r"\midrule"]
    lines += [" & ".join(esc(v) for v in row) + r" \\" for row in text.itertuples(index=False)]
    lines += [r"\bottomrule", r"\end{tabular}"]
    return "\n".join(lines) + "\n"


def _titled(frame: pd.DataFrame, titles: dict[str, str] | None, suffix: dict[str, str] | None
            ) -> tuple[pd.DataFrame, dict[str, str]]:
    titles = titles or {}
    return frame.rename(columns=titles), {titles.get(k, k): v for k, v in (suffix or {}).items()}


def write_table(frame: pd.DataFrame, stem: Path, titles: dict[str, str] | None = None,
                suffix: dict[str, str] | None = None, caption: str | None = None) -> list[Path]:
    """``stem``.csv (raw numbers, machine column names), .md and .tex (formatted, human titles)."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    shown, shown_suffix = _titled(frame, titles, suffix)
    paths = [stem.with_suffix(".csv"), stem.with_suffix(".md"), stem.with_suffix(".tex")]
    frame.to_csv(paths[0], index=False)
    md = to_markdown(shown, suffix=shown_suffix)
    paths[1].write_text(md + (f"\n{caption}\n" if caption else ""))
    paths[2].write_text(to_latex(shown, suffix=shown_suffix))
    return paths


LEADERBOARD_CAPTION = ("Speedup over the autoregressive baseline (ratio of mean tokens/s, as Spec-Bench); "
                       "mean accepted tokens = tau. The ar row is the engine's noise floor.")


def _leaderboard_format(summary: pd.DataFrame) -> tuple[pd.DataFrame, dict[str, str]]:
    board = leaderboard(summary).reset_index()
    return board, {c: "x" for c in board.columns if c not in ("method", "tau")}


def leaderboard_markdown(summary: pd.DataFrame) -> str:
    """The leaderboard as the markdown table that ``leaderboard.md`` holds."""
    board, suffix = _leaderboard_format(summary)
    shown, shown_suffix = _titled(board, TITLES, suffix)
    return to_markdown(shown, suffix=shown_suffix)


def write_leaderboard(summary: pd.DataFrame, stem: Path) -> list[Path]:
    board, suffix = _leaderboard_format(summary)
    return write_table(board, stem, titles=TITLES, suffix=suffix, caption=LEADERBOARD_CAPTION)


