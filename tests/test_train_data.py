"""Training prompts for drafts and heads share no word 8-gram with any evaluation prompt."""

import json
import os
from pathlib import Path

import pytest

from tasks.overlap import evaluation_texts, ngrams, overlapping

PROMPTS = Path(os.environ.get("SPECLAB_DATA", "../shared/data")) / "train_prompts" / "prompts.jsonl"


def test_ngrams_and_overlap():
    assert ngrams("one two three four five six seven eight nine") == {
        ("one", "two", "three", "four", "five", "six", "seven", "eight"),
        ("two", "three", "four", "five", "six", "seven", "eight", "nine"),
    }
    ref = ["the quick brown fox jumps over the lazy dog today"]
    assert overlapping(["A quick brown fox jumps over the cat, yes", "The quick brown fox jumps over the lazy dog!"], ref) == [1]


@pytest.mark.skipif(not PROMPTS.is_file(), reason="training prompts are not on this machine")
def test_training_prompts_are_disjoint_from_every_task():
    from harness.training.data import prompts_path, training_prompts
    from scripts.distill_draft import parse_args

    evals = evaluation_texts()
    assert {"demo", "spec_bench", "humaneval", "mtbench"} <= set(evals)
    args = parse_args(["--out", "unused", "--prompts", "100000"])  # the trainers' default selection
    chosen = [r["prompt"] for r in training_prompts(prompts_path(args.prompts_file), args.prompts, args.seed,
                                                   args.include_noncommercial)]
    assert len(chosen) > 3000
    for name, texts in evals.items():
        assert overlapping(chosen, texts) == [], f"training prompts overlap task {name}"
    # the raw file itself was filtered upstream; the filter would also catch a planted copy
    planted = [json.loads(line)["prompt"] for line in open(PROMPTS)][:3] + [evals["spec_bench"][0]]
    assert overlapping(planted, evals["spec_bench"]) == [3]
