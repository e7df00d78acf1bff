"""The runner: a method and the autoregressive baseline on the same prompts, interleaved, into a run folder.

Per prompt and repeat it runs every turn for both sides in alternating order (A B, then B A for the next prompt),
so drift on a shared machine hits both alike. Turn t > 1 is asked after the *baseline's* own earlier answers on
both sides, so method and baseline decode the same workload even when an earlier turn diverged.
``harness.api.run(cfg)`` is the way in (the CLI's too); it writes the reports after :meth:`Runner.run`.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig

from harness.bench.equivalence import equivalence
from harness.bench.progress import RunningFigures
from harness.bench.quality import nll_per_token
from harness.bench.rows import RowMaker
from harness.bench.timing import Timed, derive_seed, timed_generate, warn_if_busy
from harness.core.config import REPO
from harness.core.errors import SpeclabError
from harness.core.presets import method_node
from harness.core.registry import METHODS, TASKS
from harness.core.run_identity import config_hash
from harness.engine import cost_curve
from harness.engine.decoder import PromptResult
from harness.engine.method import Generator, MethodContext, autoregressive
from harness.engine.sampling import Sampling
from harness.loading.sources import load_configured
from harness.model import cuda_graphs
from harness.model.kernel_choice import choose_kernel
from harness.results.store import BaselineCache, ResultsStore

log = logging.getLogger("speclab")


class Runner:
    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        self.sampling = Sampling(cfg.temperature, cfg.top_k, cfg.top_p)
        if cfg.max_new_tokens <= 0:
            raise SpeclabError(f"max_new_tokens must be positive, got {cfg.max_new_tokens}; pass e.g. max_new_tokens=128")
        if cfg.repeats < 1:
            raise SpeclabError(f"repeats must be >= 1, got {cfg.repeats}")
        if cfg.baseline.mode not in ("interleaved", "cached", "none"):
            raise SpeclabError(f"unknown baseline.mode {cfg.baseline.mode!r}; choose interleaved, cached or none")
        torch.set_num_threads(int(cfg.engine.threads))
        torch.manual_seed(int(cfg.seed))
        out_dir = cfg.out_dir or str(REPO / "results" / "runs" / cfg.task.name / cfg.model.name / f"{cfg.method.name}-{config_hash(cfg)}")
        self.store = ResultsStore(out_dir, cfg)

        self.target = load_configured(cfg.model, cfg.engine.device)
        self._set_guidance(float(cfg.guidance))
        self.kernel_choice = choose_kernel(self.target, cfg.engine.kernel, log)
        self.kernel = self.kernel_choice.kernel
        cuda_graphs.enable(self.target, cfg.engine.cuda_graphs, list(cfg.engine.graph_widths), log)
        self.task = TASKS.build(cfg.task)
        self.samples = self.task.samples()

        ctx = MethodContext(self.target, self.sampling, cfg.engine, self.kernel)
        # the method, then the methods it is compared with in the same interleaved run (cfg.compare)
        nodes = [cfg.method] + [method_node(entry) for entry in cfg.compare]
        self.methods: list[tuple[Any, Generator]] = [(node, METHODS.build(node, ctx)) for node in nodes]
        names = [g.name for _, g in self.methods]
        if len(set(names)) != len(names):
            raise SpeclabError(f"methods in one run need distinct names, got {names}; set method.name or use other presets")
        peers = [g.name for _, g in self.methods if not g.uses_engine]
        if self.target.guided and peers:
            raise SpeclabError(f"guidance={cfg.guidance}: {', '.join(peers)} decode with transformers' generate(), which "
                               "runs no unconditional row; remove them from the run or set guidance=1")
        self.baseline = autoregressive(self.target, self.sampling) if cfg.baseline.mode != "none" else None
        self.synthetic = None
        if cfg.synthetic.mode != "off":
            from harness.bench.synthetic import Synthetic

            if cfg.baseline.mode == "cached":
                raise SpeclabError("synthetic acceptance runs its own baseline; set baseline=interleaved (or none)")
            self.synthetic = Synthetic(cfg.synthetic)
            self.methods = [(node, self.synthetic.wrap(gen)) for node, gen in self.methods]
            self.baseline = self.synthetic.wrap(self.baseline) if self.baseline is not None else None
        self.cache = BaselineCache(cfg.baseline.cache_dir) if cfg.baseline.mode == "cached" else None
        self.rows = RowMaker(cfg, self.target, self.kernel_choice, self.store.hash, self.task, self.synthetic,
                             self.baseline is not None)
        self.curve = self._verify_cost_curve()
        self._warm: set[int] = set()
        self.lengths = self._check_context()  # (shortest, longest) prompt + budget of any generation
        self.longest_context = self.lengths[1] + 64  # the static path's buffers are sized to it once

    # -- set-up -----------------------------------------------------------------------------------------
    def _set_guidance(self, scale: float) -> None:
        if scale == 1.0:
            return
        from harness.loading.digits import unconditional_prompt

        if scale < 0:
            raise SpeclabError(f"guidance must be >= 0 (1 = off, 0 = unconditional), got {scale}")
        rule = unconditional_prompt(self.target.tokenizer)
        if rule is None:
            raise SpeclabError(f"guidance={scale}: model {self.cfg.model.name!r} has no unconditional prompt; classifier-"
                               "free guidance needs a model trained with its condition dropped (model=digits-ar), or guidance=1")
        self.target.set_guidance(scale, rule)

    def _verify_cost_curve(self) -> cost_curve.Curve | None:
        mode = self.cfg.engine.verify_cost
        if mode not in ("cached", "measure", "off"):
            raise SpeclabError(f"unknown engine.verify_cost {mode!r}; choose cached, measure or off")
        if mode == "off":
            return None
        threads = int(self.cfg.engine.threads)
        if mode == "measure":
            return cost_curve.Curve(cost_curve.cached_or_measured(self.target, self.kernel, threads, log))
        ms = cost_curve.load(cost_curve.curve_key(self.target, self.kernel, threads, cost_curve.CACHE_LEN))
        return cost_curve.Curve(ms) if ms else None

    def _check_context(self) -> tuple[int, int]:
        """Refuse prompts that cannot fit the model's context; returns the least and the most tokens (prompt plus
        budget) a generation of the run can hold: the shortest first turn, and every turn's text with empty
        answers plus the answers' budget. Shapes that depend on them are prepared once, before any timing: the
        static path's buffers, a compiled peer's cache sizes."""
        limit, shortest, longest = self.target.max_positions, 1 << 62, 0
        for s in self.samples:
            for t in range(len(s.turns)):
                # empty earlier answers: a lower bound; run_prompt checks again with the real history
                n = len(self.task.render(s, t, [""] * t, self.target.tokenizer))
                if n == 0:
                    raise SpeclabError(
                        f"prompt {s.id!r} of task {self.cfg.task.name!r} renders to no tokens (turn {t + 1} is empty); "
                        "remove it from the data, or keep task.chat=true / set task.system_prompt so it has a prefix"
                    )
                if n + self.cfg.max_new_tokens > limit:
                    where = f"prompt {s.id!r}" + (f" (turn {t + 1}, before any answer)" if t else "")
                    raise SpeclabError(
                        f"{where} of task {self.cfg.task.name!r} has {n} tokens; with max_new_tokens="
                        f"{self.cfg.max_new_tokens} it exceeds the model's context of {limit}; lower max_new_tokens "
                        f"or filter it out (task.groups / task.categories{' / task.max_turns=1' if t else ''})"
                    )
                longest = max(longest, n + (t + 1) * self.cfg.max_new_tokens)
                shortest = min(shortest, n + self.cfg.max_new_tokens)
        return shortest, longest

    # -- the loop ---------------------------------------------------------------------------------------
    def warmup(self, gen: Generator | None = None) -> None:
        """Untimed generations before the first timed one of each generator (all of them when ``gen`` is None;
        in cached mode the baseline waits for its first cache miss)."""
        if not self.cfg.engine.warmup:
            return
        ids = self.task.render(self.samples[0], 0, [], self.target.tokenizer)
        n = min(self.cfg.engine.warmup_tokens, self.cfg.max_new_tokens)
        cached_baseline = self.baseline is None or self.cache is not None
        gens = [gen] if gen is not None else [g for _, g in self.methods] + ([] if cached_baseline else [self.baseline])
        for g in gens:
            if id(g) not in self._warm:
                if self.target.static is not None and g.uses_engine:  # every width's graph, before any timing
                    self.target.static.record(self.longest_context, g.drafter.hidden_layers)
                g.warm_up(ids, n, torch.Generator().manual_seed(0) if not self.sampling.greedy else None, self.lengths)
                self._warm.add(id(g))

    def run_prompt(self, index: int, sample: Any, repeat: int) -> tuple[list[dict], list[dict]]:
        tok = self.target.tokenizer
        rows: list[dict] = []
        texts: list[dict] = []
        history: list[str] = []
        sides: list[int | None] = ([None] if self.baseline is not None else []) + list(range(len(self.methods)))
        shift = (index + repeat) % len(sides)  # rotate who goes first: A B, then B A, ...
        sides = sides[shift:] + sides[:shift]
        for turn in range(len(sample.turns)):
            prompt_ids = self.task.render(sample, turn, history, tok)
            if len(prompt_ids) + self.cfg.max_new_tokens > self.target.max_positions:
                raise SpeclabError(
                    f"turn {turn + 1} of prompt {sample.id!r} has {len(prompt_ids)} tokens with its history; with "
                    f"max_new_tokens={self.cfg.max_new_tokens} it exceeds the context of {self.target.max_positions}; "
                    "lower max_new_tokens or set task.max_turns=1"
                )
            seed = None if self.sampling.greedy else derive_seed(self.cfg.seed, sample.id, turn, repeat)
            key = self.rows.cache_key(sample.id, turn, repeat, prompt_ids, seed) if self.cache is not None else None
            cached = self.cache.get(key) if key is not None else None
            budget = self.cfg.max_new_tokens
            if self.synthetic is not None:
                budget = self.synthetic.prepare(sample.id, turn + 1, repeat, budget)
            timed: dict[int | None, Timed] = {}
            for side in sides:
                if side is None and cached is not None:
                    continue
                gen = self.baseline if side is None else self.methods[side][1]
                self.warmup(gen)
                timed[side] = timed_generate(gen, prompt_ids, budget, seed)

            b_row = b_ids = b_top2 = None
            if self.baseline is not None:
                if cached is not None:
                    b_row = self.rows.from_cache(cached["row"])
                    b_text = {**cached["text"], "repeat": repeat}
                    b_ids, b_top2 = list(b_text["token_ids"]), cached.get("top2")
                else:
                    b_row = self.rows.row("baseline", None, self.baseline, timed[None], sample, turn, repeat, seed,
                                          sides.index(None))
                    b_ids, b_top2 = timed[None].result.token_ids, timed[None].result.top2
                    b_text = self.rows.text(sample, turn, repeat, "baseline", self.baseline.name, b_ids)
                    if self.cache is not None:
                        self.cache.put(key, b_row, b_text, top2=b_top2)
            if b_row is not None and self.cfg.nll:
                b_row["target_nll"] = nll_per_token(self.target, prompt_ids, b_ids)
            for i, (node, gen) in enumerate(self.methods):
                m_row = self.rows.row("method", node, gen, timed[i], sample, turn, repeat, seed, sides.index(i))
                m_ids = timed[i].result.token_ids
                if self.cfg.nll:
                    m_row["target_nll"] = nll_per_token(self.target, prompt_ids, m_ids)
                if b_row is not None:
                    self._compare(m_row, m_ids, b_row, b_ids, b_top2, prompt_ids)
                    if self.curve is not None and gen.uses_engine:  # peers run other kernels: no bound
                        m_row.update(self._bound(timed[i].result, b_row))
                rows.append(m_row)
                texts.append(self.rows.text(sample, turn, repeat, "method", gen.name, m_ids))
            if b_row is not None:
                rows.append(b_row)
                texts.append(b_text)
            # later turns follow the baseline's answer (the main method's when there is no baseline)
            history.append(tok.decode(b_ids if b_ids is not None else timed[0].result.token_ids, skip_special_tokens=True))
        return rows, texts

    def _compare(self, m_row: dict, m_ids: list[int], b_row: dict, b_ids: list[int], b_top2: list | None,
                 prompt_ids: list[int]) -> None:
        m_row["speedup"] = (m_row["tokens_per_s"] or 0.0) / b_row["tokens_per_s"] if b_row.get("tokens_per_s") else None
        for key in ("equivalent", "first_divergence", "divergence_margin", "near_tie_threshold", "near_tie"):
            m_row[key] = None
        if not self.sampling.greedy or self.synthetic is not None:
            return  # sampled outputs differ by design (losslessness is checked distributionally, in the tests);
            # synthetic acceptance commits drafts the target did not choose
        m_row.update(equivalence(self.target, prompt_ids, m_ids, b_ids, b_top2))

    def _bound(self, r: PromptResult, b_row: dict[str, Any]) -> dict[str, Any]:
        return cost_curve.speedup_bound(self.curve, r.prefill_time, r.drafted, r.new_tokens, int(b_row["steps"]),
                                        b_row["verify_time_s"], b_row.get("tokens_per_s"))

    def run(self) -> pd.DataFrame:
        """Every prompt and repeat not yet in the run folder; returns all of the folder's rows."""
        from tqdm.auto import tqdm

        done = self.store.done()
        todo = [(i, s, r) for i, s in enumerate(self.samples) for r in range(self.cfg.repeats) if (s.id, r) not in done]
        total = len(self.samples) * self.cfg.repeats
        names = [g.name for _, g in self.methods]
        if todo:
            if self.cfg.engine.load_check:
                warn_if_busy()
            if self.cfg.batch_size == 1:  # batched sides warm up on a batch of their own (harness/bench/batched.py)
                self.warmup()
        figures = RunningFigures(names, self.store.rows)
        desc = ", ".join(names) + (" vs ar" if self.baseline is not None else "")
        bar = tqdm(total=total, initial=total - len(todo), desc=desc, unit="prompt", disable=not self.cfg.progress,
                   file=sys.stderr, dynamic_ncols=True)
        try:
            if self.cfg.batch_size > 1:
                from harness.bench.batched import BatchedRuns

                batched = BatchedRuns(self)
                units = [(wave, lambda i=i, wave=wave: batched.run_wave(i, wave)) for i, wave in enumerate(batched.waves(todo))]
            else:
                units = [([item], lambda item=item: [self.run_prompt(*item)]) for item in todo]
            for items, work in units:
                for rows, texts in work():
                    self.store.add(rows, texts)
                    figures.add(rows)
                bar.set_postfix_str(str(figures))
                bar.update(len(items))
        finally:
            bar.close()
            self.store.consolidate()
        return self.store.frame()
