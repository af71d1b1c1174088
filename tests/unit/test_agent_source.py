"""How the agent adopts its table's shards: a bad or foreign shard never replaces a good one,
the table is loaded only once every shard is known, and a restarted agent starts from the
copies it kept on disk (the API server is not needed)."""

from __future__ import annotations

import base64
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from tunnelop.agent.source import TableSource, state_file
from tunnelop.contract.table import (
    TABLE_SHARDS,
    TableEntry,
    shard_of,
    table_documents,
    table_json,
    token_sha256,
)


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


ENTRIES = [entry("ssh", 21000), entry("game", 21001)]
GOOD = table_documents("eu-1", ENTRIES)
SSH_SHARD = shard_of("team", "ssh")


def load(s: TableSource, documents: list[str] = GOOD) -> None:
    for shard, text in enumerate(documents):
        assert s.apply(text, "api", shard)


def secret_event(name: str, text: str) -> dict:
    return {"metadata": {"name": name}, "data": {"table.json": base64.b64encode(text.encode())}}


def test_the_table_is_loaded_once_every_shard_is_known():
    changes: list = []
    s = source(changes=changes)
    assert s.apply(GOOD[SSH_SHARD], "api", SSH_SHARD)
    assert not s.loaded  # the other shards are still unknown
    assert set(s.index.by_tunnel) == {"team/ssh"}  # what is known is served
    load(s)
    assert s.loaded and s.source == "api"
    assert set(s.index.by_tunnel) == {"team/ssh", "team/game"}
    changes_before = len(changes)
    load(s)  # the same texts again: nothing to do
    assert len(changes) == changes_before


def test_a_new_version_of_one_shard_leaves_the_others():
    s = source()
    load(s)
    assert s.apply(table_json("eu-1", [], SSH_SHARD), "api", SSH_SHARD)
    expected = {"team/game"} if shard_of("team", "game") != SSH_SHARD else set()
    assert set(s.index.by_tunnel) == expected


def test_a_broken_shard_keeps_the_previous_one():
    s = source()
    load(s)
    before = s.index
    for broken in (
        "",
        "{",
        '{"relay": "eu-1"}',
        '{"relay": "eu-1", "shard": 0, "shards": 8, "tunnels": [{}]}',
        '{"relay": "eu-1", "tunnels": []}',  # a table of earlier versions: not sharded
        '{"relay": "eu-1", "shard": 0, "shards": 1, "tunnels": []}',  # another shard count
        f'{{"relay": "eu-1", "shard": {TABLE_SHARDS}, "shards": {TABLE_SHARDS}, "tunnels": []}}',
        "[]",
    ):
        assert not s.apply(broken, "api")
        assert s.index is before


def test_an_entry_in_the_wrong_shard_is_refused():
    other = (SSH_SHARD + 1) % TABLE_SHARDS
    text = GOOD[SSH_SHARD].replace(f'"shard":{SSH_SHARD}', f'"shard":{other}')
    s = source()
    assert not s.apply(text, "api")
    assert s.index is None


def test_a_secret_holding_another_shard_is_refused():
    """Shard 3's Secret holding shard 5's document would let one shard's writes hide
    another's: refused."""
    s = source()
    load(s)
    before = s.index
    other = (SSH_SHARD + 1) % TABLE_SHARDS
    s._on_event("MODIFIED", secret_event(s.secrets[other], GOOD[SSH_SHARD]))
    assert s.index is before
    s._on_event("MODIFIED", secret_event("relay-us-1-table", GOOD[SSH_SHARD]))
    assert s.index is before


def test_a_table_of_another_relay_is_ignored():
    s = source()
    assert not s.apply(table_documents("us-1", ENTRIES)[SSH_SHARD], "api")
    assert s.index is None and not s.loaded


@given(st.text(max_size=200), st.integers(min_value=0, max_value=TABLE_SHARDS - 1))
def test_any_text_never_raises(text, shard):
    s = source()
    load(s)
    before = s.index
    if not s.apply(text, "api", shard):
        assert s.index is before


async def test_a_restarted_agent_starts_from_its_copies(tmp_path: Path):
    first = source(tmp_path)
    for shard, text in enumerate(GOOD):
        await first._save_state(shard, text)
    assert (tmp_path / state_file(SSH_SHARD)).read_text() == GOOD[SSH_SHARD]
    restarted = source(tmp_path)
    await restarted._load_state()
    assert restarted.source == "state" and restarted.loaded
    assert set(restarted.index.by_tunnel) == {"team/ssh", "team/game"}


async def test_a_copy_of_the_wrong_shard_is_not_loaded(tmp_path: Path):
    other = (SSH_SHARD + 1) % TABLE_SHARDS
    (tmp_path / state_file(other)).write_text(GOOD[SSH_SHARD])
    s = source(tmp_path)
    await s._load_state()
    assert s.index is None


async def test_no_copy_means_no_table(tmp_path: Path):
    s = source(tmp_path)
    await s._load_state()
    assert not s.loaded
