"""Shared fixtures: offline environment, tiny seeded models, Hydra composition."""

from __future__ import annotations

import json
import os
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "SPECLAB_DATA" not in os.environ and (REPO.parent / "shared" / "data").is_dir():
    os.environ["SPECLAB_DATA"] = str(REPO.parent / "shared" / "data")
if os.environ.get("SPECLAB_DATA"):
    # README passes a cwd-relative path; subprocess tests run from scratch folders, so pin it now
    os.environ["SPECLAB_DATA"] = str(Path(os.environ["SPECLAB_DATA"]).expanduser().resolve())

import pytest  # noqa: E402
import torch  # noqa: E402

from harness.api import load_plugins  # noqa: E402

load_plugins()  # every method and task family, as run.py registers them

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_target():
    from harness.loading.sources import load_target

    return load_target("tiny-llama", source="tiny")


TINY_TEXTS = [
    "hello hello hello world",
    "The quick brown fox jumps over the lazy dog. The quick brown fox",
    "abcabcabcabc",
    "1, 2, 3, 4, 5, 6,",
]


@pytest.fixture(scope="session")
def tiny_prompts(tiny_target):
    return [tiny_target.encode_chat([{"role": "user", "content": t}]) for t in TINY_TEXTS]


def compose(*overrides: str):
    """The config ``python run.py <overrides>`` would run (schemas registered, hydra node removed)."""
    from harness.core.presets import compose as compose_config

    return compose_config(list(overrides))


@pytest.fixture(scope="session")
def layer_draft_folder(tmp_path_factory, tiny_target):
    """A speclab layer draft: the tiny target's first layer and norm, sharing its embeddings."""
    from harness.drafting.draft_models import save_layer_draft
    from scripts.distill_draft import build_draft

    draft = build_draft(tiny_target, 1)
    path = tmp_path_factory.mktemp("layer_draft")
    save_layer_draft(draft, path, tiny_target, {"command": "test"})
    return path


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models' matmuls gain nothing from a second thread, and beside a busy neighbour its spin-waiting makes
    them several times slower (design.md, section 6); modules of many small forwards use one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


EAGLE_GEN_TOKENS = 32


# The trainers' hold-out share: with eight copies of each tiny test prompt it holds out four of the 32 copies
# (tiny-4-2, tiny-6-1, tiny-6-3, tiny-7-3) and two counting prompts, and leaves at least six copies of each tiny
# prompt in training. Held-out tau is measured on the first four held-out prompts (count-8, tiny-4-2, tiny-6-3,
# count-10).
HOLDOUT = "0.2"
HELDOUT_PROMPTS = 4
# Held-out tau over 32 tokens that a trained tiny head reaches there (eagle 1.88, eagle3 1.73, medusa 2.07, hydra
# 2.13) and an untrained one does not (1.02-1.03): a head that learned nothing has next to nothing accepted.
TRAINED_TAU = 1.4


def tiny_training_prompts(root: Path) -> tuple[Path, int]:
    """The tiny test prompts (eight copies under different ids: the hold-out split keeps some of each in training
    and holds out others, see ``HOLDOUT``) and a few counting prompts, as a training-prompts file."""
    rows = [{"id": f"tiny-{copy}-{i}", "prompt": t} for copy in range(8) for i, t in enumerate(TINY_TEXTS)]
    rows += [{"id": f"count-{i}", "prompt": f"Count: {i} {i} {i} {i} {i}"} for i in range(12)]
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return prompts, len(rows)


@pytest.fixture(scope="session")
def eagle_heads(tmp_path_factory):
    """EAGLE-1 and EAGLE-3 heads for the tiny target, trained by scripts/train_eagle.py (about 15 s).

    A random tiny target's answers are close to noise, so heads trained on a few of them accept almost nothing;
    the tiny test prompts are among the training prompts (eight copies under different ids, so the hold-out split
    leaves some of each in training) and the heads learn those continuations: drafts are accepted and every
    verification path runs. The held-out tau is measured on held-out copies (``HOLDOUT``), over the 32 answer
    tokens the heads were trained on.
    Returns {variant: {"folder", "args", "stats", "work"}}.
    """
    from scripts.train_eagle import main

    root = tmp_path_factory.mktemp("eagle_heads")
    prompts, n_rows = tiny_training_prompts(root)
    runs = {}
    for variant in ("eagle", "eagle3"):
        args = ["--variant", variant, "--model", "tiny-llama", "--prompts-file", str(prompts),
                "--prompts", str(n_rows), "--gen-tokens", str(EAGLE_GEN_TOKENS), "--gen-batch", "8",
                "--epochs", "12", "--batch", "4", "--lr", "4e-3",
                "--draft-vocab", "64", "--holdout", HOLDOUT, "--eval-prompts", str(HELDOUT_PROMPTS),
                "--eval-tokens", str(EAGLE_GEN_TOKENS),
                "--threads", "1", "--work", str(root / "work"), "--out", str(root / variant)]
        threads = torch.get_num_threads()
        try:  # one thread: beside a busy neighbour, two spin-waiting threads make these small matmuls crawl
            stats = main(args)
        finally:
            torch.set_num_threads(threads)
        runs[variant] = {"folder": root / variant, "args": args, "stats": stats, "work": root / "work"}
    return runs


@pytest.fixture(scope="session")
def parallel_heads(eagle_heads):
    """Medusa and Hydra heads for the tiny target, trained by scripts/train_medusa.py on the answers the
    ``eagle_heads`` fixture cached (the trainers share that cache: no answer is generated twice).
    Returns {variant: {"folder", "args", "stats"}}."""
    from scripts.train_medusa import main

    run = eagle_heads["eagle"]
    args = dict(zip(run["args"][::2], run["args"][1::2]))
    root = run["work"].parent
    runs = {}
    for variant in ("medusa", "hydra"):
        argv = ["--variant", variant, "--model", "tiny-llama", "--prompts-file", args["--prompts-file"],
                "--prompts", args["--prompts"], "--gen-tokens", args["--gen-tokens"], "--gen-batch", args["--gen-batch"],
                "--heads", "4", "--epochs", "30", "--batch", "4", "--lr", "1e-2", "--draft-vocab", "64",
                "--holdout", args["--holdout"], "--eval-prompts", args["--eval-prompts"],
                "--eval-tokens", args["--eval-tokens"], "--threads", "1",
                "--work", str(run["work"]), "--out", str(root / variant)]
        threads = torch.get_num_threads()
        try:
            stats = main(argv)
        finally:
            torch.set_num_threads(threads)
        runs[variant] = {"folder": root / variant, "args": argv, "stats": stats}
    return runs


def build_with_head(target, schema: type, head, sampling=None, **overrides):
    """A head-based method's engine generator, built from its config schema as run.py would (torch kernels, fp32)."""
    from omegaconf import OmegaConf

    from harness.core.config import EngineConfig
    from harness.core.registry import METHODS
    from harness.engine.method import MethodContext
    from harness.engine.sampling import Sampling

    node = OmegaConf.structured(schema)
    node.head = str(head)
    for key, value in overrides.items():
        node[key] = value
    return METHODS.build(node, MethodContext(target, sampling or Sampling(), EngineConfig(kernel="torch")))
