"""Tasks defined by YAML alone: a file or Hub dataset plus field names and a prompt template."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

from harness.core.config import TaskConfig
from harness.core.errors import SpeclabError
from harness.core.registry import Family
from tasks.base import Sample, Task


@dataclass
class GenericTaskConfig(TaskConfig):
    family: str = "generic"
    id_field: str = "id"  # missing ids fall back to the row number
    text_field: str = "prompt"  # a string (one turn) or a list of strings (turns)
    category_field: Optional[str] = None
    reference_field: Optional[str] = None
    template: str = "{text}"  # str.format over the row's fields plus {text}; applied to the first turn
    group: Optional[str] = None  # defaults to the task name
    default_category: str = "default"


class GenericTask(Task):
    cfg: GenericTaskConfig

    def sample_from(self, row: dict[str, Any], index: int) -> Sample:
        c = self.cfg
        if c.text_field not in row:
            raise SpeclabError(
                f"task {c.name!r}: row {index} has no field {c.text_field!r} (fields: {', '.join(row)}); set task.text_field"
            )
        text = row[c.text_field]
        turns = [str(t) for t in text] if isinstance(text, (list, tuple)) or hasattr(text, "tolist") else [str(text)]
        try:
            turns[0] = c.template.format(**{**row, "text": turns[0]})
        except (KeyError, IndexError) as e:
            raise SpeclabError(f"task {c.name!r}: template field {e} is not in the data; fix task.template") from None
        category = str(row.get(c.category_field, c.default_category)) if c.category_field else c.default_category
        return Sample(
            id=str(row.get(c.id_field, index)),
            group=c.group or c.name,
            category=category,
            turns=turns,
            reference=row.get(c.reference_field) if c.reference_field else None,
        )

    def load(self) -> list[Sample]:
        return [self.sample_from(row, i) for i, row in enumerate(self.records())]


FAMILIES = [Family("generic", GenericTaskConfig, GenericTask)]
