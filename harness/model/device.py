"""Where the engine runs: ``engine.device`` and ``model.dtype`` resolved for this machine, and the device
synchronisation that timings need.

CUDA kernels run asynchronously, so a wall-clock reading is only meaningful after the device has finished
the work queued before it; on the CPU :func:`synchronize` does nothing.
"""

from __future__ import annotations

import torch

from harness.core.errors import SpeclabError

DEVICES = ("auto", "cpu", "cuda")
# bf16 on GPUs: what every published GPU SD number uses; fp32 on CPUs, where bf16 matmuls are no faster on most
# hosts and fp32 makes greedy outputs exactly reproducible
DEFAULT_DTYPE = {"cpu": "float32", "cuda": "bfloat16"}


def resolve_device(name: str) -> torch.device:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; ``cuda:N`` names one GPU."""
    kind = str(name).split(":")[0]
    if kind not in DEVICES:
        raise SpeclabError(f"unknown engine.device {name!r}; choose auto, cpu, cuda or cuda:N")
    if kind == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if kind == "cuda" and not torch.cuda.is_available():
        raise SpeclabError(f"engine.device={name} but torch sees no GPU (torch {torch.__version__}, cuda build: "
                           f"{torch.version.cuda or 'no'}); install a CUDA build of torch or set engine.device=cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SpeclabError(f"bad engine.device {name!r}; write cuda or cuda:N") from None
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise SpeclabError(f"engine.device={name} but only {torch.cuda.device_count()} GPU(s) are visible; "
                           "pick one of them or set CUDA_VISIBLE_DEVICES")
    return device


def resolve_dtype(dtype: str, device: torch.device) -> str:
    """``model.dtype=auto`` -> the device's default (fp32 on CPU, bf16 on CUDA); other names pass through."""
    return DEFAULT_DTYPE[device.type] if dtype == "auto" else dtype


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (before reading a clock); a no-op on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
