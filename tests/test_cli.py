"""Bad input: one clear line naming the problem and the fix, and a non-zero exit."""

import os
import subprocess
import sys

import pytest

from .conftest import REPO


def run_cli(*args, tmp_path, **env_vars):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **env_vars}
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
        (["model=tiny-llama", "task=spec_bench", "task.categories=[poetry]"], "unknown category 'poetry'"),
        (["model=tiny-llama", "task=spec_bench", "task.groups=[qa]", "task.categories=[writing]"], "is empty after filters"),
        (["model=tiny-llama", "task=demo", "task.path=/no/such/file.jsonl"], "does not exist"),
        (["model=tiny-llama", "task=mtbench", "model.tiny.max_positions=1720", "max_new_tokens=8"], "(turn 2, before any answer)"),
        (["model=tiny-llama", 'compare=["pld nosuchkey=1"]'], "bad compare entry 'pld nosuchkey=1': Key 'nosuchkey' not in"),
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


def test_malformed_jsonl_line(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"id": "a", "prompt": "fine"}\n{"id": "b", "prompt": \n')
    proc = run_cli("model=tiny-llama", f"task.path={bad}", tmp_path=tmp_path)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert f"{bad}:2: malformed JSONL line" in error_line(proc)


def test_missing_data_and_hub_while_offline(tmp_path):
    empty = {"SPECLAB_DATA": str(tmp_path / "data"), "XDG_CACHE_HOME": str(tmp_path / "cache")}
    proc = run_cli("model=tiny-llama", "task=spec_bench", tmp_path=tmp_path, **empty)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "'spec_bench/question.jsonl' not found under" in error_line(proc)
    proc = run_cli("model=tiny-llama", "task=gsm8k", tmp_path=tmp_path, **empty)
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    line = error_line(proc)
    assert "cannot load Hub dataset 'openai/gsm8k' (offline mode is set" in line and "fetch_data.py" in line


def test_bad_input_on_resume_keeps_the_results(tmp_path):
    data = tmp_path / "prompts.jsonl"
    data.write_text('{"id": "short", "prompt": "Hi"}\n')
    args = ["model=tiny-llama", f"task.path={data}", "model.tiny.max_positions=256", "max_new_tokens=8"]
    proc = run_cli(*args, tmp_path=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = (tmp_path / "run" / "results.parquet").read_bytes()
    with open(data, "a") as f:  # a prompt added to the data; the same command resumes the same run folder
        f.write('{"id": "long", "prompt": "%s"}\n' % ("word " * 150))
    proc = run_cli(*args, tmp_path=tmp_path)  # the new prompt is too long
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "prompt 'long' of task 'demo' has" in error_line(proc)
    assert (tmp_path / "run" / "results.parquet").read_bytes() == before
