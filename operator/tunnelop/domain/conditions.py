"""Status conditions as Kubernetes defines them (metav1.Condition): pure helpers."""

from __future__ import annotations

import datetime
from typing import Any


def now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def condition(
    type_: str, status: bool, reason: str, message: str, generation: int | None
) -> dict[str, Any]:
    return {
        "type": type_,
        "status": "True" if status else "False",
        "reason": reason,
        "message": message,
        "observedGeneration": generation,
    }


def merge(existing: list[dict[str, Any]] | None, *updates: dict[str, Any]) -> list[dict[str, Any]]:
    """The conditions with `updates` applied; lastTransitionTime moves only when a status
    flips, so an unchanged condition produces an identical list (and no write)."""
    result = {c["type"]: dict(c) for c in existing or []}
    for update in updates:
        old = result.get(update["type"])
        merged = dict(update)
        if old and old.get("status") == update["status"] and old.get("lastTransitionTime"):
            merged["lastTransitionTime"] = old["lastTransitionTime"]
        else:
            merged["lastTransitionTime"] = now()
        result[update["type"]] = merged
    return sorted(result.values(), key=lambda c: c["type"])


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return bool(found and found.get("status") == "True")
