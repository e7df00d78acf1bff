#!/usr/bin/env python
"""Distil a small draft model for a target from the target's own greedy answers.

The draft is the target's first N layers (initialised from them) plus a final norm, reusing the target's
frozen embeddings and tied output head, trained to match the target's next-token distribution on
answers the target itself generated for training prompts that share no word 8-gram with any evaluation
prompt. Stages are cached in --work and resume after an interruption:

1. generate: batched greedy answers, with the target's top-k next-token probabilities at every answer position
   (``harness/training/data.py``: the answer cache every trainer shares);
2. train: soft cross-entropy on answer positions over the answers' most frequent tokens (a reduced head
   keeps a CPU step cheap), AdamW with warm-up and cosine decay, checkpoints every few minutes;
3. export: the draft's own tensors as fp16 safetensors, a config naming the target and this command,
   token frequencies (for sps' optional reduced head) and held-out agreement with the target.

Example (the committed default draft for smollm2-135m):
    python scripts/distill_draft.py --layers 2 --out drafts/smollm2-135m
"""

from __future__ import annotations

import argparse
import json
import math
import random
import shlex
import sys
import time
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.api import load_plugins
from harness.core.diskcache import cache_dir
from harness.core.errors import SpeclabError  # noqa: E402
from harness.loading.sources import load_named
from harness.training.data import NON_COMMERCIAL, AnswerSpec, answer_shards, prompts_path, training_prompts


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="target: smollm2-135m or gemma3-270m (the packaged models), tiny-llama (tests) or an HF id/folder")
    p.add_argument("--prompts-file", default=None, help="JSONL with a 'prompt' field (default: $SPECLAB_DATA/train_prompts/prompts.jsonl)")
    p.add_argument("--layers", type=int, default=2, help="draft depth N <= 4")
    p.add_argument("--init-layers", default=None,
                   help="comma-separated target layers to initialise the draft's N layers from (default: the first N)")
    p.add_argument("--prompts", type=int, default=640, help="training prompts to answer")
    p.add_argument("--gen-tokens", type=int, default=96, help="answer length per prompt")
    p.add_argument("--max-prompt-tokens", type=int, default=320)
    p.add_argument("--gen-batch", type=int, default=16)
    p.add_argument("--topk", type=int, default=16, help="target probabilities kept per position")
    p.add_argument("--train-vocab", type=int, default=12288, help="most frequent answer tokens in the training head")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--lr", type=float, default=4e-4)
    p.add_argument("--epochs", type=float, default=3.0)
    p.add_argument("--train-minutes", type=float, default=13.0, help="stop training after this long")
    p.add_argument("--holdout", type=float, default=0.05)
    p.add_argument("--include-noncommercial", action="store_true", help=f"also use {', '.join(NON_COMMERCIAL)} prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--work", default=None, help="cache folder for generated data and checkpoints")
    p.add_argument("--out", required=True, help="output draft folder")
    args = p.parse_args(argv)
    if not 1 <= args.layers <= 4:
        p.error("--layers must be between 1 and 4")
    args.init = [int(x) for x in args.init_layers.split(",")] if args.init_layers else list(range(args.layers))
    if len(args.init) != args.layers:
        p.error(f"--init-layers names {len(args.init)} layers for --layers {args.layers}")
    return args


def build_draft(target, layers: int, init: list[int] | None = None):
    """A draft of ``layers`` decoder layers copied from the target's layers ``init`` (default: the first ones),
    with the target's final norm and its (shared, frozen) embeddings and tied head."""
    from transformers import AutoModelForCausalLM

    config = target.model.config.__class__.from_dict(target.model.config.to_dict())
    config.num_hidden_layers = layers
    config._attn_implementation = "sdpa"
    draft = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    src = target.model.state_dict()
    init = list(range(layers)) if init is None else init
    own = {}
    for i, j in enumerate(init):
        prefix = f"model.layers.{j}."
        own.update({f"model.layers.{i}." + k[len(prefix):]: v.clone() for k, v in src.items() if k.startswith(prefix)})
    own["model.norm.weight"] = src["model.norm.weight"].clone()
    shared = {"model.embed_tokens.weight": src["model.embed_tokens.weight"]}
    draft.load_state_dict({**own, **shared}, strict=False)
    draft.tie_weights()
    for name, p in draft.named_parameters():
        p.requires_grad = name.startswith(("model.layers.", "model.norm."))
    return draft


def batches(samples: list[dict], size: int, rng: random.Random):
    order = list(range(len(samples)))
    rng.shuffle(order)
    for i in range(0, len(order) - size + 1, size):
        yield [samples[j] for j in order[i : i + size]]


def collate(batch: list[dict], head_index: torch.Tensor):
    """Inputs, padding mask, and per answer position its (row, column) and soft target over the training head
    as [positions, k] indices and probabilities (tokens outside the head dropped, the rest renormalised)."""
    seqs = [s["prompt"] + s["answer"] for s in batch]
    width = max(len(s) for s in seqs)
    ids = torch.zeros(len(batch), width, dtype=torch.long)
    mask = torch.zeros(len(batch), width, dtype=torch.long)
    rows, cols, idx, prob = [], [], [], []
    for r, (s, seq) in enumerate(zip(batch, seqs)):
        ids[r, : len(seq)] = torch.tensor(seq)
        mask[r, : len(seq)] = 1
        n = len(s["answer"])
        rows += [r] * n
        cols += range(len(s["prompt"]) - 1, len(s["prompt"]) - 1 + n)  # outputs that predict answer tokens
        idx.append(head_index[s["top_idx"].long()])
        prob.append(s["top_p"].float())
    idx, prob = torch.cat(idx), torch.cat(prob)
    prob = prob * (idx >= 0)
    keep = prob.sum(1) > 0
    prob = prob[keep] / prob[keep].sum(1, keepdim=True)
    return ids, mask, torch.tensor(rows)[keep], torch.tensor(cols)[keep], idx[keep].clamp(min=0), prob


def soft_ce(logits: torch.Tensor, idx: torch.Tensor, prob: torch.Tensor) -> torch.Tensor:
    return -(prob * logits.log_softmax(-1).gather(1, idx)).sum(1).mean()


def train(args, target, draft, samples: list[dict], head_ids: torch.Tensor, work: Path) -> dict:
    head_index = torch.full((target.vocab_size,), -1, dtype=torch.long)
    head_index[head_ids] = torch.arange(len(head_ids))
    head_w = target.model.get_output_embeddings().weight.detach()[head_ids]
    params = [p for p in draft.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.0, betas=(0.9, 0.98))
    per_epoch = len(samples) // args.batch
    total = max(1, int(per_epoch * args.epochs))
    warm = max(1, total // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / total))))
    ckpt = work / f"train_l{'-'.join(map(str, args.init))}_e{args.epochs:g}.pt"
    step, spent = 0, 0.0
    if ckpt.is_file():
        state = torch.load(ckpt)
        draft.load_state_dict(state["draft"], strict=False)
        opt.load_state_dict(state["opt"])
        sched.load_state_dict(state["sched"])
        step, spent = state["step"], state["spent"]
        print(f"resumed training at step {step} ({spent / 60:.1f} min spent)", file=sys.stderr)
    rng = random.Random(args.seed + step)
    bar = tqdm(total=total, initial=step, desc="train", unit="step")
    last_save = time.time()
    start = time.time() - spent
    draft.train()
    while step < total and (time.time() - start) < args.train_minutes * 60:
        for batch in batches(samples, args.batch, rng):
            ids, mask, rows, cols, idx, prob = collate(batch, head_index)
            hidden = draft.model(input_ids=ids, attention_mask=mask).last_hidden_state
            loss = soft_ce(F.linear(hidden[rows, cols], head_w), idx, prob)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if time.time() - last_save > 120:
                torch.save({"draft": {k: v for k, v in draft.state_dict().items() if not k.startswith(("model.embed", "lm_head"))},
                            "opt": opt.state_dict(), "sched": sched.state_dict(), "step": step, "spent": time.time() - start}, ckpt)
                last_save = time.time()
            if step >= total or (time.time() - start) >= args.train_minutes * 60:
                break
    bar.close()
    draft.eval()
    return {"steps": step, "minutes": (time.time() - start) / 60, "epochs": step / max(1, per_epoch)}


@torch.inference_mode()
def agreement(draft, samples: list[dict], head_ids: torch.Tensor | None = None) -> float:
    """Teacher-forced share of answer positions where the draft's argmax is the target's greedy token."""
    hits = total = 0
    w = draft.get_output_embeddings().weight
    if head_ids is not None:
        w = w[head_ids]
    for s in samples:
        seq = torch.tensor([s["prompt"] + s["answer"]])
        hidden = draft.model(input_ids=seq).last_hidden_state[0]
        n = len(s["prompt"])
        pred = F.linear(hidden[n - 1 : n - 1 + len(s["answer"])], w).argmax(-1)
        if head_ids is not None:
            pred = head_ids[pred]
        hits += int((pred == torch.tensor(s["answer"])).sum())
        total += len(s["answer"])
    return hits / max(1, total)


def export(args, target, draft, stats: dict, freq: list[int], out: Path) -> None:
    from harness.drafting.draft_models import save_layer_draft

    command = "python scripts/distill_draft.py " + " ".join(shlex.quote(a) for a in sys.argv[1:])
    save_layer_draft(draft, out, target, {"init": f"target layers {args.init} and final norm", "command": command, **stats})
    (out / "token_frequency.json").write_text(json.dumps({"token_ids": freq}))
    (out / "README.md").write_text(
        f"# Distilled draft for {target.info.name}\n\n"
        f"{args.layers} decoder layers initialised from the target's layers {args.init} and its final norm, trained on "
        "the target's own greedy answers; "
        "embeddings and the tied output head are the target's (not stored here).\n\n"
        f"Made by: `{command}`\n\n"
        f"Held-out teacher-forced agreement with the target's greedy token: {stats['agreement']:.3f} "
        f"(before training: {stats['agreement_init']:.3f}).\n\n"
        "Load it with `harness.drafting.draft_models.load_draft(path, target)`; `harness.drafting.draft_models.export_hf(path, target)` writes an "
        "ordinary HF folder (`AutoModelForCausalLM.from_pretrained`).\n"
    )


def main(argv: list[str] | None = None) -> None:
    load_plugins()  # the task families the training-data overlap check composes
    args = parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    target = load_named(args.model)
    work = Path(args.work) if args.work else cache_dir() / "distill" / f"{target.info.name}-{target.info.weights_hash}"
    prompts = training_prompts(prompts_path(args.prompts_file), args.prompts, args.seed, args.include_noncommercial)
    spec = AnswerSpec(gen_tokens=args.gen_tokens, max_prompt_tokens=args.max_prompt_tokens, batch=args.gen_batch,
                      topk=args.topk, seed=args.seed)
    samples = answer_shards(target, prompts, work, spec)
    gen_dir = work / spec.folder_name(len(prompts))
    t_gen = time.time() - t0
    rng = random.Random(args.seed)
    rng.shuffle(samples)
    n_hold = max(8, int(len(samples) * args.holdout))
    held, train_set = samples[:n_hold], samples[n_hold:]
    counts = Counter(t for s in train_set for t in s["answer"])
    for s in train_set:
        counts.update(s["top_idx"].flatten().tolist())
    freq = [t for t, _ in counts.most_common()]
    head_ids = torch.tensor(sorted(freq[: args.train_vocab]), dtype=torch.long)

    target.model.config._attn_implementation = "sdpa"
    draft = build_draft(target, args.layers, args.init)
    init = agreement(draft, held)
    stats = train(args, target, draft, train_set, head_ids, gen_dir)
    stats.update(
        agreement=agreement(draft, held),
        agreement_init=init,
        agreement_reduced_head={n: agreement(draft, held, torch.tensor(sorted(freq[:n]))) for n in (4096, 8192)},
        train_answers=len(train_set),
        train_tokens=sum(len(s["answer"]) for s in train_set),
        heldout_answers=len(held),
        generate_minutes=t_gen / 60,
        total_minutes=(time.time() - t0) / 60,
    )
    export(args, target, draft, stats, freq, Path(args.out))
    print(json.dumps(stats, indent=1, default=str))


if __name__ == "__main__":
    try:
        main()
    except SpeclabError as e:
        raise SystemExit(f"error: {e}")
