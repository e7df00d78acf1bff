"""What Medusa and Hydra share: their config, the drafter that keeps the final states the heads read and grows a
static tree of top-k children, and the builder that loads a head and wraps it under the configured rule."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.drafting import tree_shapes
from harness.drafting.heads.head_files import head_path
from harness.drafting.heads.medusa_checkpoints import load_parallel_heads
from harness.drafting.heads.medusa_heads import restrict_outputs
from harness.drafting.vocab import frequency_vocab
from harness.engine.drafter import DecodeState, Drafter
from harness.engine.method import EngineGenerator, MethodContext
from harness.engine.proposal import Proposal
from harness.engine.verifiers import VerifyResult
from harness.model.kernels import apply_kernel, draft_dtype
from harness.model.target import ForwardOutput


@dataclass
class ParallelHeadsConfig(MethodConfig):
    """What Medusa and Hydra share: the head, its tree, the draft vocabulary and the typical rule's knobs."""

    head: Optional[str] = None  # HF id or folder; null = drafts/<model.name>/<family>/
    dtype: str = "auto"  # auto: bfloat16 where bf16 linears run natively, else the target's dtype
    choices: Any = "cpu6"  # a preset name in harness/tree_shapes.py (depth <= the number of heads) or rank paths
    vocab_size: Any = "auto"  # auto: 8192 tokens with a token_frequency.json, else all; null: all; or a number
    posterior_threshold: float = 0.09  # rule=typical: epsilon
    posterior_alpha: float = 0.3  # rule=typical: delta (about sqrt(epsilon))
    typical_bonus: str = "argmax"  # rule=typical: the token after the accepted path (argmax as the reference, or sample)


class ParallelHeadsDrafter(Drafter):
    """Shared by Medusa and Hydra: keep the final states the heads read, grow the static tree, top-k children."""

    hidden_layers = ("final",)

    def __init__(self, heads, choices: list[tuple[int, ...]]) -> None:
        self.heads = heads
        self.choices = choices
        self.vocab_ids = None

    def set_vocab(self, ids: torch.Tensor | None) -> None:
        self.vocab_ids = ids

    def _pick(self, logits: torch.Tensor, n: int) -> tuple[list[int], list[float], list[None]]:
        logp = torch.log_softmax(logits, dim=-1)
        top = torch.topk(logp, min(n, logp.numel()))
        idx = top.indices if self.vocab_ids is None else self.vocab_ids[top.indices]
        return idx.tolist(), top.values.tolist(), [None] * len(idx)

    def _committed(self, result: VerifyResult, out: ForwardOutput) -> torch.Tensor:
        return out.hidden["final"][[0] + [i + 1 for i in result.accepted]]

    def propose(self, state: DecodeState, max_depth: int) -> Proposal:
        tokens: list[int] = []
        parents: list[int] = []

        def add(token: int, parent: int, score: float, q) -> int:
            tokens.append(token)
            parents.append(parent)
            return len(tokens) - 1

        with torch.inference_mode():
            depth = min(max_depth, self.heads.num_heads)
            self.grow(state, depth, add, tokens, parents)
        return Proposal(tokens, parents)

    def grow(self, state: DecodeState, depth: int, add, tokens: list[int], parents: list[int]) -> None:
        raise NotImplementedError


def build_parallel_generator(cfg: ParallelHeadsConfig, ctx: MethodContext, drafter_cls: type) -> EngineGenerator:
    """Load the method's heads (``method.head`` or the committed default), restrict them to the draft vocabulary
    and wrap them in ``drafter_cls`` under the configured rule."""
    kind = cfg.family
    try:
        choices = tree_shapes.resolve_choices(cfg.choices)
    except ValueError as e:
        raise SpeclabError(f"method.choices: {e}") from None
    dtype = draft_dtype(cfg.dtype, ctx.target.dtype, ctx.target.device, ctx.engine.kernel)
    path = head_path(cfg, ctx, kind, f"python scripts/train_medusa.py --variant {kind}")
    heads = load_parallel_heads(path, kind, ctx.target, dtype).to(ctx.target.device)
    deepest = max(len(c) for c in choices)
    if deepest > heads.num_heads:
        raise SpeclabError(f"method.choices reaches depth {deepest} but the {kind} head has {heads.num_heads} heads; "
                           f"use a tree of depth <= {heads.num_heads} (e.g. method.choices=cpu6 or chain4)")
    vocab = frequency_vocab(cfg, path, ctx.target.vocab_size)
    restrict_outputs(heads, vocab, ctx.engine.kernel, dtype)
    apply_kernel(heads, ctx.engine.kernel)
    drafter = drafter_cls(heads, choices)
    drafter.set_vocab(None if vocab is None else vocab.ids.to(ctx.target.device))
    drafter.name = cfg.name
    drafter.draft_dtype = str(dtype).removeprefix("torch.")
    drafter.draft_vocab_size = ctx.target.vocab_size if vocab is None else len(vocab)
    options = ({"threshold": cfg.posterior_threshold, "alpha": cfg.posterior_alpha, "bonus": cfg.typical_bonus}
               if cfg.rule == "typical" else None)
    return EngineGenerator.with_rule(cfg.name, ctx.target, drafter, ctx.sampling, cfg.rule, options)
