"""Sampling runs reproduce from their recorded seeds, and every method runs at temperature > 0."""

import pandas as pd
import pytest

from harness.api import run

from .conftest import compose


@pytest.mark.parametrize("method", ["ar", "pld"])
def test_sampling_run_reproduces(method, tmp_path):
    def once(folder):
        cfg = compose("model=tiny-llama", f"method={method}", "temperature=0.8", "top_p=0.9", "top_k=50",
                      "task.limit=2", "max_new_tokens=12", "repeats=2", "engine.warmup=false", "progress=false")
        cfg.out_dir = str(folder)
        return run(cfg)

    a, b = once(tmp_path / "a"), once(tmp_path / "b")
    key = ["prompt_id", "turn", "repeat", "role"]
    a, b = a.sort_values(key).reset_index(drop=True), b.sort_values(key).reset_index(drop=True)
    assert a.output_hash.tolist() == b.output_hash.tolist()
    assert a.seed.notna().all() and a.seed.tolist() == b.seed.tolist()
    # different repeats draw different seeds, and method and baseline share the seed of their prompt
    assert a.groupby(["prompt_id", "turn", "repeat"]).seed.nunique().eq(1).all()
    assert a.groupby(["prompt_id", "turn"]).seed.nunique().eq(2).all()
    m = a[a.role == "method"]
    assert (m.acceptance_rule == "rejection").all() and m.lossless.all() and m.equivalent.isna().all()
    assert isinstance(pd.read_parquet(tmp_path / "a" / "results.parquet"), pd.DataFrame)
