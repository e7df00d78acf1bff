"""Where a head method's files come from: ``method.head`` (a folder or Hub id), or the model's committed default
under drafts/."""

from __future__ import annotations

from typing import Any

from harness.core.errors import SpeclabError
from harness.drafting.draft_models import DRAFTS_DIR
from harness.loading.hub import resolve_folder


def head_path(cfg: Any, ctx: Any, default_head: str, train_command: str) -> str:
    """``method.head`` as a local folder (a Hub id is downloaded), or the model's committed default under drafts/."""
    if cfg.head:
        return str(resolve_folder(str(cfg.head)))
    folder = DRAFTS_DIR / ctx.target.info.name / default_head
    if not (folder / "config.json").is_file():
        raise SpeclabError(
            f"no default {default_head} head for model {ctx.target.info.name!r}; set method.head=<HF id or folder>, "
            f"or train one: {train_command} --model {ctx.target.info.name} --out {folder}"
        )
    return str(folder)
