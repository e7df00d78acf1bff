"""speclab's disk cache (``~/.cache/speclab``) and the hashing its keys use.

Converted models, measured curves and kernel checks are cached here, each keyed by what it depends on
(host, weights, settings), and folders built once under a file lock so parallel sweep jobs can share them.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch


def cache_dir() -> Path:
    root = os.environ.get("SPECLAB_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "speclab"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def keyed_cache_path(folder: Path, key: dict[str, Any], prefix: str = "") -> Path:
    """Where a measurement keyed by ``key`` (host, model, settings) is cached: ``<folder>/<prefix><digest>.json``."""
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    return folder / f"{prefix}{digest}.json"


def read_keyed(path: Path, key: dict[str, Any]) -> dict[str, Any] | None:
    """The cached record at ``path`` if it was written for exactly ``key``."""
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return data if data.get("key") == key else None


def write_keyed(path: Path, key: dict[str, Any], record: dict[str, Any]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"key": key, **record}, indent=1))
    return path


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def files_hash(paths: list[Path]) -> str:
    """sha256 over the files' own sha256s, memoised by (path, size, mtime) so large models hash once."""
    memo_path = cache_dir() / "file_hashes.json"
    try:
        memo = json.loads(memo_path.read_text())
    except (OSError, ValueError):
        memo = {}
    h = hashlib.sha256()
    changed = False
    for p in sorted(paths):
        st = p.stat()
        key = f"{p.resolve()}|{st.st_size}|{st.st_mtime_ns}"
        if key not in memo:
            memo[key] = sha256_file(p)
            changed = True
        h.update(memo[key].encode())
    if changed:
        tmp = memo_path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(memo))
        os.replace(tmp, memo_path)
    return h.hexdigest()[:16]


def tensors_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        # the raw bytes (numpy has no bfloat16): fp32 hashes stay what they were
        h.update(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


@contextlib.contextmanager
def file_lock(path: Path):
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def build_folder_once(out: Path, done: str, build: Callable[[Path], None]) -> Path:
    """``out``, built by ``build(tmp)`` the first time: parallel jobs start together, so the build runs under
    a file lock into a temporary folder renamed into place when complete; ``out/done`` marks a finished one."""
    if (out / done).is_file():
        return out
    with file_lock(out.with_name(out.name + ".lock")):
        if (out / done).is_file():
            return out
        tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        build(tmp)
        shutil.rmtree(out, ignore_errors=True)
        os.rename(tmp, out)
    return out
