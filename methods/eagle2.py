"""EAGLE-2 (Li et al., 2024b): EAGLE-1 weights, a context-dependent dynamic tree.

Each step expands the ``top_k`` children of the ``top_k`` best frontier nodes by cumulative draft
log-probability for ``depth`` levels, then verifies the ``total_tokens - 1`` best nodes (plus the root).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.core.registry import Family
from harness.drafting.heads.eagle_drafter import DynamicTreeConfig, build_head_generator, dynamic_shape
from harness.engine.method import EngineGenerator, MethodContext


@dataclass
class Eagle2Config(DynamicTreeConfig):
    name: str = "eagle2"
    family: str = "eagle2"  # head: EAGLE-1 weights (default drafts/<model.name>/eagle/)
    vocab_size: Any = "auto"  # auto: 8192 tokens with a token_frequency.json, else all; null: all; or a number


def build(cfg: Eagle2Config, ctx: MethodContext) -> EngineGenerator:
    return build_head_generator(cfg, ctx, "eagle", dynamic_shape(cfg))


FAMILIES = [Family("eagle2", Eagle2Config, build)]
