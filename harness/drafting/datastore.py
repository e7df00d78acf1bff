"""A retrieval datastore: a token corpus and its suffix array, searched by longest suffix match (REST, SAM).

Entries (documents, answers) are joined by a separator id outside the vocabulary, so no match or
continuation ever crosses from one entry into the next. Tokens are stored as 32-bit ids: REST's reference
format keeps 16 bits and silently truncates vocabularies over 65,535 (Llama-3, Qwen, Gemma). The suffix
array comes from libdivsufsort (``pydivsufsort``); the search is a binary search over it.

A datastore file (``.npz``) records the tokenizer it was built with (a fingerprint of its vocabulary) and
a description of its corpus; :func:`load` refuses a datastore built for another tokenizer.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from harness.core.errors import SpeclabError

FORMAT = 1


def default_path(model_name: str) -> Path:
    """Where a model's default datastore lives: built from its own answers to the training prompts."""
    from harness.drafting.draft_models import DRAFTS_DIR

    return DRAFTS_DIR / model_name / "datastore" / "answers.npz"


def tokenizer_fingerprint(tokenizer: Any) -> str:
    """16 hex digits identifying a tokenizer's vocabulary (token string -> id)."""
    vocab = sorted(tokenizer.get_vocab().items(), key=lambda kv: kv[1])
    return hashlib.sha256(json.dumps(vocab, ensure_ascii=False).encode()).hexdigest()[:16]


@dataclass
class Datastore:
    tokens: np.ndarray  # uint32, entries separated by ``separator``
    sa: np.ndarray  # suffix array of ``tokens``
    separator: int
    meta: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def build(cls, entries: Iterable[Sequence[int]], vocab_size: int, meta: dict[str, Any] | None = None) -> "Datastore":
        from pydivsufsort import divsufsort

        if vocab_size >= np.iinfo(np.uint32).max:
            raise SpeclabError(f"vocabulary of {vocab_size} ids does not fit the datastore's 32-bit tokens")
        sep = int(vocab_size)  # never a real token, so matches stop at entry borders
        parts: list[np.ndarray] = []
        n_entries = 0
        for e in entries:
            arr = np.asarray(e, dtype=np.int64)
            if not arr.size:
                continue
            if arr.min() < 0 or arr.max() >= vocab_size:
                raise SpeclabError(f"entry {n_entries} holds token ids outside 0..{vocab_size - 1}; was it tokenized for this model?")
            parts.extend([arr.astype(np.uint32), np.array([sep], dtype=np.uint32)])
            n_entries += 1
        if not parts:
            raise SpeclabError("the corpus has no tokens; nothing to build a datastore from")
        tokens = np.concatenate(parts)
        sa = np.asarray(divsufsort(tokens), dtype=np.int64)
        return cls(tokens, sa, sep, {**(meta or {}), "entries": n_entries, "tokens": int(tokens.size - n_entries),
                                     "vocab_size": int(vocab_size), "format": FORMAT})

    def __len__(self) -> int:
        return int(self.tokens.size)

    # -- search -------------------------------------------------------------------------------
    def _bound(self, query: np.ndarray, upper: bool) -> int:
        """First suffix-array slot whose suffix is >= query (``upper``: > query, on the query's length)."""
        lo, hi = 0, len(self.sa)
        m = query.size
        tokens, sa = self.tokens, self.sa
        while lo < hi:
            mid = (lo + hi) // 2
            start = int(sa[mid])
            window = tokens[start : start + m]
            diff = np.flatnonzero(window != query[: window.size])
            if diff.size:
                before = window[diff[0]] < query[diff[0]]
            else:
                before = window.size < m or upper  # a shorter suffix sorts first; an equal prefix is "<=" query
            if before:
                lo = mid + 1
            else:
                hi = mid
        return lo

    def occurrences(self, query: Sequence[int]) -> np.ndarray:
        """Start positions of every occurrence of ``query`` (in suffix order)."""
        q = np.asarray(query, dtype=np.uint32)
        lo = self._bound(q, upper=False)
        hi = self._bound(q, upper=True)
        return self.sa[lo:hi]

    def continuation_grid(self, context: Sequence[int], max_suffix: int, min_suffix: int, max_hits: int,
                          length: int) -> tuple[np.ndarray, int]:
        """Continuations of the longest suffix of ``context`` (``max_suffix`` down to ``min_suffix`` tokens) found
        in the corpus: at most ``max_hits`` rows of ``length`` token ids, -1 after the end of the entry.
        Returns ``(rows, matched suffix length)``; no rows and 0 when nothing matches."""
        ctx = np.asarray(context[-max_suffix:], dtype=np.uint32)
        n = len(self.tokens)
        for s in range(min(max_suffix, ctx.size), min_suffix - 1, -1):
            starts = self.occurrences(ctx[ctx.size - s :])
            if not starts.size:
                continue
            if starts.size > max_hits:  # spread over the range rather than the first suffixes in sort order
                starts = starts[np.linspace(0, starts.size - 1, max_hits).astype(np.int64)]
            idx = starts[:, None] + s + np.arange(length)
            grid = self.tokens[np.minimum(idx, n - 1)].astype(np.int64)
            grid[idx >= n] = self.separator
            grid[np.cumsum(grid == self.separator, axis=1) > 0] = -1  # the entry ended
            grid = grid[grid[:, 0] >= 0]
            if grid.size:
                return grid, s
        return np.zeros((0, length), dtype=np.int64), 0

    def continuations(self, context: Sequence[int], max_suffix: int, min_suffix: int, max_hits: int,
                      length: int) -> tuple[list[np.ndarray], int]:
        """:meth:`continuation_grid` as a list of variable-length continuations."""
        grid, matched = self.continuation_grid(context, max_suffix, min_suffix, max_hits, length)
        return [row[row >= 0] for row in grid], matched

    # -- files ---------------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, tokens=self.tokens, sa=self.sa.astype(np.int32 if len(self) < 2**31 else np.int64),
                            separator=np.int64(self.separator), meta=np.frombuffer(json.dumps(self.meta).encode(), dtype=np.uint8))
        tmp.replace(path)
        return path


def load(path: str | Path, tokenizer: Any | None = None, vocab_size: int | None = None) -> Datastore:
    """A saved datastore; with ``tokenizer`` (and the model's ``vocab_size``), checked to have been built for it."""
    path = Path(path)
    if not path.is_file():
        raise SpeclabError(f"no datastore at {path}; build one with `python scripts/build_datastore.py` or set method.datastore")
    with np.load(path) as z:
        ds = Datastore(z["tokens"], z["sa"].astype(np.int64), int(z["separator"]), json.loads(bytes(z["meta"]).decode()))
    if vocab_size is not None and ds.separator < vocab_size:
        raise SpeclabError(f"datastore {path} was built for a {ds.separator}-token vocabulary; this model has {vocab_size}: "
                           "rebuild it with scripts/build_datastore.py --model <this model>")
    if tokenizer is not None:
        want, have = tokenizer_fingerprint(tokenizer), ds.meta.get("tokenizer")
        if have != want:
            raise SpeclabError(
                f"datastore {path} was built for another tokenizer ({ds.meta.get('model', '?')}, fingerprint {have}); "
                f"this model's is {want}: rebuild it with scripts/build_datastore.py --model <this model>"
            )
    return ds


def resolve_datastore(path: str | None, model_name: str) -> Path:
    """``method.datastore`` as a path, or the model's default datastore when it is null."""
    if path:
        return Path(path).expanduser()
    return default_path(model_name)


def load_for(target: Any, path: str | None) -> Datastore:
    """The datastore a retrieval method names for ``target`` (a TargetModel), checked against its tokenizer."""
    t0 = time.perf_counter()
    where = resolve_datastore(path, target.info.name)
    if path is None and not where.is_file():
        name = target.info.name
        raise SpeclabError(f"no default datastore for model {name!r} (looked for {where}); build it with "
                           f"`python scripts/build_datastore.py --model {name} --answers --out {where}` "
                           "or set method.datastore=<a .npz from scripts/build_datastore.py>")
    store = load(where, target.tokenizer, target.vocab_size)
    store.meta["load_s"] = time.perf_counter() - t0
    return store
