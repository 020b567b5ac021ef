"""Idempotent SEND and DM by client message id (docs/PROTOCOL.md §6.7, §6.8, §14), and the
client's bounded event queue that never loses room traffic.

The core is driven with the fake clock of tests/core_helpers.py; the rest runs a real broker
thread (inproc://, real SQLite) and real clients.
"""

from __future__ import annotations

import asyncio
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from client_helpers import RestartableBroker, collect, is_, logged_in, msgs
from conftest import run
from core_helpers import World

from zchat import wire as p
from zchat.client import client as client_module
from zchat.client.events import ConnectionRestored, Event
from zchat.core import ToPeer, ToTopic
from zchat.errors import ConnectionFailed, Status
from zchat.store import Store
from zchat.testing import Harness, running_broker

# -- the core ---------------------------------------------------------------------------------


@pytest.fixture
def world() -> World:
    return World()


def _rows(world: World, sql: str) -> list[tuple[Any, ...]]:
    return list(world.store._db.execute(sql))


def test_send_repeated_with_its_cmid_is_stored_once_with_the_original_seq(world: World) -> None:
    alice = world.user("alice")
    first = alice.call(p.Send(room="lobby", text="hello", cmid="c-1"))
    assert first.ok and len(first.events_of(p.MessagePosted)) == 1
    world.clock.jump(5)
    again = alice.call(p.Send(room="lobby", text="hello", cmid="c-1"))
    # the original's seq and time, and nothing published again
    assert again.reply == p.Sent(room="lobby", seq=1, time=first.reply.time)
    assert again.events == []
    assert _rows(world, "SELECT seq, cmid FROM messages") == [(1, "c-1")]
    assert world.core.last_seq["lobby"] == 1
    # another cmid, or none at all, is another message
    assert alice.must(p.Send(room="lobby", text="hello", cmid="c-2")).seq == 2
    assert alice.must(p.Send(room="lobby", text="hello")).seq == 3
    assert alice.must(p.Send(room="lobby", text="hello")).seq == 4


def test_cmid_is_scoped_to_sender_and_room(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    alice.must(p.Join(room="dev"))
    bob.must(p.Join(room="dev"))
    assert alice.must(p.Send(room="dev", text="a", cmid="same")).seq == 1
    assert bob.must(p.Send(room="dev", text="b", cmid="same")).seq == 2     # other sender
    assert alice.must(p.Send(room="lobby", text="c", cmid="same")).seq == 1  # other room
    assert alice.must(p.Send(room="dev", text="a", cmid="same")).seq == 1    # the retry


def test_dm_repeated_with_its_cmid_is_stored_and_pushed_once(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    first = alice.call(p.SendDirect(to="bob", text="psst", cmid="d-1"))
    assert first.reply.delivered == "live"
    assert [rid for rid, _dm in first.pushes] == [bob.routing_id]
    again = alice.call(p.SendDirect(to="bob", text="psst", cmid="d-1"))
    assert again.reply == first.reply
    assert again.pushes == []
    assert _rows(world, "SELECT sender, cmid FROM direct_messages") == [("alice", "d-1")]
    # `delivered` says what holds now: bob gone, the retry reports "stored"
    bob.must(p.Logout())
    later = alice.call(p.SendDirect(to="bob", text="psst", cmid="d-1"))
    assert (later.reply.id, later.reply.delivered) == (first.reply.id, "stored")
    assert len(_rows(world, "SELECT id FROM direct_messages")) == 1


def test_dm_cmid_reused_for_another_recipient_is_409_and_stores_nothing(world: World) -> None:
    alice = world.user("alice")
    world.user("bob")
    world.user("carol")
    assert alice.call(p.SendDirect(to="bob", text="x", cmid="d-9")).ok
    out = alice.call(p.SendDirect(to="carol", text="x", cmid="d-9"))
    assert out.status == Status.CONFLICT and out.pushes == []
    assert len(_rows(world, "SELECT id FROM direct_messages")) == 1


def test_dm_cmid_over_the_limit_is_400(world: World) -> None:
    alice = world.user("alice")
    world.user("bob")
    out = alice.call(p.SendDirect(to="bob", text="x", cmid="c" * (p.MAX_CMID_CHARS + 1)))
    assert out.status == Status.BAD_REQUEST
    assert _rows(world, "SELECT id FROM direct_messages") == []
    assert alice.call(p.SendDirect(to="bob", text="x", cmid="c" * p.MAX_CMID_CHARS)).ok


def test_dm_to_an_unknown_account_is_404(world: World) -> None:
    alice = world.user("alice")
    out = alice.call(p.SendDirect(to="nobody", text="x", cmid="d-1"))
    assert out.status == Status.NOT_FOUND
    assert _rows(world, "SELECT id FROM direct_messages") == []


def test_dedupe_survives_a_restart_of_the_core(tmp_path: Path) -> None:
    path = tmp_path / "zchat.db"
    world = World(Store(path))
    alice = world.user("alice")
    sent = alice.must(p.Send(room="lobby", text="committed", cmid="k"))
    world.store.close()
    world2 = World(Store(path))
    alice2 = world2.user("alice", register=False)
    again = alice2.call(p.Send(room="lobby", text="committed", cmid="k"))
    assert again.reply == sent and again.events == []


# -- real broker, real clients ----------------------------------------------------------------


def test_client_send_with_the_same_cmid_twice_is_seen_once(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("alice") as alice, harness.client("bob") as bob:
            first = await alice.send("lobby", "once", cmid="m-1")
            second = await alice.send("lobby", "once", cmid="m-1")
            assert second == first
            await alice.send("lobby", "sentinel")
            seen = await collect(bob, is_(p.MessagePosted, text="sentinel"))
            assert [(m.seq, m.text) for m in msgs(seen, "lobby")] == [
                (first.seq, "once"), (first.seq + 1, "sentinel")]
            dm1 = await alice.dm("bob", "hi", cmid="x")
            dm2 = await alice.dm("bob", "hi", cmid="x")
            assert dm1 == dm2
            # without a cmid the client makes one per call: two calls, two messages
            a, b = await alice.send("lobby", "dup?"), await alice.send("lobby", "dup?")
            assert b.seq == a.seq + 1

    run(main())


class _CrashAfterCommit:
    """Wraps a broker core's ``handle``: the first SEND is committed, then every action
    (publish and OK) is thrown away, as if the broker died right after the commit."""

    def __init__(self, harness: Harness) -> None:
        core = harness.broker.core
        assert core is not None
        self.core = core
        self.real = core.handle
        self.committed = threading.Event()
        core.handle = self  # type: ignore[method-assign]

    def __call__(self, routing_id: bytes, frames: list[bytes], *args: Any,
                 **kwargs: Any) -> list[Any]:
        actions = self.real(routing_id, frames, *args, **kwargs)
        if len(frames) == 4 and frames[2] == b"SEND" and not self.committed.is_set():
            assert [type(a) for a in actions] == [ToTopic, ToPeer]  # publish, then OK
            self.committed.set()
            return []
        return actions


def test_unacknowledged_send_is_retried_across_a_restart_and_stored_once(
        tmp_path: Path) -> None:
    tag = f"{os.getpid()}-idem"
    broker = RestartableBroker(tmp_path / "zchat.db", f"inproc://zchat-idem-router-{tag}",
                               f"inproc://zchat-idem-pub-{tag}")

    async def main() -> None:
        harness = await asyncio.to_thread(broker.start)
        alice = await logged_in(broker, "alice", ("dev",), timeout_s=0.5, reconnect=True,
                                reconnect_max_s=1.0)
        bob = await logged_in(broker, "bob", ("dev",), timeout_s=0.5, reconnect=True,
                              reconnect_max_s=1.0)
        try:
            crash = _CrashAfterCommit(harness)
            sending = asyncio.create_task(alice.send("dev", "exactly once", cmid="retry-1",
                                                     retry_for_s=15))
            assert await asyncio.to_thread(crash.committed.wait, 5)
            await asyncio.to_thread(broker.stop)
            await asyncio.to_thread(broker.start)
            sent = await sending   # retried with the same cmid after the reconnect
            assert sent.seq == 1
            seen: list[Event] = await collect(bob, is_(ConnectionRestored), timeout_s=10)
            await bob.send("dev", "after")
            seen += await collect(bob, is_(p.MessagePosted, text="after"))
            assert [(m.seq, m.text) for m in msgs(seen, "dev")] == [
                (1, "exactly once"), (2, "after")]
        finally:
            await alice.close()
            await bob.close()
        store = Store(broker.db)
        try:
            assert list(store._db.execute(
                "SELECT seq, text, cmid FROM messages WHERE room_key = 'dev'")) == [
                (1, "exactly once", "retry-1"), (2, "after", bob_cmid(store))]
        finally:
            store.close()

    try:
        run(main(), timeout_s=40)
    finally:
        broker.stop()


def bob_cmid(store: Store) -> str:
    """The cmid bob's client generated for "after" (random, 16 URL-safe characters)."""
    (cmid,) = store._db.execute("SELECT cmid FROM messages WHERE text = 'after'").fetchone()
    assert isinstance(cmid, str) and len(cmid) == 16
    return cmid


def test_send_without_reconnect_is_not_retried(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("alice") as alice:
            crash = _CrashAfterCommit(harness)
            alice.timeout_s = 0.3
            with pytest.raises(ConnectionFailed):
                await alice.send("lobby", "lost reply", cmid="n-1")
            assert crash.committed.is_set()
            # the application may retry by hand with the same cmid: still one message
            alice.timeout_s = 5.0
            assert (await alice.send("lobby", "lost reply", cmid="n-1")).seq == 1
            assert (await alice.history("lobby")).messages[-1].seq == 1

    run(main())


# -- bounded event queue ------------------------------------------------------------------------


def test_reader_that_stops_reading_gets_every_message_once_in_order(
        monkeypatch: pytest.MonkeyPatch) -> None:
    """The application reads nothing while 3,000 messages pass; the event queue stays
    within its bound, the SUB high-water mark drops the overflow, and once it reads it gets
    every message exactly once and in order (gaps filled from HISTORY)."""
    bound, total = 100, 3000
    monkeypatch.setattr(client_module, "SUB_RCVHWM", 50)

    async def main() -> None:
        with running_broker(sndhwm=50, pub_sndhwm=50, heartbeat_interval_s=0.1, heartbeat_timeout_s=5.0,
                            send_rate_per_s=0) as harness:  # no rate limit: a flood
            async with harness.client("alice") as alice, harness.client("bob") as bob:
                alice.event_queue_max = bound
                await alice.join("flood")
                await bob.join("flood")
                high = 0
                for i in range(1, total + 1):
                    await bob.send("flood", f"m{i}", cmid=f"f{i}")
                    high = max(high, alice._events.qsize())
                assert alice._events.qsize() <= bound
                got: list[int] = []
                while len(got) < total:
                    event = await alice.next_event(10)
                    assert event is not None, f"stalled after {len(got)} messages"
                    high = max(high, alice._events.qsize())
                    if isinstance(event, p.MessagePosted) and event.room == "flood":
                        got.append(event.seq)
                assert got == list(range(1, total + 1))
                assert high <= bound
                extra = await alice.next_event(0.3)  # and nothing more of the room
                assert not (isinstance(extra, p.MessagePosted) and extra.room == "flood"), extra

    run(main(), timeout_s=60)
