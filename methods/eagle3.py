"""EAGLE-3 (Li et al., 2025): low/mid/high target features fused by ``fc``, the head's own reduced vocabulary
(``d2t``/``t2d``), trained with training-time test; drafts EAGLE-2's dynamic tree."""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.registry import Family
from harness.drafting.heads.eagle_drafter import DynamicTreeConfig, build_head_generator, dynamic_shape
from harness.engine.method import EngineGenerator, MethodContext


@dataclass
class Eagle3Config(DynamicTreeConfig):
    name: str = "eagle3"
    family: str = "eagle3"  # head: EAGLE-3 weights (default drafts/<model.name>/eagle3/)


def build(cfg: Eagle3Config, ctx: MethodContext) -> EngineGenerator:
    return build_head_generator(cfg, ctx, "eagle3", dynamic_shape(cfg))


FAMILIES = [Family("eagle3", Eagle3Config, build)]
