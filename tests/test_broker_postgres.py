"""A broker on PostgreSQL (issue 16's single-broker set-up): a real broker on inproc://
whose store is a database of the session's real server, driven through the client
library — register, login, join, send, history, DM, DM history, mark read — and
restarted on the same database; and ``zchat broker --store URL`` as a process, including
the one-line error of a database that cannot be reached."""

from __future__ import annotations

from pathlib import Path

from client_helpers import collect, is_msg, msgs
from conftest import (
    Proc,
    cli_env,
    run,
    start_broker,
    stop_broker,
    zchat_command,
)
from postgres_server import PostgresServer

from zchat import wire as p
from zchat.client import Client
from zchat.testing import DEFAULT_PASSWORD, Harness, next_dm, running_broker


async def _login(harness: Harness, name: str, register: bool) -> tuple[Client, p.LoggedIn]:
    client = harness.new_client()
    await client.connect()
    if register:
        await client.register(name, DEFAULT_PASSWORD)
    return client, await client.login(name, DEFAULT_PASSWORD)


def test_a_broker_on_postgresql_serves_and_keeps_everything_across_a_restart(
        pg_url: str) -> None:
    async def first(harness: Harness) -> tuple[int, int]:
        alice, _ = await _login(harness, "alice", register=True)
        bob, _ = await _login(harness, "bob", register=True)
        try:
            assert (await alice.join("dev")).created
            assert not (await bob.join("dev")).created
            sent = [await alice.send("dev", f"hello {i}") for i in range(3)]
            assert [s.seq for s in sent] == [1, 2, 3]
            heard = msgs(await collect(bob, is_msg(3)), "dev")
            assert [(m.seq, m.text) for m in heard] == [(1, "hello 0"), (2, "hello 1"),
                                                        (3, "hello 2")]
            page = await bob.history("dev", limit=2)
            assert [(m.seq, m.sender) for m in page.messages] == [(2, "alice"), (3, "alice")]
            one = await alice.dm("bob", "psst")
            assert one.delivered == "live"
            assert (await next_dm(bob, sender="alice")).text == "psst"
            two = await alice.dm("bob", "still there?")
            assert (await next_dm(bob, sender="alice")).text == "still there?"
            history = await bob.dm_history("alice")
            assert [(m.id, m.text) for m in history.messages] == [(one.id, "psst"),
                                                                   (two.id, "still there?")]
            await bob.mark_read(room="dev", upto=2)
            await bob.mark_read(dm="alice", upto=one.id)
            return one.id, two.id
        finally:
            await alice.close()
            await bob.close()

    async def after_restart(harness: Harness, dm_ids: tuple[int, int]) -> None:
        bob, reply = await _login(harness, "bob", register=False)
        try:
            reads = {r.room: (r.read_seq, r.unread) for r in reply.room_reads}
            assert reads["dev"] == (2, 1)
            assert [(d.peer, d.read_id, d.unread) for d in reply.dm_reads] == \
                [("alice", dm_ids[0], 1)]
            page = await bob.history("dev")
            assert [m.text for m in page.messages] == ["hello 0", "hello 1", "hello 2"]
            history = await bob.dm_history("alice")
            assert [m.id for m in history.messages] == list(dm_ids)
            # the room's counter lives in the database: the next message is #4
            assert (await bob.send("dev", "back")).seq == 4
        finally:
            await bob.close()

    with running_broker(pg_url) as harness:
        assert harness.db_path == pg_url
        dm_ids = run(first(harness))
    with running_broker(pg_url) as harness:
        run(after_restart(harness, dm_ids))


def test_zchat_broker_runs_on_the_store_its_config_names(tmp_path: Path,
                                                        pg_url: str) -> None:
    """``[broker] store`` in the config file: the broker prints the database it uses
    (no password) and keeps its messages there, not in the data directory."""
    broker, lines = start_broker(tmp_path, settings=f'store = "{pg_url}"\n'
                                                    'encryption = "none"\n')
    try:
        assert f"  database {pg_url}" in lines

        async def scenario() -> None:
            client = Client(broker.router, encryption="none")
            await client.connect()
            try:
                await client.register("carol", DEFAULT_PASSWORD)
                await client.login("carol", DEFAULT_PASSWORD)
                await client.join("ops")
                assert (await client.send("ops", "on postgres")).seq == 1
            finally:
                await client.close()

        run(scenario())
    finally:
        rc, _elapsed = stop_broker(broker)
    assert rc == 0, broker.process.stderr
    assert not (broker.data_dir / "zchat.db").exists()
    from zchat.store.postgres import Store

    store = Store(pg_url)
    try:
        assert [m.text for m in store.history("ops", None, None, 10)] == ["on postgres"]
    finally:
        store.close()


def test_an_unreachable_store_is_one_line_and_exit_1(tmp_path: Path,
                                                     postgres_server: PostgresServer) -> None:
    url = postgres_server.url("no_such_db").replace("postgres@", "zchat:secret@")
    proc = Proc([*zchat_command(), "broker", "--data-dir", str(tmp_path / "data"),
                 "--store", url], cli_env(tmp_path))
    assert proc.wait(30) == 1
    assert proc.stdout == []
    [line] = proc.stderr
    assert line.startswith("zchat: error: cannot connect to the database "
                           "postgresql://zchat:***@127.0.0.1:")
    assert "secret" not in line
    assert not (tmp_path / "data").exists()  # a start that fails leaves nothing behind


def test_a_store_url_of_another_kind_is_refused_before_anything_starts(
        tmp_path: Path) -> None:
    proc = Proc([*zchat_command(), "broker", "--data-dir", str(tmp_path / "data"),
                 "--store", "mysql://zchat@localhost/zchat"], cli_env(tmp_path))
    assert proc.wait(30) == 1
    assert proc.stderr == ["zchat: error: command line: [broker] store: must be empty (the "
                           "SQLite file in the data directory) or a PostgreSQL URL "
                           "postgresql://USER@HOST:PORT/DB, got "
                           "'mysql://zchat@localhost/zchat'"]


def test_a_broker_takes_a_list_of_hosts_and_connects_to_the_one_that_answers(
        pg_url: str) -> None:
    """libpq's failover form (a fifth tester's was refused): the first host refuses, the
    second is the database; the broker serves, its LISTEN connection included."""
    from urllib.parse import urlsplit

    from zchat.testing import running_cluster

    parts = urlsplit(pg_url)
    host = parts.netloc.rpartition("@")[2]
    user = parts.netloc.rpartition("@")[0]
    listed = pg_url.replace(f"{user}@{host}", f"{user}@127.0.0.1:1,{host}", 1)
    assert f"@127.0.0.1:1,{host}/" in listed

    async def scenario(harness: Harness) -> None:
        async with harness.client("alice") as alice:
            await alice.join("dev")
            assert (await alice.send("dev", "through the second host")).seq == 1

    with running_cluster(listed, 1) as (one,):
        run(scenario(one))
        assert one.broker.cluster is not None and one.broker.cluster.listener.connected


def test_an_upper_case_scheme_is_a_postgresql_url(pg_url: str) -> None:
    """A URL's scheme is case-insensitive; libpq read `POSTGRESQL://…` as a key=value
    string and failed with "missing '='" (a sixth tester's)."""
    from zchat.store import open_store

    scheme, rest = pg_url.split("://", 1)
    store = open_store(f"{scheme.upper()}://{rest}")
    try:
        assert store.url.startswith(f"{scheme.lower()}://")
    finally:
        store.close()
