"""The runner: a method and the autoregressive baseline on the same prompts, interleaved, into a run folder.

``run(cfg) -> DataFrame`` is the Python API behind ``python run.py``. Per prompt and repeat it runs every
turn for both sides in alternating order (A B, then B A for the next prompt), so drift on a shared
machine hits both alike. Turn t > 1 is asked after the *baseline's* own earlier answers on both sides,
so method and baseline decode the same workload even when an earlier turn diverged.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import resource
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from omegaconf import DictConfig, OmegaConf

from harness.core import hostinfo
from harness.model import cuda_graphs as static_forward
from harness.engine import cost_curve as vc
from harness.core.config import REPO, RunConfig
from harness.engine.decoder import PromptResult
from harness.core.errors import SpeclabError
from harness.engine.method import METHODS, Generator, MethodContext
from harness.core.hostinfo import LoadMonitor
from harness.model.kernels import apply_kernel, resolve_kernel, warn_if_slow_one_row
from harness.loading.sources import load_configured
from harness.results.metrics import COMPILED_PEER, first_divergence, generation_stats, summarize
from harness.model.target import TargetModel
from harness.results.store import BaselineCache, ResultsStore, config_hash
from harness.engine.sampling import Sampling

log = logging.getLogger("speclab")

NEAR_TIE_MARGIN = {"float32": 1e-3, "float16": 2e-2, "bfloat16": 1e-1}
LOAD_WARNING = 0.25  # cores used by other processes during a timed generation
# The code a baseline row is timed and computed by: its hash keys the baseline cache and is in every row.
ENGINE_SOURCES = ("harness", "methods/ar.py")
# Engine settings that change neither a baseline's output nor its timing.
UNTIMED_ENGINE_KEYS = ("load_check", "verify_cost")
# Row columns that say when, where and with what code a row was measured; a cached baseline row keeps its own.
PROVENANCE = ("git_sha", "code_hash", "versions", "host", "cpu", "cpu_count", "gpu", "omp_wait_policy", "timestamp")


def as_config(cfg: Any) -> DictConfig:
    """A RunConfig-typed DictConfig from a DictConfig, a RunConfig or a plain dict."""
    import methods  # noqa: F401  (registers method schemas and builders)
    import tasks  # noqa: F401

    schema = OmegaConf.structured(RunConfig)
    if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is RunConfig:
        return cfg
    data = cfg if isinstance(cfg, DictConfig) else OmegaConf.create(cfg if isinstance(cfg, dict) else OmegaConf.structured(cfg))
    data = OmegaConf.masked_copy(data, [k for k in data.keys() if k != "hydra"]) if "hydra" in data else data
    return OmegaConf.merge(schema, data)


def method_node(entry: str) -> DictConfig:
    """The config of a ``compare`` entry: a conf/method option, optionally with overrides (``"hf_assisted k=6"``)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from harness.core.config import CONF_DIR

    name, *overrides = entry.split()
    if not (CONF_DIR / "method" / f"{name}.yaml").is_file():
        known = ", ".join(sorted(p.stem for p in (CONF_DIR / "method").glob("*.yaml")))
        raise SpeclabError(f"unknown method {name!r} in compare; choose from: {known}")
    overrides = [f"method={name}"] + [f"method.{o}" for o in overrides]
    try:
        if GlobalHydra.instance().is_initialized():  # inside run.py's Hydra app, which already knows conf/
            return compose(config_name="config", overrides=overrides).method
        with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
            return compose(config_name="config", overrides=overrides).method
    except (HydraException, OmegaConfBaseException) as e:
        while e.__cause__ is not None:  # Hydra wraps the error that names the key or value
            e = e.__cause__
        reason = (str(e).strip() or type(e).__name__).splitlines()[0]
        raise SpeclabError(f"bad compare entry {entry!r}: {reason}; check it against conf/method/{name}.yaml") from None


def derive_seed(seed: int, prompt_id: str, turn: int, repeat: int) -> int:
    digest = hashlib.sha256(f"{seed}|{prompt_id}|{turn}|{repeat}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


@dataclass
class Timed:
    result: PromptResult
    foreign_load: float | None
    peak_rss_mb: float


def timed_generate(gen: Generator, prompt_ids: list[int], max_new_tokens: int, seed: int | None) -> Timed:
    rng = torch.Generator().manual_seed(seed) if seed is not None else None
    with LoadMonitor() as mon:
        res = gen.generate(prompt_ids, max_new_tokens, rng)
    return Timed(res, mon.result.foreign_load, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def divergence_margin(target: TargetModel, prompt_ids: list[int], reference_ids: list[int], pos: int) -> float | None:
    """The target's top-1 minus top-2 logit after prompt + reference[:pos] (where the outputs diverged)."""
    if pos >= len(reference_ids):
        return None
    cache = target.new_cache(len(prompt_ids) + pos + 1)
    logits = target.forward(cache, prompt_ids + reference_ids[:pos], logits_rows=[-1]).logits[-1]
    top = torch.topk(logits.float(), 2).values
    return float(top[0] - top[1])


def equivalence(
    target: TargetModel, prompt_ids: list[int], method_ids: list[int], baseline_ids: list[int], near_tie: float
) -> dict[str, Any]:
    """Greedy equivalence of a method's output with the baseline's: identical or not, the first divergence,
    the target's top-1/top-2 margin there, and ``near_tie`` when that margin is under ``near_tie`` (a numerical
    tie, expected in low precision). A near tie is still a mismatch: ``equivalent`` is False."""
    div = first_divergence(method_ids, baseline_ids)
    margin = divergence_margin(target, prompt_ids, baseline_ids, div) if div is not None else None
    return {
        "equivalent": div is None,
        "first_divergence": div,
        "divergence_margin": margin,
        "near_tie": margin is not None and margin < near_tie,
    }


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
        self.run_id = self.store.hash

        m = cfg.model
        self.target = load_configured(m, cfg.engine.device)
        self._set_guidance(float(cfg.guidance))
        self.kernel = resolve_kernel(cfg.engine.kernel, self.target.dtype, self.target.device)
        apply_kernel(self.target.model, self.kernel)
        warn_if_slow_one_row(self.target, self.kernel, log)
        static_forward.enable(self.target, cfg.engine.cuda_graphs, list(cfg.engine.graph_widths), log)
        from tasks.base import build_task

        self.task = build_task(cfg.task)
        self.samples = self.task.samples()
        ctx = MethodContext(self.target, self.sampling, cfg.engine)
        # the method, then the methods it is compared with in the same interleaved run (cfg.compare)
        self.methods: list[tuple[Any, Generator]] = [(cfg.method, METHODS.build(cfg.method, ctx))]
        for entry in cfg.compare:
            node = method_node(entry)
            self.methods.append((node, METHODS.build(node, ctx)))
        names = [g.name for _, g in self.methods]
        if len(set(names)) != len(names):
            raise SpeclabError(f"methods in one run need distinct names, got {names}; set method.name or use other presets")
        peers = [g.name for _, g in self.methods if not g.uses_engine]
        if self.target.guided and peers:
            raise SpeclabError(f"guidance={cfg.guidance}: {', '.join(peers)} decode with transformers' generate(), which "
                               "runs no unconditional row; remove them from the run or set guidance=1")
        self.method = self.methods[0][1]
        self.baseline = None
        if cfg.baseline.mode != "none":
            from methods.ar import ARConfig

            self.baseline = METHODS.build(OmegaConf.structured(ARConfig), ctx)
        self.synthetic = None
        if cfg.synthetic.mode != "off":
            from harness.bench.synthetic import Synthetic

            if cfg.baseline.mode == "cached":
                raise SpeclabError("synthetic acceptance runs its own baseline; set baseline=interleaved (or none)")
            self.synthetic = Synthetic(cfg.synthetic)
            for gen in [g for _, g in self.methods] + ([self.baseline] if self.baseline is not None else []):
                self.synthetic.wrap(gen)
        self.cache = BaselineCache(cfg.baseline.cache_dir) if cfg.baseline.mode == "cached" else None
        self.near_tie = NEAR_TIE_MARGIN.get(self.target.info.dtype, 1e-3)
        self.curve = self._verify_cost_curve()
        self._warm: set[int] = set()
        self.longest_context = self._check_context()

    # -- helpers -------------------------------------------------------------------------------
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

    def _verify_cost_curve(self) -> vc.Curve | None:
        mode = self.cfg.engine.verify_cost
        if mode not in ("cached", "measure", "off"):
            raise SpeclabError(f"unknown engine.verify_cost {mode!r}; choose cached, measure or off")
        if mode == "off":
            return None
        threads = int(self.cfg.engine.threads)
        if mode == "measure":
            return vc.Curve(vc.cached_or_measured(self.target, self.kernel, threads, log))
        ms = vc.load(vc.curve_key(self.target, self.kernel, threads, vc.CACHE_LEN))
        return vc.Curve(ms) if ms else None

    def _check_context(self) -> int:
        """Refuse prompts that cannot fit the model's context; returns the KV slots the run's longest generation can
        need (every turn's text with empty answers, plus the answers' budget), to which the static path's buffers
        are sized once, so that no graph is recorded again inside a timing."""
        limit, longest = self.target.max_positions, 0
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
        return longest + 64

    def _common(self) -> dict[str, Any]:
        """The columns every row of this run shares: its identity and settings, then provenance (PROVENANCE)."""
        cfg = self.cfg
        info = self.target.info
        return {
            "run_id": self.run_id,
            "task": cfg.task.name,
            "model": info.name,
            "model_path": info.path,
            "weights_hash": info.weights_hash,
            "dtype": info.dtype,
            "device": str(self.target.device),
            "temperature": float(cfg.temperature),
            "top_k": int(cfg.top_k),
            "top_p": float(cfg.top_p),
            "guidance": float(cfg.guidance),
            "max_new_tokens": int(cfg.max_new_tokens),
            "threads": int(cfg.engine.threads),
            "kernel": self.kernel,
            "cuda_graphs": "off" if self.target.static is None else "captured" if self.target.static.capture else "uncaptured",
            "baseline_mode": cfg.baseline.mode,
            "config_hash": self.run_id,
            "git_sha": hostinfo.git_sha(),
            "code_hash": hostinfo.source_hash(*ENGINE_SOURCES),
            "versions": json.dumps(hostinfo.versions()),
            **{k: v for k, v in hostinfo.hardware().items()},
        }

    def _cached_row(self, cached: dict[str, Any]) -> dict[str, Any]:
        """A cached baseline row as a row of this run: this run's identity, the measurement's own provenance."""
        identity = {k: v for k, v in self._common().items() if k not in PROVENANCE}
        return {**cached, **identity, "order": -1, "baseline_source": "cache"}

    def _cache_key(self, sample_id: str, turn: int, repeat: int, prompt_ids: list[int], seed: int | None) -> dict[str, Any]:
        cfg = self.cfg
        info = self.target.info
        return {
            "model": info.name, "weights_hash": info.weights_hash, "dtype": info.dtype, "attention": cfg.model.attention,
            "task": cfg.task.name, "prompt_id": sample_id, "turn": turn, "repeat": repeat,
            "prompt_sha": hashlib.sha256(json.dumps(prompt_ids).encode()).hexdigest()[:16],
            "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
            **({"guidance": cfg.guidance} if cfg.guidance != 1.0 else {}),  # keys of unguided runs as before
            "seed": seed, "threads": cfg.engine.threads, "kernel": self.kernel,
            "engine": {k: v for k, v in OmegaConf.to_container(cfg.engine).items() if k not in UNTIMED_ENGINE_KEYS},
            "code_hash": hostinfo.source_hash(*ENGINE_SOURCES),
            "host": hostinfo.hardware()["host"], "cpu": hostinfo.cpu_model(), "gpu": hostinfo.hardware()["gpu"],
            "omp_wait_policy": hostinfo.hardware()["omp_wait_policy"],
            "versions": hostinfo.versions(),
        }

    def _row(self, role: str, method_cfg: Any, gen: Generator, timed: Timed, sample, turn: int, repeat: int, seed: int | None,
             order: int) -> dict[str, Any]:
        method_cfg = method_cfg if method_cfg is not None else {"name": "ar", "family": "ar"}
        method_dict = OmegaConf.to_container(method_cfg) if isinstance(method_cfg, DictConfig) else dict(method_cfg)
        row = {
            **self._common(),
            "role": role,
            "method": gen.name,
            "method_family": method_dict.get("family"),
            "method_config": json.dumps(method_dict, sort_keys=True),
            "method_hash": hashlib.sha256(json.dumps(method_dict, sort_keys=True).encode()).hexdigest()[:10],
            "acceptance_rule": gen.acceptance_rule,
            "lossless": bool(gen.lossless),
            "draft_dtype": getattr(getattr(gen, "drafter", None), "draft_dtype", None),  # peers have no drafter
            "group": sample.group,
            "category": sample.category,
            "prompt_id": sample.id,
            "turn": turn + 1,
            "repeat": repeat,
            "seed": seed,
            "order": order,
            "history_source": (None if turn == 0 else "baseline" if self.baseline is not None else "method"),
            "baseline_source": "run" if role == "baseline" else None,
            "foreign_load": timed.foreign_load,
            "peak_rss_mb": timed.peak_rss_mb,
            "output_hash": hashlib.sha256(json.dumps(timed.result.token_ids).encode()).hexdigest()[:16],
            "timestamp": time.time(),
            **generation_stats(timed.result),
        }
        row.update({k: v for k, v in timed.result.extra.items() if isinstance(v, (int, float, str, bool)) or v is None})
        if self.synthetic is not None:
            row.update(self.synthetic.row_fields(gen.name if role == "method" else None, sample.id, turn + 1))
        if self.cfg.task.score:
            scores = self.task.score(sample, turn, self.target.tokenizer.decode(timed.result.token_ids, skip_special_tokens=True))
            row.update({f"score_{k}": v for k, v in (scores or {}).items()})
        return row

    # -- main loop ------------------------------------------------------------------------------
    def warmup(self, gen: Generator | None = None) -> None:
        """Untimed generations before the first timed one of each generator (all of them when ``gen`` is None;
        in cached mode the baseline waits for its first cache miss)."""
        if not self.cfg.engine.warmup:
            return
        ids = self.task.render(self.samples[0], 0, [], self.target.tokenizer)
        n = min(self.cfg.engine.warmup_tokens, self.cfg.max_new_tokens)
        gens = [gen] if gen is not None else [g for _, g in self.methods] + ([self.baseline] if self.baseline is not None and self.cache is None else [])
        for g in gens:
            if g is not None and id(g) not in self._warm:
                if self.target.static is not None and g.uses_engine:  # every width's graph, before any timing
                    self.target.static.record(self.longest_context, g.drafter.hidden_layers)
                g.generate(ids, n, torch.Generator().manual_seed(0) if not self.sampling.greedy else None)
                self._warm.add(id(g))

    def _check_idle(self) -> None:
        if not self.cfg.engine.load_check:
            return
        with LoadMonitor() as mon:
            time.sleep(0.5)
        load = mon.result.foreign_load
        if load is not None and load > LOAD_WARNING:
            sys.stderr.write(
                f"WARNING: other processes are using {load:.1f} cores; timings taken now are not meaningful "
                "(multi-token kernels slow down far more than 1-token ones under contention)\n"
            )

    def run_prompt(self, index: int, sample, repeat: int) -> tuple[list[dict], list[dict]]:
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
            cached = None
            if self.cache is not None:
                key = self._cache_key(sample.id, turn, repeat, prompt_ids, seed)
                cached = self.cache.get(key)
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

            b_row = b_ids = None
            if self.baseline is not None:
                if cached is not None:
                    b_row = self._cached_row(cached["row"])
                    b_text = {**cached["text"], "repeat": repeat}
                    b_ids = list(b_text["token_ids"])
                else:
                    b_row = self._row("baseline", None, self.baseline, timed[None], sample, turn, repeat, seed, sides.index(None))
                    b_ids = timed[None].result.token_ids
                    b_text = self._text(sample, turn, repeat, "baseline", self.baseline.name, b_ids)
                    if self.cache is not None:
                        self.cache.put(key, b_row, b_text)
            for i, (node, gen) in enumerate(self.methods):
                m_row = self._row("method", node, gen, timed[i], sample, turn, repeat, seed, sides.index(i))
                m_ids = timed[i].result.token_ids
                if b_row is not None:
                    self._compare(m_row, m_ids, b_row, b_ids, prompt_ids)
                    if self.curve is not None and gen.uses_engine:  # peers run other kernels: no bound
                        m_row.update(self._bound(timed[i].result, b_row))
                rows.append(m_row)
                texts.append(self._text(sample, turn, repeat, "method", gen.name, m_ids))
            if b_row is not None:
                rows.append(b_row)
                texts.append(b_text)
            # later turns follow the baseline's answer (the main method's when there is no baseline)
            history.append(tok.decode(b_ids if b_ids is not None else timed[0].result.token_ids, skip_special_tokens=True))
        return rows, texts

    def _text(self, sample, turn: int, repeat: int, role: str, method: str, ids: list[int]) -> dict[str, Any]:
        text = self.target.tokenizer.decode(ids, skip_special_tokens=True)
        return {"prompt_id": sample.id, "turn": turn + 1, "repeat": repeat, "role": role, "method": method, "text": text, "token_ids": ids}

    def _compare(self, m_row: dict, m_ids: list[int], b_row: dict, b_ids: list[int], prompt_ids: list[int]) -> None:
        m_row["speedup"] = (m_row["tokens_per_s"] or 0.0) / b_row["tokens_per_s"] if b_row.get("tokens_per_s") else None
        for key in ("equivalent", "first_divergence", "divergence_margin", "near_tie"):
            m_row[key] = None
        if not self.sampling.greedy or self.synthetic is not None:
            return  # sampled outputs differ by design (losslessness is checked distributionally, in the tests);
            # synthetic acceptance commits drafts the target did not choose
        m_row.update(equivalence(self.target, prompt_ids, m_ids, b_ids, self.near_tie))

    def _bound(self, r: PromptResult, b_row: dict[str, Any]) -> dict[str, Any]:
        return vc.speedup_bound(self.curve, r.prefill_time, r.drafted, r.new_tokens, int(b_row["steps"]),
                                b_row["verify_time_s"], b_row.get("tokens_per_s"))

    def run(self) -> pd.DataFrame:
        done = self.store.done()
        todo = [(i, s, r) for i, s in enumerate(self.samples) for r in range(self.cfg.repeats) if (s.id, r) not in done]
        total = len(self.samples) * self.cfg.repeats
        names = [g.name for _, g in self.methods]
        if todo:
            self._check_idle()
            self.warmup()
        from tqdm.auto import tqdm

        figures = RunningFigures(names, self.store.rows)
        desc = ", ".join(names) + (" vs ar" if self.baseline is not None else "")
        bar = tqdm(total=total, initial=total - len(todo), desc=desc, unit="prompt", disable=not self.cfg.progress,
                   file=sys.stderr, dynamic_ncols=True)
        try:
            for index, sample, repeat in todo:
                rows, texts = self.run_prompt(index, sample, repeat)
                self.store.add(rows, texts)
                figures.add(rows)
                bar.set_postfix_str(str(figures))
                bar.update(1)
        finally:
            bar.close()
            self.store.consolidate()
        return self.store.frame()


class RunningFigures:
    """The progress bar's text: per method so far, the summary's speedup (geometric mean over prompts of
    per-prompt speedups, turns and repeats pooled, as :func:`metrics.per_prompt_speedups`) and tau.

    Kept up to date row by row, so a long run pays the same per prompt at its end as at its start.
    """

    def __init__(self, methods: list[str], rows: list[dict[str, Any]] = ()) -> None:
        self.methods = methods
        # (method, or None for the baseline; (run_id, prompt_id)) -> [new tokens, wall time]
        self.sums: dict[tuple[str | None, tuple[str, str]], list[float]] = {}
        self.steps = {m: [0, 0] for m in methods}  # new tokens, steps
        self.logs: dict[tuple[str, tuple[str, str]], float] = {}  # log speedup per (method, prompt)
        self.log_sums = {m: [0.0, 0] for m in methods}  # sum and count of the logs
        self.add(rows)

    def add(self, rows: list[dict[str, Any]]) -> None:
        touched = set()
        for r in rows:
            prompt = (r["run_id"], r["prompt_id"])
            side = r["method"] if r["role"] == "method" else None
            acc = self.sums.setdefault((side, prompt), [0, 0.0])
            acc[0] += r["new_tokens"]
            acc[1] += r["wall_time_s"]
            if side in self.steps:
                self.steps[side][0] += r["new_tokens"]
                self.steps[side][1] += r["steps"]
            touched.add(prompt)
        for prompt in touched:
            base = self.sums.get((None, prompt))
            for m in self.methods:
                own = self.sums.get((m, prompt))
                old = self.logs.pop((m, prompt), None)
                if old is not None:
                    self.log_sums[m][0] -= old
                    self.log_sums[m][1] -= 1
                if own and base and own[1] > 0 and base[0] > 0 and base[1] > 0:
                    speedup = (own[0] / own[1]) / (base[0] / base[1])
                    if speedup > 0:  # as metrics.geomean, which leaves out zero speedups
                        self.logs[(m, prompt)] = math.log(speedup)
                        self.log_sums[m][0] += math.log(speedup)
                        self.log_sums[m][1] += 1

    def __str__(self) -> str:
        parts = []
        for m in self.methods:
            total, count = self.log_sums[m]
            tau = self.steps[m][0] / max(1, self.steps[m][1])
            parts.append(f"{m} {math.exp(total / count):.2f}x tau {tau:.2f}" if count else f"{m} tau {tau:.2f}")
        return ", ".join(parts)


def running_figures(rows: list[dict[str, Any]], methods: list[str]) -> str:
    """:class:`RunningFigures` of ``rows`` at once."""
    return str(RunningFigures(methods, rows))


def print_summary(df: pd.DataFrame, out_dir: Path, file=sys.stdout) -> pd.DataFrame:
    if "speedup" not in df or df[df.role == "baseline"].empty:
        return pd.DataFrame()
    summary = summarize(df)
    cols = ["method", "group", "prompts", "speedup_geomean", "speedup_ci_low", "speedup_ci_high", "speedup", "speedup_bound",
            "tau", "acceptance_rate", "equivalence_rate", "near_ties", "mismatches", "tokens_per_s", "baseline_tokens_per_s"]
    if summary.speedup_bound.isna().all():
        cols.remove("speedup_bound")
    if f"speedup_vs_{COMPILED_PEER}" in summary:
        cols.insert(cols.index("tau"), f"speedup_vs_{COMPILED_PEER}")
    synthetic = "synthetic" in df and df.synthetic.notna().any()
    if synthetic:
        cols.insert(cols.index("tau") + 1, "real_tau")
        for c in ("equivalence_rate", "near_ties", "mismatches"):  # outputs are not the target's by construction
            cols.remove(c)
    show = summary[[c for c in cols if c in summary]].copy()
    fmt = {c: "{:.2f}".format for c in show.columns if show[c].dtype.kind == "f"}
    if synthetic:
        print(f"SYNTHETIC acceptance ({df.synthetic.dropna().iloc[0]}): speedups project this machine's speed at the "
              "given acceptance; real_tau is the traced run's tau", file=file)
    print(show.to_string(index=False, formatters=fmt, na_rep="-"), file=file)
    load = df.foreign_load.dropna()
    if len(load) and load.median() > LOAD_WARNING:
        print(
            f"WARNING: other processes used {load.median():.2f} cores (median) while timing; speedups from this run "
            "are not meaningful. Re-run on an idle machine.", file=file,
        )
    print(f"results: {out_dir / 'results.parquet'}", file=file)
    return summary


def run(cfg: Any) -> pd.DataFrame:
    """Run a config (DictConfig, RunConfig or dict) and return its results frame (the Python API)."""
    cfg = as_config(cfg)
    runner = Runner(cfg)
    df = runner.run()
    print_summary(df, runner.store.dir)
    return df
