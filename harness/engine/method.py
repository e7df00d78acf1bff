"""What the runner times: anything that turns a prompt into a PromptResult.

Engine methods are a Drafter driven by the shared Decoder; peers (transformers' own generate) implement
``generate`` themselves but are timed by the same runner and produce the same PromptResult.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from harness.core.errors import SpeclabError
from harness.core.registry import METHODS
from harness.engine.batch_decoder import BatchDecoder, BatchResult
from harness.engine.decoder import Decoder, PromptResult
from harness.engine.drafter import Drafter, NoDraft
from harness.engine.sampling import Sampling
from harness.engine.verifiers import Verifier, make_verifier
from harness.model.target import TargetModel


class Generator:
    name = "generator"
    lossless = True
    acceptance_rule = "greedy"
    uses_engine = False  # whether its target forwards are the engine's, priced by the engine's c(k)

    def generate(self, prompt_ids: list[int], max_new_tokens: int, generator: torch.Generator | None) -> PromptResult:
        raise NotImplementedError

    def warm_up(self, prompt_ids: list[int], max_new_tokens: int, generator: torch.Generator | None,
                lengths: tuple[int, int]) -> None:
        """Untimed work before the first timed generation: one generation of ``prompt_ids``. ``lengths`` bounds
        prompt + budget over the timed generations to come, for a generator whose shapes depend on it."""
        self.generate(prompt_ids, max_new_tokens, generator)

    def without_stop_tokens(self) -> "Generator":
        """The same generator generating the whole token budget (synthetic acceptance: every side the same length)."""
        raise SpeclabError(f"{self.name!r} cannot ignore stop tokens; compare engine methods, hf_generate or hf_compiled")

    def generate_batch(self, prompts: list[list[int]], max_new_tokens: int, generators: list[torch.Generator | None],
                       batch_size: int, refill: bool = True) -> BatchResult:
        """Every prompt decoded ``batch_size`` at a time (harness/engine/batch_decoder.py)."""
        raise SpeclabError(f"{self.name!r} does not decode in batches; run it with batch_size=1, or compare engine "
                           "methods (ar, pld, sps, eagle2, sam, recycling, ...)")


class EngineGenerator(Generator):
    """A drafter driven by the shared decoding loop and verified by ``verifier``."""

    uses_engine = True

    def __init__(self, name: str, target: TargetModel, drafter: Drafter, verifier: Verifier,
                 stop_ids: set[int] | None = None, acceptance_rule: str | None = None) -> None:
        self.name = name
        self.target = target
        self.drafter = drafter
        self.verifier = verifier
        self.decoder = Decoder(target, verifier, stop_ids)
        self.acceptance_rule = acceptance_rule or verifier.name
        self.lossless = verifier.lossless and getattr(drafter, "lossless", True)

    @classmethod
    def with_rule(cls, name: str, target: TargetModel, drafter: Drafter, sampling: Sampling, rule: str = "auto",
                  rule_options: dict[str, Any] | None = None) -> "EngineGenerator":
        """The generator a method config describes: its drafter verified by ``method.rule`` at the run's sampling."""
        from harness.loading.digits import token_neighbours

        try:
            verifier = make_verifier(sampling, rule, token_neighbours(target.tokenizer), **(rule_options or {}))
        except (ValueError, TypeError) as e:
            raise SpeclabError(f"method.rule={rule}: {e}") from None
        # rows name the rule with its settings ("lantern k=3 delta=0.2"), so lossy settings stay apart
        named = " ".join(rule.split()) if rule.split()[0].split(":")[0] == verifier.name else verifier.name
        return cls(name, target, drafter, verifier, acceptance_rule=named)

    def without_stop_tokens(self) -> "EngineGenerator":
        return EngineGenerator(self.name, self.target, self.drafter, self.verifier, set(), self.acceptance_rule)

    def generate(self, prompt_ids, max_new_tokens, generator):
        return self.decoder.generate(prompt_ids, self.drafter, max_new_tokens, generator)

    def generate_batch(self, prompts, max_new_tokens, generators, batch_size, refill=True):
        decoder = BatchDecoder(self.target, self.verifier, batch_size, refill, self.decoder.stop_ids)
        return decoder.generate(prompts, self.drafter, max_new_tokens, generators)


def autoregressive(target: TargetModel, sampling: Sampling, name: str = "ar", rule: str = "auto") -> EngineGenerator:
    """Plain decoding in the engine: the shared loop with a drafter that proposes nothing (every run's baseline)."""
    return EngineGenerator.with_rule(name, target, NoDraft(), sampling, rule)


@dataclass
class MethodContext:
    """What a method builder may use: the loaded target and the run's decoding and engine settings."""

    target: TargetModel
    sampling: Sampling
    engine: Any  # EngineConfig
    # the linear kernel the target runs (harness/model/kernel_choice.py: auto is decided per host); None: what
    # engine.kernel resolves to without timing (unit tests that build methods on a bare target)
    kernel: str | None = None

    def __post_init__(self) -> None:
        if self.kernel is None:
            from harness.model.kernels import resolve_kernel

            self.kernel = resolve_kernel(self.engine.kernel, self.target.dtype, self.target.device)

    def batch_cost(self) -> Callable[[float, float], float]:
        """Milliseconds of a batched forward of B rows x k tokens on this machine (harness/engine/batch_cost.py;
        measured once, then cached), for methods that size drafts under batching."""
        import logging

        from harness.engine import batch_cost

        ms = batch_cost.cached_or_measured(self.target, self.kernel, int(self.engine.threads), logging.getLogger("speclab"))
        return batch_cost.Surface(ms).ms

    def verify_cost(self) -> Callable[[int], float]:
        """c(k) of this target on this machine with the run's kernel and threads (measured once, then cached),
        for methods that size their drafts by what a verification costs."""
        import logging

        from harness.engine import cost_curve

        ms = cost_curve.cached_or_measured(self.target, self.kernel, int(self.engine.threads), logging.getLogger("speclab"))
        return cost_curve.Curve(ms)


def inner_drafter(spec: str, ctx: MethodContext, owner: str) -> Drafter:
    """The drafter of the engine method ``spec`` (a conf/method preset with optional overrides, ``"recycling
    total_tokens=8"``), for a method that wraps another (``sam``'s aux, ``adaptive``'s inner)."""
    from harness.core.presets import method_node

    node = method_node(spec)
    if node.family == owner:
        raise SpeclabError(f"{owner} cannot wrap itself; choose another method (pld, recycling, eagle2, ...)")
    built = METHODS.build(node, ctx)
    if not isinstance(built, EngineGenerator):
        raise SpeclabError(f"{spec!r} is not an engine method (peers draft inside generate()); "
                           "choose pld, recycling, eagle2, ...")
    return built.drafter
