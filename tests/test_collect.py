"""scripts/collect.py: a multirun folder -> one parquet, a Spec-Bench leaderboard, heatmap and plots."""

import importlib.util
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from harness.results.tables import leaderboard, summarize_frame

from .conftest import REPO

FIXTURE = REPO / "tests" / "fixtures" / "results_small.parquet"


@pytest.fixture
def sweep(tmp_path):
    """The fixture's runs laid out as Hydra writes a multirun, plus a copy of one run elsewhere in the tree."""
    df = pd.read_parquet(FIXTURE).drop(columns=["label", "source"])
    root = tmp_path / "multirun" / "spec_bench" / "tiny-llama"
    for run_id, rows in df.groupby("run_id"):
        method = rows[rows.role == "method"].method.iloc[0]
        (root / f"{method}-{run_id}").mkdir(parents=True)
        rows.to_parquet(root / f"{method}-{run_id}" / "results.parquet", index=False)
    first = sorted(root.iterdir())[0]
    (root / "old" / first.name).mkdir(parents=True)
    (root / "old" / first.name / "results.parquet").write_bytes((first / "results.parquet").read_bytes())
    return root, df


def test_collect_cli(sweep):
    root, df = sweep
    proc = subprocess.run([sys.executable, "scripts/collect.py", str(root)], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = root / "collected"
    merged = pd.read_parquet(out / "collected.parquet")
    assert len(merged) == len(df)  # the copied run counts once
    assert "counted once" in proc.stderr
    assert set(merged[merged.role == "method"].label) == {"ar", "pld"}
    assert set(merged[merged.role == "baseline"].label) == {"ar: baseline", "pld: baseline"}

    expected = leaderboard(summarize_frame(df))
    board = pd.read_csv(out / "leaderboard.csv").set_index("method")
    groups = ["mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"]
    assert list(board.columns) == [*groups, "tau", "overall"]
    assert list(board.index) == ["ar", "pld"]
    assert np.allclose(board.to_numpy(float), expected.to_numpy(float))

    md = (out / "leaderboard.md").read_text()
    assert md in proc.stdout
    assert f"| ar | {expected.loc['ar', 'mt_bench']:.2f}x |" in md
    assert r"Mean accepted tokens" in (out / "leaderboard.tex").read_text()
    summary = pd.read_csv(out / "summary.csv")
    assert set(summary.method) == {"ar", "pld"} and (summary.group == "overall").sum() == 2
    for name in ("heatmap", "speedup", "accept_lengths", "position_acceptance", "speedup_vs_tau", "time_breakdown"):
        png = out / f"{name}.png"
        assert png.stat().st_size > 2000 and png.read_bytes()[:4] == b"\x89PNG"

    # collecting again ignores the collected folder itself
    again = subprocess.run([sys.executable, "scripts/collect.py", str(root)], cwd=REPO, capture_output=True, text=True,
                           timeout=300)
    assert again.returncode == 0 and len(pd.read_parquet(out / "collected.parquet")) == len(df)


def load_collect():
    spec = importlib.util.spec_from_file_location("speclab_collect", REPO / "scripts" / "collect.py")
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    return collect


def test_collect_empty_folder_is_one_clear_error(tmp_path):
    collect = load_collect()
    with pytest.raises(SystemExit, match=f"error: no results.parquet under {tmp_path}"):
        collect.main([str(tmp_path)])


def test_compare_run_keeps_every_method_through_report_collect_and_notebook(tmp_path, monkeypatch):
    """``method=pld compare=[hf_generate]``: one run, two methods and a shared baseline; each method keeps its own
    label in the run folder's plots, the collected parquet, leaderboard, summary, plots and the notebook."""
    from harness.api import run
    from harness.results.figures import figures
    from harness.results.report import write_reports

    from .conftest import compose

    cfg = compose("method=pld", "compare=[hf_generate]", "model=tiny-llama", "task=demo", "task.limit=2",
                  "max_new_tokens=16", "engine.warmup=false", "progress=false")
    cfg.out_dir = str(tmp_path / "sweep" / "pld-compare")
    df = run(cfg)
    assert sorted(df.method.unique()) == ["ar", "hf_generate", "pld"] and len(df) == 6

    def check_figures(frame):
        summary = summarize_frame(frame)
        figs = figures(frame, summary)
        for name in ("speedup", "accept_lengths", "speedup_vs_tau"):
            assert {"pld", "hf_generate"} <= {t.get_text() for t in figs[name].axes[0].get_legend().get_texts()}, name
        bars = [t.get_text() for t in figs["time_breakdown"].axes[0].get_yticklabels()]
        assert bars == ["pld", "hf_generate", "pld, hf_generate: baseline"]
        assert set(summary[summary.group == "overall"].method) == {"pld", "hf_generate"}

    report = write_reports(df, None, tmp_path / "sweep" / "pld-compare")
    assert set(report.summary.method) == {"pld", "hf_generate"}
    check_figures(df)

    load_collect().collect(tmp_path / "sweep")  # in process: test_collect_cli runs the command line
    out = tmp_path / "sweep" / "collected"
    merged = pd.read_parquet(out / "collected.parquet")
    assert len(merged) == len(df)  # no method row collides with another
    assert merged.groupby("label").size().to_dict() == {"pld": 2, "hf_generate": 2, "pld, hf_generate: baseline": 2}
    assert list(pd.read_csv(out / "leaderboard.csv").method) == ["pld", "hf_generate"]
    board = (out / "leaderboard.md").read_text()
    assert "| hf_generate |" in board and "| pld |" in board
    check_figures(merged)

    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    nb = nbformat.read(REPO / "notebooks" / "analysis.ipynb", as_version=4)
    monkeypatch.setenv("SPECLAB_RESULTS", str(out / "collected.parquet"))  # the kernel inherits this environment
    nbclient.NotebookClient(nb, kernel_name="python3", timeout=300,
                            resources={"metadata": {"path": str(REPO / "notebooks")}}).execute()
    shown = "\n".join(o.data["text/markdown"] for c in nb.cells for o in c.get("outputs", [])
                      if "text/markdown" in o.get("data", {}))
    assert "| pld |" in shown and "| hf_generate |" in shown
