"""How the agent adopts a table: a bad or foreign table never replaces a good one, and a
restarted agent starts from the copy it kept on disk (the API server is not needed)."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tunnelop.agent.source import STATE_FILE, TableSource
from tunnelop.contract.table import TableEntry, table_json, token_sha256


def source(state_dir: Path | None = None, changes: list | None = None) -> TableSource:
    async def no_api():
        raise AssertionError("these tests never reach the API server")

    return TableSource(
        no_api,
        relay="eu-1",
        namespace="tunnelop-system",
        secret="relay-eu-1-table",
        state_dir=state_dir,
        on_change=changes.append if changes is not None else None,
    )


def entry(name: str, port: int) -> TableEntry:
    return TableEntry("team", name, token_sha256(name), "tcp", remote_port=port)


GOOD = table_json("eu-1", [entry("ssh", 21000), entry("game", 21001)])


def test_a_valid_table_is_adopted_and_reported_once():
    changes: list = []
    s = source(changes=changes)
    assert s.apply(GOOD, "api")
    assert s.loaded and s.source == "api"
    assert set(s.index.by_tunnel) == {"team/ssh", "team/game"}
    assert s.apply(GOOD, "api")  # the same text again: nothing to do
    assert len(changes) == 1


def test_a_broken_table_keeps_the_previous_one():
    s = source()
    s.apply(GOOD, "api")
    before = s.index
    for broken in ("", "{", '{"relay": "eu-1"}', '{"relay": "eu-1", "tunnels": [{}]}', "[]"):
        assert not s.apply(broken, "api")
        assert s.index is before


def test_a_table_of_another_relay_is_ignored():
    s = source()
    assert not s.apply(table_json("us-1", [entry("ssh", 21000)]), "api")
    assert not s.loaded


@given(st.text(max_size=200))
def test_any_text_never_raises(text):
    s = source()
    s.apply(GOOD, "api")
    before = s.index
    if not s.apply(text, "api"):
        assert s.index is before


async def test_a_restarted_agent_starts_from_its_copy(tmp_path: Path):
    first = source(tmp_path)
    await first._save_state(GOOD)
    assert (tmp_path / STATE_FILE).read_text() == GOOD
    restarted = source(tmp_path)
    await restarted._load_state()
    assert restarted.source == "state"
    assert set(restarted.index.by_tunnel) == {"team/ssh", "team/game"}


async def test_no_copy_means_no_table(tmp_path: Path):
    s = source(tmp_path)
    await s._load_state()
    assert not s.loaded
