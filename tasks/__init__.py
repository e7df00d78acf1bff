"""Prompt sets. Each module registers a Task in ``tasks.base.TASKS`` and, where it needs fields of its own,
a schema in Hydra's ConfigStore; ``conf/task/<name>.yaml`` selects it."""

from tasks import demo, digits, generic, gsm8k, humaneval, mtbench, spec_bench  # noqa: F401
from tasks.base import TASKS, Sample, Task, build_task  # noqa: F401
