"""The shared training loop's precision option: bf16 autocast around the loss, fp32 weights and optimiser."""

from __future__ import annotations

import pytest
import torch

from harness.training.loop import Trainer

from .conftest import TRAINED_TAU


def _regression(tmp_path, precision: str, steps: int = 60):
    torch.manual_seed(0)
    module = torch.nn.Linear(16, 1)
    x = torch.randn(64, 16)
    y = x @ torch.randn(16, 1)
    seen: list[torch.dtype] = []

    def loss_fn(batch):
        out = module(batch[0])
        seen.append(out.dtype)
        return {"loss": (out.float() - batch[1]).pow(2).mean()}

    def batches(seed):
        yield x, y

    before = loss_fn((x, y))["loss"].item()
    seen.clear()
    trainer = Trainer(module, 3e-2, steps, minutes=10, checkpoint=tmp_path / f"{precision}.pt", warmup=1,
                      precision=precision)
    trainer.run(batches, loss_fn)
    during = list(seen)
    after = loss_fn((x, y))["loss"].item()
    return module, during, before, after, trainer.checkpoint


def test_bf16_runs_the_loss_in_autocast_and_keeps_fp32_weights(tmp_path):
    module, seen, before, after, checkpoint = _regression(tmp_path, "bf16")
    assert seen and all(d == torch.bfloat16 for d in seen)
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert after < 0.3 * before
    assert checkpoint.name == "bf16-bf16.pt"  # a bf16 run keeps its own checkpoint
    state = torch.load(checkpoint, weights_only=True)
    assert all(v.dtype == torch.float32 for v in state["module"].values())


def test_fp32_is_not_autocast(tmp_path):
    _, seen, before, after, _ = _regression(tmp_path, "fp32")
    assert seen and all(d == torch.float32 for d in seen)
    assert after < 0.3 * before


def test_an_unknown_precision_is_refused(tmp_path):
    with pytest.raises(ValueError, match="precision must be one of"):
        Trainer(torch.nn.Linear(2, 2), 1e-3, 10, 1.0, tmp_path / "x.pt", precision="fp8")


def test_a_bf16_training_run_keeps_its_own_checkpoint(eagle_heads, tmp_path):
    from scripts.train_eagle import main

    run = eagle_heads["eagle"]
    args = dict(zip(run["args"][::2], run["args"][1::2]))
    # the fixture's schedule: only the precision tells this run's checkpoint from the finished fp32 one
    args.update({"--precision": "bf16", "--out": str(tmp_path / "eagle_bf16")})
    threads = torch.get_num_threads()
    try:
        stats = main([a for kv in args.items() for a in kv])
    finally:
        torch.set_num_threads(threads)
    assert stats["heldout_tau_untrained"] is not None  # trained from step 0: not the fp32 run's checkpoint, resumed
    assert stats["steps"] == run["stats"]["steps"]
    assert stats["heldout_tau"] >= TRAINED_TAU > stats["heldout_tau_untrained"]  # bf16 autocast training learns
    assert list(run["work"].rglob(f"eagle-*-e{args['--epochs']}-*-bf16.pt"))
