#!/usr/bin/env python
"""Train an early-exit adapter for self-speculation (method=layerskip) on the target's own answers.

1. answers: the head trainers' shared answer cache (the target's greedy answers to the training prompts, with
   its post-norm final states), generated with a progress bar if absent;
2. features: the normed state after the first --exit-layer layers at every answer position (one early-exit
   forward per answer, a fraction of a full one);
3. train: the adapter (hidden x hidden, zero-initialised: it starts as the plain early exit) by KL from the
   full model's next-token distribution to the early exit's, for --train-minutes; the held-out agreement of
   the two argmaxes (the first draft token's greedy acceptance) is printed along the way;
4. judge: held-out tau of the engine's layerskip with and without the adapter; write the adapter + README.

Example (the committed adapter for smollm2-135m):
    python scripts/train_early_exit.py --exit-layer 6 --out drafts/smollm2-135m/early_exit
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

from harness.api import load_plugins  # noqa: E402
from harness.core.errors import SpeclabError  # noqa: E402
from harness.drafting.early_exit import EarlyExitAdapter, save_adapter  # noqa: E402
from harness.engine.sampling import Sampling  # noqa: E402
from harness.loading.sources import load_named  # noqa: E402
from harness.training.data import head_answers, split_holdout  # noqa: E402
from harness.training.loop import heldout_tau  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m or gemma3-270m (the packaged models), tiny-llama (tests) or an HF id/folder")
    p.add_argument("--exit-layer", type=int, default=6)
    p.add_argument("--prompts-file", default=None)
    p.add_argument("--prompts", type=int, default=640)
    p.add_argument("--gen-tokens", type=int, default=128)
    p.add_argument("--gen-batch", type=int, default=32)
    p.add_argument("--holdout", type=float, default=0.04)
    p.add_argument("--batch", type=int, default=512, help="answer positions per step")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--train-minutes", type=float, default=15.0)
    p.add_argument("--max-steps", type=int, default=100_000)
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--eval-prompts", type=int, default=8)
    p.add_argument("--eval-tokens", type=int, default=64)
    p.add_argument("--k", type=int, default=3, help="draft tokens per step when judging tau")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None)
    p.add_argument("--out", required=True)
    return p.parse_args(argv)


@torch.inference_mode()
def features(target, samples: list[dict], exit_layer: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(early-exit normed states, full-model post-norm states) at every answer position, fp32."""
    early, final = [], []
    for s in tqdm(samples, desc=f"early exit after layer {exit_layer}", unit="answer"):
        seq = s["prompt"] + s["answer"]
        n = len(s["prompt"])
        out = target.forward(target.new_cache(len(seq)), seq, logits_rows=[], hidden_layers=("final",), exit_layer=exit_layer)
        early.append(out.hidden["final"][n - 1 : len(seq) - 1].float())  # position j predicts token j + 1
        final.append(s["hidden"]["final"][n - 1 : len(seq) - 1].float())
    return torch.cat(early), torch.cat(final)


@torch.no_grad()
def agreement(target, adapter: EarlyExitAdapter, early: torch.Tensor, final: torch.Tensor) -> float:
    head = target.lm_head
    hits = 0
    for i in range(0, len(early), 2048):
        hits += int((head(adapter(early[i : i + 2048])).argmax(-1) == head(final[i : i + 2048]).argmax(-1)).sum())
    return hits / max(1, len(early))


def main(argv: list[str] | None = None) -> dict:
    load_plugins()  # the task families the training-data overlap check composes
    from methods.layerskip import EarlyExitDrafter, LayerSkipConfig

    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    target = load_named(args.model)
    if not 1 <= args.exit_layer < target.num_layers:
        raise SpeclabError(f"--exit-layer must be in 1..{target.num_layers - 1} for this model")
    samples = head_answers(target, args.prompts_file, args.prompts, args.work, args.seed, args.gen_tokens,
                           batch=args.gen_batch)
    held, train_set = split_holdout(samples, args.holdout, args.seed)
    # clones leave inference mode's tensors behind: autograd may save these
    early, final = (t.clone() for t in features(target, train_set, args.exit_layer))
    held_early, held_final = features(target, held, args.exit_layer)

    adapter = EarlyExitAdapter(int(target.config.hidden_size), args.exit_layer)
    for p in target.model.parameters():
        p.requires_grad_(False)
    opt = torch.optim.AdamW(adapter.parameters(), lr=args.lr, weight_decay=0.0)
    weight = target.lm_head.weight.detach()  # the raw weight: the answer pass may have swapped in an inference-only kernel

    def head(x: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.linear(x, weight)

    curve = [{"step": 0, "positions_seen": 0, "minutes": 0.0, "heldout_agreement": agreement(target, adapter, held_early, held_final)}]
    print(f"step 0: held-out argmax agreement {curve[0]['heldout_agreement']:.3f} (plain early exit)", file=sys.stderr)
    g = torch.Generator().manual_seed(args.seed)
    start, step = time.time(), 0
    bar = tqdm(total=args.max_steps, desc="train", unit="step")
    while step < args.max_steps and time.time() - start < args.train_minutes * 60:
        idx = torch.randint(0, len(early), (args.batch,), generator=g)
        with torch.no_grad():
            teacher = torch.log_softmax(head(final[idx]).float(), -1)
        student = torch.log_softmax(head(adapter(early[idx])).float(), -1)
        loss = torch.nn.functional.kl_div(student, teacher, log_target=True, reduction="batchmean")

        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(kl=f"{loss.item():.3f}")
        if args.eval_every and step % args.eval_every == 0:
            curve.append({"step": step, "positions_seen": step * args.batch, "minutes": (time.time() - start) / 60,
                          "heldout_agreement": agreement(target, adapter, held_early, held_final)})
            print(f"step {step}: held-out argmax agreement {curve[-1]['heldout_agreement']:.3f}", file=sys.stderr)
    bar.close()
    if curve[-1]["step"] != step:
        curve.append({"step": step, "positions_seen": step * args.batch, "minutes": (time.time() - start) / 60,
                      "heldout_agreement": agreement(target, adapter, held_early, held_final)})
    adapter.eval()

    eval_prompts = [s["prompt"] for s in held[: args.eval_prompts]]
    cfg = LayerSkipConfig(exit_layer=args.exit_layer, k=args.k)
    tau = {name: heldout_tau(target, lambda a=a: EarlyExitDrafter(cfg, target, a, Sampling()), eval_prompts, args.eval_tokens)
           for name, a in (("plain", None), ("adapter", adapter))}
    stats = {"exit_layer": args.exit_layer, "steps": step, "train_positions": len(early), "heldout_positions": len(held_early),
             "heldout_tau_plain": tau["plain"], "heldout_tau_adapter": tau["adapter"], "k": args.k, "curve": curve,
             "total_minutes": (time.time() - t0) / 60}
    command = "python scripts/train_early_exit.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    out = save_adapter(adapter, args.out, {"model": target.info.name, "command": command, "stats": stats})
    rows = "\n".join(f"| {c['step']} | {c['positions_seen']} | {c['minutes']:.1f} | {c['heldout_agreement']:.3f} |" for c in curve)
    (out / "README.md").write_text(
        f"# Early-exit adapter for {target.info.name} (exit after layer {args.exit_layer})\n\n"
        f"A residual linear map on the normed state after the first {args.exit_layer} of {target.num_layers} layers, "
        "read by the target's own head (`harness/drafting/early_exit.py`), trained by KL from the full model's next-token "
        f"distribution on the target's own answers to the training prompts ({len(early)} answer positions; never an "
        "evaluation prompt).\n\n"
        f"Made by: `{command}` ({stats['total_minutes']:.1f} min on this machine).\n\n"
        f"Held-out tau (engine, greedy, {len(eval_prompts)} held-out training prompts, {args.eval_tokens} tokens, k={args.k}): "
        f"{tau['adapter']:.3f} with the adapter, {tau['plain']:.3f} with the plain early exit.\n\n"
        "Learning curve (held-out agreement of the early exit's argmax with the full model's: the first draft "
        "token's greedy acceptance):\n\n| step | positions seen | minutes | held-out agreement |\n|---|---|---|---|\n"
        f"{rows}\n")
    print(json.dumps(stats, indent=1))
    return stats


if __name__ == "__main__":
    try:
        main()
    except SpeclabError as e:
        raise SystemExit(f"error: {e}")
