"""Linear-layer kernels. The choice applies to the whole model, so baseline and methods always share it.

``torch``: ``F.linear`` (MKL sgemv for one row, sgemm for more). On this 2-core CPU a 2-row sgemm costs
about twice the 1-row sgemv, and the 49152-way head over 3 rows three times, which makes every
multi-token verification expensive (c(2) ~ 1.6, BENCHMARKS.md).

``onednn``: weights pre-packed once into oneDNN's blocked layout (``mkldnn._reorder_linear_weight``) and
multiplied with ``mkldnn._linear_pointwise``. Inputs of fewer than ``min_rows`` rows are padded: oneDNN's
kernel for 4+ rows streams each packed weight once for all rows, so on this CPU (SmolLM2-135M, fp32,
BENCHMARKS.md) a forward over 1..6 tokens costs within 1.1x of one token, and the padded 1-token step is
itself 17-22% faster than torch's. Every row of a 1..32-row input is computed by the same kernel, so the
linear layers give the same values for a token whatever the draft size.

``hybrid``: ``torch`` for one-row inputs (the autoregressive step), ``onednn`` for more. Where oneDNN's padded
1-token step is slower than MKL's sgemv (an Intel Xeon host: 90 against 69 ms, BENCHMARKS.md section 11) it gives
the baseline MKL's speed and verification oneDNN's flat cost; a token's values then depend on whether it was
computed alone or among others, so fp32 greedy outputs are identical up to numerical ties (reported as near ties).

``auto`` (the default): ``onednn`` where oneDNN can pack the model's dtype on this CPU (fp32 everywhere,
bf16 only with avx512bw/vl/dq or avx_ne_convert), else ``torch``; always ``torch`` on a GPU. For a real model the
runner then times the 1-token step through both paths and runs ``hybrid`` where oneDNN's is the slower one
(harness/model/kernel_choice.py). Rows record the kernel it resolved to.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from harness.core.errors import SpeclabError

KERNELS = ("auto", "torch", "onednn", "hybrid")


class OneDNNLinear(nn.Module):
    def __init__(self, linear: nn.Linear, min_rows: int = 4, batch_hint: int = 16, mkl_rows: int = 0) -> None:
        super().__init__()
        self.in_features = linear.in_features
        self.out_features = linear.out_features
        self.min_rows = min_rows
        self.mkl_rows = mkl_rows  # inputs of at most this many rows take torch's F.linear (hybrid)
        self.weight = linear.weight  # kept for state_dict / tied-weight users; the packed copy is what runs
        self.bias = linear.bias
        self.packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), batch_hint)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        rows = x.reshape(-1, shape[-1])
        n = rows.shape[0]
        if n <= self.mkl_rows:
            return F.linear(x, self.weight, self.bias)
        if n < self.min_rows:
            rows = torch.cat([rows, rows.new_zeros(self.min_rows - n, shape[-1])])
        bias = None if self.bias is None else self.bias.detach()
        y = torch.ops.mkldnn._linear_pointwise(rows, self.packed, bias, "none", [], "")
        return y[:n].reshape(*shape[:-1], self.out_features)


def onednn_available() -> bool:
    return torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")


def onednn_problem(dtype: torch.dtype, device: torch.device | str = "cpu") -> str | None:
    """Why oneDNN cannot run ``dtype`` weights on ``device`` here, or None when it can."""
    if torch.device(device).type != "cpu":
        return f"is a CPU kernel; the model is on {device}"
    if not onednn_available():
        return "needs a torch build with oneDNN (mkldnn)"
    if dtype not in (torch.float32, torch.bfloat16):
        return f"supports float32 and bfloat16 weights, not {dtype}"
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        return "runs bfloat16 only on CPUs with avx512bw/vl/dq or avx_ne_convert, which this one lacks"
    return None


def resolve_kernel(kernel: str, dtype: torch.dtype, device: torch.device | str = "cpu") -> str:
    """The kernel ``kernel`` means for weights of ``dtype`` on ``device`` (``auto`` -> onednn or torch)."""
    if kernel not in KERNELS:
        raise SpeclabError(f"unknown engine.kernel {kernel!r}; choose one of {', '.join(KERNELS)}")
    problem = onednn_problem(dtype, device) if kernel != "torch" else None
    if kernel == "auto":
        return "torch" if problem else "onednn"
    if problem:
        raise SpeclabError(f"engine.kernel={kernel} {problem}; use engine.kernel=torch (or auto)")
    return kernel


def draft_dtype(name: str, target_dtype: torch.dtype, device: torch.device | str, kernel: str) -> torch.dtype:
    """The weight dtype of a draft head for ``method.dtype=name``.

    ``auto``: bfloat16 where bf16 linears run natively (a CUDA GPU with bf16, or oneDNN's kernel on a CPU with
    bf16 units), else the target's dtype. A head only proposes, so its precision moves its speed and acceptance,
    never the verified output. On this CPU the draft step is bound by reading weights (BENCHMARKS.md section 4),
    so bf16 halves most of it.
    """
    if name == "auto":
        dev = torch.device(device)
        if dev.type == "cuda":
            return torch.bfloat16 if torch.cuda.is_bf16_supported() else target_dtype
        if target_dtype == torch.float32 and kernel != "torch" and onednn_problem(torch.bfloat16, dev) is None:
            return torch.bfloat16
        return target_dtype
    from harness.model.device import DTYPES

    if name not in DTYPES:
        raise SpeclabError(f"unknown method.dtype {name!r}; choose auto or one of {', '.join(DTYPES)}")
    return DTYPES[name]


def apply_kernel(model: nn.Module, kernel: str) -> nn.Module:
    """Swap every ``nn.Linear`` in ``model`` (in place) for the chosen kernel."""
    weight = next(model.parameters(), None)
    resolved = resolve_kernel(kernel, weight.dtype, weight.device) if weight is not None else "torch"
    if resolved == "torch":
        return model
    mkl_rows = 1 if resolved == "hybrid" else 0

    def swap(module: nn.Module) -> None:
        for name, child in module.named_children():
            if isinstance(child, nn.Linear):
                setattr(module, name, OneDNNLinear(child, mkl_rows=mkl_rows))
            else:
                swap(child)

    swap(model)
    return model


