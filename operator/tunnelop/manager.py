"""Runs the operator: kopf with tunnelop's handlers, settings and admission webhook."""

from __future__ import annotations

import asyncio
import tempfile
from dataclasses import dataclass
from pathlib import Path

import kopf

from tunnelop.platform import certs, logs

WEBHOOK_CONFIGURATION = "tunnelop.dev"


@dataclass(frozen=True)
class Options:
    relay_namespace: str = "tunnelop-system"
    webhook_host: str = "127.0.0.1"
    webhook_port: int = 9443
    webhook: bool = True
    log_format: str = "auto"
    workers: int = 64
    log_level: str = "INFO"
    traffic_interval: float = 10.0


def _register_handlers(options: Options) -> kopf.OperatorRegistry:
    # Importing the controller modules registers their handlers in kopf's default registry.
    from tunnelop.controllers import watches, webhook  # noqa: F401
    from tunnelop.controllers.traffic import TrafficOptions

    @kopf.on.startup(backoff=1)
    async def start_runtime(memo: kopf.Memo, **_: object) -> None:
        traffic = TrafficOptions(
            interval=options.traffic_interval,
            # A traffic-only change waits for a few rounds; ClientConnected goes at once.
            min_write_interval=3 * options.traffic_interval,
        )
        await watches.start(memo, options.relay_namespace, options.workers, traffic)

    @kopf.on.cleanup()
    async def stop_runtime(memo: kopf.Memo, **_: object) -> None:
        runtime = getattr(memo, "runtime", None)
        if runtime is not None:
            await runtime.stop()

    return kopf.get_default_registry()


def build_settings(options: Options, workdir: Path) -> kopf.OperatorSettings:
    settings = kopf.OperatorSettings()
    # The controllers post their own Events; kopf's per-handler Events would be noise.
    settings.posting.enabled = False
    # kopf's own bookkeeping, should any handler need it, lives in status, never in
    # annotations: Git owns metadata and spec (invariant 5).
    settings.persistence.progress_storage = kopf.StatusProgressStorage(field="status.kopf.progress")
    settings.persistence.diffbase_storage = kopf.StatusDiffBaseStorage(field="status.kopf.diffbase")
    settings.persistence.finalizer = "tunnelop.dev/kopf"
    # Watch only what is ours among Secrets and Deployments (server-side filtering).
    settings.watching.label_selectors["v1", "secrets"] = "tunnelop.dev/tunnel"
    settings.watching.label_selectors["apps", "deployments"] = "tunnelop.dev/relay"
    settings.watching.server_timeout = 300
    if options.webhook:
        cert = certs.issue_webhook_certificate(
            workdir / "webhook", [options.webhook_host, "localhost"]
        )
        settings.admission.server = kopf.WebhookServer(
            addr=options.webhook_host,
            port=options.webhook_port,
            host=options.webhook_host,
            certfile=str(cert.cert_file),
            pkeyfile=str(cert.key_file),
            cadata=cert.ca_pem,
        )
        settings.admission.managed = WEBHOOK_CONFIGURATION
    return settings


async def run(options: Options) -> None:
    logs.configure(options.log_format, options.log_level)
    registry = _register_handlers(options)
    with tempfile.TemporaryDirectory(prefix="tunnelop-") as workdir:
        settings = build_settings(options, Path(workdir))
        await kopf.operator(
            registry=registry,
            settings=settings,
            clusterwide=True,
            standalone=True,
        )


def main(options: Options) -> int:
    try:
        asyncio.run(run(options))
    except KeyboardInterrupt:
        return 130
    return 0
