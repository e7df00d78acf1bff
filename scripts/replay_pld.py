#!/usr/bin/env python
"""Replay greedy prompt lookup over a finished run's baseline answers: how far its drafts are accepted, by the
length of the suffix they matched.

Under greedy decoding the committed text is the baseline's whatever is drafted, so a draft's accepted length is
the common prefix of the draft and the answer's continuation: the replay is exact, with no model. It drafts
--draft tokens a step (as `pld num_draft=<draft>` would) and reports, for each matched-suffix length, the share
of steps whose draft is accepted to depth d (BENCHMARKS.md section 9, "Drafts sized by their own grade").

    python scripts/replay_pld.py results/benchmarks/spec_bench_moe_graded_cpu --draft 2
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd
from omegaconf import OmegaConf
from transformers import AutoTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from methods.pld import PLDConfig, match_suffix
from tasks.base import build_task


def replay(prompt: list[int], answer: list[int], cfg: PLDConfig, draft: int, depths: int) -> list[tuple[int, int]]:
    """(matched suffix length, accepted length up to ``depths``) for each step of a greedy replay."""
    seq, t, steps = list(prompt), 0, []
    while t < len(answer):
        n, start = match_suffix(np.asarray(seq, dtype=np.int64), cfg.max_ngram, cfg.min_ngram, cfg.match)
        cont = seq[start : start + depths]
        accepted = 0
        while accepted < len(cont) and t + accepted < len(answer) and cont[accepted] == answer[t + accepted]:
            accepted += 1
        steps.append((n, accepted))
        commit = min(min(accepted, draft) + 1, len(answer) - t)
        seq += answer[t : t + commit]
        t += commit
    return steps


def main(argv: list[str] | None = None) -> dict[int, list[float]]:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", help="a run folder (results.parquet's folder, with samples.jsonl and run_config.json)")
    p.add_argument("--draft", type=int, default=2, help="tokens drafted a step along the replay")
    p.add_argument("--depths", type=int, default=6, help="report acceptance to depths 1..this")
    args = p.parse_args(argv)
    run = Path(args.run)
    config = json.loads((run / "run_config.json").read_text())["config"]
    rows = [json.loads(line) for line in (run / "samples.jsonl").read_text().splitlines()]
    answers = {(r["prompt_id"], r["turn"]): r["token_ids"] for r in rows if r["role"] == "baseline" and r["repeat"] == 0}
    task = build_task(OmegaConf.create(config["task"]))
    # the tokenizer of the model the run resolved
    tok = AutoTokenizer.from_pretrained(pd.read_parquet(run / "results.parquet").model_path.iloc[0])
    counts: dict[int, np.ndarray] = defaultdict(lambda: np.zeros(args.depths + 1))
    for sample in task.samples():
        history: list[str] = []
        for turn in range(len(sample.turns)):
            answer = answers.get((sample.id, turn + 1))
            if answer is None:
                break
            for n, accepted in replay(task.render(sample, turn, history, tok), answer, PLDConfig(), args.draft, args.depths):
                counts[n][: accepted + 1] += 1
            history.append(tok.decode(answer, skip_special_tokens=True))
    print("| matched suffix | steps | " + " | ".join(f"depth {d}" for d in range(1, args.depths + 1)) + " |")
    print("|---" * (args.depths + 2) + "|")
    shares = {}
    for n in sorted(counts):
        c = counts[n]
        shares[n] = [float(x / c[0]) for x in c[1:]]
        print(f"| {n} | {int(c[0])} | " + " | ".join(f"{x:.2f}" for x in shares[n]) + " |")
    return shares


if __name__ == "__main__":
    main()
