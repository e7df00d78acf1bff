"""Peers: transformers' own ``generate()`` as a user would run it, timed by the same runner.

``hf_generate`` is plain greedy or sampled decoding, ``hf_pld`` adds ``prompt_lookup_num_tokens`` and
``hf_assisted`` an ``assistant_model`` (the same draft as ``sps``, exported as an ordinary HF model, with
the same fixed number of draft tokens). They run on their own stock copy of the target (transformers'
default attention and linear kernels), because that is what a reader compares the engine against.

transformers exposes no per-step statistics, so a forward pre-hook on the target counts its forwards
(steps) and the tokens fed to each (1 + draft tokens); accepted = new_tokens - steps. Per-position
acceptance is unknown and left null.
"""

from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, field
from typing import Optional

import torch
from hydra.core.config_store import ConfigStore

from harness.config import MethodConfig
from harness.decoder import PromptResult
from harness.drafts import export_hf
from harness.errors import SpeclabError
from harness.generator import METHODS, Generator, MethodContext
from harness.loading import load_target
from harness.model import TargetModel

from .sps import DraftModelConfig


@dataclass
class HFGenerateConfig(MethodConfig):
    name: str = "hf_generate"
    family: str = "hf_generate"


@dataclass
class HFPLDConfig(MethodConfig):
    name: str = "hf_pld"
    family: str = "hf_pld"
    num_draft: int = 10  # prompt_lookup_num_tokens
    max_ngram: int = 3  # max_matching_ngram_size (transformers' default is 2; ours is matched to pld's)


@dataclass
class HFAssistedConfig(MethodConfig):
    name: str = "hf_assisted"
    family: str = "hf_assisted"
    draft: DraftModelConfig = field(default_factory=DraftModelConfig)
    k: int = 2  # num_assistant_tokens, with the constant schedule (matched to sps)
    confidence_threshold: Optional[float] = 0.0  # 0 = always draft k tokens (transformers' default is 0.4)


class HFGenerator(Generator):
    acceptance_rule = "transformers"

    def __init__(self, name: str, stock: TargetModel, sampling, extra: dict) -> None:
        self.name = name
        self.stock = stock
        self.sampling = sampling
        self.extra = extra
        self._fed: list[int] = []

    def _count(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        if ids is not None:
            self._fed.append(int(ids.shape[-1]))

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, generator: torch.Generator | None) -> PromptResult:
        s = self.sampling
        kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=sorted(self.stock.stop_ids), pad_token_id=self.stock.tokenizer.pad_token_id or 0)
        if s.greedy:
            kwargs.update(do_sample=False)
        else:
            torch.manual_seed(generator.initial_seed() if generator is not None else 0)
            kwargs.update(do_sample=True, temperature=s.temperature, top_k=s.top_k or None, top_p=s.top_p)
        self._fed = []
        hook = self.stock.model.register_forward_pre_hook(self._count, with_kwargs=True)
        try:
            t0 = time.perf_counter()
            out = self.stock.model.generate(
                torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long), **kwargs, **self.extra
            )
            wall = time.perf_counter() - t0
        finally:
            hook.remove()
        ids = out[0, len(prompt_ids):].tolist()
        fed = self._fed
        drafted = [n - 1 for n in fed[1:]]
        steps = len(fed)
        stop = "eos" if ids and ids[-1] in self.stock.stop_ids else "max_new_tokens"
        return PromptResult(len(prompt_ids), ids, stop, steps=steps, drafted=drafted, wall_time=wall,
                            accepted_total=len(ids) - steps)


_STOCK: "weakref.WeakKeyDictionary[TargetModel, TargetModel]" = weakref.WeakKeyDictionary()


def stock_copy(ctx: MethodContext) -> TargetModel:
    """The target loaded again with transformers' default attention and kernels (one copy shared by all peers)."""
    if ctx.target in _STOCK:
        return _STOCK[ctx.target]
    info = ctx.target.info
    if "tiny" in info.extra:
        from harness.loading import TinySpec

        stock = load_target(info.name, "tiny", None, info.dtype, "sdpa", tiny=TinySpec(**info.extra["tiny"]))
    else:
        stock = load_target(info.name, "hf", info.path, info.dtype, "sdpa")
    if stock.info.weights_hash != info.weights_hash:
        raise SpeclabError(f"the stock copy of {info.name} has other weights than the target; peers need the same model")
    _STOCK[ctx.target] = stock
    return stock


@METHODS.register("hf_generate", HFGenerateConfig)
def build_generate(cfg: HFGenerateConfig, ctx: MethodContext) -> HFGenerator:
    return HFGenerator(cfg.name, stock_copy(ctx), ctx.sampling, {})


@METHODS.register("hf_pld", HFPLDConfig)
def build_pld(cfg: HFPLDConfig, ctx: MethodContext) -> HFGenerator:
    extra = {"prompt_lookup_num_tokens": cfg.num_draft, "max_matching_ngram_size": cfg.max_ngram}
    return HFGenerator(cfg.name, stock_copy(ctx), ctx.sampling, extra)


@METHODS.register("hf_assisted", HFAssistedConfig)
def build_assisted(cfg: HFAssistedConfig, ctx: MethodContext) -> HFGenerator:
    from transformers import AutoModelForCausalLM

    from harness.drafts import default_draft

    stock = stock_copy(ctx)
    folder = export_hf(cfg.draft.path or default_draft(ctx.target.info.name), ctx.target)
    assistant = AutoModelForCausalLM.from_pretrained(folder, dtype=stock.dtype).eval()
    gc = assistant.generation_config
    gc.num_assistant_tokens = cfg.k
    gc.num_assistant_tokens_schedule = "constant"
    gc.assistant_confidence_threshold = cfg.confidence_threshold
    return HFGenerator(cfg.name, stock, ctx.sampling, {"assistant_model": assistant})


cs = ConfigStore.instance()
cs.store(group="schema/method", name="hf_generate", node=HFGenerateConfig)
cs.store(group="schema/method", name="hf_pld", node=HFPLDConfig)
cs.store(group="schema/method", name="hf_assisted", node=HFAssistedConfig)
