"""Bad input: one clear line naming the problem and the fix, and a non-zero exit."""

import os
import subprocess
import sys

import pytest

from .conftest import REPO


def run_cli(*args, tmp_path):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.run(
        [sys.executable, "run.py", *args, f"hydra.run.dir={tmp_path}/run", "engine.warmup=false"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
    )
    return proc


def error_line(proc):
    lines = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


@pytest.mark.parametrize(
    "args,expect",
    [
        (["method=nope"], "unknown method 'nope'"),
        (["model=nope"], "unknown model 'nope'"),
        (["task=nope"], "unknown task 'nope'"),
        (["model=hf", "model.path=/nonexistent/model"], "does not exist"),
        (["model=tiny-llama", "max_new_tokens=0"], "max_new_tokens must be positive"),
        (["model=tiny-llama", "model.tiny.max_positions=64"], "exceeds the model's context"),
        (["model=tiny-llama", "task=spec_bench", "task.groups=[nope]"], "unknown group 'nope'"),
        (["model=tiny-llama", "task=demo", "task.path=/no/such/file.jsonl"], "does not exist"),
    ],
)
def test_bad_input(args, expect, tmp_path):
    proc = run_cli(*args, tmp_path=tmp_path)
    assert proc.returncode != 0
    line = error_line(proc)
    assert expect in line, line
    assert "Traceback" not in proc.stderr


def test_tiny_run_writes_results(tmp_path):
    proc = run_cli("model=tiny-llama", "task.limit=2", "max_new_tokens=12", tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    import pandas as pd

    df = pd.read_parquet(tmp_path / "run" / "results.parquet")
    assert sorted(df.role.unique()) == ["baseline", "method"] and len(df) == 4
    assert (tmp_path / "run" / "samples.jsonl").is_file()
    assert "overall" in proc.stdout
