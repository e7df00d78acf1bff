"""Draft-head checkpoints in the official layouts, in and out.

One loader reads every layout below (a folder or a Hub id holding ``config.json`` and ``model.safetensors``,
``pytorch_model.bin`` or their sharded ``*.index.json`` forms); the layouts differ only in the entries of
:data:`LAYER_PREFIXES` and in where ``config.json`` keeps the decoder layer and the tapped layers.

* EAGLE-1/2 (``yuhuili/EAGLE-*``; SafeAILab/EAGLE ``eagle/model/cnets1.py``): ``fc.weight`` [H, 2H] over
  [embedding ; post-norm target state], ``fc.bias`` when config ``"bias"`` is true or absent,
  ``layers.0.{self_attn,mlp,post_attention_layernorm}.*`` (layer 0 has no ``input_layernorm``), optionally
  ``embed_tokens.weight`` (a copy of the target's); config: a one-layer LlamaConfig, ``qkv_bias`` for Qwen2 heads.
* EAGLE-3 (``yuhuili/EAGLE3-*``; ``eagle/model/cnets.py``) and SpecForge (``LlamaForCausalLMEagle3``, the
  same keys, which SGLang reads as they are): ``fc.weight`` [H, 3H], ``midlayer.*`` (q/k/v over 2H, plus
  ``input_layernorm`` and ``hidden_norm``), ``norm.weight``, ``lm_head.weight`` [draft vocab, H], ``d2t``
  (draft index i -> target id ``i + d2t[i]``) and ``t2d`` (bool mask over the target vocabulary), dropped when
  ``draft_vocab_size`` equals ``vocab_size``. Configs without ``rope_theta`` run RoPE base 10000 (LlamaConfig's
  default, what the official head does). SpecForge lists the tapped layers as layer *outputs* in
  ``eagle_config.eagle_aux_hidden_state_layer_ids`` (SGLang captures the input of layer id + 1).
* EAGLE-3 in vLLM-project/speculators form: the decoder layer is ``layers.0.*``, ``embed_tokens.weight`` is
  stored, config nests the layer's LlamaConfig in ``transformer_layer_config`` beside ``draft_vocab_size``,
  ``target_hidden_size``, ``norm_before_residual`` and ``eagle_aux_hidden_state_layer_ids`` given as layer
  *inputs* (vLLM's convention); ``d2t``/``t2d`` as above.

Target taps: the engine's ``hidden[i]`` is HF's ``hidden_states[i]``, the input of decoder layer i
(``"final"``: the post-norm last state EAGLE-1 reads). Engines concatenate the taps in layer order.

Heads are refused, with one line naming both sizes, when their hidden size, vocabulary, tapped layers or fc
width do not fit the target, and when they use variants :class:`~harness.drafting.heads.eagle_head.EagleHead` does not implement
(several decoder layers, EAGLE-3.1's extra norms, a SpecForge head with ``norm_output: false``, whose logits skip
the final norm). Pickles load with ``weights_only=True``.

:func:`save_head` writes the official layout (config.json + model.safetensors, no embedding copy, with
``rope_theta``/``rope_scaling`` at the top level for transformers-4 readers and both conventions of the tapped
layers, so SGLang and vLLM read them alike) plus a ``speclab_head`` entry naming the target and the command.
:func:`export_official` writes a standalone copy with the embedding for strict loaders (Spec-Bench's), e.g.
``python -c "from harness.drafting.heads.eagle_checkpoints import export_official as e; from harness.loading.sources import load_target as t;
e('drafts/smollm2-135m/eagle', t('smollm2-135m', 'smollm2_wheel'), '/tmp/eagle-standalone')"``.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn
from safetensors.torch import save_file
from transformers import LlamaConfig

from harness.core.errors import SpeclabError
from harness.drafting.heads.checkpoint_files import read_config, read_weights
from harness.drafting.heads.eagle_head import EagleHead
from harness.drafting.heads.layers import head_llama_config
from harness.drafting.vocab import ReducedVocab
from harness.loading.hub import resolve_folder
from harness.model.target import TargetModel

# decoder-layer key prefix in each layout -> EagleHead's (its layer modules sit at the top level of the head)
LAYER_PREFIXES = {
    "midlayer.": "",  # EAGLE-3 official, SpecForge, SGLang
    "layers.0.": "",  # EAGLE-1 official, speculators, vLLM
}
SAVE_PREFIX = {"eagle": "layers.0.", "eagle3": "midlayer."}  # what the official repositories write
LAYER_MODULES = ("self_attn", "mlp", "post_attention_layernorm", "input_layernorm", "hidden_norm")
# stored but not head weights: the vocabulary maps are parsed on their own, the embedding is the target's
# (checked), and old checkpoints carry their rotary caches
NOT_WEIGHTS = ("embed_tokens.weight", "d2t", "t2d")
# EAGLE-3 variants (speculators, SpecForge "EAGLE-3.1") whose extra norms or recurrence EagleHead lacks;
# norm_output means speculators' fed-back post-norm state, but in SpecForge configs the plain head (see below)
UNSUPPORTED_FLAGS = ("norm_before_residual", "norm_before_fc", "fc_norm", "norm_output", "use_aux_norm")
# config fields that describe the checkpoint rather than the decoder layer
NOT_LAYER_CONFIG = ("architectures", "speclab_head", "eagle_config", "torch_dtype", "dtype", "auto_map")


# -- reading ------------------------------------------------------------------------------------------------


def split_config(config: dict) -> tuple[dict, dict]:
    """(the decoder layer's config, the head's own fields): speculators nests the layer, the others don't."""
    layer = config.get("transformer_layer_config")
    if isinstance(layer, dict):
        return dict(layer), config
    return dict(config), config


def detect_variant(state: dict[str, torch.Tensor]) -> str:
    if "lm_head.weight" in state or "d2t" in state or any(k.endswith("hidden_norm.weight") for k in state):
        return "eagle3"
    if "fc.weight" in state and any(k.startswith(tuple(LAYER_PREFIXES)) for k in state):
        return "eagle"
    raise SpeclabError("the head's weights match neither the EAGLE nor the EAGLE-3 layout (no fc, layers.0 or "
                       "midlayer keys); point method.head at an EAGLE head folder")


def default_layers(variant: str, num_layers: int) -> tuple[int | str, ...]:
    """EAGLE-1 reads the post-norm final state; EAGLE-3 the inputs of layers 2, L//2 and L-3, low to high.

    The engine's ``hidden[i]`` is transformers' ``hidden_states[i]``: index 0 is the embedding output and
    index i < L the input of decoder layer i (the pre-norm residual stream the official EAGLE-3 collects before
    running layer i), but index L is the *post-norm* final state (checked on transformers 5.24), so taps are
    clamped to 0..L-1 for test models with fewer than three layers.
    """
    if variant == "eagle":
        return ("final",)
    return tuple(sorted(min(max(i, 0), num_layers - 1) for i in (2, num_layers // 2, num_layers - 3)))


def tapped_layers(fields: dict, variant: str, num_layers: int) -> tuple[int | str, ...]:
    if variant == "eagle":
        return ("final",)
    ids = fields.get("eagle_aux_hidden_state_layer_ids")
    if ids:  # speculators / vLLM: the input of layer i
        return tuple(sorted(int(i) for i in ids))
    ids = (fields.get("eagle_config") or {}).get("eagle_aux_hidden_state_layer_ids")
    if ids:  # SpecForge / SGLang: the output of layer i, i.e. the input of layer i + 1
        return tuple(sorted(int(i) + 1 for i in ids))
    return default_layers(variant, num_layers)


def check_supported(layer_config: dict, fields: dict, folder: Path) -> None:
    kind = fields.get("speculators_model_type")
    if kind is not None and kind not in ("eagle", "eagle3"):
        raise SpeclabError(f"head {folder} is a speculators {kind!r} model, not an EAGLE head; use a matching method")
    layers = int(layer_config.get("num_hidden_layers", 1))
    if layers != 1:
        raise SpeclabError(f"head {folder} has {layers} decoder layers but speclab runs one-layer EAGLE heads; "
                           "use a one-layer head")
    flags = [f for f in UNSUPPORTED_FLAGS if fields.get(f) or layer_config.get(f)]
    if kind is None and "norm_output" in flags:
        # SpecForge's norm_output (default true) is the plain head, lm_head(norm(h)); false drops the norm
        flags.remove("norm_output")
    if kind is None and layer_config.get("norm_output", True) is False:
        flags.append("norm_output=false")
    if flags:
        raise SpeclabError(f"head {folder} sets {', '.join(flags)} (an EAGLE-3 variant speclab does not implement); "
                           "use a plain EAGLE-3 head")


def check_fits(layer_config: dict, fields: dict, state: dict[str, torch.Tensor], variant: str,
               layers: tuple[int | str, ...], target: TargetModel) -> None:
    """Every size the head assumes against the target's; each mismatch is one line naming both."""
    name, h, vocab, n_layers = target.info.name, int(target.config.hidden_size), target.vocab_size, target.num_layers
    fix = "use a head trained for this target"
    head_h = int(layer_config.get("hidden_size", h))
    if head_h != h:
        raise SpeclabError(f"head hidden size {head_h} does not fit target {name!r} (hidden size {h}); {fix}")
    tap_h = fields.get("target_hidden_size") or layer_config.get("target_hidden_size")
    if tap_h and int(tap_h) != h:
        raise SpeclabError(f"head reads target states of size {tap_h} but target {name!r} has hidden size {h}; {fix}")
    sizes = {"config vocab_size": layer_config.get("vocab_size")}
    if "t2d" in state:
        sizes["t2d"] = state["t2d"].numel()
    if "embed_tokens.weight" in state:
        sizes["embed_tokens"] = state["embed_tokens.weight"].shape[0]
        if state["embed_tokens.weight"].shape[1] != h:
            raise SpeclabError(f"head embedding width {state['embed_tokens.weight'].shape[1]} does not fit target "
                               f"{name!r} (hidden size {h}); {fix}")
    for what, size in sizes.items():
        if size is not None and int(size) != vocab:
            raise SpeclabError(f"head vocabulary {size} ({what}) does not fit target {name!r} "
                               f"(vocabulary {vocab}); {fix}")
    taps = [x for x in layers if x != "final"]
    if any(not 0 <= int(x) < n_layers for x in taps):
        raise SpeclabError(f"head reads the inputs of target layers {taps} but target {name!r} has {n_layers} layers "
                           f"(0..{n_layers - 1}); {fix}")
    fc = state.get("fc.weight")
    if fc is None:
        raise SpeclabError(f"the {variant} head has no fc.weight; point method.head at a complete EAGLE head folder")
    want = (2 if variant == "eagle" else len(layers)) * h
    if tuple(fc.shape) != (h, want):
        raise SpeclabError(f"head fc maps {fc.shape[1]} inputs to {fc.shape[0]} but target {name!r} gives {want} "
                           f"({variant}, {len(layers)} state(s) of size {h}) into {h}; {fix}")


def draft_vocabulary(state: dict[str, torch.Tensor], fields: dict, target: TargetModel) -> ReducedVocab | None:
    """EAGLE-3's draft vocabulary from ``d2t`` (None: the target's own); sorts ``lm_head`` rows to ascending ids."""
    head = state.get("lm_head.weight")
    if head is None:
        raise SpeclabError("the EAGLE-3 head has no lm_head.weight; "
                           "point method.head at a complete EAGLE-3 head folder")
    rows = head.shape[0]
    declared = fields.get("draft_vocab_size")
    if declared is not None and int(declared) != rows:
        raise SpeclabError(f"head config says draft_vocab_size {declared} but its lm_head has {rows} rows; "
                           "fix config.json")
    if rows == target.vocab_size:
        return None  # the official loader drops d2t/t2d when the draft vocabulary is the target's
    if "d2t" not in state:
        raise SpeclabError(f"head drafts over {rows} tokens but target {target.info.name!r} has {target.vocab_size} "
                           "and the head has no d2t to map them; use a head trained for this target")
    d2t = state["d2t"].long().flatten()
    if d2t.numel() != rows:
        raise SpeclabError(f"head d2t lists {d2t.numel()} tokens but its lm_head has {rows} rows; re-export the head")
    ids = torch.arange(rows) + d2t
    if int(ids.min()) < 0 or int(ids.max()) >= target.vocab_size or ids.unique().numel() != rows:
        raise SpeclabError(f"head d2t maps into ids outside [0, {target.vocab_size}) of target {target.info.name!r} "
                           "or repeats one; use a head trained for this target")
    if "t2d" in state and not torch.equal(state["t2d"].bool().nonzero().flatten(), ids.sort().values):
        raise SpeclabError("head t2d and d2t list different draft tokens; re-export the head")
    order = ids.argsort()
    state["lm_head.weight"] = head[order]  # ReducedVocab numbers draft tokens by ascending target id
    return ReducedVocab(ids[order], target.vocab_size)


def embedding(state: dict[str, torch.Tensor], target: TargetModel) -> nn.Module:
    """The target's embedding, unless the head stores a different copy: the official loaders run on the stored one."""
    own = target.model.get_input_embeddings()
    stored = state.get("embed_tokens.weight")
    if stored is None or torch.equal(stored, own.weight.detach().to(stored.dtype)):
        return own
    return nn.Embedding.from_pretrained(stored.float(), freeze=True)


def to_head_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        if key in NOT_WEIGHTS or "rotary_emb." in key:
            continue
        for prefix, internal in LAYER_PREFIXES.items():
            if key.startswith(prefix):
                key = internal + key[len(prefix):]
                break
        out[key] = value
    return out


def layer_llama_config(layer_config: dict, target: TargetModel) -> LlamaConfig:
    keep = {k: v for k, v in layer_config.items() if k not in NOT_LAYER_CONFIG and not k.startswith("_")}
    keep.setdefault("vocab_size", target.vocab_size)
    # no rope_theta (the official EAGLE-3 configs): LlamaConfig's default base 10000, as the official head runs
    return LlamaConfig(**{**keep, "num_hidden_layers": 1, "tie_word_embeddings": False})


def load_head(path_or_id: str, target: TargetModel, dtype: torch.dtype = torch.float32) -> tuple[EagleHead, dict]:
    """An EAGLE or EAGLE-3 head for ``target`` from a folder or Hub id in any supported layout; returns
    (head, config dict)."""
    folder = resolve_folder(path_or_id)
    config = read_config(folder)
    layer_config, fields = split_config(config)
    state = dict(read_weights(folder))
    variant = detect_variant(state)
    check_supported(layer_config, fields, folder)
    layers = tapped_layers(fields, variant, target.num_layers)
    check_fits(layer_config, fields, state, variant, layers, target)
    fc_bias = "fc.bias" in state
    if variant == "eagle" and "bias" in fields and bool(fields["bias"]) != fc_bias:
        raise SpeclabError(f"head config says bias={str(bool(fields['bias'])).lower()} but its weights "
                           f"{'hold' if fc_bias else 'lack'} fc.bias; fix config.json or re-export the head")
    vocab = draft_vocabulary(state, fields, target) if variant == "eagle3" else None
    head = EagleHead(layer_llama_config(layer_config, target), variant, layers, embedding(state, target),
                     target.lm_head, vocab, fc_bias=fc_bias)
    missing, unexpected = head.load_state_dict(to_head_keys(state), strict=False)
    missing = [m for m in missing if not m.startswith("rotary.")]
    if missing or unexpected:
        raise SpeclabError(f"head {folder} does not fit the {variant} layout (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}); use an EAGLE-1 or EAGLE-3 head with Llama decoder layers")
    return head.to(dtype).eval(), config


# -- writing ------------------------------------------------------------------------------------------------

def official_state(head: EagleHead, dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """The head's weights under the official key names (floating point cast to ``dtype``; vocab maps kept exact)."""
    prefix = SAVE_PREFIX[head.variant]
    state = {}
    for key, value in head.own_state_dict().items():
        key = prefix + key if key.split(".", 1)[0] in LAYER_MODULES else key
        state[key] = value.detach().to(dtype).contiguous()
    if head.variant == "eagle3" and head.vocab is not None:
        state["d2t"] = head.vocab.d2t.contiguous()
        state["t2d"] = head.vocab.t2d.contiguous()
    return state


def official_config(head: EagleHead, dtype: torch.dtype) -> dict:
    """config.json as the official repositories, SGLang and vLLM read it."""
    config = head.config.to_dict()
    for key in [k for k in config if k.startswith("_")] + ["dtype"]:
        config.pop(key, None)
    rope = dict(config.get("rope_parameters") or {"rope_type": "default", "rope_theta": 10000.0})
    # transformers-4 readers (the EAGLE repository, older engines) read only these two
    config["rope_theta"] = rope.get("rope_theta", 10000.0)
    kind = rope.get("rope_type") or rope.get("type") or "default"
    config["rope_scaling"] = None if kind == "default" else {k: v for k, v in rope.items() if k != "rope_theta"}
    config.update(architectures=["LlamaForCausalLMEagle3" if head.variant == "eagle3" else "LlamaForCausalLM"],
                  num_hidden_layers=1, torch_dtype=str(dtype).replace("torch.", ""))
    if head.variant == "eagle":
        config["bias"] = head.fc.bias is not None
    else:
        taps = [int(x) for x in head.target_layers]
        config["draft_vocab_size"] = head.lm_head.out_features
        config["eagle_aux_hidden_state_layer_ids"] = taps  # vLLM reads this first, as layer inputs
        config["eagle_config"] = {"eagle_aux_hidden_state_layer_ids": [i - 1 for i in taps],  # SGLang: outputs
                                  "use_aux_hidden_state": True}
    return config


def _write_config(out: Path, config: dict) -> None:
    (out / "config.json").write_text(json.dumps(config, indent=1, default=str))


def save_head(head: EagleHead, out: str | Path, target: TargetModel, meta: dict,
              dtype: torch.dtype = torch.float16) -> Path:
    """Write ``head`` in its official layout (config.json + model.safetensors), without the target's embedding."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(official_state(head, dtype), str(out / "model.safetensors"))
    config = official_config(head, dtype)
    config["speclab_head"] = {"variant": head.variant, "target": target.info.name, "target_path": target.info.path,
                              "target_weights_hash": target.info.weights_hash,
                              "target_layers": list(head.target_layers), **meta}
    _write_config(out, config)
    return out


def export_official(path_or_id: str, target: TargetModel, out: str | Path, dtype: torch.dtype = torch.float16) -> Path:
    """A standalone copy of a head for strict loaders: ``pytorch_model.bin`` with ``embed_tokens.weight`` copied
    from ``target`` (Spec-Bench's EAGLE loaders demand it and read only ``.bin``).

    EAGLE-3 copies also get ``target_hidden_size`` (= the hidden size, so fc keeps its width): with it the
    official loader keeps the stored embedding instead of looking for the target's sharded-checkpoint index,
    which single-file targets lack. Spec-Bench's EAGLE-1 code hard-codes RoPE base 10000; a target with another
    ``rope_theta`` (SmolLM2: 100000) runs a different head there.
    """
    head, source = load_head(path_or_id, target)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    state = official_state(head, dtype)
    state["embed_tokens.weight"] = head.embed.weight.detach().to(dtype).contiguous()  # a differing stored copy wins
    torch.save(state, out / "pytorch_model.bin")
    config = official_config(head, dtype)
    if head.variant == "eagle3":
        config["target_hidden_size"] = head.config.hidden_size
    if "speclab_head" in source:
        config["speclab_head"] = {**source["speclab_head"], "exported_from": str(path_or_id)}
    _write_config(out, config)
    return out


def new_head(variant: str, target: TargetModel, vocab: ReducedVocab | None = None, seed: int = 0) -> EagleHead:
    """A freshly initialised head for ``target`` (training starts here)."""
    torch.manual_seed(seed)
    config = head_llama_config(target.config)
    layers = default_layers(variant, target.num_layers)
    return EagleHead(config, variant, layers, target.model.get_input_embeddings(), target.lm_head, vocab,
                     fc_bias=variant == "eagle")
