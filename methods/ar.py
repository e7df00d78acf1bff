"""Autoregressive decoding: the engine loop with a drafter that proposes nothing (the baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.config import MethodConfig
from harness.core.registry import Family
from harness.engine.method import EngineGenerator, MethodContext, autoregressive


@dataclass
class ARConfig(MethodConfig):
    name: str = "ar"
    family: str = "ar"


def build(cfg: ARConfig, ctx: MethodContext) -> EngineGenerator:
    return autoregressive(ctx.target, ctx.sampling, cfg.name, cfg.rule)


FAMILIES = [Family("ar", ARConfig, build)]
