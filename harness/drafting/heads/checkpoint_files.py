"""Reading a head's checkpoint files: config.json, and weights as safetensors or weights-only pickles, whole or
sharded; every unreadable file is one line that says what to do."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import torch
from safetensors.torch import load_file

from harness.core.errors import SpeclabError

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")


def _json_object(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SpeclabError(f"{path} is not valid JSON ({e}); re-download or re-export the head") from None
    if not isinstance(data, dict):
        raise SpeclabError(f"{path} holds a {type(data).__name__}, not a JSON object; "
                           "re-download or re-export the head")
    return data


def read_config(folder: Path) -> dict:
    if not (folder / "config.json").is_file():
        raise SpeclabError(f"head folder {folder} has no config.json; point method.head at an EAGLE head folder")
    return _json_object(folder / "config.json")


def _read_file(path: Path) -> dict[str, torch.Tensor]:
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as e:  # noqa: BLE001 - a corrupt file is a user-facing problem
            raise SpeclabError(f"{path} could not be read as safetensors ({type(e).__name__}); "
                               "re-download the head") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise SpeclabError(f"{path} holds Python objects other than tensors, which speclab does not unpickle "
                           "(weights_only=True); save the head's state dict alone, or as safetensors") from None
    except Exception as e:  # noqa: BLE001 - truncated or foreign files
        raise SpeclabError(f"{path} could not be read as a PyTorch state dict ({type(e).__name__}); "
                           "re-download the head") from None
    if not isinstance(state, dict):
        raise SpeclabError(f"{path} holds a {type(state).__name__}, not a state dict; save the head's state dict")
    bad = [k for k, v in state.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if bad:
        raise SpeclabError(f"{path} holds non-tensor entries ({bad[0]!r}); save the head's flat state dict")
    return state


def read_weights(folder: Path) -> dict[str, torch.Tensor]:
    for name in WEIGHT_FILES:
        index = folder / f"{name}.index.json"
        if index.is_file():  # sharded: the index maps each key to its shard
            shards = sorted(set(_json_object(index).get("weight_map", {}).values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(_read_file(folder / shard))
            return state
        if (folder / name).is_file():
            return _read_file(folder / name)
    raise SpeclabError(f"no head weights in {folder} (looked for {', '.join(WEIGHT_FILES)}); "
                       "point method.head at an EAGLE head folder")


