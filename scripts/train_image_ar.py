#!/usr/bin/env python
"""Train the ``digits-ar`` testbed (issue 17): a class-conditional LlamaForCausalLM over scikit-learn's 8x8
digits as 64 grey-level tokens, and the digit classifier that judges samples. Writes ``models/digits-ar/``.

    python scripts/train_image_ar.py                    # a few minutes on 2 CPU cores
    python scripts/train_image_ar.py --steps 200 --out /tmp/digits   # a quick one

Every fifth image of each class is held out (``harness/loading/digits.py``); the class token is replaced by ``<null>``
10% of the time, so the same model samples unconditionally (classifier-free guidance). The checkpoint kept is
the one with the lowest held-out loss, measured every ``--eval-every`` steps.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.loading.digits import NULL, TESTBED, digits_split, encode, model_config, tokenizer
from harness.results.image_quality import CLASSIFIER, train_classifier


def sequences(images: np.ndarray, labels: np.ndarray, drop: np.ndarray | None = None) -> torch.Tensor:
    rows = [encode(im, None if (drop is not None and drop[i]) else lab) for i, (im, lab) in enumerate(zip(images, labels))]
    return torch.tensor(rows)


def loss_of(model, ids: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of every token after the class token (the pixels and ``<eos>``)."""
    logits = model(input_ids=ids).logits[:, 1:-1]
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), ids[:, 2:].reshape(-1))


def main(argv: list[str] | None = None) -> None:
    from safetensors.torch import save_file
    from transformers import LlamaForCausalLM

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--class-dropout", type=float, default=0.1)
    p.add_argument("--eval-every", type=int, default=50)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(TESTBED))
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    train, held = digits_split()
    held_ids = sequences(held.images, held.labels)
    model = LlamaForCausalLM(model_config(args.hidden, args.layers, args.heads))
    model.config._attn_implementation = "sdpa"
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    warm = min(200, args.steps // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warm) * 0.5 * (1 + math.cos(math.pi * min(s, args.steps) / args.steps)))
    rng = np.random.default_rng(args.seed)
    best, best_state, curve = float("inf"), None, []
    bar = tqdm(range(args.steps), desc="training digits-ar", unit="step")
    for step in bar:
        idx = rng.choice(len(train.labels), args.batch, replace=False)
        ids = sequences(train.images[idx], train.labels[idx], rng.random(args.batch) < args.class_dropout)
        model.train()
        loss = loss_of(model, ids)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if (step + 1) % args.eval_every == 0 or step + 1 == args.steps:
            model.eval()
            with torch.no_grad():
                held_loss = loss_of(model, held_ids).item()
            curve.append((step + 1, round(loss.item(), 4), round(held_loss, 4)))
            bar.set_postfix(train=f"{loss.item():.3f}", held=f"{held_loss:.3f}")
            if held_loss < best:
                best, best_state = held_loss, {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        null_ids = held_ids.clone()
        null_ids[:, 1] = NULL
        unconditional = loss_of(model, null_ids).item()
    classifier = train_classifier(train, seed=args.seed)
    accuracy = float((classifier.predict(held.images) == held.labels).mean())
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer().save_pretrained(out)
    save_file(classifier.state_dict(), str(out / CLASSIFIER))
    stats = {
        "command": "python scripts/train_image_ar.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "parameters": sum(p.numel() for p in model.parameters()), "train_images": len(train.labels),
        "heldout_images": len(held.labels), "heldout_nll_per_token": round(best, 4),
        "heldout_nll_per_token_unconditional": round(unconditional, 4),
        "classifier_heldout_accuracy": round(accuracy, 4), "minutes": round((time.time() - t0) / 60, 1),
        "curve_step_train_heldout": curve,
    }
    (out / "stats.json").write_text(json.dumps(stats, indent=1))
    print(json.dumps({k: v for k, v in stats.items() if k != "curve_step_train_heldout"}, indent=1))


if __name__ == "__main__":
    main()
