"""scripts/collect.py: a multirun folder -> one parquet, a Spec-Bench leaderboard, heatmap and plots."""

import importlib.util
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from harness.report import leaderboard, summarize_frame

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
    assert set(merged.label) == {"ar", "pld"}

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


def test_collect_empty_folder_is_one_clear_error(tmp_path):
    spec = importlib.util.spec_from_file_location("speclab_collect", REPO / "scripts" / "collect.py")
    collect = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(collect)
    with pytest.raises(SystemExit, match=f"error: no results.parquet under {tmp_path}"):
        collect.main([str(tmp_path)])
