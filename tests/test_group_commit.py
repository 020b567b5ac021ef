"""Group commit (docs/PROTOCOL.md §14): the broker's loop writes everything one wake-up
handles in one SQLite transaction, and sends nothing of it before that commit returns.

Store groups are tested on a real SQLite file and a real PostgreSQL database alike
(``store_db``), with a second connection as the outside observer; the broker's failure
path on a real file whose "disk" fills up
(``PRAGMA max_page_count``: SQLite's own SQLITE_FULL, which undoes a statement with a
statement journal alone — a room message's INSERT and its trigger — and rolls the whole
transaction back otherwise — a DM's SAVEPOINT write).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from client_helpers import collect, is_msg, msgs
from conftest import StoreDb, run

from zchat import wire as p
from zchat.broker.loop import Broker
from zchat.client.client import Client
from zchat.core.facade import domain_refusal
from zchat.core.ports import NoSuchRoom
from zchat.errors import RequestFailed, Status, StorageError
from zchat.store import Store
from zchat.testing import running_broker

UNLIMITED_PAGES = 1_073_741_823


def _room(store: Store, name: str) -> None:
    store.ensure_room(name, name, name, 0)


def _seen_outside(path: Path) -> list[str]:
    """Message texts as another connection (another process) sees them: committed only."""
    with sqlite3.connect(path) as other:
        return [r[0] for r in other.execute("SELECT text FROM messages ORDER BY seq")]


def _seen_by_another(db: StoreDb) -> list[str]:
    """The same through another store on ``db`` (either engine)."""
    other = db.open()
    try:
        return [m.text for m in other.history("dev", None, None, 500)]
    finally:
        other.close()


def _fill_the_disk(store: Store) -> None:
    pages = store._db.execute("PRAGMA page_count").fetchone()[0]
    store._db.execute(f"PRAGMA max_page_count = {pages}")


def test_a_group_is_invisible_outside_until_its_commit(store_db: StoreDb) -> None:
    store = store_db.open()
    _room(store, "dev")
    store.begin_group()
    assert store.in_group
    store.post_message("dev", "alice", "text", "one", "", 1)
    store.post_message("dev", "alice", "text", "two", "", 2)
    assert _seen_by_another(store_db) == []
    store.commit_group()
    assert not store.in_group
    assert _seen_by_another(store_db) == ["one", "two"]
    assert [m.seq for m in store.history("dev", None, None, 10)] == [1, 2]


def test_a_failed_write_in_a_group_undoes_only_itself(store_db: StoreDb) -> None:
    store = store_db.open()
    _room(store, "dev")
    store.begin_group()
    store.post_message("dev", "alice", "text", "one", "", 1)
    with pytest.raises(NoSuchRoom) as info, store.transaction():
        store.post_message("dev", "alice", "text", "half", "", 2)
        store.post_message("nowhere", "alice", "text", "x", "", 2)  # 404 inside
    assert domain_refusal(info.value).status == Status.NOT_FOUND
    store.post_message("dev", "alice", "text", "two", "", 3)
    store.commit_group()
    assert _seen_by_another(store_db) == ["one", "two"]
    # the counter was rolled back with the row: no gap
    assert [m.seq for m in store.history("dev", None, None, 10)] == [1, 2]


def test_a_group_of_reads_commits_nothing(store_db: StoreDb) -> None:
    store = store_db.open()
    _room(store, "dev")
    store.begin_group()
    assert store.history("dev", None, None, 10) == []
    if store_db.engine == "sqlite":
        assert not store._db.in_transaction
    else:
        assert not store.in_transaction
    store.commit_group()


def test_a_message_the_full_disk_cannot_take_is_refused_alone(tmp_path: Path) -> None:
    """A room message is one INSERT (its trigger moves last_seq in the same statement), so
    on SQLITE_FULL SQLite undoes that statement alone: the group's earlier messages are
    committed with it, and sequence numbers stay gapless."""
    store = Store(tmp_path / "z.db")
    _room(store, "dev")
    store.post_message("dev", "alice", "text", "kept", "", 1)
    _fill_the_disk(store)
    store.begin_group()
    stored: list[int] = []
    with pytest.raises(StorageError):
        for i in range(1000):  # until a page more is needed
            stored.append(store.post_message("dev", "alice", "text", f"m{i} " + "x" * 500,
                                             "", 2).seq)
    assert stored, "the first message of the group should still have fitted"
    store.commit_group()
    assert stored == list(range(2, 2 + len(stored)))
    assert _seen_outside(tmp_path / "z.db") == \
        ["kept", *(f"m{i} " + "x" * 500 for i in range(len(stored)))]
    store._db.execute(f"PRAGMA max_page_count = {UNLIMITED_PAGES}")
    assert store.post_message("dev", "alice", "text", "after", "", 4).seq == 2 + len(stored)
    room = store.get_room("dev")
    assert room is not None and room.last_seq == 2 + len(stored)


def test_a_full_disk_that_rolls_the_transaction_back_loses_the_group_and_says_so(
        tmp_path: Path) -> None:
    """A DM's write is a SAVEPOINT; on SQLITE_FULL there SQLite rolls the whole transaction
    back (https://sqlite.org/lang_transaction.html, "Response To Errors Within A
    Transaction"): the group is lost, later writes refuse at once, the commit says so."""
    store = Store(tmp_path / "z.db")
    _room(store, "dev")
    store.create_account("bob", "bob", "bob", "h", 0)
    store.post_message("dev", "alice", "text", "kept", "", 1)
    _fill_the_disk(store)
    store.begin_group()
    with pytest.raises(StorageError):
        for i in range(1000):  # until a page more is needed
            store.post_dm("alice", "bob", "bob", f"d{i} " + "x" * 500, "", 2, 10_000)
    with pytest.raises(StorageError, match="lost"):  # later writes refuse at once
        store.post_message("dev", "alice", "text", "late", "", 3)
    with pytest.raises(StorageError, match="lost"):
        store.commit_group()
    assert not store.in_group
    assert _seen_outside(tmp_path / "z.db") == ["kept"]
    store._db.execute(f"PRAGMA max_page_count = {UNLIMITED_PAGES}")
    assert store.post_message("dev", "alice", "text", "after", "", 4).seq == 2
    assert store.pending_dms("bob") == []


def test_another_connections_unban_reaches_the_cached_ban_at_the_next_group(
        store_db: StoreDb) -> None:
    store = store_db.open()
    store.create_account("ivan", "ivan", "ivan", "h", 0)
    store.create_account("root", "root", "root", "h", 0)
    store.add_ban("mute", "", "ivan", "root", "", 0, None)
    store.begin_group()
    assert store.active_ban("mute", "", "ivan", 1) is not None  # now cached
    store.commit_group()
    side = store_db.open()  # as `zchat admin unban` on the database opens it
    assert side.lift_ban("mute", "", "ivan")
    store.begin_group()
    assert store.active_ban("mute", "", "ivan", 2) is None
    store.commit_group()


async def _until_the_disk_refuses(write: Callable[[str], Awaitable[None]], mark: str) -> str:
    """Call ``write`` with texts of ~500 bytes until one is refused; that one's text. The
    refusal must be 503 (the disk is full), and must come within 2,000 writes."""
    for i in range(2000):
        text = f"{mark}{i} " + "x" * 500
        try:
            await write(text)
        except RequestFailed as exc:
            assert exc.status == Status.UNAVAILABLE, exc
            return text
    raise AssertionError("the disk never filled")


@contextlib.asynccontextmanager
async def _a_full_disk_under_alice_and_bob(tmp_path: Path) -> AsyncIterator[
        tuple[Broker, Client, Client, p.Sent]]:
    """A broker on ``tmp_path/z.db``, alice and bob in #dev, alice's first message
    ("before") stored, then the disk full: (broker, alice, bob, that message's reply)."""
    with running_broker(tmp_path / "z.db") as harness:
        broker = harness.broker
        async with harness.client("alice") as alice, harness.client("bob") as bob:
            await alice.join("dev")
            await bob.join("dev")
            first = await alice.send("dev", "before")
            _fill_the_disk(broker.store)
            yield broker, alice, bob, first


def test_a_message_the_disk_cannot_take_is_answered_503_and_not_told(
        tmp_path: Path) -> None:
    """The broker's side: the message whose write fills the disk gets 503 (its INSERT
    undid itself alone); the members hear only what was stored; the sessions go on (no
    new login) and the next message takes the next sequence number."""

    async def scenario() -> None:
        async with _a_full_disk_under_alice_and_bob(tmp_path) as (broker, alice, bob, first):
            stored: list[int] = []

            async def post(text: str) -> None:
                stored.append((await alice.send("dev", text)).seq)

            refused = await _until_the_disk_refuses(post, "m")
            broker.store._db.execute(f"PRAGMA max_page_count = {UNLIMITED_PAGES}")
            after = await alice.send("dev", "after")
            assert after.seq == (stored[-1] if stored else first.seq) + 1
            heard = msgs(await collect(bob, is_msg(after.seq)), "dev")
            assert [m.seq for m in heard] == [first.seq, *stored, after.seq]
            assert refused not in {m.text for m in heard}
            page = await bob.history("dev", limit=500)
            assert [m.seq for m in page.messages] == [first.seq, *stored, after.seq]
            assert refused not in {m.text for m in page.messages}
            # the sessions were carried over: the same two, no reconnect needed
            assert sorted(s.name for s in broker.core.sessions.values()) == \
                ["alice", "bob"]
            assert (await bob.send("dev", "still here")).seq == after.seq + 1

    run(scenario(), 60)


def test_a_batch_the_disk_cannot_take_is_answered_503_and_nothing_of_it_is_told(
        tmp_path: Path) -> None:
    """When a full disk rolls the whole transaction back (a DM's SAVEPOINT write), the
    batch is lost: its requests get 503, the broker reloads its state (failed_commits),
    the sessions go on without a new login, and only what was acknowledged is stored."""

    async def scenario() -> None:
        async with _a_full_disk_under_alice_and_bob(tmp_path) as (broker, alice, bob, first):
            acked: list[str] = []

            async def dm(text: str) -> None:
                await alice.dm("bob", text)
                acked.append(text)

            await _until_the_disk_refuses(dm, "d")
            assert broker.failed_commits >= 1
            broker.store._db.execute(f"PRAGMA max_page_count = {UNLIMITED_PAGES}")
            with sqlite3.connect(tmp_path / "z.db") as other:
                stored = [r[0] for r in other.execute(
                    "SELECT text FROM direct_messages ORDER BY id")]
            assert stored == acked
            after = await alice.send("dev", "after")
            assert after.seq == first.seq + 1
            heard = msgs(await collect(bob, is_msg(after.seq)), "dev")
            assert [m.seq for m in heard] == [first.seq, after.seq]
            assert sorted(s.name for s in broker.core.sessions.values()) == \
                ["alice", "bob"]

    run(scenario(), 60)


def test_password_hashing_threads_yield_the_cpu_to_the_loop(tmp_path: Path) -> None:
    """The hash pool's threads run at a lower priority than the loop (Linux: per
    thread), so a storm of logins cannot take the CPU from room traffic."""
    import os
    import sys
    import threading

    from zchat.broker.loop import HASH_THREAD_NICE

    if sys.platform != "linux":
        pytest.skip("thread priorities are per process outside Linux")
    with running_broker() as harness:
        mine = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
        theirs = harness.broker._pool.submit(
            lambda: os.getpriority(os.PRIO_PROCESS, threading.get_native_id())).result(5)
    if mine >= HASH_THREAD_NICE:
        pytest.skip(f"the tests already run at nice {mine}")
    assert (mine, theirs) == (mine, HASH_THREAD_NICE)


def test_a_send_told_to_retry_503_is_stored_once_the_disk_has_room(tmp_path: Path) -> None:
    """``send(retry_unavailable=True)`` (what ``zchat say -`` does, so that piped lines
    survive a database restart) tries a 503 again with the same cmid until the storage
    takes it, within its retry time: the message is stored once, with the next seq. A
    tester's 149 piped lines were lost to a PostgreSQL restart of 2 s before."""

    async def scenario() -> None:
        async with _a_full_disk_under_alice_and_bob(tmp_path) as (broker, alice, bob, first):
            stored: list[int] = []

            async def post(text: str) -> None:
                stored.append((await alice.send("dev", text)).seq)

            await _until_the_disk_refuses(post, "m")  # the disk is full now
            retries: list[str] = []
            handler = logging.Handler()
            handler.emit = lambda record: retries.append(record.getMessage())  # type: ignore[method-assign]
            client_log = logging.getLogger("zchat.client")
            client_log.addHandler(handler)
            level = client_log.level
            client_log.setLevel(logging.INFO)
            try:
                patient = "patient " + "x" * 1000  # longer than the one refused
                sending = asyncio.create_task(alice.send(
                    "dev", patient, cmid="patient-1", retry_for_s=30,
                    retry_unavailable=True))
                deadline = asyncio.get_running_loop().time() + 10
                while sum("trying again" in m for m in retries) < 2 and not sending.done():
                    assert asyncio.get_running_loop().time() < deadline, retries
                    await asyncio.sleep(0.01)  # polling a condition, not a socket
            finally:
                client_log.removeHandler(handler)
                client_log.setLevel(level)
            assert not sending.done()
            broker.store._db.execute(f"PRAGMA max_page_count = {UNLIMITED_PAGES}")
            reply = await asyncio.wait_for(sending, 10)
            assert reply.seq == (stored[-1] if stored else first.seq) + 1
            page = await bob.history("dev", limit=500)
            assert [m.text for m in page.messages].count(patient) == 1

    run(scenario(), 60)
