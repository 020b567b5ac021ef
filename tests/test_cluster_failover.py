"""Clients with several endpoints that move to another broker of a cluster when theirs
is lost, and RESUME there (issue 16, docs/cluster.md "How clients move"): real broker
threads on one real PostgreSQL database (tests/postgres_server.py), real zmq sockets,
real clients.

- a client of [broker 1, broker 2] whose broker 1 stops moves to broker 2, resumes the
  same session (no LOGIN), and gets the messages posted meanwhile once each, in order,
  and the DM sent meanwhile;
- a RESUME on broker 2 of a session that broker 1 holds takes it over: broker 1 drops
  it (its old connection is told SESSION_CLOSED) and publishes no offline PRESENCE, nor
  broker 2 an online one (the account was online in the cluster all along);
- on one broker (SQLite) an unknown token is still refused with 401.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import pytest
from client_helpers import collect, is_, msgs, registered_and_logged_in

from zchat import wire as p
from zchat.client import Client
from zchat.client.events import ConnectionLost, ConnectionRestored, SessionEnded
from zchat.errors import ConnectionFailed, RequestFailed
from zchat.passwords import token_sha256
from zchat.store import open_store
from zchat.testing import Harness, run, running_broker


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 5.0) -> None:
    """Poll ``condition`` (state of a broker thread) without blocking the client's loop;
    AssertionError after ``timeout_s``."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.005)  # one polling step of a condition


def both(one: Harness, two: Harness, **kwargs: Any) -> Client:
    """A client of the cluster's two brokers, broker 1 first (inproc: plain)."""
    return Client([one.server, two.server], context=one.context, **kwargs)


def test_a_client_moves_to_the_next_broker_resumes_and_misses_nothing(pg_url: str) -> None:
    with contextlib.ExitStack() as first, running_broker(pg_url, id="broker-2") as two:
        one = first.enter_context(running_broker(pg_url, id="broker-1"))

        async def scenario() -> None:
            alice = await registered_and_logged_in(both(one, two, reconnect=True, timeout_s=2.0), "alice")
            bob = await registered_and_logged_in(two.new_client(), "bob")
            try:
                await alice.join("dev")
                await bob.join("dev")
                before = await bob.send("dev", "before")
                await collect(alice, is_(p.MessagePosted, room="dev", seq=before.seq))
                assert alice.server == one.server
                token = alice._state.session
                first.close()  # broker 1 stops: GOING_AWAY, its sessions kept in the store
                sent = [await bob.send("dev", f"meanwhile {i}") for i in range(5)]
                await bob.dm("alice", "while you moved")
                events = await collect(alice, is_(ConnectionRestored), timeout_s=15)
                last = sent[-1].seq
                if not any(is_(p.MessagePosted, room="dev", seq=last)(e) for e in events):
                    events += await collect(alice, is_(p.MessagePosted, room="dev",
                                                       seq=last))
                if not any(isinstance(e, p.DirectMessage) for e in events):
                    events += await collect(alice, is_(p.DirectMessage))
                kinds = [type(e) for e in events]
                assert kinds.count(ConnectionLost) == 1 and \
                    kinds.count(ConnectionRestored) == 1, kinds
                assert alice.server == two.server
                assert alice._state.session == token  # resumed: no LOGIN, same session
                heard = [m for m in msgs(events, "dev") if m.seq > before.seq]
                assert [m.seq for m in heard] == [s.seq for s in sent]
                assert [m.text for m in heard] == [f"meanwhile {i}" for i in range(5)]
                dms = [e for e in events if isinstance(e, p.DirectMessage)]
                assert [d.text for d in dms] == ["while you moved"]
                # and the session works on broker 2 as before
                after = await alice.send("dev", "back")
                await collect(bob, is_(p.MessagePosted, room="dev", seq=after.seq))
            finally:
                await alice.close()
                await bob.close()

        run(scenario())


def test_a_session_resumed_on_another_broker_leaves_its_old_one_without_an_offline_event(
        pg_url: str) -> None:
    with running_broker(pg_url, id="broker-1") as one, \
            running_broker(pg_url, id="broker-2") as two:
        async def scenario() -> None:
            alice = await registered_and_logged_in(one.new_client(), "alice")
            carol = await registered_and_logged_in(one.new_client(), "carol")  # watches presence
            dave = await registered_and_logged_in(one.new_client(), "dave")
            mover = two.new_client()
            try:
                await mover.connect()
                token = alice._state.session
                assert token
                reply = await mover.request(p.Resume(session=token))
                assert reply.name == "alice" and reply.session == token
                ended = await collect(alice, is_(SessionEnded), timeout_s=5)
                assert "resumed on another broker" in ended[-1].reason
                await until(lambda: not any(s.name == "alice" for s in
                                            list(one.broker.core.sessions.values())),
                            "broker 1 to drop alice's session")
                await dave.logout()  # an offline event published after any of alice's
                seen = await collect(carol, is_(p.PresenceChanged, name="dave",
                                                presence="offline"))
                offline = [e.name for e in seen if isinstance(e, p.PresenceChanged)
                           and e.presence == "offline"]
                assert offline == ["dave"], offline
                # nor an online from broker 2 (relayed to broker 1's PUB): alice was
                # online in the cluster all along (one online, one offline per account)
                assert [e.presence for e in seen if isinstance(e, p.PresenceChanged)
                        and e.name == "alice"] == []
                # the session lives on broker 2, stored row and all
                pong = await mover.ping()
                assert pong.session == token
                store = open_store(pg_url)
                try:
                    row = store.session(token_sha256(token))
                    assert row is not None and row.holder == "broker-2"
                finally:
                    store.close()
            finally:
                for client in (alice, carol, dave, mover):
                    await client.close()

        run(scenario())


def test_one_broker_on_sqlite_still_refuses_an_unknown_session() -> None:
    with running_broker() as harness:
        async def scenario() -> None:
            async with harness.client() as client:
                with pytest.raises(RequestFailed) as refused:
                    await client.request(p.Resume(session="not-a-session-of-this-broker"))
                assert refused.value.status == 401

        run(scenario())


def test_connect_takes_the_first_endpoint_that_answers() -> None:
    with running_broker() as harness:
        async def scenario() -> None:
            client = Client(["inproc://zchat-nobody-here", harness.server],
                            context=harness.context, timeout_s=0.3)
            try:
                await client.connect()
                assert client.server == harness.server
                assert client.servers == ("inproc://zchat-nobody-here", harness.server)
            finally:
                await client.close()
            lost = Client("inproc://zchat-nobody-here,inproc://zchat-nobody-there",
                          context=harness.context, timeout_s=0.2)
            with pytest.raises(ConnectionFailed) as failed:
                await lost.connect()
            await lost.close()
            assert "none of the 2 brokers answered" in str(failed.value)
            assert "zchat-nobody-here" in str(failed.value) and \
                "zchat-nobody-there" in str(failed.value)

        run(scenario())


def test_a_bad_endpoint_list_is_refused_at_once() -> None:
    with pytest.raises(ValueError, match=r"server: tcp://a:1 is listed twice"):
        Client("tcp://a:1,tcp://a:1")
    with pytest.raises(ValueError, match=r"endpoint 2 of 2 is empty"):
        Client(["tcp://a:1", ""])
