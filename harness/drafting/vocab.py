"""A subset of the target vocabulary as a draft's output space: on a CPU the 49152-way head is a large share of a
draft step. EAGLE-3 heads store their own (``d2t`` / ``t2d``); other heads and draft models read the most frequent
answer tokens from the ``token_frequency.json`` beside their weights (``method.vocab_size``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from harness.core.errors import SpeclabError


class ReducedVocab:
    """Draft index i <-> target token ``ids[i]`` (ids ascending); ``d2t[i] = ids[i] - i`` as EAGLE-3 stores it."""

    def __init__(self, ids: torch.Tensor, target_vocab: int) -> None:
        ids = torch.as_tensor(ids, dtype=torch.long).unique(sorted=True)
        if ids.numel() == 0 or int(ids[-1]) >= target_vocab or int(ids[0]) < 0:
            raise ValueError(f"draft vocabulary ids must lie in [0, {target_vocab}), got {ids.numel()} ids")
        self.ids = ids
        self.target_vocab = int(target_vocab)

    def __len__(self) -> int:
        return int(self.ids.numel())

    @classmethod
    def from_d2t(cls, d2t: torch.Tensor, target_vocab: int) -> "ReducedVocab":
        return cls(torch.arange(d2t.numel()) + d2t.long(), target_vocab)

    @property
    def d2t(self) -> torch.Tensor:
        return self.ids - torch.arange(len(self))

    @property
    def t2d(self) -> torch.Tensor:
        mask = torch.zeros(self.target_vocab, dtype=torch.bool)
        mask[self.ids] = True
        return mask

    def index(self) -> torch.Tensor:
        """Target id -> draft index, -1 for tokens outside the draft vocabulary."""
        out = torch.full((self.target_vocab,), -1, dtype=torch.long)
        out[self.ids] = torch.arange(len(self))
        return out

    def rows(self, weight: torch.Tensor, dtype: torch.dtype | None = None) -> nn.Linear:
        """A bias-free head made of the rows of a full-vocabulary output matrix (cast to ``dtype`` if given)."""
        head = nn.Linear(weight.shape[1], len(self), bias=False)
        rows = weight.detach()[self.ids].to(dtype or weight.dtype, copy=True)
        head.weight = nn.Parameter(rows, requires_grad=False)
        return head


def frequency_vocab(cfg: Any, path: str | Path, vocab_size: int) -> ReducedVocab | None:
    """The ``method.vocab_size`` most frequent answer tokens listed in ``<head>/token_frequency.json`` as a draft
    vocabulary (None when ``method.vocab_size`` is null)."""
    n = getattr(cfg, "vocab_size", None)
    if n is None:
        return None
    if n <= 0:
        raise SpeclabError(f"method.vocab_size must be positive, got {n}; "
                           "set method.vocab_size=null for the target's full head")
    freq = Path(path) / "token_frequency.json"
    if not freq.is_file():
        raise SpeclabError(f"method.vocab_size needs {freq} (token ids by frequency); set method.vocab_size=null")
    ids = json.loads(freq.read_text())["token_ids"][:n]
    return ReducedVocab(torch.tensor(ids), vocab_size)
