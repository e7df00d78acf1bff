#!/usr/bin/env python
"""Train an EAGLE-1 or EAGLE-3 head for a target, on the target's own answers to the training prompts.

Stages, each cached under --work so a rerun resumes:
1. answers: batched greedy answers to prompts from $SPECLAB_DATA/train_prompts (none shares a word 8-gram with
   an evaluation prompt), with the post-norm final state and the inputs of layers 2, L//2, L-3 captured in the
   same batch loop (one cache serves both variants and the Medusa/Hydra trainer);
2. train: EAGLE-1's feature regression + token CE, or EAGLE-3's training-time test (harness/training/eagle.py),
   with held-out tau measured by the engine every --eval-every steps (a learning curve);
3. export: the head in the official layout (config.json + model.safetensors), token frequencies, a README.

Example (the committed heads for smollm2-135m, 40 minutes of training each: EAGLE-1 on one thread beside
another run, EAGLE-3 alone on two; their READMEs have the exact commands and learning curves):
    python scripts/train_eagle.py --variant eagle --prompts 3971 --threads 1 --epochs 30 --train-minutes 40 \
        --eval-every 500 --precision bf16 --out drafts/smollm2-135m/eagle
    python scripts/train_eagle.py --variant eagle3 --prompts 3971 --threads 2 --epochs 30 --train-minutes 40 \
        --eval-every 1000 --precision bf16 --out drafts/smollm2-135m/eagle3
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.api import load_plugins  # noqa: E402
from harness.core.errors import SpeclabError  # noqa: E402
from harness.drafting.heads.eagle_checkpoints import new_head, save_head  # noqa: E402
from harness.drafting.heads.eagle_drafter import HeadDrafter, TreeShape  # noqa: E402
from harness.engine.sampling import Sampling  # noqa: E402
from harness.training.data import add_head_trainer_arguments, answers_for, split_holdout  # noqa: E402
from harness.training.eagle import EagleLoss, batches, draft_vocab  # noqa: E402
from harness.training.loop import Trainer, heldout_tau  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=["eagle", "eagle3"], required=True)
    p.add_argument("--steps", type=int, default=3, help="EAGLE-3 training-time-test steps")
    p.add_argument("--ce-weight", type=float, default=0.1, help="EAGLE-1: weight of the token loss beside the feature loss")
    p.add_argument("--lr", type=float, default=1e-3)
    add_head_trainer_arguments(p)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    load_plugins()  # the task families the training-data overlap check composes
    args = parse_args(argv)
    t0 = time.time()
    target, work, samples, gen_minutes = answers_for(args)
    held, train_set = split_holdout(samples, args.holdout, args.seed)
    vocab, ranking = draft_vocab(train_set, args.draft_vocab, target.vocab_size)

    head = new_head(args.variant, target, vocab if args.variant == "eagle3" else None, seed=args.seed)
    w = target.lm_head.weight
    if args.variant == "eagle3":
        with torch.no_grad():  # start from the target's own head and final norm over the draft vocabulary
            head.lm_head.weight.copy_(w.detach()[vocab.ids])
            head.norm.weight.copy_(target.model.get_decoder().norm.weight.detach())
    else:
        head.vocab = vocab
        head.set_target_head(vocab.rows(w))
    loss = EagleLoss(head, w, vocab, steps=args.steps, ce_weight=args.ce_weight)
    shape = TreeShape("dynamic", depth=5, top_k=2, total_tokens=8)
    eval_prompts = [s["prompt"] for s in held[: args.eval_prompts]]

    def evaluate(step: int) -> dict:
        with torch.no_grad():
            tau = heldout_tau(target, lambda: HeadDrafter(head, shape, Sampling()), eval_prompts, args.eval_tokens)
        print(f"step {step}: held-out tau {tau:.3f}", file=sys.stderr)
        return {"tau": tau, "train_tokens": step * args.batch * (sum(len(s["answer"]) for s in train_set) / max(1, len(train_set)))}

    per_epoch = max(1, len(train_set) // args.batch)
    ckpt = work / (f"{args.variant}-v{args.draft_vocab}-s{args.steps}-lr{args.lr:g}-e{args.epochs:g}-"
                   f"n{len(train_set)}-seed{args.seed}.pt")
    trainer = Trainer(head, args.lr, per_epoch * args.epochs, args.train_minutes, ckpt, precision=args.precision)
    before = evaluate(0)["tau"] if trainer.step == 0 else None  # what training adds is judged against this
    stats = trainer.run(lambda seed: batches(train_set, args.batch, seed, args.max_len), loss, evaluate, args.eval_every)
    final_eval = trainer.final_evaluation(evaluate)
    command = "python scripts/train_eagle.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    stats.update(
        heldout_tau=final_eval["tau"],
        heldout_tau_untrained=before,
        heldout_tree="dynamic depth=5 top_k=2 total_tokens=8",
        learning_curve=trainer.history,
        epochs=trainer.step / per_epoch,
        train_answers=len(train_set),
        train_answer_tokens=sum(len(s["answer"]) for s in train_set),
        train_tokens=sum(len(s["answer"]) + len(s["prompt"]) for s in train_set),
        heldout_prompts=len(eval_prompts),
        draft_vocab=len(vocab),
        generate_minutes=gen_minutes,
        total_minutes=(time.time() - t0) / 60,
    )
    out = Path(args.out)
    save_head(head, out, target, {"command": command, **{k: v for k, v in stats.items() if k != "learning_curve"},
                                  "learning_curve": trainer.history})
    (out / "token_frequency.json").write_text(json.dumps({"token_ids": ranking[: max(args.draft_vocab, 16384)]}))
    what = ("EAGLE-1: fc over [embedding ; post-norm target state] + one decoder layer without input norm, drafting "
            "through the target's own head" if args.variant == "eagle" else
            f"EAGLE-3: fc over the inputs of target layers {list(head.target_layers)}, one decoder layer over 2H, its own "
            f"head over {len(vocab)} draft tokens (d2t/t2d)")
    curve = "".join(f"| {h['step']} | {h['train_tokens']:.0f} | {h['minutes']:.1f} | {h['tau']:.3f} |\n" for h in trainer.history)
    untrained = f" (untrained: {before:.3f})" if before is not None else ""
    (out / "README.md").write_text(
        f"# {args.variant} head for {target.info.name}\n\n{what}. Trained on the target's own greedy answers to "
        f"{len(train_set)} training prompts ({stats['train_answer_tokens']} answer tokens); never on an evaluation prompt.\n\n"
        f"Made by: `{command}` ({stats['total_minutes']:.1f} min on this machine: {stats['generate_minutes']:.1f} min of "
        f"answers, {stats['minutes']:.1f} min of training, {stats['epochs']:.2f} epochs).\n\n"
        f"Held-out tau (engine, greedy, {len(eval_prompts)} held-out training prompts, {args.eval_tokens} tokens, "
        f"{stats['heldout_tree']}): {stats['heldout_tau']:.3f}{untrained}.\n\n"
        + (f"Learning curve:\n\n| step | answer tokens seen | minutes | held-out tau |\n|---|---|---|---|\n{curve}\n" if curve else "")
        + "Official layout (config.json + model.safetensors, no embedding copy): `harness.drafting.heads.eagle_checkpoints.load_head` reads it, "
          "and so do loaders that take the target's embedding.\n"
    )
    print(json.dumps({k: v for k, v in stats.items() if k != "learning_curve"}, indent=1, default=str))
    return stats


if __name__ == "__main__":
    try:
        main()
    except SpeclabError as e:
        raise SystemExit(f"error: {e}")
