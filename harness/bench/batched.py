"""The runner's batched mode (``batch_size`` > 1): every side decodes the same prompts ``batch_size`` at a time.

Prompts go in waves of ``WAVE * batch_size``: per wave and turn each side (the batched baseline, every method)
decodes all of the wave's prompts through its batch decoder, in an order that rotates from wave to wave and turn to
turn, so drift hits every side alike; a wave's rows are stored when it ends (a killed run resumes at the next wave).
Rows are the batch-1 rows plus the batch's own figures: ``batch_size``, ``batch_mode``, ``batch_tokens_per_s`` (the
throughput of the batch the row was decoded in), ``batch_wall_time_s`` and ``latency_s`` (the request's time from the
batch's start to its last token). A row's ``speedup`` is its own tokens/s over the batched baseline's for the same
prompt, as at batch 1.

Greedy rows are checked against each prompt's batch-1 output (an untimed batch-1 ``ar`` generation, cached per model,
kernel, prompt and budget under ~/.cache/speclab/references/): a batch changes what shapes the kernels see, so a row
may part from it at a numerical tie, which is reported with its margin; any other divergence is a bug. Turn t > 1 is
asked after the batch-1 reference's answer on every side.
"""

from __future__ import annotations

import hashlib
import json
import resource
from typing import Any

import torch

from harness.bench.equivalence import equivalence
from harness.bench.quality import nll_per_token
from harness.bench.timing import Timed, derive_seed
from harness.core.diskcache import cache_dir, keyed_cache_path, read_keyed, write_keyed
from harness.core.errors import SpeclabError
from harness.core.hostinfo import LoadMonitor
from harness.engine.method import Generator, autoregressive

WAVE = 4  # prompts per wave, in batches: enough for continuous batching to refill, few enough to resume often
MODES = ("continuous", "drain")


class BatchedRuns:
    def __init__(self, runner: Any) -> None:
        """``runner``: the run's Runner (its config, target, sides, task, row maker and warm-up record)."""
        cfg = runner.cfg
        if cfg.batch_mode not in MODES:
            raise SpeclabError(f"unknown batch_mode {cfg.batch_mode!r}; choose continuous or drain")
        if cfg.baseline.mode == "cached" or runner.synthetic is not None:
            raise SpeclabError(f"batch_size={cfg.batch_size} times its own batched baseline; set baseline=interleaved "
                               "(and synthetic.mode=off)")
        self.runner, self.cfg = runner, cfg
        self.size, self.refill = int(cfg.batch_size), cfg.batch_mode == "continuous"
        self.reference = autoregressive(runner.target, runner.sampling) if runner.sampling.greedy else None

    def waves(self, todo: list[tuple[int, Any, int]]) -> list[list[tuple[int, Any, int]]]:
        per = WAVE * self.size
        by_repeat: dict[int, list] = {}
        for item in todo:
            by_repeat.setdefault(item[2], []).append(item)
        return [items[i:i + per] for _, items in sorted(by_repeat.items()) for i in range(0, len(items), per)]

    def _reference(self, prompt_ids: list[int]) -> tuple[list[int], list | None]:
        """The prompt's batch-1 greedy output and its steps' top-2 logits (computed once, then read back)."""
        target = self.runner.target
        key = {"weights_hash": target.info.weights_hash, "dtype": target.info.dtype, "kernel": self.runner.kernel,
               "attention": target.model.config._attn_implementation, "max_new_tokens": int(self.cfg.max_new_tokens),
               "prompt_sha": hashlib.sha256(json.dumps(prompt_ids).encode()).hexdigest()[:16]}
        path = keyed_cache_path(cache_dir() / "references", key)
        found = read_keyed(path, key)
        if found:
            return found["token_ids"], found["top2"]
        result = self.reference.generate(prompt_ids, self.cfg.max_new_tokens, None)
        write_keyed(path, key, {"token_ids": result.token_ids, "top2": result.top2})
        return result.token_ids, result.top2

    def _timed_batch(self, gen: Generator, prompts: list[list[int]], seeds: list[int | None]):
        generators = [torch.Generator().manual_seed(s) if s is not None else None for s in seeds]
        with LoadMonitor() as mon:
            batch = gen.generate_batch(prompts, self.cfg.max_new_tokens, generators, self.size, self.refill)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        return batch, mon.result.foreign_load, rss

    def run_wave(self, index: int, wave: list[tuple[int, Any, int]]) -> list[tuple[list[dict], list[dict]]]:
        """Every turn of the wave's prompts on every side; returns (rows, texts) per prompt, in the wave's order."""
        run, cfg, tok = self.runner, self.cfg, self.runner.target.tokenizer
        per_prompt: list[tuple[list[dict], list[dict]]] = [([], []) for _ in wave]
        history: list[list[str]] = [[] for _ in wave]
        sides: list[int | None] = [None] + list(range(len(run.methods)))
        for turn in range(max(len(s.turns) for _, s, _ in wave)):
            live = [k for k, (_, s, _) in enumerate(wave) if turn < len(s.turns)]
            prompts = [run.task.render(wave[k][1], turn, history[k], tok) for k in live]
            seeds = [None if run.sampling.greedy else derive_seed(cfg.seed, wave[k][1].id, turn, wave[k][2]) for k in live]
            references = [self._reference(p) for p in prompts] if self.reference is not None else None
            shift = (index + turn) % len(sides)  # rotate who goes first, wave to wave and turn to turn
            order = sides[shift:] + sides[:shift]
            batches = {}
            for side in order:
                gen = run.baseline if side is None else run.methods[side][1]
                if id(gen) not in run._warm:
                    gen.generate_batch(prompts[: self.size], min(cfg.engine.warmup_tokens, cfg.max_new_tokens),
                                       [None] * min(self.size, len(prompts)), self.size, self.refill)
                    run._warm.add(id(gen))
                batches[side] = self._timed_batch(gen, prompts, seeds)
            for j, k in enumerate(live):
                _, sample, repeat = wave[k]
                rows, texts = per_prompt[k]
                b_row = None
                for side in [None] + list(range(len(run.methods))):
                    batch, load, rss = batches[side]
                    gen, node = (run.baseline, None) if side is None else (run.methods[side][1], run.methods[side][0])
                    result = batch.results[j]
                    row = run.rows.row("baseline" if side is None else "method", node, gen, Timed(result, load, rss),
                                       sample, turn, repeat, seeds[j], order.index(side))
                    row.update({"batch_size": self.size, "batch_mode": cfg.batch_mode, "batch_id": f"{index}:{turn}",
                                "batch_tokens_per_s": batch.tokens_per_s, "batch_wall_time_s": batch.wall_time,
                                "latency_s": batch.latency[j], "history_source": None if turn == 0 else "reference"})
                    if side is None:
                        b_row = row
                    else:
                        row["speedup"] = (row["tokens_per_s"] or 0.0) / b_row["tokens_per_s"] if b_row["tokens_per_s"] else None
                    if cfg.nll:
                        row["target_nll"] = nll_per_token(run.target, prompts[j], result.token_ids)
                    if references is not None:
                        ref_ids, ref_top2 = references[j]
                        row.update(equivalence(run.target, prompts[j], result.token_ids, ref_ids, ref_top2))
                    rows.append(row)
                    texts.append(run.rows.text(sample, turn, repeat, row["role"], gen.name, result.token_ids))
                answer = references[j][0] if references is not None else batches[None][0].results[j].token_ids
                history[k].append(tok.decode(answer, skip_special_tokens=True))
        return per_prompt
