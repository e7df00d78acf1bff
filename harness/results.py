"""Results: the run folder (parquet rows + JSONL texts, written atomically), resume, and the baseline cache.

A run folder holds ``run_config.json`` (the config and its hash), ``results.parquet`` (one row per
prompt, turn, repeat and role) and ``samples.jsonl`` (texts and token ids). Both data files are rewritten
through a temporary file and ``os.replace`` after every finished prompt, so a killed run loses at most
the prompt in flight and never leaves a truncated file. ``results.parquet`` is written last and is the
record of what is finished: texts of a prompt it lacks are dropped on resume and that prompt runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd
from omegaconf import DictConfig, OmegaConf

from .errors import SpeclabError

# Keys that change neither what is generated nor how it is timed: a run may be resumed with other values.
NON_SEMANTIC = {"out_dir", "progress", "logger", "repeats", ("task", "limit"), ("baseline", "cache_dir")}


def to_dict(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
    return dict(cfg)


def semantic_config(cfg: Any) -> dict[str, Any]:
    d = json.loads(json.dumps(to_dict(cfg), default=str))
    d.pop("hydra", None)
    for key in NON_SEMANTIC:
        if isinstance(key, tuple):
            d.get(key[0], {}).pop(key[1], None)
        else:
            d.pop(key, None)
    return d


def config_hash(cfg: Any) -> str:
    blob = json.dumps(semantic_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]


def write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_parquet_atomic(df: pd.DataFrame, path: Path) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        df.to_parquet(tmp, index=False)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class ResultsStore:
    """The rows and texts of one run folder; refuses a folder that holds a run of another config."""

    ROW_KEY = ["prompt_id", "turn", "repeat", "role"]

    def __init__(self, out_dir: str | Path, cfg: Any) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hash = config_hash(cfg)
        meta_path = self.dir / "run_config.json"
        has_results = self.results_path.is_file()
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            # A folder without results has nothing to lose (a run that failed on bad input): it is taken over.
            if old.get("config_hash") != self.hash and has_results:
                raise SpeclabError(
                    f"{self.dir} holds a run with another config (hash {old.get('config_hash')} != {self.hash}); "
                    "choose another hydra.run.dir (or out_dir), or delete that folder to start over"
                )
        if not has_results:
            write_atomic(meta_path, json.dumps({"config_hash": self.hash, "config": semantic_config(cfg)}, indent=1).encode())
        self.rows: list[dict[str, Any]] = []
        self.texts: list[dict[str, Any]] = []
        if has_results:
            self.rows = pd.read_parquet(self.results_path).to_dict("records")
        if (self.dir / "samples.jsonl").is_file():
            done = self.done()
            with open(self.dir / "samples.jsonl") as f:
                texts = [json.loads(line) for line in f if line.strip()]
            self.texts = [t for t in texts if (t["prompt_id"], int(t["repeat"])) in done]

    @property
    def results_path(self) -> Path:
        return self.dir / "results.parquet"

    def done(self) -> set[tuple[str, int]]:
        """(prompt_id, repeat) pairs already finished."""
        return {(r["prompt_id"], int(r["repeat"])) for r in self.rows}

    def baseline_text(self, prompt_id: str, turn: int, repeat: int) -> dict[str, Any] | None:
        for t in self.texts:
            if t["prompt_id"] == prompt_id and t["turn"] == turn and t["repeat"] == repeat and t["role"] == "baseline":
                return t
        return None

    def add(self, rows: Iterable[dict[str, Any]], texts: Iterable[dict[str, Any]]) -> None:
        self.rows.extend(rows)
        self.texts.extend(texts)
        payload = "".join(json.dumps(t, ensure_ascii=False) + "\n" for t in self.texts)
        write_atomic(self.dir / "samples.jsonl", payload.encode())
        write_parquet_atomic(self.frame(), self.results_path)  # last: it marks the prompt finished

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


class BaselineCache:
    """Baseline generations reused across runs (``baseline=cached``).

    An entry is keyed by everything that determines the baseline's output and timing: model name and
    weights hash, dtype, task and prompt (with its rendered token ids), turn, repeat, decoding settings
    and seed, threads, kernel and hardware. Different weights therefore never share an entry. Each entry
    is its own small JSON file written atomically, so parallel sweep jobs can share the folder.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    @staticmethod
    def key(parts: dict[str, Any]) -> str:
        return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]

    def get(self, parts: dict[str, Any]) -> dict[str, Any] | None:
        path = self.root / f"{self.key(parts)}.json"
        if not path.is_file():
            return None
        entry = json.loads(path.read_text())
        return entry if entry.get("key") == parts else None

    def put(self, parts: dict[str, Any], row: dict[str, Any], text: dict[str, Any]) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"key": json.loads(json.dumps(parts, default=str)), "row": row, "text": text}
        write_atomic(self.root / f"{self.key(parts)}.json", json.dumps(entry, default=str).encode())
