"""The relay agent as a process, with no cluster: invariant 3 with the API server
unreachable (a restarted agent serves the table it kept on the pod's disk, so known clients
reconnect and carry bytes through real frps and frpc, configured by the operator's
builders), and malformed plugin calls answered without harm."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import aiohttp

from support import tools
from support.dataplane import Frpc
from support.netutil import echo_server, wait_for_echo
from tunnelop.agent.source import write_copies
from tunnelop.api.v1alpha1 import RelayNode
from tunnelop.builders.frpc import build_frpc_config
from tunnelop.builders.frps import build_frps_config
from tunnelop.contract import basicauth
from tunnelop.contract.table import TableEntry, token_sha256

ADDRESS = "127.0.0.60"  # this test's relay "pod"
PLUGIN_PASSWORD = "plugin-password-of-the-outage-relay"
UNREACHABLE_KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: gone, cluster: {server: "https://127.0.0.1:9", insecure-skip-tls-verify: true}}]
users: [{name: gone, user: {token: nothing}}]
contexts: [{name: gone, context: {cluster: gone, user: gone}}]
current-context: gone
"""


async def spawn(argv: list[str], log: Path, env: dict[str, str] | None = None):
    with log.open("ab") as out:
        return await asyncio.create_subprocess_exec(
            *argv,
            stdout=out,
            stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL,
            env={**os.environ, **(env or {})},
        )


async def stop(process) -> None:
    if process.returncode is None:
        process.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(process.wait(), 10)
        except TimeoutError:
            process.kill()
            await process.wait()


def agent_without_api_server(tmp_path: Path) -> tuple[list[str], dict[str, str]]:
    """argv and env of an agent whose table (one tcp tunnel, team/ssh on port 23000, token
    "tunnel-token") is only on its disk, and whose API server never answers."""
    state = tmp_path / "state"
    state.mkdir()
    entry = TableEntry("team", "ssh", token_sha256("tunnel-token"), "tcp", remote_port=23000)
    write_copies(state, "outage", [entry])
    (tmp_path / "kubeconfig").write_text(UNREACHABLE_KUBECONFIG)
    argv = [
        str(Path(sys.executable).parent / "tunnelop"),
        "agent",
        "--relay=outage",
        "--namespace=tunnelop-system",
        "--table-secret=relay-outage-table",
        f"--listen={ADDRESS}:7400",
        f"--health-listen={ADDRESS}:7401",
        f"--frps-dashboard=http://{ADDRESS}:7500",
        f"--kubeconfig={tmp_path / 'kubeconfig'}",
    ]
    env = {
        "TUNNELOP_STATE_DIR": str(state),
        "TUNNELOP_DASHBOARD_PASSWORD": "dash",
        "TUNNELOP_PLUGIN_PASSWORD": PLUGIN_PASSWORD,
    }
    return argv, env


async def agent_ready(timeout: float = 20) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    async with aiohttp.ClientSession() as http:
        while loop.time() < deadline:
            try:
                async with http.get(f"http://{ADDRESS}:7401/readyz") as response:
                    if response.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise TimeoutError("agent not ready")


async def test_agent_restarted_without_api_server_serves_its_last_table(tmp_path: Path):
    relay = RelayNode.model_validate(
        {
            "apiVersion": "tunnelop.dev/v1alpha1",
            "kind": "RelayNode",
            "metadata": {"name": "outage"},
            "spec": {
                "ports": {"range": "23000-23099"},
                "exposure": {"type": "HostNetwork", "address": ADDRESS},
            },
        }
    )
    frps_toml = build_frps_config(
        relay, token="relay-token", dashboard_password="dash", plugin_password=PLUGIN_PASSWORD
    )
    # As in the pod: localhost is the pod's own address.
    (tmp_path / "frps.toml").write_text(frps_toml.replace("127.0.0.1", ADDRESS))
    agent_argv, agent_env = agent_without_api_server(tmp_path)
    agent = await spawn(agent_argv, tmp_path / "agent.log", agent_env)
    frps = await spawn(
        [str(tools.tool("frps")), "-c", str(tmp_path / "frps.toml")],
        tmp_path / "frps.log",
        {"TUNNELOP_POD_IP": ADDRESS},
    )
    frpc = None
    try:
        await agent_ready()
        async with echo_server() as local:
            frpc_toml = build_frpc_config(
                namespace="team",
                tunnel_name="ssh",
                protocol="tcp",
                server_addr=ADDRESS,
                server_port=7000,
                relay_token="relay-token",
                tunnel_token="tunnel-token",
                remote_port=23000,
                local_ip="127.0.0.1",
                local_port=local,
            )
            frpc = await Frpc(frpc_toml, tmp_path).start()
            payload = os.urandom(32 * 1024)

            def logs() -> str:
                return "\n".join(
                    p.read_text(errors="replace")
                    for p in (tmp_path / "agent.log", tmp_path / "frps.log", frpc.log_path)
                )

            try:
                assert await wait_for_echo(ADDRESS, 23000, payload, timeout=20) == payload
            except TimeoutError:
                raise AssertionError(logs()) from None

            # The agent dies and comes back; the API server is still unreachable.
            agent.kill()
            await agent.wait()
            agent = await spawn(agent_argv, tmp_path / "agent.log", agent_env)
            await agent_ready()
            # The client reconnects through a fresh login, answered from the kept table.
            await frpc.stop()
            frpc = await Frpc(frpc_toml, tmp_path).start()
            try:
                assert await wait_for_echo(ADDRESS, 23000, payload, timeout=20) == payload
            except TimeoutError:
                raise AssertionError(logs()) from None
            agent_log = (tmp_path / "agent.log").read_text()
            assert '"source": "state"' in agent_log
            assert "table watch interrupted; serving the last table" in agent_log
    finally:
        if frpc is not None:
            await frpc.stop()
        await stop(frps)
        await stop(agent)


async def test_agent_answers_malformed_plugin_calls_and_keeps_serving(tmp_path: Path):
    """Whatever reaches the plugin port, the agent answers it (a refusal for a call it
    cannot read) and stays up."""
    argv, env = agent_without_api_server(tmp_path)
    agent = await spawn(argv, tmp_path / "agent.log", env)
    bodies = [
        b"",
        b"{",
        b"[]",
        b"null",
        b"\xff\xfe not utf-8",
        b'{"op": [], "content": 5}',
        b'{"version": "0.1.0", "op": "Login", "content": {"metas": "nope"}}',
        b'{"version": "0.1.0", "op": "NewProxy", "content": {"user": [1, 2]}}',
        os.urandom(4096),
    ]
    frps = basicauth.header("frps", PLUGIN_PASSWORD)  # as frps calls it
    try:
        await agent_ready()
        async with aiohttp.ClientSession(headers=frps) as http:
            for body in bodies:
                for op in ("Login", "NewProxy", "Ping", "NewUserConn", "CloseProxy", "Other"):
                    url = f"http://{ADDRESS}:7400/handler?version=0.1.0&op={op}"
                    async with http.post(url, data=body) as response:
                        assert response.status == 200, (op, body)
                        answer = await response.json()
                    assert isinstance(answer["reject"], bool)
                    assert isinstance(answer["unchange"], bool)
                    if op in ("Login", "NewProxy", "Ping", "NewUserConn"):
                        assert answer["reject"], (op, body, answer)
            # frps always names the op in the query; a call without one is judged on its body.
            for body in (b'{"op": [], "content": {}}', b'{"op": {"x": 1}}', b"{}"):
                async with http.post(f"http://{ADDRESS}:7400/handler", data=body) as response:
                    assert response.status == 200, body
                    answer = await response.json()
                assert isinstance(answer["reject"], bool), body
            async with http.get(f"http://{ADDRESS}:7400/elsewhere") as response:
                assert response.status == 404
            async with http.get(f"http://{ADDRESS}:7401/healthz") as response:
                assert response.status == 200
        assert agent.returncode is None
    finally:
        await stop(agent)
