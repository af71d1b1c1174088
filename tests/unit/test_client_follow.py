"""`tunnelop client`: reading the tunnel's Secret, deciding when frpc must restart, and the
follower running a stand-in frpc (a small script that records how it was started) through
moves, deletions, crashes and stops."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import stat
import sys
from pathlib import Path

import pytest

from tunnelop.builders.frpc import build_frpc_config
from tunnelop.client import follow as follow_module
from tunnelop.client.credentials import Credentials, describe_change, must_restart, read_secret
from tunnelop.client.follow import Follower
from tunnelop.client.options import check_local_host, parse_tunnel_ref
from tunnelop.client.supervisor import FrpcProcess, frpc_env, frpc_line

NAMESPACE, TUNNEL = "team-a", "game"
SECRET = f"{NAMESPACE}/{TUNNEL}-frpc"


def frpc_toml(server: str = "relay-1.example.test", port: int = 21000, token: str = "t1") -> str:
    return build_frpc_config(
        namespace=NAMESPACE,
        tunnel_name=TUNNEL,
        protocol="tcp",
        server_addr=server,
        server_port=7000,
        relay_token="relay-token",
        tunnel_token=token,
        remote_port=port,
    )


def secret(config: str, token: str = "t1", version: str = "1") -> dict:
    encode = lambda text: base64.b64encode(text.encode()).decode()  # noqa: E731
    return {
        "metadata": {"namespace": NAMESPACE, "name": f"{TUNNEL}-frpc", "resourceVersion": version},
        "data": {"frpc.toml": encode(config), "token": encode(token)},
    }


# ---- the command line's values -----------------------------------------------------------


def test_a_tunnel_is_named_namespace_slash_name():
    assert parse_tunnel_ref("team-a/game") == ("team-a", "game")
    assert parse_tunnel_ref("default/web.v2") == ("default", "web.v2")


@pytest.mark.parametrize(
    ("value", "message"),
    [
        ("game", "must be NAMESPACE/TUNNEL"),
        ("/game", "must be NAMESPACE/TUNNEL"),
        ("team-a/", "must be NAMESPACE/TUNNEL"),
        ("a/b/c", "must be NAMESPACE/TUNNEL"),
        ("Team/game", "the namespace must be a DNS label"),
        ("team.a/game", "the namespace must be a DNS label"),
        (f"{'n' * 64}/game", "the namespace must be a DNS label"),
        ("team-a/Game", "the tunnel must be a Kubernetes object name"),
        ("team-a/game-", "the tunnel must be a Kubernetes object name"),
        (f"team-a/{'g' * 249}", "at most 248"),
    ],
)
def test_bad_tunnel_names_are_refused_saying_what_is_allowed(value, message):
    with pytest.raises(ValueError, match=message):
        parse_tunnel_ref(value)


def test_the_local_service_is_an_ip_address_or_a_host_name():
    assert check_local_host("10.0.0.7") == "10.0.0.7"
    assert check_local_host("::1") == "::1"
    assert check_local_host("db.internal") == "db.internal"
    for bad in ("", 'a"b', "a b", "-host", "host/path"):
        with pytest.raises(ValueError, match="must be an IP address or a host name"):
            check_local_host(bad)


@pytest.mark.parametrize(
    ("raw", "logged"),
    [
        (
            "\x1b[1;34m2026-12-01 01:32:59.956 [I] [client/service.go:332] login to server "
            "success, get run id [9cf1]\n",
            ("info", "login to server success, get run id [9cf1]"),
        ),
        (
            "\x1b[0m\x1b[1;33m2026-12-01 01:33:00.504 [W] [client/service.go:312] connect to "
            "server error: EOF\x1b[0m",
            ("warning", "connect to server error: EOF"),
        ),
        ("2026-12-01 01:33:00 [E] [a.go:1] refused", ("error", "refused")),
        ("2026-12-01 01:33:00.1 [D] [a.go:1] detail", ("debug", "detail")),
        (
            'template: frpc:1: template "TUNNELOP_LOCAL_PORT is not set" not defined\n',
            ("warning", 'template: frpc:1: template "TUNNELOP_LOCAL_PORT is not set" not defined'),
        ),
        ("\x1b[0m\n", ("warning", "")),
    ],
)
def test_frpc_output_is_logged_without_colours_at_its_level(raw, logged):
    assert frpc_line(raw) == logged


def test_frpc_gets_the_local_service_in_its_environment():
    env = frpc_env({"PATH": "/bin", "TUNNELOP_LOCAL_PORT": "1"}, 8080, "10.0.0.7")
    assert env == {"PATH": "/bin", "TUNNELOP_LOCAL_PORT": "8080", "TUNNELOP_LOCAL_IP": "10.0.0.7"}


# ---- the Secret and what a change means ---------------------------------------------------


def test_the_secret_is_read_with_where_frpc_logs_in_and_the_remote_port():
    credentials = read_secret(secret(frpc_toml("relay-1.example.test", 21000), version="42"))
    assert credentials.relay == "relay-1.example.test:7000"
    assert credentials.remote_port == 21000
    assert credentials.token == "t1"
    assert credentials.resource_version == "42"


def test_an_ipv6_relay_is_named_in_brackets():
    assert read_secret(secret(frpc_toml("2001:db8::1"))).relay == "[2001:db8::1]:7000"


def test_a_secret_without_frpc_toml_is_refused_by_key():
    body = secret(frpc_toml())
    del body["data"]["frpc.toml"]
    with pytest.raises(ValueError, match=re.escape(f"Secret {SECRET} has no key 'frpc.toml'")):
        read_secret(body)


def test_a_secret_with_undecodable_data_is_refused_by_key():
    body = secret(frpc_toml())
    body["data"]["frpc.toml"] = "not base64!"
    with pytest.raises(
        ValueError, match=re.escape("key 'frpc.toml' is not base64-encoded UTF-8 text")
    ):
        read_secret(body)


def test_the_token_key_is_optional_since_frpc_toml_carries_the_token():
    body = secret(frpc_toml())
    del body["data"]["token"]
    assert read_secret(body).token == ""


def test_only_what_frpc_runs_with_decides_a_restart():
    one = Credentials(frpc_toml(), "t1", resource_version="1")
    assert not must_restart(one, Credentials(frpc_toml(), "t1", resource_version="2"))
    assert must_restart(one, Credentials(frpc_toml(token="t2"), "t2"))
    assert must_restart(one, Credentials(frpc_toml("relay-2.example.test"), "t1"))
    assert must_restart(None, one)
    assert must_restart(one, None)
    assert not must_restart(None, None)


def test_the_log_line_names_a_move_from_relay_to_relay():
    before = Credentials(frpc_toml("relay-1.example.test", 21000), "t1")
    moved = Credentials(frpc_toml("relay-2.example.test", 21005), "t1")
    assert describe_change(before, moved) == (
        "tunnel moved; restarting frpc",
        {
            "from_relay": "relay-1.example.test:7000",
            "to_relay": "relay-2.example.test:7000",
            "from_remote_port": 21000,
            "to_remote_port": 21005,
        },
    )
    rotated = Credentials(frpc_toml(token="t2"), "t2")
    assert describe_change(before, rotated)[0] == "credentials changed; restarting frpc"
    assert describe_change(None, before)[0] == "starting frpc"
    assert describe_change(before, before)[0] == "starting frpc"  # after frpc exited


# ---- the follower, with a stand-in frpc ---------------------------------------------------

STAND_IN = """\
import json, os, signal, sys, time
path = sys.argv[2]
config = open(path).read()
record = {
    "pid": os.getpid(),
    "config": config,
    "port": os.environ.get("TUNNELOP_LOCAL_PORT"),
    "ip": os.environ.get("TUNNELOP_LOCAL_IP"),
    "file_mode": oct(os.stat(path).st_mode & 0o777),
    "dir_mode": oct(os.stat(os.path.dirname(path)).st_mode & 0o777),
}
with open(os.environ["STAND_IN_RECORD"], "a") as out:
    out.write(json.dumps(record) + "\\n")
# As frpc prints its log: coloured, whatever the output is.
print("\\x1b[1;34m2026-12-01 01:32:59.956 [I] [client/service.go:312] try to connect\\x1b[0m")
print("a line of its own", flush=True)
if "exit-at-once" in config:
    sys.exit(3)
if "ignore-sigterm" in config:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
time.sleep(600)
"""


class RecordingLog:
    def __init__(self) -> None:
        self.lines: list[tuple[str, str, dict]] = []

    def __getattr__(self, level: str):
        if level not in ("debug", "info", "warning", "error"):
            raise AttributeError(level)
        return lambda event, **fields: self.lines.append((level, event, fields))

    def events(self) -> list[str]:
        return [event for _, event, _ in self.lines]


class Harness:
    def __init__(self, tmp_path: Path, stop_grace: float = 5.0) -> None:
        script = tmp_path / "frpc"
        script.write_text(f"#!{sys.executable}\n{STAND_IN}")
        script.chmod(0o755)
        self.record = tmp_path / "record.jsonl"
        workdir = tmp_path / "work"
        workdir.mkdir(mode=0o700)
        env = frpc_env({**os.environ, "STAND_IN_RECORD": str(self.record)}, 8080, "10.0.0.7")
        self.output = RecordingLog()
        self.frpc = FrpcProcess(str(script), workdir, env, stop_grace, self.output)
        self.log = RecordingLog()
        self.follower = Follower(self.frpc, SECRET, self.log)
        self.synced = asyncio.Event()
        self.task: asyncio.Task | None = None

    def start(self) -> Harness:
        self.task = asyncio.create_task(self.follower.run(self.synced.wait()))
        return self

    async def started(self, count: int) -> list[dict]:
        """Once frpc was started `count` times, and the follower logged it: every start."""
        await self.until(
            lambda: (
                len(self.starts()) == count
                and sum(pid_logged(line) for line in self.log.lines) == count
            ),
            f"frpc started {count} times",
        )
        return self.starts()

    def starts(self) -> list[dict]:
        if not self.record.exists():
            return []
        return [json.loads(line) for line in self.record.read_text().splitlines()]

    async def until(self, predicate, what: str, timeout: float = 15) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while not predicate():
            if loop.time() > deadline:
                raise AssertionError(f"{what}: starts {self.starts()}, log {self.log.lines}")
            await asyncio.sleep(0.02)

    async def stop(self) -> None:
        self.follower.stop()
        assert self.task is not None
        await asyncio.wait_for(self.task, 15)


def pid_logged(line: tuple[str, str, dict]) -> bool:
    return "pid" in line[2]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A child that exited but was not reaped yet counts as gone.
    with open(f"/proc/{pid}/stat") as stat_file:
        return stat_file.read().split(") ", 1)[1][0] != "Z"


async def test_frpc_runs_the_secret_config_privately_with_the_local_service(tmp_path):
    harness = Harness(tmp_path).start()
    harness.follower.on_secret("ADDED", secret(frpc_toml()))
    harness.synced.set()
    (started,) = await harness.started(1)
    assert started["config"] == frpc_toml()
    assert (started["port"], started["ip"]) == ("8080", "10.0.0.7")
    assert (started["file_mode"], started["dir_mode"]) == ("0o600", "0o700")
    assert harness.log.lines[0] == (
        "info",
        "starting frpc",
        {
            "secret": SECRET,
            "pid": started["pid"],
            "relay": "relay-1.example.test:7000",
            "remote_port": 21000,
        },
    )
    await harness.until(lambda: len(harness.output.lines) == 2, "frpc's output logged")
    assert harness.output.lines == [
        ("info", "try to connect", {"pid": started["pid"]}),
        ("warning", "a line of its own", {"pid": started["pid"]}),
    ]
    await harness.stop()
    assert not alive(started["pid"])
    assert harness.log.events()[-1] == "frpc stopped"


async def test_a_moved_tunnel_restarts_frpc_with_the_new_config(tmp_path):
    harness = Harness(tmp_path).start()
    harness.follower.on_secret("ADDED", secret(frpc_toml()))
    harness.synced.set()
    await harness.started(1)
    moved = frpc_toml("relay-2.example.test", 21005)
    harness.follower.on_secret("MODIFIED", secret(moved, version="2"))
    first, second = await harness.started(2)
    assert second["config"] == moved
    assert not alive(first["pid"])
    assert alive(second["pid"])
    restart = [line for line in harness.log.lines if line[1] == "tunnel moved; restarting frpc"]
    assert restart == [
        (
            "info",
            "tunnel moved; restarting frpc",
            {
                "secret": SECRET,
                "pid": second["pid"],
                "from_relay": "relay-1.example.test:7000",
                "to_relay": "relay-2.example.test:7000",
                "from_remote_port": 21000,
                "to_remote_port": 21005,
            },
        )
    ]
    await harness.stop()
    assert not alive(second["pid"])


async def test_a_rewrite_with_the_same_data_leaves_frpc_running(tmp_path):
    harness = Harness(tmp_path).start()
    harness.follower.on_secret("ADDED", secret(frpc_toml()))
    harness.synced.set()
    await harness.started(1)
    harness.follower.on_secret("MODIFIED", secret(frpc_toml(), version="2"))
    # A change that restarts, after the one that must not: one restart in all shows that the
    # first was seen and passed over.
    harness.follower.on_secret("MODIFIED", secret(frpc_toml(token="t2"), "t2", version="3"))
    await harness.started(2)
    await harness.stop()
    assert len(harness.starts()) == 2
    assert "credentials changed; restarting frpc" in harness.log.events()


async def test_a_missing_secret_is_waited_for_and_said(tmp_path):
    harness = Harness(tmp_path).start()
    harness.synced.set()
    await harness.until(lambda: harness.log.lines, "a log line")
    assert harness.log.lines[0][:2] == (
        "warning",
        "the Secret does not exist (yet); waiting for it (is the Tunnel Ready?)",
    )
    assert harness.starts() == []
    harness.follower.on_secret("ADDED", secret(frpc_toml()))
    await harness.started(1)
    await harness.stop()


async def test_a_deleted_secret_stops_frpc_until_it_is_back(tmp_path):
    harness = Harness(tmp_path).start()
    harness.follower.on_secret("ADDED", secret(frpc_toml()))
    harness.synced.set()
    (first,) = await harness.started(1)
    harness.follower.on_secret("DELETED", secret(frpc_toml()))
    await harness.until(lambda: not alive(first["pid"]), "frpc stopped")
    await harness.until(
        lambda: "the Secret was deleted; frpc is stopped until it is back" in harness.log.events(),
        "the deletion said",
    )
    harness.follower.on_secret("ADDED", secret(frpc_toml("relay-2.example.test")))
    await harness.started(2)
    assert "tunnel moved; restarting frpc" in harness.log.events()
    await harness.stop()


async def test_a_broken_secret_leaves_frpc_running(tmp_path):
    harness = Harness(tmp_path).start()
    harness.follower.on_secret("ADDED", secret(frpc_toml()))
    harness.synced.set()
    await harness.started(1)
    broken = secret(frpc_toml())
    del broken["data"]["frpc.toml"]
    harness.follower.on_secret("MODIFIED", broken)
    assert harness.log.lines[-1][:2] == ("warning", "cannot use the Secret; frpc stays as it is")
    harness.follower.on_secret("MODIFIED", secret(frpc_toml("relay-2.example.test")))
    await harness.started(2)
    assert harness.starts()[1]["config"] == frpc_toml("relay-2.example.test")
    await harness.stop()


async def test_frpc_that_exits_is_started_again_with_growing_back_off(tmp_path, monkeypatch):
    monkeypatch.setattr(follow_module, "FIRST_RESTART_DELAY", 0.01)
    harness = Harness(tmp_path).start()
    harness.follower.on_secret("ADDED", secret(frpc_toml() + "# exit-at-once\n"))
    harness.synced.set()
    await harness.until(lambda: len(harness.starts()) >= 4, "frpc started again and again")
    await harness.stop()
    exits = [fields for _, event, fields in harness.log.lines if event.startswith("frpc exited")]
    assert [e["retry_in"] for e in exits[:3]] == [0.01, 0.02, 0.04]
    assert {e["exit_code"] for e in exits} == {3}


async def test_a_new_config_starts_the_back_off_over(tmp_path, monkeypatch):
    monkeypatch.setattr(follow_module, "FIRST_RESTART_DELAY", 0.01)
    harness = Harness(tmp_path).start()
    harness.follower.on_secret("ADDED", secret(frpc_toml() + "# exit-at-once\n"))
    harness.synced.set()
    await harness.until(lambda: len(harness.starts()) >= 3, "frpc started thrice")
    harness.follower.on_secret("MODIFIED", secret(frpc_toml("relay-2") + "# exit-at-once\n"))
    await harness.until(
        lambda: any("relay-2" in start["config"] for start in harness.starts()),
        "the new config started",
    )
    await harness.until(
        lambda: (
            harness.log.events().count("tunnel moved; restarting frpc") == 1
            and harness.log.lines[-1][1] == "frpc exited; starting it again"
        ),
        "the new config's frpc exited",
    )
    await harness.stop()
    moved = harness.log.events().index("tunnel moved; restarting frpc")
    after = [fields for _, event, fields in harness.log.lines[moved:] if "retry_in" in fields]
    assert after[0]["retry_in"] == 0.01


async def test_a_new_config_during_the_back_off_is_started_at_once(tmp_path, monkeypatch):
    monkeypatch.setattr(follow_module, "FIRST_RESTART_DELAY", 600)
    harness = Harness(tmp_path).start()
    harness.follower.on_secret("ADDED", secret(frpc_toml() + "# exit-at-once\n"))
    harness.synced.set()
    await harness.until(
        lambda: any(e.startswith("frpc exited") for e in harness.log.events()), "frpc exited"
    )
    harness.follower.on_secret("MODIFIED", secret(frpc_toml("relay-2.example.test")))
    await harness.started(2)
    assert harness.starts()[1]["config"] == frpc_toml("relay-2.example.test")
    await harness.stop()


async def test_frpc_that_ignores_sigterm_is_killed_after_the_grace(tmp_path):
    harness = Harness(tmp_path, stop_grace=0.3).start()
    harness.follower.on_secret("ADDED", secret(frpc_toml() + "# ignore-sigterm\n"))
    harness.synced.set()
    (started,) = await harness.started(1)
    await harness.stop()
    assert not alive(started["pid"])
    assert harness.log.lines[-1][2]["exit_code"] == -9  # SIGKILL


async def test_stopping_before_the_first_list_starts_nothing(tmp_path):
    harness = Harness(tmp_path).start()
    await harness.stop()
    assert harness.starts() == []
    assert harness.log.lines == []


async def test_frpc_that_cannot_be_started_is_retried(tmp_path, monkeypatch):
    monkeypatch.setattr(follow_module, "FIRST_RESTART_DELAY", 0.01)
    harness = Harness(tmp_path)
    harness.frpc.binary = str(tmp_path / "no-such-frpc")
    harness.start()
    harness.follower.on_secret("ADDED", secret(frpc_toml()))
    harness.synced.set()
    await harness.until(
        lambda: harness.log.events().count("cannot start frpc; starting it again") >= 2,
        "two failed starts",
    )
    await harness.stop()


def test_the_config_file_is_private_even_when_it_existed(tmp_path):
    from tunnelop.client.supervisor import _write_private

    path = tmp_path / "frpc.toml"
    path.write_text("old")
    path.chmod(0o644)
    _write_private(path, "new")
    assert path.read_text() == "new"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
