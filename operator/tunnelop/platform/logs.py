"""Structured logs: JSON lines by default when not on a terminal, readable lines on one.
kopf's own log records (which carry the object they are about) get `namespace` and `name`."""

from __future__ import annotations

import logging
import sys
from typing import Any

import structlog


def _object_fields(_: Any, __: str, event: dict[str, Any]) -> dict[str, Any]:
    ref = event.pop("k8s_ref", None)
    if isinstance(ref, dict):
        if ref.get("namespace"):
            event.setdefault("namespace", ref["namespace"])
        if ref.get("name"):
            event.setdefault("name", ref["name"])
    event.pop("k8s_skip", None)
    return event


def configure(fmt: str = "auto", level: str = "INFO") -> None:
    """fmt: json | console | auto (json unless stderr is a terminal)."""
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.stdlib.add_log_level,
        structlog.stdlib.add_logger_name,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.stdlib.ExtraAdder(allow=("k8s_ref",)),
        _object_fields,
    ]
    renderer: Any = (
        structlog.processors.JSONRenderer()
        if fmt == "json"
        else structlog.dev.ConsoleRenderer(colors=sys.stderr.isatty())
    )
    structlog.configure(
        processors=[*shared, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=shared,
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                renderer,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log of the webhook server, and kopf's line per handler call, are
    # noise at INFO (thousands of lines per burst of tunnels).
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("kopf.objects").setLevel(max(root.level, logging.WARNING))


def get(name: str) -> structlog.stdlib.BoundLogger:
    return structlog.get_logger(name)
