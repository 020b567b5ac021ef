"""Client reconnect over real sockets: a broker stopped and started again on the same
endpoints and the same SQLite file, a client with ``reconnect=True`` and fast heartbeats.

Nothing here sleeps to wait for a condition: every wait is for an event (a client event, a
frame on a socket) with a timeout that fails the test.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from client_helpers import RestartableBroker, collect, is_, logged_in, msgs
from conftest import free_port, run

from zchat import wire as p
from zchat.client.client import Client
from zchat.client.events import (
    ConnectionLost,
    ConnectionRestored,
    Event,
    Reconnecting,
    SessionEnded,
)
from zchat.client.session import RECONNECT_FIRST_S, backoff_delay
from zchat.errors import ConnectionFailed
from zchat.testing import DEFAULT_PASSWORD, fast_hash


@pytest.fixture
def tcp_broker_thread(tmp_path: Path) -> Iterator[RestartableBroker]:
    router, pub = free_port(), free_port()
    assert router != pub
    broker = RestartableBroker(tmp_path / "zchat.db", f"tcp://127.0.0.1:{router}",
                               f"tcp://127.0.0.1:{pub}")
    try:
        yield broker
    finally:
        broker.stop()


# -- back-off (pure) ---------------------------------------------------------------------------


def test_backoff_doubles_from_half_a_second_up_to_the_ceiling() -> None:
    assert [backoff_delay(n, 30.0) for n in range(1, 10)] == [
        0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    assert backoff_delay(1, 30.0) == RECONNECT_FIRST_S
    assert backoff_delay(10_000, 5.0) == 5.0  # no overflow however long it goes on
    assert backoff_delay(1, 0.2) == 0.2


def test_backoff_jitter_stays_near_the_step_and_under_the_ceiling() -> None:
    assert backoff_delay(3, 30.0, jitter=0.1) == pytest.approx(2.2)
    assert backoff_delay(3, 30.0, jitter=-0.1) == pytest.approx(1.8)
    assert backoff_delay(9, 30.0, jitter=0.1) == 30.0
    assert backoff_delay(9, 30.0, jitter=-0.1) == pytest.approx(27.0)


def test_reconnect_max_must_be_positive() -> None:
    with pytest.raises(ValueError):
        Client("inproc://nowhere", reconnect=True, reconnect_max_s=0)


# -- reconnect after a broker restart -----------------------------------------------------------


def test_reconnect_after_restart_delivers_missed_messages_once_in_order(
        inproc_broker: RestartableBroker) -> None:
    async def main() -> None:
        await asyncio.to_thread(inproc_broker.start)
        alice = await logged_in(inproc_broker, "alice", ("dev",), timeout_s=0.5,
                                reconnect=True, reconnect_max_s=5.0)
        seen: list[Event] = []
        try:
            assert alice.state == "connected"
            bob = await logged_in(inproc_broker, "bob", ("dev",))
            for i in (1, 2):
                await bob.send("dev", f"before {i}")
            await bob.close()
            seen += await collect(alice, is_(p.MessagePosted, seq=2))

            await asyncio.to_thread(inproc_broker.stop)
            # Attempt 1 finds no broker (INFO times out); wait for attempt 2's back-off.
            seen += await collect(alice, is_(Reconnecting, attempt=2), timeout_s=5)
            assert alice.state == "reconnecting" and not alice.connected
            loop = asyncio.get_running_loop()
            start = loop.time()
            with pytest.raises(ConnectionFailed):
                await alice.send("dev", "while disconnected")
            with pytest.raises(ConnectionFailed):
                await alice.join("elsewhere")
            assert loop.time() - start < 0.1  # failed fast, no timeout waited

            await asyncio.to_thread(inproc_broker.start)
            bob = await logged_in(inproc_broker, "bob", register=False)
            during = [(await bob.send("dev", f"during {i}")).seq for i in range(3, 8)]
            assert during == [3, 4, 5, 6, 7]

            seen += await collect(alice, is_(ConnectionRestored), timeout_s=5)
            assert alice.state == "connected" and alice.connected
            assert (await alice.send("dev", "after")).seq == 8
            await bob.send("dev", "sentinel")
            seen += await collect(alice, is_(p.MessagePosted, seq=9))
            await bob.close()
        finally:
            await alice.close()

        kinds = [type(e).__name__ for e in seen if not isinstance(e, p.PresenceChanged)
                 and not isinstance(e, p.UserJoined)]
        first_lost = kinds.index("ConnectionLost")
        assert kinds.count("ConnectionLost") == 1
        assert kinds.count("ConnectionRestored") == 1
        assert kinds[first_lost + 1:first_lost + 3] == ["Reconnecting", "Reconnecting"]
        reconnecting = [e for e in seen if isinstance(e, Reconnecting)]
        assert [r.attempt for r in reconnecting] == [1, 2]
        assert reconnecting[0].delay_s == pytest.approx(0.5, rel=0.11)
        assert reconnecting[1].delay_s == pytest.approx(1.0, rel=0.11)
        # Every message exactly once, in order; the ones posted during the outage arrive
        # (from history) before ConnectionRestored.
        got = [(m.seq, m.text) for m in msgs(seen, "dev")]
        assert got == [(1, "before 1"), (2, "before 2"),
                       *[(i, f"during {i}") for i in range(3, 8)],
                       (8, "after"), (9, "sentinel")]
        restored_at = next(i for i, e in enumerate(seen) if isinstance(e, ConnectionRestored))
        assert [m.seq for m in msgs(seen[:restored_at])][-1] == 7
        assert alice.state == "closed"

    run(main())


def test_reconnect_when_the_transport_came_back_by_itself(
        tcp_broker_thread: RestartableBroker) -> None:
    """Over TCP, ZeroMQ reconnects the old sockets to a quickly restarted broker, which no
    longer knows the session: the PONG's session (or the silence) starts a re-login."""
    async def main() -> None:
        await asyncio.to_thread(tcp_broker_thread.start)
        alice = await logged_in(tcp_broker_thread, "alice", ("dev",), timeout_s=1.0,
                                reconnect=True)
        try:
            await asyncio.to_thread(tcp_broker_thread.stop)
            await asyncio.to_thread(tcp_broker_thread.start)
            seen = await collect(alice, is_(ConnectionRestored), timeout_s=8)
            assert [type(e) for e in seen if isinstance(e, ConnectionLost)] == [ConnectionLost]
            async with contextlib.AsyncExitStack() as stack:
                bob = await logged_in(tcp_broker_thread, "bob", ("dev",))
                stack.push_async_callback(bob.close)
                assert (await bob.send("dev", "hello again")).seq == 1
                seen += await collect(alice, is_(p.MessagePosted, seq=1))
            assert (await alice.send("dev", "me too")).seq == 2
            seen += await collect(alice, is_(p.MessagePosted, seq=2))
            assert [m.seq for m in msgs(seen, "dev")] == [1, 2]
            pong = await alice.ping()
            assert pong.session and alice.rtt_s is not None
        finally:
            await alice.close()

    run(main())


def test_close_during_reconnect_returns_quickly(inproc_broker: RestartableBroker) -> None:
    async def main() -> None:
        h = await asyncio.to_thread(inproc_broker.start)
        waiting = await logged_in(inproc_broker, "waiting", timeout_s=5.0, reconnect=True)
        trying = await logged_in(inproc_broker, "trying", timeout_s=5.0, reconnect=True)
        await asyncio.to_thread(inproc_broker.stop)
        # A black hole on the router endpoint: it takes requests and never answers, so
        # an attempt's INFO stays in flight for the full 5 s timeout.
        ctx = zmq.asyncio.Context.shadow(h.context.underlying)
        hole = ctx.socket(zmq.ROUTER)
        hole.setsockopt(zmq.LINGER, 0)
        hole.bind(inproc_broker.router)
        try:
            loop = asyncio.get_running_loop()
            await collect(waiting, is_(Reconnecting, attempt=1), timeout_s=5)
            start = loop.time()
            await waiting.close()  # in the back-off wait
            assert loop.time() - start < 1.0
            assert waiting.state == "closed"

            await collect(trying, is_(Reconnecting, attempt=1), timeout_s=5)
            assert await hole.poll(5000), "the reconnect attempt sent nothing"
            frames = await hole.recv_multipart()
            assert frames[3] == b"INFO"
            start = loop.time()
            await trying.close()  # with INFO in flight
            assert loop.time() - start < 1.0
            assert trying.state == "closed"
            async with asyncio.timeout(1.0):  # the event stream ends
                rest = [e async for e in trying.events()]
            assert not [e for e in rest if isinstance(e, ConnectionRestored)]
        finally:
            hole.close(linger=0)

    run(main())


def test_changed_password_ends_the_session(inproc_broker: RestartableBroker) -> None:
    async def main() -> None:
        await asyncio.to_thread(inproc_broker.start)
        alice = await logged_in(inproc_broker, "alice", ("dev",), timeout_s=0.5,
                                reconnect=True)
        try:
            await asyncio.to_thread(inproc_broker.stop)
            new_hash = fast_hash("a new password")
            with contextlib.closing(sqlite3.connect(inproc_broker.db)) as db, db:
                db.execute("UPDATE accounts SET password_hash = ? WHERE key = 'alice'",
                           (new_hash,))
                # a password change ends the account's sessions: none is resumable (§6.27)
                db.execute("DELETE FROM sessions WHERE account_key = 'alice'")
            await asyncio.to_thread(inproc_broker.start)
            seen = await collect(alice, is_(SessionEnded), timeout_s=8)
            kinds = [type(e) for e in seen
                     if isinstance(e, ConnectionLost | Reconnecting | ConnectionRestored
                                   | SessionEnded)]
            assert kinds[0] is ConnectionLost and kinds[-1] is SessionEnded
            assert ConnectionRestored not in kinds and kinds.count(ConnectionLost) == 1
            ended = seen[-1]
            assert isinstance(ended, SessionEnded) and "401" in ended.reason
            assert alice.state == "closed" and not alice.connected
            assert await alice.next_event(1.0) is None  # terminal: the stream ended
            with pytest.raises(ConnectionFailed):
                await alice.send("dev", "anyone?")
        finally:
            await alice.close()
        assert alice.state == "closed"

    run(main())


def test_without_reconnect_nothing_is_retried(inproc_broker: RestartableBroker) -> None:
    """reconnect=False (the default) keeps the old behaviour: ConnectionLost, no attempts,
    no credentials kept."""
    async def main() -> None:
        await asyncio.to_thread(inproc_broker.start)
        alice = await logged_in(inproc_broker, "alice", timeout_s=0.3)
        try:
            assert alice._credentials is None
            await asyncio.to_thread(inproc_broker.stop)
            seen = await collect(alice, is_(ConnectionLost), timeout_s=3)
            seen += [e async for e in _events_for(alice, 1.0)]
            assert not [e for e in seen if isinstance(e, Reconnecting | SessionEnded)]
            assert alice.state == "reconnecting"
        finally:
            await alice.close()

    run(main())


async def _events_for(client: Client, duration_s: float) -> Any:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s
    while (remaining := deadline - loop.time()) > 0:
        event = await client.next_event(remaining)
        if event is not None:
            yield event


def test_dm_handed_over_while_disconnected_is_acknowledged_after_the_reconnect(
        inproc_broker: RestartableBroker) -> None:
    """The acknowledgement of a DM handed to the application while the broker is gone is
    lost; the reconnect's LOGIN offers the DM again: the client must not show it twice, and
    must acknowledge it then, or every later login would offer it once more."""
    async def main() -> None:
        await asyncio.to_thread(inproc_broker.start)
        bob = await logged_in(inproc_broker, "bob", timeout_s=0.5, reconnect=True,
                              reconnect_max_s=1.0)
        try:
            alice = await logged_in(inproc_broker, "alice")
            sent = await alice.dm("bob", "hold this")
            await alice.close()
            await asyncio.to_thread(inproc_broker.stop)
            # the DM was queued before the broker stopped; handing it over now (collect)
            # cannot acknowledge it
            before = await collect(bob, is_(ConnectionLost), timeout_s=5)
            assert [e.id for e in before if isinstance(e, p.DirectMessage)] == [sent.id]
            await asyncio.to_thread(inproc_broker.start)
            after = await collect(bob, is_(ConnectionRestored), timeout_s=10)
            # LOGIN offered it again: not shown twice, acknowledged this time
            assert [e for e in after if isinstance(e, p.DirectMessage)] == []
            await bob.ping()  # the DM_ACK went before this PING on the same socket
        finally:
            await bob.close()
        fresh = inproc_broker.client()
        await fresh.connect()
        try:
            assert (await fresh.login("bob", DEFAULT_PASSWORD)).pending == ()
        finally:
            await fresh.close()

    run(main())
