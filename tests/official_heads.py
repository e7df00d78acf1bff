"""Draft-head checkpoints as the official repositories write them, built from their sources' key lists (never
from speclab's writer), and an independent forward of each layout's published equations in plain torch ops (it
calls no speclab module), so a test can load a file with speclab's loader and compare logits.

Where each fact comes from (read in the repositories, not copied):

* EAGLE-1/2, SafeAILab/EAGLE ``eagle/model/cnets1.py``: ``Model.__init__`` (``embed_tokens``, ``layers`` of
  ``LlamaDecoderLayer`` whose layer 0 has no ``input_layernorm``, ``fc = Linear(2H, H, bias=bias)``),
  ``LlamaAttention.__init__`` (``qkv_bias`` when the config has it; ``head_dim = H // heads``; RoPE base
  ``rope_theta`` if the config has it, else 10000), ``Model.forward`` (``fc(cat(embed(x), f))``);
  ``eagle/model/ea_model.py`` (``bias`` from config.json, default true; ``pytorch_model.bin``, else
  ``model.safetensors``; the stored ``embed_tokens`` overrides the target's through ``load_state_dict``;
  logits are the target's ``lm_head`` on the layer output); configs ``eagle/train/vicuna_7B_config.json`` and
  ``eagle/train/EAGLE-LLaMA3-Instruct-8B`` (``rope_theta``, ``"bias": false``).
* EAGLE-3, ``eagle/model/cnets.py``: ``Model.__init__`` (``midlayer`` = ``LlamaDecoderLayeremb`` with
  ``hidden_norm``, ``input_layernorm``, ``post_attention_layernorm``, q/k/v over 2H; ``fc = Linear(3H, H)``;
  ``norm``; ``lm_head = Linear(H, draft_vocab_size)``; buffers ``d2t`` [draft], ``t2d`` [vocab]),
  ``LlamaDecoderLayeremb.forward`` (residual = the fc output; attention over ``cat(input_layernorm(emb),
  hidden_norm(h))``), ``topK_genrate`` (``lm_head(norm(out))``, token = ``i + d2t[i]``);
  ``eagle/model/modeling_llama_kv.py`` (taps: the inputs of layers ``2``, ``L // 2``, ``L - 3``, in layer order);
  ``eagle/traineagle3/cnets.py`` (``d2t = used_tokens[i] - i`` over the sorted used tokens);
  ``eagle/traineagle3/main.py`` (``save_16bit_model(exclude_frozen_parameters=True)``: no embedding);
  ``eagle/traineagle3/config.json`` (no ``rope_theta``: RoPE base 10000).
* SpecForge, sgl-project/SpecForge ``specforge/modeling/draft/llama3_eagle.py`` (``LlamaForCausalLMEagle3``: the
  EAGLE-3 keys under ``midlayer.``, with ``embed_tokens``), ``specforge/export/to_hf.py`` (the export ships
  ``embed_tokens.weight``), ``specforge/algorithms/model_providers.py`` (``eagle_config.
  eagle_aux_hidden_state_layer_ids`` are captured layer *outputs*, default ``[1, L // 2 - 1, L - 4]``).
* vLLM speculators, vllm-project/speculators ``src/speculators/models/eagle3/core.py`` (``Eagle3DraftModel``:
  ``fc``, ``layers.0.`` of ``model_definitions.LlamaDecoderEagle3FirstLayer``, ``norm``, saved without
  ``verifier_*``), ``src/speculators/model.py`` (``DraftVocabMixin``: ``embed_tokens``, ``lm_head``, ``d2t``,
  ``t2d``), ``src/speculators/models/eagle3/config.py`` (``transformer_layer_config``, ``draft_vocab_size``,
  ``norm_before_residual``, ``target_hidden_size``, ``eagle_aux_hidden_state_layer_ids``).
* Medusa-1, FasterDecoding/Medusa ``medusa/model/medusa_model.py`` (``medusa_head[k] = Sequential(*[ResBlock] *
  L, Linear(H, V, bias=False))``: one ResBlock repeated L times; ``ResBlock``: ``x + SiLU(linear(x))``;
  ``medusa_lm_head.pt``; the released config states 2 heads for a file of 5); ``medusa_model_legacy.py`` and
  ``medusa/train/train_legacy.py`` (no output layer, the base model's ``lm_head``; ``medusa_lm_head.safetensors``).
* Hydra++, zankner/Hydra ``hydra/model/hydra_heads/prefix_mlp_head.py`` (``HydraPrefixMLP``: ``prefix_embeding_layer``
  a one-layer ``LlamaModel`` of the base config, ``input_embed_fn`` the base embedding (a submodule, so saved),
  ``hydra_mlp[i] = Sequential(Dropout, ResBlock(H, i + 1), *[Dropout, ResBlock(H)] * (L - 1))``,
  ``hydra_lm_head[i] = Sequential(Dropout, Linear(H, V))``, head i reads ``cat(prefix, E(x_{t+1}), ...,
  E(x_{t+1+i}))``), ``hydra/model/modeling_llama_kv.py`` (the prefix layer's attention builds RoPE with base
  10000 whatever the config's ``rope_theta`` and registers ``inv_freq`` persistently), ``hydra/model/hydra_model.py``
  (``HydraConfig`` fields; ``hydra_lm_head.pt``), ``hydra/train/train.py`` (``torch.save(hydra_head.state_dict())``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file


@dataclass(frozen=True)
class Dims:
    hidden: int
    intermediate: int
    vocab: int
    heads: int
    kv_heads: int
    eps: float
    layers: int

    @property
    def head_dim(self) -> int:
        return self.hidden // self.heads

    @classmethod
    def of(cls, target) -> "Dims":
        c = target.config
        return cls(c.hidden_size, c.intermediate_size, target.vocab_size, c.num_attention_heads,
                   c.num_key_value_heads, c.rms_norm_eps, c.num_hidden_layers)


# -- key lists: (key, shape) -----------------------------------------------------------------------------------

def attention_keys(prefix: str, d: Dims, width: int, qkv_bias: bool = False) -> list[tuple[str, tuple]]:
    """A Llama attention over ``width`` inputs: q/k/v project to heads x head_dim, o back to H."""
    q, kv = d.heads * d.head_dim, d.kv_heads * d.head_dim
    keys = [(f"{prefix}self_attn.q_proj.weight", (q, width)), (f"{prefix}self_attn.k_proj.weight", (kv, width)),
            (f"{prefix}self_attn.v_proj.weight", (kv, width)), (f"{prefix}self_attn.o_proj.weight", (d.hidden, q))]
    if qkv_bias:
        keys += [(f"{prefix}self_attn.q_proj.bias", (q,)), (f"{prefix}self_attn.k_proj.bias", (kv,)),
                 (f"{prefix}self_attn.v_proj.bias", (kv,))]
    return keys


def mlp_keys(prefix: str, d: Dims) -> list[tuple[str, tuple]]:
    return [(f"{prefix}mlp.gate_proj.weight", (d.intermediate, d.hidden)),
            (f"{prefix}mlp.up_proj.weight", (d.intermediate, d.hidden)),
            (f"{prefix}mlp.down_proj.weight", (d.hidden, d.intermediate))]


def norm_keys(prefix: str, d: Dims, names: tuple[str, ...]) -> list[tuple[str, tuple]]:
    return [(f"{prefix}{name}.weight", (d.hidden,)) for name in names]


def eagle1_keys(d: Dims, fc_bias: bool, qkv_bias: bool) -> list[tuple[str, tuple]]:
    """cnets1.Model.state_dict() with one decoder layer (``embed_tokens`` included: it is a parameter)."""
    return [("embed_tokens.weight", (d.vocab, d.hidden)), ("fc.weight", (d.hidden, 2 * d.hidden)),
            *([("fc.bias", (d.hidden,))] if fc_bias else []),
            *attention_keys("layers.0.", d, d.hidden, qkv_bias), *mlp_keys("layers.0.", d),
            *norm_keys("layers.0.", d, ("post_attention_layernorm",))]


def eagle3_keys(d: Dims, layer: str, draft_vocab: int, embedding: bool) -> list[tuple[str, tuple]]:
    """The EAGLE-3 head's floating-point weights with its decoder layer under ``layer`` (``midlayer.`` in
    cnets.Model and SpecForge, ``layers.0.`` in speculators); d2t/t2d are written apart (integer maps)."""
    return [*([("embed_tokens.weight", (d.vocab, d.hidden))] if embedding else []),
            ("fc.weight", (d.hidden, 3 * d.hidden)),
            *attention_keys(layer, d, 2 * d.hidden), *mlp_keys(layer, d),
            *norm_keys(layer, d, ("hidden_norm", "input_layernorm", "post_attention_layernorm")),
            ("norm.weight", (d.hidden,)), ("lm_head.weight", (draft_vocab, d.hidden))]


def medusa_keys(d: Dims, heads: int, layers: int, own_output: bool) -> list[tuple[str, tuple]]:
    """medusa_head.state_dict(): ResBlocks ``{k}.{j}`` (j < L), then head k's output layer ``{k}.{L}``."""
    keys = []
    for k in range(heads):
        for j in range(layers):
            keys += [(f"{k}.{j}.linear.weight", (d.hidden, d.hidden)), (f"{k}.{j}.linear.bias", (d.hidden,))]
        if own_output:
            keys.append((f"{k}.{layers}.weight", (d.vocab, d.hidden)))
    return keys


def hydra_keys(d: Dims, heads: int, layers: int) -> list[tuple[str, tuple]]:
    """HydraPrefixMLP.state_dict() for grounded prefix-mlp heads."""
    p = "prefix_embeding_layer."
    keys = [(f"{p}embed_tokens.weight", (d.vocab, d.hidden)), *attention_keys(f"{p}layers.0.", d, d.hidden),
            (f"{p}layers.0.self_attn.rotary_emb.inv_freq", (d.head_dim // 2,)), *mlp_keys(f"{p}layers.0.", d),
            *norm_keys(f"{p}layers.0.", d, ("input_layernorm", "post_attention_layernorm")),
            (f"{p}norm.weight", (d.hidden,)), ("input_embed_fn.weight", (d.vocab, d.hidden))]
    for i in range(heads):
        width = (i + 2) * d.hidden
        keys += [(f"hydra_mlp.{i}.1.{m}.{t}", (d.hidden, width) if t == "weight" else (d.hidden,))
                 for m in ("linear", "res_connection") for t in ("weight", "bias")]
        for block in range(3, 2 * layers + 1, 2):
            keys += [(f"hydra_mlp.{i}.{block}.linear.weight", (d.hidden, d.hidden)),
                     (f"hydra_mlp.{i}.{block}.linear.bias", (d.hidden,))]
        keys += [(f"hydra_lm_head.{i}.1.weight", (d.vocab, d.hidden)), (f"hydra_lm_head.{i}.1.bias", (d.vocab,))]
    return keys


# -- configs as the repositories write them ------------------------------------------------------------------

def llama_head_config(d: Dims, **extra) -> dict:
    """A one-layer LlamaConfig for a head, fields as eagle/train/*_config.json list them."""
    return {"architectures": ["LlamaForCausalLM"], "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
            "hidden_size": d.hidden, "initializer_range": 0.02, "intermediate_size": d.intermediate,
            "max_position_embeddings": 2048, "model_type": "llama", "num_attention_heads": d.heads,
            "num_key_value_heads": d.kv_heads, "num_hidden_layers": 1, "pad_token_id": 0, "rms_norm_eps": d.eps,
            "tie_word_embeddings": False, "torch_dtype": "float16", "transformers_version": "4.28.1",
            "use_cache": True, "vocab_size": d.vocab, **extra}


# -- tensors ---------------------------------------------------------------------------------------------------

def random_state(keys: list[tuple[str, tuple]], seed: int) -> dict[str, torch.Tensor]:
    """Seeded values of about unit scale: norms near 1 (not 1, so a dropped norm shows), matrices / sqrt(fan in)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in keys:
        if key.endswith("norm.weight"):
            state[key] = torch.empty(shape).uniform_(0.5, 1.5, generator=g)
        elif key.endswith("inv_freq"):
            state[key] = rope_frequencies(2 * shape[0], 10000.0).float()  # Hydra's attention: base 10000
        elif len(shape) == 2:
            scale = 1.0 if "embed" in key else 1.0 / math.sqrt(shape[1])
            state[key] = torch.randn(shape, generator=g) * scale
        else:
            state[key] = torch.randn(shape, generator=g) * 0.1
    return state


def vocab_maps(draft_ids: torch.Tensor, vocab: int) -> dict[str, torch.Tensor]:
    """EAGLE-3's maps for draft index i -> target id ``draft_ids[i]``: ``d2t = ids - i``, ``t2d`` the id mask."""
    t2d = torch.zeros(vocab, dtype=torch.bool)
    t2d[draft_ids] = True
    return {"d2t": (draft_ids - torch.arange(draft_ids.numel())).long(), "t2d": t2d}


def tie_repeated_blocks(state: dict[str, torch.Tensor], first: str, others: list[str]) -> None:
    """``[ResBlock(H)] * n`` in the official code is one module listed n times: its copies in the file are equal."""
    for name in others:
        for key in [k for k in state if k.startswith(first)]:
            state[name + key[len(first):]] = state[key]


def write_head(folder: Path, config: dict, state: dict[str, torch.Tensor], weights: str) -> Path:
    """config.json and the weights file, by the official name: ``*.safetensors`` via safetensors, else torch.save."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    if weights.endswith(".safetensors"):
        save_file({k: v.contiguous().clone() for k, v in state.items()}, str(folder / weights))
    else:
        torch.save(state, folder / weights)
    return folder


# -- the independent forward (float64, plain torch) ------------------------------------------------------------

def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight.double() * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def linear(x: torch.Tensor, state: dict, name: str) -> torch.Tensor:
    out = x @ state[f"{name}.weight"].double().T
    bias = state.get(f"{name}.bias")
    return out if bias is None else out + bias.double()


def rope_frequencies(head_dim: int, base: float) -> torch.Tensor:
    return 1.0 / base ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)


def rotate(x: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """RoPE at positions 0..n-1 on ``x`` [n, heads, head_dim], the halves convention of the Llama code."""
    angles = torch.arange(x.shape[0], dtype=torch.float64)[:, None] * freqs.double()
    cos, sin = torch.cat([angles, angles], -1).cos()[:, None], torch.cat([angles, angles], -1).sin()[:, None]
    half = x.shape[-1] // 2
    return x * cos + torch.cat([-x[..., half:], x[..., :half]], -1) * sin


def attention(x: torch.Tensor, state: dict, prefix: str, d: Dims, freqs: torch.Tensor) -> torch.Tensor:
    """Causal multi-head attention with grouped key/value heads over ``x`` [n, width] -> [n, H]."""
    n = x.shape[0]
    q = rotate(linear(x, state, f"{prefix}self_attn.q_proj").view(n, d.heads, d.head_dim), freqs)
    k = rotate(linear(x, state, f"{prefix}self_attn.k_proj").view(n, d.kv_heads, d.head_dim), freqs)
    v = linear(x, state, f"{prefix}self_attn.v_proj").view(n, d.kv_heads, d.head_dim)
    group = d.heads // d.kv_heads  # query head j reads key/value head j // group
    k, v = k.repeat_interleave(group, dim=1), v.repeat_interleave(group, dim=1)
    scores = torch.einsum("qhd,khd->hqk", q, k) / math.sqrt(d.head_dim)
    scores = scores.masked_fill(torch.ones(n, n, dtype=torch.bool).triu(1), -math.inf)
    out = torch.einsum("hqk,khd->qhd", scores.softmax(-1), v).reshape(n, d.heads * d.head_dim)
    return linear(out, state, f"{prefix}self_attn.o_proj")


def mlp(x: torch.Tensor, state: dict, prefix: str) -> torch.Tensor:
    gate = linear(x, state, f"{prefix}mlp.gate_proj")
    return linear(torch.nn.functional.silu(gate) * linear(x, state, f"{prefix}mlp.up_proj"), state,
                  f"{prefix}mlp.down_proj")


def eagle1_logits(state: dict, d: Dims, tokens: torch.Tensor, final: torch.Tensor, lm_head: torch.Tensor,
                  rope_base: float) -> torch.Tensor:
    """EAGLE-1: z = fc([E(x) ; f]); h = z + Attn(z) (no input norm); out = h + MLP(post_norm(h)); the target's
    lm_head on out."""
    z = linear(torch.cat([state["embed_tokens.weight"].double()[tokens], final.double()], -1), state, "fc")
    h = z + attention(z, state, "layers.0.", d, rope_frequencies(d.head_dim, rope_base))
    out = h + mlp(rms(h, state["layers.0.post_attention_layernorm.weight"], d.eps), state, "layers.0.")
    return out @ lm_head.double().T


def eagle3_logits(state: dict, d: Dims, layer: str, tokens: torch.Tensor, taps: list[torch.Tensor],
                  embedding: torch.Tensor, rope_base: float) -> torch.Tensor:
    """EAGLE-3: g = fc([low ; mid ; high]); a = [input_layernorm(E(x)) ; hidden_norm(g)]; h = g + Attn(a);
    out = h + MLP(post_norm(h)); draft logits lm_head(norm(out)), draft index i scored at target id i + d2t[i]
    (-inf elsewhere)."""
    g = linear(torch.cat([t.double() for t in taps], -1), state, "fc")
    a = torch.cat([rms(embedding.double()[tokens], state[f"{layer}input_layernorm.weight"], d.eps),
                   rms(g, state[f"{layer}hidden_norm.weight"], d.eps)], -1)
    h = g + attention(a, state, layer, d, rope_frequencies(d.head_dim, rope_base))
    out = h + mlp(rms(h, state[f"{layer}post_attention_layernorm.weight"], d.eps), state, layer)
    draft = rms(out, state["norm.weight"], d.eps) @ state["lm_head.weight"].double().T
    rows = draft.shape[-1]
    ids = torch.arange(rows) + (state["d2t"].long() if "d2t" in state and rows != d.vocab else 0)
    full = torch.full((tokens.numel(), d.vocab), -math.inf, dtype=torch.float64)
    full[:, ids] = draft
    return full


def medusa_logits(state: dict, final: torch.Tensor, heads: int, layers: int, lm_head: torch.Tensor) -> torch.Tensor:
    """Medusa: head k = L ResBlocks (x + SiLU(W x + b)) then its own output layer, or the target's lm_head."""
    out = []
    for k in range(heads):
        x = final.double()
        for j in range(layers):
            x = x + torch.nn.functional.silu(linear(x, state, f"{k}.{j}.linear"))
        weight = state.get(f"{k}.{layers}.weight", lm_head)
        out.append(x @ weight.double().T)
    return torch.stack(out)


def hydra_prefix(state: dict, d: Dims, final: torch.Tensor) -> torch.Tensor:
    """Hydra's prefix layer: one full Llama decoder layer over the final states (as input embeddings), then a norm;
    RoPE from the frequencies the file stores."""
    p = "prefix_embeding_layer."
    freqs = state[f"{p}layers.0.self_attn.rotary_emb.inv_freq"]
    x = final.double()
    x = x + attention(rms(x, state[f"{p}layers.0.input_layernorm.weight"], d.eps), state, f"{p}layers.0.", d, freqs)
    x = x + mlp(rms(x, state[f"{p}layers.0.post_attention_layernorm.weight"], d.eps), state, f"{p}layers.0.")
    return rms(x, state[f"{p}norm.weight"], d.eps)


def hydra_head_logits(state: dict, i: int, layers: int, inputs: torch.Tensor) -> torch.Tensor:
    """Hydra head i on [c_t ; E(x_{t+1}) ; ... ; E(x_{t+1+i})]: a conditioning ResBlock (projected residual),
    L - 1 plain ResBlocks, then its output layer with bias."""
    x = linear(inputs, state, f"hydra_mlp.{i}.1.res_connection") + torch.nn.functional.silu(
        linear(inputs, state, f"hydra_mlp.{i}.1.linear"))
    for block in range(3, 2 * layers + 1, 2):
        x = x + torch.nn.functional.silu(linear(x, state, f"hydra_mlp.{i}.{block}.linear"))
    return linear(x, state, f"hydra_lm_head.{i}.1")
