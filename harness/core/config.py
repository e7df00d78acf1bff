"""Config schemas (Hydra ConfigStore dataclasses): a typo in any key is an error, not a silent default.

Method and task families extend :class:`MethodConfig` / :class:`TaskConfig` in their own modules and declare
them in ``FAMILIES``; ``harness.api.load_plugins()`` stores them as ``schema/method/<family>`` /
``schema/task/<family>`` beside the run's own schemas (:func:`register_schemas`), and each YAML in ``conf/``
starts from its schema.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

REPO = Path(__file__).resolve().parents[2]
CONF_DIR = REPO / "conf"


@dataclass
class TinySpec:
    """A seeded random-weight test model (``model.source=tiny``; harness/model/tiny.py)."""

    family: str = "llama"  # llama | gemma3 (sliding-window layers) | mixtral (MoE, 8 experts, top-2)
    sliding_window: int = 8  # gemma3 only
    seed: int = 0
    layers: int = 2
    hidden: int = 64
    intermediate: int = 128
    heads: int = 4
    kv_heads: int = 2
    max_positions: int = 2048
    init_std: float = 0.2


@dataclass
class ModelConfig:
    name: str = MISSING  # label in results rows
    source: str = "hf"  # hf (Hub id or folder in `path`) | smollm2_wheel | gemma3_package | smollm2_moe | digits_ar | tiny
    path: Optional[str] = None
    dtype: str = "auto"  # auto (float32 on CPU, bfloat16 on CUDA) | float32 | bfloat16 | float16
    attention: str = "speclab"  # speclab (engine kernel) | sdpa | eager
    revision: Optional[str] = None
    trust_remote_code: bool = False
    tiny: TinySpec = field(default_factory=TinySpec)


@dataclass
class MethodConfig:
    name: str = MISSING  # label in results rows
    family: str = MISSING  # registry key (methods/<family>.py)
    rule: str = "auto"  # acceptance rule: auto | greedy | rejection (lossy rules say so in their rows)


@dataclass
class TaskConfig:
    name: str = MISSING
    family: str = MISSING  # registry key (tasks/<family>.py)
    path: Optional[str] = None  # local JSONL/parquet; relative paths are looked up under $SPECLAB_DATA
    hub_id: Optional[str] = None
    hub_config: Optional[str] = None
    split: str = "test"
    limit: Optional[int] = None  # at most this many prompts per group
    groups: list[str] = field(default_factory=list)
    categories: list[str] = field(default_factory=list)
    max_turns: Optional[int] = None
    chat: Optional[bool] = None  # null: the chat template when the tokenizer has one, else raw text; false: raw text
    system_prompt: Optional[str] = None  # null: the template's default; "": no system message
    score: bool = False  # task-specific scoring (exact match, pass@1) where the task has one


@dataclass
class BaselineConfig:
    mode: str = "interleaved"  # interleaved | cached | none
    cache_dir: str = "${oc.env:SPECLAB_BASELINE_CACHE,results/baseline_cache}"


@dataclass
class EngineConfig:
    device: str = "auto"  # auto (cuda when a GPU is visible) | cpu | cuda | cuda:N
    # static-shape forwards replayed as CUDA graphs (harness/model/cuda_graphs.py): auto = on CUDA; on = also on a
    # CPU, uncaptured (tests); off = eager
    cuda_graphs: str = "auto"
    graph_widths: list[int] = field(default_factory=lambda: [1, 2, 4, 8, 16, 32, 64])
    # 1: on this 2-core CPU a second thread is ~15% faster when the machine is idle, but with one busy process
    # beside it OpenMP's spinning threads make every forward 2.5-4x slower (BENCHMARKS.md, "Threads")
    threads: int = 1
    kernel: str = "auto"  # linear-layer kernel for target and drafts: auto | onednn | torch | hybrid (harness/model/kernels.py)
    warmup: bool = True
    warmup_tokens: int = 16
    load_check: bool = True  # warn before timing when other processes keep the CPU busy
    verify_cost: str = "cached"  # c(k) for the speedup bound: cached (use a measurement if present) | measure | off


@dataclass
class SyntheticConfig:
    """Synthetic acceptance (harness/bench/synthetic.py): system speed where real acceptance cannot be measured."""

    mode: str = "off"  # off | trace (replay a real run's per-step drafts and acceptances) | rates
    trace: Optional[str] = None  # trace mode: the folder or results.parquet of a real run of the same methods and task
    rates: list[float] = field(default_factory=list)  # rates mode: conditional acceptance per draft depth
    seed: int = 0


@dataclass
class LoggerConfig:
    name: str = "none"  # none | wandb
    project: str = "speclab"
    entity: Optional[str] = None
    mode: Optional[str] = None  # online | offline | disabled (default: WANDB_MODE)
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    method: Any = MISSING
    task: Any = MISSING
    baseline: BaselineConfig = MISSING
    logger: LoggerConfig = MISSING
    engine: EngineConfig = field(default_factory=EngineConfig)
    synthetic: SyntheticConfig = field(default_factory=SyntheticConfig)
    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    guidance: float = 1.0  # classifier-free guidance scale (1 = off); needs a model with an unconditional prompt
    seed: int = 0
    repeats: int = 1
    # batched decoding (harness/engine/batch_decoder.py): this many generations decoded together, every side alike;
    # continuous: a finished row's slot takes the next prompt at once; drain: the batch empties before the next starts
    batch_size: int = 1
    batch_mode: str = "continuous"
    nll: bool = False  # rows get target_nll: each output's NLL per token under the target (untimed; lossy methods)
    compare: list[str] = field(default_factory=list)  # more conf/method options timed in the same interleaved run
    progress: bool = True
    out_dir: Optional[str] = None  # set by run.py to Hydra's run folder; the API may set it directly


def register_schemas() -> None:
    cs = ConfigStore.instance()
    cs.store(name="run_schema", node=RunConfig)
    cs.store(group="schema/model", name="model", node=ModelConfig)
    cs.store(group="schema/task", name="base", node=TaskConfig)
    cs.store(group="schema/baseline", name="baseline", node=BaselineConfig)
    cs.store(group="schema/logger", name="logger", node=LoggerConfig)



def _run_hash(*, _root_) -> str:
    from omegaconf import OmegaConf

    from harness.core.run_identity import config_hash

    # hydra.run.dir itself calls this resolver, so hash a copy without the hydra node
    return config_hash(OmegaConf.masked_copy(_root_, [k for k in _root_.keys() if k != "hydra"]))


def _basename(path: str | None) -> str:
    return Path(str(path)).name if path else "model"


def register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("speclab_hash"):
        OmegaConf.register_new_resolver("speclab_hash", _run_hash)
    if not OmegaConf.has_resolver("speclab_basename"):
        OmegaConf.register_new_resolver("speclab_basename", _basename)

