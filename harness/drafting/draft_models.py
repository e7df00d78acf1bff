"""Draft models for draft-model speculative sampling: loading, compatibility checks, export to plain HF.

A draft folder is either an ordinary HF causal LM, or a speclab *layer draft*: ``config.json`` is a
normal model config plus a ``speclab_draft`` entry naming the target and the tensors it shares with it
(embeddings and the tied head), and ``model.safetensors`` holds only the draft's own tensors (fp16).
:func:`load_draft` assembles a layer draft with the target's shared tensors; :func:`export_hf` writes
the assembled model as an ordinary HF folder, which ``AutoModelForCausalLM.from_pretrained`` (and
transformers' ``assistant_model=``) load without speclab.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors.torch import load_file

from harness.core.config import REPO
from harness.core.diskcache import build_folder_once, cache_dir, files_hash
from harness.core.errors import SpeclabError
from harness.loading.sources import load_target
from harness.model.device import DTYPES
from harness.model.target import ModelInfo, TargetModel

DRAFTS_DIR = REPO / "drafts"


@dataclass
class DraftModelConfig:
    """``method.draft`` of the methods that draft with a separate model (sps, hf_assisted)."""

    path: Optional[str] = None  # HF id or folder; null = drafts/<model.name>/ (the distilled default)
    dtype: str = "float32"


def default_draft(model_name: str) -> Path:
    path = DRAFTS_DIR / model_name
    if not (path / "config.json").is_file():
        known = sorted(p.name for p in DRAFTS_DIR.glob("*") if (p / "config.json").is_file()) if DRAFTS_DIR.is_dir() else []
        raise SpeclabError(
            f"no default draft for model {model_name!r} (have: {', '.join(known) or 'none'}); "
            "set method.draft.path=<HF id or folder of a draft sharing the target's tokenizer>, or distil one: "
            f"python scripts/distill_draft.py --model {model_name} --out {path}"
        )
    return path


def is_layer_draft(path: Path) -> bool:
    cfg = path / "config.json"
    return cfg.is_file() and "speclab_draft" in json.loads(cfg.read_text())


def _assemble(path: Path, target: TargetModel, dtype: torch.dtype):
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.from_pretrained(path)
    meta = config.speclab_draft
    with torch.device("cpu"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    own = load_file(str(path / "model.safetensors"))
    shared = {name: target.model.state_dict()[name] for name in meta["shared"]}
    missing, unexpected = model.load_state_dict({**own, **shared}, strict=False)
    missing = [m for m in missing if not (config.tie_word_embeddings and m == "lm_head.weight")]
    if missing or unexpected:
        raise SpeclabError(f"draft {path} does not fit its config (missing {missing[:3]}, unexpected {unexpected[:3]}); re-export it")
    if config.tie_word_embeddings:
        model.tie_weights()
    return model.to(dtype).eval()


def check_compatible(draft: TargetModel, target: TargetModel) -> None:
    if draft.vocab_size != target.vocab_size:
        raise SpeclabError(
            f"draft vocabulary ({draft.vocab_size}) differs from the target's ({target.vocab_size}); sps needs a draft "
            "that shares the target's tokenizer (set method.draft.path)"
        )
    probe = "Speculative decoding, 1234!"
    if draft.tokenizer(probe)["input_ids"] != target.tokenizer(probe)["input_ids"]:
        raise SpeclabError("the draft's tokenizer encodes text differently from the target's; sps needs a shared tokenizer")


def load_draft(path: str | None, target: TargetModel, dtype: str = "float32") -> TargetModel:
    """The draft for ``target``: ``path`` (HF id, folder or layer draft), or the target's default draft."""
    folder = Path(path).expanduser() if path else default_draft(target.info.name)
    if dtype not in DTYPES:
        raise SpeclabError(f"unknown draft dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if not folder.exists() and (str(path).startswith((".", "/", "~")) or str(path).count("/") != 1):
        raise SpeclabError(f"draft {path!r} is neither a folder nor a Hub id (org/name); fix method.draft.path")
    if folder.exists() and is_layer_draft(folder):
        meta = json.loads((folder / "config.json").read_text())["speclab_draft"]
        model = _assemble(folder, target, DTYPES[dtype])
        model.config._attn_implementation = target.model.config._attn_implementation
        info = ModelInfo(
            f"{meta.get('target', target.info.name)}-draft", str(folder), files_hash([folder / "model.safetensors"]),
            dtype, sum(p.numel() for p in model.parameters()), {"shared_with_target": meta["shared"]},
        )
        draft = TargetModel(model.to(target.device), target.tokenizer, info)
    else:
        draft = load_target(folder.name if folder.exists() else str(path), "hf", str(path if path else folder), dtype,
                            target.model.config._attn_implementation, device=target.device)
    check_compatible(draft, target)
    return draft


def save_layer_draft(model, out: str | Path, target: TargetModel, meta: dict) -> Path:
    """Write ``model``'s own tensors (fp16) and a config naming ``target`` and the tensors shared with it."""
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    shared = ["model.embed_tokens.weight"] + ([] if model.config.tie_word_embeddings else ["lm_head.weight"])
    own = {k: v.detach().half().contiguous() for k, v in model.state_dict().items() if k not in shared and k != "lm_head.weight"}
    save_file(own, str(out / "model.safetensors"))
    config = model.config.to_dict()
    config["dtype"] = "float16"
    config["speclab_draft"] = {
        "target": target.info.name,
        "target_path": target.info.path,
        "target_weights_hash": target.info.weights_hash,
        "shared": shared,
        **meta,
    }
    (out / "config.json").write_text(json.dumps(config, indent=1, default=str))
    return out


def export_hf(path: str | Path, target: TargetModel, out: str | Path | None = None) -> Path:
    """Write a layer draft, assembled with ``target``'s shared tensors, as an ordinary HF folder (cached)."""
    folder = Path(path)
    if not is_layer_draft(folder):
        return folder
    stamp = files_hash([folder / "model.safetensors", folder / "config.json"])
    out = Path(out) if out else cache_dir() / "drafts" / f"{folder.name}-{stamp}-{target.info.weights_hash}"

    def build(tmp: Path) -> None:
        model = _assemble(folder, target, torch.float32)
        del model.config.speclab_draft
        model.save_pretrained(tmp)
        target.tokenizer.save_pretrained(tmp)

    return build_folder_once(out, "config.json", build)
