"""The relay agent's plugin endpoint (tunnelop.agent.server): only frps, with the relay's
plugin password, is heard; a call without it is refused with 401 before anything is decided
or observed; and each decision is noted in the metrics and in the tunnel's last refusal."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import RawTestServer, TestClient
from prometheus_client import generate_latest

from tunnelop.agent import server
from tunnelop.agent.server import Agent, AgentOptions, RateLimitedLog
from tunnelop.contract import basicauth
from tunnelop.contract.table import TableEntry, table_documents, token_sha256

RELAY = "relay-a"
PASSWORD = "plugin-password-0123456789"
FRPS = basicauth.header("frps", PASSWORD)
TOKEN = "tok-9a0e2f6c1d3b4857-ssh"


def options(**overrides: Any) -> AgentOptions:
    fields: dict[str, Any] = {
        "relay": RELAY,
        "namespace": "tunnelop-system",
        "table_secret": f"relay-{RELAY}-table",
        "listen": "127.0.0.1:0",
        "health_listen": "127.0.0.1:0",
        "frps_dashboard": "http://127.0.0.1:9",
        "dashboard_password": "dash",
        "plugin_password": PASSWORD,
        "state_dir": None,
        **overrides,
    }
    return AgentOptions(**fields)


def ready_agent(**overrides: Any) -> Agent:
    agent = Agent(options(**overrides))
    entries = [
        TableEntry("team-a", "ssh", token_sha256(TOKEN), "tcp", remote_port=21000),
        TableEntry("team-b", "web", token_sha256("other-token-77"), "http", subdomain="web"),
    ]
    load_table(agent, entries)
    return agent


def load_table(agent: Agent, entries: list[TableEntry]) -> None:
    """The whole table, every shard, as the agent would read it from the API."""
    for shard, text in enumerate(table_documents(RELAY, entries)):
        assert agent.source.apply(text, "test", shard)


@pytest.fixture
async def plugin() -> AsyncIterator[tuple[Agent, TestClient]]:
    agent = ready_agent()
    async with TestClient(RawTestServer(agent._plugin_or_404)) as client:
        yield agent, client


def ssh_user(run_id: str = "run-1", token: str = TOKEN) -> dict[str, Any]:
    return {"user": "team-a", "metas": {"tunnel": "team-a/ssh", "token": token}, "run_id": run_id}


def new_proxy(run_id: str = "run-1") -> dict[str, Any]:
    return {
        "user": ssh_user(run_id),
        "proxy_name": "team-a.ssh",
        "proxy_type": "tcp",
        "remote_port": 21000,
    }


async def call(
    client: TestClient, op: str, content: Any, headers: dict[str, str] | None = FRPS
) -> web.Response:
    body = {"version": "0.1.0", "op": op, "content": content}
    return await client.post(f"/handler?version=0.1.0&op={op}", json=body, headers=headers)


def metric(agent: Agent, name: str, **labels: str) -> float:
    value = agent.registry.get_sample_value(name, labels)
    return 0.0 if value is None else value


# ---- authentication ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers",
    [
        None,
        basicauth.header("frps", "wrong"),
        basicauth.header("admin", PASSWORD),
        {"Authorization": "Bearer " + PASSWORD},
        {"Authorization": "Basic !!!"},
    ],
    ids=["none", "wrong-password", "wrong-user", "not-basic", "garbage"],
)
async def test_a_call_without_frps_credentials_is_refused_and_changes_nothing(
    plugin: tuple[Agent, TestClient], headers: dict[str, str] | None
) -> None:
    agent, client = plugin
    assert (await call(client, "NewProxy", new_proxy())).status == 200
    assert agent.meter.tunnels["team-a/ssh"].online is True
    # A forged CloseProxy of the tunnel's own session: exactly what frps would send.
    close = {"user": ssh_user(), "proxy_name": "team-a.ssh"}
    response = await call(client, "CloseProxy", close, headers)
    assert response.status == 401
    assert response.headers["WWW-Authenticate"].startswith("Basic")
    assert agent.meter.tunnels["team-a/ssh"].online is True
    assert metric(agent, "tunnelop_agent_plugin_unauthorized_total") == 1
    # Not decided: no request counted.
    assert (
        metric(agent, "tunnelop_agent_plugin_requests_total", op="CloseProxy", result="accepted")
        == 0
    )


async def test_a_forged_login_is_not_observed(plugin: tuple[Agent, TestClient]) -> None:
    agent, client = plugin
    response = await call(client, "Login", ssh_user(), headers=None)
    assert response.status == 401
    assert agent.meter.tunnels == {}
    assert agent.meter.sessions.bound == {}


async def test_frps_with_its_credentials_is_answered(plugin: tuple[Agent, TestClient]) -> None:
    agent, client = plugin
    response = await call(client, "Login", ssh_user())
    assert response.status == 200
    assert await response.json() == {"reject": False, "unchange": True}
    assert metric(agent, "tunnelop_agent_plugin_requests_total", op="Login", result="accepted") == 1
    assert metric(agent, "tunnelop_agent_plugin_unauthorized_total") == 0


def test_an_agent_without_a_plugin_password_refuses_to_start() -> None:
    with pytest.raises(ValueError, match="TUNNELOP_PLUGIN_PASSWORD"):
        options(plugin_password=None)
    with pytest.raises(ValueError, match="TUNNELOP_PLUGIN_PASSWORD"):
        options(plugin_password="")


async def test_only_an_explicit_flag_serves_without_credentials() -> None:
    agent = ready_agent(plugin_password=None, allow_unauthenticated_plugin=True)
    async with TestClient(RawTestServer(agent._plugin_or_404)) as client:
        assert (await call(client, "Login", ssh_user(), headers=None)).status == 200


def test_the_unauthorized_log_is_rate_limited(monkeypatch: pytest.MonkeyPatch) -> None:
    lines: list[dict[str, Any]] = []
    monkeypatch.setattr(
        server.log, "warning", lambda event, **fields: lines.append({"event": event, **fields})
    )
    limited = RateLimitedLog("refused", interval=10.0)
    logged = [limited.note(now=t / 10) for t in range(1000)]  # 1000 calls in 100 s
    assert logged[0] is True
    assert sum(logged) == len(lines) == 10
    assert lines[1]["suppressed_since_last"] == 99


# ---- decisions as the agent notes them ----------------------------------------------------------


async def test_refusals_are_counted_by_op_and_cause_and_kept_as_the_tunnels_last(
    plugin: tuple[Agent, TestClient],
) -> None:
    agent, client = plugin
    answer = await (await call(client, "Login", ssh_user(token="guess"))).json()
    assert answer["reject"] is True
    assert metric(agent, "tunnelop_agent_refusals_total", op="Login", cause="bad_token") == 1
    refusal = agent.meter.tunnels["team-a/ssh"].last_refusal
    assert refusal is not None
    assert (refusal.op, refusal.reason) == ("Login", answer["reject_reason"])


async def test_refusals_for_unknown_tunnels_are_counted_but_not_kept(
    plugin: tuple[Agent, TestClient],
) -> None:
    agent, client = plugin
    user = ssh_user()
    user["metas"]["tunnel"] = "team-z/anything"
    await call(client, "Login", user)
    assert metric(agent, "tunnelop_agent_refusals_total", op="Login", cause="unknown_tunnel") == 1
    assert agent.meter.tunnels == {}  # a stranger's names take no memory


async def test_a_refused_visitor_is_not_the_clients_refusal(
    plugin: tuple[Agent, TestClient],
) -> None:
    agent, client = plugin
    load_table(
        agent,
        [
            TableEntry(
                "team-a",
                "ssh",
                token_sha256(TOKEN),
                "tcp",
                remote_port=21000,
                allow_source_ranges=("10.0.0.0/8",),
            )
        ],
    )
    visitor = {"user": ssh_user(), "proxy_name": "team-a.ssh", "remote_addr": "8.8.8.8:5"}
    assert (await (await call(client, "NewUserConn", visitor)).json())["reject"] is True
    labels = {"op": "NewUserConn", "cause": "outside_source_ranges"}
    assert metric(agent, "tunnelop_agent_refusals_total", **labels) == 1
    traffic = agent.meter.tunnels.get("team-a/ssh")
    assert traffic is None or traffic.last_refusal is None


async def test_another_tunnels_run_id_is_refused_and_a_stale_close_changes_nothing(
    plugin: tuple[Agent, TestClient],
) -> None:
    agent, client = plugin
    await call(client, "Login", ssh_user("run-1"))
    assert (await (await call(client, "NewProxy", new_proxy("run-1"))).json())["reject"] is False
    web_user = {
        "user": "team-b",
        "metas": {"tunnel": "team-b/web", "token": "other-token-77"},
        "run_id": "run-1",
    }
    # Another tenant presenting the live run_id would take over the session in frps.
    answer = await (await call(client, "Login", web_user)).json()
    assert answer["reject"] is True
    assert metric(agent, "tunnelop_agent_refusals_total", op="Login", cause="run_id_taken") == 1
    # A second frpc of the same tunnel: refused, saying why.
    answer = await (await call(client, "NewProxy", new_proxy("run-2"))).json()
    assert "only one frpc may run per tunnel" in answer["reject_reason"]
    # The CloseProxy of a session that is not the one online changes nothing.
    await call(client, "CloseProxy", {"user": ssh_user("run-2"), "proxy_name": "team-a.ssh"})
    assert agent.meter.tunnels["team-a/ssh"].online is True
    await call(client, "CloseProxy", {"user": ssh_user("run-1"), "proxy_name": "team-a.ssh"})
    assert agent.meter.tunnels["team-a/ssh"].online is False


async def test_without_a_table_every_call_is_refused_as_not_ready() -> None:
    agent = Agent(options())
    async with TestClient(RawTestServer(agent._plugin_or_404)) as client:
        answer = await (await call(client, "Login", ssh_user())).json()
    assert answer["reject"] is True
    assert metric(agent, "tunnelop_agent_refusals_total", op="Login", cause="not_ready") == 1


async def test_the_metrics_name_the_new_families(plugin: tuple[Agent, TestClient]) -> None:
    agent, client = plugin
    await call(client, "Login", ssh_user(token="guess"))
    await call(client, "Login", ssh_user(), headers=None)
    text = generate_latest(agent.registry).decode()
    assert "tunnelop_agent_plugin_unauthorized_total 1.0" in text
    assert 'tunnelop_agent_refusals_total{cause="bad_token",op="Login"} 1.0' in text
    assert "tunnelop_tunnel_last_refusal_timestamp_seconds{" in text
