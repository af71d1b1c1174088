"""Tenant B attacks tenant A on a shared relay, with real frps, the real agent and real frpc.

B is a tenant like any other: it applies Tunnels in its own namespace and runs frpc from the
Secret the operator wrote, edited as a hostile tenant would edit it. Every attack must be
refused, and A's site must keep answering throughout (each test ends by asking it). The
measured times to refusal are printed (`pytest -rP`); how fast is a benchmark's job, the
bounds here only keep a broken mechanism from passing.

The forged plugin calls (a process on the relay's host calling the agent without the relay's
credentials) are in test_agent_auth.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import uuid
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from support import objects, tools
from support.dataplane import (
    Frpc,
    edited_config,
    http_body,
    http_site,
    on,
    served_http,
    serving_relay,
    tcp_served,
    time_to_refusal,
    tls_echo_server,
    tls_served,
    udp_echo_server,
    udp_served,
    until_served,
)
from support.netutil import echo_server
from support.objects import tunnel, wait_condition
from tunnelop.contract import basicauth
from tunnelop.platform.certs import issue_webhook_certificate

RUN = uuid.uuid4().hex[:5]
HTTP_DOMAIN = "relay.attack.test"
A_DOMAIN = f"shop-{RUN}.example.org"  # tenant A's own custom domain
A_SUBDOMAIN = f"shop-{RUN}"
A_BODY, B_BODY = "site of tenant A", "site of tenant B"
OUTSIDER = "127.0.0.250"  # a visitor address outside every allowSourceRanges below


# ---- the ground: one relay, two tenants, A's site online --------------------------------------


@pytest.fixture(scope="module")
async def relay(operator, relay_runner):
    async with serving_relay(
        relay_runner,
        f"atk-{RUN}",
        ports="23000-23199",
        protocols=["tcp", "udp", "http", "https"],
        http_domain=HTTP_DOMAIN,
    ) as relay:
        yield relay


@pytest.fixture(scope="module")
def tenants(operator):
    """Two namespaces: A's and B's."""
    names = (f"tenant-a-{RUN}", f"tenant-b-{RUN}")
    for name in names:
        tools.kubectl("create", "namespace", name)
    yield names
    for name in names:
        tools.kubectl("delete", "namespace", name, "--wait=false", check=False)


class Site:
    """Tenant A's http tunnel `shop` (its subdomain and custom domain) and its frpc."""

    def __init__(self, namespace: str, address: str, local_port: int, workdir: Path) -> None:
        self.namespace, self.address = namespace, address
        self.local_port, self.workdir = local_port, workdir
        self.frpc: Frpc | None = None

    async def start(self) -> None:
        self.frpc = await Frpc.from_secret(
            "shop", self.namespace, self.local_port, self.workdir
        ).start()

    async def stop(self) -> None:
        if self.frpc:
            await self.frpc.stop()
            self.frpc = None

    async def answers(self, timeout: float = 20) -> None:
        """A's site answers by both its names, with A's page."""
        for host in (A_DOMAIN, f"{A_SUBDOMAIN}.{HTTP_DOMAIN}"):
            body = await served_http(self.address, host, timeout=timeout)
            assert body == A_BODY, f"{host} answered {body!r}"


@pytest.fixture(scope="module")
async def site_a(relay, tenants, tmp_path_factory) -> AsyncIterator[Site]:
    relay_name, address = relay
    a_ns, _ = tenants
    objects.apply(
        tunnel("shop", "http", subdomain=A_SUBDOMAIN, customDomains=[A_DOMAIN], **on(relay_name)),
        a_ns,
    )
    await wait_condition("tunnel", "shop", a_ns, "Ready")
    async with http_site(A_BODY) as port:
        site = Site(a_ns, address, port, tmp_path_factory.mktemp("tenant-a"))
        await site.start()
        await site.answers()
        yield site
        await site.stop()


@pytest.fixture
async def b_site() -> AsyncIterator[int]:
    async with http_site(B_BODY) as port:
        yield port


# ---- frpc as tenant B edits it ------------------------------------------------------------


def frpc_text(tunnel_name: str, namespace: str) -> str:
    return objects.secret_data(f"{tunnel_name}-frpc", namespace)["frpc.toml"]


@contextlib.asynccontextmanager
async def frpc_running(text: str, workdir: Path, local_port: int | None) -> AsyncIterator[Frpc]:
    frpc = await Frpc(text, workdir, local_port).start()
    try:
        yield frpc
    finally:
        await frpc.stop()


async def b_web(relay_name: str, b_ns: str) -> None:
    """B's own, legitimate http tunnel: the base of B's edited configs."""
    objects.apply(tunnel("web", "http", **on(relay_name)), b_ns)
    await wait_condition("tunnel", "web", b_ns, "Ready")


async def refused_in_status(name: str, namespace: str, pattern: str) -> dict:
    """Until the tunnel's ClientConnected says the relay refused its client, for a reason
    matching `pattern`."""

    def check() -> dict | None:
        found = objects.condition(objects.get("tunnel", name, namespace), "ClientConnected")
        if found and found["reason"] == "ClientRefused" and re.search(pattern, found["message"]):
            return found
        return None

    return await objects.wait_for(check, 30, what=f"{name}: ClientRefused /{pattern}/")


def refused_kubectl_apply(obj: dict, namespace: str) -> str:
    """Apply as the tenant would; returns the API server's refusal (fails if admitted)."""
    import json

    doc = json.dumps(obj)
    result = tools.kubectl("apply", "-n", namespace, "-f", "-", input=doc, check=False)
    assert result.returncode != 0, f"admitted: {obj}"
    return result.stderr


# ---- 1. host names: custom domains and routing options ----------------------------------------


async def test_b_cannot_claim_a_custom_domain_of_a(relay, tenants, site_a):
    relay_name, _ = relay
    _, b_ns = tenants
    refusal = refused_kubectl_apply(
        tunnel("grab", "http", customDomains=[A_DOMAIN], **on(relay_name)), b_ns
    )
    assert "spec.customDomains" in refusal and A_DOMAIN in refusal, refusal
    # Host names under a relay's httpDomain are the provider's: subdomains only.
    refusal = refused_kubectl_apply(
        tunnel("grab", "http", customDomains=[f"{A_SUBDOMAIN}.{HTTP_DOMAIN}"], **on(relay_name)),
        b_ns,
    )
    assert "spec.customDomains" in refusal and HTTP_DOMAIN in refusal, refusal
    assert objects.get("tunnel", "grab", b_ns) is None
    await site_a.answers()


@pytest.mark.parametrize(
    ("lines", "refused_for"),
    [
        pytest.param([f'customDomains = ["{A_DOMAIN}"]'], A_DOMAIN, id="a-domain"),
        pytest.param(
            [f'customDomains = ["{A_DOMAIN}"]', 'locations = ["/admin"]'],
            f"{re.escape(A_DOMAIN)}|locations",
            id="a-domain-under-admin",
        ),
        pytest.param(['locations = ["/admin"]'], "locations", id="locations"),
        pytest.param(
            ['routeByHTTPUser = "alice"', 'httpUser = "alice"', 'httpPassword = "secret"'],
            "routeByHTTPUser",
            id="route-by-http-user",
        ),
    ],
)
async def test_b_cannot_route_into_the_host_of_a(
    relay, tenants, site_a, b_site, tmp_path, lines, refused_for
):
    relay_name, address = relay
    _, b_ns = tenants
    await b_web(relay_name, b_ns)
    text = edited_config(frpc_text("web", b_ns), append=lines)
    async with frpc_running(text, tmp_path, b_site) as frpc:
        line = await frpc.wait_log(r"\[web\] start error", 20)
        assert re.search(refused_for, line), frpc.logs()
        # What B's own status says: refused, with the relay's reason, not "run frpc".
        await refused_in_status("web", b_ns, refused_for)
        # A's site answers by its names, on every path and for every login, with A's page.
        await site_a.answers()
        assert await served_http(address, A_DOMAIN, "/admin") == A_BODY
        login = basicauth.header("alice", "secret")  # a visitor of A who logs in
        assert await http_body(address, A_DOMAIN, "/admin", headers=login) == A_BODY


async def test_b_cannot_take_the_host_of_a_while_a_is_away(
    relay, tenants, site_a, b_site, tmp_path
):
    relay_name, address = relay
    _, b_ns = tenants
    await b_web(relay_name, b_ns)
    await site_a.stop()  # A's frpc disconnects: its host names are free on frps
    try:
        for domains in (f'customDomains = ["{A_DOMAIN}"]', f'subdomain = "{A_SUBDOMAIN}"'):
            text = edited_config(frpc_text("web", b_ns), replace={"subdomain = ": domains})
            async with frpc_running(text, tmp_path, b_site) as frpc:
                await frpc.wait_log(r"\[web\] start error", 20)
                for host in (A_DOMAIN, f"{A_SUBDOMAIN}.{HTTP_DOMAIN}"):
                    assert await http_body(address, host) != B_BODY
    finally:
        await site_a.start()
    # A comes back: its proxy is registered (nobody took its names) and serves A's page.
    await site_a.answers()
    await wait_condition("tunnel", "shop", site_a.namespace, "ClientConnected", "True", timeout=30)


# ---- 2. allowSourceRanges: enforced where accepted, refused where it cannot be -----------


@pytest.mark.parametrize("protocol", ["udp", "http"])
async def test_source_ranges_are_refused_where_the_relay_cannot_check_them(
    relay, tenants, protocol
):
    relay_name, _ = relay
    _, b_ns = tenants
    refusal = refused_kubectl_apply(
        tunnel("ranged", protocol, allowSourceRanges=["127.0.0.1/32"], **on(relay_name)), b_ns
    )
    assert "spec.allowSourceRanges" in refusal and f"protocol '{protocol}'" in refusal, refusal


async def test_source_ranges_hold_for_tcp(relay, tenants, site_a, tmp_path):
    relay_name, address = relay
    _, b_ns = tenants
    objects.apply(
        tunnel("office", "tcp", allowSourceRanges=["127.0.0.1/32"], **on(relay_name)), b_ns
    )
    ready = await wait_condition("tunnel", "office", b_ns, "Ready")
    port = ready["status"]["remotePort"]
    async with echo_server() as local, frpc_running(frpc_text("office", b_ns), tmp_path, local):
        await until_served(lambda: tcp_served(address, port, source="127.0.0.1"))
        for _ in range(5):
            assert not await tcp_served(address, port, source=OUTSIDER)
        assert await tcp_served(address, port, source="127.0.0.1")
    await site_a.answers()


async def test_source_ranges_hold_for_https(relay, tenants, site_a, tmp_path):
    relay_name, address = relay
    _, b_ns = tenants
    host = f"vault-{RUN}.{HTTP_DOMAIN}"
    objects.apply(
        tunnel(
            "vault",
            "https",
            subdomain=f"vault-{RUN}",
            allowSourceRanges=["127.0.0.1/32"],
            **on(relay_name),
        ),
        b_ns,
    )
    await wait_condition("tunnel", "vault", b_ns, "Ready")
    cert = await asyncio.to_thread(issue_webhook_certificate, tmp_path, [host])
    ca_file = tmp_path / "ca.pem"
    ca_file.write_bytes(cert.ca_pem)
    async with (
        tls_echo_server(cert.cert_file, cert.key_file) as local,
        frpc_running(frpc_text("vault", b_ns), tmp_path, local),
    ):
        await until_served(lambda: tls_served(address, host, ca_file, source="127.0.0.1"))
        for _ in range(5):
            assert not await tls_served(address, host, ca_file, source=OUTSIDER)
        assert await tls_served(address, host, ca_file, source="127.0.0.1")
    await site_a.answers()


# ---- 3. suspension with heartbeats disabled, every protocol -------------------------------


NO_HEARTBEATS = {"transport.heartbeatInterval = ": "transport.heartbeatInterval = -1"}


@contextlib.asynccontextmanager
async def suspended_service(protocol: str, relay, namespace: str, workdir: Path):
    """A tunnel of `protocol` served by frpc without heartbeats; yields one visitor attempt."""
    relay_name, address = relay
    name = f"susp-{protocol}"
    spec = {"subdomain": f"susp-{RUN}"} if protocol == "http" else {}
    objects.apply(tunnel(name, protocol, **spec, **on(relay_name)), namespace)
    ready = await wait_condition("tunnel", name, namespace, "Ready")
    port = ready["status"].get("remotePort")
    text = edited_config(frpc_text(name, namespace), replace=NO_HEARTBEATS)
    assert "transport.heartbeatInterval = -1" in text
    if protocol == "tcp":
        service = echo_server()
        attempt = lambda: tcp_served(address, port)  # noqa: E731
    elif protocol == "udp":
        service = udp_echo_server()
        attempt = lambda: udp_served(address, port)  # noqa: E731
    else:
        service = http_site("suspended soon")

        async def attempt() -> bool:
            return await http_body(address, f"susp-{RUN}.{HTTP_DOMAIN}") == "suspended soon"

    async with service as local, frpc_running(text, workdir, local) as frpc:
        yield name, attempt, frpc


@pytest.mark.parametrize("protocol", ["tcp", "udp", "http"])
async def test_suspension_refuses_new_visitors_even_without_heartbeats(
    relay, tenants, site_a, tmp_path, protocol
):
    _, b_ns = tenants
    loop = asyncio.get_running_loop()
    async with suspended_service(protocol, relay, b_ns, tmp_path) as (name, attempt, frpc):
        await until_served(attempt)
        since = loop.time()
        objects.set_suspended(name, b_ns, True)
        # Refused within seconds (target 5 s), not when frps's old 30 s timeout ran out.
        seconds = await time_to_refusal(attempt, since, timeout=20)
        print(
            f"measured: {protocol} without heartbeats, new visitors refused after {seconds:.2f} s"
        )
        assert seconds < 15
        await frpc.wait_log("suspended", timeout=20)  # its logins are refused, saying why
        await wait_condition("tunnel", name, b_ns, "Ready", "False", "TunnelSuspended")
        objects.set_suspended(name, b_ns, False)
        await until_served(attempt)  # the same frpc gets back in, at the same endpoint
    await site_a.answers()


# ---- 4. enumeration -------------------------------------------------------------------------


def _login_answer(logs: str) -> str:
    """The relay's answer to a refused login, as frpc logs it."""
    for line in logs.splitlines():
        if "connect to server error: " in line:
            return line.split("connect to server error: ", 1)[1]
    raise AssertionError(f"no refused login in frpc's log:\n{logs}")


async def test_guessed_logins_do_not_tell_which_tunnels_exist(relay, tenants, site_a, tmp_path):
    relay_name, _ = relay
    a_ns, b_ns = tenants
    await b_web(relay_name, b_ns)
    answers = {}
    for target in (f"{a_ns}/shop", f"{a_ns}/no-such-tunnel-{RUN}"):
        text = edited_config(
            frpc_text("web", b_ns),
            replace={
                "metadatas.tunnel = ": f'metadatas.tunnel = "{target}"',
                "metadatas.token = ": f'metadatas.token = "guess-{uuid.uuid4().hex}"',
            },
        )
        async with frpc_running(text, tmp_path, 1) as frpc:
            await frpc.wait_log("connect to server error", 20)
            answers[target] = _login_answer(frpc.logs())
    existing, missing = answers.values()
    assert existing == missing, answers
    assert "shop" not in existing and "no-such-tunnel" not in missing
    await site_a.answers()
