"""Linear kernels: oneDNN's packed kernel computes the same linear maps and keeps greedy outputs lossless."""

import copy
from types import SimpleNamespace

import pytest
import torch

from harness.core.errors import SpeclabError
from harness.engine.decoder import Decoder
from harness.engine.drafter import NoDraft
from harness.engine.sampling import Sampling
from harness.engine.verifiers import make_verifier
from harness.model.kernels import OneDNNLinear, apply_kernel, onednn_available
from methods.pld import PLDConfig, PromptLookup

from .test_greedy_equivalence import MAX_NEW, OracleTree, hf_greedy

pytestmark = pytest.mark.skipif(not onednn_available(), reason="torch built without oneDNN")


def test_onednn_linear_matches_torch():
    lin = torch.nn.Linear(96, 200, bias=True)
    packed = OneDNNLinear(lin)
    for rows in (1, 2, 3, 4, 9, 33):
        x = torch.randn(2, rows, 96)
        torch.testing.assert_close(packed(x), lin(x), rtol=1e-5, atol=1e-5)
        # every row is computed by the same kernel whatever the batch size
        torch.testing.assert_close(packed(x[:, :1]), packed(x)[:, :1], rtol=0, atol=0)


def test_engine_is_lossless_with_onednn(tiny_target, tiny_prompts):
    target = copy.deepcopy(tiny_target)
    apply_kernel(target.model, "onednn")
    assert isinstance(target.lm_head, OneDNNLinear)
    for i, prompt in enumerate(tiny_prompts):
        ref = hf_greedy(target, prompt, MAX_NEW)
        dec = Decoder(target, make_verifier(Sampling()))
        assert dec.generate(prompt, PromptLookup(PLDConfig(), target.stop_ids), MAX_NEW).token_ids == ref
        assert dec.generate(prompt, OracleTree(ref, seed=i), MAX_NEW).token_ids == ref


def test_unknown_kernel_is_an_error(tiny_target):
    with pytest.raises(SpeclabError, match="engine.kernel"):
        apply_kernel(tiny_target.model, "fast")


def test_hybrid_runs_one_row_through_torch_and_more_through_onednn():
    lin = torch.nn.Linear(96, 200, bias=True)
    hybrid = OneDNNLinear(lin, mkl_rows=1)
    one, many = torch.randn(1, 1, 96), torch.randn(1, 5, 96)
    torch.testing.assert_close(hybrid(one), lin(one), rtol=0, atol=0)  # F.linear itself
    torch.testing.assert_close(hybrid(many), OneDNNLinear(lin)(many), rtol=0, atol=0)


def test_engine_is_lossless_with_hybrid_up_to_near_ties(tiny_target, tiny_prompts):
    from harness.bench.equivalence import equivalence

    target = copy.deepcopy(tiny_target)
    apply_kernel(target.model, "hybrid")
    assert isinstance(target.lm_head, OneDNNLinear) and target.lm_head.mkl_rows == 1
    for prompt in tiny_prompts:
        dec = Decoder(target, make_verifier(Sampling()))
        ref = dec.generate(prompt, NoDraft(), MAX_NEW).token_ids  # every step one row: MKL
        out = dec.generate(prompt, PromptLookup(PLDConfig(), target.stop_ids), MAX_NEW).token_ids
        if out != ref:  # MKL's one-row and oneDNN's many-row products may round a tie apart, never more
            assert equivalence(target, prompt, out, ref)["near_tie"]


def test_the_one_row_timing_times_both_paths_restores_the_kernel_and_caches(tiny_target, tmp_path, monkeypatch):
    from harness.model import kernel_choice

    monkeypatch.setenv("SPECLAB_CACHE", str(tmp_path))
    target = copy.deepcopy(tiny_target)
    apply_kernel(target.model, "onednn")
    class Monitor:  # what other processes used meanwhile, as the load monitor would report it
        load = 1.5

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.result = SimpleNamespace(foreign_load=Monitor.load)

    monkeypatch.setattr(kernel_choice.hostinfo, "LoadMonitor", Monitor)
    kernel_choice.one_row_times(target, repeats=2)
    assert not (tmp_path / "kernel_timing").exists()  # a busy machine's timing is not kept
    Monitor.load = 0.0
    onednn_ms, mkl_ms = kernel_choice.one_row_times(target, repeats=2)
    assert onednn_ms > 0 and mkl_ms > 0 and len(list((tmp_path / "kernel_timing").glob("*.json"))) == 1
    assert all(m.mkl_rows == 0 for m in target.model.modules() if isinstance(m, OneDNNLinear))
    assert kernel_choice.one_row_times(target) == (onednn_ms, mkl_ms)  # read back, not measured again


@pytest.mark.parametrize("requested, onednn_ms, chosen, one_row_on_mkl, warned", [
    ("auto", 55.0, "onednn", False, False),  # oneDNN not slower at one token: it runs everything
    ("auto", 66.0, "hybrid", True, False),  # 1.2x slower: MKL takes the 1-token step, and nothing is warned
    ("onednn", 66.0, "onednn", False, True),  # asked for explicitly: run as asked, warned
    ("onednn", 55.0, "onednn", False, False),
    ("torch", 66.0, "torch", False, False),
])
def test_auto_takes_onednn_only_where_its_one_token_step_is_not_slower(tiny_target, monkeypatch, caplog, requested,
                                                                       onednn_ms, chosen, one_row_on_mkl, warned):
    import logging

    from harness.model import kernel_choice

    monkeypatch.setattr(kernel_choice, "CHECK_PARAMS", 0)  # time the tiny model as a real one
    monkeypatch.setattr(kernel_choice, "one_row_times", lambda target: (onednn_ms, 55.0))
    target = copy.deepcopy(tiny_target)
    log = logging.getLogger("speclab-test")
    with caplog.at_level(logging.INFO, logger="speclab-test"):
        choice = kernel_choice.choose_kernel(target, requested, log)
    assert choice.kernel == chosen
    linears = [m for m in target.model.modules() if isinstance(m, OneDNNLinear)]
    assert bool(linears) == (chosen != "torch")
    assert all((m.mkl_rows == 1) == one_row_on_mkl for m in linears)
    assert ("overstate" in caplog.text) == warned
    if chosen != "torch":
        assert choice.row_fields() == {"kernel_onednn_ms": onednn_ms, "kernel_mkl_ms": 55.0}


def test_a_run_records_the_kernel_it_chose_and_both_timings(tmp_path, monkeypatch):
    from harness.api import run
    from harness.model import kernel_choice

    from .test_runs import tiny_cfg

    monkeypatch.setattr(kernel_choice, "CHECK_PARAMS", 0)
    monkeypatch.setattr(kernel_choice, "one_row_times", lambda target: (66.0, 55.0))
    df = run(tiny_cfg(tmp_path, "task.limit=1", "method=pld"))
    assert (df.kernel == "hybrid").all() and (df.kernel_requested == "auto").all()
    assert (df.kernel_onednn_ms == 66.0).all() and (df.kernel_mkl_ms == 55.0).all()


@pytest.mark.parametrize("kernel, bf16_native, expect", [
    ("auto", True, torch.bfloat16),
    ("onednn", True, torch.bfloat16),
    ("torch", True, torch.float32),  # torch's bf16 linears on a CPU are slower than fp32 ones
    ("auto", False, torch.float32),
])
def test_auto_draft_dtype_is_bf16_only_where_bf16_linears_run_natively(monkeypatch, kernel, bf16_native, expect):
    from harness.model import kernels

    monkeypatch.setattr(kernels, "onednn_problem", lambda dtype, device: None if bf16_native else "no bf16 units")
    assert kernels.draft_dtype("auto", torch.float32, "cpu", kernel) == expect
    assert kernels.draft_dtype("auto", torch.float16, "cpu", kernel) == torch.float16  # a reduced target: its own
    assert kernels.draft_dtype("float32", torch.float32, "cpu", kernel) == torch.float32


def test_an_unknown_draft_dtype_names_the_choices():
    from harness.model.kernels import draft_dtype

    with pytest.raises(SpeclabError, match="choose auto or one of float32, bfloat16, float16"):
        draft_dtype("float8", torch.float32, "cpu", "auto")
