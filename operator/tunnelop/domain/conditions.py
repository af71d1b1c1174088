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


def without(conditions: list[dict[str, Any]], type_: str) -> list[dict[str, Any]]:
    """The conditions less the one of `type_`: for a condition shown only while it holds."""
    return [c for c in conditions if c.get("type") != type_]


def find(conditions: list[dict[str, Any]] | None, type_: str) -> dict[str, Any] | None:
    return next((c for c in conditions or [] if c.get("type") == type_), None)


def is_true(conditions: list[dict[str, Any]] | None, type_: str) -> bool:
    found = find(conditions, type_)
    return bool(found and found.get("status") == "True")


def since(
    conditions: list[dict[str, Any]] | None, type_: str, status: bool
) -> datetime.datetime | None:
    """When the condition took `status` (its lastTransitionTime), None when it has another
    status, is absent or carries no readable time."""
    found = find(conditions, type_)
    if not found or found.get("status") != ("True" if status else "False"):
        return None
    try:
        return datetime.datetime.strptime(
            found.get("lastTransitionTime") or "", "%Y-%m-%dT%H:%M:%SZ"
        ).replace(tzinfo=datetime.UTC)
    except ValueError:
        return None
