"""Listen addresses given on the command line."""

from __future__ import annotations


def split_host_port(value: str) -> tuple[str, int]:
    """ "host:port" (or "[v6]:port") with a port of 1-65535 -> (host, port)."""
    host, sep, port = value.rpartition(":")
    if not sep or not host or not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError(f"must be host:port with a port of 1-65535, got {value!r}")
    return host.strip("[]"), int(port)
