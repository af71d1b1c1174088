"""The relay agent's plugin endpoint hears frps alone. With HostNetwork it listens on the
node's localhost, where any process could call it: a call without frps's credentials (the
relay's plugin password, which frps sends as basic auth from its plugin addr) is refused with
401 and changes nothing. And the relay-pod runner serves that endpoint as a pod does: frps
reaches the agent at the pod's own localhost with the credentials from the config Secret."""

from __future__ import annotations

import asyncio
import os
import re
import tomllib
import uuid

import aiohttp
import pytest

from support import objects
from support.dataplane import running_frpc, serving_relay
from support.netutil import echo_server, wait_for_echo
from support.objects import tunnel, wait_condition
from support.relay_runner import RelayPodRunner
from tunnelop.contract import basicauth, naming

RUN = uuid.uuid4().hex[:5]
RELAY_NAMESPACE = "tunnelop-system"


@pytest.fixture(scope="module")
async def relay(operator, relay_runner):
    async with serving_relay(relay_runner, f"auth-{RUN}", ports="24000-24099") as relay:
        yield relay


def relay_secrets(relay_name: str) -> dict[str, str]:
    return objects.secret_data(naming.config_secret_name(relay_name), RELAY_NAMESPACE)


async def plugin_call(
    address: str, op: str, content: dict, headers: dict[str, str] | None
) -> tuple[int, str]:
    url = f"http://{address}:{naming.PLUGIN_PORT}{naming.AGENT_PLUGIN_PATH}?version=0.1.0&op={op}"
    body = {"version": "0.1.0", "op": op, "content": content}
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.post(url, json=body, headers=headers or {}) as response,
    ):
        return response.status, await response.text()


async def agent_metrics(address: str, dashboard_password: str) -> str:
    url = f"http://{address}:{naming.AGENT_HEALTH_PORT}/metrics"
    auth = basicauth.header(naming.DASHBOARD_USER, dashboard_password)
    async with (
        aiohttp.ClientSession(trust_env=False) as http,
        http.get(url, headers=auth) as response,
    ):
        response.raise_for_status()
        return await response.text()


def sample(text: str, name: str, **labels: str) -> float | None:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{wanted}}} " if labels else f"{name} "):
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_forged_plugin_calls_are_refused_and_change_nothing(
    relay, namespace, tmp_path, relay_runner: RelayPodRunner
):
    relay_name, address = relay
    objects.apply(
        tunnel("victim", "tcp", relay={"nodeSelector": {"tunnelop.test/relay": relay_name}}),
        namespace,
    )
    ready = await wait_condition("tunnel", "victim", namespace, "Ready")
    port = ready["status"]["remotePort"]
    secrets = relay_secrets(relay_name)
    # What frps would send when the victim's proxy closes, run_id and all: only the
    # credentials are missing or wrong.
    frpc_toml = tomllib.loads(
        objects.with_local_lines(
            objects.secret_data("victim-frpc", namespace)["frpc.toml"],
            'localIP = "127.0.0.1"',
            "localPort = 9",
        )
    )
    user = {"user": namespace, "metas": frpc_toml["metadatas"], "run_id": ""}
    payload = os.urandom(32 * 1024)
    async with echo_server() as local, running_frpc("victim", namespace, local, tmp_path) as frpc:
        assert await wait_for_echo(address, port, payload, timeout=20) == payload, frpc.logs()
        await wait_condition("tunnel", "victim", namespace, "ClientConnected", "True", timeout=30)
        run_id = re.search(r"get run id \[([0-9a-f]+)\]", frpc.logs())
        assert run_id is not None, frpc.logs()
        user["run_id"] = run_id[1]
        close = {"user": user, "proxy_name": f"{namespace}.victim"}
        for headers in (
            None,
            basicauth.header(naming.PLUGIN_USER, "guess"),
            basicauth.header(naming.DASHBOARD_USER, secrets[naming.DASHBOARD_PASSWORD_KEY]),
        ):
            status, _ = await plugin_call(address, "CloseProxy", close, headers)
            assert status == 401
        # A forged login with the victim's own credentials is not heard either.
        status, _ = await plugin_call(address, "Login", {**user, "run_id": "f" * 16}, None)
        assert status == 401

        metrics = await agent_metrics(address, secrets[naming.DASHBOARD_PASSWORD_KEY])
        assert sample(metrics, "tunnelop_agent_plugin_unauthorized_total") == 4
        labels = {"namespace": namespace, "tunnel": "victim", "relay": relay_name}
        assert sample(metrics, "tunnelop_tunnel_client_connected", **labels) == 1
        # Through the operator's next readings, the victim stays connected and served.
        await asyncio.sleep(12)  # more than one traffic interval (10 s)
        shown = objects.condition(objects.get("tunnel", "victim", namespace), "ClientConnected")
        assert shown is not None and shown["status"] == "True", shown
        assert await wait_for_echo(address, port, payload, timeout=10) == payload
        assert "pong message contains error" not in frpc.logs()


async def test_the_runner_serves_the_plugin_endpoint_as_the_pod_does(
    relay, relay_runner: RelayPodRunner
):
    relay_name, address = relay
    pod = relay_runner.pod_for(relay_name)
    assert pod is not None
    secrets = relay_secrets(relay_name)
    password = secrets[naming.PLUGIN_PASSWORD_KEY]
    # frps's config as the pod mounts it: the plugin addr holds frps's credentials and the
    # pod's localhost, which on loopback is the relay's own address.
    mounted = tomllib.loads((pod.root / "volumes" / "config" / naming.FRPS_CONFIG_KEY).read_text())
    (plugin,) = mounted["httpPlugins"]
    assert (
        plugin["addr"] == f"http://{naming.PLUGIN_USER}:{password}@{address}:{naming.PLUGIN_PORT}"
    )
    # The agent listens there, with the same password from the same Secret (by env, not args).
    agent = next(c for c in pod.containers if c.name == "agent")
    assert f"{address}:{naming.PLUGIN_PORT}" in agent.argv
    assert agent.env[naming.PLUGIN_PASSWORD_ENV] == password
    assert not any(password in arg for arg in agent.argv)
    # And it answers whoever holds frps's credentials, as frps calls it.
    ping = {"user": {"user": "nobody", "metas": {}, "run_id": ""}}
    frps = basicauth.header(naming.PLUGIN_USER, password)
    status, text = await plugin_call(address, "Ping", ping, frps)
    assert status == 200
    assert '"reject": true' in text  # no tunnel credentials: refused, but heard
    status, _ = await plugin_call(address, "Ping", ping, None)
    assert status == 401
