"""Names of a pool's RelayNodes: "<pool>-<n>", readable and stable. A relay keeps its name for
its whole life, and a new relay takes the lowest index no existing relay has."""

from __future__ import annotations

from collections.abc import Iterable

from tunnelop.api.v1alpha1.relaynode import RELAY_NODE_NAME_MAX
from tunnelop.api.v1alpha1.relaypool import RELAY_POOL_NAME_MAX

# The pool's name leaves room for "-" and five digits (see RELAY_POOL_NAME_MAX).
MAX_POOL_SIZE = 10 ** (RELAY_NODE_NAME_MAX - RELAY_POOL_NAME_MAX - 1)


def relay_name(pool: str, index: int) -> str:
    if not 0 <= index < MAX_POOL_SIZE:
        raise ValueError(f"relay index must be 0-{MAX_POOL_SIZE - 1}, got {index}")
    return f"{pool}-{index}"


def relay_index(pool: str, name: str) -> int | None:
    """The n of "<pool>-<n>", or None for a name the pool would not give."""
    prefix = f"{pool}-"
    digits = name.removeprefix(prefix)
    if not name.startswith(prefix) or not digits.isdigit() or not digits.isascii():
        return None
    if digits != str(int(digits)):  # "pool-07" is not a name the pool gives
        return None
    index = int(digits)
    return index if index < MAX_POOL_SIZE else None


def new_relay_names(pool: str, taken: Iterable[str], count: int) -> list[str]:
    """`count` names for new relays, the lowest free indices first. Fewer when the pool's
    names run out (MAX_POOL_SIZE relays)."""
    used = {index for name in taken if (index := relay_index(pool, name)) is not None}
    names: list[str] = []
    index = 0
    while len(names) < count and index < MAX_POOL_SIZE:
        if index not in used:
            names.append(relay_name(pool, index))
        index += 1
    return names
