"""logger=wandb, offline: the run's config, per-prompt table, summary metrics and figures land in wandb's files."""

import json
import os
import subprocess
import sys

import pandas as pd
import pytest

from .conftest import REPO

pytest.importorskip("wandb", reason="needs the wandb extra")


def test_cli_logs_a_run_to_wandb_offline(tmp_path):
    run_dir = tmp_path / "run"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_DIR": str(tmp_path / "wb"), "WANDB_SILENT": "true",
           "WANDB_CONFIG_DIR": str(tmp_path / "wbconfig"), "WANDB_CACHE_DIR": str(tmp_path / "wbcache")}
    (tmp_path / "wb").mkdir()
    proc = subprocess.run(
        [sys.executable, "run.py", "logger=wandb", "logger.tags=[test]", "model=tiny-llama", "task.limit=2",
         "max_new_tokens=12", "engine.warmup=false", "progress=false", f"hydra.run.dir={run_dir}"],
        cwd=REPO, capture_output=True, text=True, env=env, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "wb" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, list((tmp_path / "wb").rglob("*"))[:20]
    files = runs[0] / "files"

    # wandb 0.31 keeps config and summary only in its binary run log (protobuf records whose values are
    # JSON text); the values summarize computed must be in it, under their keys
    blob = next(runs[0].glob("run-*.wandb")).read_bytes()
    expected = pd.read_parquet(run_dir / "summary.parquet").set_index("group")
    for key in ("speedup", "speedup_geomean", "tau", "tokens_per_s"):
        assert key.encode() in blob and json.dumps(float(expected.loc["overall", key])).encode() in blob, key
    assert b"demo/speedup_total" in blob
    assert b"max_new_tokens" in blob and b"tiny-llama" in blob  # the config

    method_rows = pd.read_parquet(run_dir / "results.parquet").query("role == 'method'")
    per_prompt = json.loads(next(p for p in (files / "media" / "table").glob("per_prompt_*.table.json")).read_text())
    assert len(per_prompt["data"]) == len(method_rows) and "tau" in per_prompt["columns"]
    summary_table = json.loads(next(p for p in (files / "media" / "table").glob("summary_*.table.json")).read_text())
    assert [row[summary_table["columns"].index("group")] for row in summary_table["data"]] == list(expected.index)
    images = sorted(p.name for p in (files / "media" / "images" / "figures").glob("*.png"))
    for name in ("speedup", "accept_lengths", "position_acceptance", "speedup_vs_tau", "time_breakdown"):
        assert any(i.startswith(name + "_") for i in images), images


def test_online_without_a_key_is_one_clear_error(tmp_path, monkeypatch):
    from omegaconf import OmegaConf

    from harness.core.errors import SpeclabError
    from harness.core.presets import as_config
    from harness.results.report import Report
    from harness.results.wandb_log import log_run

    from .conftest import compose

    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    for var, sub in (("WANDB_CONFIG_DIR", "cfg"), ("WANDB_DIR", "dir"), ("NETRC", "netrc")):
        monkeypatch.setenv(var, str(tmp_path / sub))
    cfg = as_config(compose("logger=wandb", "logger.mode=online", "model=tiny-llama"))
    OmegaConf.set_readonly(cfg, False)
    cfg.out_dir = str(tmp_path)
    df = pd.read_parquet(REPO / "tests" / "fixtures" / "results_small.parquet")
    with pytest.raises(SpeclabError, match="logger.mode=offline"):
        log_run(df, Report(pd.DataFrame()), cfg)
