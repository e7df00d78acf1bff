"""A run killed with SIGKILL resumes: finished prompts are kept as they were, none is duplicated, all end up
done; the run folder is the one derived from the config, and a changed config is refused there."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pandas as pd

from harness.results.store import has_results, read_results

from .conftest import REPO

PROMPTS = 8
ARGS = ["model=tiny-llama", "task=spec_bench", "task.groups=[qa]", f"task.limit={PROMPTS}", "max_new_tokens=16",
        "engine.warmup=false", "progress=false"]
KEY = ["prompt_id", "turn", "repeat", "role"]


def test_killed_run_resumes_where_it_stopped(tmp_path):
    # cwd is a scratch folder: the default run folder (results/runs/...) is relative to it
    cmd = [sys.executable, str(REPO / "run.py"), *ARGS]
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "SPECLAB_BASELINE_CACHE": str(tmp_path / "cache")}
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    folder = None
    try:
        while time.time() < deadline and proc.poll() is None:
            found = [f for f in tmp_path.glob("results/runs/spec_bench/tiny-llama/pld-*") if has_results(f)]
            if found:  # a prompt is finished: its part is in place
                folder = found[0]
                break
            time.sleep(0.05)
        ended = proc.stderr.read()[-2000:] if proc.poll() is not None else ""
        assert folder is not None, f"no finished prompt before the run ended or timed out: {ended}"
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert proc.returncode == -signal.SIGKILL
    before = read_results(folder)  # the parts of the finished prompts, as collect reads them
    assert 0 < before.prompt_id.nunique() < PROMPTS, "the run ended before the kill; raise PROMPTS"

    again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    results = folder / "results.parquet"
    after = pd.read_parquet(results)
    assert not after.duplicated(KEY).any()
    assert after.prompt_id.nunique() == PROMPTS and len(after) == 2 * PROMPTS
    kept = before.merge(after, on=KEY, suffixes=("_before", "_after"))
    assert len(kept) == len(before)
    assert (kept.timestamp_before == kept.timestamp_after).all() and (kept.output_hash_before == kept.output_hash_after).all()
    texts = [json.loads(line) for line in open(folder / "samples.jsonl")]
    assert sorted((t["prompt_id"], t["turn"], t["repeat"], t["role"]) for t in texts) == sorted(map(tuple, after[KEY].values.tolist()))

    # the same folder with another config is refused, and nothing in it changes
    files = ("results.parquet", "samples.jsonl", "run_config.json")
    snapshot = [(results.parent / f).read_bytes() for f in files]
    other = [a.replace("max_new_tokens=16", "max_new_tokens=8") for a in cmd] + [f"hydra.run.dir={results.parent}"]
    refused = subprocess.run(other, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert refused.returncode != 0
    errors = [line for line in refused.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "holds a run with another config" in errors[0], refused.stderr[-2000:]
    assert "Traceback" not in refused.stderr
    assert [(results.parent / f).read_bytes() for f in files] == snapshot
