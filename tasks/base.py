"""Task interface, registry and the shared loading, filtering and rendering every task uses."""

from __future__ import annotations

import gzip
import json
import logging
import os
import weakref
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.core.config import REPO, TaskConfig
from harness.core.errors import SpeclabError

log = logging.getLogger(__name__)


@dataclass
class Sample:
    id: str
    group: str
    category: str
    turns: list[str]
    reference: Any = None
    meta: dict[str, Any] = field(default_factory=dict)


def user_data_dir() -> Path:
    """Where ``scripts/fetch_data.py`` puts downloads by default (``~/.cache/speclab/data``)."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "speclab" / "data"


def data_roots() -> list[Path]:
    """Where relative ``task.path`` values are looked up, in order."""
    roots = []
    if os.environ.get("SPECLAB_DATA"):
        roots.append(Path(os.environ["SPECLAB_DATA"]).expanduser())
    roots.append(user_data_dir())
    roots.append(REPO / "tasks" / "data")
    return roots


def is_explicit(path: str) -> bool:
    """An absolute or ./-relative path names one file; anything else is looked up under :func:`data_roots`."""
    return Path(path).expanduser().is_absolute() or path.startswith(".")


def find_data(path: str) -> Path | None:
    """The file ``path`` names: itself when explicit, else the first match under :func:`data_roots`."""
    p = Path(path).expanduser()
    if is_explicit(path):
        return p if p.is_file() else None
    return next((root / p for root in data_roots() if (root / p).is_file()), None)


def resolve_path(path: str, what: str) -> Path:
    found = find_data(path)
    if found is not None:
        return found
    if is_explicit(path):
        raise SpeclabError(f"{what} file {Path(path).expanduser()} does not exist; fix task.path")
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

        try:
            return pd.read_parquet(path).to_dict("records")
        except Exception as e:  # pyarrow raises several types for a damaged file
            raise SpeclabError(f"{path}: not a readable parquet file ({str(e).splitlines()[0]}); re-download or re-export it") from None
    opener = gzip.open if name.endswith(".gz") else open
    try:
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
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise SpeclabError(f"{path}:{lineno}: malformed JSONL line ({e.msg}); fix or remove that line") from None
                if not isinstance(row, dict):
                    raise SpeclabError(f"{path}:{lineno}: a JSONL line must be an object, got {type(row).__name__}; fix that line")
                rows.append(row)
    except (UnicodeDecodeError, OSError) as e:  # binary or truncated .gz files
        raise SpeclabError(f"{path}: cannot read it as UTF-8 JSONL ({e}); check the file or re-download it") from None
    return rows


def hf_offline() -> bool:
    """Whether the user told the Hugging Face libraries not to touch the network."""
    return any(os.environ.get(v, "0").lower() not in ("0", "", "false", "no", "off") for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def hub_reachable(timeout: float = 3.0) -> bool:
    """A quick TCP connect to the Hub endpoint: without it, ``datasets`` retries for ~25 s before failing."""
    import socket
    from urllib.parse import urlparse

    url = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    try:
        socket.create_connection((url.hostname, url.port or (443 if url.scheme == "https" else 80)), timeout=timeout).close()
        return True
    except OSError:
        return False


def load_hub(hub_id: str, config: str | None, split: str, fallback: str | None = None) -> list[dict[str, Any]]:
    local = f" and no local copy {fallback!r} was found under {', '.join(str(r) for r in data_roots())}" if fallback else ""
    fix = "run `python scripts/fetch_data.py` while online, or point task.path at a local JSONL/parquet copy"
    offline = hf_offline()
    # Offline, datasets still loads a copy from its own cache; with no network and no offline flag it would retry.
    if not offline and not hub_reachable():
        raise SpeclabError(
            f"cannot load Hub dataset {hub_id!r}: the Hub is unreachable (no network){local}; {fix} "
            "(or set HF_DATASETS_OFFLINE=1 to use a copy in the datasets cache)"
        )
    try:
        import datasets
    except ImportError:  # pragma: no cover - datasets is a core dependency
        raise SpeclabError("loading a Hub dataset needs `datasets`; pip install datasets") from None
    try:
        ds = datasets.load_dataset(hub_id, config, split=split)
    except Exception as e:  # datasets raises many types; the message is what matters
        hint = "offline mode is set and it is not in the datasets cache" if offline else str(e).splitlines()[0][:200]
        raise SpeclabError(f"cannot load Hub dataset {hub_id!r} ({hint}){local}; {fix}") from None
    return [dict(r) for r in ds]


class Task:
    """A prompt set. Subclasses implement :meth:`load`; filtering and rendering are shared."""

    def __init__(self, cfg: TaskConfig) -> None:
        self.cfg = cfg

    def local_paths(self) -> list[str]:
        """Local files to try, in order, before the Hub (a task may add the layout fetch_data.py writes)."""
        return [self.cfg.path] if self.cfg.path else []

    def records(self) -> list[dict[str, Any]]:
        """Raw rows from the first local file found (``task.path``), else from the Hub dataset ``task.hub_id``."""
        c = self.cfg
        what = f"task {c.name!r} data"
        paths = self.local_paths()
        for path in paths:
            found = find_data(path)
            if found is not None:
                return read_records(found)
            if is_explicit(path):
                resolve_path(path, what)  # a path the user spelled out is never silently replaced by a download
        if c.hub_id:
            return load_hub(c.hub_id, c.hub_config, c.split, fallback=paths[0] if paths else None)
        if paths:
            resolve_path(paths[0], what)  # raises: names the folders searched and the fix
        raise SpeclabError(f"task {c.name!r} has neither task.path nor task.hub_id; set one of them")

    def load(self) -> list[Sample]:
        raise NotImplementedError

    def samples(self) -> list[Sample]:
        """Loaded samples after the group/category filters and the per-group limit."""
        c = self.cfg
        items = self.load()
        if not items:
            raise SpeclabError(f"task {c.name!r} loaded no prompts; check task.path / task.hub_id")
        seen: set[str] = set()
        for s in items:
            if s.id in seen:  # results and resume are keyed by prompt id
                raise SpeclabError(f"task {c.name!r} has two prompts with id {s.id!r}; prompt ids must be unique in its data")
            seen.add(s.id)
        # Known values come from the whole task, so a valid group and a valid category that never meet give
        # "empty after filters" rather than a misleading "unknown".
        for key, wanted in (("group", c.groups), ("category", c.categories)):
            known = sorted({getattr(s, key) for s in items})
            unknown = [w for w in wanted if w not in known]
            if unknown:
                raise SpeclabError(
                    f"unknown {key} {', '.join(map(repr, unknown))} for task {c.name!r}; choose from {', '.join(known)}"
                )
        items = [s for s in items if (not c.groups or s.group in c.groups) and (not c.categories or s.category in c.categories)]
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
            if c.max_turns <= 0:
                raise SpeclabError(f"task.max_turns must be positive, got {c.max_turns}")
            for s in items:
                s.turns = s.turns[: c.max_turns]
        if not items:
            raise SpeclabError(
                f"task {c.name!r} is empty after filters (groups={list(c.groups)}, categories={list(c.categories)}); "
                "relax task.groups / task.categories"
            )
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
        """Prompt token ids: the tokenizer's chat template, or the raw turns joined for base models.

        ``task.system_prompt``: null keeps the template's default, "" gives no system instructions, a string
        is the system message. In raw mode (``task.chat=false``, or a tokenizer without a chat template under the
        default ``task.chat=null``) a system prompt string is the first paragraph.
        """
        chat = self.cfg.chat
        if chat is None:
            chat = bool(getattr(tokenizer, "chat_template", None))
            if not chat and tokenizer not in _RAW_NOTED:
                _RAW_NOTED.add(tokenizer)
                log.info("the tokenizer has no chat template (a base model): task %s feeds it raw text", self.cfg.name)
        if not chat:
            parts = [self.cfg.system_prompt] if self.cfg.system_prompt else []
            for i in range(turn):
                parts += [sample.turns[i], history[i]]
            parts.append(sample.turns[turn])
            return list(tokenizer("\n\n".join(parts))["input_ids"])
        if not getattr(tokenizer, "chat_template", None):
            raise SpeclabError("the tokenizer has no chat template; set task.chat=false to feed raw prompts to a base model")
        msgs = self.messages(sample, turn, history)
        if self.cfg.system_prompt == "" and template_adds_system(tokenizer):
            # Only an explicit empty system message stops such templates (ChatML, SmolLM2) adding their default.
            msgs.insert(0, {"role": "system", "content": ""})
        ids = tokenizer.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
        if hasattr(ids, "keys"):
            ids = ids["input_ids"]
        return list(ids)

    def score(self, sample: Sample, turn: int, text: str) -> dict[str, Any] | None:
        """Task-specific quality score of one answer (None when the task has none)."""
        return None


_ADDS_SYSTEM: "weakref.WeakKeyDictionary[Any, tuple[str, bool]]" = weakref.WeakKeyDictionary()
_RAW_NOTED: "weakref.WeakSet[Any]" = weakref.WeakSet()  # tokenizers already announced as fed raw text


def template_adds_system(tokenizer) -> bool:
    """Whether the chat template inserts a default system message when the conversation has none.

    It does when the render without a system message equals the render with one, the system text aside:
    same text before it and same text after it. Templates that reject a system role never add one.
    """
    template = str(tokenizer.chat_template)
    known = _ADDS_SYSTEM.get(tokenizer)
    if known is not None and known[0] == template:  # every prompt of a run asks the same question
        return known[1]
    marker = "\x00speclab-system\x00"
    user = [{"role": "user", "content": "x"}]
    try:
        bare = tokenizer.apply_chat_template(user, tokenize=False)
        before, after = tokenizer.apply_chat_template([{"role": "system", "content": marker}, *user], tokenize=False).split(marker, 1)
        adds = len(bare) >= len(before) + len(after) and bare.startswith(before) and bare.endswith(after)
    except Exception:  # jinja raises for templates without a system role; a missing marker fails the unpacking
        adds = False
    _ADDS_SYSTEM[tokenizer] = (template, adds)
    return adds
