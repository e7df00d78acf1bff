"""Word 8-gram overlap between training prompts and evaluation prompts (training data must be disjoint)."""

from __future__ import annotations

import re
from collections.abc import Iterable

WORD = re.compile(r"\w+")


def ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def evaluation_texts(task_names: Iterable[str] = ("demo", "spec_bench", "humaneval", "mtbench", "gsm8k", "cnndm")) -> dict[str, list[str]]:
    """Every prompt turn of the named tasks that can be loaded here (tasks whose data is absent are skipped).

    The task families must be registered (``harness.api.load_plugins()``, which every script calls)."""
    from harness.core.errors import SpeclabError
    from harness.core.presets import compose
    from harness.core.registry import TASKS

    out: dict[str, list[str]] = {}
    for name in task_names:
        try:
            cfg = compose([f"task={name}"]).task
            out[name] = [turn for s in TASKS.build(cfg).load() for turn in s.turns]
        except SpeclabError:
            continue
    return out


def overlapping(texts: Iterable[str], reference: Iterable[str], n: int = 8) -> list[int]:
    """Indices of ``texts`` that share a word n-gram with any of ``reference``."""
    ref: set[tuple[str, ...]] = set()
    for r in reference:
        ref |= ngrams(r, n)
    return [i for i, t in enumerate(texts) if ngrams(t, n) & ref]
