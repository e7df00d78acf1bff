"""Run-folder reports: tables equal metrics.summarize's numbers, the plots are written, the bound appears
only when measured, and runs that differ in a setting are never pooled."""

import json

import numpy as np
import pandas as pd
import pytest

from harness.results.figures import plot_speedup_vs_tau
from harness.results.metrics import geomean, summarize
from harness.results.report import write_reports
from harness.results.tables import (
    SPEC_BENCH_GROUPS,
    leaderboard,
    leaderboard_markdown,
    summarize_frame,
    to_latex,
    with_labels,
)

from .conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "results_small.parquet"
PLOTS = ("speedup", "accept_lengths", "position_acceptance", "speedup_vs_tau", "time_breakdown")
CHECKED = ("speedup", "speedup_total", "speedup_geomean", "speedup_ci_low", "speedup_ci_high", "tau", "acceptance_rate",
           "equivalence_rate", "near_ties", "tokens_per_s", "baseline_tokens_per_s")


@pytest.fixture(scope="module")
def sweep():
    return pd.read_parquet(FIXTURE).drop(columns=["label", "source"], errors="ignore")


@pytest.fixture(scope="module")
def pld_run(sweep):
    run_id = sweep[(sweep.role == "method") & (sweep.method == "pld")].run_id.iloc[0]
    return sweep[sweep.run_id == run_id].reset_index(drop=True)


def is_png(path):
    return path.is_file() and path.stat().st_size > 2000 and path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_run_folder_tables_hold_summarize_numbers(pld_run, tmp_path):
    expected = summarize(pld_run)
    report = write_reports(pld_run, expected, tmp_path)
    csv = pd.read_csv(tmp_path / "summary.csv")
    assert list(csv.group) == list(expected.group) and set(csv.group) == {*SPEC_BENCH_GROUPS, "overall"}
    for col in CHECKED:
        assert np.allclose(csv[col].to_numpy(float), expected[col].to_numpy(float), equal_nan=True), col
    assert "speedup_bound" not in csv  # not measured in these rows
    overall = expected[expected.group == "overall"].iloc[0]
    md = (tmp_path / "summary.md").read_text()
    assert f"| pld | overall | True | {overall.prompts} | {overall.speedup:.2f} | {overall.speedup_total:.2f} |" in md
    tex = (tmp_path / "summary.tex").read_text()
    assert r"\toprule" in tex and r"pld & mt\_bench &" in tex and "mt_bench" not in tex
    assert pd.read_parquet(tmp_path / "summary.parquet").shape[0] == len(expected)
    for name in PLOTS:
        assert is_png(tmp_path / f"{name}.png") and report.figures[name] == tmp_path / f"{name}.png"


def test_three_speedups_follow_their_definitions(pld_run):
    overall = summarize(pld_run).set_index("group").loc["overall"]
    pair = ["run_id", "prompt_id"]
    sums = {r: pld_run[pld_run.role == r].groupby(pair)[["new_tokens", "wall_time_s"]].sum()
            for r in ("method", "baseline")}
    tps = {r: s.new_tokens / s.wall_time_s for r, s in sums.items()}
    assert overall.speedup == pytest.approx(tps["method"].mean() / tps["baseline"].mean())  # Spec-Bench
    total = {r: pld_run[pld_run.role == r] for r in sums}
    assert overall.speedup_total == pytest.approx(
        (total["method"].new_tokens.sum() / total["method"].wall_time_s.sum())
        / (total["baseline"].new_tokens.sum() / total["baseline"].wall_time_s.sum()))
    assert overall.speedup_geomean == pytest.approx(geomean((tps["method"] / tps["baseline"]).tolist()))
    assert overall.speedup_ci_low <= overall.speedup_geomean <= overall.speedup_ci_high


def test_bound_is_reported_only_when_measured(pld_run, tmp_path):
    nulls = pld_run.assign(min_time_s=None, speedup_bound=None)
    write_reports(nulls, None, tmp_path / "nulls")
    assert "speedup_bound" not in pd.read_csv(tmp_path / "nulls" / "summary.csv")

    # any least time under the wall time: the bound, aggregated as speedup_geomean, is never below it
    rng = np.random.default_rng(0)
    least = pld_run.wall_time_s * rng.uniform(0.3, 1.0, len(pld_run))
    bound = pld_run.assign(min_time_s=np.where(pld_run.role == "method", least, np.nan))
    report = write_reports(bound, None, tmp_path / "bound")
    csv = pd.read_csv(tmp_path / "bound" / "summary.csv").set_index("group")

    def expected(rows):
        pair = ["run_id", "prompt_id"]
        m = rows[rows.role == "method"].groupby(pair)[["new_tokens", "min_time_s"]].sum()
        b = rows[rows.role == "baseline"].groupby(pair)[["new_tokens", "wall_time_s"]].sum()
        return geomean(((m.new_tokens / m.min_time_s) / (b.new_tokens / b.wall_time_s)).tolist())

    assert csv.loc["overall", "speedup_bound"] == pytest.approx(expected(bound))
    assert csv.loc["qa", "speedup_bound"] == pytest.approx(expected(bound[bound.group == "qa"]))
    assert (csv.speedup_bound >= csv.speedup_geomean).all()
    assert "speedup_bound" in (tmp_path / "bound" / "summary.md").read_text()
    fig = plot_speedup_vs_tau(report.summary)
    assert any("bound" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    # one row without a least time (a peer's) leaves the slice without a bound rather than a partial one
    partial = bound.copy()
    partial.loc[partial.index[partial.role == "method"][0], "min_time_s"] = np.nan
    assert np.isnan(summarize(partial).set_index("group").loc["overall", "speedup_bound"])


def test_run_without_baseline_still_reports_tau_and_plots(pld_run, tmp_path):
    alone = pld_run[pld_run.role == "method"].drop(columns=["speedup", "equivalent", "near_tie"])
    report = write_reports(alone, pd.DataFrame(), tmp_path)
    overall = report.summary.set_index("group").loc["overall"]
    assert overall.tau == pytest.approx(alone.new_tokens.sum() / alone.steps.sum())
    assert np.isnan(overall.speedup)
    for name in PLOTS:
        assert is_png(tmp_path / f"{name}.png")


def test_peer_rows_without_per_step_records_still_plot(pld_run, tmp_path):
    # peer rows written before peers were counted per step: no accepted lengths or per-position counts
    peer = pld_run[pld_run.role == "method"].copy()
    peer["method"] = "hf_pld"
    for col in ("accept_lengths", "pos_reached", "pos_accepted"):
        peer[col] = None
    peer["draft_time_s"] = peer["verify_time_s"] = 0.0
    both = pd.concat([pld_run, peer], ignore_index=True)
    report = write_reports(both, summarize(both), tmp_path)
    assert set(report.summary.method) == {"pld", "hf_pld"}
    for name in PLOTS:
        assert is_png(tmp_path / f"{name}.png")


def test_runs_with_other_settings_are_labelled_apart(pld_run):
    other = pld_run.assign(run_id="other", max_new_tokens=pld_run.max_new_tokens * 2,
                           method_config=[json.dumps({**json.loads(c), "num_draft": 3}) for c in pld_run.method_config])
    both = with_labels(pd.concat([pld_run, other], ignore_index=True))
    n = int(pld_run.max_new_tokens.iloc[0])
    labels = {f"pld (max_new_tokens={n}, num_draft=10)", f"pld (max_new_tokens={2 * n}, num_draft=3)"}
    assert set(both[both.role == "method"].label) == labels
    assert set(both[both.role == "baseline"].label) == {f"{label}: baseline" for label in labels}
    summary = summarize_frame(both)
    assert (summary.group == "overall").sum() == 2  # not pooled
    assert with_labels(pld_run).label.unique().tolist() == ["pld", "pld: baseline"]  # one run: just the method


def test_leaderboard_has_spec_bench_layout(sweep):
    summary = summarize_frame(sweep)
    board = leaderboard(summary)
    assert list(board.columns) == [*SPEC_BENCH_GROUPS, "tau", "overall"]
    assert list(board.index) == ["ar", "pld"]  # ar, the noise floor, stays in the table, first
    by = summary.set_index(["method", "group"])
    for method in board.index:
        for group in SPEC_BENCH_GROUPS:
            assert board.loc[method, group] == pytest.approx(by.loc[(method, group), "speedup"])
        assert board.loc[method, "overall"] == pytest.approx(by.loc[(method, "overall"), "speedup"])
        assert board.loc[method, "tau"] == pytest.approx(by.loc[(method, "overall"), "tau"])
    md = leaderboard_markdown(summary)
    assert md.splitlines()[0].startswith("| method | MT-bench | Translation |") and "Mean accepted tokens" in md
    assert f"| pld | {board.loc['pld', 'mt_bench']:.2f}x |" in md


def test_latex_escapes_names():
    tex = to_latex(pd.DataFrame({"method": ["a_b & c%"], "speedup": [1.5]}), suffix={"speedup": "x"})
    assert r"a\_b \& c\%" in tex and r"1.50$\times$" in tex


def test_progress_bar_shows_the_summary_speedup(pld_run):
    from harness.bench.progress import running_figures

    overall = summarize(pld_run).set_index("group").loc["overall"]
    text = running_figures(pld_run.to_dict("records"), ["pld"])
    assert text == f"pld {overall.speedup_geomean:.2f}x tau {overall.tau:.2f}"
