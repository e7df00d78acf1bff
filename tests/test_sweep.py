"""Sweeps: a 2x2 multirun through submitit_local (jobs in parallel processes), the parallel-launcher
warning, the end-of-sweep pointer to collect, and the SLURM launcher preset."""

import importlib.util
import os
import subprocess
import sys

import pandas as pd
import pytest

from .conftest import REPO

pytest.importorskip("hydra_plugins.hydra_submitit_launcher", reason="needs the slurm extra (hydra-submitit-launcher)")

WARNING = "WARNING: hydra/launcher=submitit_local may run jobs side by side"


def load_collect():
    spec = importlib.util.spec_from_file_location("speclab_collect", REPO / "scripts" / "collect.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_submitit_local_2x2_sweep(tmp_path):
    sweep = tmp_path / "sweep"
    args = [
        "-m", "hydra/launcher=submitit_local", "hydra.launcher.timeout_min=10", "method=ar,pld", "max_new_tokens=8,12",
        "model=tiny-llama", "task.limit=1", "engine.warmup=false", "progress=false", f"hydra.sweep.dir={sweep}",
    ]
    proc = subprocess.run([sys.executable, "run.py", *args], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]

    runs = sorted(p.parent for p in sweep.glob("*/results.parquet"))
    assert len(runs) == 4, sorted(p.name for p in sweep.iterdir())
    points = set()
    for run in runs:
        df = pd.read_parquet(run / "results.parquet")
        m = df[df.role == "method"]
        method, tokens = m.method.iloc[0], int(m.max_new_tokens.iloc[0])
        points.add((method, tokens))
        assert run.name.startswith(f"{method}-")
        assert len(df[df.role == "baseline"]) == len(m) == 1
        assert m.new_tokens.iloc[0] <= tokens
        assert (run / "summary.md").is_file() and (run / "speedup.png").stat().st_size > 0
    assert points == {("ar", 8), ("ar", 12), ("pld", 8), ("pld", 12)}

    # the console: one warning for the parallel launcher, every job's results, and the collect command
    assert proc.stderr.count(WARNING) == 1, proc.stderr[-2000:]
    for run in runs:
        assert str(run / "results.parquet") in proc.stdout
    assert f"collect: python scripts/collect.py {sweep}" in proc.stdout
    # each job's own log carries the warning beside its timings
    logs = sorted((sweep / ".submitit").rglob("*_log.err"))
    assert len(logs) == 4 and all(WARNING in log.read_text() for log in logs)

    report = load_collect().collect(sweep)
    board = pd.read_csv(sweep / "collected" / "leaderboard.csv")
    assert set(board.method) == {f"{m} (max_new_tokens={n})" for m, n in points}
    assert len(pd.read_parquet(sweep / "collected" / "collected.parquet")) == 8
    assert report.figures["heatmap"].stat().st_size > 0


def test_basic_launcher_does_not_warn():
    from harness.bench.sweep import parallel_launcher_warning

    assert parallel_launcher_warning("basic") is None
    assert parallel_launcher_warning("slurm_gpu", exclusive=True) is None
    assert "submitit_slurm" in parallel_launcher_warning("submitit_slurm")


def test_slurm_preset_is_a_one_gpu_job_array_on_whole_nodes():
    from hydra import compose, initialize_config_dir

    from harness.core.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = compose(config_name="config", return_hydra_config=True,
                      overrides=["hydra/launcher=slurm_gpu", "hydra.launcher.partition=gpu", "baseline=cached"])
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("submitit_launcher.SlurmLauncher")
    assert launcher.gpus_per_node == 1 and launcher.tasks_per_node == 1 and launcher.nodes == 1
    assert launcher.additional_parameters.exclusive is True and launcher.partition == "gpu"
    assert cfg.baseline.mode == "cached"
