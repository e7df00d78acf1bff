"""EAGLE-1 (Li et al., 2024): a one-layer draft head over [token embedding ; target feature], static tree.

The tree comes from a choices list (``harness/drafting/tree_shapes.py``: ``eagle_mc_sim_7b_63`` is the paper's 25-node tree;
the CPU presets keep verification inside the flat part of this machine's verify-cost curve). ``vocab_size``
restricts the target's head, which EAGLE-1 drafts through, to the head folder's most frequent answer tokens;
the rule stays lossless (the draft never proposes other tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from harness.drafting.heads.eagle_drafter import TreeShape, build_head_generator
from harness.drafting.tree_shapes import resolve_choices
from harness.engine.method import EngineGenerator, MethodContext


@dataclass
class EagleConfig(MethodConfig):
    name: str = "eagle"
    family: str = "eagle"
    head: Optional[str] = None  # HF id or folder; null = drafts/<model.name>/eagle/
    dtype: str = "auto"  # auto: bfloat16 where bf16 linears run natively, else the target's dtype
    choices: Any = "cpu8"  # a preset name in harness/drafting/tree_shapes.py or a list of rank paths
    vocab_size: Any = "auto"  # auto: 8192 tokens with a token_frequency.json, else all; null: all; or a number


def build(cfg: EagleConfig, ctx: MethodContext) -> EngineGenerator:
    try:
        shape = TreeShape("static", choices=resolve_choices(cfg.choices))
    except ValueError as e:
        raise SpeclabError(f"method.choices: {e}") from None
    return build_head_generator(cfg, ctx, "eagle", shape)


FAMILIES = [Family("eagle", EagleConfig, build)]
