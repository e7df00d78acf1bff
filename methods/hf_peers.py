"""Peers: transformers' own ``generate()`` as a user would run it, timed by the same runner.

``hf_generate`` is plain greedy or sampled decoding, ``hf_pld`` adds ``prompt_lookup_num_tokens`` and
``hf_assisted`` an ``assistant_model`` (the same draft as ``sps``, exported as an ordinary HF model, with
the same fixed number of draft tokens). ``hf_compiled`` is plain decoding the fastest stock way: a static KV
cache and ``torch.compile`` of the forward (``reduce-overhead``: CUDA graphs on a GPU), the baseline a user
deploys, so GPU reports give every method's speedup over it too. They run on their own stock copy of the target (transformers'
default attention and linear kernels), because that is what a reader compares the engine against.

transformers exposes no per-step statistics, so hooks on the target record each forward: where it starts
(its first position) and how many tokens it is fed; :func:`peer_steps` turns that into the engine's
per-step counts. Counted as the engine counts: a forward's drafts are the tokens fed beyond the committed
ones (transformers drafts already in its first forward, over prompt + candidates), capped at what the token
budget still allows (transformers drafts past it; the engine never does); accepted = tokens committed - 1.
The prefill time is the time to the end of the first target forward, so ms_per_step spreads no prefill.
"""

from __future__ import annotations

import copy
import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Optional

import torch

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from harness.drafting.draft_models import DraftModelConfig, export_hf
from harness.engine.decoder import PromptResult
from harness.engine.method import Generator, MethodContext
from harness.loading.sources import load_target
from harness.model.device import synchronize
from harness.model.target import TargetModel


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
class HFCompiledConfig(MethodConfig):
    name: str = "hf_compiled"
    family: str = "hf_compiled"
    mode: str = "reduce-overhead"  # torch.compile mode: reduce-overhead (CUDA graphs) | default | max-autotune
    # the static cache's length is a multiple of this, so a handful of compiled graphs serve every prompt
    cache_bucket: int = 512


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
    # hooks read each forward's position on the host: a sync per forward, and a graph break in a compiled one
    count_forwards = True

    def __init__(self, name: str, stock: TargetModel, sampling, extra: dict) -> None:
        self.name = name
        self.stock = stock
        self.sampling = sampling
        self.extra = extra
        self.drafts = bool(extra)  # hf_pld and hf_assisted draft inside generate()
        self.ignore_eos = False  # synthetic acceptance (without_stop_tokens): generate the whole budget
        self._forwards: list[tuple[int, int]] = []
        self._first_done: float | None = None

    def _options(self, prompt_len: int, max_new_tokens: int) -> dict:
        return self.extra

    def without_stop_tokens(self) -> "HFGenerator":
        if self.drafts:
            raise SpeclabError(f"synthetic acceptance cannot schedule {self.name!r}: it drafts inside transformers' "
                               "generate(); compare engine methods, hf_generate or hf_compiled")
        clone = copy.copy(self)
        clone.ignore_eos = True
        return clone

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
            synchronize(self.stock.device)  # kernels run asynchronously on a GPU
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
        if self.ignore_eos:
            kwargs["min_new_tokens"] = max_new_tokens
        self._forwards, self._first_done = [], None
        model = self.stock.model
        if self.count_forwards:
            hooks = [model.register_forward_pre_hook(self._before, with_kwargs=True), model.register_forward_hook(self._after)]
        else:
            hooks, kwargs["streamer"] = [], _FirstToken(self)
        inputs = torch.tensor([prompt_ids], device=self.stock.device)
        try:
            synchronize(self.stock.device)
            t0 = time.perf_counter()
            out = model.generate(inputs, attention_mask=torch.ones_like(inputs), **kwargs,
                                 **self._options(len(prompt_ids), max_new_tokens))
            synchronize(self.stock.device)
            wall = time.perf_counter() - t0
        finally:
            for hook in hooks:
                hook.remove()
        ids = out[0, len(prompt_ids):].tolist()
        if not self.count_forwards:  # plain decoding: the prefill, then one forward per further token
            self._forwards = [(0, len(prompt_ids))] + [(len(prompt_ids) + i, 1) for i in range(len(ids) - 1)]
        counts = peer_steps(len(prompt_ids), len(ids), max_new_tokens, self._forwards)
        stop = "eos" if ids and ids[-1] in self.stock.stop_ids else "max_new_tokens"
        return PromptResult(len(prompt_ids), ids, stop, steps=len(self._forwards), drafted=counts.drafted,
                            accepted=counts.accepted, reached=counts.reached, emitted=counts.emitted, wall_time=wall,
                            prefill_time=self._first_done - t0)


class _FirstToken:
    """A ``generate()`` streamer that notes when the first new token exists: the prefill's end, read without hooks."""

    def __init__(self, owner: HFGenerator) -> None:
        self.owner = owner
        self.calls = 0

    def put(self, value) -> None:
        self.calls += 1  # the first call carries the prompt, the second the first new token
        if self.calls == 2:
            synchronize(self.owner.stock.device)
            self.owner._first_done = time.perf_counter()

    def end(self) -> None:
        pass


class HFCompiledGenerator(HFGenerator):
    count_forwards = False

    def __init__(self, name: str, stock: TargetModel, sampling, mode: str, bucket: int) -> None:
        from transformers import CompileConfig

        super().__init__(name, stock, sampling, {})
        if bucket < 1:
            raise SpeclabError(f"hf_compiled cache_bucket must be >= 1, got {bucket}")
        self.bucket = bucket
        # transformers compiles only on accelerators unless told otherwise; a CPU run compiles too, so that the
        # peer is what its name says on every machine
        self.compile_config = CompileConfig(mode=mode)
        self.compile_config._compile_all_devices = True
        self._cache_len: int | None = None  # warm-up: the static cache size to compile for

    def cache_len(self, prompt_len: int, max_new_tokens: int) -> int:
        """The static cache's size for a generation: prompt + budget rounded up to the bucket."""
        return -(-(prompt_len + max_new_tokens) // self.bucket) * self.bucket

    def _options(self, prompt_len: int, max_new_tokens: int) -> dict:
        size = self._cache_len or self.cache_len(prompt_len, max_new_tokens)
        return {"cache_implementation": "static", "max_cache_len": size, "compile_config": self.compile_config}

    def warm_up(self, prompt_ids, max_new_tokens, generator, lengths) -> None:
        """Compile for every static cache size the timed generations can meet (each size is a new shape, and
        torch.compile would otherwise compile inside a timed call), twice each: the first calls of a fresh graph
        also pay for its set-up."""
        # a re-tokenized earlier answer can run a few tokens past its budget: one bucket more than the bound
        sizes = range(self.cache_len(lengths[0], 0), self.cache_len(lengths[1] + self.bucket, 0) + 1, self.bucket)
        try:
            for size in sizes:
                self._cache_len = size
                prompt = prompt_ids[: max(1, size - max_new_tokens)]  # prompt + budget must fit the size
                for _ in range(2):
                    self.generate(prompt, min(max_new_tokens, size - len(prompt)), generator)
        finally:
            self._cache_len = None


_STOCK: "weakref.WeakKeyDictionary[TargetModel, TargetModel]" = weakref.WeakKeyDictionary()


def stock_copy(ctx: MethodContext) -> TargetModel:
    """The target loaded again with transformers' default attention and kernels (one copy shared by all peers)."""
    if ctx.target in _STOCK:
        return _STOCK[ctx.target]
    info = ctx.target.info
    if "tiny" in info.extra:
        from harness.core.config import TinySpec

        stock = load_target(info.name, "tiny", None, info.dtype, "sdpa", tiny=TinySpec(**info.extra["tiny"]),
                            device=ctx.target.device)
    else:
        stock = load_target(info.name, "hf", info.path, info.dtype, "sdpa", device=ctx.target.device)
    if stock.info.weights_hash != info.weights_hash:
        raise SpeclabError(f"the stock copy of {info.name} has other weights than the target; peers need the same model")
    _STOCK[ctx.target] = stock
    return stock


PEER_FAMILIES = ("hf_generate", "hf_pld", "hf_assisted", "hf_compiled")  # run transformers' own kernels: no engine bound


def build_generate(cfg: HFGenerateConfig, ctx: MethodContext) -> HFGenerator:
    return HFGenerator(cfg.name, stock_copy(ctx), ctx.sampling, {})


def build_compiled(cfg: HFCompiledConfig, ctx: MethodContext) -> HFGenerator:
    modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    if cfg.mode not in modes:
        raise SpeclabError(f"unknown hf_compiled mode {cfg.mode!r}; choose one of {', '.join(modes)}")
    return HFCompiledGenerator(cfg.name, stock_copy(ctx), ctx.sampling, cfg.mode, cfg.cache_bucket)


def build_pld(cfg: HFPLDConfig, ctx: MethodContext) -> HFGenerator:
    extra = {"prompt_lookup_num_tokens": cfg.num_draft, "max_matching_ngram_size": cfg.max_ngram}
    return HFGenerator(cfg.name, stock_copy(ctx), ctx.sampling, extra)


def build_assisted(cfg: HFAssistedConfig, ctx: MethodContext) -> HFGenerator:
    from transformers import AutoModelForCausalLM

    from harness.drafting.draft_models import default_draft

    stock = stock_copy(ctx)
    folder = export_hf(cfg.draft.path or default_draft(ctx.target.info.name), ctx.target)
    assistant = AutoModelForCausalLM.from_pretrained(folder, dtype=stock.dtype).to(stock.device).eval()
    gc = assistant.generation_config
    gc.num_assistant_tokens = cfg.k
    gc.num_assistant_tokens_schedule = "constant"
    gc.assistant_confidence_threshold = cfg.confidence_threshold
    return HFGenerator(cfg.name, stock, ctx.sampling, {"assistant_model": assistant})


FAMILIES = [
    Family("hf_generate", HFGenerateConfig, build_generate),
    Family("hf_compiled", HFCompiledConfig, build_compiled),
    Family("hf_pld", HFPLDConfig, build_pld),
    Family("hf_assisted", HFAssistedConfig, build_assisted),
]
