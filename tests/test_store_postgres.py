"""What is PostgreSQL's own in zchat.store.postgres, on the session's real server: several
writers on one database (the cluster's premise), the schema's version and ownership, the
collation, NUL in a cmid, ``synchronous_commit``, a lost connection. The port's behaviour
common to both engines is tested in tests/test_store.py and tests/test_group_commit.py."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import psycopg
import pytest
from postgres_server import PostgresServer

from zchat.core.ports import NoSuchRoom
from zchat.errors import StorageError
from zchat.store import open_store, pg_schema
from zchat.store.postgres import Store

#: Messages each writer posts in the concurrency tests.
PER_WRITER = 150


def _in_threads(*work: Callable[[], None]) -> None:
    """Run each of ``work`` in a thread of its own, all at once; re-raise the first error."""
    errors: list[BaseException] = []
    start = threading.Barrier(len(work))

    def run(job: Callable[[], None]) -> None:
        try:
            start.wait(10)
            job()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(job,)) for job in work]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a writer hung"
    if errors:
        raise errors[0]


# -- several writers on one database ----------------------------------------------------------


def test_two_stores_posting_at_once_get_gap_free_unique_seqs(pg_url: str, opened: Any) -> None:
    """Two stores (two brokers' connections) post to one room from two threads, each
    message its own transaction: every seq is taken once, and together they are 1..N."""
    a, b = opened(pg_url), opened(pg_url)
    a.ensure_room("dev", "dev", "dev", 0)
    got: dict[str, list[int]] = {"a": [], "b": []}

    def writer(store: Store, name: str) -> Callable[[], None]:
        def post() -> None:
            for i in range(PER_WRITER):
                got[name].append(store.post_message("dev", name, "text", f"{name}{i}",
                                                    f"{name}{i}", i).seq)
        return post

    _in_threads(writer(a, "a"), writer(b, "b"))
    every = sorted(got["a"] + got["b"])
    assert every == list(range(1, 2 * PER_WRITER + 1))
    assert got["a"] == sorted(got["a"]) and got["b"] == sorted(got["b"])
    page = a.history("dev", None, None, 500)
    assert [m.seq for m in page] == every
    assert {m.text for m in page} == {f"{n}{i}" for n in "ab" for i in range(PER_WRITER)}
    room = b.get_room("dev")
    assert room is not None and room.last_seq == 2 * PER_WRITER


def test_two_stores_in_group_commits_get_gap_free_unique_seqs(pg_url: str,
                                                              opened: Any) -> None:
    """The same with the broker's unit of work: groups of ten messages, one transaction
    each, the room's row locked from a group's first message to its commit; a group that
    is aborted gives its numbers back (no gap)."""
    a, b = opened(pg_url), opened(pg_url)
    a.ensure_room("dev", "dev", "dev", 0)
    kept: dict[str, list[int]] = {"a": [], "b": []}

    def writer(store: Store, name: str) -> Callable[[], None]:
        def post() -> None:
            for group in range(PER_WRITER // 10):
                store.begin_group()
                seqs = [store.post_message("dev", name, "text", f"{name}{group}.{i}", "",
                                           group).seq for i in range(10)]
                if group % 5 == 4:
                    store.abort_group()  # a lost batch: its numbers are taken again
                    continue
                store.commit_group()
                kept[name] += seqs
        return post

    _in_threads(writer(a, "a"), writer(b, "b"))
    every = sorted(kept["a"] + kept["b"])
    assert len(every) == 2 * (PER_WRITER - PER_WRITER // 5)
    assert every == list(range(1, len(every) + 1))
    assert [m.seq for m in a.history("dev", None, None, 500)] == every


def test_a_deadlock_between_two_groups_refuses_one_write_and_loses_no_seq(
        pg_url: str, opened: Any) -> None:
    """Two groups lock two rooms in opposite orders: PostgreSQL breaks the deadlock by
    failing one write (StorageError, 503), which undoes only itself; both groups commit
    what they were told was stored, and every room's seqs stay gap-free."""
    a, b = opened(pg_url), opened(pg_url)
    for store in (a, b):
        store._db.execute("SET deadlock_timeout = '50ms'")
    for room in ("one", "two"):
        a.ensure_room(room, room, room, 0)
    a.begin_group()
    b.begin_group()
    a.post_message("one", "a", "text", "a-one", "", 1)      # a holds #one
    b.post_message("two", "b", "text", "b-two", "", 1)      # b holds #two
    outcome: dict[str, BaseException | int] = {}

    def then(store: Store, name: str, room: str) -> Callable[[], None]:
        def post() -> None:
            try:
                outcome[name] = store.post_message(room, name, "text", f"{name}-{room}",
                                                   "", 2).seq
            except StorageError as exc:
                outcome[name] = exc
            store.commit_group()  # the refused one's commit frees the other
        return post

    _in_threads(then(a, "a", "two"), then(b, "b", "one"))
    refused = [name for name, value in outcome.items() if isinstance(value, StorageError)]
    assert len(refused) == 1, outcome
    texts = {room: [m.text for m in a.history(room, None, None, 10)]
             for room in ("one", "two")}
    for room, kept in texts.items():
        seqs = [m.seq for m in a.history(room, None, None, 10)]
        assert seqs == list(range(1, len(kept) + 1))
    winner = "b" if refused == ["a"] else "a"
    target = "one" if winner == "b" else "two"
    assert texts[target][-1] == f"{winner}-{target}"
    assert sum(len(kept) for kept in texts.values()) == 3


def test_a_message_to_a_room_deleted_meanwhile_is_404(pg_url: str, opened: Any) -> None:
    a, b = opened(pg_url), opened(pg_url)
    a.ensure_room("dev", "dev", "dev", 0)
    a.post_message("dev", "a", "text", "first", "", 1)
    b.delete_room("dev")
    with pytest.raises(NoSuchRoom):
        a.post_message("dev", "a", "text", "late", "", 2)
    a.ensure_room("dev", "dev", "dev", 3)  # made again: numbers go on from the tombstone
    assert a.post_message("dev", "a", "text", "again", "", 4).seq == 2


# -- the schema ---------------------------------------------------------------------------------


def test_an_empty_database_is_given_the_schema_by_one_of_two_brokers_starting_at_once(
        postgres_server: PostgresServer, opened: Any) -> None:
    with postgres_server.database(empty=True) as url:
        stores: list[Store] = []
        _in_threads(lambda: stores.append(opened(url)), lambda: stores.append(opened(url)))
        assert [s.schema_version for s in stores] == [pg_schema.SCHEMA_VERSION] * 2
        stores[0].create_account("alice", "alice", "a1ice", "h", 0)
        assert stores[1].get_account("alice") is not None


def test_a_database_of_someone_elses_is_refused_and_left_as_it_was(
        postgres_server: PostgresServer) -> None:
    with postgres_server.database(empty=True) as url:
        with psycopg.connect(url, autocommit=True) as raw:
            raw.execute("CREATE TABLE invoices (id INTEGER)")
        with pytest.raises(StorageError, match="is not a zchat database"):
            Store(url)
        with psycopg.connect(url, autocommit=True) as raw:
            tables = [r[0] for r in raw.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = 'public'")]
        assert tables == ["invoices"]


def test_a_newer_schema_is_refused(pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute("UPDATE zchat_schema SET version = %s", (pg_schema.SCHEMA_VERSION + 1,))
    with pytest.raises(StorageError, match="newer than this zchat's"):
        Store(pg_url)


def test_an_unreachable_database_is_one_clear_storage_error(
        postgres_server: PostgresServer) -> None:
    url = postgres_server.url("no_such_database").replace("postgres@", "zchat:secret@")
    with pytest.raises(StorageError) as info:
        open_store(url)
    reason = info.value.reason
    assert reason.startswith("cannot connect to the database postgresql://zchat:***@")
    assert "secret" not in reason and "\n" not in reason


# -- what PostgreSQL would do otherwise ------------------------------------------------------


def test_order_and_case_folding_are_sqlites_whatever_the_databases_collation(
        postgres_server: PostgresServer, opened: Any) -> None:
    """A database made with a linguistic collation (ICU en-US: "_" and case ignored
    first) still lists keys in code-point order, and the audit log's filters fold ASCII
    only, as SQLite does: the text columns are COLLATE "C"."""
    name = f"zchat_icu_{id(opened)}"
    admin = postgres_server._admin
    assert admin is not None
    admin.execute(f"CREATE DATABASE {name} TEMPLATE template0 LOCALE_PROVIDER icu "
                  "ICU_LOCALE 'en-US' LOCALE 'C'")
    try:
        store = opened(postgres_server.url(name))
        keys = ["b", "_a", "a_", "Z", "ä", "a"]
        for key in keys:
            store.ensure_room(key, key, f"s{key}", 0)
        assert [r.key for r in store.list_rooms()] == sorted(keys)
        store.append_audit(1, "Ärger", "kick", "dev", "Bob")
        assert [e.actor for e in store.audit_log(actor="ärger")] == []  # not ASCII
        assert [e.target for e in store.audit_log(target="BOB")] == ["Bob"]
        store.close()
    finally:
        postgres_server.drop_database(name)


def test_a_cmid_holding_nul_is_stored_and_found_again(pg_url: str, opened: Any) -> None:
    store = opened(pg_url)
    store.ensure_room("dev", "dev", "dev", 0)
    store.create_account("bob", "bob", "bob", "h", 0)
    first = store.post_message("dev", "alice", "text", "one", "a\0b", 1)
    assert store.post_message("dev", "alice", "text", "one", "a\0b", 2) == \
        first.__class__(first.seq, first.time_ms, True)
    other = store.post_message("dev", "alice", "text", "two", "a\\0b", 3)  # not the same
    assert (other.seq, other.duplicate) == (2, False)
    dm = store.post_dm("alice", "bob", "bob", "hi", "\0", 4, 10)
    assert store.post_dm("alice", "bob", "bob", "hi", "\0", 5, 10).seq == dm.seq


def test_synchronous_commit_is_on_for_the_store_even_where_the_database_says_off(
        pg_url: str, opened: Any) -> None:
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute(f"ALTER DATABASE {pg_url.rsplit('/', 1)[1]} SET synchronous_commit = off")
        with psycopg.connect(pg_url, autocommit=True) as fresh:
            assert fresh.execute("SHOW synchronous_commit").fetchone() == ("off",)
    store = opened(pg_url)
    assert store._db.execute("SHOW synchronous_commit").fetchone() == ("on",)


# -- a lost connection ------------------------------------------------------------------------


def _kill_connection(url: str, store: Store) -> None:
    """End ``store``'s server session from outside, as a restart of the server would."""
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute("SELECT pg_terminate_backend(%s)", (store._db.info.backend_pid,))


def test_a_lost_connection_is_503_once_and_then_opened_again(pg_url: str,
                                                             opened: Any) -> None:
    store = opened(pg_url)
    store.ensure_room("dev", "dev", "dev", 0)
    _kill_connection(pg_url, store)
    with pytest.raises(StorageError):
        store.post_message("dev", "alice", "text", "while lost", "", 1)
    assert store.post_message("dev", "alice", "text", "back", "", 2).seq == 1
    assert [m.text for m in store.history("dev", None, None, 10)] == ["back"]


def test_a_connection_lost_in_a_group_loses_the_group_and_says_so(pg_url: str,
                                                                  opened: Any) -> None:
    store = opened(pg_url)
    store.ensure_room("dev", "dev", "dev", 0)
    store.begin_group()
    store.post_message("dev", "alice", "text", "in the group", "", 1)
    _kill_connection(pg_url, store)
    with pytest.raises(StorageError):
        store.post_message("dev", "alice", "text", "after the loss", "", 2)
    with pytest.raises(StorageError, match="lost"):
        store.commit_group()
    store.begin_group()  # the next wake-up: a new connection, nothing of the lost group
    assert store.post_message("dev", "alice", "text", "next", "", 3).seq == 1
    store.commit_group()
    assert [m.text for m in store.history("dev", None, None, 10)] == ["next"]


def test_changes_elsewhere_moves_with_any_connections_ban_write_at_the_next_group(
        pg_url: str, opened: Any) -> None:
    """What the core reloads its bans and mutes on (the port's ``changes_elsewhere``):
    steady inside a group, moved at the next group after another store wrote a ban."""
    store, side = opened(pg_url), opened(pg_url)
    store.create_account("ivan", "ivan", "ivan", "h", 0)
    before = store.changes_elsewhere()
    store.begin_group()
    assert store.changes_elsewhere() == before
    side.add_ban("mute", "", "ivan", "root", "", 0, None)
    assert store.changes_elsewhere() == before  # as of the group's start
    store.commit_group()
    store.begin_group()
    moved = store.changes_elsewhere()
    store.commit_group()
    assert moved != before
    assert store.changes_elsewhere() == moved  # nothing written since


def test_a_lost_database_is_told_to_clients_without_its_address(pg_url: str,
                                                                 opened: Any) -> None:
    """The reason of a 503 reaches every client, logged in or not: it names no host,
    port, user or URL (a tester read the database's URL, a password in its query
    included, in `zchat register`'s error while PostgreSQL was down). The broker's log
    keeps the detail."""
    store = opened(pg_url)
    store.ensure_room("dev", "dev", "dev", 0)
    store.url = "postgresql://zchat@127.0.0.1:1/zchat?password=topsecret"  # unreachable
    _kill_connection(pg_url, store)
    reasons = []
    for _ in range(3):
        with pytest.raises(StorageError) as refused:
            store.post_message("dev", "alice", "text", "while lost", "", 1)
        reasons.append(str(refused.value))
        store._next_connect = 0.0  # try to reconnect at once (RECONNECT_INTERVAL_S)
    assert any("cannot reconnect to the database" in r for r in reasons), reasons
    for reason in reasons:
        for secret in ("127.0.0.1", ":1", "zchat@", "topsecret", "postgresql://"):
            assert secret not in reason, reason
