"""The data plane under test: relays run by the relay-pod runner from the pod spec the
operator wrote, and frpc run from the Secret the operator wrote, byte for byte, with the local
port in its environment as a tenant runs it.
Plus loopback services and visitors: UDP echo, a small HTTP site, throughput."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import ssl
import sys
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp

from support import objects, tools
from support.objects import relay_node
from support.relay_runner import RelayPodRunner
from tunnelop.contract.naming import PLUGIN_PORT

HOST_NETWORK_HTTP_PORT = 80
HOST_NETWORK_HTTPS_PORT = 443


async def start_relay(
    runner: RelayPodRunner,
    name: str,
    *,
    ports: str,
    protocols: list[str] | None = None,
    http_domain: str | None = None,
    labels: dict[str, str] | None = None,
    **spec: Any,
) -> str:
    """A RelayNode whose public address is the runner's loopback address for it; returns
    that address once the operator made it Ready and its agent serves a table."""
    address = runner.address_of(name)
    if http_domain:
        spec["httpDomain"] = http_domain
    objects.apply(
        relay_node(
            name,
            ports=ports,
            protocols=protocols,
            labels=labels,
            exposure={"type": "HostNetwork", "address": address},
            **spec,
        )
    )
    await objects.wait_condition("relaynode", name, None, "Ready", timeout=60)
    await wait_agent_ready(runner, name)
    return address


def delete_relay(name: str) -> None:
    """Delete a relay and wait until its pod is gone: a HostNetwork relay pod holds its
    node's ports, and the local cluster has only a few fake nodes."""
    tools.kubectl("delete", "relaynode", name, "--ignore-not-found", "--timeout=60s")
    tools.kubectl(
        "wait",
        "--for=delete",
        "pod",
        "-n",
        "tunnelop-system",
        "-l",
        f"tunnelop.dev/relay={name}",
        "--timeout=60s",
        check=False,
    )


TEST_RELAY_LABEL = "tunnelop.test/relay"  # what a test's tunnels select their relay by


def on(relay_name: str) -> dict[str, Any]:
    """spec.relay of a tunnel for the test relay `relay_name` (see serving_relay)."""
    return {"relay": {"nodeSelector": {TEST_RELAY_LABEL: relay_name}}}


@contextlib.asynccontextmanager
async def serving_relay(
    runner: RelayPodRunner, name: str, *, ports: str, **spec: Any
) -> AsyncIterator[tuple[str, str]]:
    """A relay for a test module, labelled for `on(name)`; yields (name, address). Deleted
    afterwards, waiting until its processes let go of the address, which the next module's
    runner hands out again."""
    labels = {TEST_RELAY_LABEL: name}
    async with serving_relays(runner, {name: ports}, labels=labels, **spec) as addresses:
        yield name, addresses[name]


@contextlib.asynccontextmanager
async def serving_relays(
    runner: RelayPodRunner, ports_by_name: dict[str, str], *, labels: dict[str, str], **spec: Any
) -> AsyncIterator[dict[str, str]]:
    """Relays started one after the other with the same labels and spec; yields name ->
    address. Deleted afterwards, waiting until each lets go of its address."""
    addresses: dict[str, str] = {}
    try:
        for name, ports in ports_by_name.items():
            addresses[name] = await start_relay(runner, name, ports=ports, labels=labels, **spec)
        yield addresses
    finally:
        for name in ports_by_name:
            delete_relay(name)
        for address in addresses.values():
            await until_closed(address, PLUGIN_PORT, timeout=30)


async def until_closed(address: str, port: int, timeout: float) -> None:
    """Until nothing listens on address:port."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            _, writer = await asyncio.open_connection(address, port)
        except OSError:
            return
        writer.close()
        await asyncio.sleep(0.2)
    raise TimeoutError(f"{address}:{port} still open {timeout} s after the relay was deleted")


async def wait_agent_ready(runner: RelayPodRunner, relay: str, timeout: float = 60) -> None:
    """Until the relay's agent answers /readyz (it has a table) and frps listens."""
    address = runner.address_of(relay)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.get(f"http://{address}:7401/readyz") as response:
                    if response.status == 200:
                        _, writer = await asyncio.open_connection(address, 7000)
                        writer.close()
                        return
            except (aiohttp.ClientError, OSError):
                pass
            if loop.time() > deadline:
                raise TimeoutError(f"relay {relay} did not serve:\n{runner.logs(relay)}")
            await asyncio.sleep(0.3)


def frpc_env(local_port: int | None) -> dict[str, str]:
    """The environment a tenant runs frpc with: this process's, with TUNNELOP_LOCAL_PORT set
    to `local_port` (the documented way to name the service), or unset for None."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TUNNELOP_LOCAL_")}
    if local_port is not None:
        env["TUNNELOP_LOCAL_PORT"] = str(local_port)
    return env


class Frpc:
    """frpc as a tenant runs it, from the tunnel's credentials Secret; `local_port` goes to
    its environment (None for a config that names its local service itself)."""

    def __init__(self, config_text: str, workdir: Path, local_port: int | None = None) -> None:
        self.workdir = workdir
        self.local_port = local_port
        self.config_path = workdir / f"frpc-{uuid.uuid4().hex[:6]}.toml"
        self.config_path.write_text(config_text)
        self.log_path = self.config_path.with_suffix(".log")
        self.process: asyncio.subprocess.Process | None = None

    @classmethod
    def from_secret(cls, tunnel: str, namespace: str, local_port: int, workdir: Path) -> Frpc:
        frpc_toml = objects.secret_data(f"{tunnel}-frpc", namespace)["frpc.toml"]
        return cls(frpc_toml, workdir, local_port)

    async def start(self) -> Frpc:
        argv = [str(tools.tool("frpc")), "-c", str(self.config_path)]
        self.process = await tools.spawn_logged(argv, self.log_path, frpc_env(self.local_port))
        return self

    async def stop(self) -> None:
        if self.process and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 10)
            except TimeoutError:
                self.process.kill()
                await self.process.wait()

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    async def wait_log(self, pattern: str, timeout: float = 30) -> str:
        """Until frpc's log has a line matching `pattern`; returns that line."""
        regex = re.compile(pattern)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for line in self.logs().splitlines():
                if regex.search(line):
                    return line
            if loop.time() > deadline:
                raise TimeoutError(f"frpc never logged {pattern!r}:\n{self.logs()}")
            await asyncio.sleep(0.2)


def edited_config(
    text: str, replace: dict[str, str] | None = None, append: tuple[str, ...] | list[str] = ()
) -> str:
    """A config with lines replaced, as a tenant edits it: `replace` maps a line's start
    (e.g. "remotePort = ") to its replacement ("" drops the line); `append` adds lines at the
    end, which for frpc.toml is the tunnel's [[proxies]] section."""
    lines = []
    for line in text.splitlines():
        for start, replacement in (replace or {}).items():
            if line.startswith(start):
                line = replacement
                break
        lines.append(line)
    return "\n".join([*lines, *append]) + "\n"


@contextlib.asynccontextmanager
async def running_frpc(
    tunnel: str, namespace: str, local_port: int, workdir: Path
) -> AsyncIterator[Frpc]:
    frpc = await Frpc.from_secret(tunnel, namespace, local_port, workdir).start()
    try:
        yield frpc
    finally:
        await frpc.stop()


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
        self.process = await tools.spawn_logged(self.argv, self.log_path, env)

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
            return await objects.wait_for(logged, timeout=timeout, what=f"client log {what}")
        except TimeoutError:
            raise AssertionError(f"no {what} in the client's log:\n{self.logs()}") from None

    def restarts(self) -> int:
        """How often it restarted frpc for a changed Secret (a move, a new token)."""
        return sum(
            1
            for e in self.events()
            if e.get("event")
            in ("tunnel moved; restarting frpc", "credentials changed; restarting frpc")
        )


# ---- services and visitors ------------------------------------------------------------------


class _UdpEcho(asyncio.DatagramProtocol):
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.transport.sendto(data, addr)  # type: ignore[attr-defined]


@contextlib.asynccontextmanager
async def udp_echo_server(host: str = "127.0.0.1", port: int = 0) -> AsyncIterator[int]:
    """A UDP echo server on `host` (`port`, else a free one); yields its port."""
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_UdpEcho, local_addr=(host, port))
    try:
        yield transport.get_extra_info("sockname")[1]
    finally:
        transport.close()


class _UdpClient(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.received: asyncio.Queue[bytes] = asyncio.Queue()

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        self.received.put_nowait(data)


async def wait_for_udp_echo(host: str, port: int, payload: bytes, timeout: float = 30) -> bytes:
    """Send datagrams until one comes back (UDP through frp may drop the first ones)."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(_UdpClient, remote_addr=(host, port))
    deadline = loop.time() + timeout
    try:
        while loop.time() < deadline:
            transport.sendto(payload)
            try:
                return await asyncio.wait_for(protocol.received.get(), 0.5)
            except TimeoutError:
                continue
        raise TimeoutError(f"no UDP echo through {host}:{port} within {timeout}s")
    finally:
        transport.close()


@contextlib.asynccontextmanager
async def http_site(
    body: str, host: str = "127.0.0.1", *, keep_alive: bool = True
) -> AsyncIterator[int]:
    """A tiny HTTP site on loopback that answers every GET with `body`; yields its port.

    keep_alive=False answers with `Connection: close`, as an HTTP/1.0 server does. frps
    counts an HTTP tunnel's bytes when its connection to frpc closes, and keeps idle ones
    open for 60 s, so only then does the traffic show at once."""
    from aiohttp import web

    async def page(request: web.Request) -> web.Response:
        response = web.Response(text=body, headers={"X-Seen-Host": request.host})
        if not keep_alive:
            response.force_close()
        return response

    app = web.Application()
    app.router.add_get("/{tail:.*}", page)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    finally:
        await runner.cleanup()


async def connect_refused(
    host: str, port: int, *, source: str | None = None, payload: bytes = b"ping"
) -> bool:
    """True if a TCP visitor gets nothing back: refused, reset or closed without an answer
    (frps accepts the connection, then closes it when the agent refuses the visitor)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(host, port, local_addr=(source, 0) if source else None), 5
        )
    except OSError:
        return True
    try:
        writer.write(payload)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(len(payload)), 3)
        return data != payload
    except (OSError, TimeoutError):
        return True
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


@contextlib.asynccontextmanager
async def sink_server(host: str = "127.0.0.1") -> AsyncIterator[tuple[int, list[float]]]:
    """A TCP server that reads and discards; yields its port and a list that gets the
    arrival time of every chunk's last byte count, as (time, total) pairs."""
    arrivals: list[Any] = []

    async def sink(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        total = 0
        with contextlib.suppress(ConnectionError):
            while data := await reader.read(65536):
                total += len(data)
                arrivals.append((time.perf_counter(), total))
        writer.close()

    server = await asyncio.start_server(sink, host, 0)
    try:
        yield server.sockets[0].getsockname()[1], arrivals
    finally:
        server.close()
        await server.wait_closed()


# ---- one visitor at a time: served or not ---------------------------------------------------


async def http_body(
    address: str, host: str, path: str = "/", headers: dict[str, str] | None = None
) -> str | None:
    """The page a browser gets for http://host/path through the relay, None if none."""
    try:
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://{address}:{HOST_NETWORK_HTTP_PORT}{path}",
                headers={"Host": host, **(headers or {})},
                timeout=aiohttp.ClientTimeout(total=2),
            ) as response,
        ):
            text = await response.text()
            return text if response.status == 200 else None
    except (aiohttp.ClientError, OSError, TimeoutError):
        return None


async def served_http(address: str, host: str, path: str = "/", timeout: float = 20) -> str:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while (body := await http_body(address, host, path)) is None:
        if loop.time() > deadline:
            raise TimeoutError(f"http://{host}{path} via {address}: no page in {timeout}s")
        await asyncio.sleep(0.3)
    return body


async def tcp_served(address: str, port: int, source: str | None = None) -> bool:
    """One visitor: connect, send a line, get it echoed."""
    payload = uuid.uuid4().bytes
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(address, port, local_addr=(source, 0) if source else None), 2
        )
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 1.5) == payload
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()


async def udp_served(address: str, port: int) -> bool:
    """One visitor from a fresh source port: a datagram echoed within half a second."""
    loop = asyncio.get_running_loop()
    transport, protocol = await loop.create_datagram_endpoint(
        _UdpClient, remote_addr=(address, port)
    )
    payload = uuid.uuid4().bytes
    try:
        transport.sendto(payload)
        return await asyncio.wait_for(protocol.received.get(), 0.5) == payload
    except TimeoutError:
        return False
    finally:
        transport.close()


async def tls_served(
    address: str,
    host: str,
    ca_file: Path,
    source: str | None = None,
    port: int = HOST_NETWORK_HTTPS_PORT,
) -> bool:
    """One https visitor: TLS to `host` through the relay (SNI), a line echoed."""
    context = ssl.create_default_context(cafile=str(ca_file))
    payload = uuid.uuid4().bytes
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                address,
                port,
                ssl=context,
                server_hostname=host,
                local_addr=(source, 0) if source else None,
            ),
            3,
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    try:
        writer.write(payload)
        await writer.drain()
        return await asyncio.wait_for(reader.readexactly(len(payload)), 2) == payload
    except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(OSError, ssl.SSLError):
            await writer.wait_closed()


async def until_served(attempt: Callable[[], Awaitable[bool]], timeout: float = 30) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await attempt():
        if loop.time() > deadline:
            raise TimeoutError(f"never served within {timeout}s")
        await asyncio.sleep(0.2)


async def time_to_refusal(
    attempt: Callable[[], Awaitable[bool]], since: float, hold: float = 5, timeout: float = 30
) -> float:
    """Seconds from `since` until visitors are refused for good: the first refused attempt
    after the last served one, once `hold` seconds of nothing but refusals followed."""
    loop = asyncio.get_running_loop()
    first_refused: float | None = None
    while True:
        started = loop.time()
        served = await attempt()
        if served:
            first_refused = None
        elif first_refused is None:
            first_refused = started
        now = loop.time()
        if first_refused is not None and now - first_refused >= hold:
            return first_refused - since
        if now - since > timeout:
            raise AssertionError(f"visitors still served {timeout}s after the suspension")
        await asyncio.sleep(0.1)


@contextlib.asynccontextmanager
async def tls_echo_server(cert_file: Path, key_file: Path) -> AsyncIterator[int]:
    """An https service on loopback (the relay passes TLS through to it): echoes lines."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(str(cert_file), str(key_file))

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, ssl.SSLError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
        writer.close()

    server = await asyncio.start_server(echo, "127.0.0.1", 0, ssl=context)
    try:
        yield server.sockets[0].getsockname()[1]
    finally:
        server.close()
