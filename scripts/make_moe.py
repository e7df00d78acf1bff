#!/usr/bin/env python
"""Make the ``smollm2-moe`` testbed (issue 14): SmolLM2-135M sparsely upcycled to E experts, top_k per token.

    python scripts/make_moe.py                          # E=8, top_k=2; writes models/smollm2-moe/
    python scripts/make_moe.py --experts 16 --top-k 4 --out /tmp/moe16

Why upcycling and not neuron splitting: SwiGLU neurons are not sparse enough to split. With the neurons
clustered by co-activation and the 2 of 8 experts carrying the most output chosen by an oracle, held-out
perplexity goes from 2.2 to over 1,000 (4 of 8: 15; 16 of 32: 6); learned routers do worse. Upcycled experts
start as copies of the dense MLP, so the model starts as the dense model and keeps its text, while a
verification reads the union of its tokens' experts, E full MLPs per layer, as on Mixtral. See
``harness/loading/moe_testbed.py`` for the model.

Steps, on the target's own greedy answers to the training prompts (``harness/training/data.py``):
1. cluster each layer's neurons into E groups that fire together (balanced k-means on each neuron's
   contribution over sampled tokens) and fit each router alone to predict how much of the MLP output each
   group carries for a token: token-dependent routing with the dense model's own structure;
2. train the routers and a gain per neuron per expert on the answers (next-token cross-entropy), everything
   else frozen, so each expert specialises on the tokens routed to it;
3. report held-out perplexity and greedy agreement beside the dense model's, and the expert-usage entropy.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from harness.api import load_plugins
from harness.loading.moe_testbed import ROUTERS, TESTBED, moefy, save_routers


def mlp_inputs(dense, samples: list[dict], n_tokens: int, seed: int) -> list[torch.Tensor]:
    """Per layer, ``n_tokens`` sampled MLP inputs (post-attention-norm states) over the samples' sequences."""
    layers = dense.model.layers
    grabbed: list[list[torch.Tensor]] = [[] for _ in layers]
    hooks = [layer.post_attention_layernorm.register_forward_hook(lambda m, a, out, i=i: grabbed[i].append(out[0].detach()))
             for i, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            for s in tqdm(samples, desc="MLP inputs", unit="seq"):
                dense(input_ids=torch.tensor([s["prompt"] + s["answer"]]), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    g = torch.Generator().manual_seed(seed)
    out = []
    for rows in grabbed:
        x = torch.cat(rows)
        out.append(x[torch.randperm(len(x), generator=g)[:n_tokens]].clone())
    return out


def neuron_contributions(mlp, x: torch.Tensor) -> torch.Tensor:
    """[tokens, neurons]: |activation| x |down-projection column|, each neuron's share of the MLP output."""
    act = F.silu(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
    return act.abs() * mlp.down_proj.weight.norm(dim=0)


def balanced_kmeans(features: torch.Tensor, k: int, iters: int, seed: int) -> torch.Tensor:
    """Cluster of each row of ``features`` ([n, d], rows normalised), k clusters of exactly n / k rows."""
    n = len(features)
    cap = n // k
    g = torch.Generator().manual_seed(seed)
    centroids = features[torch.randperm(n, generator=g)[:k]].clone()
    assign = torch.zeros(n, dtype=torch.long)
    for _ in range(iters):
        score = features @ centroids.T  # [n, k]
        order = torch.argsort(score.flatten(), descending=True)
        assign.fill_(-1)
        room = [cap] * k
        for flat in order.tolist():
            i, c = divmod(flat, k)
            if assign[i] < 0 and room[c]:
                assign[i] = c
                room[c] -= 1
        centroids = torch.stack([F.normalize(features[assign == c].mean(0), dim=0) for c in range(k)])
    return assign


def fit_router(x: torch.Tensor, share: torch.Tensor, steps: int = 300) -> torch.Tensor:
    """A linear router [E, H] whose softmax over experts predicts each expert's share of the output energy."""
    w = torch.zeros(share.shape[1], x.shape[1], requires_grad=True)
    opt = torch.optim.Adam([w], lr=1e-2)
    for _ in range(steps):
        loss = -(share * F.log_softmax(x @ w.T, dim=-1)).sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach()


def cluster_routers(dense, xs: list[torch.Tensor], experts: int, seed: int) -> torch.Tensor:
    """[layers, E, hidden]: per layer, routers fitted to the share of the MLP output each neuron cluster carries."""
    routers = []
    for i, layer in enumerate(tqdm(dense.model.layers, desc="neuron clusters and routers", unit="layer")):
        with torch.no_grad():
            contrib = neuron_contributions(layer.mlp, xs[i])  # [T, N]
            assign = balanced_kmeans(F.normalize(contrib.T, dim=1), experts, iters=8, seed=seed + i)
            act = F.silu(xs[i] @ layer.mlp.gate_proj.weight.T) * (xs[i] @ layer.mlp.up_proj.weight.T)
            down = layer.mlp.down_proj.weight
            norms = torch.stack([(act[:, assign == c] @ down[:, assign == c].T).norm(dim=1) for c in range(experts)], 1)
            share = norms.square() / norms.square().sum(1, keepdim=True)
        routers.append(fit_router(xs[i], share))
    return torch.stack(routers)


class Gain(torch.nn.Module):
    """A parametrization of an experts block's down projections: the shared copy times a gain per expert and neuron."""

    def __init__(self, gain: torch.Tensor) -> None:
        super().__init__()
        self.gain = torch.nn.Parameter(gain.clone())

    def forward(self, down: torch.Tensor) -> torch.Tensor:
        return down * self.gain[:, None, :]


def batches(samples: list[dict], size: int, seed: int):
    order = list(range(len(samples)))
    random.Random(seed).shuffle(order)
    for b in range(0, len(order), size):
        yield [samples[i] for i in order[b : b + size]]


def answer_logprobs(model, batch: list[dict]) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Log-probabilities at each sample's answer positions (position j predicts token j + 1), right-padded batch."""
    seqs = [s["prompt"] + s["answer"] for s in batch]
    width = max(map(len, seqs))
    ids = torch.zeros(len(seqs), width, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = torch.tensor(s)
        mask[r, : len(s)] = 1
    hidden = model.model(input_ids=ids, attention_mask=mask, use_cache=False).last_hidden_state
    rows = [hidden[r, len(s["prompt"]) - 1 : len(s["prompt"]) + len(s["answer"]) - 1] for r, s in enumerate(batch)]
    return F.log_softmax(model.lm_head(torch.cat(rows)).float(), dim=-1), rows


def train_experts(moe, train_set: list[dict], batch: int, epochs: float, minutes: float, lr: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Routers and per-expert neuron gains trained on the answers (cross-entropy), everything else frozen;
    returns (router [layers, E, hidden], gains [layers, E, neurons])."""
    from torch.nn.utils import parametrize

    for p in moe.parameters():
        p.requires_grad_(False)
    blocks = [layer.mlp for layer in moe.model.layers]
    gains = []
    for block in blocks:
        down = block.experts.down_proj
        parametrize.register_parametrization(block.experts, "down_proj", Gain(torch.ones(down.shape[0], down.shape[2])))
        gains.append(block.experts.parametrizations.down_proj[0].gain)
        block.gate.weight.requires_grad_(True)
    opt = torch.optim.Adam([{"params": gains, "lr": lr}, {"params": [b.gate.weight for b in blocks], "lr": lr / 10}])
    steps = math.ceil(len(train_set) / batch * epochs)
    t0 = time.time()
    moe.train()
    bar = tqdm(total=steps, desc="training routers and expert gains", unit="step")
    step = 0
    while step < steps and time.time() - t0 < minutes * 60:
        for b in batches(train_set, batch, seed + step):
            with parametrize.cached():
                logp, _ = answer_logprobs(moe, b)
                answer = torch.cat([torch.tensor(s["answer"]) for s in b])
                loss = F.nll_loss(logp, answer)
                opt.zero_grad()
                loss.backward()
            opt.step()
            step += 1
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if step >= steps or time.time() - t0 > minutes * 60:
                break
    bar.close()
    moe.eval()
    return torch.stack([b.gate.weight.detach() for b in blocks]), torch.stack([g.detach() for g in gains])


@torch.inference_mode()
def evaluate(model, held: list[dict], moe_experts: int = 0) -> dict:
    """Held-out answer perplexity, greedy agreement with the dense model, and (MoE) the expert-usage entropy."""
    counts = None
    hooks = []
    if moe_experts:
        counts = torch.zeros(len(model.model.layers), moe_experts)

        def count(i):
            def hook(module, args, out) -> None:  # returns None: a hook's return value would replace the output
                counts[i] += torch.bincount(out[-1].flatten(), minlength=moe_experts).float()
            return hook

        hooks = [layer.mlp.gate.register_forward_hook(count(i)) for i, layer in enumerate(model.model.layers)]
    nll, agree, n = 0.0, 0, 0
    try:
        for b in batches(held, 8, 0):
            logp, _ = answer_logprobs(model, b)
            answer = torch.cat([torch.tensor(s["answer"]) for s in b])
            nll -= logp.gather(1, answer[:, None]).sum().item()
            agree += (logp.argmax(-1) == torch.cat([s["top_idx"][:, 0].long() for s in b])).sum().item()
            n += len(answer)
    finally:
        for h in hooks:
            h.remove()
    out = {"perplexity": math.exp(nll / n), "greedy_agreement": agree / n, "tokens": n}
    if counts is not None:
        p = counts / counts.sum(1, keepdim=True)
        entropy = -(p * p.clamp_min(1e-12).log()).sum(1) / math.log(moe_experts)
        out["usage_entropy"] = entropy.mean().item()
        out["usage_entropy_min_layer"] = entropy.min().item()
    return out


def main(argv: list[str] | None = None) -> None:
    load_plugins()  # the task families the training-data overlap check composes
    from harness.loading.sources import load_named
    from harness.training.data import (
        AnswerSpec,
        answer_shards,
        prompts_path,
        split_holdout,
        training_prompts,
        training_work_dir,
    )

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experts", type=int, default=8)
    p.add_argument("--top-k", type=int, default=2)
    p.add_argument("--prompts", type=int, default=320, help="training prompts the dense model answers")
    p.add_argument("--prompts-file", default=None)
    p.add_argument("--holdout", type=float, default=0.1)
    p.add_argument("--cluster-tokens", type=int, default=8192, help="sampled tokens per layer for clustering and routers")
    p.add_argument("--cluster-answers", type=int, default=64, help="answers whose MLP inputs are sampled")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--train-minutes", type=float, default=10.0)
    p.add_argument("--lr", type=float, default=1e-2, help="gains' learning rate (the routers': a tenth of it)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(TESTBED))
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    t0 = time.time()

    target = load_named("smollm2-135m")
    dense = target.model
    dense.config._attn_implementation = "sdpa"
    prompts = training_prompts(prompts_path(args.prompts_file), args.prompts, args.seed)
    spec = AnswerSpec(gen_tokens=128, max_prompt_tokens=256, batch=32, topk=32, seed=args.seed)
    samples = answer_shards(target, prompts, training_work_dir(target), spec)
    held, train = split_holdout(samples, args.holdout, args.seed)
    print(f"{len(train)} training and {len(held)} held-out answers", file=sys.stderr)

    xs = mlp_inputs(dense, train[: args.cluster_answers], args.cluster_tokens, args.seed)
    router = cluster_routers(dense, xs, args.experts, args.seed)
    del xs
    moe = moefy(dense, router, torch.ones(len(router), args.experts, dense.config.intermediate_size), args.top_k)
    moe.config._attn_implementation = "sdpa"
    before = evaluate(moe, held, args.experts)
    print(f"upcycled, routers fitted layer by layer: {json.dumps(before)}", file=sys.stderr)
    router, gains = train_experts(moe, train, args.batch, args.epochs, args.train_minutes, args.lr, args.seed)
    moe = moefy(dense, router, gains, args.top_k)  # evaluated as it will be rebuilt from the saved file
    moe.config._attn_implementation = "sdpa"
    stats = {"dense": evaluate(dense, held), "moe_before_training": before, "moe": evaluate(moe, held, args.experts)}
    meta = {"experts": args.experts, "top_k": args.top_k, "train_answers": len(train), "heldout_answers": len(held),
            "command": "python scripts/make_moe.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "minutes": round((time.time() - t0) / 60, 1), **stats}
    out = Path(args.out)
    save_routers(out / ROUTERS, router, gains, args.top_k, meta)
    (out / "stats.json").write_text(json.dumps(meta, indent=1))
    print(json.dumps(meta, indent=1))


if __name__ == "__main__":
    main()
