"""TunnelQuota on the data plane, with real frps, the relay agent and real frpc: the
namespace's kill switch and the monthly traffic cap stop what the relay serves, and lifting
them brings the tunnels back at the same endpoints. The measured times are printed
(`pytest -rP`); the bounds here only keep a broken mechanism from passing."""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import uuid

import pytest

from support import objects, tools
from support.dataplane import (
    http_body,
    http_site,
    on,
    running_frpc,
    serving_relay,
    tcp_served,
    time_to_refusal,
    until_served,
)
from support.netutil import echo_server, wait_for_echo
from support.objects import tunnel, wait_condition

RUN = uuid.uuid4().hex[:5]
HTTP_DOMAIN = "quota.test"
# How often the kill switch is thrown and lifted (KILL_SWITCH_TRIES=10 for the figures of a
# release note; each try waits for frpc's reconnect back-off).
TRIES = int(os.environ.get("KILL_SWITCH_TRIES", "2"))


@pytest.fixture(scope="module")
async def relay(operator, relay_runner):
    async with serving_relay(
        relay_runner,
        f"qt-{RUN}",
        ports="25000-25099",
        protocols=["tcp", "http"],
        http_domain=HTTP_DOMAIN,
    ) as relay:
        yield relay


async def test_the_kill_switch_refuses_and_kicks_every_tunnel_and_lifting_restores_them(
    relay, namespace, tmp_path
):
    relay_name, address = relay
    await objects.apply_quota(namespace, "tier", {"tunnels": 5})
    objects.apply(tunnel("game", "tcp", **on(relay_name)), namespace)
    objects.apply(tunnel("site", "http", subdomain=f"site-{RUN}", **on(relay_name)), namespace)
    game = await wait_condition("tunnel", "game", namespace, "Ready")
    await wait_condition("tunnel", "site", namespace, "Ready")
    port = game["status"]["remotePort"]
    host = f"site-{RUN}.{HTTP_DOMAIN}"

    async def game_served() -> bool:
        return await tcp_served(address, port)

    async def site_served() -> bool:
        return await http_body(address, host) == "site"

    async def any_served() -> bool:
        return await game_served() or await site_served()

    loop = asyncio.get_running_loop()
    times = []
    async with (
        echo_server() as echo,
        http_site("site") as web,
        running_frpc("game", namespace, echo, tmp_path) as game_frpc,
        running_frpc("site", namespace, web, tmp_path),
    ):
        for _ in range(TRIES):
            await until_served(game_served, timeout=60)
            await until_served(site_served, timeout=60)
            offset = len(game_frpc.logs())
            since = loop.time()
            objects.patch_quota(namespace, "tier", {"suspended": True})
            seconds = await time_to_refusal(any_served, since, hold=2)
            times.append(seconds)
            assert seconds < 15
            # The client is kicked and its logins refused, saying why.
            await game_frpc.wait_log("suspended", timeout=20)
            assert "suspended" in game_frpc.logs()[offset:]
            for name in ("game", "site"):
                held = await wait_condition(
                    "tunnel", name, namespace, "Ready", "False", "NamespaceSuspended"
                )
                assert held["spec"].get("suspended") is not True  # the spec is the tenant's
            objects.patch_quota(namespace, "tier", {"suspended": False})
        await until_served(game_served, timeout=60)
        await until_served(site_served, timeout=60)
    after = objects.get("tunnel", "game", namespace)
    assert after["status"]["remotePort"] == port  # the same endpoint
    print(
        f"measured: kill switch over {len(times)} tries, tcp and http visitors refused after "
        f"p50 {statistics.median(times):.2f} s, max {max(times):.2f} s"
    )
    reasons = objects.event_reasons(namespace, "game")
    assert "Resumed" in reasons, reasons


async def test_the_monthly_traffic_cap_suspends_the_namespace_until_raised(
    relay, namespace, tmp_path
):
    relay_name, address = relay
    await objects.apply_quota(namespace, "tier", {"monthlyTraffic": "2Mi"})
    objects.apply(tunnel("bulk", "tcp", **on(relay_name)), namespace)
    ready = await wait_condition("tunnel", "bulk", namespace, "Ready")
    port = ready["status"]["remotePort"]
    loop = asyncio.get_running_loop()
    async with echo_server() as echo, running_frpc("bulk", namespace, echo, tmp_path) as frpc:
        await until_served(lambda: tcp_served(address, port), timeout=30)
        # 3 MiB echoed, over connections that close (frps counts a tcp connection's bytes
        # when it closes): 6 MiB in and out, past the 2 MiB cap.
        chunk = os.urandom(512 * 1024)
        for _ in range(6):
            assert await wait_for_echo(address, port, chunk, timeout=20) == chunk
        pushed = loop.time()
        held = await wait_condition(
            "tunnel", "bulk", namespace, "Ready", "False", "TrafficQuotaExceeded", timeout=30
        )
        message = objects.condition(held, "Ready")["message"]
        assert "hard.monthlyTraffic" in message, message
        seconds = await time_to_refusal(lambda: tcp_served(address, port), pushed, hold=2)
        await frpc.wait_log("suspended", timeout=20)
        print(f"measured: traffic cap, visitors refused {seconds:.2f} s after the last push")
        assert seconds < 30
        quota = objects.get("tunnelquota", "tier", namespace)
        exceeded = objects.condition(quota, "Exceeded")
        assert exceeded and exceeded["status"] == "True", quota.get("status")
        used = quota["status"]["used"]["traffic"]
        columns = tools.kubectl("get", "tq", "-n", namespace).stdout
        print(f"kubectl get tq:\n{columns}")
        # The leaderboard, as a provider reads it: this tunnel is on it, with its bytes.
        await objects.wait_for(
            lambda: objects.get("tunnel", "bulk", namespace)["status"]["traffic"].get(
                "periodBytes"
            ),
            what="periodBytes in status",
        )
        top = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-m", "tunnelop.cli", "top", "--kubeconfig", str(tools.KUBECONFIG)],
            capture_output=True,
            text=True,
            timeout=60,
        )
        print(f"tunnelop top:\n{top.stdout}{top.stderr}")
        assert top.returncode == 0 and namespace in top.stdout, top.stdout + top.stderr
        # Raising the limit lifts the hold: the same endpoint serves again.
        objects.patch_quota(namespace, "tier", {"hard": {"monthlyTraffic": "1Gi"}})
        await wait_condition("tunnel", "bulk", namespace, "Ready", timeout=30)
        await until_served(lambda: tcp_served(address, port), timeout=60)
    assert used, quota["status"]
    assert objects.get("tunnel", "bulk", namespace)["status"]["remotePort"] == port
