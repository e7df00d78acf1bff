#!/usr/bin/env python
"""Train Medusa-1 or Hydra++ heads for a target, on the target's own answers to the training prompts.

Stages, each cached so a rerun resumes:
1. answers: the answer cache the EAGLE trainer fills (harness/training/data.py: batched greedy answers to
   $SPECLAB_DATA/train_prompts, none sharing a word 8-gram with an evaluation prompt, with the post-norm final
   states captured); an existing cache is reused as is;
2. train: Medusa-1 (frozen target, per-head soft cross-entropy on the target's distributions) or Hydra's
   prefix layer + grounded MLP heads with teacher forcing (harness/training/parallel.py), with held-out tau
   measured by the engine every --eval-every steps (a learning curve);
3. export: the official layout (config.json + medusa_lm_head.pt / hydra_lm_head.pt), token frequencies, a README.

Example (the committed heads for smollm2-135m, 25 minutes of training each, side by side):
    python scripts/train_medusa.py --variant medusa --prompts 3971 --threads 1 --epochs 30 --train-minutes 25 \
        --eval-every 600 --precision bf16 --out drafts/smollm2-135m/medusa
    python scripts/train_medusa.py --variant hydra --prompts 3971 --threads 1 --epochs 30 --train-minutes 25 \
        --eval-every 300 --precision bf16 --out drafts/smollm2-135m/hydra
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
from harness.drafting.heads.medusa_checkpoints import save_parallel_heads  # noqa: E402
from harness.drafting.heads.medusa_heads import new_hydra, new_medusa, restrict_outputs  # noqa: E402
from harness.drafting.tree_shapes import resolve_choices  # noqa: E402
from harness.training.data import add_head_trainer_arguments, answers_for, split_holdout  # noqa: E402
from harness.training.eagle import batches, draft_vocab  # noqa: E402
from harness.training.loop import Trainer, heldout_tau  # noqa: E402
from methods.hydra import HydraDrafter  # noqa: E402
from methods.medusa import MedusaDrafter  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--variant", choices=["medusa", "hydra"], required=True)
    p.add_argument("--heads", type=int, default=4, help="number of heads (tree depth)")
    p.add_argument("--layers", type=int, default=None, help="ResBlocks per head (default: medusa 1, hydra 2)")
    p.add_argument("--dropout", type=float, default=0.0, help="Hydra: dropout before each block")
    p.add_argument("--decay", type=float, default=0.8, help="weight of head k's loss: decay^k")
    p.add_argument("--lr", type=float, default=None, help="default: medusa 1e-3 (the paper), hydra 5e-4")
    p.add_argument("--tree", default="medusa_mc8", help="tree (choices preset) for the held-out tau")
    add_head_trainer_arguments(p, prompts=1280, train_minutes=15.0)
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    load_plugins()  # the task families the training-data overlap check composes
    from harness.training.parallel import ParallelHeadsLoss

    args = parse_args(argv)
    hydra = args.variant == "hydra"
    layers = args.layers or (2 if hydra else 1)
    lr = args.lr or (5e-4 if hydra else 1e-3)
    t0 = time.time()
    target, work, samples, gen_minutes = answers_for(args)
    held, train_set = split_holdout(samples, args.holdout, args.seed)
    vocab, ranking = draft_vocab(train_set, args.draft_vocab, target.vocab_size)
    if hydra:
        heads = new_hydra(target, args.heads, layers, args.dropout, args.seed)
    else:
        heads = new_medusa(target, args.heads, layers, args.seed)
    restrict_outputs(heads, vocab)
    loss = ParallelHeadsLoss(heads, target.lm_head.weight, vocab, args.decay)
    choices = [c for c in resolve_choices(args.tree) if len(c) <= args.heads]
    drafter_cls = HydraDrafter if hydra else MedusaDrafter
    eval_prompts = [s["prompt"] for s in held[: args.eval_prompts]]
    answer_tokens = sum(len(s["answer"]) for s in train_set)

    def drafter():
        d = drafter_cls(heads, choices)
        d.set_vocab(vocab.ids)
        return d

    def evaluate(step: int) -> dict:
        with torch.no_grad():
            tau = heldout_tau(target, drafter, eval_prompts, args.eval_tokens)
        print(f"step {step}: held-out tau {tau:.3f}", file=sys.stderr)
        return {"tau": tau, "train_tokens": step * args.batch * answer_tokens / max(1, len(train_set))}

    per_epoch = max(1, len(train_set) // args.batch)
    ckpt = work / (f"{args.variant}-h{args.heads}-l{layers}-v{args.draft_vocab}-d{args.dropout:g}-lr{lr:g}-"
                   f"e{args.epochs:g}-n{len(train_set)}-seed{args.seed}.pt")
    trainer = Trainer(heads, lr, per_epoch * args.epochs, args.train_minutes, ckpt, precision=args.precision)
    before = evaluate(0)["tau"] if trainer.step == 0 else None
    stats = trainer.run(lambda seed: batches(train_set, args.batch, seed, args.max_len), loss, evaluate, args.eval_every)
    final_eval = trainer.final_evaluation(evaluate)
    command = "python scripts/train_medusa.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    stats.update(
        heldout_tau=final_eval["tau"], heldout_tau_untrained=before, heldout_tree=args.tree,
        learning_curve=trainer.history, epochs=trainer.step / per_epoch, train_answers=len(train_set),
        train_answer_tokens=answer_tokens, heldout_prompts=len(eval_prompts), draft_vocab=len(vocab),
        heads=args.heads, layers=layers, lr=lr, generate_minutes=gen_minutes, total_minutes=(time.time() - t0) / 60,
    )
    out = Path(args.out)
    save_parallel_heads(heads, out, target, {"command": command, **{k: v for k, v in stats.items() if k != "learning_curve"},
                                             "learning_curve": trainer.history})
    (out / "token_frequency.json").write_text(json.dumps({"token_ids": ranking[: max(args.draft_vocab, 16384)]}))
    what = (f"Medusa-1: {args.heads} heads of {layers} ResBlock(s) on the target's post-norm final state, drafting "
            "through the target's own LM head (frozen, not stored: Medusa's legacy layout)" if not hydra else
            f"Hydra++ (grounded prefix-mlp): a prefix layer (one Llama decoder layer + norm, started from the target's "
            f"last layer) and {args.heads} heads of {layers} blocks reading [c_t ; embeddings of the tokens above], each "
            "drafting through the target's LM head (frozen, not stored) plus its own bias")
    curve = "".join(f"| {h['step']} | {h['train_tokens']:.0f} | {h['minutes']:.1f} | {h['tau']:.3f} |\n" for h in trainer.history)
    untrained = f" (untrained: {before:.3f})" if before is not None else ""
    (out / "README.md").write_text(
        f"# {args.variant} heads for {target.info.name}\n\n{what}. Trained on the target's own greedy answers to "
        f"{len(train_set)} training prompts ({answer_tokens} answer tokens); never on an evaluation prompt.\n\n"
        f"Made by: `{command}` ({stats['total_minutes']:.1f} min on this machine: {stats['generate_minutes']:.1f} min "
        f"reading or making answers, {stats['minutes']:.1f} min of training, {stats['epochs']:.2f} epochs).\n\n"
        f"Held-out tau (engine, greedy, {len(eval_prompts)} held-out training prompts, {args.eval_tokens} tokens, tree "
        f"{args.tree}): {stats['heldout_tau']:.3f}{untrained}.\n\n"
        + (f"Learning curve:\n\n| step | answer tokens seen | minutes | held-out tau |\n|---|---|---|---|\n{curve}\n" if curve else "")
        + f"Official layout (config.json + {heads.variant}_lm_head.pt): `harness.drafting.heads.medusa_checkpoints.load_parallel_heads` "
          "reads it, and so do the reference loaders (strict=False, output layers from the target's LM head).\n"
    )
    print(json.dumps({k: v for k, v in stats.items() if k != "learning_curve"}, indent=1, default=str))
    return stats


if __name__ == "__main__":
    try:
        main()
    except SpeclabError as e:
        raise SystemExit(f"error: {e}")
