"""Task interface, registry and the shared loading, filtering and rendering every task uses."""

from __future__ import annotations

import gzip
import json
import os
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.config import REPO, TaskConfig
from harness.errors import SpeclabError
from harness.registry import Registry


@dataclass
class Sample:
    id: str
    group: str
    category: str
    turns: list[str]
    reference: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


TASKS: Registry = Registry("task", "task")


def data_roots() -> list[Path]:
    """Where relative ``task.path`` values are looked up, in order."""
    roots = []
    if os.environ.get("SPECLAB_DATA"):
        roots.append(Path(os.environ["SPECLAB_DATA"]).expanduser())
    roots.append(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "speclab" / "data")
    roots.append(REPO / "tasks" / "data")
    return roots


def resolve_path(path: str, what: str) -> Path:
    p = Path(path).expanduser()
    if p.is_absolute() or path.startswith("."):
        if p.is_file():
            return p
        raise SpeclabError(f"{what} file {p} does not exist; fix task.path")
    for root in data_roots():
        if (root / p).is_file():
            return root / p
    roots = ", ".join(str(r) for r in data_roots())
    raise SpeclabError(
        f"{what} file {path!r} not found under {roots}; set SPECLAB_DATA to the folder holding it, "
        f"run `python scripts/fetch_data.py` (online), or give task.path an absolute path"
    )


def read_records(path: Path) -> list[dict[str, Any]]:
    """Rows of a JSONL (optionally .gz), JSON list or parquet file; a malformed line names its number."""
    name = path.name.lower()
    if name.endswith(".parquet"):
        import pandas as pd

        return pd.read_parquet(path).to_dict("records")
    opener = gzip.open if name.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        if name.endswith((".json", ".json.gz")):
            try:
                data = json.load(f)
            except json.JSONDecodeError as e:
                raise SpeclabError(f"{path}: invalid JSON at line {e.lineno}: {e.msg}; fix or re-download the file") from None
            return data if isinstance(data, list) else list(data.values())
        rows = []
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise SpeclabError(f"{path}:{lineno}: malformed JSONL line ({e.msg}); fix or remove that line") from None
    return rows


def load_hub(hub_id: str, config: str | None, split: str, fallback: str | None = None) -> list[dict[str, Any]]:
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise SpeclabError("loading a Hub dataset needs `datasets`; pip install datasets") from None
    offline = os.environ.get("HF_DATASETS_OFFLINE", "0") not in ("0", "") or os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "")
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # datasets raises many types; the message is what matters
        hint = "offline mode is set" if offline else type(e).__name__
        local = f" and no local copy {fallback!r} under SPECLAB_DATA" if fallback else ""
        raise SpeclabError(
            f"cannot load Hub dataset {hub_id!r} ({hint}){local}; run `python scripts/fetch_data.py` while online, "
            "or point task.path at a local JSONL/parquet copy"
        ) from None
    return [dict(r) for r in ds]


class Task:
    """A prompt set. Subclasses implement :meth:`load`; filtering and rendering are shared."""

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg

    def records(self) -> list[dict[str, Any]]:
        """Raw rows from ``task.path`` when that file is found, else from the Hub dataset ``task.hub_id``."""
        c = self.cfg
        if c.path:
            try:
                return read_records(resolve_path(c.path, f"task {c.name!r} data"))
            except SpeclabError:
                if not c.hub_id:
                    raise
        if c.hub_id:
            return load_hub(c.hub_id, c.hub_config, c.split, fallback=c.path)
        raise SpeclabError(f"task {c.name!r} has neither task.path nor task.hub_id; set one of them")

    def load(self) -> list[Sample]:
        raise NotImplementedError

    def samples(self) -> list[Sample]:
        """Loaded samples after the group/category filters and the per-group limit."""
        c = self.cfg
        items = self.load()
        if not items:
            raise SpeclabError(f"task {c.name!r} loaded no prompts; check task.path / task.hub_id")
        for key, wanted in (("group", c.groups), ("category", c.categories)):
            if not wanted:
                continue
            known = sorted({getattr(s, key) for s in items})
            unknown = [w for w in wanted if w not in known]
            if unknown:
                raise SpeclabError(
                    f"unknown {key} {', '.join(map(repr, unknown))} for task {c.name!r}; choose from {', '.join(known)}"
                )
            items = [s for s in items if getattr(s, key) in wanted]
        if c.limit is not None:
            if c.limit <= 0:
                raise SpeclabError(f"task.limit must be positive, got {c.limit}")
            kept: dict[str, int] = defaultdict(int)
            out = []
            for s in items:
                if kept[s.group] < c.limit:
                    kept[s.group] += 1
                    out.append(s)
            items = out
        if c.max_turns is not None:
            for s in items:
                s.turns = s.turns[: c.max_turns]
        if not items:
            raise SpeclabError(f"task {c.name!r} is empty after filters; relax task.groups / task.categories")
        return items

    def messages(self, sample: Sample, turn: int, history: list[str]) -> list[dict[str, str]]:
        """Chat messages for ``turn`` (0-based) with earlier answers ``history``."""
        msgs: list[dict[str, str]] = []
        if self.cfg.system_prompt:
            msgs.append({"role": "system", "content": self.cfg.system_prompt})
        for i in range(turn):
            msgs += [{"role": "user", "content": sample.turns[i]}, {"role": "assistant", "content": history[i]}]
        msgs.append({"role": "user", "content": sample.turns[turn]})
        return msgs

    def render(self, sample: Sample, turn: int, history: list[str], tokenizer) -> list[int]:
        """Prompt token ids: the tokenizer's chat template, or the raw turns joined for base models."""
        if not self.cfg.chat:
            parts = []
            for i in range(turn):
                parts += [sample.turns[i], history[i]]
            parts.append(sample.turns[turn])
            return list(tokenizer("\n\n".join(parts))["input_ids"])
        if not getattr(tokenizer, "chat_template", None):
            raise SpeclabError("the tokenizer has no chat template; set task.chat=false to feed raw prompts to a base model")
        msgs = self.messages(sample, turn, history)
        if self.cfg.system_prompt == "":
            # An explicit empty system message stops templates (SmolLM2, ChatML) from adding their default one.
            msgs.insert(0, {"role": "system", "content": ""})
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def score(self, sample: Sample, turn: int, text: str) -> dict[str, Any] | None:
        """Task-specific quality score of one answer (None when the task has none)."""
        return None


def build_task(cfg: TaskConfig) -> Task:
    return TASKS.build(cfg)
