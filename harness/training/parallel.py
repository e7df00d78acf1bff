"""Training Medusa and Hydra heads on the cached answers (``data.py``), the target frozen.

Labels are the target's own next-token distributions (self-distillation, Hydra's ``teacher_loss``; on the
target's greedy answers their argmax is Medusa-1's hard label), computed from the cached post-norm states
over the draft vocabulary. Only positions whose predicted token is an answer token count, as for EAGLE.

* Medusa: head k at position t reads ``h_t`` and is scored against the target's distribution at t + k + 1
  (the token x_{t+k+2}); loss sum_k decay^k CE_k (the paper's lambda_k).
* Hydra: the prefix layer runs causally over all final states; head i at t reads ``[c_t ; E(x_{t+1}) ; ... ;
  E(x_{t+1+i})]`` with the true tokens (teacher forcing) and is scored at t + i + 1.
"""

from __future__ import annotations

import torch

from harness.drafting.heads.medusa_heads import HydraHeads, MedusaHeads
from harness.drafting.vocab import ReducedVocab
from harness.training.eagle import Batch
from harness.training.losses import soft_cross_entropy


class ParallelHeadsLoss:
    """``loss(batch) -> {"loss", "ce<k>", "acc<k>"}`` for Medusa or Hydra heads."""

    def __init__(self, heads: MedusaHeads | HydraHeads, target_head_weight: torch.Tensor, vocab: ReducedVocab,
                 decay: float = 0.8) -> None:
        self.heads = heads
        self.w = target_head_weight.detach()[vocab.ids].float()
        self.decay = decay

    def _where(self, batch: Batch, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(b, t) of the positions whose head-k label x_{t+k+2} is an answer token."""
        B, T = batch.tokens.shape
        t = torch.arange(T)[None].expand(B, -1)
        label = t + k + 2
        ok = (label >= torch.tensor(batch.prompt_lens)[:, None]) & (label <= torch.tensor(batch.lengths)[:, None] - 1)
        return ok.nonzero(as_tuple=True)

    def _inputs(self, batch: Batch, k: int, b: torch.Tensor, t: torch.Tensor, state: dict) -> torch.Tensor:
        if isinstance(self.heads, MedusaHeads):
            return batch.hidden["final"][b, t]
        if "c" not in state:
            T = batch.tokens.shape[1]
            state["c"] = self.heads.prefix(batch.hidden["final"], torch.arange(T)[None].expand(len(batch.lengths), -1))
            state["e"] = self.heads.embed(batch.tokens)
        parts = [state["c"][b, t]] + [state["e"][b, t + 1 + j] for j in range(k + 1)]
        return torch.cat(parts, dim=-1)

    def _logits(self, k: int, x: torch.Tensor) -> torch.Tensor:
        if isinstance(self.heads, MedusaHeads):
            return self.heads.medusa_head[k](x).float()
        return self.heads.head_logits(k, x)

    def __call__(self, batch: Batch) -> dict[str, torch.Tensor]:
        final = batch.hidden["final"]
        out: dict[str, torch.Tensor] = {}
        total = None
        state: dict = {}
        for k in range(self.heads.num_heads):
            b, t = self._where(batch, k)
            if b.numel() == 0:
                continue
            with torch.no_grad():
                probs = torch.softmax(final[b, t + k + 1] @ self.w.T, dim=-1)
            logits = self._logits(k, self._inputs(batch, k, b, t, state))
            ce = soft_cross_entropy(logits, probs).mean()
            out[f"ce{k}"] = ce
            out[f"acc{k}"] = (logits.argmax(-1) == probs.argmax(-1)).float().mean().detach()
            total = self.decay ** k * ce if total is None else total + self.decay ** k * ce
        if total is None:
            total = sum(p.sum() * 0.0 for p in self.heads.parameters())
        return {"loss": total, **out}
