"""The results rows of a run: the columns every row shares, one generation's row, and the baseline cache's key.

A row holds what was generated and how fast (``generation_stats``), the method and its config, the prompt, and
the provenance of the measurement (git sha, hash of the engine's sources, package versions, hardware), so a row
read months later still says what it measured.
"""

from __future__ import annotations

import hashlib
import json
import time
from typing import Any

from omegaconf import DictConfig, OmegaConf

from harness.bench.timing import Timed
from harness.core import hostinfo
from harness.engine.method import Generator
from harness.model.kernel_choice import KernelChoice
from harness.model.target import TargetModel
from harness.results.metrics import generation_stats

# The code a baseline row is timed and computed by: its hash keys the baseline cache and is in every row.
ENGINE_SOURCES = ("harness", "methods/ar.py")
# Engine settings that change neither a baseline's output nor its timing.
UNTIMED_ENGINE_KEYS = ("load_check", "verify_cost")
# Row columns that say when, where and with what code a row was measured; a cached baseline row keeps its own.
PROVENANCE = ("git_sha", "code_hash", "versions", "host", "cpu", "cpu_count", "gpu", "omp_wait_policy", "timestamp")
BASELINE_CONFIG = {"name": "ar", "family": "ar"}


class RowMaker:
    """Rows of one run: its config, target, resolved kernel and identity are shared by all of them."""

    def __init__(self, cfg: DictConfig, target: TargetModel, kernel: KernelChoice, run_id: str, task: Any,
                 synthetic: Any = None, has_baseline: bool = True) -> None:
        self.cfg, self.target, self.kernel_choice, self.run_id = cfg, target, kernel, run_id
        self.kernel = kernel.kernel
        self.task, self.synthetic, self.has_baseline = task, synthetic, has_baseline

    def common(self) -> dict[str, Any]:
        """The columns every row of this run shares: its identity and settings, then provenance (PROVENANCE)."""
        cfg, target = self.cfg, self.target
        info = target.info
        static = target.static
        return {
            "run_id": self.run_id,
            "task": cfg.task.name,
            "model": info.name,
            "model_path": info.path,
            "weights_hash": info.weights_hash,
            "dtype": info.dtype,
            "device": str(target.device),
            "temperature": float(cfg.temperature),
            "top_k": int(cfg.top_k),
            "top_p": float(cfg.top_p),
            "guidance": float(cfg.guidance),
            "max_new_tokens": int(cfg.max_new_tokens),
            "threads": int(cfg.engine.threads),
            "kernel": self.kernel,
            "kernel_requested": cfg.engine.kernel,
            **self.kernel_choice.row_fields(),
            "cuda_graphs": "off" if static is None else "captured" if static.capture else "uncaptured",
            "baseline_mode": cfg.baseline.mode,
            "config_hash": self.run_id,
            "git_sha": hostinfo.git_sha(),
            "code_hash": hostinfo.source_hash(*ENGINE_SOURCES),
            "versions": json.dumps(hostinfo.versions()),
            **hostinfo.hardware(),
        }

    def from_cache(self, cached: dict[str, Any]) -> dict[str, Any]:
        """A cached baseline row as a row of this run: this run's identity, the measurement's own provenance."""
        identity = {k: v for k, v in self.common().items() if k not in PROVENANCE}
        return {**cached, **identity, "order": -1, "baseline_source": "cache"}

    def row(self, role: str, method_cfg: Any, gen: Generator, timed: Timed, sample: Any, turn: int, repeat: int,
            seed: int | None, order: int) -> dict[str, Any]:
        """The row of one generation (``turn`` 0-based; ``method_cfg`` None for the baseline)."""
        method_cfg = method_cfg if method_cfg is not None else BASELINE_CONFIG
        method_dict = OmegaConf.to_container(method_cfg) if isinstance(method_cfg, DictConfig) else dict(method_cfg)
        blob = json.dumps(method_dict, sort_keys=True)
        result = timed.result
        row = {
            **self.common(),
            "role": role,
            "method": gen.name,
            "method_family": method_dict.get("family"),
            "method_config": blob,
            "method_hash": hashlib.sha256(blob.encode()).hexdigest()[:10],
            "acceptance_rule": gen.acceptance_rule,
            "lossless": bool(gen.lossless),
            "draft_dtype": getattr(getattr(gen, "drafter", None), "draft_dtype", None),  # peers have no drafter
            "draft_vocab_size": getattr(getattr(gen, "drafter", None), "draft_vocab_size", None),
            "group": sample.group,
            "category": sample.category,
            "prompt_id": sample.id,
            "turn": turn + 1,
            "repeat": repeat,
            "seed": seed,
            "order": order,
            "history_source": None if turn == 0 else "baseline" if self.has_baseline else "method",
            "baseline_source": "run" if role == "baseline" else None,
            "foreign_load": timed.foreign_load,
            "peak_rss_mb": timed.peak_rss_mb,
            "output_hash": hashlib.sha256(json.dumps(result.token_ids).encode()).hexdigest()[:16],
            "timestamp": time.time(),
            **generation_stats(result),
        }
        row.update({k: v for k, v in result.extra.items() if isinstance(v, (int, float, str, bool)) or v is None})
        if self.synthetic is not None:
            row.update(self.synthetic.row_fields(gen.name if role == "method" else None, sample.id, turn + 1))
        if self.cfg.task.score:
            text = self.target.tokenizer.decode(result.token_ids, skip_special_tokens=True)
            row.update({f"score_{k}": v for k, v in (self.task.score(sample, turn, text) or {}).items()})
        return row

    def text(self, sample: Any, turn: int, repeat: int, role: str, method: str, ids: list[int]) -> dict[str, Any]:
        """The samples.jsonl record of one generation."""
        text = self.target.tokenizer.decode(ids, skip_special_tokens=True)
        return {"prompt_id": sample.id, "turn": turn + 1, "repeat": repeat, "role": role, "method": method,
                "text": text, "token_ids": ids}

    def cache_key(self, sample_id: str, turn: int, repeat: int, prompt_ids: list[int], seed: int | None) -> dict[str, Any]:
        """What sets a baseline generation's output and timing: the key of its entry in the baseline cache."""
        cfg, info = self.cfg, self.target.info
        hardware = hostinfo.hardware()
        return {
            "model": info.name, "weights_hash": info.weights_hash, "dtype": info.dtype, "attention": cfg.model.attention,
            "task": cfg.task.name, "prompt_id": sample_id, "turn": turn, "repeat": repeat,
            "prompt_sha": hashlib.sha256(json.dumps(prompt_ids).encode()).hexdigest()[:16],
            "max_new_tokens": cfg.max_new_tokens, "temperature": cfg.temperature, "top_k": cfg.top_k, "top_p": cfg.top_p,
            **({"guidance": cfg.guidance} if cfg.guidance != 1.0 else {}),  # keys of unguided runs as before
            "seed": seed, "threads": cfg.engine.threads, "kernel": self.kernel,
            "engine": {k: v for k, v in OmegaConf.to_container(cfg.engine).items() if k not in UNTIMED_ENGINE_KEYS},
            "code_hash": hostinfo.source_hash(*ENGINE_SOURCES),
            "host": hardware["host"], "cpu": hostinfo.cpu_model(), "gpu": hardware["gpu"],
            "omp_wait_policy": hardware["omp_wait_policy"],
            "versions": hostinfo.versions(),
        }
