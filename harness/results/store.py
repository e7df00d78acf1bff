"""Results: the run folder (parquet rows + JSONL texts, appended per prompt), resume, and the baseline cache.

A run folder holds ``run_config.json`` (the config and its hash), ``results.parquet`` (one row per prompt,
turn, repeat, role and method), ``samples.jsonl`` (texts and token ids, a JSON line each) and, while a run
is under way or after it was killed, ``parts/``: one parquet file per finished (prompt, repeat).

A finished prompt costs one small write whatever the run's length: its texts are appended to samples.jsonl
(flushed and fsynced), then its rows go to a new part through a temporary file and ``os.replace``, so a
part is whole or absent, and readers only see names ending in ``.parquet``. The part is the record that
the prompt is finished. When a run ends (or stops on an error), :meth:`ResultsStore.consolidate` merges the
parts into ``results.parquet`` and removes them. :func:`read_results` reads a folder in any of these
states. A killed run loses at most the prompt in flight: on resume, texts of a prompt without rows (and a
line the kill cut short) are dropped and that prompt runs again.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pandas as pd

from harness.core.errors import SpeclabError
from harness.core.run_identity import config_hash, semantic_config

RESULTS = "results.parquet"
SAMPLES = "samples.jsonl"
PARTS = "parts"


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


def unit(row: dict[str, Any]) -> tuple[str, int]:
    """(prompt_id, repeat): what one part holds and what resume skips when it is done."""
    return str(row["prompt_id"]), int(row["repeat"])


def part_paths(folder: Path) -> list[Path]:
    """The finished parts of a run folder, oldest first (temporaries end in ``.tmp`` and are never read)."""
    return sorted((Path(folder) / PARTS).glob("*.parquet"))


def read_rows(folder: str | Path) -> list[dict[str, Any]]:
    """The rows of a run folder: ``results.parquet``, then each part whose prompt it does not hold yet
    (a part outlives its consolidation only when a run was killed in between)."""
    folder = Path(folder)
    rows = pd.read_parquet(folder / RESULTS).to_dict("records") if (folder / RESULTS).is_file() else []
    consolidated = {unit(r) for r in rows}
    for path in part_paths(folder):
        part = pd.read_parquet(path).to_dict("records")
        if part and unit(part[0]) not in consolidated:
            rows.extend(part)
    return rows


def read_results(folder: str | Path) -> pd.DataFrame:
    """A run folder's rows as a frame, whether the run finished, is under way or was killed."""
    return pd.DataFrame(read_rows(folder))


def has_results(folder: str | Path) -> bool:
    return (Path(folder) / RESULTS).is_file() or bool(part_paths(Path(folder)))


def run_folders(root: str | Path) -> list[Path]:
    """Every run folder under ``root`` (itself included) that holds rows."""
    root = Path(root)
    found = {p.parent for p in root.rglob(RESULTS)} | {p.parent.parent for p in root.rglob(f"{PARTS}/*.parquet")}
    return sorted(found)


class ResultsStore:
    """The rows and texts of one run folder; refuses a folder that holds a run of another config."""

    ROW_KEY = ["prompt_id", "turn", "repeat", "role", "method"]

    def __init__(self, out_dir: str | Path, cfg: Any) -> None:
        self.dir = Path(out_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hash = config_hash(cfg)
        meta_path = self.dir / "run_config.json"
        finished_any = has_results(self.dir)
        if meta_path.is_file():
            old = json.loads(meta_path.read_text())
            # A folder without results has nothing to lose (a run that failed on bad input): it is taken over.
            if old.get("config_hash") != self.hash and finished_any:
                raise SpeclabError(
                    f"{self.dir} holds a run with another config (hash {old.get('config_hash')} != {self.hash}); "
                    "choose another hydra.run.dir (or out_dir), or delete that folder to start over"
                )
        if not finished_any:
            write_atomic(meta_path, json.dumps({"config_hash": self.hash, "config": semantic_config(cfg)}, indent=1).encode())
        self.rows: list[dict[str, Any]] = read_rows(self.dir)
        self._next_part = 1 + max((int(p.stem) for p in part_paths(self.dir) if p.stem.isdigit()), default=0)
        self._drop_unfinished_texts()

    @property
    def results_path(self) -> Path:
        return self.dir / RESULTS

    @property
    def samples_path(self) -> Path:
        return self.dir / SAMPLES

    def done(self) -> set[tuple[str, int]]:
        """(prompt_id, repeat) pairs already finished."""
        return {unit(r) for r in self.rows}

    def _drop_unfinished_texts(self) -> None:
        """Rewrite samples.jsonl without the texts of unfinished prompts, once, when a kill left some behind."""
        if not self.samples_path.is_file():
            return
        done = self.done()
        with open(self.samples_path, "rb") as f:
            lines = f.readlines()
        kept = [line for line in lines if self._finished_text(line, done)]
        if len(kept) != len(lines):
            write_atomic(self.samples_path, b"".join(kept))

    @staticmethod
    def _finished_text(line: bytes, done: set[tuple[str, int]]) -> bool:
        if not line.endswith(b"\n"):  # cut short by a kill, whatever it parses as
            return False
        try:
            return unit(json.loads(line)) in done
        except (ValueError, KeyError, TypeError):  # blank, torn or not a text record
            return False

    def add(self, rows: Iterable[dict[str, Any]], texts: Iterable[dict[str, Any]]) -> None:
        """Record one finished (prompt, repeat): its texts appended, then its rows as a new part."""
        rows, texts = list(rows), list(texts)
        with open(self.samples_path, "ab") as f:
            f.write("".join(json.dumps(t, ensure_ascii=False) + "\n" for t in texts).encode())
            f.flush()
            os.fsync(f.fileno())
        (self.dir / PARTS).mkdir(exist_ok=True)
        # last: the part marks the prompt finished
        write_parquet_atomic(pd.DataFrame(rows), self.dir / PARTS / f"{self._next_part:08d}.parquet")
        self._next_part += 1
        self.rows.extend(rows)

    def consolidate(self) -> None:
        """Merge the parts into results.parquet (atomically), then remove them."""
        if not part_paths(self.dir):
            return
        write_parquet_atomic(self.frame(), self.results_path)
        shutil.rmtree(self.dir / PARTS)

    def frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.rows)


class BaselineCache:
    """Baseline generations reused across runs (``baseline=cached``).

    An entry is keyed by everything that determines the baseline's output and timing: model name and
    weights hash, dtype, task and prompt (with its rendered token ids), turn, repeat, decoding settings
    and seed, the engine's settings and a hash of its sources, package versions and hardware (the runner's
    ``_cache_key``). Different weights or engine code therefore never share an entry. The entry's row keeps
    its own provenance (git sha, code hash, versions, timestamp). Each entry is its own small JSON file
    written atomically, so parallel sweep jobs can share the folder.
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

    def put(self, parts: dict[str, Any], row: dict[str, Any], text: dict[str, Any], top2: list | None = None) -> None:
        """Store a baseline generation: its row, its text record and (greedy) the target's two best logits at each
        of its steps, which the equivalence check reads where a method diverges from it."""
        self.root.mkdir(parents=True, exist_ok=True)
        entry = {"key": json.loads(json.dumps(parts, default=str)), "row": row, "text": text, "top2": top2}
        write_atomic(self.root / f"{self.key(parts)}.json", json.dumps(entry, default=str).encode())
