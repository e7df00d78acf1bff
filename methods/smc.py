"""SMC-SD (Emara et al., 2026, arXiv 2604.15672; reference code abdelfattah-lab/smcsd on SGLang): speculative decoding
by sequential Monte Carlo instead of rejection. Approximate: ``lossless=false``.

N particles (``particles``) are cloned from the prompt's prefill KV (one first token, drawn from the target, for
all). Every cycle each particle drafts ``gamma`` tokens from the draft model at ``draft_temperature``; the target
scores every particle's draft in one batched forward (N rows of gamma + 1 tokens) and every drafted token is kept,
plus one bonus token drawn from the target at ``target_temperature``. Each particle's log-weight grows by
``sum_k log p_T(x_k) - log q(x_k)`` over its drafted tokens (p_T: the target at its temperature; q: the draft's
distribution the token was drawn from; tokens past a particle's stop token do not count). When the effective sample
size falls under ``resample_threshold`` x N the particles are resampled (``systematic``, or ``multinomial``): each
new particle copies its ancestor's tokens and KV rows, and the weights restart at zero. The answer is the particle of
largest log-weight (``select=argmax``, as the reference returns it) or one drawn in proportion to the weights
(``select=sample``).

A cycle commits gamma + 1 tokens for N particles at the price of gamma draft forwards and one target forward over
N x (gamma + 1) tokens: the particles are a batch, and what they buy is quality (the resampling keeps the particles
the target likes), not acceptance. Rows count a step per target forward; tau is gamma + 1 by construction.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Optional

import torch

from harness.core.config import MethodConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from harness.drafting import particles
from harness.drafting.batch_chains import draft_chains
from harness.drafting.draft_models import DraftModelConfig, load_draft
from harness.engine.decoder import PromptResult
from harness.engine.method import Generator, MethodContext
from harness.engine.sampling import Sampling, sample, warp
from harness.model.batch_forward import forward_rows, new_batch_cache, unsupported
from harness.model.device import synchronize
from harness.model.kernels import apply_kernel
from harness.model.target import TargetModel


@dataclass
class SMCConfig(MethodConfig):
    name: str = "smc"
    family: str = "smc"
    draft: DraftModelConfig = field(default_factory=DraftModelConfig)
    particles: int = 4
    gamma: int = 4  # draft tokens per particle per cycle
    draft_temperature: Optional[float] = None  # null: the run's temperature
    target_temperature: Optional[float] = None  # null: the run's temperature
    resample_threshold: float = 0.5  # resample when ESS < this x particles (0: never)
    resampling: str = "systematic"  # systematic | multinomial
    select: str = "argmax"  # argmax (the reference's answer) | sample (in proportion to the weights)


@dataclass
class _Particle:
    tokens: list[int]  # committed answer tokens
    pending: list[int]  # committed tokens the draft model has not read yet
    finished: bool = False


class SMCGenerator(Generator):
    lossless = False
    acceptance_rule = "smc"

    def __init__(self, cfg: SMCConfig, target: TargetModel, draft: TargetModel, sampling: Sampling) -> None:
        self.name, self.cfg, self.target, self.draft = cfg.name, cfg, target, draft
        self.draft_sampling = Sampling(cfg.draft_temperature if cfg.draft_temperature is not None else sampling.temperature,
                                       sampling.top_k, sampling.top_p)
        self.target_sampling = Sampling(cfg.target_temperature if cfg.target_temperature is not None else sampling.temperature,
                                        sampling.top_k, sampling.top_p)
        self.stop_ids = target.stop_ids

    def _commit(self, p: _Particle, tokens: list[int], budget: int) -> int:
        """Append up to the particle's stop token or the budget; returns how many of ``tokens`` were kept."""
        room = budget - len(p.tokens)
        for i, tok in enumerate(tokens[:room]):
            p.tokens.append(tok)
            if tok in self.stop_ids:
                p.finished = True
                return i + 1
        p.finished = p.finished or len(p.tokens) >= budget
        return min(len(tokens), room)

    @torch.inference_mode()
    def generate(self, prompt_ids: list[int], max_new_tokens: int, generator: torch.Generator | None) -> PromptResult:
        n, gamma = self.cfg.particles, self.cfg.gamma
        target, draft, device = self.target, self.draft, self.target.device
        synchronize(device)
        t_start = time.perf_counter()
        capacity = len(prompt_ids) + max_new_tokens + 2 * (gamma + 2)
        caches = {m: new_batch_cache(m, n, capacity) for m in (target, draft)}
        outs = {}
        for model, cache in caches.items():  # one prefill each, cloned into every particle's row
            outs[model] = forward_rows(model, cache, range(1), [prompt_ids], [None], last_logits=True)[0]
            cache.keep(0, range(len(prompt_ids)))
            cache.copy_rows([0] * (n - 1), list(range(1, n)))
        first = sample(warp(outs[target].logits[-1], self.target_sampling), generator)
        group = [_Particle([], [first]) for _ in range(n)]
        for p in group:
            self._commit(p, [first], max_new_tokens)
        synchronize(device)
        t_prefill = time.perf_counter()
        result = PromptResult(len(prompt_ids), [], "", steps=1, prefill_time=t_prefill - t_start)
        log_w = torch.zeros(n, dtype=torch.float64)
        resamples, ess = 0, []
        while not all(p.finished for p in group):
            t0 = time.perf_counter()
            drafts, log_q = self._draft(group, caches[draft], gamma, generator)
            synchronize(device)
            t1 = time.perf_counter()
            scored = forward_rows(target, caches[target], range(n), [[p.tokens[-1]] + d for p, d in zip(group, drafts)],
                                  [None] * n)
            for row, (p, d, out) in enumerate(zip(group, drafts, scored)):
                caches[target].keep(row, range(gamma + 1))
                if p.finished:  # a finished particle rides along: its tokens and weight stay as they are
                    p.pending = []
                    continue
                log_p = torch.log(warp(out.logits[:gamma], self.target_sampling))  # p_T, warped as the run samples
                bonus = sample(warp(out.logits[gamma], self.target_sampling), generator)
                kept = self._commit(p, d + [bonus], max_new_tokens)
                counted = min(kept, gamma)  # drafted tokens up to the stop token or the budget
                log_w[row] += float((log_p[torch.arange(counted), torch.tensor(d[:counted], dtype=torch.long)].double()
                                     - log_q[row, :counted]).sum())
                p.pending = [d[-1], bonus]
            ess.append(particles.effective_size(log_w))
            if self.cfg.resample_threshold > 0 and ess[-1] < self.cfg.resample_threshold * n:
                parents = particles.ancestors(log_w, self.cfg.resampling, generator)
                for cache in caches.values():
                    cache.copy_rows(parents, list(range(n)))
                group = [_Particle(list(group[a].tokens), list(group[a].pending), group[a].finished) for a in parents]
                log_w.zero_()
                resamples += 1
            synchronize(device)
            t2 = time.perf_counter()
            result.steps += 1
            result.drafted.append(gamma)
            result.accepted.append(gamma)
            result.reached.append(gamma)
            result.draft_time += t1 - t0
            result.verify_time += t2 - t1
        if self.cfg.select == "argmax":
            best = int(torch.argmax(log_w))
        else:
            best = int(torch.multinomial(particles.normalized(log_w).float(), 1, generator=generator))
        chosen = group[best]
        result.wall_time = time.perf_counter() - t_start
        result.token_ids = chosen.tokens
        result.emitted = _emitted(len(chosen.tokens), gamma, result.steps - 1)
        result.stop_reason = "eos" if chosen.tokens and chosen.tokens[-1] in self.stop_ids else "max_new_tokens"
        result.extra.update({"smc_particles": n, "smc_resamples": resamples,
                             "smc_ess_mean": sum(ess) / len(ess) if ess else float(n)})
        return result

    def _draft(self, group: list[_Particle], cache, gamma: int, generator) -> tuple[list[list[int]], torch.Tensor]:
        """``gamma`` draft tokens per particle at the draft temperature, and the log-probability each was drawn with.
        A particle's draft cache lacks its pending tokens (the last draft and the bonus of its previous cycle: the
        reference's deferral); a finished particle is fed its last token and drafts along."""
        log_q = torch.zeros(len(group), gamma, dtype=torch.float64)
        step = [0] * len(group)

        def choose(row: int, logits: torch.Tensor) -> int:
            q = warp(logits, self.draft_sampling)
            x = sample(q, generator)
            log_q[row, step[row]] = float(torch.log(q[x]))
            step[row] += 1
            return x

        feeds = [p.pending or [p.tokens[-1]] for p in group]
        return draft_chains(self.draft, cache, feeds, [gamma] * len(group), choose), log_q


def _emitted(tokens: int, gamma: int, cycles: int) -> list[int]:
    """Tokens committed per cycle for the chosen particle (gamma + 1 a cycle, the first token at the prefill)."""
    out, left = [], tokens - 1
    for _ in range(cycles):
        out.append(max(0, min(gamma + 1, left)))
        left -= out[-1]
    return out


def build(cfg: SMCConfig, ctx: MethodContext) -> SMCGenerator:
    if cfg.particles < 1 or cfg.gamma < 1:
        raise SpeclabError(f"smc needs particles >= 1 and gamma >= 1, got {cfg.particles} and {cfg.gamma}")
    if not 0 <= cfg.resample_threshold <= 1:
        raise SpeclabError(f"method.resample_threshold must be in [0, 1], got {cfg.resample_threshold}")
    if cfg.resampling not in particles.SCHEMES:
        raise SpeclabError(f"unknown method.resampling {cfg.resampling!r}; choose {' or '.join(particles.SCHEMES)}")
    if cfg.select not in ("argmax", "sample"):
        raise SpeclabError(f"unknown method.select {cfg.select!r}; choose argmax or sample")
    for which, t in (("draft", cfg.draft_temperature), ("target", cfg.target_temperature)):
        if (t if t is not None else ctx.sampling.temperature) <= 0:
            raise SpeclabError(f"smc samples its particles: the {which} temperature must be > 0; set temperature=0.7 "
                               f"(the published setting) or method.{which}_temperature")
    problem = unsupported(ctx.target)
    if problem is not None:
        raise SpeclabError(f"smc decodes its particles as a batch, which {ctx.target.info.name} cannot ({problem})")
    draft = load_draft(cfg.draft.path, ctx.target, cfg.draft.dtype)
    apply_kernel(draft.model, ctx.engine.kernel)
    return SMCGenerator(cfg, ctx.target, draft, ctx.sampling)


FAMILIES = [Family("smc", SMCConfig, build)]
