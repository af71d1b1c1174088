"""Keep one frpc running with the latest credentials of a tunnel.

The operator rewrites a tunnel's Secret <tunnel>-frpc in place when it moves the tunnel to
another relay (new serverAddr, maybe a new remotePort) or changes its token. frpc reads its
config once, so the client watches that one Secret and restarts frpc with each new config.
frpc keeps running while the API server cannot be reached: the tunnel does not depend on it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import tempfile
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

from kubernetes.aio.config import ConfigException

from tunnelop.client.credentials import Credentials, describe_change, must_restart, read_secret
from tunnelop.client.options import ClientOptions
from tunnelop.client.supervisor import FrpcProcess, frpc_env
from tunnelop.platform import logs
from tunnelop.platform.informer import Informer, backoff
from tunnelop.platform.kube import Kube

log = logs.get("tunnelop.client")


class NoClusterConfig(Exception):
    """Neither a usable kubeconfig nor an in-cluster config."""


FIRST_RESTART_DELAY = 1.0
MAX_RESTART_DELAY = 30.0
# frpc that ran this long got past its start: its next exit starts the back-off over.
STABLE_RUN_SECONDS = 60.0


async def _first_of(*waits: Awaitable[Any]) -> None:
    """Until the first of `waits` completes; the others are cancelled."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class Follower:
    """Runs `frpc` with what `on_secret` last saw of the Secret `secret` ("namespace/name")."""

    def __init__(self, frpc: FrpcProcess, secret: str, logger: Any = None) -> None:
        self.frpc = frpc
        self.secret = secret
        self.log = logger or log
        self.wanted: Credentials | None = None
        self.deleted = False  # the Secret was there and went away
        self._changed = asyncio.Event()
        self._stopping = asyncio.Event()

    def on_secret(self, kind: str, secret: dict[str, Any]) -> None:
        """Informer handler: ADDED, MODIFIED or DELETED of the Secret."""
        if kind == "DELETED":
            self.wanted, self.deleted = None, True
        else:
            try:
                self.wanted = read_secret(secret)
            except ValueError as error:
                # A broken Secret is no reason to stop a working frpc.
                self.log.warning("cannot use the Secret; frpc stays as it is", error=str(error))
                return
        self._changed.set()

    def stop(self) -> None:
        self._stopping.set()

    async def run(self, synced: Awaitable[Any]) -> None:
        """Until stop(): frpc runs with the latest credentials, once `synced` (the informer's
        first list) completes. frpc is stopped on the way out."""
        await _first_of(synced, self._stopping.wait())
        loop = asyncio.get_running_loop()
        running: Credentials | None = None  # what the live frpc runs with
        last: Credentials | None = None  # what frpc last ran with, for the logs
        failures, started_at, said_waiting = 0, 0.0, False
        try:
            while not self._stopping.is_set():
                self._changed.clear()
                wanted = self.wanted
                if must_restart(running, wanted):
                    if running is not None:
                        await self.frpc.stop()
                        running = None
                    if wanted is not None:
                        event, fields = describe_change(last, wanted)
                        said_waiting = False
                        if wanted != last:
                            failures = 0  # a new config: earlier failures say nothing of it
                        try:
                            await self.frpc.start(wanted.frpc_toml)
                        except OSError as error:
                            failures += 1
                            await self._back_off(failures, "cannot start frpc", error=str(error))
                            continue
                        self.log.info(event, secret=self.secret, pid=self.frpc.pid, **fields)
                        running = last = wanted
                        started_at = loop.time()
                if wanted is None and not said_waiting:
                    said_waiting = True
                    self._say_waiting()
                waits = [self._changed.wait(), self._stopping.wait()]
                if running is not None:
                    waits.append(self.frpc.wait())
                await _first_of(*waits)
                if running is not None and not self.frpc.running and not self._stopping.is_set():
                    running = None
                    failures = 1 if loop.time() - started_at >= STABLE_RUN_SECONDS else failures + 1
                    code = self.frpc.process.returncode if self.frpc.process else None
                    await self._back_off(failures, "frpc exited", exit_code=code)
        finally:
            code = await self.frpc.stop()
            if running is not None:
                self.log.info("frpc stopped", secret=self.secret, exit_code=code)

    def _say_waiting(self) -> None:
        if self.deleted:
            self.log.warning(
                "the Secret was deleted; frpc is stopped until it is back", secret=self.secret
            )
        else:
            self.log.warning(
                "the Secret does not exist (yet); waiting for it (is the Tunnel Ready?)",
                secret=self.secret,
            )

    async def _back_off(self, failures: int, event: str, **fields: Any) -> None:
        """Wait before starting frpc again; a new Secret or stop() ends the wait early."""
        delay = backoff(failures, FIRST_RESTART_DELAY, MAX_RESTART_DELAY)
        self.log.warning(
            f"{event}; starting it again", secret=self.secret, retry_in=delay, **fields
        )
        await _first_of(asyncio.sleep(delay), self._changed.wait(), self._stopping.wait())


async def follow(options: ClientOptions) -> None:
    """`tunnelop client`: until SIGTERM or SIGINT."""
    try:
        kube = await Kube.connect(options.kubeconfig)
    except (OSError, ConfigException) as error:
        raise NoClusterConfig(str(error)) from error
    workdir = Path(tempfile.mkdtemp(prefix="tunnelop-client-"))  # 0700: the config is secret
    frpc = FrpcProcess(
        options.frpc,
        workdir,
        frpc_env(os.environ, options.local_port, options.local_ip),
        options.stop_grace,
    )
    follower = Follower(frpc, f"{options.namespace}/{options.secret_name}")
    informer = Informer(
        kube,
        f"/api/v1/namespaces/{options.namespace}/secrets",
        follower.on_secret,
        # Only this Secret: a Role may grant list and watch for it by resourceNames.
        fields=f"metadata.name={options.secret_name}",
    )
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, follower.stop)
    log.info(
        "following the tunnel's Secret",
        secret=follower.secret,
        local=f"{options.local_ip}:{options.local_port}",
        frpc=options.frpc,
    )
    informer.start()
    try:
        await follower.run(informer.synced.wait())
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await informer.stop()
        with contextlib.suppress(Exception):
            await kube.close()
        await asyncio.to_thread(shutil.rmtree, workdir, True)
