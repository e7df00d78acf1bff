"""Model resolution: a model config (a Hub id or folder, a packaged GGUF, a testbed, a tiny test model) -> the
engine's :class:`TargetModel` on its device.

Every loader returns a :class:`TargetModel` whose :class:`ModelInfo` carries the weights hash that
results rows and the baseline cache are keyed on.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from harness.core.config import TinySpec
from harness.core.diskcache import files_hash, tensors_hash
from harness.core.errors import SpeclabError
from harness.loading.gguf import GGUF_PACKAGES, gguf_folder
from harness.model.device import DTYPES
from harness.model.target import ATTENTION, ModelInfo, TargetModel

MOE_TESTBED = "smollm2_moe"  # SmolLM2 upcycled to experts, committed routers and gains (harness/loading/moe_testbed.py)
DIGITS_AR = "digits_ar"  # the committed image-AR testbed (harness/loading/digits.py)


def _offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def _load_hf(path: str, name: str, dtype: str, attention: str, revision: str | None, trust_remote_code: bool):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    local = Path(path).expanduser()
    is_local = local.exists()
    if not is_local and (path.startswith((".", "/", "~")) or path.count("/") > 1):
        raise SpeclabError(f"model folder {path} does not exist; fix model.path (a local folder or a Hub id)")
    try:
        tok = AutoTokenizer.from_pretrained(str(local) if is_local else path, revision=revision)
        model = AutoModelForCausalLM.from_pretrained(
            str(local) if is_local else path,
            dtype=DTYPES[dtype],
            revision=revision,
            trust_remote_code=trust_remote_code,
        )
    except OSError as e:
        hint = " (HF_HUB_OFFLINE=1 is set: download it first or point model.path at a local folder)" if _offline() else ""
        raise SpeclabError(f"cannot load model {path!r}{hint}: {str(e).splitlines()[0]}") from None
    model.config._attn_implementation = attention
    folder = local if is_local else Path(model.name_or_path)
    weight_files = [p for p in folder.glob("*.safetensors")] + [p for p in folder.glob("*.bin")] if folder.exists() else []
    weights_hash = files_hash(weight_files) if weight_files else tensors_hash(model)
    info = ModelInfo(name, str(path), weights_hash, dtype, sum(p.numel() for p in model.parameters()))
    return model, tok, info


def load_target(
    name: str,
    source: str = "hf",
    path: str | None = None,
    dtype: str = "float32",
    attention: str = ATTENTION,
    revision: str | None = None,
    trust_remote_code: bool = False,
    tiny: TinySpec | None = None,
    device: torch.device | str = "cpu",
) -> TargetModel:
    """Load the target named by a model config (see ``conf/model/``), its weights on ``device``."""
    target = _load_target(name, source, path, dtype, attention, revision, trust_remote_code, tiny)
    if torch.device(device) != target.device:
        target.model.to(device)
        target.device = next(target.model.parameters()).device  # "cuda" resolves to "cuda:0"
    return target


def load_configured(model: Any, device: str = "auto") -> TargetModel:
    """The target of a ``model`` config node on ``engine.device`` (``model.dtype=auto``: the device's default)."""
    from harness.model.device import resolve_device, resolve_dtype

    where = resolve_device(device)
    if where.type == "cuda" and where.index is not None:
        torch.cuda.set_device(where)  # streams, events and graphs the engine makes belong to the current device
    return load_target(model.name, model.source, model.path, resolve_dtype(model.dtype, where), model.attention,
                       model.revision, model.trust_remote_code, TinySpec(**model.tiny), where)


def _load_target(name: str, source: str, path: str | None, dtype: str, attention: str, revision: str | None,
                 trust_remote_code: bool, tiny: TinySpec | None) -> TargetModel:
    if dtype not in DTYPES:
        raise SpeclabError(f"unknown model.dtype {dtype!r}; choose one of {', '.join(DTYPES)}")
    if source == "tiny" and path is None:
        from harness.model.tiny import TINY_FAMILIES, byte_tokenizer, tiny_model

        spec = tiny or TinySpec()
        if spec.family not in TINY_FAMILIES:
            raise SpeclabError(f"unknown model.tiny.family {spec.family!r}; choose one of {', '.join(TINY_FAMILIES)}")
        tok = byte_tokenizer()
        model = tiny_model(len(tok), **asdict(spec), eos_token_id=tok.eos_token_id).to(DTYPES[dtype])
        model.config._attn_implementation = attention
        info = ModelInfo(name, f"tiny:{spec.family}:seed={spec.seed}", tensors_hash(model), dtype, sum(p.numel() for p in model.parameters()),
                         {"tiny": asdict(spec)})
        return TargetModel(model, tok, info)
    if source in GGUF_PACKAGES and path is None:
        folder = gguf_folder(source)
        model, tok, info = _load_hf(str(folder), name, dtype, attention, None, False)
        prov = json.loads((folder / "speclab_provenance.json").read_text())
        info.extra["gguf_sha256"] = prov.get("gguf_sha256", "")
        return TargetModel(model, tok, info)
    if source == DIGITS_AR and path is None:
        from harness.loading.digits import testbed_folder as digits_folder

        model, tok, info = _load_hf(str(digits_folder()), name, dtype, attention, None, False)
        return TargetModel(model, tok, info)
    if source == MOE_TESTBED and path is None:
        from harness.loading.moe_testbed import testbed_folder

        model, tok, info = _load_hf(str(testbed_folder()), name, dtype, attention, None, False)
        return TargetModel(model, tok, info)
    if source not in ("hf", "tiny", MOE_TESTBED, DIGITS_AR, *GGUF_PACKAGES):
        raise SpeclabError(f"unknown model.source {source!r}; choose hf, tiny, {MOE_TESTBED}, {DIGITS_AR} or one of "
                           f"{', '.join(GGUF_PACKAGES)}")
    if not path:
        raise SpeclabError("model.path is empty; give a Hub id (org/name) or a local folder")
    model, tok, info = _load_hf(path, name, dtype, attention, revision, trust_remote_code)
    return TargetModel(model, tok, info)


def load_named(name: str, dtype: str = "float32") -> TargetModel:
    """The target a training script names: a packaged model (``smollm2-135m``, ``gemma3-270m``, ``smollm2-moe``),
    ``tiny-llama`` (tests),
    else an HF id or folder."""
    packaged = {pkg.model: source for source, pkg in GGUF_PACKAGES.items()}
    source = {**packaged, "smollm2-moe": MOE_TESTBED, "digits-ar": DIGITS_AR, "tiny-llama": "tiny"}.get(name, "hf")
    return load_target(name, source, None if source != "hf" else name, dtype)
