"""Real bytes through real frps, the real agent and real frpc, on loopback. The relay pods run
from the pod spec the operator wrote (relay-pod runner); frpc runs from the frpc.toml the
operator wrote, with the local port in frpc's environment — or, for the refusals, with exactly
the edit a misbehaving tenant would make."""

from __future__ import annotations

import asyncio
import json
import os
import uuid

import aiohttp
import pytest

from support import objects, tools
from support.dataplane import (
    Frpc,
    connect_refused,
    edited_config,
    http_site,
    on,
    running_frpc,
    served_http,
    serving_relay,
    sink_server,
    udp_echo_server,
    wait_for_udp_echo,
)
from support.netutil import echo_once, echo_server, wait_for_echo
from support.objects import tunnel, wait_condition, wait_for
from tunnelop.contract import basicauth

RUN = uuid.uuid4().hex[:5]
HTTP_DOMAIN = "tunnels.test"


@pytest.fixture(scope="module")
async def relay(operator, relay_runner):
    """One relay for the module, offering every protocol; returns (name, address)."""
    async with serving_relay(
        relay_runner,
        f"dp-{RUN}",
        ports="21000-21999",
        protocols=["tcp", "udp", "http", "https"],
        http_domain=HTTP_DOMAIN,
    ) as relay:
        yield relay


@pytest.fixture(scope="module")
async def tcp_only_relay(operator, relay_runner):
    """A relay that offers only tcp and udp, as providers who had to block HTTP run them."""
    async with serving_relay(relay_runner, f"dpt-{RUN}", ports="22000-22099") as relay:
        yield relay


async def ready_tunnel(namespace: str, name: str, protocol: str, relay_name: str, **spec) -> dict:
    objects.apply(tunnel(name, protocol, **on(relay_name), **spec), namespace)
    return await wait_condition("tunnel", name, namespace, "Ready")


def edited_frpc(
    tunnel_name: str, namespace: str, local_port: int, workdir, edit: dict[str, str]
) -> Frpc:
    """The tunnel's frpc.toml with lines replaced (see edited_config), run with `local_port`."""
    text = objects.secret_data(f"{tunnel_name}-frpc", namespace)["frpc.toml"]
    return Frpc(edited_config(text, edit), workdir, local_port)


async def assert_echo(address: str, port: int, *diagnostics) -> None:
    payload = os.urandom(64 * 1024)
    try:
        assert await wait_for_echo(address, port, payload, timeout=20) == payload
    except TimeoutError:
        raise AssertionError("\n".join(d() for d in diagnostics)) from None


# ---- traffic flows --------------------------------------------------------------------------


async def test_tcp_echo_and_its_traffic_in_status(relay, namespace, tmp_path, relay_runner):
    relay_name, address = relay
    ready = await ready_tunnel(namespace, "echo", "tcp", relay_name)
    port = ready["status"]["remotePort"]
    assert ready["status"]["endpoint"] == f"{address}:{port}"
    payload = os.urandom(256 * 1024)
    async with echo_server() as local, running_frpc("echo", namespace, local, tmp_path) as frpc:
        try:
            assert await wait_for_echo(address, port, payload, timeout=20) == payload
        except TimeoutError:
            raise AssertionError(frpc.logs() + relay_runner.logs(relay_name)) from None
        connected = await wait_condition(
            "tunnel", "echo", namespace, "ClientConnected", "True", timeout=15
        )
        assert f"relay {relay_name}" in objects.condition(connected, "ClientConnected")["message"]

        def traffic_counted():
            traffic = (objects.get("tunnel", "echo", namespace) or {}).get("status", {})
            traffic = traffic.get("traffic") or {}
            return traffic if traffic.get("bytesIn", 0) >= len(payload) else None

        # frps counts a TCP connection's bytes when it closes; the echo connection is closed.
        traffic = await wait_for(traffic_counted, timeout=20, what="traffic in status")
        assert traffic["bytesOut"] >= len(payload)
        assert traffic["lastSeen"].endswith("Z")

        # The agent's own metrics: per tunnel, behind the relay's dashboard credentials.
        url = f"http://{address}:7401/metrics"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as response:
                assert response.status == 401
            password = objects.secret_data(f"relay-{relay_name}-config", "tunnelop-system")[
                "dashboard-password"
            ]
            async with http.get(url, headers=basicauth.header("admin", password)) as response:
                text = await response.text()
        labels = f'namespace="{namespace}",relay="{relay_name}",tunnel="echo"'
        assert f"tunnelop_tunnel_client_connected{{{labels}}} 1.0" in text
        assert f"tunnelop_tunnel_bytes_in_total{{{labels}}}" in text

    await wait_condition(
        "tunnel", "echo", namespace, "ClientConnected", "False", "ClientNotConnected", timeout=20
    )


async def test_udp_echo(relay, namespace, tmp_path, relay_runner):
    relay_name, address = relay
    ready = await ready_tunnel(namespace, "dns", "udp", relay_name)
    port = ready["status"]["remotePort"]
    async with udp_echo_server() as local, running_frpc("dns", namespace, local, tmp_path) as frpc:
        try:
            assert await wait_for_udp_echo(address, port, b"hello over udp") == b"hello over udp"
        except TimeoutError:
            raise AssertionError(frpc.logs() + relay_runner.logs(relay_name)) from None


async def test_http_by_subdomain(relay, namespace, tmp_path, relay_runner):
    relay_name, address = relay
    subdomain = f"blog-{RUN}"
    ready = await ready_tunnel(namespace, "blog", "http", relay_name, subdomain=subdomain)
    host = f"{subdomain}.{HTTP_DOMAIN}"
    assert ready["status"]["endpoint"] == f"http://{host}"
    async with (
        http_site("hello from behind NAT") as local,
        running_frpc("blog", namespace, local, tmp_path) as frpc,
    ):
        try:
            assert await served_http(address, host) == "hello from behind NAT"
        except TimeoutError:
            raise AssertionError(frpc.logs() + relay_runner.logs(relay_name)) from None


# ---- refusals ---------------------------------------------------------------------------------


async def test_wrong_token_is_refused(relay, namespace, tmp_path):
    relay_name, address = relay
    ready = await ready_tunnel(namespace, "guarded", "tcp", relay_name)
    port = ready["status"]["remotePort"]
    frpc = edited_frpc(
        "guarded", namespace, 9, tmp_path, {"metadatas.token = ": 'metadatas.token = "guess"'}
    )
    await frpc.start()
    try:
        # The same answer as for a tunnel that does not exist: nothing to enumerate.
        line = await frpc.wait_log("credentials refused by relay")
        assert relay_name in line
        assert "guarded" not in line
        assert await connect_refused(address, port)
        # The tenant sees why in the Tunnel's status.
        refused = await wait_condition(
            "tunnel", "guarded", namespace, "ClientConnected", "False", "ClientRefused", timeout=60
        )
        message = objects.condition(refused, "ClientConnected")["message"]
        assert f"relay {relay_name} refused the client's Login" in message
    finally:
        await frpc.stop()


async def test_tenant_cannot_claim_another_tenants_port_or_subdomain(
    relay, namespace, kube, tmp_path, relay_runner
):
    relay_name, address = relay
    tenant_b = f"{namespace[:50]}-b"
    tools.kubectl("create", "namespace", tenant_b)
    try:
        a_tcp = await ready_tunnel(namespace, "a-tcp", "tcp", relay_name)
        a_port = a_tcp["status"]["remotePort"]
        a_sub = f"a-{RUN}"
        await ready_tunnel(namespace, "a-web", "http", relay_name, subdomain=a_sub)
        await ready_tunnel(tenant_b, "b-tcp", "tcp", relay_name)
        await ready_tunnel(tenant_b, "b-web", "http", relay_name)

        async with (
            echo_server() as a_local,
            http_site("tenant A") as a_site,
            running_frpc("a-tcp", namespace, a_local, tmp_path),
            running_frpc("a-web", namespace, a_site, tmp_path),
        ):
            await assert_echo(address, a_port, lambda: relay_runner.logs(relay_name))
            host_a = f"{a_sub}.{HTTP_DOMAIN}"
            assert await served_http(address, host_a) == "tenant A"

            # B edits its own frpc.toml to take A's port, then A's subdomain.
            steal_port = edited_frpc(
                "b-tcp", tenant_b, 9, tmp_path, {"remotePort = ": f"remotePort = {a_port}"}
            )
            steal_sub = edited_frpc(
                "b-web", tenant_b, 9, tmp_path, {"subdomain = ": f'subdomain = "{a_sub}"'}
            )
            # And B presents A's tunnel name with its own token.
            impersonate = edited_frpc(
                "b-tcp",
                tenant_b,
                9,
                tmp_path,
                {"metadatas.tunnel = ": f'metadatas.tunnel = "{namespace}/a-tcp"'},
            )
            for frpc in (steal_port, steal_sub, impersonate):
                await frpc.start()
            try:
                line = await steal_port.wait_log("is allocated port")
                assert f"remotePort {a_port}" in line
                line = await steal_sub.wait_log("is allocated subdomain")
                assert a_sub in line
                await impersonate.wait_log("credentials refused by relay")
                # A keeps working, over TCP and HTTP.
                await assert_echo(address, a_port, steal_port.logs)
                assert await served_http(address, host_a) == "tenant A"
            finally:
                for frpc in (steal_port, steal_sub, impersonate):
                    await frpc.stop()
    finally:
        tools.kubectl("delete", "namespace", tenant_b, "--wait=false")


async def test_http_refused_on_a_relay_without_http(tcp_only_relay, namespace, tmp_path):
    relay_name, address = tcp_only_relay
    # Admission refuses an http Tunnel there (no matching relay offers http)...
    refused = tools.kubectl(
        "apply",
        "-n",
        namespace,
        "-f",
        "-",
        input=json.dumps(tunnel("site", "http", **on(relay_name))),
        check=False,
    )
    assert refused.returncode != 0 and "spec.protocol" in refused.stderr, refused.stderr
    # ...and the relay refuses a tenant who turns a tcp tunnel into an http proxy.
    await ready_tunnel(namespace, "shell", "tcp", relay_name)
    frpc = edited_frpc(
        "shell",
        namespace,
        9,
        tmp_path,
        {"type = ": 'type = "http"', "remotePort = ": 'subdomain = "shop"'},
    )
    await frpc.start()
    try:
        line = await frpc.wait_log("is of type 'tcp'")
        assert "proxy type 'http'" in line
    finally:
        await frpc.stop()
    assert await connect_refused(address, 80)


async def test_suspension_refuses_visitors_and_kicks_the_client(
    relay, namespace, tmp_path, relay_runner
):
    relay_name, address = relay
    ready = await ready_tunnel(namespace, "game", "tcp", relay_name)
    port = ready["status"]["remotePort"]
    async with echo_server() as local, running_frpc("game", namespace, local, tmp_path) as frpc:
        await assert_echo(address, port, frpc.logs)
        await wait_condition("tunnel", "game", namespace, "ClientConnected", "True", timeout=15)
        reader, writer = await asyncio.open_connection(address, port)  # a visitor, connected

        objects.set_suspended("game", namespace, True)
        # How fast (target: 5 s) is measured by bench/bench_dataplane.py; here the bound
        # only keeps a broken suspension from passing.
        await _until_refused(address, port, timeout=10)
        await frpc.wait_log("pong message contains error", timeout=10)
        assert "is suspended" in frpc.logs()
        # The visitor connected before is cut with the client's session.
        assert await asyncio.wait_for(reader.read(1), 10) == b""
        writer.close()
        await wait_condition("tunnel", "game", namespace, "Ready", "False", "TunnelSuspended")
        await wait_condition(
            "tunnel", "game", namespace, "ClientConnected", "False", "TunnelSuspended", timeout=15
        )
        # Lifting the suspension lets the same frpc back in (it keeps retrying).
        objects.set_suspended("game", namespace, False)
        await assert_echo(address, port, frpc.logs)
    await wait_for(
        lambda: {"Suspended", "Resumed"} <= set(objects.event_reasons(namespace, "game")),
        timeout=15,
        what="Suspended and Resumed events",
    )


async def test_rotated_token_and_deleted_tunnel_kick_the_client(relay, namespace, tmp_path):
    relay_name, address = relay
    ready = await ready_tunnel(namespace, "rotating", "tcp", relay_name)
    port = ready["status"]["remotePort"]
    async with echo_server() as local:
        old = await Frpc.from_secret("rotating", namespace, local, tmp_path).start()
        try:
            await assert_echo(address, port, old.logs)
            # Deleting the credentials Secret rotates the token: the old client is kicked at
            # its next heartbeat and refused after, a client with the new Secret gets in.
            tools.kubectl("delete", "secret", "rotating-frpc", "-n", namespace)
            await old.wait_log("pong message contains error", timeout=15)
            await old.wait_log("credentials refused by relay", timeout=15)
        finally:
            await old.stop()
        await wait_for(
            lambda: objects.get("secret", "rotating-frpc", namespace), what="a new Secret"
        )
        async with running_frpc("rotating", namespace, local, tmp_path) as new:
            await assert_echo(address, port, new.logs)
            # A deleted tunnel's client is kicked, and its port closes.
            tools.kubectl("delete", "tunnel", "rotating", "-n", namespace)
            await new.wait_log("pong message contains error", timeout=15)
            await new.wait_log("credentials refused by relay", timeout=15)
            assert await connect_refused(address, port)


async def _until_refused(address: str, port: int, timeout: float) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await connect_refused(address, port):
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"visitors still served {timeout}s after suspension")


async def test_visitor_outside_allow_source_ranges_is_refused(relay, namespace, tmp_path):
    relay_name, address = relay
    allowed, outsider = "127.0.0.201", "127.0.0.202"
    ready = await ready_tunnel(
        namespace, "office", "tcp", relay_name, allowSourceRanges=[f"{allowed}/32"]
    )
    port = ready["status"]["remotePort"]
    async with echo_server() as local, running_frpc("office", namespace, local, tmp_path) as frpc:
        await assert_echo_from(address, port, allowed, frpc)
        assert await connect_refused(address, port, source=outsider)
        await assert_echo_from(address, port, allowed, frpc)


async def assert_echo_from(address: str, port: int, source: str, frpc: Frpc) -> None:
    async def attempt():
        try:
            return await echo_once(address, port, b"knock", source=source)
        except (OSError, asyncio.IncompleteReadError, TimeoutError):
            return None

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while loop.time() < deadline:
        if await attempt() == b"knock":
            return
        await asyncio.sleep(0.3)
    raise AssertionError(f"no echo from {source}:\n{frpc.logs()}")


async def test_bandwidth_is_limited_to_spec(relay, namespace, tmp_path):
    relay_name, address = relay
    spec_bps = 4_000_000  # "4M": 500,000 bytes per second
    ready = await ready_tunnel(namespace, "slow", "tcp", relay_name, bandwidth="4M")
    port = ready["status"]["remotePort"]
    async with sink_server() as (local, arrivals), running_frpc("slow", namespace, local, tmp_path):
        await wait_for_echo_free_port(address, port)
        arrivals.clear()
        _, writer = await asyncio.open_connection(address, port)
        total = 3_000_000
        chunk = os.urandom(64 * 1024)
        sent = 0
        while sent < total:
            writer.write(chunk)
            await writer.drain()
            sent += len(chunk)
        await wait_for(lambda: arrivals and arrivals[-1][1] >= total, timeout=30, what="sink")
        writer.close()
    # frps lets one second's worth through at once (its limiter's burst): measure after it.
    start_time, start_bytes = next((t, b) for t, b in arrivals if b >= spec_bps / 8 * 1.2)
    end_time, end_bytes = arrivals[-1]
    measured_bps = (end_bytes - start_bytes) * 8 / (end_time - start_time)
    assert 0.8 * spec_bps <= measured_bps <= 1.2 * spec_bps, f"measured {measured_bps:.0f} bit/s"


async def wait_for_echo_free_port(address: str, port: int) -> None:
    """Until the tunnel's port accepts visitors (the sink never answers, so just connect)."""

    async def open_port():
        try:
            _, writer = await asyncio.open_connection(address, port)
        except OSError:
            return False
        writer.close()
        return True

    loop = asyncio.get_running_loop()
    deadline = loop.time() + 20
    while not await open_port():
        if loop.time() > deadline:
            raise TimeoutError(f"{address}:{port} never opened")
        await asyncio.sleep(0.3)
    await asyncio.sleep(0.5)  # let frps settle the probe connection


async def test_relay_agent_is_least_privileged(relay, relay_namespace):
    relay_name, _ = relay
    sa = f"system:serviceaccount:{relay_namespace}:relay-{relay_name}"

    def can(*args: str) -> bool:
        result = tools.kubectl("auth", "can-i", *args, "--as", sa, check=False)
        return result.stdout.strip() == "yes"

    assert can("get", f"secret/relay-{relay_name}-table", "-n", relay_namespace)
    assert can("watch", f"secret/relay-{relay_name}-table", "-n", relay_namespace)
    assert can("watch", f"secret/relay-{relay_name}-table-7", "-n", relay_namespace)
    assert not can("get", f"secret/relay-{relay_name}-table-8", "-n", relay_namespace)
    assert not can("get", f"secret/relay-{relay_name}-config", "-n", relay_namespace)
    assert not can("list", "secrets", "-n", relay_namespace)
    assert not can("get", "secrets", "-A")
    assert not can("update", f"secret/relay-{relay_name}-table", "-n", relay_namespace)
    assert not can("get", "tunnels", "-A")
    # The table it reads has token digests only.
    table = objects.relay_table(relay_name, relay_namespace)
    assert table
    for entry in table:
        assert set(entry) & {"token", "tokenSha256"} == {"tokenSha256"}


# ---- outages ----------------------------------------------------------------------------------


async def test_tunnels_keep_working_and_reconnect_while_the_operator_is_down(
    relay, namespace, tmp_path, operator, relay_runner
):
    relay_name, address = relay
    ready = await ready_tunnel(namespace, "steady", "tcp", relay_name)
    port = ready["status"]["remotePort"]
    async with echo_server() as local:
        frpc = await Frpc.from_secret("steady", namespace, local, tmp_path).start()
        try:
            await assert_echo(address, port, frpc.logs)
            await operator.stop()
            try:
                await assert_echo(address, port, frpc.logs)
                # The client reconnects: the agent serves its login from the table it holds.
                await frpc.stop()
                assert await connect_refused(address, port)
                frpc = await Frpc.from_secret("steady", namespace, local, tmp_path).start()
                await assert_echo(address, port, frpc.logs, lambda: relay_runner.logs(relay_name))
            finally:
                await operator.start()
        finally:
            await frpc.stop()


async def test_operator_restart_with_a_connected_client_writes_nothing(
    relay, namespace, tmp_path, operator, relay_namespace
):
    """Metering included: with a client connected and its traffic reported, a restarted
    operator finds every status current and writes nothing (heartbeats alone never write)."""
    relay_name, address = relay
    ready = await ready_tunnel(namespace, "calm", "tcp", relay_name)
    port = ready["status"]["remotePort"]
    async with echo_server() as local, running_frpc("calm", namespace, local, tmp_path) as frpc:
        await assert_echo(address, port, frpc.logs)
        await wait_condition("tunnel", "calm", namespace, "ClientConnected", "True", timeout=15)

        def counted():
            traffic = (objects.get("tunnel", "calm", namespace) or {}).get("status", {})
            return (traffic.get("traffic") or {}).get("bytesIn", 0) > 0

        await wait_for(counted, timeout=20, what="traffic in status")
        await asyncio.sleep(4)  # past the traffic write interval: nothing is pending

        def snapshot() -> dict[str, dict]:
            return objects.snapshot_of(
                [
                    objects.get("tunnel", "calm", namespace),
                    objects.get("secret", "calm-frpc", namespace),
                    *objects.relay_table_secrets(relay_name, relay_namespace),
                    objects.get("relaynode", relay_name),
                ]
            )

        before = snapshot()
        await operator.stop()
        await operator.start()
        await asyncio.sleep(6)  # several traffic rounds (1 s) and every reconcile
        after = snapshot()
        objects.assert_unchanged(before, after)

        # A reconcile for another reason (a label) while heartbeats keep coming: the status
        # stays as it is; lastSeen moves only with the counted figures.
        await asyncio.sleep(4)  # a heartbeat or more since the last reading was written
        tools.kubectl("label", "tunnel", "calm", "-n", namespace, "tunnelop.test/poke=1")
        await asyncio.sleep(3)
        assert objects.get("tunnel", "calm", namespace)["status"] == after["Tunnel/calm"]["status"]
