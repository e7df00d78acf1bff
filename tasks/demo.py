"""The demo task: a handful of prompts shipped in the repository, so the default run needs no data."""

from __future__ import annotations

from dataclasses import dataclass

from harness.core.registry import Family
from tasks.generic import GenericTask, GenericTaskConfig


@dataclass
class DemoConfig(GenericTaskConfig):
    name: str = "demo"
    family: str = "demo"
    path: str = "demo.jsonl"
    category_field: str = "category"


FAMILIES = [Family("demo", DemoConfig, GenericTask)]
