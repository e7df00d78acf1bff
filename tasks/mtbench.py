"""MT-bench (Zheng et al., 2023): 80 two-turn questions in eight categories.

Reads either Spec-Bench's ``question.jsonl`` (its MT-bench rows; ``turns``, ``question_id``) or the Hub
dataset ``HuggingFaceH4/mt_bench_prompts`` (``prompt`` is the list of turns, ``prompt_id``), in that order:
Spec-Bench's copy, then ``mt_bench/question.jsonl`` (what ``scripts/fetch_data.py --only mtbench`` writes),
then the Hub.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

from harness.core.config import TaskConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from tasks.base import Sample, Task
from tasks.spec_bench import MT_BENCH_CATEGORIES


@dataclass
class MTBenchConfig(TaskConfig):
    name: str = "mtbench"
    family: str = "mtbench"
    path: Optional[str] = "spec_bench/question.jsonl"
    hub_id: Optional[str] = "HuggingFaceH4/mt_bench_prompts"
    split: str = "train"


FETCHED_PATH = "mt_bench/question.jsonl"


class MTBench(Task):
    def local_paths(self) -> list[str]:
        # Only the default path falls back to the fetched copy: a path the user chose is never swapped.
        paths = super().local_paths()
        return paths + [FETCHED_PATH] if self.cfg.path == MTBenchConfig.path else paths

    def load(self) -> list[Sample]:
        out = []
        for i, r in enumerate(self.records()):
            if r.get("category") not in MT_BENCH_CATEGORIES:
                continue  # Spec-Bench's file also holds its five other groups
            turns = r["turns"] if "turns" in r else r.get("prompt")
            if turns is None:
                raise SpeclabError(f"task {self.cfg.name!r}: row {i} has neither 'turns' nor 'prompt'; point task.path at MT-bench data")
            if isinstance(turns, str):
                turns = [turns]
            qid = r.get("question_id", r.get("prompt_id", i))
            out.append(Sample(id=str(qid), group="mt_bench", category=r["category"], turns=[str(t) for t in turns],
                              reference=r.get("reference")))
        return out


FAMILIES = [Family("mtbench", MTBenchConfig, MTBench)]
