"""Self-speculative layer skipping (LayerSkip / Draft & Verify style early exit): the target drafts with its own
first ``exit_layer`` layers, its final norm and its head, then verifies the chain with all layers.

The draft forwards run on the target's own KV cache: the committed tokens' keys and values of the first
layers are already there, so no second cache is built; the draft tokens' entries (first layers only) are
cut before verification, which recomputes every layer. ``adapter`` is the early-exit adapter of
``scripts/train_early_exit.py`` (``default``: ``drafts/<model>/early_exit/``), or ``none`` for the plain early
exit. Greedy drafts take the early exit's argmax; sampled drafts are drawn from its warped distribution and
carry it as q, so verification is lossless speculative sampling.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from harness.drafting.draft_models import DRAFTS_DIR
from harness.drafting.early_exit import EarlyExitAdapter, load_adapter
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.method import EngineGenerator, MethodContext
from harness.engine.proposal import Proposal
from harness.engine.sampling import Sampling, sample, warp
from harness.model.target import TargetModel


@dataclass
class LayerSkipConfig(MethodConfig):
    name: str = "layerskip"
    family: str = "layerskip"
    exit_layer: int = 6  # draft with layers 0..exit_layer-1
    k: int = 3  # draft tokens per step
    adapter: str = "default"  # default (drafts/<model>/early_exit/), none, or a folder


class EarlyExitDrafter(Drafter):
    name = "layerskip"
    batchable = False  # its drafts run on the target's own KV cache

    def __init__(self, cfg: LayerSkipConfig, target: TargetModel, adapter: EarlyExitAdapter | None, sampling: Sampling) -> None:
        if not 1 <= cfg.exit_layer < target.num_layers:
            raise SpeclabError(f"method.exit_layer must be in 1..{target.num_layers - 1} for this {target.num_layers}-layer "
                               f"model, got {cfg.exit_layer}")
        if cfg.k < 1:
            raise SpeclabError(f"method.k must be >= 1, got {cfg.k}")
        if adapter is not None and adapter.exit_layer != cfg.exit_layer:
            raise SpeclabError(f"the early-exit adapter was trained for exit_layer={adapter.exit_layer}; set "
                               f"method.exit_layer={adapter.exit_layer} or train one for {cfg.exit_layer}")
        self.cfg, self.target, self.adapter, self.sampling = cfg, target, adapter, sampling

    def _logits(self, cache, token: int) -> torch.Tensor:
        t = self.target
        if self.adapter is None:
            return t.forward(cache, [token], exit_layer=self.cfg.exit_layer).logits[-1]
        out = t.forward(cache, [token], logits_rows=[], hidden_layers=("final",), exit_layer=self.cfg.exit_layer)
        return t.lm_head(self.adapter(out.hidden["final"][-1:])).float()[0]

    @torch.inference_mode()
    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        cache = state.cache
        start = cache.length
        tokens: list[int] = []
        qs: list[torch.Tensor] = []
        token = state.ids[-1]
        for _ in range(min(self.cfg.k, max_depth)):
            logits = self._logits(cache, token)
            if self.sampling.greedy:
                token = int(logits.argmax())
            else:
                q = warp(logits, self.sampling)
                token = sample(q, state.generator)
                qs.append(q)
            tokens.append(token)
        cache.truncate(start)  # the verification forward recomputes the root and the drafts at every layer
        return Proposal.chain(tokens, q=torch.stack(qs) if qs else None)


def resolve_adapter(spec: str, target: TargetModel) -> EarlyExitAdapter | None:
    if spec == "none":
        return None
    folder = DRAFTS_DIR / target.info.name / "early_exit" if spec == "default" else spec
    adapter = load_adapter(folder, target)
    return adapter.to(target.device, target.dtype)  # trained in fp32; a bf16/fp16 target reads it in its own dtype


def build(cfg: LayerSkipConfig, ctx: MethodContext) -> EngineGenerator:
    drafter = EarlyExitDrafter(cfg, ctx.target, resolve_adapter(cfg.adapter, ctx.target), ctx.sampling)
    return EngineGenerator.with_rule(cfg.name, ctx.target, drafter, ctx.sampling, cfg.rule)


FAMILIES = [Family("layerskip", LayerSkipConfig, build)]
