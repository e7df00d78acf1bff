"""Tables and plots from a results frame: one run folder, or a collected sweep of several methods.

Every number comes from the results rows through :func:`harness.metrics.summarize` (never from logs).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from harness.results.metrics import summarize

SPEC_BENCH_GROUPS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
TITLES = {
    "mt_bench": "MT-bench", "translation": "Translation", "summarization": "Summarization", "qa": "QA",
    "math_reasoning": "Math reasoning", "rag": "RAG", "tau": "Mean accepted tokens", "overall": "Overall",
}
# Settings that make two runs of one method different experiments (joined to the label when they vary).
RUN_SETTINGS = ("synthetic", "model", "task", "device", "dtype", "temperature", "top_k", "top_p", "guidance", "max_new_tokens", "kernel", "threads")
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
    "compiled stock baseline; tau: new tokens per target forward; near_ties: mismatches at a near-zero top-1/top-2 "
    "logit margin (expected in bf16/fp16); mismatches: divergences at a clear margin (a bug); lossless: false for lossy acceptance rules (typical acceptance), whose score_* columns (when "
    "the task scores answers) sit beside the baseline's."
)


@dataclass
class Report:
    """What :func:`write_reports` and ``scripts/collect.py`` wrote."""

    summary: pd.DataFrame
    tables: list[Path] = field(default_factory=list)
    figures: dict[str, Path] = field(default_factory=dict)


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
    """The scalar columns of a summary, the bound only when it was measured, task scores when a task has them."""
    cols = [c for c in SUMMARY_COLUMNS if c in summary]
    cols += [c for c in summary.columns if c.startswith(("score_", "baseline_score_"))]
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


# -- figures ------------------------------------------------------------------------------------------
def _figure(width: float = 7.0, height: float = 4.0, cols: int = 1) -> tuple[Figure, Any]:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, cols)
    return fig, axes


def _colors(labels: Sequence[str]) -> dict[str, Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab10"]
    return {label: cmap(i % 10) for i, label in enumerate(labels)}


def _empty(ax: Any, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", transform=ax.transAxes)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_speedup(summary: pd.DataFrame) -> Figure:
    """Bars: geometric-mean speedup per group and method, with the bootstrap 95% interval."""
    groups = list(leaderboard(summary).columns.drop("tau")) if len(summary) else []
    methods = _ordered(summary.method.tolist())
    fig, ax = _figure(min(16.0, max(6.0, 2.0 + 0.35 * len(groups) * max(1, len(methods)))), 4.0)
    if summary.speedup_geomean.isna().all():
        _empty(ax, "no speedup (run without a baseline)")
        return fig
    width = 0.8 / len(methods)
    colors = _colors(methods)
    for i, method in enumerate(methods):
        s = summary[summary.method == method].set_index("group").reindex(groups)
        x = np.arange(len(groups)) + (i - (len(methods) - 1) / 2) * width
        y = s.speedup_geomean.to_numpy(float)
        lo, hi = s.speedup_ci_low.to_numpy(float), s.speedup_ci_high.to_numpy(float)
        err = np.vstack([np.where(np.isnan(lo), 0, y - lo), np.where(np.isnan(hi), 0, hi - y)])
        ax.bar(x, y, width, yerr=err, capsize=3, label=method, color=colors[method])
    ax.axhline(1.0, color="black", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(groups)), [TITLES.get(g, g) for g in groups], rotation=20, ha="right")
    ax.set_ylabel("speedup (geometric mean, 95% CI)")
    ax.legend(fontsize=8)
    return fig


def plot_accept_lengths(df: pd.DataFrame) -> Figure:
    """Share of verification steps per accepted length (bonus token included), one bar set per method."""
    df = with_labels(df)
    m = df[df.role == "method"]
    labels = _ordered(m.label.tolist())
    fig, ax = _figure()
    # rows without per-step lengths (None: peers' rows from before they were counted per step) get no bars
    counts = {lab: np.bincount(np.concatenate([np.zeros(0, int), *(np.asarray(x, int) for x in rows.accept_lengths if x is not None)]))
              for lab, rows in m.groupby("label", sort=False)}
    labels = [lab for lab in labels if counts[lab].sum()]
    longest = max((len(c) for c in counts.values()), default=0)
    if longest <= 1:
        _empty(ax, "no verification steps")
        return fig
    width = 0.8 / len(labels)
    colors = _colors(labels)
    for i, lab in enumerate(labels):
        c = np.pad(counts[lab], (0, longest - len(counts[lab])))[1:]
        share = c / c.sum() if c.sum() else c
        ax.bar(np.arange(1, longest) + (i - (len(labels) - 1) / 2) * width, share, width, label=lab, color=colors[lab])
    ax.set_xlabel("tokens emitted per step (accepted + bonus)")
    ax.set_ylabel("share of steps")
    ax.set_xticks(np.arange(1, longest))
    ax.legend(fontsize=8)
    return fig


def plot_position_acceptance(summary: pd.DataFrame) -> Figure:
    """Acceptance at draft position i: conditional (of drafts that reached i) and unconditional (of steps)."""
    overall = summary[summary.group == "overall"]
    fig, axes = _figure(10.0, 4.0, cols=2)
    colors = _colors(_ordered(overall.method.tolist()))
    drawn = False
    for ax, col, title in zip(axes, ("pos_acceptance_conditional", "pos_acceptance_unconditional"),
                              ("conditional: accepted at i / reached i", "unconditional: accepted at i / steps")):
        for method, curve in zip(overall.method, overall[col]):
            curve = np.asarray(curve, dtype=float)
            if curve.size:
                ax.plot(np.arange(1, curve.size + 1), curve, marker="o", ms=3, label=method, color=colors[method])
                drawn = True
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("draft position i")
        ax.set_ylim(0, 1.02)
    axes[0].set_ylabel("acceptance")
    if drawn:
        axes[0].legend(fontsize=8)
    else:
        _empty(axes[0], "no drafted tokens")
    return fig


def plot_speedup_vs_tau(summary: pd.DataFrame) -> Figure:
    """Measured speedup against tau per method and group, beside the verify-cost bound where measured.

    The diagonal speedup = tau is what free drafting and verification would give; the gap down to the
    measured points is the price of drafting and verifying on this machine.
    """
    fig, ax = _figure(6.0, 4.5)
    methods = _ordered(summary.method.tolist())
    if summary.speedup_geomean.isna().all():
        _empty(ax, "no speedup (run without a baseline)")
        return fig
    colors = _colors(methods)
    has_bound = "speedup_bound" in summary and summary.speedup_bound.notna().any()
    for method in methods:
        s = summary[summary.method == method]
        for overall, marker, size in ((False, "o", 25), (True, "*", 140)):
            p = s[(s.group == "overall") == overall]
            lo = (p.speedup_geomean - p.speedup_ci_low).fillna(0).clip(lower=0)
            hi = (p.speedup_ci_high - p.speedup_geomean).fillna(0).clip(lower=0)
            ax.errorbar(p.tau, p.speedup_geomean, yerr=[lo, hi], fmt="none", ecolor=colors[method], alpha=0.5)
            ax.scatter(p.tau, p.speedup_geomean, marker=marker, s=size, color=colors[method],
                       label=method if overall else None)
            if has_bound:
                b = p[p.speedup_bound.notna()]
                ax.scatter(b.tau, b.speedup_bound, marker="_", s=size * 4, color=colors[method],
                           label=f"{method} bound" if overall and len(b) else None)
                ax.vlines(b.tau, b.speedup_geomean, b.speedup_bound, colors=[colors[method]], linestyles=":")
    top = float(np.nanmax(summary.tau.to_numpy(float))) if len(summary) else 1.0
    xs = np.linspace(1.0, max(1.0, top) * 1.05, 20)
    ax.plot(xs, xs, color="grey", lw=0.8, ls="--", label="speedup = tau")
    ax.axhline(1.0, color="black", lw=0.8)
    ax.set_xlabel("tau (mean accepted tokens per step)")
    ax.set_ylabel("speedup (geometric mean)")
    ax.legend(fontsize=7)
    return fig


def plot_time_breakdown(df: pd.DataFrame) -> Figure:
    """Milliseconds per generated token, split into prefill / draft / verify / other, per method, each group of
    methods timed in the same runs followed by those runs' baseline."""
    df = with_labels(df)
    method_rows = df[df.role == "method"]
    runs = {lab: frozenset(rows.run_id) for lab, rows in method_rows.groupby("label", sort=False)}
    by_runs: dict[frozenset, list[str]] = {}
    for lab in _ordered(method_rows.label.tolist()):
        by_runs.setdefault(runs[lab], []).append(lab)
    bars: list[tuple[str, pd.DataFrame]] = []
    for run_ids, labels in by_runs.items():
        bars += [(lab, method_rows[method_rows.label == lab]) for lab in labels]
        base = df[(df.role == "baseline") & df.run_id.isin(run_ids)]
        if len(base):
            bars.append((f"{', '.join(labels)}: baseline", base))
    fig, ax = _figure(7.0, 1.2 + 0.45 * max(1, len(bars)))
    if not bars:
        _empty(ax, "no rows")
        return fig
    left = np.zeros(len(bars))
    for (part, col), color in zip(TIME_PARTS, ("#999999", "#e69f00", "#0072b2", "#cc79a7")):
        ms = np.array([1e3 * rows[col].sum() / max(1, rows.new_tokens.sum()) for _, rows in bars])
        ax.barh(np.arange(len(bars)), ms, left=left, label=part, color=color, height=0.6)
        left += ms
    ax.set_yticks(np.arange(len(bars)), [name for name, _ in bars], fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ms per generated token")
    fig.legend(fontsize=8, ncols=4, loc="outside upper center")
    return fig


def plot_heatmap(summary: pd.DataFrame, value: str = "speedup") -> Figure:
    """Method x group heatmap of the leaderboard's speedup, centred on 1 (no gain)."""
    board = leaderboard(summary, value).drop(columns="tau")
    data = board.to_numpy(float)
    fig, ax = _figure(1.4 + 1.0 * board.shape[1], 1.2 + 0.5 * board.shape[0])
    if not np.isfinite(data).any():
        _empty(ax, "no speedup (run without a baseline)")
        return fig
    lo, hi = np.nanmin(data), np.nanmax(data)
    norm = TwoSlopeNorm(1.0, vmin=min(lo, 0.99), vmax=max(hi, 1.01))
    im = ax.imshow(data, cmap="RdYlGn", norm=norm, aspect="auto")
    for (i, j), v in np.ndenumerate(data):
        ax.text(j, i, "-" if np.isnan(v) else f"{v:.2f}x", ha="center", va="center", fontsize=8)
    ax.set_xticks(np.arange(board.shape[1]), [TITLES.get(c, c) for c in board.columns], rotation=30, ha="right")
    ax.set_yticks(np.arange(board.shape[0]), board.index)
    fig.colorbar(im, ax=ax, label=f"{value}")
    return fig


def figures(df: pd.DataFrame, summary: pd.DataFrame) -> dict[str, Figure]:
    """Every standard plot of a frame, by file stem; works for one run or a collected sweep."""
    return {
        "speedup": plot_speedup(summary),
        "accept_lengths": plot_accept_lengths(df),
        "position_acceptance": plot_position_acceptance(summary),
        "speedup_vs_tau": plot_speedup_vs_tau(summary),
        "time_breakdown": plot_time_breakdown(df),
    }


def save_figures(figs: dict[str, Figure], out_dir: Path, dpi: int = 120) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, fig in figs.items():
        paths[name] = out_dir / f"{name}.png"
        fig.savefig(paths[name], dpi=dpi)
    return paths


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
