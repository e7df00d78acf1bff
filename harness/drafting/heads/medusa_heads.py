"""Medusa and Hydra draft heads: LM heads on the target's post-norm final state ``h_t`` that predict tokens
beyond the next one. Module and parameter names follow the official code, so a state dict maps one to one
onto ``medusa_lm_head.pt`` / ``hydra_lm_head.pt`` (``parallel_checkpoints.py``).

* :class:`MedusaHeads` (Medusa-1): head k = ``num_layers`` ResBlocks then an output layer; it reads only
  ``h_t`` and predicts ``x_{t+k+2}`` (the target's own head predicts ``x_{t+1}``), whatever was drafted before.
* :class:`HydraHeads` (Hydra++, ``prefix-mlp``, grounded): a prefix layer (one Llama decoder layer and a norm,
  with its own KV cache) turns the final states into ``c_t``; head i reads ``[c_t ; E(x_{t+1}) ; ... ;
  E(x_{t+1+i})]`` (E: the target's frozen embedding), i.e. the tokens drafted before it, through a conditioning
  ResBlock and ``num_layers - 1`` plain ones, and predicts ``x_{t+2+i}``.

Output layers: the official Medusa-1 and Hydra heads each store a full [V, H] matrix. Heads trained here keep
the target's LM head frozen and shared (Medusa's legacy "version 2" layout; Hydra stores only its bias), so a
head for a 49k vocabulary stays a few MB; both kinds load. On a CPU drafting runs over a draft vocabulary
(the most frequent answer tokens), as EAGLE's does: the drafted tokens, not the verification, change.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRMSNorm

from harness.drafting.heads.layers import Fp32Rotary, head_llama_config
from harness.drafting.vocab import ReducedVocab
from harness.model.kernels import apply_kernel
from harness.model.kv_cache import KVCache
from harness.model.target import ATTENTION


class ResBlock(nn.Module):
    """``res_connection(x) + SiLU(linear(x))``; ``num_condition`` > 0 widens the input to (1 + n) x H and
    projects the residual (Hydra's conditioning block). ``linear`` starts at zero: the block starts as identity."""

    def __init__(self, hidden: int, num_condition: int = 0) -> None:
        super().__init__()
        width = hidden * (num_condition + 1)
        self.linear = nn.Linear(width, hidden)
        nn.init.zeros_(self.linear.weight)
        self.res_connection = nn.Linear(width, hidden) if num_condition > 0 else nn.Identity()
        self.act = nn.SiLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_connection(x) + self.act(self.linear(x))


class OutputHead(nn.Module):
    """Hidden -> logits: its own ``weight`` [V, H] (stored) or the target's LM head (shared, not stored), plus an
    optional ``bias``. :meth:`restrict` limits it to a draft vocabulary (logit i is token ``vocab.ids[i]``)."""

    def __init__(self, hidden: int, vocab_size: int, own: bool, bias: bool, target_head: nn.Module) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(vocab_size, hidden)) if own else None
        self.bias = nn.Parameter(torch.zeros(vocab_size)) if bias else None
        self._shared = {"head": target_head}
        self._rows: tuple[torch.Tensor, nn.Module, torch.dtype] | None = None  # (ids, frozen linear over them, its dtype)

    def full_weight(self) -> torch.Tensor:
        return self.weight if self.weight is not None else self._shared["head"].weight

    def restrict(self, vocab: ReducedVocab | None, kernel: str = "torch", rows_cache: dict | None = None,
                 dtype: torch.dtype | None = None) -> None:
        """Draft over ``vocab`` only (None: the full vocabulary), its rows in ``dtype`` (None: the weight's). Heads
        sharing the target's weight share one row matrix through ``rows_cache``."""
        if vocab is None:
            self._rows = None
            return
        weight = self.full_weight()
        key = id(weight)
        if rows_cache is not None and key in rows_cache:
            linear = rows_cache[key]
        else:
            linear = apply_kernel(nn.Sequential(vocab.rows(weight, dtype)), kernel)
            if rows_cache is not None:
                rows_cache[key] = linear
        self._rows = (vocab.ids, linear, dtype or weight.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._rows is None:
            return F.linear(x, self.full_weight().to(x.dtype), None if self.bias is None else self.bias.to(x.dtype))
        ids, linear, dtype = self._rows
        out = linear(x.to(dtype))
        return out if self.bias is None else out + self.bias[ids].to(out.dtype)


def restrict_outputs(module: nn.Module, vocab: ReducedVocab | None, kernel: str = "torch",
                     dtype: torch.dtype | None = None) -> None:
    """Restrict every :class:`OutputHead` of a head module to ``vocab``, its rows in ``dtype``."""
    rows: dict = {}
    for m in module.modules():
        if isinstance(m, OutputHead):
            m.restrict(vocab, kernel, rows, dtype)


class MedusaHeads(nn.Module):
    variant = "medusa"

    def __init__(self, hidden: int, vocab_size: int, num_heads: int, num_layers: int, target_head: nn.Module,
                 own_lm_head: bool = False) -> None:
        super().__init__()
        if num_heads < 1 or num_layers < 1:
            raise ValueError(f"Medusa needs at least one head of at least one layer, got {num_heads} x {num_layers}")
        self.num_heads, self.num_layers, self.own_lm_head = num_heads, num_layers, own_lm_head
        self.medusa_head = nn.ModuleList(
            nn.Sequential(*[ResBlock(hidden) for _ in range(num_layers)],
                          OutputHead(hidden, vocab_size, own_lm_head, False, target_head))
            for _ in range(num_heads)
        )

    def logits(self, h: torch.Tensor, heads: int | None = None) -> torch.Tensor:
        """Draft logits of the first ``heads`` heads for final states ``h`` [..., H] -> [heads, ..., V_draft]."""
        h = h.to(self.medusa_head[0][0].linear.weight.dtype)
        return torch.stack([m(h).float() for m in self.medusa_head[: heads or self.num_heads]])


class PrefixLayer(nn.Module):
    """Hydra's prefix layer: one Llama decoder layer over the final states (as input embeddings) and a norm."""

    def __init__(self, config) -> None:
        super().__init__()
        config._attn_implementation = ATTENTION
        self.layers = nn.ModuleList([LlamaDecoderLayer(config, layer_idx=0)])
        self.norm = LlamaRMSNorm(config.hidden_size, eps=config.rms_norm_eps)
        self.rotary = Fp32Rotary(config)

    def forward(self, h: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
                mask: torch.Tensor | None = None) -> torch.Tensor:
        """``h`` [b, n, H] at ``positions`` [b, n]; ``mask`` additive or None (causal over an empty cache)."""
        out = self.layers[0](h, attention_mask=mask, position_embeddings=self.rotary(h, positions), cache=cache)
        return self.norm(out)


class HydraHeads(nn.Module):
    variant = "hydra"

    def __init__(self, config, num_heads: int, num_layers: int, embed: nn.Module, target_head: nn.Module,
                 own_lm_head: bool = False, dropout: float = 0.0) -> None:
        super().__init__()
        if num_heads < 1 or num_layers < 1:
            raise ValueError(f"Hydra needs at least one head of at least one layer, got {num_heads} x {num_layers}")
        h = config.hidden_size
        self.config = config
        self.num_heads, self.num_layers, self.own_lm_head = num_heads, num_layers, own_lm_head
        self.prefix_embeding_layer = PrefixLayer(config)  # sic: the official key
        # Dropout slots keep the official indices (blocks at 1, 3, 5, ...)
        self.hydra_mlp = nn.ModuleList(
            nn.Sequential(nn.Dropout(dropout), ResBlock(h, i + 1),
                          *[m for _ in range(num_layers - 1) for m in (nn.Dropout(dropout), ResBlock(h))])
            for i in range(num_heads)
        )
        self.hydra_lm_head = nn.ModuleList(
            nn.Sequential(nn.Dropout(dropout), OutputHead(h, config.vocab_size, own_lm_head, True, target_head))
            for _ in range(num_heads)
        )
        self._shared = {"embed": embed}

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if ".rotary." not in k}

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._shared["embed"](tokens).to(self.prefix_embeding_layer.norm.weight.dtype)

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(1, capacity)

    def prefix(self, h: torch.Tensor, positions: torch.Tensor, cache: KVCache | None = None,
               mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.prefix_embeding_layer(h.to(self.prefix_embeding_layer.norm.weight.dtype), positions, cache, mask)

    def head_logits(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """Head i on inputs [..., (i + 2) H] -> draft logits [..., V_draft]."""
        return self.hydra_lm_head[i](self.hydra_mlp[i](x)).float()


def new_medusa(target, num_heads: int = 4, num_layers: int = 1, seed: int = 0) -> MedusaHeads:
    torch.manual_seed(seed)
    return MedusaHeads(target.config.hidden_size, target.vocab_size, num_heads, num_layers, target.lm_head)


def new_hydra(target, num_heads: int = 4, num_layers: int = 2, dropout: float = 0.0, seed: int = 0) -> HydraHeads:
    """Fresh Hydra heads for ``target``; the prefix layer starts from the target's last decoder layer, whose input
    is the nearest thing to the final states it reads."""
    torch.manual_seed(seed)
    heads = HydraHeads(head_llama_config(target.config), num_heads, num_layers, target.model.get_input_embeddings(),
                       target.lm_head, dropout=dropout)
    last = target.model.get_decoder().layers[-1]
    missing, _ = heads.prefix_embeding_layer.layers[0].load_state_dict(last.state_dict(), strict=False)
    assert not missing, missing
    with torch.no_grad():
        heads.prefix_embeding_layer.norm.weight.copy_(target.model.get_decoder().norm.weight)
    return heads
