"""The demo task: a handful of prompts shipped in the repository, so the default run needs no data."""

from __future__ import annotations

from dataclasses import dataclass

from hydra.core.config_store import ConfigStore

from tasks.base import TASKS
from tasks.generic import GenericTask, GenericTaskConfig


@dataclass
class DemoConfig(GenericTaskConfig):
    name: str = "demo"
    family: str = "demo"
    path: str = "demo.jsonl"
    category_field: str = "category"


TASKS.register("demo", DemoConfig)(GenericTask)
ConfigStore.instance().store(group="schema/task", name="demo", node=DemoConfig)
