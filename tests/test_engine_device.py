"""The engine's device options on a CPU-only machine: the static-shape forward path (what CUDA graphs replay)
gives exactly the eager path's tokens for every family of drafter, device and dtype resolution, kernels per
device, the compiled stock peer, and the near-tie / mismatch split of the equivalence check.

The same checks on a GPU, with the graphs captured, are in test_gpu.py (skipped here)."""

from __future__ import annotations

import math

import pandas as pd
import pytest
import torch
from omegaconf import OmegaConf

from harness.api import run
from harness.bench.equivalence import NEAR_TIE_FLOOR, near_tie_threshold, resolution
from harness.bench.runner import Runner
from harness.core.config import EngineConfig, TinySpec
from harness.core.errors import SpeclabError
from harness.core.presets import method_node
from harness.core.registry import METHODS
from harness.engine import tree as T
from harness.engine.method import MethodContext
from harness.engine.sampling import Sampling
from harness.loading.sources import load_target
from harness.model import cuda_graphs
from harness.model.device import resolve_device, resolve_dtype
from harness.model.kernels import resolve_kernel
from harness.results.metrics import aggregate
from methods.eagle2 import Eagle2Config
from methods.eagle3 import Eagle3Config
from methods.hydra import HydraConfig
from methods.medusa import MedusaConfig

from .conftest import build_with_head
from .test_runs import pooled_geomean, tiny_cfg

pytestmark = pytest.mark.usefixtures("one_thread")
MAX_NEW = 32


@pytest.fixture(scope="module")
def static_target():
    """A second copy of the tiny target (same seeded weights) with the static path on, uncaptured."""
    target = load_target("tiny-llama", "tiny")
    assert cuda_graphs.enable(target, "on")
    return target


def generations(gen, prompts) -> list[list[int]]:
    return [gen.generate(p, MAX_NEW, None).token_ids for p in prompts]


def engine_method(target, spec: str):
    return METHODS.build(method_node(spec), MethodContext(target, Sampling(), OmegaConf.structured(EngineConfig(kernel="torch"))))


@pytest.mark.parametrize("spec", ["ar", "pld", "recycling", "lookahead", "sjd"])
def test_static_path_matches_eager_for_training_free_methods(tiny_target, static_target, tiny_prompts, spec):
    before = static_target.static.replays
    assert generations(engine_method(static_target, spec), tiny_prompts) == generations(engine_method(tiny_target, spec), tiny_prompts)
    assert static_target.static.replays > before  # the static path served the steps, not an eager fallback


@pytest.mark.parametrize("schema, head", [(Eagle2Config, "eagle"), (Eagle3Config, "eagle3")])
def test_static_path_matches_eager_for_eagle_heads(tiny_target, static_target, tiny_prompts, eagle_heads, schema, head):
    folder = eagle_heads[head]["folder"]
    static = generations(build_with_head(static_target, schema, folder), tiny_prompts)
    assert static == generations(build_with_head(tiny_target, schema, folder), tiny_prompts)


@pytest.mark.parametrize("schema, name", [(MedusaConfig, "medusa"), (HydraConfig, "hydra")])
def test_static_path_matches_eager_for_parallel_heads(tiny_target, static_target, tiny_prompts, parallel_heads, schema, name):
    folder = parallel_heads[name]["folder"]
    static = generations(build_with_head(static_target, schema, folder), tiny_prompts)
    assert static == generations(build_with_head(tiny_target, schema, folder), tiny_prompts)


def test_static_path_matches_eager_for_a_draft_model(tiny_target, static_target, tiny_prompts, layer_draft_folder):
    spec = f"sps draft.path={layer_draft_folder} k=4 vocab_size=null"
    gen = engine_method(static_target, spec)
    assert gen.drafter.draft.static is not None  # the draft's own forwards take the static path too
    assert generations(gen, tiny_prompts) == generations(engine_method(tiny_target, spec), tiny_prompts)
    assert gen.drafter.draft.static.replays > 0


def test_a_tree_forward_equals_the_eager_one_row_for_row(tiny_target, static_target, tiny_prompts):
    prompt = tiny_prompts[1]
    parents = [-1, 0, 0, -1, 3, 1]  # siblings at two levels
    tokens = [prompt[-1], 5, 6, 7, 8, 9, 10]
    outs = []
    for target in (tiny_target, static_target):
        cache = target.new_cache(len(prompt) + 16)
        target.forward(cache, prompt[:-1])
        outs.append(target.forward(cache, tokens, positions=T.positions(parents, cache.length),
                                   tree=T.ancestor_mask(parents), hidden_layers=("final", 1)))
        assert cache.length == len(prompt) - 1 + len(tokens)
    eager, static = outs
    torch.testing.assert_close(static.logits, eager.logits, atol=1e-5, rtol=1e-5)
    for layer in ("final", 1):
        torch.testing.assert_close(static.hidden[layer], eager.hidden[layer], atol=1e-5, rtol=1e-5)


def test_recording_every_width_ahead_changes_nothing(tiny_target, tiny_prompts):
    ahead = load_target("tiny-llama", "tiny")
    cuda_graphs.enable(ahead, "on", [1, 2, 4, 8])
    ahead.static.record(256, ("final",))
    assert {w for w, _ in ahead.static.graphs} == {1, 2, 4, 8} and ahead.static.cache.length == 0
    assert generations(engine_method(ahead, "pld"), tiny_prompts) == generations(engine_method(tiny_target, "pld"), tiny_prompts)


def test_early_exit_forwards_never_take_the_static_path(tiny_target, tiny_prompts):
    """Self-speculation drafts with the target's first layers: a graph recorded at that depth must never serve a
    full forward (nor the reverse)."""
    static = load_target("tiny-llama", "tiny")
    cuda_graphs.enable(static, "on")
    spec = "layerskip exit_layer=1 adapter=none"
    assert generations(engine_method(static, spec), tiny_prompts) == generations(engine_method(tiny_target, spec), tiny_prompts)
    cache = static.new_cache(64)
    static.forward(cache, tiny_prompts[0][:5])
    before = static.static.replays
    static.forward(cache, [7], exit_layer=1)
    assert static.static.replays == before


def test_wider_than_the_widest_graph_runs_eagerly_on_the_same_buffers(tiny_target, tiny_prompts):
    narrow = load_target("tiny-llama", "tiny")
    cuda_graphs.enable(narrow, "on", [1, 2])
    spec = "pld num_draft=10"
    assert generations(engine_method(narrow, spec), tiny_prompts) == generations(engine_method(tiny_target, spec), tiny_prompts)


def test_targets_the_static_path_cannot_serve_run_eagerly():
    moe = load_target("tiny-mixtral", "tiny", tiny=TinySpec(family="mixtral"))
    assert cuda_graphs.unsupported(moe) is not None and not cuda_graphs.enable(moe, "on")
    sdpa = load_target("tiny-llama", "tiny", attention="sdpa")
    assert not cuda_graphs.enable(sdpa, "on") and sdpa.static is None
    plain = load_target("tiny-llama", "tiny")
    assert not cuda_graphs.enable(plain, "auto")  # auto: only on a GPU
    with pytest.raises(SpeclabError, match="engine.cuda_graphs"):
        cuda_graphs.enable(plain, "always")


@pytest.mark.parametrize("overrides", [("method=recycling",), ("method=pld", "engine.verify_cost=measure")],
                         ids=["auto-sized recycling", "measured c(k)"])
def test_a_run_records_the_static_path_after_measuring_its_verify_cost(tmp_path, monkeypatch, overrides):
    """With warm-up on, as every real run: c(k) is measured first (in inference mode, on the static buffers, by
    recycling's auto size or engine.verify_cost=measure), then the warm-up records every width. A fresh cache, so
    the curve is measured here and not read back."""
    monkeypatch.setenv("SPECLAB_CACHE", str(tmp_path / "cache"))
    df = run(tiny_cfg(tmp_path, "task.limit=2", "engine.cuda_graphs=on", "engine.warmup=true", *overrides))
    assert list((tmp_path / "cache" / "verify_cost").glob("*.json"))  # measured in this run
    assert (df.cuda_graphs == "uncaptured").all() and (df.device == "cpu").all()
    assert df[df.role == "method"].equivalent.all()


def test_the_warm_up_records_every_width_for_the_longest_generation(tmp_path):
    from harness.core.config import REPO

    runner = Runner(tiny_cfg(tmp_path, "task=mtbench", f"task.path={REPO / 'tests/fixtures/mt_bench_prompts.jsonl'}",
                             "method=recycling", "engine.cuda_graphs=on", "engine.warmup=true", "max_new_tokens=16"))
    runner.warmup()
    static = runner.target.static
    assert {w for w, _ in static.graphs} == set(static.widths)
    assert static.cache.layers[0].capacity >= runner.longest_context + max(static.widths)
    # recorded without autograd: a graph's outputs (what every replay returns) need no gradient
    assert not any(g.logits.requires_grad for g in static.graphs.values())


# -- device and dtype --------------------------------------------------------------------------------------------
def test_device_and_dtype_resolution():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert resolve_dtype("auto", torch.device("cpu")) == "float32"
    assert resolve_dtype("auto", torch.device("cuda")) == "bfloat16"
    assert resolve_dtype("float16", torch.device("cpu")) == "float16"
    with pytest.raises(SpeclabError, match="unknown engine.device 'tpu'"):
        resolve_device("tpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message of a machine without a GPU")
def test_cuda_without_a_gpu_is_one_clear_line(tmp_path):
    with pytest.raises(SpeclabError, match="torch sees no GPU.*engine.device=cpu"):
        Runner(tiny_cfg(tmp_path, "engine.device=cuda"))


def test_kernels_per_device():
    assert resolve_kernel("auto", torch.float32, "cuda") == "torch"
    assert resolve_kernel("torch", torch.float32, "cuda") == "torch"
    with pytest.raises(SpeclabError, match="CPU kernel"):
        resolve_kernel("onednn", torch.float32, "cuda")


# -- the compiled stock peer ---------------------------------------------------------------------------------
def test_hf_compiled_is_compiled_and_reported_beside_ar(tmp_path):
    from torch._dynamo.utils import counters

    counters.clear()
    df = run(tiny_cfg(tmp_path, "task.limit=2", "method=pld", "compare=[hf_compiled]", "max_new_tokens=12"))
    assert counters["stats"]["unique_graphs"] > 0  # torch.compile really traced the forward
    peer = df[df.method == "hf_compiled"]
    assert peer.equivalent.all() and (peer.steps == peer.new_tokens).all()
    assert (peer.prefill_time_s > 0).all() and (peer.prefill_time_s < peer.wall_time_s).all()
    from harness.results.tables import summarize_frame

    summary = summarize_frame(df).set_index(["method", "group"])
    assert summary.loc[("hf_compiled", "overall"), "speedup_vs_hf_compiled"] == pytest.approx(1.0)
    # paired by prompt with hf_compiled's own rows of this run (not with ar's, which give speedup_geomean)
    expect, prompts = pooled_geomean(df[df.method == "pld"], peer)
    assert prompts == 2 and summary.loc[("pld", "overall"), "speedup_vs_hf_compiled"] == pytest.approx(expect)


def test_hf_compiled_never_compiles_inside_a_timed_call(tmp_path, monkeypatch):
    """The warm-up compiles every static cache size the run's generations can meet (two-turn prompts whose lengths
    span several 32-token buckets), so no timed call traces or compiles a graph (dynamo's counters)."""
    from torch._dynamo.utils import counters

    from harness.bench import runner as runner_module
    from harness.core.config import REPO

    compiled_calls = []
    timed_generate = runner_module.timed_generate

    def watched(gen, prompt_ids, max_new_tokens, seed):
        before = (counters["stats"]["unique_graphs"], counters["frames"]["total"])
        timed = timed_generate(gen, prompt_ids, max_new_tokens, seed)
        if gen.name == "hf_compiled":
            compiled_calls.append((len(prompt_ids), before, (counters["stats"]["unique_graphs"], counters["frames"]["total"])))
        return timed

    monkeypatch.setattr(runner_module, "timed_generate", watched)
    counters.clear()
    run(tiny_cfg(tmp_path, "task=mtbench", f"task.path={REPO / 'tests/fixtures/mt_bench_prompts.jsonl'}", "method=ar",
                 "compare=['hf_compiled cache_bucket=32']", "engine.warmup=true", "max_new_tokens=12"))
    sizes = {-(-(n + 12) // 32) for n, _, _ in compiled_calls}
    assert len(compiled_calls) >= 4 and len(sizes) >= 2  # timed calls met several cache sizes
    assert counters["stats"]["unique_graphs"] > 0  # and the warm-up did compile
    assert all(before == after for _, before, after in compiled_calls), compiled_calls


def test_bad_hf_compiled_mode_is_one_clear_line(tmp_path):
    with pytest.raises(SpeclabError, match="unknown hf_compiled mode"):
        Runner(tiny_cfg(tmp_path, "method=pld", "compare=['hf_compiled mode=fastest']"))


# -- equivalence: near ties apart from real mismatches ---------------------------------------------------------
def test_near_tie_thresholds_follow_the_logits_dtype_at_their_magnitude():
    assert NEAR_TIE_FLOOR == {"float32": 1e-3, "float16": 2e-2, "bfloat16": 1e-1}
    # a bf16 logit carries 8 bits of mantissa: one step is 0.0625 from 8 to 16, 0.125 from 16 to 32
    assert resolution("bfloat16", 20.0) == 0.125 and resolution("bfloat16", 9.0) == 0.0625
    assert near_tie_threshold("bfloat16", 20.0, 20.0 - 0.125) >= 0.125  # a one-step tie is a near tie
    assert near_tie_threshold("bfloat16", 2.0, 1.9) == 0.1  # small logits: the floor
    assert near_tie_threshold("float32", 20.0, 19.0) == 1e-3 and near_tie_threshold("float16", 3000.0, 2998.0) == 4.0


def test_the_summary_separates_near_ties_from_mismatches():
    rows = pd.DataFrame({
        "run_id": "r", "prompt_id": ["a", "b", "c", "d"], "new_tokens": 10, "wall_time_s": 1.0, "steps": 5,
        "drafted_tokens": 4, "accepted_tokens": 2, "drafted_per_step": [[1]] * 4, "pos_reached": [[1]] * 4,
        "pos_accepted": [[1]] * 4, "ms_per_step": 1.0, "repetition_4gram": 0.0, "lossless": True,
        "equivalent": [True, False, False, False], "near_tie": [False, True, False, False],
        "divergence_margin": [math.nan, 1e-4, 2.5, 0.9],
    })
    agg = aggregate(rows, rows.iloc[:0])
    assert agg["equivalence_rate"] == 0.25 and agg["near_ties"] == 1 and agg["mismatches"] == 2


def test_bf16_divergences_are_near_ties(tmp_path):
    df = run(tiny_cfg(tmp_path, "task.limit=4", "method=pld", "compare=[recycling]", "model.dtype=bfloat16",
                      "engine.kernel=torch", "max_new_tokens=24"))
    m = df[df.role == "method"]
    assert (m.dtype == "bfloat16").all()
    assert (m.equivalent | m.near_tie).all()  # any divergence sits at a reported near tie, none is a mismatch


def test_the_gpu_bench_runs_end_to_end_on_a_tiny_shape(tmp_path):
    """scripts/gpu_bench.py (what gpu_check.sh runs on a GPU), on the CPU with a tiny shape: every side generates
    its tokens, c(k) comes from both paths and the tables are written."""
    import json

    from scripts.gpu_bench import main

    assert main(["--shapes", "tiny", "--device", "cpu", "--tokens", "8", "--prompts", "2", "--prompt-len", "48",
                 "--repeats", "1", "--ks", "1,2,4,128", "--compile-mode", "default", "--out", str(tmp_path)]) == 0
    (result,) = json.loads((tmp_path / "gpu_bench.json").read_text())
    assert set(result["tokens_per_s"]) == {"ar", "ar_eager", "hf_generate", "hf_compiled", "pld", "eagle2"}
    assert set(result["ck_static_ms"]) == {"1", "2", "4", "128"} and set(result["ck_eager_ms"]) == {"1", "2", "4", "128"}
    assert all(e["identical"] for e in result["pld_equivalence"])  # fp32: real pld equals ar exactly
    table = (tmp_path / "gpu_bench.md").read_text()
    assert "| hf_compiled | real |" in table and "| eagle2 | SYNTHETIC (rates 0.92" in table
