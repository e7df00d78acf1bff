"""Training prompts for drafts and heads share no word 8-gram with any evaluation prompt."""

import json
import os
from pathlib import Path

import pytest

from harness.training.overlap import evaluation_texts, ngrams, overlapping

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


def test_more_prompts_answer_only_the_new_ones(tiny_target, tmp_path, monkeypatch):
    import torch

    from harness.training import data

    from .conftest import tiny_training_prompts

    prompts, n_rows = tiny_training_prompts(tmp_path)
    made: list[int] = []
    answer_batch = data._answer_batch

    def counting(target, encoded, spec, pad):
        made.append(len(encoded))
        return answer_batch(target, encoded, spec, pad)

    monkeypatch.setattr(data, "_answer_batch", counting)
    work = tmp_path / "work"
    small = data.head_answers(tiny_target, str(prompts), 12, work, gen_tokens=6, batch=5)
    assert sum(made) == 12
    made.clear()
    large = data.head_answers(tiny_target, str(prompts), n_rows, work, gen_tokens=6, batch=5)
    assert sum(made) == n_rows - 12  # the first 12 of the seeded shuffle were answered by the smaller run
    assert len(large) == n_rows and len({s["id"] for s in large}) == n_rows
    by_id = {s["id"]: s for s in large}
    for s in small:
        assert by_id[s["id"]]["answer"] == s["answer"]
        assert torch.equal(by_id[s["id"]]["hidden"]["final"], s["hidden"]["final"])
    made.clear()
    assert len(data.head_answers(tiny_target, str(prompts), n_rows, work, gen_tokens=6, batch=5)) == n_rows
    assert made == []  # a rerun reads its own shards
