"""GSM8K (Cobbe et al., 2021) with optional exact-match scoring of the final number."""

from __future__ import annotations

import re
from typing import Any

from .base import TASKS, Sample
from .generic import GenericTaskConfig
from .generic import GenericTask

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The answer after '####' if present, else the last number in the text, without commas."""
    if "####" in text:
        text = text.split("####")[-1]
    found = NUMBER.findall(text)
    if not found:
        return None
    value = found[-1].replace(",", "").rstrip(".")
    return value[:-2] if value.endswith(".0") else value


class GSM8K(GenericTask):
    def score(self, sample: Sample, turn: int, text: str) -> dict[str, Any] | None:
        if sample.reference is None:
            return None
        gold = final_number(str(sample.reference))
        return {"exact_match": float(gold is not None and final_number(text) == gold)}


TASKS.register("gsm8k", GenericTaskConfig)(GSM8K)
