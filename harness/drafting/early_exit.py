"""Early-exit adapter for self-speculation: a residual linear map on the normed state after layer E, read by
the target's own head, trained to make that early exit predict what the full model predicts.

A model not trained for early exit (SmolLM2, most HF models) guesses poorly from its first layers through its
final norm and head; the adapter (hidden x hidden, initialised to zero so it starts as the plain early exit)
is the cheapest correction, and its file is small. ``scripts/train_early_exit.py`` trains one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from harness.core.errors import SpeclabError


class EarlyExitAdapter(nn.Module):
    def __init__(self, hidden: int, exit_layer: int) -> None:
        super().__init__()
        self.exit_layer = exit_layer
        self.proj = nn.Linear(hidden, hidden, bias=False)
        nn.init.zeros_(self.proj.weight)

    def forward(self, normed: torch.Tensor) -> torch.Tensor:
        return normed + self.proj(normed)


def save_adapter(adapter: EarlyExitAdapter, folder: str | Path, meta: dict[str, Any]) -> Path:
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_file({"proj.weight": adapter.proj.weight.detach().to(torch.float16).contiguous()}, str(folder / "adapter.safetensors"))
    config = {"exit_layer": adapter.exit_layer, "hidden_size": adapter.proj.weight.shape[0], **meta}
    (folder / "config.json").write_text(json.dumps(config, indent=1))
    return folder


def load_adapter(folder: str | Path, target: Any) -> EarlyExitAdapter:
    """The adapter in ``folder``, checked to have been trained for ``target`` (a TargetModel)."""
    folder = Path(folder)
    if not (folder / "config.json").is_file():
        raise SpeclabError(f"no early-exit adapter in {folder}; train one with `python scripts/train_early_exit.py "
                           f"--model {target.info.name} --out {folder}`, or set method.adapter=none for the plain early exit")
    config = json.loads((folder / "config.json").read_text())
    hidden, num_layers, name = int(target.config.hidden_size), target.num_layers, target.info.name
    if config.get("model") not in (None, name) or config["hidden_size"] != hidden or not 1 <= config["exit_layer"] < num_layers:
        raise SpeclabError(f"the adapter in {folder} was trained for {config.get('model', '?')} (hidden size "
                           f"{config['hidden_size']}, exit layer {config['exit_layer']}); this is {name} (hidden size "
                           f"{hidden}, {num_layers} layers): train one for it with scripts/train_early_exit.py")
    adapter = EarlyExitAdapter(hidden, int(config["exit_layer"]))
    adapter.proj.weight.data.copy_(load_file(str(folder / "adapter.safetensors"))["proj.weight"].float())
    return adapter.eval()
