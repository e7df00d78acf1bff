"""Peers: transformers' own ``generate()`` as a user would run it, timed by the same runner.

``hf_generate`` is plain greedy or sampled decoding, ``hf_pld`` adds ``prompt_lookup_num_tokens`` and
``hf_assisted`` an ``assistant_model`` (the same draft as ``sps``, exported as an ordinary HF model, with
the same fixed number of draft tokens). They run on their own stock copy of the target (transformers'
default attention and linear kernels), because that is what a reader compares the engine against.

transformers exposes no per-step statistics, so hooks on the target record each forward: where it starts
(its first position) and how many tokens it is fed; :func:`peer_steps` turns that into the engine's
per-step counts. Counted as the engine counts: a forward's drafts are the tokens fed beyond the committed
ones (transformers drafts already in its first forward, over prompt + candidates), capped at what the token
budget still allows (transformers drafts past it; the engine never does); accepted = tokens committed - 1.
The prefill time is the time to the end of the first target forward, so ms_per_step spreads no prefill.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
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


@dataclass
class PeerSteps:
    drafted: list[int]
    accepted: list[int]
    reached: list[int]
    emitted: list[int]


def peer_steps(prompt_len: int, new_tokens: int, max_new_tokens: int, forwards: Sequence[tuple[int, int]]) -> PeerSteps:
    """Per-step counts of a chain-drafting ``generate()`` from its target forwards, (start position, tokens fed).

    A forward starting at s re-feeds the committed tokens from s on (the whole prompt first, then the one
    committed token not yet in the cache) and drafts the rest; the next forward's start shows how far the
    sequence got (its last token is fed again), and the last forward's end is the output's length.
    """
    ends = [start + 1 for start, _ in forwards[1:]] + [prompt_len + new_tokens]
    committed = prompt_len
    steps = PeerSteps([], [], [], [])
    for (start, fed), end in zip(forwards, ends):
        room = max_new_tokens - (committed - prompt_len) - 1  # drafts the budget still allows, as in the engine
        drafted = min(fed - (committed - start), max(room, 0))
        accepted = end - committed - 1
        steps.drafted.append(drafted)
        steps.accepted.append(accepted)
        steps.reached.append(min(accepted + 1, drafted))  # a chain is checked up to its first rejection
        steps.emitted.append(end - committed)
        committed = end
    return steps


class HFGenerator(Generator):
    acceptance_rule = "transformers"

    def __init__(self, name: str, stock: TargetModel, sampling, extra: dict) -> None:
        self.name = name
        self.stock = stock
        self.sampling = sampling
        self.extra = extra
        self._forwards: list[tuple[int, int]] = []
        self._first_done: float | None = None

    def _before(self, module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        positions = kwargs.get("position_ids")
        if positions is None:
            positions = kwargs.get("cache_position")
        if ids is None or positions is None:
            raise SpeclabError("this transformers version calls the model without input_ids/position_ids; "
                               "the peers cannot count its steps (pin the transformers version in pyproject.toml)")
        self._forwards.append((int(positions.reshape(-1)[0]), int(ids.shape[-1])))

    def _after(self, module, args, output) -> None:
        if self._first_done is None:
            if output.logits.is_cuda:  # kernels run asynchronously there
                torch.cuda.synchronize()
            self._first_done = time.perf_counter()

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, generator: torch.Generator | None) -> PromptResult:
        s = self.sampling
        kwargs = dict(max_new_tokens=max_new_tokens, eos_token_id=sorted(self.stock.stop_ids), pad_token_id=self.stock.tokenizer.pad_token_id or 0)
        if s.greedy:
            kwargs.update(do_sample=False)
        else:
            torch.manual_seed(generator.initial_seed() if generator is not None else 0)
            kwargs.update(do_sample=True, temperature=s.temperature, top_k=s.top_k or None, top_p=s.top_p)
        self._forwards, self._first_done = [], None
        hooks = [self.stock.model.register_forward_pre_hook(self._before, with_kwargs=True),
                 self.stock.model.register_forward_hook(self._after)]
        try:
            t0 = time.perf_counter()
            out = self.stock.model.generate(
                torch.tensor([prompt_ids]), attention_mask=torch.ones(1, len(prompt_ids), dtype=torch.long), **kwargs, **self.extra
            )
            wall = time.perf_counter() - t0
        finally:
            for hook in hooks:
                hook.remove()
        ids = out[0, len(prompt_ids):].tolist()
        counts = peer_steps(len(prompt_ids), len(ids), max_new_tokens, self._forwards)
        stop = "eos" if ids and ids[-1] in self.stock.stop_ids else "max_new_tokens"
        return PromptResult(len(prompt_ids), ids, stop, steps=len(self._forwards), drafted=counts.drafted,
                            accepted=counts.accepted, reached=counts.reached, emitted=counts.emitted, wall_time=wall,
                            prefill_time=self._first_done - t0)


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


PEER_FAMILIES = ("hf_generate", "hf_pld", "hf_assisted")  # run transformers' own kernels: no engine bound


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
