"""Synthetic acceptance (harness/bench/synthetic.py): a real run's steps replayed on another model, per-depth rates,
rows labelled and kept apart from real ones, and one clear line for every bad setting."""

from __future__ import annotations

import re

import pandas as pd
import pytest

from harness.api import run
from harness.bench.runner import Runner
from harness.bench.synthetic import ACCEPT, SyntheticVerifier
from harness.core.errors import SpeclabError
from harness.engine.proposal import Proposal
from harness.engine.sampling import Sampling
from harness.engine.verifiers import GreedyVerifier
from harness.results.tables import summarize_frame

from .test_runs import tiny_cfg

COMMON = ("task=demo", "task.limit=3", "max_new_tokens=24")


@pytest.fixture(scope="module")
def real_run(tmp_path_factory):
    """A real run of a chain drafter and a tree drafter on the tiny model: the trace."""
    tmp = tmp_path_factory.mktemp("trace")
    df = run(tiny_cfg(tmp, *COMMON, "method=pld", "compare=[recycling]", "max_new_tokens=24"))
    return tmp / "run", df


def test_a_chain_replayed_on_the_same_model_repeats_every_step(tmp_path, real_run):
    folder, real = real_run
    syn = run(tiny_cfg(tmp_path, *COMMON, "method=pld", "synthetic.mode=trace", f"synthetic.trace={folder}"))
    m = syn[syn.role == "method"]
    assert (m.synthetic == "trace").all() and not m.lossless.any()
    for r in m.itertuples():
        ref = real[(real.method == "pld") & (real.prompt_id == r.prompt_id) & (real.turn == r.turn)].iloc[0]
        assert list(r.accept_lengths) == list(ref.accept_lengths)
        assert list(r.drafted_per_step) == list(ref.drafted_per_step)
        assert r.trace_steps == ref.steps and r.trace_new_tokens == ref.new_tokens


def test_a_trace_on_another_model_keeps_lengths_and_reports_the_real_tau(tmp_path, real_run):
    folder, real = real_run
    syn = run(tiny_cfg(tmp_path, *COMMON, "model.tiny.seed=1", "method=pld", "compare=[recycling]",
                       "synthetic.mode=trace", f"synthetic.trace={folder}"))
    base = real[real.role == "baseline"].set_index(["prompt_id", "turn"]).new_tokens
    for r in syn.itertuples():  # every side generates exactly the real baseline's tokens, stop tokens ignored
        assert r.new_tokens == base[(r.prompt_id, r.turn)]
    summary = summarize_frame(syn)
    overall = summary[summary.group == "overall"].set_index("method")
    real_tau = {m: real[real.method == m].new_tokens.sum() / real[real.method == m].steps.sum() for m in ("pld", "recycling")}
    for m in ("pld", "recycling"):
        assert overall.loc[m, "real_tau"] == pytest.approx(real_tau[m])
    assert overall.loc["pld", "tau"] == pytest.approx(real_tau["pld"])  # chains replay exactly
    # a tree may lack a path as deep as the real one (another model's drafter shaped it): never deeper
    assert overall.loc["recycling", "tau"] <= real_tau["recycling"] + 1e-9
    # never pooled with real rows: collected together, the runs keep apart labels
    both = summarize_frame(pd.concat([real, syn], ignore_index=True))
    assert {"pld", "pld (synthetic=trace)"} <= set(both.method)


def test_rates_set_the_accepted_length(tmp_path):
    full = run(tiny_cfg(tmp_path, *COMMON, "method=pld", "synthetic.mode=rates", "synthetic.rates=[1,1,1]", name="full"))
    none = run(tiny_cfg(tmp_path, *COMMON, "method=pld", "synthetic.mode=rates", "synthetic.rates=[0,0,0]", name="none"))
    for r in full[full.role == "method"].itertuples():
        assert list(r.drafted_per_step)[:-2] == [3] * (len(r.drafted_per_step) - 2)  # the budget cuts the end
        assert all(a == d + 1 for a, d in zip(r.accept_lengths, r.drafted_per_step))
    assert (none[none.role == "method"].tau == 1.0).all()


def test_the_verifier_accepts_the_deepest_path_the_tree_has():
    v = SyntheticVerifier(GreedyVerifier(Sampling()))
    import torch

    logits = torch.zeros(6, 10)
    # root -> 0 (leaf), root -> 1 -> 2 -> 3, 1 -> 4
    tree = Proposal([5, 6, 7, 8, 9], [-1, -1, 1, 2, 1], meta={ACCEPT: 3})
    assert v.verify(logits, tree, None).accepted == [1, 2, 3]
    tree.meta[ACCEPT] = 1
    assert v.verify(logits, tree, None).accepted == [0]
    tree.meta[ACCEPT] = 9  # deeper than the tree: the deepest path
    assert v.verify(logits, tree, None).accepted == [1, 2, 3]


@pytest.mark.parametrize("overrides, message", [
    (["synthetic.mode=replay"], "unknown synthetic.mode"),
    (["synthetic.mode=trace"], "needs synthetic.trace"),
    (["synthetic.mode=trace", "synthetic.trace=/nonexistent/run"], "no results.parquet"),
    (["synthetic.mode=rates"], "needs synthetic.rates"),
    (["synthetic.mode=rates", "synthetic.rates=[1.5]"], "in [0, 1]"),
    (["synthetic.mode=rates", "synthetic.rates=[0.5]", "compare=[hf_pld]"], "drafts inside transformers"),
    (["synthetic.mode=rates", "synthetic.rates=[0.5]", "baseline=cached"], "set baseline=interleaved"),
])
def test_bad_synthetic_settings_name_the_fix(tmp_path, overrides, message):
    with pytest.raises(SpeclabError, match=re.escape(message)):
        Runner(tiny_cfg(tmp_path, *COMMON, "method=pld", *overrides))


def test_a_trace_without_the_method_is_refused(tmp_path, real_run):
    folder, _ = real_run
    with pytest.raises(SpeclabError, match="no rows of method 'lookahead'"):
        Runner(tiny_cfg(tmp_path, *COMMON, "method=lookahead", "synthetic.mode=trace", f"synthetic.trace={folder}"))
