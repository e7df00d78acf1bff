"""EAGLE-2 (Li et al., 2024b): EAGLE-1 weights, a context-dependent dynamic tree.

Each step expands the ``top_k`` children of the ``top_k`` best frontier nodes by cumulative draft
log-probability for ``depth`` levels, then verifies the ``total_tokens - 1`` best nodes (plus the root).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from hydra.core.config_store import ConfigStore

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.engine.method import METHODS, EngineGenerator, MethodContext
from harness.drafting.heads.eagle_drafter import TreeShape, build_head_generator


@dataclass
class DynamicTreeConfig(MethodConfig):
    """What every method drafting EAGLE-2's dynamic tree with a head sets."""

    head: Optional[str] = None  # HF id or folder; null = the model's default head under drafts/
    dtype: str = "auto"  # auto: bfloat16 where bf16 linears run natively, else the target's dtype
    depth: int = 5
    top_k: int = 2
    total_tokens: int = 8  # verification width, root included


@dataclass
class Eagle2Config(DynamicTreeConfig):
    name: str = "eagle2"
    family: str = "eagle2"  # head: EAGLE-1 weights (default drafts/<model.name>/eagle/)
    vocab_size: Optional[int] = 8192  # null: the target's full head


def dynamic_shape(cfg) -> TreeShape:
    try:
        return TreeShape("dynamic", depth=cfg.depth, top_k=cfg.top_k, total_tokens=cfg.total_tokens)
    except ValueError as e:
        raise SpeclabError(f"method: {e}") from None


@METHODS.register("eagle2", Eagle2Config)
def build(cfg: Eagle2Config, ctx: MethodContext) -> EngineGenerator:
    return build_head_generator(cfg, ctx, "eagle", dynamic_shape(cfg))


ConfigStore.instance().store(group="schema/method", name="eagle2", node=Eagle2Config)
