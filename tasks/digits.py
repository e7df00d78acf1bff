"""digits: N images of each class from the ``digits-ar`` testbed (issue 17), one prompt per image.

A prompt is the class token (``c3`` asks for a 3); the answer is 64 grey-level tokens and ``<eos>``. Groups
are the classes, so ``task.limit`` is images per class. With ``task.score=true`` each row carries
``score_class_correct`` (the committed classifier's verdict) and ``score_valid`` (64 pixels, then the end);
``scripts/image_report.py <run>`` adds the run-level quality (Fréchet distance, precision and recall against
held-out real images) and the grid pictures. Sampling is the point: use ``experiment=digits`` (temperature 1.0).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from harness.core.config import TaskConfig
from harness.core.registry import Family
from harness.loading.digits import CLASSES, parse
from tasks.base import Sample, Task


@dataclass
class DigitsConfig(TaskConfig):
    name: str = "digits"
    family: str = "digits"
    per_class: int = 100  # images asked of each class (task.limit cuts it further)


class Digits(Task):
    cfg: DigitsConfig

    def load(self) -> list[Sample]:
        return [Sample(id=f"c{c}-{i:04d}", group=f"c{c}", category="digits", turns=[f"c{c}"], reference=c)
                for i in range(self.cfg.per_class) for c in range(CLASSES)]

    def score(self, sample: Sample, turn: int, text: str) -> dict[str, Any] | None:
        from harness.results.image_quality import judge

        image = parse(text)
        return {"valid": float(image is not None), "class_correct": judge(image, int(sample.reference))}


FAMILIES = [Family("digits", DigitsConfig, Digits)]
