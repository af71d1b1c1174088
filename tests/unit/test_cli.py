"""The command line refuses bad values with a message naming the option and what it takes."""

from __future__ import annotations

import pytest

from tunnelop.cli import build_parser

AGENT = ["agent", "--relay", "r", "--namespace", "n", "--table-secret", "t"]


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["run", "--traffic-interval", "0"], "--traffic-interval: must be more than 0 seconds"),
        (["run", "--traffic-interval", "-3"], "--traffic-interval: must be more than 0 seconds"),
        (["run", "--traffic-interval", "soon"], "--traffic-interval: must be a number of seconds"),
        ([*AGENT, "--meter-interval", "nan"], "--meter-interval: must be more than 0 seconds"),
        ([*AGENT, "--listen", "7400"], "--listen: must be host:port with a port of 1-65535"),
        ([*AGENT, "--listen", "host:0"], "--listen: must be host:port"),
        ([*AGENT, "--health-listen", ":7401"], "--health-listen: must be host:port"),
        (["agent", "--relay", "r"], "required: --namespace, --table-secret"),
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
