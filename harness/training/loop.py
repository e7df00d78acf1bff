"""Loop scaffolding every head trainer shares: AdamW with warm-up and cosine decay, a time budget, a progress
bar, checkpoints every few minutes that a rerun resumes from, and held-out tau measured with the engine."""

from __future__ import annotations

import math
import os
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

import torch
from tqdm.auto import tqdm

PRECISIONS = ("fp32", "bf16")


class Trainer:
    """Runs ``loss_fn(batch) -> loss`` over ``batches()`` until ``total`` steps or ``minutes`` have passed.

    ``checkpoint`` (a file) holds the trainable state, the optimiser, the schedule and the time spent; a
    rerun with the same file continues where the last one stopped. A precision other than fp32 adds its name
    to the file's (``x.pt`` -> ``x-bf16.pt``), so runs in different precisions never resume each other.
    ``on_eval(step)`` is called every ``eval_every`` steps (learning curves).

    ``precision="bf16"`` runs ``loss_fn`` under bfloat16 autocast: the matmuls (the draft-vocabulary projections
    above all) run in bf16 while weights, gradients and the optimiser stay fp32. On a CPU with AMX a step is
    1.4-1.8x faster (BENCHMARKS.md section 6); evaluation always runs in fp32.
    """

    def __init__(self, module: torch.nn.Module, lr: float, total: int, minutes: float, checkpoint: Path,
                 warmup: int | None = None, clip: float = 0.5, save_seconds: float = 120.0,
                 precision: str = "fp32") -> None:
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.module = module
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=lr, betas=(0.9, 0.95), weight_decay=0.0)
        self.total = max(1, int(total))
        warm = warmup if warmup is not None else max(1, self.total // 20)
        # reads self.total when called: a time budget can shorten the run, and the decay follows it
        self.sched = torch.optim.lr_scheduler.LambdaLR(
            self.opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / self.total))))
        self.minutes = minutes
        checkpoint = Path(checkpoint)
        if precision != "fp32":
            checkpoint = checkpoint.with_name(f"{checkpoint.stem}-{precision}{checkpoint.suffix}")
        self.checkpoint = checkpoint
        self.clip = clip
        self.save_seconds = save_seconds
        self.step = 0
        self.spent = 0.0
        self.fit_after = 30  # steps timed before the schedule is fitted to the budget
        self.history: list[dict] = []
        if self.checkpoint.is_file():
            state = torch.load(self.checkpoint, weights_only=True)
            module.load_state_dict(state["module"], strict=False)
            self.opt.load_state_dict(state["opt"])
            self.sched.load_state_dict(state["sched"])
            self.step, self.spent, self.history = state["step"], state["spent"], state.get("history", [])
            self.total = state.get("total", self.total)
            print(f"resumed training at step {self.step} ({self.spent / 60:.1f} min spent)", file=sys.stderr)

    def save(self) -> None:
        self.checkpoint.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.checkpoint.with_suffix(".tmp")
        trainable = {k: p.detach() for k, p in self.module.named_parameters() if p.requires_grad}
        torch.save({"module": trainable, "opt": self.opt.state_dict(), "sched": self.sched.state_dict(),
                    "step": self.step, "spent": self.spent, "history": self.history,
                    "total": self.total}, tmp)
        os.replace(tmp, self.checkpoint)

    def run(self, batches: Callable[[int], Iterator], loss_fn: Callable[[object], dict[str, torch.Tensor]],
            on_eval: Callable[[int], dict] | None = None, eval_every: int = 0) -> dict:
        start = time.time() - self.spent
        last_save = time.time()
        bar = tqdm(total=self.total, initial=self.step, desc="train", unit="step")
        self.module.train()
        device = next(self.module.parameters()).device.type
        epoch = 0
        stop = self.step >= self.total
        while not stop:
            for batch in batches(epoch * 100003 + self.step):
                with torch.autocast(device, dtype=torch.bfloat16, enabled=self.precision == "bf16"):
                    losses = loss_fn(batch)
                self.opt.zero_grad(set_to_none=True)
                losses["loss"].backward()
                torch.nn.utils.clip_grad_value_(self.params, self.clip)
                self.opt.step()
                self.sched.step()
                self.step += 1
                bar.update(1)
                bar.set_postfix({k: f"{v.item():.3f}" for k, v in losses.items()})
                self.spent = time.time() - start
                if self.step == self.fit_after:
                    # fit the schedule into the time budget, so the learning rate has decayed when time is up
                    fit = int(self.step * self.minutes * 60 / max(self.spent, 1e-6))
                    if fit < self.total:
                        print(f"{self.total} steps do not fit in {self.minutes:g} min; training {fit}", file=sys.stderr)
                        self.total = max(self.step + 1, fit)
                        bar.total = self.total
                if on_eval and eval_every and self.step % eval_every == 0:
                    t_eval = time.time()
                    self.module.eval()
                    self.history.append({"step": self.step, "minutes": self.spent / 60, **on_eval(self.step)})
                    self.module.train()
                    start += time.time() - t_eval  # the budget is training time; evaluation is extra
                if time.time() - last_save > self.save_seconds:
                    self.save()
                    last_save = time.time()
                if self.step >= self.total or self.spent >= self.minutes * 60:
                    stop = True
                    break
            epoch += 1
        bar.close()
        self.module.eval()
        self.save()
        return {"steps": self.step, "minutes": self.spent / 60}

    def final_evaluation(self, on_eval: Callable[[int], dict]) -> dict:
        """``on_eval`` at the last step, recorded as the learning curve's last point unless it already is."""
        result = on_eval(self.step)
        if not self.history or self.history[-1]["step"] != self.step:
            self.history.append({"step": self.step, "minutes": self.spent / 60, **result})
        return result


def heldout_tau(target, drafter_factory: Callable[[], object], prompts: Sequence[list[int]], max_new_tokens: int) -> float:
    """Mean accepted length (new tokens / target forwards) of the engine on held-out training prompts."""
    from harness.engine.decoder import Decoder
    from harness.engine.sampling import Sampling
    from harness.engine.verifiers import make_verifier

    decoder = Decoder(target, make_verifier(Sampling()))
    tokens = steps = 0
    for p in prompts:
        r = decoder.generate(list(p), drafter_factory(), max_new_tokens)
        tokens += r.new_tokens
        steps += r.steps
    return tokens / max(1, steps)
