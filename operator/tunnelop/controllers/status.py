"""Status goes through the API models: a status that does not validate cannot be written."""

from __future__ import annotations

import datetime
from typing import Any

from tunnelop.api.v1alpha1.common import StatusModel


def status_dict(status: StatusModel) -> dict[str, Any]:
    """The status as the API server stores it (camelCase, unset fields left out)."""
    return status.model_dump(mode="json", by_alias=True, exclude_none=True)


def merge_patch(old: dict[str, Any], new: dict[str, Any]) -> dict[str, Any]:
    """A JSON merge patch from `old` to `new` at the top level: fields gone from `new` are
    nulled explicitly."""
    return {key: new.get(key) for key in set(new) | set(old)}


def utcnow() -> datetime.datetime:
    """Now, as the controllers compare it with the times in statuses."""
    return datetime.datetime.now(datetime.UTC)
