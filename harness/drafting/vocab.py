"""A subset of the target vocabulary as a draft's output space: on a CPU the 49152-way head is a large share of a
draft step. EAGLE-3 heads store their own (``d2t`` / ``t2d``); other heads and draft models read the most frequent
answer tokens from the ``token_frequency.json`` beside their weights (``method.vocab_size``). Official heads ship
no such file, so ``auto`` (the default) drafts over the full vocabulary for them."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

from harness.core.errors import SpeclabError

log = logging.getLogger("speclab")
AUTO_VOCAB = 8192  # method.vocab_size=auto with a token_frequency.json: its most frequent tokens, as many as this
FREQUENCY_FILE = "token_frequency.json"


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
    """The draft vocabulary ``method.vocab_size`` names (None: the full vocabulary of ``vocab_size`` tokens).

    An integer n: the n most frequent answer tokens listed in ``<path>/token_frequency.json`` (the file is
    required). ``auto``: the :data:`AUTO_VOCAB` most frequent when the file is there, else the full vocabulary
    (official heads ship none). null: the full vocabulary.
    """
    n = getattr(cfg, "vocab_size", None)
    if n is None:
        return None
    freq = Path(path) / FREQUENCY_FILE
    auto = n == "auto"
    if auto:
        if not freq.is_file():
            log.info("method.vocab_size=auto: %s has no %s, drafting over the full vocabulary (%d tokens)",
                     path, FREQUENCY_FILE, vocab_size)
            return None
        n = AUTO_VOCAB
    elif isinstance(n, bool) or not isinstance(n, int):
        raise SpeclabError(f"method.vocab_size must be auto, null or a positive integer, got {n!r}; "
                           "set method.vocab_size=auto")
    if n <= 0:
        raise SpeclabError(f"method.vocab_size must be positive, got {n}; "
                           "set method.vocab_size=null for the target's full head")
    if not freq.is_file():
        raise SpeclabError(f"method.vocab_size={n} needs {freq} (token ids by frequency); "
                           "set method.vocab_size=auto or null")
    ids = json.loads(freq.read_text())["token_ids"][:n]
    vocab = ReducedVocab(torch.tensor(ids), vocab_size)
    if auto:
        log.info("method.vocab_size=auto: drafting over the %d most frequent tokens of %s", len(vocab), freq)
    return vocab
