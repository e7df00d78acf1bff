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
    from scripts.distill_draft import parse_args, training_prompts

    evals = evaluation_texts()
    assert {"demo", "spec_bench", "humaneval", "mtbench"} <= set(evals)
    args = parse_args(["--out", "unused", "--prompts", "100000"])
    chosen = [r["prompt"] for r in training_prompts(args)]
    assert len(chosen) > 3000
    for name, texts in evals.items():
        assert overlapping(chosen, texts) == [], f"training prompts overlap task {name}"
    # the raw file itself was filtered upstream; the filter would also catch a planted copy
    planted = [json.loads(line)["prompt"] for line in open(PROMPTS)][:3] + [evals["spec_bench"][0]]
    assert overlapping(planted, evals["spec_bench"]) == [3]
