"""GSM8K (Cobbe et al., 2021) with optional exact-match scoring of the final number."""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any

from harness.core.registry import Family
from tasks.base import Sample
from tasks.generic import GenericTask, GenericTaskConfig

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")


def final_number(text: str) -> str | None:
    """The number after the last '####' (GSM8K's answer marker) if present, else the last number in the
    text, in a canonical form: no thousands separators, no trailing zeros ("1,234.50" -> "1234.5")."""
    marked = "####" in text
    found = NUMBER.findall(text.rsplit("####", 1)[-1])
    if not found:
        return None
    value = Decimal((found[0] if marked else found[-1]).replace(",", ""))
    return str(int(value)) if value == value.to_integral_value() else str(value.normalize())


class GSM8K(GenericTask):
    def score(self, sample: Sample, turn: int, text: str) -> dict[str, Any] | None:
        reference = sample.reference
        if isinstance(reference, (list, tuple)) or hasattr(reference, "tolist"):  # one reference per turn (Spec-Bench)
            reference = list(reference)[turn] if len(reference) > turn else None
        if reference is None:
            return None
        gold = final_number(str(reference))
        return {"exact_match": float(gold is not None and final_number(text) == gold)}


FAMILIES = [Family("gsm8k", GenericTaskConfig, GSM8K)]
