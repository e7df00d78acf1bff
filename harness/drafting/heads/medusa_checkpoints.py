"""Medusa and Hydra heads in their official layouts, in and out (the modules are ``parallel_heads.py``).

* Medusa (``FasterDecoding/medusa-*``; ``medusa/model/medusa_model.py``): ``config.json`` with
  ``medusa_num_heads``, ``medusa_num_layers``, ``base_model_name_or_path``; weights ``medusa_lm_head.pt`` (or
  ``.safetensors``) keyed ``{k}.{j}.linear.{weight,bias}`` for ResBlock j of head k and ``{k}.{L}.weight``
  [V, H] for its own output layer. The released Vicuna configs say 2 heads while the file holds 5, so the
  number of heads comes from the weights. Without ``{k}.{L}.weight`` (the legacy "version 2" code, and the heads
  trained here) every head drafts through the target's own LM head.
* Hydra (``ankner/hydra-*``; ``hydra/model/hydra_heads/prefix_mlp_head.py``): ``config.json`` with
  ``hydra_head_arch`` (``prefix-mlp``), ``grounded_heads``, ``hydra_num_heads``, ``hydra_num_layers``; weights
  ``hydra_lm_head.pt`` keyed ``prefix_embeding_layer.{layers.0.*,norm.weight}`` (its ``embed_tokens`` is unused),
  ``hydra_mlp.{i}.{1,3,5,..}.{linear,res_connection}.*`` and ``hydra_lm_head.{i}.1.{weight,bias}``; the file also
  holds ``input_embed_fn.weight`` (the target's embedding, unused) and the prefix layer's rotary frequencies
  (``...self_attn.rotary_emb.inv_freq``: base 10000, which ``hydra/model/modeling_llama_kv.py`` uses whatever the
  target's ``rope_theta``; the loader runs the stored base). The official loader starts every output weight from
  the target's LM head and loads with ``strict=False``, so heads written here leave ``hydra_lm_head.{i}.1.weight``
  out (they never change it), and their prefix layer runs the target's RoPE.

Pickles load with ``weights_only=True``; a head whose sizes do not fit the target is refused in one line.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from harness.core.errors import SpeclabError
from harness.drafting.heads.checkpoint_files import _json_object, _read_file
from harness.drafting.heads.layers import head_llama_config
from harness.drafting.heads.medusa_heads import HydraHeads, MedusaHeads
from harness.loading.hub import resolve_folder
from harness.model.target import TargetModel

WEIGHTS = {"medusa": "medusa_lm_head", "hydra": "hydra_lm_head"}
# the official prefix layer's attention builds its rotary embedding with base 10000 whatever the target's
# rope_theta, and saves its frequencies: they, not the target's base, are what the head was trained with
HYDRA_ROTARY = "prefix_embeding_layer.layers.0.self_attn.rotary_emb.inv_freq"
KINDS = tuple(WEIGHTS)


def _weights(folder: Path, kind: str) -> dict[str, torch.Tensor]:
    stem = WEIGHTS[kind]
    for suffix in (".safetensors", ".pt"):
        if (folder / (stem + suffix)).is_file():
            return dict(_read_file(folder / (stem + suffix)))
    other = next((k for k, s in WEIGHTS.items() if k != kind and any(folder.glob(s + ".*"))), None)
    hint = f"it holds {other} heads; use method={other}" if other else f"point method.head at a {kind} head folder"
    raise SpeclabError(f"no {stem}.pt or {stem}.safetensors in {folder}; {hint}")


def _config(folder: Path, kind: str) -> dict:
    path = folder / "config.json"
    if not path.is_file():
        raise SpeclabError(f"head folder {folder} has no config.json; point method.head at a {kind} head folder")
    return _json_object(path)


def _fit(what: str, got: tuple, want: tuple, target: TargetModel) -> None:
    if tuple(got) != tuple(want):
        raise SpeclabError(f"head {what} has shape {list(got)} but target {target.info.name!r} needs {list(want)} "
                           f"(hidden size {target.config.hidden_size}, vocabulary {target.vocab_size}); "
                           "use a head trained for this target")


def _load_into(module: torch.nn.Module, state: dict[str, torch.Tensor], folder: Path, kind: str) -> None:
    missing, unexpected = module.load_state_dict(state, strict=False)
    missing = [m for m in missing if ".rotary." not in m]
    if missing or unexpected:
        raise SpeclabError(f"head {folder} does not fit the {kind} layout (missing {missing[:3]}, unexpected "
                           f"{unexpected[:3]}); use an official {kind} head or one written by scripts/train_medusa.py")


def load_medusa(folder: Path, target: TargetModel, dtype: torch.dtype) -> MedusaHeads:
    state = _weights(folder, "medusa")
    config = _config(folder, "medusa")
    blocks = {(int(m[1]), int(m[2])) for k in state if (m := re.fullmatch(r"(\d+)\.(\d+)\.linear\.weight", k))}
    if not blocks:
        raise SpeclabError(f"{folder} holds no Medusa ResBlocks ({{k}}.{{j}}.linear.weight); use a Medusa head")
    num_heads = max(k for k, _ in blocks) + 1
    num_layers = max(j for _, j in blocks) + 1
    declared = config.get("medusa_num_layers")
    if declared is not None and int(declared) != num_layers:
        raise SpeclabError(f"head config says medusa_num_layers={declared} but its weights hold {num_layers} "
                           "ResBlocks per head; fix config.json")
    own = f"0.{num_layers}.weight" in state
    h, v = int(target.config.hidden_size), target.vocab_size
    for key, value in state.items():
        if key.endswith("linear.weight"):
            _fit(key, value.shape, (h, h), target)
        elif key.endswith(f".{num_layers}.weight"):
            _fit(key, value.shape, (v, h), target)
    heads = MedusaHeads(h, v, num_heads, num_layers, target.lm_head, own_lm_head=own)
    _load_into(heads.medusa_head, state, folder, "medusa")
    return heads.to(dtype).eval()


def rope_base(inv_freq: torch.Tensor, head_dim: int, folder: Path) -> float:
    """The RoPE base of stored frequencies ``inv_freq[i] = base ** (-2 i / head_dim)``."""
    if inv_freq.numel() != head_dim // 2 or inv_freq.numel() < 2:
        raise SpeclabError(f"head {folder} stores {inv_freq.numel()} rotary frequencies but the target's heads have "
                           f"dimension {head_dim}; use a head trained for this target")
    i = torch.arange(1, inv_freq.numel(), dtype=torch.float64)
    return float((-inv_freq[1:].double().log() * head_dim / (2 * i)).exp().mean())


def load_hydra(folder: Path, target: TargetModel, dtype: torch.dtype) -> HydraHeads:
    state = _weights(folder, "hydra")
    config = _config(folder, "hydra")
    arch = config.get("hydra_head_arch", "prefix-mlp")
    if arch != "prefix-mlp" or not config.get("grounded_heads", True):
        raise SpeclabError(f"head {folder} is a Hydra {arch!r} head (grounded_heads={config.get('grounded_heads')}); "
                           "speclab runs the grounded prefix-mlp heads (Hydra++)")
    heads_found = {int(m[1]) for k in state if (m := re.fullmatch(r"hydra_mlp\.(\d+)\.1\.linear\.weight", k))}
    if not heads_found:
        raise SpeclabError(f"{folder} holds no Hydra heads (hydra_mlp.{{i}}.1.linear.weight); use a Hydra head")
    num_heads = max(heads_found) + 1
    blocks = {int(m[1]) for k in state if (m := re.fullmatch(r"hydra_mlp\.0\.(\d+)\.linear\.weight", k))}
    num_layers = len(blocks)
    declared = config.get("hydra_num_layers")
    if declared is not None and int(declared) != num_layers:
        raise SpeclabError(f"head config says hydra_num_layers={declared} but its weights hold {num_layers} blocks "
                           "per head; fix config.json")
    h, v = int(target.config.hidden_size), target.vocab_size
    for i in range(num_heads):
        _fit(f"hydra_mlp.{i}.1.linear.weight", state[f"hydra_mlp.{i}.1.linear.weight"].shape, (h, (i + 2) * h), target)
        bias = state.get(f"hydra_lm_head.{i}.1.bias")
        if bias is not None:
            _fit(f"hydra_lm_head.{i}.1.bias", bias.shape, (v,), target)
    q = state.get("prefix_embeding_layer.layers.0.self_attn.q_proj.weight")
    if q is not None:
        _fit("prefix_embeding_layer q_proj", q.shape[1:], (h,), target)
    own = "hydra_lm_head.0.1.weight" in state
    if own:
        _fit("hydra_lm_head.0.1.weight", state["hydra_lm_head.0.1.weight"].shape, (v, h), target)
    state = {k: t for k, t in state.items() if not k.startswith(("prefix_embeding_layer.embed_tokens", "input_embed_fn"))}
    config = head_llama_config(target.config)
    stored = state.pop(HYDRA_ROTARY, None)
    if stored is not None:
        config.rope_parameters["rope_theta"] = rope_base(stored, config.head_dim, folder)
    heads = HydraHeads(config, num_heads, num_layers, target.model.get_input_embeddings(), target.lm_head,
                       own_lm_head=own)
    _load_into(heads, state, folder, "hydra")
    return heads.to(dtype).eval()


def load_parallel_heads(path_or_id: str, kind: str, target: TargetModel,
                        dtype: torch.dtype = torch.float32) -> MedusaHeads | HydraHeads:
    """Medusa or Hydra heads for ``target`` from a folder or a Hub id."""
    folder = resolve_folder(path_or_id)
    return load_medusa(folder, target, dtype) if kind == "medusa" else load_hydra(folder, target, dtype)


def save_parallel_heads(heads: MedusaHeads | HydraHeads, out: str | Path, target: TargetModel, meta: dict,
                        dtype: torch.dtype = torch.float16) -> Path:
    """The official layout: ``config.json`` and ``<medusa|hydra>_lm_head.pt``, a flat tensor dict (what the
    reference loaders ``torch.load``; it loads with ``weights_only=True``)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    if isinstance(heads, MedusaHeads):
        state = heads.medusa_head.state_dict()
        config = {"medusa_num_heads": heads.num_heads, "medusa_num_layers": heads.num_layers}
    else:
        state = heads.own_state_dict()
        config = {"hydra_head_arch": "prefix-mlp", "grounded_heads": True, "hidden_state_offset": 0,
                  "hydra_num_heads": heads.num_heads, "hydra_num_layers": heads.num_layers}
    state = {k: v.detach().to(dtype).contiguous() for k, v in state.items()}
    stem = WEIGHTS[heads.variant]
    torch.save(state, out / f"{stem}.pt")
    config.update(base_model_name_or_path=target.info.path, vocab_size=target.vocab_size,
                  hidden_size=int(target.config.hidden_size),
                  speclab_head={"variant": heads.variant, "target": target.info.name,
                                "target_weights_hash": target.info.weights_hash,
                                "lm_head": "own" if heads.own_lm_head else "target (shared, not stored)", **meta})
    (out / "config.json").write_text(json.dumps(config, indent=1, default=str))
    return out
