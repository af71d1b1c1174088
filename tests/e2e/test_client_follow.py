"""`tunnelop client` follows its tunnel to another relay with no one touching it: real frps
(relay pods run by the relay-pod runner), the real operator and real frpc. The relay the
tunnel is on is deleted; the operator moves the tunnel to the other relay its nodeSelector
matches and rewrites the tunnel's Secret; the client restarts frpc with the new config and
visitors are served at the new endpoint."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from support import objects, tools
from support.dataplane import TEST_RELAY_LABEL, delete_relay, on, start_relay, until_closed
from support.netutil import echo_server, wait_for_echo
from support.objects import tunnel, wait_condition, wait_for
from tunnelop.contract.naming import CONTROL_PORT, PLUGIN_PORT

RUN = uuid.uuid4().hex[:5]
SHARED = f"follow-{RUN}"  # the label value both relays carry, which the tunnel selects
RELAY_PORTS = {f"fa-{RUN}": "27000-27049", f"fb-{RUN}": "27050-27099"}


@pytest.fixture(scope="module")
async def relays(operator, relay_runner) -> AsyncIterator[dict[str, str]]:
    """Two relays a tunnel on `on(SHARED)` may land on, with disjoint port ranges so that a
    move changes the remote port too; name -> address."""
    addresses: dict[str, str] = {}
    try:
        for name, ports in RELAY_PORTS.items():
            addresses[name] = await start_relay(
                relay_runner, name, ports=ports, labels={TEST_RELAY_LABEL: SHARED}
            )
        yield addresses
    finally:
        for name in RELAY_PORTS:
            delete_relay(name)
        for address in addresses.values():
            await until_closed(address, PLUGIN_PORT, timeout=30)


class TunnelopClient:
    """`tunnelop client NAMESPACE/TUNNEL` as a tenant runs it, logging JSON to a file."""

    def __init__(self, tunnel_ref: str, local_port: int, kubeconfig: Path, log_path: Path):
        self.argv = [
            str(Path(sys.executable).parent / "tunnelop"),
            "client",
            tunnel_ref,
            "--local-port",
            str(local_port),
            "--kubeconfig",
            str(kubeconfig),
            "--frpc",
            str(tools.tool("frpc")),
            "--log-format",
            "json",
        ]
        self.log_path = log_path
        self.process: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELOP_LOCAL_")}
        with self.log_path.open("ab") as out:
            self.process = await asyncio.create_subprocess_exec(
                *self.argv,
                env=env,
                stdout=out,
                stderr=asyncio.subprocess.STDOUT,
                stdin=asyncio.subprocess.DEVNULL,
                preexec_fn=tools.die_with_parent,
            )

    async def stop(self) -> int:
        """SIGTERM, as a service manager stops it; its exit code."""
        assert self.process is not None
        if self.process.returncode is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(self.process.wait(), 30)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()
        return self.process.returncode

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        """The JSON log lines: the client's, and frpc's logged again (logger "frpc")."""
        found = []
        for line in self.logs().splitlines():
            with contextlib.suppress(ValueError):
                found.append(json.loads(line))
        return found

    async def wait_event(self, event: str, timeout: float = 60, **fields: Any) -> dict[str, Any]:
        """The first log line with this event and these fields, once there is one."""
        return await self.wait_line(
            lambda e: e.get("event") == event and all(e.get(k) == v for k, v in fields.items()),
            f"{event!r} {fields or ''}",
            timeout,
        )

    async def wait_line(self, accept, what: str, timeout: float = 60) -> dict[str, Any]:
        def logged():
            return next((e for e in self.events() if accept(e)), None)

        try:
            return await wait_for(logged, timeout=timeout, what=f"client log {what}")
        except TimeoutError:
            raise AssertionError(f"no {what} in the client's log:\n{self.logs()}") from None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:
        return stat.read().split(") ", 1)[1][0] != "Z"  # a zombie is gone too


def split_endpoint(endpoint: str) -> tuple[str, int]:
    host, _, port = endpoint.rpartition(":")
    return host, int(port)


async def assert_echo(endpoint: str, *diagnostics) -> None:
    host, port = split_endpoint(endpoint)
    payload = os.urandom(64 * 1024)
    try:
        assert await wait_for_echo(host, port, payload, timeout=60) == payload
    except TimeoutError:
        raise AssertionError(
            f"no echo through {endpoint}:\n" + "\n".join(d() for d in diagnostics)
        ) from None


async def test_the_client_follows_its_tunnel_to_another_relay(
    relays, namespace, tmp_path, relay_runner, cluster
):
    objects.apply(tunnel("echo", "tcp", **on(SHARED)), namespace)
    ready = await wait_condition("tunnel", "echo", namespace, "Ready")
    first, endpoint = ready["status"]["relayNode"], ready["status"]["endpoint"]
    (second,) = set(relays) - {first}
    assert split_endpoint(endpoint)[0] == relays[first]

    async with echo_server() as local:
        client = TunnelopClient(
            f"{namespace}/echo", local, cluster.kubeconfig, tmp_path / "client.log"
        )
        await client.start()
        try:
            diagnostics = (client.logs, lambda: relay_runner.logs(first))
            await assert_echo(endpoint, *diagnostics)
            started = await client.wait_event("starting frpc")
            assert started["relay"] == f"{relays[first]}:{CONTROL_PORT}"

            # The provider takes the relay away; nobody touches the tenant's side.
            delete_relay(first)

            def moved():
                status = (objects.get("tunnel", "echo", namespace) or {}).get("status") or {}
                return status if status.get("relayNode") == second else None

            status = await wait_for(moved, timeout=60, what=f"the tunnel on {second}")
            new_endpoint = status["endpoint"]
            assert new_endpoint == f"{relays[second]}:{status['remotePort']}"
            assert new_endpoint != endpoint
            assert "Moved" in objects.event_reasons(namespace, "echo")

            await assert_echo(new_endpoint, client.logs, lambda: relay_runner.logs(second))
            restart = await client.wait_event("tunnel moved; restarting frpc")
            assert restart["from_relay"] == f"{relays[first]}:{CONTROL_PORT}"
            assert restart["to_relay"] == f"{relays[second]}:{CONTROL_PORT}"
            assert restart["to_remote_port"] == status["remotePort"]
            # frpc's own lines, in the client's JSON log: the new frpc runs the proxy.
            await client.wait_line(
                lambda e: (
                    e.get("logger") == "frpc"
                    and e.get("pid") == restart["pid"]
                    and e["event"].endswith("[echo] start proxy success")
                ),
                "the new frpc's proxy started",
            )
            assert not alive(started["pid"])
        finally:
            code = await client.stop()
        assert code == 0, client.logs()
        stopped = await client.wait_event("frpc stopped")
        assert not alive(restart["pid"])
        assert stopped["secret"] == f"{namespace}/echo-frpc"
