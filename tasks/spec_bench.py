"""Spec-Bench (Xia et al., 2024): 480 prompts in six groups; MT-bench's 80 have two turns.

``group`` is one of Spec-Bench's six columns; ``category`` the row's own label (MT-bench's eight
categories, or the group name for the other five).
"""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.config import TaskConfig
from harness.core.registry import Family
from tasks.base import Sample, Task

MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
GROUPS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")


def group_of(category: str) -> str:
    return "mt_bench" if category in MT_BENCH_CATEGORIES else category


@dataclass
class SpecBenchConfig(TaskConfig):
    name: str = "spec_bench"
    family: str = "spec_bench"
    path: str = "spec_bench/question.jsonl"


class SpecBench(Task):
    def load(self) -> list[Sample]:
        return [
            Sample(id=str(r["question_id"]), group=group_of(r["category"]), category=r["category"],
                   turns=[str(t) for t in r["turns"]], reference=r.get("reference"))
            for r in self.records()
        ]


FAMILIES = [Family("spec_bench", SpecBenchConfig, SpecBench)]
