"""Autoregressive decoding: the engine loop with a drafter that proposes nothing (the baseline)."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from harness.core.config import MethodConfig
from harness.engine.drafter import NoDraft
from harness.engine.method import METHODS, EngineGenerator, MethodContext


@dataclass
class ARConfig(MethodConfig):
    name: str = "ar"
    family: str = "ar"


@METHODS.register("ar", ARConfig)
def build(cfg: ARConfig, ctx: MethodContext) -> EngineGenerator:
    return EngineGenerator(cfg.name, ctx.target, NoDraft(), ctx.sampling, cfg.rule)


ConfigStore.instance().store(group="schema/method", name="ar", node=ARConfig)
