"""The traffic leaderboard: this month's bytes ranked, shares of the total, a readable table,
and `tunnelop top` printing it from the cluster's Tunnels."""

from __future__ import annotations

import datetime
from typing import ClassVar

import pytest

from tunnelop import cli
from tunnelop.api.v1alpha1 import Tunnel
from tunnelop.domain.leaderboard import (
    METRICS,
    human_bytes,
    render,
    top_namespaces,
    top_tunnels,
)
from tunnelop.domain.quota.period import period_start, rfc3339

NOW = datetime.datetime(2025, 6, 14, 12, 0, tzinfo=datetime.UTC)
JUNE, MAY = "2025-06-01T00:00:00Z", "2025-05-01T00:00:00Z"


def tun(namespace: str, name: str, period_bytes: int | None, since: str = JUNE) -> dict:
    traffic = {} if period_bytes is None else {"periodStart": since, "periodBytes": period_bytes}
    return {
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"protocol": "tcp"},
        "status": {"traffic": traffic},
    }


TUNNELS = [
    tun("alice", "minecraft", 6 * 2**30),
    tun("bob", "blog", 1 * 2**30),
    tun("alice", "ssh", 1 * 2**30),
    tun("carol", "nas", 2 * 2**30),
    tun("dave", "old", 50 * 2**30, since=MAY),  # last month's bytes: not this period
    tun("erin", "new", None),  # never reported
]


def test_tunnels_are_ranked_by_this_months_bytes_with_their_share():
    board = top_tunnels(TUNNELS, NOW, limit=3)
    assert [(e.namespace, e.name, e.bytes) for e in board.entries] == [
        ("alice", "minecraft", 6 * 2**30),
        ("carol", "nas", 2 * 2**30),
        ("alice", "ssh", 1 * 2**30),  # ties in name order: alice before bob
    ]
    assert [round(e.share, 3) for e in board.entries] == [0.6, 0.2, 0.1]
    assert (board.total, board.counted) == (10 * 2**30, 4)


def test_namespaces_add_up_their_tunnels():
    board = top_namespaces(TUNNELS, NOW)
    assert [(e.namespace, e.bytes, e.tunnels) for e in board.entries] == [
        ("alice", 7 * 2**30, 2),
        ("carol", 2 * 2**30, 1),
        ("bob", 1 * 2**30, 1),
    ]
    assert sum(e.share for e in board.entries) == pytest.approx(1.0)


def test_models_rank_like_dicts():
    models = [Tunnel.model_validate(t) for t in TUNNELS]
    assert top_tunnels(models, NOW) == top_tunnels(TUNNELS, NOW)


def test_the_table_reads_like_kubectl():
    assert render(top_tunnels(TUNNELS, NOW, limit=2)) == (
        "Traffic since 2025-06-01T00:00:00Z (calendar month, UTC): 10.0 GiB in 4 tunnels\n"
        "RANK   NAMESPACE   TUNNEL      TRAFFIC   SHARE\n"
        "1      alice       minecraft   6.0 GiB   60.0%\n"
        "2      carol       nas         2.0 GiB   20.0%\n"
    )
    assert render(top_namespaces(TUNNELS, NOW, limit=1)) == (
        "Traffic since 2025-06-01T00:00:00Z (calendar month, UTC): 10.0 GiB in 4 tunnels\n"
        "RANK   NAMESPACE   TUNNELS   TRAFFIC   SHARE\n"
        "1      alice       2         7.0 GiB   70.0%\n"
    )


def test_an_empty_month_says_so():
    assert render(top_tunnels([tun("dave", "old", 5, since=MAY)], NOW)) == (
        "Traffic since 2025-06-01T00:00:00Z (calendar month, UTC): 0 B in 0 tunnels\n"
        "No tunnels carried traffic this period.\n"
    )


def test_human_bytes():
    assert [human_bytes(n) for n in (0, 1023, 1536, 5 * 2**40)] == [
        "0 B",
        "1023 B",
        "1.5 KiB",
        "5.0 TiB",
    ]


def test_metric_names_are_unique_and_prefixed():
    names = [m.name for m in METRICS]
    assert len(set(names)) == len(names)
    assert all(n.startswith("tunnelop_") for n in names)
    assert "tunnelop_tunnel_period_bytes" in names


class FakeKube:
    asked: ClassVar[list] = []

    @classmethod
    async def connect(cls, kubeconfig=None):
        return cls()

    async def list(self, api_version, kind, namespace=None):
        FakeKube.asked.append((api_version, kind, namespace))
        # The CLI ranks the current month: the same tunnels, reported this month.
        this_month = rfc3339(period_start(datetime.datetime.now(datetime.UTC)))
        return [
            tun(
                t["metadata"]["namespace"],
                t["metadata"]["name"],
                t["status"]["traffic"].get("periodBytes"),
                this_month,
            )
            for t in TUNNELS
            if t["status"]["traffic"].get("periodStart") == JUNE
            and namespace in (None, t["metadata"]["namespace"])
        ]

    async def close(self):
        pass


def test_tunnelop_top_prints_the_board(monkeypatch, capsys):
    monkeypatch.setattr("tunnelop.platform.kube.Kube", FakeKube)
    assert cli.main(["top", "--namespaces", "--limit", "2"]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1:] == [
        "RANK   NAMESPACE   TUNNELS   TRAFFIC   SHARE",
        "1      alice       2         7.0 GiB   70.0%",
        "2      carol       1         2.0 GiB   20.0%",
    ]
    assert cli.main(["top", "-n", "bob"]) == 0
    assert "bob         blog" in capsys.readouterr().out
    assert FakeKube.asked[-1] == ("tunnelop.dev/v1alpha1", "Tunnel", "bob")


def test_tunnelop_top_refuses_a_bad_limit(capsys):
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["top", "--limit", "0"])
    assert "--limit: must be at least 1, got 0" in capsys.readouterr().err
