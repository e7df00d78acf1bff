"""The standard plots of a run or a collected sweep, from the summary and the rows (never from logs).

Drawn on matplotlib's Agg canvas without pyplot, so they work headless, leave no global state, and display as they
are in a notebook. Methods and settings are keyed by their label (:func:`harness.results.tables.with_labels`).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import TwoSlopeNorm
from matplotlib.figure import Figure

from harness.results.tables import TIME_PARTS, TITLES, _ordered, leaderboard, with_labels


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
