"""Issue 13 §2: an unread direct message is never lost. DM history (DM_HISTORY,
docs/PROTOCOL.md §6.48), read state kept by the broker (LOGIN/RESUME's ``room_reads`` and
``dm_reads`` §6.3.1, MARK_READ §6.49, READ pushes §6.49.1, mentions §6.49.2), and a
database from before it (schema version 5) whose pending DMs become unread.

Every test runs a real broker (``harness``, or ``running_broker`` on a database) and
talks to it through the client library over inproc://; the broker's store is SQLite, then
PostgreSQL (``any_harness``, ``store_db``), where the database of an older schema is not
SQLite's own.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conftest import StoreDb, run

from zchat import wire as p
from zchat.client.client import Client
from zchat.client.session import UnreadTracker
from zchat.client.sync import SyncClient
from zchat.errors import LocalProtocolError, RequestFailed, Status
from zchat.names import mentions, name_key, skeleton
from zchat.store import MIGRATIONS, Store, sql_statements
from zchat.testing import (
    DEFAULT_PASSWORD,
    Harness,
    fast_hash,
    next_dm,
    next_event_of,
    next_message,
    running_broker,
)


@pytest.fixture
def harness(any_harness: Harness) -> Harness:
    """The broker of each test here: on SQLite, then on PostgreSQL."""
    return any_harness


@contextlib.asynccontextmanager
async def session(harness: Harness, name: str,
                  register: bool = True) -> AsyncIterator[tuple[Client, p.LoggedIn]]:
    """A client logged in as ``name`` (registered first unless it exists), with the LOGIN
    reply; closed on exit (without LOGOUT, as a killed client)."""
    client = harness.new_client()
    await client.connect()
    try:
        if register:
            with contextlib.suppress(RequestFailed):
                await client.register(name, DEFAULT_PASSWORD)
        reply = await client.login(name, DEFAULT_PASSWORD)
        yield client, reply
    finally:
        await client.close()


async def relogin(harness: Harness, name: str) -> p.LoggedIn:
    """The LOGIN reply of a fresh session of ``name``, logged out at once."""
    async with session(harness, name, register=False) as (client, reply):
        await client.logout()
    return reply


async def dm_page(client: Client, peer: str, **bounds: int | None) -> list[tuple[int, str]]:
    page: p.DmHistoryPage = await client.request(p.FetchDmHistory(peer=peer, **bounds))
    return [(m.id, m.text) for m in page.messages]


def dm_reads(reply: p.LoggedIn) -> dict[str, tuple[int, int]]:
    """peer -> (read_id, unread) of a LOGIN reply."""
    return {d.peer: (d.read_id, d.unread) for d in reply.dm_reads}


def room_reads(reply: p.LoggedIn) -> dict[str, tuple[int, int, int]]:
    """room -> (read_seq, unread, mentions) of a LOGIN reply."""
    return {r.room: (r.read_seq, r.unread, r.mentions) for r in reply.room_reads}


# -- DM history -----------------------------------------------------------------------------


def test_dm_history_pages_a_conversation_both_ways_in_id_order(harness: Harness) -> None:
    async def scenario() -> None:
        async with session(harness, "alice") as (alice, _), \
                session(harness, "bob") as (bob, _), \
                session(harness, "carol") as (carol, _):
            sent = []
            for i in range(3):
                sent.append((await alice.dm("bob", f"a{i}")).id)
                await carol.dm("bob", f"c{i}")           # another pair, interleaved
                sent.append((await bob.dm("Alice", f"b{i}")).id)
            texts = ["a0", "b0", "a1", "b1", "a2", "b2"]
            assert await dm_page(alice, "bob") == list(zip(sent, texts, strict=True))
            assert await dm_page(bob, "ALICE") == list(zip(sent, texts, strict=True))
            # paging as HISTORY's, by DM id (exclusive bounds, ascending pages)
            assert await dm_page(bob, "alice", limit=2) == list(zip(sent[4:], texts[4:],
                                                                    strict=True))
            assert await dm_page(bob, "alice", before=sent[4], limit=2) == \
                list(zip(sent[2:4], texts[2:4], strict=True))
            assert await dm_page(bob, "alice", after=sent[0], limit=2) == \
                list(zip(sent[1:3], texts[1:3], strict=True))
            assert await dm_page(bob, "alice", after=sent[-1]) == []
            page = await bob.request(p.FetchDmHistory(peer="alice", limit=1))
            assert page.peer == "alice"
            assert [(m.sender, m.to) for m in page.messages] == [("bob", "alice")]

    run(scenario())


def test_nobody_else_can_read_a_conversation(harness: Harness) -> None:
    async def scenario() -> None:
        async with session(harness, "alice") as (alice, _), \
                session(harness, "bob") as (bob, _), \
                session(harness, "mallory") as (mallory, _):
            await alice.dm("bob", "the launch code is 0000")
            await bob.dm("alice", "noted")
            # a conversation is named by the asker and the peer: mallory can only ever
            # read mallory's own conversations, never alice's and bob's
            assert await dm_page(mallory, "alice") == []
            assert await dm_page(mallory, "bob") == []
            assert await dm_page(mallory, "mallory") == []
            await mallory.dm("alice", "hi")
            assert [t for _i, t in await dm_page(mallory, "alice")] == ["hi"]
            assert [t for _i, t in await dm_page(alice, "bob")] == \
                ["the launch code is 0000", "noted"]
            for bad, status in ((p.FetchDmHistory(peer="nobody"), Status.NOT_FOUND),
                                (p.FetchDmHistory(peer="bob", before=5, after=1),
                                 Status.BAD_REQUEST),
                                (p.FetchDmHistory(peer="bob", limit=0), Status.BAD_REQUEST),
                                (p.FetchDmHistory(peer="bob", limit=501), Status.BAD_REQUEST),
                                (p.FetchDmHistory(peer="bob", after=-1), Status.BAD_REQUEST)):
                with pytest.raises(RequestFailed) as err:
                    await mallory.request(bad)
                assert err.value.status == status, bad

    run(scenario())


# -- the repro: a DM handed to a client that was never read ------------------------


def test_unread_dm_handed_to_a_client_is_unread_at_the_next_login(harness: Harness) -> None:
    """bob's client gets erin's DM (and acknowledges it, as the console does when it
    arrives); bob quits without reading it. It is no longer pending, but it is unread,
    and its text is in the DM history."""
    async def scenario() -> None:
        async with session(harness, "erin") as (erin, _):
            async with session(harness, "bob") as (bob, first):
                assert first.dm_reads == ()
                sent = await erin.dm("bob", "ping me")
                got = await next_dm(bob)                 # handed over: DM_ACK sent
                assert got.id == sent.id
                await bob.ping()                         # the DM_ACK is processed
                await bob.logout()
            reply = await relogin(harness, "bob")
            assert reply.pending == ()                   # delivered once, as before
            assert [(d.peer, d.last_id, d.read_id, d.unread) for d in reply.dm_reads] == \
                [("erin", sent.id, 0, 1)]
            async with session(harness, "bob", register=False) as (bob, _):
                assert await dm_page(bob, "erin", after=0) == [(sent.id, "ping me")]
            # the sender has read its own DM
            erin_again = await relogin(harness, "erin")
            assert erin_again.dm_reads == ()

    run(scenario())


def test_dm_sent_while_offline_is_pending_and_unread(harness: Harness) -> None:
    async def scenario() -> None:
        async with session(harness, "bob"):
            pass
        async with session(harness, "erin") as (erin, _):
            one = await erin.dm("bob", "one")
            two = await erin.dm("bob", "two")
        reply = await relogin(harness, "bob")
        assert [d.id for d in reply.pending] == [one.id, two.id]
        assert dm_reads(reply) == {"erin": (0, 2)}

    run(scenario())


# -- MARK_READ ---------------------------------------------------------------------------------


def test_mark_read_of_a_dm_conversation_moves_forward_only(harness: Harness) -> None:
    async def scenario() -> None:
        async with session(harness, "erin") as (erin, _), \
                session(harness, "bob") as (bob, _), \
                session(harness, "carol") as (carol, _):
            ids = [(await erin.dm("bob", f"m{i}")).id for i in range(3)]
            state = await bob.request(p.MarkRead(peer="erin", upto=ids[0]))
            assert state == p.ReadState(room="", peer="erin", upto=ids[0], unread=2,
                                        last=ids[-1])
            # idempotent, and never back
            assert await bob.request(p.MarkRead(peer="erin", upto=ids[0])) == state
            assert await bob.request(p.MarkRead(peer="erin", upto=0)) == state
            with pytest.raises(RequestFailed) as beyond:
                await bob.request(p.MarkRead(peer="erin", upto=ids[-1] + 1))
            assert beyond.value.status == Status.BAD_REQUEST
            assert dm_reads(await relogin(harness, "bob")) == {"erin": (ids[0], 2)}
            done = await bob.request(p.MarkRead(peer="Erin", upto=ids[-1]))
            assert (done.upto, done.unread) == (ids[-1], 0)
            reply = await relogin(harness, "bob")
            assert reply.dm_reads == ()
            assert reply.pending == ()  # read is delivered: not offered again
            for bad, status in ((p.MarkRead(peer="carol", upto=0), Status.NOT_FOUND),
                                (p.MarkRead(peer="nobody", upto=0), Status.NOT_FOUND),
                                (p.MarkRead(upto=0), Status.BAD_REQUEST),
                                (p.MarkRead(room="lobby", peer="erin", upto=0),
                                 Status.BAD_REQUEST),
                                (p.MarkRead(peer="erin", upto=-1), Status.BAD_REQUEST)):
                with pytest.raises(RequestFailed) as err:
                    await bob.request(bad)
                assert err.value.status == status, bad
            # carol cannot move bob's marker: she names her own conversation with erin
            with pytest.raises(RequestFailed) as other:
                await carol.request(p.MarkRead(peer="erin", upto=ids[-1]))
            assert other.value.status == Status.NOT_FOUND

    run(scenario())


def test_mark_read_of_a_room_and_own_posts_move_the_marker(harness: Harness) -> None:
    async def scenario() -> None:
        async with session(harness, "alice") as (alice, _), \
                session(harness, "bob") as (bob, _):
            await alice.join("dev")
            await alice.send("dev", "before bob came")
            await bob.join("dev")                        # a newcomer has read the past
            for text in ("one", "two", "three"):
                await alice.send("dev", text)
            assert room_reads(await relogin(harness, "bob"))["dev"] == (1, 3, 0)
            state = await bob.request(p.MarkRead(room="dev", upto=2))
            assert state == p.ReadState(room="dev", peer="", upto=2, unread=2, mentions=0,
                                        last=4)
            assert await bob.request(p.MarkRead(room="DEV", upto=1)) == state
            with pytest.raises(RequestFailed) as beyond:
                await bob.request(p.MarkRead(room="dev", upto=5))
            assert beyond.value.status == Status.BAD_REQUEST
            await bob.send("dev", "caught up")           # posting reads the room
            assert room_reads(await relogin(harness, "bob"))["dev"] == (5, 0, 0)
            assert room_reads(await relogin(harness, "alice"))["dev"] == (4, 1, 0)
            await bob.part("dev")
            with pytest.raises(RequestFailed) as outside:
                await bob.request(p.MarkRead(room="dev", upto=5))
            assert outside.value.status == Status.FORBIDDEN
            with pytest.raises(RequestFailed) as missing:
                await bob.request(p.MarkRead(room="nowhere", upto=0))
            assert missing.value.status == Status.NOT_FOUND

    run(scenario())


def test_mentions_are_counted_after_the_read_marker(harness: Harness) -> None:
    async def scenario() -> None:
        async with session(harness, "alice") as (alice, _), \
                session(harness, "bob") as (bob, _), \
                session(harness, "bobby") as (bobby, _):
            for c in (alice, bob, bobby):
                await c.join("dev")
            for text in ("hey @Bob, look", "bobby: not you, bob", "a bob-cat",
                         "BOB.", "nothing"):
                await alice.send("dev", text)
            seqs = await alice.history("dev")
            deleted = seqs.messages[-2].seq               # "BOB." is deleted
            await alice.delete_message("dev", deleted)
            assert room_reads(await relogin(harness, "bob"))["dev"] == (0, 5, 2)
            assert room_reads(await relogin(harness, "bobby"))["dev"] == (0, 5, 1)
            assert room_reads(await relogin(harness, "alice"))["dev"] == (5, 0, 0)
            state = await bob.request(p.MarkRead(room="dev", upto=1))
            assert (state.unread, state.mentions) == (4, 1)
            await bob.send("dev", "ok")
            assert room_reads(await relogin(harness, "bob"))["dev"] == (6, 0, 0)

    run(scenario())


def test_login_offers_at_most_max_stored_dms_pending_even_from_an_older_database(
        tmp_path: Path) -> None:
    """A database that holds more pending DMs than the bound (one from before the bound
    held at login, or a bound lowered since) offers only the newest ``max_stored_dms`` at
    LOGIN; the others stay unread in the DM history."""
    path = tmp_path / "zchat.db"
    with running_broker(path) as harness:
        async def accounts() -> None:
            for name in ("bob", "erin"):
                async with session(harness, name):
                    pass
        run(accounts())
    store = Store(path)
    ids = [store.store_dm("erin", "bob", "bob", f"dm{i}", 1, max_pending=100,
                          sender_key="erin") for i in range(6)]
    store.close()

    async def scenario(harness: Harness) -> None:
        reply = await relogin(harness, "bob")
        assert [d.id for d in reply.pending] == ids[-2:]
        assert dm_reads(reply) == {"erin": (0, 6)}

    with running_broker(path, max_stored_dms=2) as harness:
        run(scenario(harness))


def test_a_member_who_joins_later_is_mentioned_from_then_on(harness: Harness) -> None:
    """Who can be mentioned follows the room's members as they come and go (the broker
    keeps one search per room for their names and must renew it)."""
    async def scenario() -> None:
        async with session(harness, "alice") as (alice, _), \
                session(harness, "bob") as (bob, _), \
                session(harness, "carol") as (carol, _):
            for c in (alice, bob):
                await c.join("dev")
            await alice.send("dev", "carol is not here yet")   # #1: not a mention
            await carol.join("dev")
            await alice.send("dev", "welcome carol")           # #2: a mention
            await bob.part("dev")
            await alice.send("dev", "bob left, carol")         # #3: carol's, not bob's
            assert room_reads(await relogin(harness, "carol"))["dev"] == (1, 2, 2)
            await bob.join("dev")
            await alice.send("dev", "bob is back")             # #4: bob's
            assert room_reads(await relogin(harness, "bob"))["dev"] == (3, 1, 1)

    run(scenario())


def test_pending_bound_keeps_every_dm_in_history_and_unread() -> None:
    """max_stored_dms bounds the pending list only: the DMs beyond it are no longer
    offered at login, but none is lost."""
    async def scenario(harness: Harness) -> None:
        async with session(harness, "bob"):
            pass
        async with session(harness, "erin") as (erin, _):
            ids = [(await erin.dm("bob", f"dm{i}")).id for i in range(5)]
        reply = await relogin(harness, "bob")
        assert [d.text for d in reply.pending] == ["dm2", "dm3", "dm4"]
        assert dm_reads(reply) == {"erin": (0, 5)}
        async with session(harness, "bob", register=False) as (bob, _):
            assert [i for i, _t in await dm_page(bob, "erin", after=0)] == ids

    with running_broker(max_stored_dms=3) as harness:
        run(scenario(harness))


def test_read_state_survives_a_broker_restart(store_db: StoreDb) -> None:
    db = store_db.location

    async def before(harness: Harness) -> None:
        async with session(harness, "alice") as (alice, _), \
                session(harness, "bob") as (bob, _):
            await alice.join("dev")
            await bob.join("dev")
            await alice.send("dev", "hi bob")
            await alice.send("dev", "anyone?")
            first = await alice.dm("bob", "first")
            await alice.dm("bob", "second")
            await bob.request(p.MarkRead(peer="alice", upto=first.id))

    async def after(harness: Harness) -> None:
        reply = await relogin(harness, "bob")
        assert room_reads(reply)["dev"] == (0, 2, 1)
        assert [(d.peer, d.unread) for d in reply.dm_reads] == [("alice", 1)]

    with running_broker(db) as harness:
        run(before(harness))
    with running_broker(db) as harness:
        run(after(harness))


# -- a database made before read state (schema version 5) -----------------------------------


def _old_database(path: Path) -> dict[str, int]:
    """A database of schema version 5 (the shipped migrations up to it; no read state, DMs
    without sender keys or conversations) holding what today's main would have stored:
    accounts erin, bob and carol in lobby; #dev with two messages, bob a member; DMs
    erin -> bob (one acknowledged, then two pending), carol -> bob (acknowledged),
    bob -> erin (pending), bob -> bob (a note to himself, pending). Returns the DM ids
    by name."""
    db = sqlite3.connect(path, isolation_level=None)
    db.execute("BEGIN")
    for migration in MIGRATIONS[:5]:  # shipped entries never change (zchat/store.py)
        for statement in sql_statements(migration):
            db.execute(statement)
    password = fast_hash(DEFAULT_PASSWORD)
    for room in ("lobby", "dev"):
        db.execute("INSERT INTO rooms(key, name, skeleton, created_ms) VALUES (?, ?, ?, 1)",
                   (room, room, skeleton(room)))
    for name in ("Erin", "bob", "carol"):
        db.execute("INSERT INTO accounts(key, name, skeleton, password_hash, created_ms) "
                   "VALUES (?, ?, ?, ?, 1)", (name_key(name), name, skeleton(name), password))
        db.execute("INSERT INTO members(room_key, account_key, joined_ms) VALUES "
                   "('lobby', ?, 1)", (name_key(name),))
    db.execute("INSERT INTO members(room_key, account_key, joined_ms) VALUES ('dev', 'bob', 1)")
    for seq, text in ((1, "old news"), (2, "older than read state")):
        db.execute("INSERT INTO messages(room_key, seq, time_ms, sender, kind, text) "
                   "VALUES ('dev', ?, 1, 'carol', 'text', ?)", (seq, text))
    ids = {}
    for label, sender, to_key, to, delivered in (
            ("seen", "Erin", "bob", "bob", 1), ("ping", "Erin", "bob", "bob", 0),
            ("again", "Erin", "bob", "bob", 0), ("carol", "carol", "bob", "bob", 1),
            ("reply", "bob", "erin", "Erin", 0), ("note", "bob", "bob", "bob", 0)):
        cur = db.execute("INSERT INTO direct_messages(time_ms, sender, recipient_key, "
                         "recipient, text, delivered) VALUES (1, ?, ?, ?, ?, ?)",
                         (sender, to_key, to, label, delivered))
        ids[label] = int(cur.lastrowid or 0)
    db.execute("PRAGMA user_version = 5")
    db.execute("COMMIT")
    db.close()
    return ids


def test_database_of_schema_5_keeps_its_pending_dms_as_unread(tmp_path: Path) -> None:
    path = tmp_path / "zchat.db"
    ids = _old_database(path)
    store = Store(path)                                   # migrated here
    assert store.schema_version == len(MIGRATIONS)
    store.close()

    async def scenario(harness: Harness) -> None:
        bob = await relogin(harness, "bob")
        # still pending (delivery is unchanged), and now unread as well
        assert [d.text for d in bob.pending] == ["ping", "again", "note"]
        # carol's DM was acknowledged: read; a note to oneself is never unread
        assert {d.peer: (d.read_id, d.unread) for d in bob.dm_reads} == \
            {"Erin": (ids["seen"], 2)}
        assert room_reads(bob) == {"lobby": (0, 0, 0), "dev": (2, 0, 0)}
        erin = await relogin(harness, "erin")
        assert [(d.peer, d.unread) for d in erin.dm_reads] == [("bob", 1)]
        async with session(harness, "bob", register=False) as (client, _):
            assert await dm_page(client, "erin") == [
                (ids["seen"], "seen"), (ids["ping"], "ping"), (ids["again"], "again"),
                (ids["reply"], "reply")]
            assert await dm_page(client, "carol") == [(ids["carol"], "carol")]
            state = await client.request(p.MarkRead(peer="erin", upto=ids["again"]))
            assert state.unread == 0
            # and the conversation goes on in the new schema
            await client.dm("erin", "sorry, was away")
        bob = await relogin(harness, "bob")
        assert bob.dm_reads == () and [d.text for d in bob.pending] == ["note"]
        erin = await relogin(harness, "erin")
        assert [(d.peer, d.unread) for d in erin.dm_reads] == [("bob", 2)]

    with running_broker(path) as harness:
        run(scenario(harness))


def test_migration_keeps_every_dm(tmp_path: Path) -> None:
    path = tmp_path / "zchat.db"
    ids = _old_database(path)
    Store(path).close()
    db = sqlite3.connect(path)
    rows = db.execute("SELECT id, sender_key, pair, delivered FROM direct_messages "
                      "ORDER BY id").fetchall()
    db.close()
    assert rows == [(ids["seen"], "erin", "bob/erin", 1), (ids["ping"], "erin", "bob/erin", 0),
                    (ids["again"], "erin", "bob/erin", 0),
                    (ids["carol"], "carol", "bob/carol", 1),
                    (ids["reply"], "bob", "bob/erin", 0), (ids["note"], "bob", "bob/bob", 0)]


# -- the client library: Client.unread, dm_history, mark_read, READ events ------------------



def test_client_unread_follows_login_events_posts_and_mark_read(harness: Harness) -> None:
    async def scenario() -> None:
        async with session(harness, "alice") as (alice, _), \
                session(harness, "erin") as (erin, _):
            async with session(harness, "bob") as (bob, _):
                await bob.join("dev")
            await alice.join("dev")
            await alice.send("dev", "bob: standup?")
            await alice.send("dev", "anyone")
            old = await erin.dm("bob", "while you were out")
            async with session(harness, "bob", register=False) as (bob, login):
                unread = bob.unread
                assert unread.room("dev") == p.RoomRead(room="dev", read_seq=0, unread=2,
                                                        mentions=1)
                assert unread.dm("erin") == p.DmRead(peer="erin", last_id=old.id,
                                                     read_id=0, unread=1)
                assert unread.total == 3
                assert [d.id for d in login.pending] == [old.id]
                assert (await next_dm(bob)).id == old.id  # pending: not counted twice
                assert bob.unread.dm("erin").unread == 1
                new = await erin.dm("bob", "and now")
                assert (await next_dm(bob)).id == new.id
                assert bob.unread.dm("erin") == p.DmRead(peer="erin", last_id=new.id,
                                                         read_id=0, unread=2)
                await alice.send("dev", "@bob ping")
                await next_message(bob, "dev")
                assert bob.unread.room("dev") == p.RoomRead(room="dev", read_seq=0,
                                                            unread=3, mentions=2)
                # the client library pages the history and marks read
                page = await bob.dm_history("erin", after=0)
                assert [m.text for m in page.messages] == ["while you were out", "and now"]
                state = await bob.mark_read(dm="erin", upto=old.id)
                assert (state.upto, state.unread) == (old.id, 1)
                assert bob.unread.dm("erin").unread == 1
                await bob.mark_read(dm="erin")  # up to the newest handed over
                assert bob.unread.dm("erin").unread == 0
                await bob.mark_read(room="dev", upto=1)
                assert bob.unread.room("dev") == p.RoomRead(room="dev", read_seq=1,
                                                            unread=2, mentions=1)
                await bob.send("dev", "here")            # posting reads the room
                assert bob.unread.room("dev").unread == 0
                with pytest.raises(LocalProtocolError):
                    await bob.mark_read(room="dev", dm="erin")
                await bob.dm("erin", "thanks")
                assert bob.unread.dm("erin").unread == 0
            # and the broker agrees
            reply = await relogin(harness, "bob")
            assert room_reads(reply)["dev"] == (4, 0, 0)
            assert reply.dm_reads == ()

    run(scenario())


def test_reading_on_one_device_clears_it_on_the_others(harness: Harness) -> None:
    """Two sessions of bob (a laptop and a phone): reading erin's DMs and #dev on one
    sends READ to the other, whose unread counts drop at once."""
    async def scenario() -> None:
        async with session(harness, "alice") as (alice, _), \
                session(harness, "erin") as (erin, _), \
                session(harness, "bob") as (laptop, _), \
                session(harness, "bob", register=False) as (phone, _):
            await laptop.join("dev")
            await phone.join("dev")
            await alice.join("dev")
            sent = await erin.dm("bob", "lunch?")
            posted = await alice.send("dev", "bob, the build is red")
            for device in (laptop, phone):
                assert (await next_dm(device)).id == sent.id
                await next_message(device, "dev")
                assert device.unread.dm("erin").unread == 1
                assert device.unread.room("dev").mentions == 1
            await laptop.mark_read(dm="erin", upto=sent.id)
            read = await next_event_of(phone, p.ReadMarked)
            assert read == p.ReadMarked(room="", peer="erin", upto=sent.id, unread=0,
                                        last=sent.id)
            assert phone.unread.dm("erin").unread == 0
            await laptop.mark_read(room="dev", upto=posted.seq)
            read = await next_event_of(phone, p.ReadMarked)
            assert (read.room, read.upto, read.unread, read.mentions) == \
                ("dev", posted.seq, 0, 0)
            assert phone.unread.room("dev") == p.RoomRead(room="dev", read_seq=posted.seq,
                                                          unread=0, mentions=0)
            # marking again moves nothing: nothing is pushed
            await laptop.mark_read(room="dev", upto=posted.seq)
            await alice.send("dev", "fixed")
            while not isinstance(event := await phone.next_event(5), p.MessagePosted):
                assert not isinstance(event, p.ReadMarked), event
            assert event.text == "fixed"
            assert phone.unread.room("dev").unread == 1

    run(scenario())


def test_sync_client_pages_dm_history_and_marks_read(harness: Harness) -> None:
    async def setup() -> int:
        async with session(harness, "bob"):
            pass
        async with session(harness, "erin") as (erin, _):
            return (await erin.dm("bob", "sync?")).id

    dm_id = run(setup())
    with SyncClient(harness.server, context=harness.context) as bob:
        bob.login("bob", DEFAULT_PASSWORD)
        assert bob.unread.dm("erin").unread == 1
        page = bob.dm_history("erin")
        assert [m.id for m in page.messages] == [dm_id]
        assert bob.mark_read(dm="erin", upto=dm_id).unread == 0
        assert bob.unread.total == 0
        bob.logout()


# -- bots --------------------------------------------------------------------------------------


def test_bot_pages_dm_history_and_marks_what_it_handled_read(harness: Harness) -> None:
    from zchat.bot import Bot, Context

    bot = Bot("notes-bot", rooms=("dev",))
    seen: list[tuple[int, int]] = []

    @bot.on_dm()
    async def remember(ctx: Context) -> None:
        before = bot.unread.dm(ctx.sender or "")
        state = await ctx.mark_read()
        page = await bot.dm_history(ctx.sender or "", limit=10)
        seen.append((before.unread if before else -1, state.unread))
        await ctx.reply(f"{len(page.messages)} in our history")

    @bot.on_message(room="dev")
    async def read_room(ctx: Context) -> None:
        await ctx.mark_read()

    async def scenario() -> None:
        async with harness.run_bot(bot), session(harness, "alice") as (alice, _):
            await alice.join("dev")
            await alice.dm("notes-bot", "remember milk")
            answer = await next_dm(alice, sender="notes-bot")
            assert answer.text == "1 in our history"
            await alice.send("dev", "notes-bot: hello")
            await alice.dm("notes-bot", "and bread")
            assert (await next_dm(alice, sender="notes-bot")).text == "3 in our history"
            # the room message comes on the SUB, the DM on the DEALER: the bot may answer
            # the DM before it has handled (and marked) the room message
            read = p.RoomRead(room="dev", read_seq=1, unread=0, mentions=0)
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while bot.unread.room("dev") != read:
                assert loop.time() < deadline, bot.unread.room("dev")
                await asyncio.sleep(0.01)  # polling a condition, not a socket
            assert bot.unread.room("dev") == read
        assert seen == [(1, 0), (1, 0)]
        reply = await relogin(harness, "notes-bot")
        assert reply.dm_reads == () and room_reads(reply)["dev"] == (1, 0, 0)

    run(scenario())


# -- the pure parts: the mention rule and the client's tracker ------------------------------


@pytest.mark.parametrize(("text", "mentioned"), [
    ("Hi @Alice!", True), ("ALICE: look", True), ("see alice.", True), ("«alice»", True),
    ("alice's idea", True), ("-alice-", True), ("alice🎉", True),
    ("malice", False), ("alice_b", False), ("alice.smith", False), ("bob-alice", False),
    ("x@alice.smith", False), ("ali ce", False),
])
def test_mention_is_the_name_as_a_word_by_key(text: str, mentioned: bool) -> None:
    assert mentions(text, "Alice") is mentioned


def test_mentions_of_names_beyond_ascii() -> None:
    assert mentions("hey ZOË, look", "zoë")
    assert mentions("дмитрий, привет", "Дмитрий")
    assert mentions("दिनेश जी", "दिनेश")          # combining marks are part of the word
    assert not mentions("दिनेशजी", "दिनेश")
    assert mentions("ｂｏｂ?", "bob")                 # NFKC, as names are


def _login_reply(**fields: object) -> p.LoggedIn:
    base: dict[str, object] = dict(name="bob", session="s", rooms=(
        p.RoomState(room="dev", last_seq=10),), room_reads=(
        p.RoomRead(room="dev", read_seq=8, unread=2, mentions=1),), dm_reads=(
        p.DmRead(peer="erin", last_id=40, read_id=30, unread=2),))
    base.update(fields)
    return p.LoggedIn(**base)  # type: ignore[arg-type]


def _msg(seq: int, text: str = "hi", sender: str = "alice") -> p.MessagePosted:
    return p.MessagePosted(room="dev", seq=seq, time=1, sender=sender, text=text)


def _dm(dm_id: int, sender: str = "erin", to: str = "bob") -> p.DirectMessage:
    return p.DirectMessage(id=dm_id, time=1, sender=sender, to=to, text="x")


def test_tracker_counts_what_is_handed_over_once() -> None:
    t = UnreadTracker()
    t.load(_login_reply())
    assert t.snapshot().room("dev") == p.RoomRead(room="dev", read_seq=8, unread=2,
                                                  mentions=1)
    t.handed(_msg(9), "bob")                      # in the login's count already
    t.handed(_msg(11, "@bob there?"), "bob")
    t.handed(_msg(11, "@bob there?"), "bob")      # a repeat
    assert t.snapshot().room("dev") == p.RoomRead(room="dev", read_seq=8, unread=3,
                                                  mentions=2)
    t.handed(_dm(40), "bob")                      # pending at login: counted there
    t.handed(_dm(41), "bob")
    assert t.snapshot().dm("ERIN") == p.DmRead(peer="erin", last_id=41, read_id=30, unread=3)
    t.handed(_dm(42, sender="bob", to="erin"), "bob")   # a copy of bob's own DM
    assert t.snapshot().dm("erin") == p.DmRead(peer="erin", last_id=42, read_id=42, unread=0)
    t.handed(_msg(12, sender="Bob"), "bob")       # bob's own post reads the room
    assert t.snapshot().room("dev") == p.RoomRead(room="dev", read_seq=12, unread=0,
                                                  mentions=0)
    assert t.snapshot().total == 0


def test_tracker_takes_a_read_marker_without_losing_what_came_after_it() -> None:
    """A MESSAGE on PUB can be handed over before a READ push that the broker sent
    earlier on the DEALER: the push's counts cover its ``last``, not that message."""
    t = UnreadTracker()
    t.load(_login_reply())
    t.handed(_msg(11, "bob: after the mark"), "bob")    # posted after the marker moved
    t.handed(p.ReadMarked(room="dev", peer="", upto=10, unread=0, mentions=0, last=10),
             "bob")
    assert t.snapshot().room("dev") == p.RoomRead(room="dev", read_seq=10, unread=1,
                                                  mentions=1)
    t.marked(p.ReadState(room="dev", peer="", upto=9, unread=2, last=11))  # older: kept
    assert t.snapshot().room("dev").read_seq == 10
    # a DM conversation marked read here, then the DMs up to it handed over late
    t.marked(p.ReadState(room="", peer="erin", upto=44, unread=1, last=45))
    t.handed(_dm(43), "bob")
    t.handed(_dm(45), "bob")
    assert t.snapshot().dm("erin") == p.DmRead(peer="erin", last_id=45, read_id=44, unread=1)
    t.handed(_dm(46), "bob")
    assert t.snapshot().dm("erin").unread == 2
    t.parted("dev")
    assert t.snapshot().room("dev") is None
