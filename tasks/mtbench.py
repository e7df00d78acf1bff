"""MT-bench (Zheng et al., 2023): 80 two-turn questions in eight categories.

Reads either Spec-Bench's ``question.jsonl`` (its MT-bench rows) or the Hub dataset
``HuggingFaceH4/mt_bench_prompts`` (``prompt`` is the list of turns).
"""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from harness.config import TaskConfig

from .base import TASKS, Sample, Task
from .spec_bench import MT_BENCH_CATEGORIES


@dataclass
class MTBenchConfig(TaskConfig):
    name: str = "mtbench"
    family: str = "mtbench"
    path: str = "spec_bench/question.jsonl"
    split: str = "train"


class MTBench(Task):
    def load(self) -> list[Sample]:
        out = []
        for r in self.records():
            if r.get("category") not in MT_BENCH_CATEGORIES:
                continue
            turns = r["turns"] if "turns" in r else r["prompt"]
            qid = r.get("question_id", r.get("prompt_id"))
            out.append(Sample(id=str(qid), group="mt_bench", category=r["category"], turns=[str(t) for t in turns],
                              reference=r.get("reference")))
        return out


TASKS.register("mtbench", MTBenchConfig)(MTBench)
ConfigStore.instance().store(group="schema/task", name="mtbench", node=MTBenchConfig)
