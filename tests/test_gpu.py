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


def assert_same_as_ar(target, outputs, reference, prompts) -> None:
    """Token for token, except at a numerical tie: fp32 GEMMs of 1 and of W rows may round the last bit
    differently on a GPU, so a divergence must sit at a top-1/top-2 margin under fp32's near-tie threshold."""
    for out, ref, prompt in zip(outputs, reference, prompts):
        if out != ref:
            eq = equivalence(target, prompt, out, ref)
            assert eq["near_tie"], f"divergence at {eq['first_divergence']} with margin {eq['divergence_margin']}"


def test_ar_through_graphs_matches_cpu_eager(tiny_target, cuda_target, tiny_prompts, cuda_ar):
    assert_same_as_ar(cuda_target, cuda_ar, generations(engine_method(tiny_target, "ar"), tiny_prompts), tiny_prompts)
    assert any(g.graph is not None for g in cuda_target.static.graphs.values())


@pytest.mark.parametrize("spec", ["pld", "recycling", "lookahead"])
def test_cuda_graphs_are_lossless_in_fp32(cuda_target, tiny_prompts, cuda_ar, spec):
    before = cuda_target.static.replays
    assert_same_as_ar(cuda_target, generations(engine_method(cuda_target, spec), tiny_prompts), cuda_ar, tiny_prompts)
    assert cuda_target.static.replays > before


def test_heads_on_cuda_are_lossless(cuda_target, tiny_prompts, cuda_ar, eagle_heads, parallel_heads):
    for schema, folder in ((Eagle2Config, eagle_heads["eagle"]["folder"]), (MedusaConfig, parallel_heads["medusa"]["folder"])):
        gen = build_with_head(cuda_target, schema, folder)
        assert_same_as_ar(cuda_target, generations(gen, tiny_prompts), cuda_ar, tiny_prompts)


def test_draft_model_on_cuda(cuda_target, tiny_prompts, cuda_ar, layer_draft_folder):
    gen = engine_method(cuda_target, f"sps draft.path={layer_draft_folder} k=4 vocab_size=null")
    assert gen.drafter.draft.device.type == "cuda" and gen.drafter.draft.static is not None
    assert_same_as_ar(cuda_target, generations(gen, tiny_prompts), cuda_ar, tiny_prompts)


@pytest.mark.parametrize("method", ["pld", "recycling", "eagle2_tiny"])
def test_runs_on_cuda_end_to_end(tmp_path, method, eagle_heads):
    extra = [f"method.head={eagle_heads['eagle']['folder']}", "method=eagle2"] if method == "eagle2_tiny" else [f"method={method}"]
    from harness.api import run

    df = run(tiny_cfg(tmp_path, "task.limit=2", "engine.device=cuda", "model.dtype=float32", f"max_new_tokens={MAX_NEW}", *extra))
    assert df.device.str.startswith("cuda").all() and (df.cuda_graphs == "captured").all()
    m = df[df.role == "method"]
    assert (m.equivalent | m.near_tie).all()


def test_bf16_on_cuda_diverges_only_at_near_ties(tmp_path):
    from harness.api import run

    df = run(tiny_cfg(tmp_path, "task.limit=4", "engine.device=cuda", "method=pld", "compare=[recycling]", "max_new_tokens=24"))
    m = df[df.role == "method"]
    assert (m.dtype == "bfloat16").all()  # model.dtype=auto on CUDA
    assert (m.equivalent | m.near_tie).all()


def test_sampling_and_peers_on_cuda(tmp_path, layer_draft_folder):
    from harness.api import run

    df = run(tiny_cfg(tmp_path, "task.limit=2", "engine.device=cuda", "model.dtype=float32", "temperature=1.0",
                      "method=sps", f"method.draft.path={layer_draft_folder}", "method.vocab_size=null",
                      "compare=[recycling,hf_generate,hf_compiled]", "max_new_tokens=16"))
    assert set(df.method) == {"sps", "recycling", "hf_generate", "hf_compiled", "ar"} and (df.new_tokens > 0).all()


def test_synthetic_acceptance_on_cuda(tmp_path):
    from harness.api import run

    df = run(tiny_cfg(tmp_path, "task.limit=2", "engine.device=cuda", "method=pld", "synthetic.mode=rates",
                      "synthetic.rates=[1,1,1]", "max_new_tokens=16"))
    m = df[df.role == "method"]
    assert (m.synthetic == "rates").all() and (m.tau > 2.5).all()
