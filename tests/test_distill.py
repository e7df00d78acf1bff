"""The draft distillation script end to end on the tiny model: generate, train, export, resume."""

import json

import torch

from harness.drafting.draft_models import load_draft
from harness.loading.sources import load_target
from scripts.distill_draft import main


def test_distill_runs_resumes_and_exports(tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"t-{i}", "prompt": f"Tell me about the number {i} and its friends."}) + "\n"
                               for i in range(12)))
    args = ["--model", "tiny-llama", "--prompts-file", str(prompts), "--prompts", "12", "--gen-tokens", "8",
            "--gen-batch", "4", "--epochs", "2", "--batch", "2", "--layers", "1", "--train-vocab", "200",
            "--work", str(tmp_path / "work"), "--out", str(tmp_path / "draft"), "--holdout", "0.2"]
    main(args)
    out = tmp_path / "draft"
    config = json.loads((out / "config.json").read_text())
    meta = config["speclab_draft"]
    assert config["num_hidden_layers"] == 1 and meta["target"] == "tiny-llama"
    assert meta["command"].startswith("python scripts/distill_draft.py") and meta["steps"] > 0
    assert 0.0 <= meta["agreement"] <= 1.0 and (out / "token_frequency.json").is_file()
    shards = sorted((tmp_path / "work").rglob("gen_*.pt"))
    assert len(shards) == 3
    stamps = [p.stat().st_mtime_ns for p in shards]
    target = load_target("tiny-llama", "tiny")
    draft = load_draft(str(out), target)
    assert draft.forward(draft.new_cache(16), [1, 2, 3], logits_rows=[-1]).logits.shape == (1, target.vocab_size)
    # a second run reuses the generated shards instead of generating again
    main(args)
    assert [p.stat().st_mtime_ns for p in shards] == stamps
    assert torch.load(shards[0])[0]["top_idx"].dtype == torch.int32
