"""The command line refuses bad values with a message naming the option and what it takes."""

from __future__ import annotations

import pytest

from tunnelop.cli import build_parser

AGENT = ["agent", "--relay", "r", "--namespace", "n", "--table-secret", "t"]
CLIENT = ["client", "team-a/web"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--traffic-interval", "0"], "--traffic-interval: must be more than 0 seconds"),
        (["run", "--traffic-interval", "-3"], "--traffic-interval: must be more than 0 seconds"),
        (["run", "--traffic-interval", "soon"], "--traffic-interval: must be a number of seconds"),
        (["run", "--event-qps", "0"], "--event-qps: must be more than 0 Events a second"),
        (["run", "--event-qps", "inf"], "--event-qps: must be finite"),
        (["run", "--event-qps", "many"], "--event-qps: must be a number of Events a second"),
        (["run", "--tunnel-workers", "0"], "--tunnel-workers: must be at least 1"),
        (["run", "--event-burst", "0"], "--event-burst: must be at least 1"),
        (["run", "--event-burst", "2.5"], "--event-burst: must be a whole number"),
        ([*AGENT, "--meter-interval", "nan"], "--meter-interval: must be more than 0 seconds"),
        ([*AGENT, "--listen", "7400"], "--listen: must be host:port with a port of 1-65535"),
        ([*AGENT, "--listen", "host:0"], "--listen: must be host:port"),
        ([*AGENT, "--health-listen", ":7401"], "--health-listen: must be host:port"),
        (["agent", "--relay", "r"], "required: --namespace, --table-secret"),
        (["run", "--lease-duration", "2"], "--lease-duration: must be at least 3 seconds"),
        (["run", "--lease-duration", "1.5"], "--lease-duration: must be a whole number of seconds"),
        (["run", "--health-listen", "8081"], "--health-listen: must be host:port"),
        ([*CLIENT, "--local-port", "0"], "--local-port: must be a port from 1 to 65535, got '0'"),
        ([*CLIENT, "--local-port", "65536"], "--local-port: must be a port from 1 to 65535"),
        ([*CLIENT, "--local-port", "http"], "--local-port: must be a port from 1 to 65535"),
        (CLIENT, "required: --local-port"),
        (["client", "web", "--local-port", "80"], "NAMESPACE/TUNNEL: must be NAMESPACE/TUNNEL"),
        (["client", "Team/web", "--local-port", "80"], "the namespace must be a DNS label"),
        ([*CLIENT, "--local-port", "80", "--local-ip", "a b"], "--local-ip: must be an IP"),
        ([*CLIENT, "--local-port", "80", "--stop-grace", "0"], "--stop-grace: must be more than"),
    ],
)
def test_bad_values_are_refused_by_name(argv, message, capsys):
    with pytest.raises(SystemExit) as exit_:
        build_parser().parse_args(argv)
    assert exit_.value.code == 2
    assert message in capsys.readouterr().err


def test_good_values_pass():
    args = build_parser().parse_args([*AGENT, "--listen", "[::1]:7400", "--meter-interval", "0.5"])
    assert (args.listen, args.meter_interval) == ("[::1]:7400", 0.5)
    assert build_parser().parse_args(["run", "--traffic-interval", "2"]).traffic_interval == 2.0
    events = build_parser().parse_args(["run", "--event-qps", "0.5", "--event-burst", "500"])
    assert (events.event_qps, events.event_burst) == (0.5, 500)
    default = build_parser().parse_args(["run"])
    assert default.tunnel_workers == 256
    assert (default.event_qps, default.event_burst) == (5.0, 50)  # kept in step with the recorder


def test_leader_election_flags():
    args = build_parser().parse_args(["run"])
    assert (args.leader_elect, args.leader_election_namespace) == (None, None)
    assert (args.leader_election_id, args.lease_duration, args.health_listen) == (
        "tunnelop",
        10,
        "127.0.0.1:8081",
    )
    assert build_parser().parse_args(["run", "--leader-elect"]).leader_elect is True
    assert build_parser().parse_args(["run", "--no-leader-elect"]).leader_elect is False


def test_leader_election_is_on_by_default_only_in_a_pod(monkeypatch, tmp_path):
    from tunnelop.manager import in_pod

    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    assert not in_pod(str(tmp_path))
    (tmp_path / "token").write_text("t")
    assert in_pod(str(tmp_path))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    assert in_pod(str(tmp_path / "absent"))


def test_the_agent_refuses_to_start_without_frps_plugin_password(monkeypatch, capsys):
    from tunnelop import cli

    monkeypatch.delenv("TUNNELOP_PLUGIN_PASSWORD", raising=False)
    served = []
    monkeypatch.setattr("tunnelop.agent.server.serve", lambda options: served.append(options))
    assert cli.main([*AGENT, "--log-format", "console"]) == 2
    assert "TUNNELOP_PLUGIN_PASSWORD" in capsys.readouterr().err
    assert served == []


def test_the_agent_takes_the_plugin_password_from_the_environment(monkeypatch):
    from tunnelop import cli

    monkeypatch.setenv("TUNNELOP_PLUGIN_PASSWORD", "pw-from-env")
    served = []

    async def serve(options):
        served.append(options)

    monkeypatch.setattr("tunnelop.agent.server.serve", serve)
    assert cli.main([*AGENT, "--log-format", "console"]) == 0
    assert served[0].plugin_password == "pw-from-env"
    assert served[0].allow_unauthenticated_plugin is False


def test_client_values():
    args = build_parser().parse_args([*CLIENT, "--local-port", "8080"])
    assert (args.tunnel, args.local_port, args.local_ip) == (("team-a", "web"), 8080, "127.0.0.1")
    assert (args.frpc, args.kubeconfig, args.stop_grace) == ("frpc", None, 10.0)
    args = build_parser().parse_args([*CLIENT, "--local-port", "22", "--local-ip", "fd00::7"])
    assert (args.local_port, args.local_ip) == (22, "fd00::7")


def test_the_client_refuses_an_frpc_it_cannot_run(monkeypatch, tmp_path, capsys):
    from tunnelop import cli

    followed = []
    monkeypatch.setattr("tunnelop.client.follow.follow", lambda options: followed.append(options))
    argv = [*CLIENT, "--local-port", "80", "--frpc", str(tmp_path / "frpc")]
    assert cli.main(argv) == 2
    assert "--frpc: " in capsys.readouterr().err
    (tmp_path / "frpc").write_text("#!/bin/sh\n")
    (tmp_path / "frpc").chmod(0o755)
    assert cli.main([*argv, "--kubeconfig", str(tmp_path / "absent")]) == 2
    assert "--kubeconfig: no such file" in capsys.readouterr().err
    assert followed == []


def test_the_client_without_a_cluster_config_says_so(monkeypatch, capsys):
    from tunnelop import cli
    from tunnelop.client.follow import NoClusterConfig

    async def no_cluster(options):
        raise NoClusterConfig("no current-context")

    monkeypatch.setattr("tunnelop.client.follow.follow", no_cluster)
    assert cli.main([*CLIENT, "--local-port", "80", "--frpc", "/bin/sh"]) == 1
    err = capsys.readouterr().err
    assert "no usable kubeconfig or in-cluster config: no current-context" in err
