"""Training EAGLE heads on the cached answers (``data.py``).

Alignment: the head's input at position t is (target feature f_t, token x_{t+1}); its output predicts
f_{t+1}, and through the LM head the token x_{t+2}. Soft labels are the target's own next-token
distribution over the draft vocabulary (renormalised there), computed from the cached post-norm state.

* ``eagle`` (EAGLE-1's loss): SmoothL1(out_t, f_{t+1}) + ``ce_weight`` x soft cross-entropy through the
  target's frozen head, on answer positions, with uniform noise on the input features.
* ``eagle3`` (training-time test): ``steps`` unrolled draft steps; step k at position t reads the head's
  own step k-1 output as its feature and attends to the step-0 keys up to t plus its own earlier steps at t
  (exactly the keys a depth-k tree node sees at inference), at position t + k; loss sum_k 0.8^k CE_k.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import rotate_half

from harness.drafting.heads.eagle_head import EagleHead
from harness.drafting.vocab import ReducedVocab
from harness.training.losses import soft_cross_entropy


def draft_vocab(samples: Sequence[dict], n: int, target_vocab: int) -> tuple[ReducedVocab, list[int]]:
    """The ``n`` most frequent answer tokens (then prompt tokens) as a draft vocabulary, and the full ranking."""
    answers = Counter(t for s in samples for t in s["answer"])
    prompts = Counter(t for s in samples for t in s["prompt"])
    ranking = [t for t, _ in answers.most_common()]
    seen = set(ranking)
    ranking += [t for t, _ in prompts.most_common() if t not in seen]
    seen = set(ranking)
    ranking += [t for t in range(target_vocab) if t not in seen]
    return ReducedVocab(torch.tensor(ranking[: min(n, target_vocab)]), target_vocab), ranking


@dataclass
class Batch:
    tokens: torch.Tensor  # [B, T] ids (0-padded)
    hidden: dict  # layer -> [B, T, H] float32
    lengths: list[int]
    prompt_lens: list[int]


def batches(samples: Sequence[dict], size: int, seed: int, max_len: int = 512) -> Iterator[Batch]:
    """Shuffled batches of similar-length sequences (prompt + answer), cut to their last ``max_len`` tokens."""
    rng = random.Random(seed)
    order = sorted(range(len(samples)), key=lambda i: len(samples[i]["prompt"]) + len(samples[i]["answer"]) + rng.random())
    groups = [order[i : i + size] for i in range(0, len(order), size)]
    rng.shuffle(groups)
    for group in groups:
        seqs, cut = [], []
        for i in group:
            s = samples[i]
            seq = s["prompt"] + s["answer"]
            c = max(0, len(seq) - max_len)
            seqs.append(seq[c:])
            cut.append(c)
        width = max(len(x) for x in seqs)
        tokens = torch.zeros(len(group), width, dtype=torch.long)
        layers = samples[group[0]]["hidden"].keys()
        hidden = {k: torch.zeros(len(group), width, samples[group[0]]["hidden"][k].shape[-1]) for k in layers}
        for r, (i, seq, c) in enumerate(zip(group, seqs, cut)):
            tokens[r, : len(seq)] = torch.tensor(seq)
            for k in layers:
                hidden[k][r, : len(seq)] = samples[i]["hidden"][k][c:].float()
        yield Batch(tokens, hidden, [len(x) for x in seqs], [max(0, len(samples[i]["prompt"]) - c) for i, c in zip(group, cut)])


@dataclass
class StepOutput:
    step: int  # 0: the committed pairs; k: a depth-k draft node
    out: torch.Tensor  # [B, W, H] head outputs at the window positions
    where: torch.Tensor  # [B, W] position t of each output
    valid: torch.Tensor  # [B, W] whether the token it predicts, x_{t+2+step}, is an answer token


class EagleLoss:
    """``loss(batch) -> {"loss", ...}`` for one head variant (see the module docstring)."""

    def __init__(self, head: EagleHead, target_head_weight: torch.Tensor, vocab: ReducedVocab, steps: int = 1,
                 ce_weight: float = 0.1, noise: float = 0.1, decay: float = 0.8) -> None:
        self.head = head
        self.w = target_head_weight.detach()[vocab.ids].float()  # soft labels over the draft vocabulary
        self.steps = steps if head.variant == "eagle3" else 1
        self.ce_weight = ce_weight
        self.noise = noise if head.variant == "eagle" else 0.0
        self.decay = decay

    # -- attention pieces ---------------------------------------------------------------------------------
    def _rope(self, x: torch.Tensor, like: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        cos, sin = self.head.rotary(like, pos)
        return x * cos[:, None] + rotate_half(x) * sin[:, None]

    def _proj(self, name: str, a: torch.Tensor) -> torch.Tensor:
        b, n, _ = a.shape
        return getattr(self.head.self_attn, name)(a).view(b, n, -1, self.head.self_attn.head_dim).transpose(1, 2)

    def _out(self, residual: torch.Tensor, ctx: torch.Tensor) -> torch.Tensor:
        b, h, n, d = ctx.shape
        return self.head.layer_output(residual, self.head.self_attn.o_proj(ctx.transpose(1, 2).reshape(b, n, h * d)))

    def unroll(self, batch: Batch) -> list[StepOutput]:
        """The head's outputs at every unrolled step on the query window of each sequence."""
        head = self.head
        B, T = batch.tokens.shape
        n = T - 1  # pairs (f_t, x_{t+1}) for t = 0..T-2
        lengths = torch.tensor(batch.lengths)[:, None]
        plens = torch.tensor(batch.prompt_lens)[:, None]
        # queries are needed only where a loss lands (around the answers); keys and values everywhere
        starts = (plens[:, 0] - 1 - self.steps).clamp(min=0)
        width = max(1, int((lengths[:, 0] - 1 - starts).max()))
        offsets = starts[:, None] + torch.arange(width)[None]
        win = offsets.clamp(max=n - 1)  # [B, W] positions t
        in_seq = offsets <= lengths - 2

        feats = head.features({k: v[:, :n] for k, v in batch.hidden.items()})
        if self.noise and head.training:
            rms = feats.pow(2).mean(-1, keepdim=True).sqrt()
            feats = feats + (torch.rand_like(feats) - 0.5) * 2 * self.noise * rms
        residual, a = head.layer_input(batch.tokens[:, 1:T], feats)
        pos = torch.arange(n)[None].expand(B, -1)
        k0 = self._rope(self._proj("k_proj", a), a, pos)
        v0 = self._proj("v_proj", a)

        def gather(x: torch.Tensor) -> torch.Tensor:
            return x.gather(1, win[..., None].expand(-1, -1, x.shape[-1]))

        a_w = gather(a)
        q0 = self._rope(self._proj("q_proj", a_w), a_w, win)
        groups = q0.shape[1] // k0.shape[1]
        causal = win[:, None, :, None] >= torch.arange(n)[None, None, None, :]  # [B, 1, W, n]
        ctx = F.scaled_dot_product_attention(q0, k0, v0, attn_mask=causal, enable_gqa=groups > 1)
        out = self._out(gather(residual), ctx)  # [B, W, H]
        steps = [StepOutput(0, out, win, in_seq & (win + 2 >= plens) & (win + 2 <= lengths - 1))]

        # training-time test: step k at t reads step k-1's output, sees the step-0 keys up to t and its own
        # earlier steps at t, at position t + k
        if self.steps > 1:
            scale = q0.shape[-1] ** -0.5
            k0e = k0.repeat_interleave(groups, dim=1)
            v0e = v0.repeat_interleave(groups, dim=1)
        diag_k: list[torch.Tensor] = []
        diag_v: list[torch.Tensor] = []
        for step in range(1, self.steps):
            toks = batch.tokens.gather(1, (win + 1 + step).clamp(max=T - 1))
            residual, a = head.layer_input(toks, steps[-1].out)
            qk = self._rope(self._proj("q_proj", a), a, win + step)
            diag_k.append(self._rope(self._proj("k_proj", a), a, win + step).repeat_interleave(groups, dim=1))
            diag_v.append(self._proj("v_proj", a).repeat_interleave(groups, dim=1))
            s0 = ((qk @ k0e.transpose(-1, -2)) * scale).masked_fill(~causal, float("-inf"))
            sd = torch.stack([(qk * dk).sum(-1) for dk in diag_k], dim=-1) * scale  # [B, H, W, step]
            p = torch.softmax(torch.cat([s0, sd], dim=-1), dim=-1)
            ctx = p[..., :n] @ v0e + sum(p[..., n + j, None] * diag_v[j] for j in range(len(diag_v)))
            valid = in_seq & (win + 2 + step >= plens) & (win + 2 + step <= lengths - 1)
            steps.append(StepOutput(step, self._out(residual, ctx), win, valid))
        return steps

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        final = batch.hidden["final"]
        losses: dict[str, torch.Tensor] = {}
        total = None
        unrolled = self.unroll(batch)
        labels = self._labels(final, unrolled)
        for u in unrolled:
            ce, acc = self._token_loss(u, labels)
            losses[f"ce{u.step}"] = ce
            if u.step == 0:
                losses["acc0"] = acc
            if u.step == 0 and self.head.variant == "eagle":
                target_f = final.gather(1, (u.where + 1)[..., None].expand(-1, -1, final.shape[-1]))
                reg = F.smooth_l1_loss(u.out, target_f, reduction="none").mean(-1)
                losses["reg"] = (reg * u.valid).sum() / u.valid.sum().clamp(min=1)
                total = losses["reg"] + self.ce_weight * ce
            else:
                total = (self.decay ** u.step) * ce if total is None else total + (self.decay ** u.step) * ce
        return {"loss": total, **losses}

    def _labels(self, final: torch.Tensor, unrolled: list[StepOutput]) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The target's distributions over the draft vocabulary that the steps' losses read, each computed once:
        step k at position t wants the one after position t + 1 + k, which step 0 wants at t + k, so the steps
        share most of their labels (and the 8,192-column projection is a large part of a training step).

        Returns the distributions [m, V] and, per step, the row of each of its valid outputs."""
        T = final.shape[1]
        keys = []
        for u in unrolled:
            b_idx, j_idx = u.valid.nonzero(as_tuple=True)
            keys.append(b_idx * T + u.where[b_idx, j_idx] + 1 + u.step)
        unique, inverse = torch.unique(torch.cat(keys), return_inverse=True)
        with torch.no_grad():
            probs = torch.softmax(F.linear(final.reshape(-1, final.shape[-1])[unique], self.w), dim=-1)
        return probs, list(inverse.split([len(k) for k in keys]))

    def _token_loss(self, u: StepOutput, labels: tuple[torch.Tensor, list[torch.Tensor]]):
        """Soft CE of the head's logits at ``u.out[b, j]`` (position ``u.where[b, j]``) against the target's
        distribution for the token after position where + 1 + step, and (step 0 only) the top-1 agreement."""
        b_idx, j_idx = u.valid.nonzero(as_tuple=True)
        if b_idx.numel() == 0:
            zero = u.out.sum() * 0.0
            return zero, zero.detach()
        probs = labels[0][labels[1][u.step]]
        logits = self.head.logits(u.out[b_idx, j_idx])
        ce = soft_cross_entropy(logits, probs).mean()
        # an argmax over the draft vocabulary costs what a tenth of the step does: measured where it is reported
        acc = (logits.argmax(-1) == probs.argmax(-1)).float().mean().detach() if u.step == 0 else None
        return ce, acc
