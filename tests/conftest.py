"""Shared fixtures: offline environment, tiny seeded models, Hydra composition."""

from __future__ import annotations

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

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(scope="session")
def tiny_target():
    from harness.loading import load_target

    return load_target("tiny-llama", source="tiny")


@pytest.fixture(scope="session")
def tiny_prompts(tiny_target):
    texts = [
        "hello hello hello world",
        "The quick brown fox jumps over the lazy dog. The quick brown fox",
        "abcabcabcabc",
        "1, 2, 3, 4, 5, 6,",
    ]
    return [tiny_target.encode_chat([{"role": "user", "content": t}]) for t in texts]


def compose(*overrides: str):
    """The config ``python run.py <overrides>`` would run (schemas registered, hydra node removed)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    import methods  # noqa: F401
    import tasks  # noqa: F401
    from harness.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=list(overrides))


@pytest.fixture(scope="session")
def layer_draft_folder(tmp_path_factory, tiny_target):
    """A speclab layer draft: the tiny target's first layer and norm, sharing its embeddings."""
    from harness.drafts import save_layer_draft
    from scripts.distill_draft import build_draft

    draft = build_draft(tiny_target, 1)
    path = tmp_path_factory.mktemp("layer_draft")
    save_layer_draft(draft, path, tiny_target, {"command": "test"})
    return path
