"""A run's identity: the config keys that decide what is generated and timed, hashed.

The hash names the run folder and keys resume, so a key that changes neither outputs nor timing stays out of it.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from omegaconf import DictConfig, OmegaConf

# Keys that change neither what is generated nor how it is timed, nor which prompts a run covers: a run
# may be resumed with other values. (task.limit and repeats select prompts: they are the run's identity.)
NON_SEMANTIC = {"out_dir", "progress", "logger", ("baseline", "cache_dir")}


# Keys added after runs were recorded: at these values they leave a run's identity (and its folder) as it was.
LATER_DEFAULTS: dict[str | tuple[str, str], Any] = {
    "guidance": 1.0,
    ("engine", "device"): "auto",
    ("engine", "cuda_graphs"): "auto",
    ("engine", "graph_widths"): [1, 2, 4, 8, 16, 32, 64],
    "synthetic": {"mode": "off", "trace": None, "rates": [], "seed": 0},
    ("method", "prompt_carry"): 1.0,
    "batch_size": 1,
    "batch_mode": "continuous",
    "nll": False,
}


def to_dict(cfg: Any) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True, throw_on_missing=False)  # type: ignore[return-value]
    return dict(cfg)


def semantic_config(cfg: Any) -> dict[str, Any]:
    d = json.loads(json.dumps(to_dict(cfg), default=str))
    d.pop("hydra", None)
    for key in NON_SEMANTIC:
        if isinstance(key, tuple):
            d.get(key[0], {}).pop(key[1], None)
        else:
            d.pop(key, None)
    for key, default in LATER_DEFAULTS.items():
        node, name = (d.get(key[0], {}), key[1]) if isinstance(key, tuple) else (d, key)
        if isinstance(node, dict) and node.get(name) == default:
            node.pop(name)
    return d


def config_hash(cfg: Any) -> str:
    blob = json.dumps(semantic_config(cfg), sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:10]
