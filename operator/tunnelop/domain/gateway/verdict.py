"""One condition's outcome before it becomes a metav1.Condition: status, reason, message."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Verdict:
    status: str  # "True" | "False" | "Unknown"
    reason: str
    message: str

    @property
    def ok(self) -> bool:
        return self.status == "True"

    def condition(self, type_: str, generation: int | None) -> dict[str, Any]:
        """As a condition, without lastTransitionTime (status_merge sets it)."""
        condition: dict[str, Any] = {
            "type": type_,
            "status": self.status,
            "reason": self.reason,
            "message": self.message[:32768],
        }
        if generation is not None:
            condition["observedGeneration"] = generation
        return condition


def true(reason: str, message: str) -> Verdict:
    return Verdict("True", reason, message)


def false(reason: str, message: str) -> Verdict:
    return Verdict("False", reason, message)


def unknown(reason: str, message: str) -> Verdict:
    return Verdict("Unknown", reason, message)
