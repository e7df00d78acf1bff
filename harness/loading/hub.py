"""Files a user names by Hub id: a local folder as it is, else the repository from the Hub (or the local Hub cache
when offline)."""

from __future__ import annotations

from pathlib import Path

from harness.core.errors import SpeclabError

# what a head or draft repository holds that speclab reads: configs (and token_frequency.json), weights, and the
# torch.save pickles the official Medusa and Hydra repositories ship (medusa_lm_head.pt, hydra_lm_head.pt)
HUB_FILES = ["*.json", "*.safetensors", "*.bin", "*.pt"]


def resolve_folder(path_or_id: str) -> Path:
    """A local folder, or a Hub repository downloaded (or found in the local Hub cache when offline)."""
    folder = Path(path_or_id).expanduser()
    if folder.is_dir():
        return folder
    if folder.exists() or path_or_id.startswith((".", "/", "~")) or path_or_id.count("/") != 1:
        raise SpeclabError(f"head {path_or_id!r} is neither a folder nor a Hub id (org/name); fix method.head")
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(path_or_id, allow_patterns=HUB_FILES))
    except Exception as e:  # noqa: BLE001 - any hub failure becomes one line for the user
        raise SpeclabError(f"head {path_or_id!r} is not a folder here and could not be fetched from the Hub "
                           f"({type(e).__name__}); download it first or point method.head at a local folder") from None
