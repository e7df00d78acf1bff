"""Official head layouts, written from the official sources' key lists (tests/official_heads.py names each
source), load with speclab's loaders and give the logits of an independent forward of the published equations.

Nothing here is made by speclab's writers or modules: the files come from the key tables, the reference logits
from plain torch ops in float64; speclab's head runs in float32.
"""

from __future__ import annotations

import copy
import json

import pytest
import torch

from harness.core.config import TinySpec
from harness.core.errors import SpeclabError
from harness.drafting.heads.eagle_checkpoints import load_head
from harness.drafting.heads.medusa_checkpoints import load_parallel_heads

from . import official_heads as oh

N = 6  # positions per check


def close(ours: torch.Tensor, ref: torch.Tensor) -> None:
    torch.testing.assert_close(ours.double(), ref, rtol=1e-4, atol=1e-4)


def inputs(d: oh.Dims, seed: int = 11) -> tuple[torch.Tensor, dict]:
    """Tokens and target states: the post-norm final state and the input of every decoder layer."""
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, d.vocab, (N,), generator=g)
    hidden = {i: torch.randn(N, d.hidden, generator=g) for i in range(d.layers)}
    hidden["final"] = torch.randn(N, d.hidden, generator=g)
    return tokens, hidden


def speclab_eagle_logits(head, tokens: torch.Tensor, hidden: dict, vocab: int) -> torch.Tensor:
    """The loaded head's logits over target ids (-inf outside its draft vocabulary)."""
    with torch.no_grad():
        out = head(tokens[None], head.features(hidden)[None], torch.arange(N)[None])
        logits = head.logits(out[0])
    if head.vocab is None:
        return logits
    full = torch.full((N, vocab), -torch.inf)
    full[:, head.vocab.ids] = logits
    return full


@pytest.fixture(scope="module")
def deep_target():
    """Eight layers, so EAGLE-3's taps (inputs of layers 2, L // 2, L - 3) are three different layers."""
    from harness.loading.sources import load_target

    return load_target("tiny-deep", "tiny", tiny=TinySpec(layers=8))


def embedding_of(target) -> torch.Tensor:
    return target.model.get_input_embeddings().weight.detach().clone()


# -- EAGLE-1 ---------------------------------------------------------------------------------------------------

EAGLE1 = {
    # yuhuili/EAGLE-Vicuna-*: no "bias" key (an fc bias), no rope_theta (base 10000), the embedding copy stored
    "vicuna": dict(config={}, fc_bias=True, qkv_bias=False, weights="pytorch_model.bin"),
    # yuhuili/EAGLE-LLaMA3-Instruct-*: "bias": false, rope_theta 500000
    "llama3": dict(config={"bias": False, "rope_theta": 500000.0}, fc_bias=False, qkv_bias=False,
                   weights="pytorch_model.bin"),
    # Qwen2 heads: q/k/v biases (config qkv_bias); ea_model's fallback file name
    "qwen2": dict(config={"qkv_bias": True, "rope_theta": 1000000.0}, fc_bias=True, qkv_bias=True,
                  weights="model.safetensors"),
}


def eagle1_head(target, folder, variant: str = "vicuna", own_embedding: bool = False):
    """(folder, state) of an EAGLE-1 head in the official layout."""
    spec = EAGLE1[variant]
    d = oh.Dims.of(target)
    state = oh.random_state(oh.eagle1_keys(d, spec["fc_bias"], spec["qkv_bias"]), seed=1)
    if not own_embedding:  # what the repositories ship: the target's embedding, copied
        state["embed_tokens.weight"] = embedding_of(target)
    return oh.write_head(folder, oh.llama_head_config(d, **spec["config"]), state, spec["weights"]), state


@pytest.mark.parametrize("own_embedding", [False, True], ids=["target-embedding", "own-embedding"])
@pytest.mark.parametrize("variant", list(EAGLE1))
def test_eagle1_official(tiny_target, tmp_path, variant, own_embedding):
    spec = EAGLE1[variant]
    d = oh.Dims.of(tiny_target)
    folder, state = eagle1_head(tiny_target, tmp_path / variant, variant, own_embedding)
    head, _ = load_head(str(folder), tiny_target)
    assert head.variant == "eagle" and head.target_layers == ("final",) and head.vocab is None
    tokens, hidden = inputs(d)
    ref = oh.eagle1_logits(state, d, tokens, hidden["final"], tiny_target.lm_head.weight.detach(),
                           spec["config"].get("rope_theta", 10000.0))
    close(speclab_eagle_logits(head, tokens, hidden, d.vocab), ref)


def test_eagle1_bias_key_must_match_weights(tiny_target, tmp_path):
    d = oh.Dims.of(tiny_target)
    state = oh.random_state(oh.eagle1_keys(d, fc_bias=True, qkv_bias=False), seed=1)
    folder = oh.write_head(tmp_path / "h", oh.llama_head_config(d, bias=False), state, "pytorch_model.bin")
    with pytest.raises(SpeclabError, match="bias=false but its weights hold fc.bias"):
        load_head(str(folder), tiny_target)


# -- EAGLE-3: official, SpecForge, speculators -----------------------------------------------------------------

def draft_ids(vocab: int, rows: int, seed: int) -> torch.Tensor:
    """The draft vocabulary as EAGLE-3's trainer orders it: ascending target ids."""
    return torch.randperm(vocab, generator=torch.Generator().manual_seed(seed))[:rows].sort().values


def eagle3_head(target, folder, layout: str, draft_rows: int | None = None, shuffle: bool = False, **extra):
    """(folder, state, rope base, taps the official code reads) for one EAGLE-3 layout."""
    d = oh.Dims.of(target)
    rows = draft_rows or d.vocab // 3
    layer = "layers.0." if layout == "speculators" else "midlayer."
    state = oh.random_state(oh.eagle3_keys(d, layer, rows, embedding=layout != "official"), seed=3)
    ids = draft_ids(d.vocab, rows, seed=4)
    if shuffle:  # d2t promises only index i -> id i + d2t[i]: rows in any order
        perm = torch.randperm(rows, generator=torch.Generator().manual_seed(5))
        ids, state["lm_head.weight"] = ids[perm], state["lm_head.weight"][perm]
    state.update(oh.vocab_maps(ids, d.vocab))
    default_taps = sorted({2, d.layers // 2, d.layers - 3})  # modeling_llama_kv: idx == 2, L // 2, L - 3
    if layout == "official":  # traineagle3/config.json + draft_vocab_size; no rope_theta; the trainer's .bin
        config = oh.llama_head_config(d, draft_vocab_size=rows)
        config.pop("rope_theta", None)
        return oh.write_head(folder, config, state, "pytorch_model.bin"), state, 10000.0, default_taps
    if layout == "specforge":  # configs/*-eagle3.json: taps as captured layer outputs; the export's safetensors
        state["embed_tokens.weight"] = embedding_of(target)
        outputs = [1, 3, 6]
        config = oh.llama_head_config(d, architectures=["LlamaForCausalLMEagle3"], draft_vocab_size=rows,
                                      rope_theta=500000.0, eagle_config={"eagle_aux_hidden_state_layer_ids": outputs},
                                      **extra)
        return (oh.write_head(folder, config, state, "model.safetensors"), state, 500000.0,
                [i + 1 for i in outputs])
    # speculators: the layer's LlamaConfig nested (its diff from the defaults), taps as layer inputs; the stored
    # embedding (random here, so using the target's instead would show) is what vLLM loads
    layer_config = {k: v for k, v in oh.llama_head_config(d).items()
                    if k not in ("architectures", "torch_dtype", "transformers_version")}
    layer_config["rope_parameters"] = {"rope_type": "default", "rope_theta": 500000.0}
    taps = [1, 3, 6]
    config = {"architectures": ["Eagle3Speculator"], "speculators_model_type": "eagle3",
              "speculators_version": "0.3.0", "transformer_layer_config": layer_config, "draft_vocab_size": rows,
              "norm_before_residual": False, "norm_before_fc": False, "fc_norm": False, "norm_output": False,
              "target_hidden_size": None, "eagle_aux_hidden_state_layer_ids": taps, "embed_requires_grad": False,
              "speculators_config": {"algorithm": "eagle3", "default_proposal_method": "greedy",
                                     "proposal_methods": [{"proposal_type": "greedy", "speculative_tokens": 3}],
                                     "verifier": {"name_or_path": "tiny-llama",
                                                  "architectures": ["LlamaForCausalLM"]}}}
    return oh.write_head(folder, config, state, "model.safetensors"), state, 500000.0, taps


@pytest.mark.parametrize("layout,rows,shuffle,extra", [
    ("official", None, False, {}),
    ("official", None, True, {}),
    ("official", "full", False, {}),  # draft vocabulary = the target's: the official loader ignores d2t / t2d
    ("specforge", None, False, {}),
    ("specforge", None, False, {"norm_output": True}),  # SpecForge's default spelled out: lm_head(norm(h))
    ("speculators", None, False, {}),
], ids=["official", "official-unsorted-d2t", "official-full-vocab", "specforge", "specforge-norm-output",
        "speculators"])
def test_eagle3_layouts(deep_target, tmp_path, layout, rows, shuffle, extra):
    d = oh.Dims.of(deep_target)
    folder, state, base, taps = eagle3_head(deep_target, tmp_path / layout, layout,
                                            d.vocab if rows == "full" else None, shuffle, **extra)
    head, _ = load_head(str(folder), deep_target)
    assert head.variant == "eagle3" and list(head.target_layers) == taps
    assert (head.vocab is None) == (rows == "full")
    tokens, hidden = inputs(d)
    embedding = state.get("embed_tokens.weight", embedding_of(deep_target))
    ref = oh.eagle3_logits(state, d, "layers.0." if layout == "speculators" else "midlayer.", tokens,
                           [hidden[i] for i in taps], embedding, base)
    ours = speclab_eagle_logits(head, tokens, hidden, d.vocab)
    assert torch.equal(ours.isfinite(), ref.isfinite())  # the same draft vocabulary
    close(ours[ref.isfinite()], ref[ref.isfinite()])


@pytest.mark.parametrize("layout,norm_output,message", [
    ("specforge", False, "sets norm_output=false"),  # SpecForge's compute_logits then skips the final norm
    ("speculators", True, "sets norm_output"),  # speculators' EAGLE-3.1: the post-norm state fed back
])
def test_norm_output_variants_are_refused(deep_target, tmp_path, layout, norm_output, message):
    folder, *_ = eagle3_head(deep_target, tmp_path / "h", layout)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "norm_output": norm_output}))
    with pytest.raises(SpeclabError, match=message):
        load_head(str(folder), deep_target)


def test_eagle3_t2d_of_another_vocabulary(deep_target, tmp_path):
    from safetensors.torch import load_file, save_file

    folder, *_ = eagle3_head(deep_target, tmp_path / "h", "specforge")
    state = load_file(str(folder / "model.safetensors"))
    state["t2d"] = torch.zeros(300, dtype=torch.bool)
    save_file(state, str(folder / "model.safetensors"))
    with pytest.raises(SpeclabError) as e:
        load_head(str(folder), deep_target)
    assert "head vocabulary 300 (t2d) does not fit target 'tiny-deep' (vocabulary 259)" in str(e.value)


# -- Medusa ------------------------------------------------------------------------------------------------------

MEDUSA = {
    # FasterDecoding/medusa-vicuna-*: 5 heads with their own output layers, a config that says 2
    "medusa-1": dict(heads=5, layers=1, own=True, weights="medusa_lm_head.pt", config={"medusa_num_heads": 2}),
    # medusa_num_layers=2: one ResBlock listed twice, saved as two equal copies
    "medusa-1-two-blocks": dict(heads=3, layers=2, own=True, weights="medusa_lm_head.pt", config={}),
    # the legacy ("version 2") heads: ResBlocks only, drafting through the target's lm_head
    "legacy": dict(heads=4, layers=1, own=False, weights="medusa_lm_head.safetensors", config={"version": "2"}),
}


def medusa_head(target, folder, variant: str = "medusa-1"):
    """(folder, state) of Medusa heads in the official layout."""
    spec = MEDUSA[variant]
    k, n_layers = spec["heads"], spec["layers"]
    state = oh.random_state(oh.medusa_keys(oh.Dims.of(target), k, n_layers, spec["own"]), seed=7)
    for head in range(k):
        oh.tie_repeated_blocks(state, f"{head}.0.", [f"{head}.{j}." for j in range(1, n_layers)])
    config = {"medusa_num_heads": k, "medusa_num_layers": n_layers, "base_model_name_or_path": "lmsys/vicuna-7b-v1.3",
              "transformers_version": "4.34.0", **spec["config"]}
    return oh.write_head(folder, config, state, spec["weights"]), state


@pytest.mark.parametrize("variant", list(MEDUSA))
def test_medusa_official(tiny_target, tmp_path, variant):
    spec = MEDUSA[variant]
    d = oh.Dims.of(tiny_target)
    k, n_layers = spec["heads"], spec["layers"]
    folder, state = medusa_head(tiny_target, tmp_path / variant, variant)
    heads = load_parallel_heads(str(folder), "medusa", tiny_target)
    assert heads.num_heads == k and heads.num_layers == n_layers and heads.own_lm_head == spec["own"]
    _, hidden = inputs(d)
    with torch.no_grad():
        ours = heads.logits(hidden["final"])
    close(ours, oh.medusa_logits(state, hidden["final"], k, n_layers, tiny_target.lm_head.weight.detach()))


# -- Hydra ---------------------------------------------------------------------------------------------------------

def hydra_head(target, folder, heads: int = 4, layers: int = 3):
    d = oh.Dims.of(target)
    state = oh.random_state(oh.hydra_keys(d, heads, layers), seed=9)
    state["input_embed_fn.weight"] = embedding_of(target)  # the base model's embedding, a submodule of the head
    for i in range(heads):
        oh.tie_repeated_blocks(state, f"hydra_mlp.{i}.3.", [f"hydra_mlp.{i}.{b}." for b in range(5, 2 * layers + 1, 2)])
    config = {"hydra_num_heads": heads, "hydra_num_layers": layers, "hydra_head_arch": "prefix-mlp",
              "base_model_name_or_path": "lmsys/vicuna-7b-v1.3", "grounded_heads": True, "hidden_state_offset": 0,
              "transformers_version": "4.35.2"}
    return oh.write_head(folder, config, state, "hydra_lm_head.pt"), state


def with_rope_theta(target, theta: float):
    """The target with another RoPE base in its config (the Hydra loader reads only its geometry and shares its
    embedding and head), to show the prefix layer runs the base its file stores, not the target's."""
    other = copy.copy(target)
    other.config = copy.deepcopy(target.config)
    other.config.rope_parameters = {**other.config.rope_parameters, "rope_theta": theta}
    return other


@pytest.mark.parametrize("theta", [10000.0, 500000.0], ids=["target-base-10000", "target-base-500000"])
def test_hydra_official(tiny_target, tmp_path, theta):
    target = with_rope_theta(tiny_target, theta)
    d = oh.Dims.of(target)
    n_heads, n_layers = 4, 3
    folder, state = hydra_head(target, tmp_path / "h", n_heads, n_layers)
    heads = load_parallel_heads(str(folder), "hydra", target)
    assert heads.num_heads == n_heads and heads.num_layers == n_layers and heads.own_lm_head
    tokens, hidden = inputs(d)
    ref_prefix = oh.hydra_prefix(state, d, hidden["final"])
    with torch.no_grad():
        prefix = heads.prefix(hidden["final"][None], torch.arange(N)[None])[0]
        close(prefix, ref_prefix)
        embed = state["input_embed_fn.weight"].double()
        for i in range(n_heads):
            for t in range(N - i - 1):
                above = tokens[t + 1: t + 2 + i]  # x_{t+1} .. x_{t+1+i}: the tokens drafted above head i's node
                ours = heads.head_logits(i, torch.cat([prefix[t], *heads.embed(above)]))
                ref = oh.hydra_head_logits(state, i, n_layers, torch.cat([ref_prefix[t], *embed[above]]))
                close(ours, ref)
