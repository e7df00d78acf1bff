"""What every draft head's decoder layer shares: a one-layer Llama config with the target's geometry, RoPE that
stays fp32, and the attention masks of its catch-up and tree forwards."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import LlamaConfig
from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

from harness.model.target import to_additive


def head_llama_config(target_config, intermediate_size: int | None = None, **extra) -> LlamaConfig:
    """A one-layer Llama config with the target's attention geometry and RoPE (the head's positions are the target's)."""
    tc = target_config
    head_dim = getattr(tc, "head_dim", None) or tc.hidden_size // tc.num_attention_heads
    cfg = LlamaConfig(
        vocab_size=tc.vocab_size,
        hidden_size=tc.hidden_size,
        intermediate_size=intermediate_size or tc.intermediate_size,
        num_hidden_layers=1,
        num_attention_heads=tc.num_attention_heads,
        num_key_value_heads=getattr(tc, "num_key_value_heads", tc.num_attention_heads),
        head_dim=head_dim,
        hidden_act=getattr(tc, "hidden_act", "silu"),
        max_position_embeddings=getattr(tc, "max_position_embeddings", 8192),
        rms_norm_eps=getattr(tc, "rms_norm_eps", 1e-6),
        rope_parameters=dict(getattr(tc, "rope_parameters", None) or {"rope_type": "default", "rope_theta": 10000.0}),
        tie_word_embeddings=False,
        **extra,
    )
    return cfg


def visible_mask(cache_len: int, rows: Sequence[Sequence[int]], dtype: torch.dtype,
                 device: torch.device | str = "cpu") -> torch.Tensor:
    """Additive mask for new tokens that each see the cache prefix ``0..cache_len-1``'s listed slots.

    ``rows[i]`` lists the cache slots (and, for the new tokens, slots ``cache_len + j``) token i may see. Built on
    the host, then copied to ``device`` once.
    """
    n = len(rows)
    visible = torch.zeros(n, cache_len + n, dtype=torch.bool)
    for i, slots in enumerate(rows):
        visible[i, list(slots)] = True
    return to_additive(visible.to(device, non_blocking=True), dtype)


def causal_mask(cache_len: int, n: int, dtype: torch.dtype, device: torch.device | str = "cpu") -> torch.Tensor | None:
    """New tokens see the whole cache and the new tokens up to themselves (None when the kernel's causal path fits)."""
    if cache_len == 0:
        return None
    visible = torch.ones(n, cache_len + n, dtype=torch.bool, device=device)
    visible[:, cache_len:] = torch.ones(n, n, dtype=torch.bool, device=device).tril_()
    return to_additive(visible, dtype)


class Fp32Rotary(LlamaRotaryEmbedding):
    """RoPE whose frequencies stay fp32 when the head is cast (``head.to(torch.bfloat16)``, ``method.dtype=auto``).

    ``Module.to(dtype)`` casts every floating buffer, and bf16 frequencies put a token's rotation up to 0.18 rad off
    at position 1000: the head would read its positions wrong and accept less for no reason. The cos/sin tables are
    still cast to the activations' dtype, as the target's are.
    """

    def _apply(self, fn, recurse=True):
        kept = {name: getattr(self, name).detach().float().clone() for name in ("inv_freq", "original_inv_freq")}
        module = super()._apply(fn, recurse)
        for name, freq in kept.items():
            setattr(self, name, freq.to(getattr(self, name).device))  # moved by fn, kept fp32
        return module
