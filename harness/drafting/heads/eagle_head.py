"""Draft-head building blocks shared by the head-based methods (EAGLE-1/2/3; Medusa and Hydra reuse the vocabulary).

* :class:`ReducedVocab`: a subset of the target vocabulary as a draft's output space (EAGLE-3's ``d2t`` /
  ``t2d``, or the most frequent answer tokens): on a CPU the 49152-way head is a large share of a draft step.
* :class:`EagleHead`: one Llama decoder layer over [token embedding ; target feature], with its own KV cache
  (the engine's :class:`~harness.model.kv_cache.KVCache`, so cropping to the accepted path is a length update).

  - ``eagle`` (EAGLE-1/2 weights): ``z = fc([emb(x_{t+1}) ; f_t])`` with ``f_t`` the target's post-norm final
    state, then a decoder layer *without* an input norm; the output predicts ``f_{t+1}`` and goes through the
    target's own LM head (no final norm). The draft feeds its own outputs back as ``f`` when it runs ahead.
  - ``eagle3``: ``h = fc([low ; mid ; high])`` over the inputs of three target layers; the attention reads
    ``[input_layernorm(emb) ; hidden_norm(h)]`` (2H wide) with ``h`` as residual; logits are the head's own
    ``lm_head(norm(out))`` over its draft vocabulary; the un-normalised output is fed back as ``h``.

The target's embedding (and for ``eagle`` its LM head) are shared, frozen and never stored with the head.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaAttention, LlamaMLP, LlamaRMSNorm

from harness.drafting.heads.layers import Fp32Rotary
from harness.drafting.vocab import ReducedVocab
from harness.model.kv_cache import KVCache
from harness.model.target import ATTENTION

VARIANTS = ("eagle", "eagle3")


class EagleHead(nn.Module):
    """An EAGLE draft head; see the module docstring for the two variants."""

    def __init__(
        self,
        config: LlamaConfig,
        variant: str,
        target_layers: Sequence[int | str],
        embed: nn.Module,
        target_head: nn.Module | None = None,
        vocab: ReducedVocab | None = None,
        fc_bias: bool = True,
    ) -> None:
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"unknown EAGLE variant {variant!r}; choose one of {', '.join(VARIANTS)}")
        self.config = config
        self.variant = variant
        self.target_layers = tuple(target_layers)
        self.vocab = vocab
        h = config.hidden_size
        target_h = int(getattr(config, "target_hidden_size", None) or h)
        config._attn_implementation = ATTENTION
        attn_in = h if variant == "eagle" else 2 * h
        if variant == "eagle":
            self.fc = nn.Linear(h + target_h, h, bias=fc_bias)
        else:
            self.fc = nn.Linear(len(self.target_layers) * target_h, h, bias=False)
        self.self_attn = LlamaAttention(config, layer_idx=0)
        # EAGLE-1 heads for Qwen2 targets put a bias on q/k/v only (config ``qkv_bias``), not on o_proj
        qkv_bias = bool(getattr(config, "qkv_bias", False))
        for name in ("q_proj", "k_proj", "v_proj"):
            old = getattr(self.self_attn, name)
            setattr(self.self_attn, name, nn.Linear(attn_in, old.out_features, bias=qkv_bias or old.bias is not None))
        self.mlp = LlamaMLP(config)
        self.post_attention_layernorm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
        if variant == "eagle3":
            self.input_layernorm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
            self.hidden_norm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
            self.norm = LlamaRMSNorm(h, eps=config.rms_norm_eps)
            self.lm_head = nn.Linear(h, len(vocab) if vocab is not None else config.vocab_size, bias=False)
        self.rotary = Fp32Rotary(config)
        # shared with the target: kept out of this module's parameters and state dict
        self._shared = {"embed": embed, "head": target_head}

    @property
    def embed(self) -> nn.Module:
        return self._shared["embed"]

    def set_target_head(self, head: nn.Module) -> None:
        self._shared["head"] = head

    def own_state_dict(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("rotary.")}

    def new_cache(self, capacity: int) -> KVCache:
        return KVCache(1, capacity)

    def features(self, hidden: dict) -> torch.Tensor:
        """The target's states for some positions ([n, ...] per layer) as the head's input feature [n, H]."""
        dtype = self.fc.weight.dtype  # a bf16/fp16 head may serve an fp32 target
        if self.variant == "eagle":
            return hidden["final"].to(dtype)
        return self.fc(torch.cat([hidden[layer].to(dtype) for layer in self.target_layers], dim=-1))

    def forward(
        self,
        tokens: torch.Tensor,
        h: torch.Tensor,
        positions: torch.Tensor,
        cache: KVCache | None = None,
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """``tokens`` [b, n], features ``h`` [b, n, H] at ``positions`` [b, n] -> the head's outputs [b, n, H].

        ``mask``: additive [b or 1, 1, n, kv] or None (causal over an empty cache).
        """
        residual, a = self.layer_input(tokens, h)
        attn, _ = self.self_attn(a, position_embeddings=self.rotary(a, positions), attention_mask=mask, cache=cache)
        return self.layer_output(residual, attn)

    def layer_input(self, tokens: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(residual, attention input) of the decoder layer for ``tokens`` [b, n] and features ``h`` [b, n, H]."""
        emb = self.embed(tokens).to(h.dtype)
        if self.variant == "eagle":
            x = self.fc(torch.cat([emb, h], dim=-1))
            return x, x
        return h, torch.cat([self.input_layernorm(emb), self.hidden_norm(h)], dim=-1)

    def layer_output(self, residual: torch.Tensor, attn: torch.Tensor) -> torch.Tensor:
        """The layer's output from its residual and its attention output (after ``o_proj``)."""
        x = residual + attn
        return x + self.mlp(self.post_attention_layernorm(x))

    def logits(self, out: torch.Tensor) -> torch.Tensor:
        """Logits over the draft vocabulary (``vocab`` maps them to target ids; None = the target's vocabulary)."""
        if self.variant == "eagle":
            head = self._shared["head"]
            return head(out.to(next(head.parameters()).dtype)).float()
        return self.lm_head(self.norm(out)).float()


