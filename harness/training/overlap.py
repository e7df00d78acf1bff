"""Word 8-gram overlap between training prompts and evaluation prompts (training data must be disjoint)."""

from __future__ import annotations

import re
from collections.abc import Iterable

WORD = re.compile(r"\w+")


def ngrams(text: str, n: int = 8) -> set[tuple[str, ...]]:
    words = WORD.findall(text.lower())
    return {tuple(words[i : i + n]) for i in range(len(words) - n + 1)}


def evaluation_texts(task_names: Iterable[str] = ("demo", "spec_bench", "humaneval", "mtbench", "gsm8k", "cnndm")) -> dict[str, list[str]]:
    """Every prompt turn of the named tasks that can be loaded here (tasks whose data is absent are skipped)."""
    from hydra import compose, initialize_config_dir

    import methods  # noqa: F401  (the default config names a method schema)
    from harness.core.config import CONF_DIR
    from harness.core.errors import SpeclabError

    from tasks.base import build_task

    out: dict[str, list[str]] = {}
    for name in task_names:
        try:
            with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
                cfg = compose(config_name="config", overrides=[f"task={name}"]).task
            out[name] = [turn for s in build_task(cfg).load() for turn in s.turns]
        except SpeclabError:
            continue
    return out


def overlapping(texts: Iterable[str], reference: Iterable[str], n: int = 8) -> list[int]:
    """Indices of ``texts`` that share a word n-gram with any of ``reference``."""
    ref: set[tuple[str, ...]] = set()
    for r in reference:
        ref |= ngrams(r, n)
    return [i for i, t in enumerate(texts) if ngrams(t, n) & ref]
