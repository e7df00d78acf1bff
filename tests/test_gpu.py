"""Checks that need a GPU (skipped on machines without one; scripts/gpu_check.sh runs them where one is lent):
greedy identity with ``ar`` through captured CUDA graphs in fp32, near ties only in bf16, sampled runs with
device tensors and host generators, the compiled peer, and synthetic acceptance on the device."""

from __future__ import annotations

import pytest
import torch

from harness.bench.equivalence import equivalence
from harness.loading.sources import load_target
from harness.model import cuda_graphs
from methods.eagle2 import Eagle2Config
from methods.medusa import MedusaConfig

from .conftest import build_with_head
from .test_engine_device import MAX_NEW, engine_method, generations
from .test_runs import tiny_cfg

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]


@pytest.fixture(scope="module")
def cuda_target():
    target = load_target("tiny-llama", "tiny", device="cuda")
    assert cuda_graphs.enable(target, "auto") and target.static.capture
    return target


@pytest.fixture(scope="module")
def cuda_ar(cuda_target, tiny_prompts):
    """``ar`` on the GPU through its 1-token graph: what every method on the GPU is compared with."""
    return generations(engine_method(cuda_target, "ar"), tiny_prompts)


def assert_same_as_ar(target, gen, reference, prompts) -> None:
    """``gen``'s greedy fp32 outputs equal ``ar``'s token for token (README: fp32 runs must match exactly; no tie
    allowance), and its drafts were accepted, so verification, not only the target's own token, made them."""
    accepted = 0
    for ref, prompt in zip(reference, prompts):
        res = gen.generate(prompt, MAX_NEW, None)
        if res.token_ids != ref:
            eq = equivalence(target, prompt, res.token_ids, ref)
            pytest.fail(f"{gen.name}: fp32 output parts from ar at token {eq['first_divergence']} "
                        f"(top-1/top-2 margin {eq['divergence_margin']})")
        assert sum(res.drafted) > 0 or gen.name == "ar", f"{gen.name} drafted nothing"
        accepted += sum(res.accepted)
    assert accepted > 0 or gen.name == "ar", f"{gen.name}: no draft token accepted on {len(prompts)} prompts"


def test_ar_through_graphs_matches_cpu_eager(tiny_target, cuda_target, tiny_prompts, cuda_ar):
    assert cuda_ar == generations(engine_method(tiny_target, "ar"), tiny_prompts)
    assert any(g.graph is not None for g in cuda_target.static.graphs.values())


@pytest.mark.parametrize("spec", ["pld", "recycling", "lookahead"])
def test_cuda_graphs_are_lossless_in_fp32(cuda_target, tiny_prompts, cuda_ar, spec):
    before = cuda_target.static.replays
    assert_same_as_ar(cuda_target, engine_method(cuda_target, spec), cuda_ar, tiny_prompts)
    assert cuda_target.static.replays > before


def test_heads_on_cuda_are_lossless(cuda_target, tiny_prompts, cuda_ar, eagle_heads, parallel_heads):
    for schema, folder in ((Eagle2Config, eagle_heads["eagle"]["folder"]), (MedusaConfig, parallel_heads["medusa"]["folder"])):
        assert_same_as_ar(cuda_target, build_with_head(cuda_target, schema, folder), cuda_ar, tiny_prompts)


def test_draft_model_on_cuda(cuda_target, tiny_prompts, cuda_ar, layer_draft_folder):
    gen = engine_method(cuda_target, f"sps draft.path={layer_draft_folder} k=4 vocab_size=null")
    assert gen.drafter.draft.device.type == "cuda" and gen.drafter.draft.static is not None
    assert_same_as_ar(cuda_target, gen, cuda_ar, tiny_prompts)


@pytest.mark.parametrize("method", ["pld", "recycling", "eagle2_tiny"])
def test_runs_on_cuda_end_to_end(tmp_path, method, eagle_heads):
    extra = [f"method.head={eagle_heads['eagle']['folder']}", "method=eagle2"] if method == "eagle2_tiny" else [f"method={method}"]
    from harness.api import run

    df = run(tiny_cfg(tmp_path, "task.limit=2", "engine.device=cuda", "model.dtype=float32", f"max_new_tokens={MAX_NEW}", *extra))
    assert df.device.str.startswith("cuda").all() and (df.cuda_graphs == "captured").all()
    m = df[df.role == "method"]
    assert m.equivalent.all(), m[["prompt_id", "first_divergence", "divergence_margin"]]  # fp32: exact, no ties
    assert m.drafted_tokens.sum() > 0 and m.accepted_tokens.sum() > 0 and m.new_tokens.sum() > m.steps.sum()


def test_bf16_on_cuda_diverges_only_at_near_ties(tmp_path):
    from harness.api import run

    df = run(tiny_cfg(tmp_path, "task.limit=4", "engine.device=cuda", "method=pld", "compare=[recycling]", "max_new_tokens=24"))
    m = df[df.role == "method"]
    assert (m.dtype == "bfloat16").all()  # model.dtype=auto on CUDA
    parted = m[~m.equivalent.astype(bool)]  # each divergence at a reported tie: a margin within its bf16 threshold
    near = parted.near_tie.astype(bool) & (parted.divergence_margin <= parted.near_tie_threshold)
    assert near.all(), parted[["method", "prompt_id", "first_divergence", "divergence_margin", "near_tie_threshold"]]
    assert (m.groupby("method").accepted_tokens.sum() > 0).all()


def test_sampling_and_peers_on_cuda(tmp_path, layer_draft_folder):
    from harness.api import run
    from harness.results.metrics import summarize

    common = ["task.limit=2", "engine.device=cuda", "model.dtype=float32", "max_new_tokens=32"]
    df = run(tiny_cfg(tmp_path, *common, "temperature=0.5", "method=sps", f"method.draft.path={layer_draft_folder}",
                      "method.vocab_size=null", "compare=['recycling total_tokens=8',hf_generate,hf_compiled]"))
    assert set(df.method) == {"sps", "recycling", "hf_generate", "hf_compiled", "ar"} and (df.temperature == 0.5).all()
    assert df.device.str.startswith("cuda").all() and df.new_tokens.between(1, 32).all()
    peers = df[df.method.str.startswith("hf_")]
    assert (peers.steps == peers.new_tokens).all()  # one forward a token
    summary = summarize(df).set_index(["method", "group"])
    sps = summary.loc[("sps", "overall")]  # the draft model's sampled chains, rejection-sampled on the device
    assert sps.lossless and sps.acceptance_rate > 0 and sps.tau > 1.0, (sps.acceptance_rate, sps.tau)
    # recycling's successor lists seldom hold a random model's samples: it must draft; its rule's acceptance is
    # checked statistically in test_sampling_lossless.py
    assert summary.loc[("recycling", "overall"), "lossless"] and df[df.method == "recycling"].drafted_tokens.sum() > 0
    # sampled, not greedy: the sampled baseline parts from the greedy one
    greedy = run(tiny_cfg(tmp_path, *common, "method=pld", name="greedy"))
    hashes = [d[d.role == "baseline"].set_index("prompt_id").output_hash for d in (df, greedy)]
    assert len(hashes[1]) == 2 and (hashes[0][hashes[1].index] != hashes[1]).any()


def test_synthetic_acceptance_on_cuda(tmp_path):
    from harness.api import run

    df = run(tiny_cfg(tmp_path, "task.limit=2", "engine.device=cuda", "method=pld", "synthetic.mode=rates",
                      "synthetic.rates=[1,1,1]", "max_new_tokens=16"))
    m = df[df.role == "method"]
    assert (m.synthetic == "rates").all() and (m.tau > 2.5).all()
