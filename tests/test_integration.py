"""Broker and Client over real zmq sockets (inproc:// in this process, tcp on loopback for the
transport limit) with a real SQLite store: chat, history, direct messages, presence, gap
repair, heartbeats, and malformed input from raw sockets."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
import zmq
import zmq.asyncio
from client_helpers import FAST_BEATS, collect, is_msg, msgs
from conftest import run
from zmq.utils.monitor import recv_monitor_message

from zchat import wire as p
from zchat.client import session
from zchat.client.client import Client
from zchat.client.events import ConnectionLost, Event
from zchat.errors import RequestFailed, Status
from zchat.testing import DEFAULT_PASSWORD, Harness, running_broker

# -- helpers -----------------------------------------------------------------------------


async def drain(client: Client, duration_s: float) -> list[Event]:
    """Every event ``client`` receives during the next ``duration_s`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + duration_s
    events: list[Event] = []
    while (remaining := deadline - loop.time()) > 0:
        event = await client.next_event(remaining)
        if event is not None:
            events.append(event)
    return events


async def next_message(client: Client, timeout_s: float) -> p.MessagePosted | None:
    """The next room message within ``timeout_s`` (other events skipped), or None."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while (remaining := deadline - loop.time()) > 0:
        event = await client.next_event(remaining)
        if isinstance(event, p.MessagePosted):
            return event
    return None


def is_presence(name: str, presence: str) -> Callable[[Event], bool]:
    return lambda e: (isinstance(e, p.PresenceChanged) and e.name == name
                      and e.presence == presence)


def presences(events: list[Event], name: str) -> list[str]:
    return [e.presence for e in events if isinstance(e, p.PresenceChanged) and e.name == name]


def async_context() -> zmq.asyncio.Context:
    return zmq.asyncio.Context.shadow(zmq.Context.instance().underlying)


@contextlib.asynccontextmanager
async def raw_socket(kind: int, endpoint: str) -> AsyncIterator[zmq.asyncio.Socket]:
    sock = async_context().socket(kind)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)


@contextlib.contextmanager
def sync_dealer(endpoint: str) -> Iterator[zmq.Socket[Any]]:
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    try:
        yield sock
    finally:
        sock.close(linger=0)


def recv_reply(sock: zmq.Socket[Any], timeout_s: float = 5.0) -> list[bytes]:
    assert sock.poll(int(timeout_s * 1000)), f"no reply within {timeout_s} s"
    return sock.recv_multipart()


def login_frames(request_id: bytes, name: str, password: str = DEFAULT_PASSWORD) -> list[bytes]:
    return p.encode_request(request_id, p.Login(name=name, password=password))


async def register_only(h: Harness, *names: str) -> None:
    """Create accounts without logging in (no session, so no presence events)."""
    async with h.client() as c:
        for name in names:
            await c.register(name, DEFAULT_PASSWORD)


# -- chat, history, late joiners --------------------------------------------------------


def test_two_clients_see_every_message_once_in_sequence_order(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("alice") as a, harness.client("bob") as b:
            assert (await a.join("dev")).created is True
            assert (await b.join("dev")).created is False
            sent = []
            for i in range(10):
                sender = a if i % 2 == 0 else b
                reply = await sender.send("dev", f"line {i} from {sender.name}")
                sent.append((reply.seq, sender.name, f"line {i} from {sender.name}"))
            assert [s for s, _n, _t in sent] == list(range(1, 11))
            # A sentinel after everything: any duplicate would have arrived before it.
            await a.send("dev", "sentinel")
            for client in (a, b):
                got = msgs(await collect(client, is_msg(11)), "dev")
                assert [(m.seq, m.sender, m.text) for m in got] == \
                    [*sent, (11, "alice", "sentinel")]
                assert client.last_seq("dev") == 11

    run(main())


def test_late_joiner_sees_only_later_messages_and_history_has_the_earlier(
        file_harness: Harness) -> None:
    async def main() -> None:
        async with file_harness.client("alice") as a, file_harness.client("bob") as b:
            await a.join("dev")
            await b.join("dev")
            for i in range(1, 4):
                assert (await a.send("dev", f"early {i}")).seq == i
            await collect(b, is_msg(3))
            async with file_harness.client("carol") as c:
                joined = await c.join("dev")
                assert (joined.last_seq, joined.created) == (3, False)
                await b.send("dev", "late 4")
                await b.send("dev", "late 5")
                got = msgs(await collect(c, is_msg(5)))
                assert [(m.seq, m.text) for m in got] == [(4, "late 4"), (5, "late 5")]
                page = await c.history("dev")
                assert [(m.seq, m.sender, m.text) for m in page.messages] == [
                    (1, "alice", "early 1"), (2, "alice", "early 2"),
                    (3, "alice", "early 3"), (4, "bob", "late 4"), (5, "bob", "late 5")]
                older = await c.history("dev", before=4, limit=2)
                assert [m.seq for m in older.messages] == [2, 3]

    run(main())
    assert Path(file_harness.db_path).stat().st_size > 0


def test_messages_and_accounts_survive_a_broker_restart(tmp_path: Path) -> None:
    db = tmp_path / "zchat.db"

    async def first(h: Harness) -> None:
        async with h.client("alice") as a:
            await a.join("dev")
            await a.send("dev", "before restart 1")
            await a.send("dev", "before restart 2")

    async def second(h: Harness) -> None:
        async with h.client() as a:
            logged_in = await a.login("alice", DEFAULT_PASSWORD)
            assert {r.room: r.last_seq for r in logged_in.rooms} == {"dev": 2, "lobby": 0}
            assert (await a.send("dev", "after restart")).seq == 3
            page = await a.history("dev")
            assert [m.text for m in page.messages] == [
                "before restart 1", "before restart 2", "after restart"]

    with running_broker(db) as h:
        run(first(h))
    with running_broker(db) as h:
        run(second(h))


# -- direct messages ---------------------------------------------------------------------


def test_dm_is_pushed_live_to_every_session_of_the_recipient(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as b1, harness.client("bob") as b2, \
                harness.client("alice") as a:
            reply = await a.dm("Bob", "hi both of you")
            assert reply.delivered == "live"
            for b in (b1, b2):
                (dm,) = [e for e in await collect(b, lambda e: isinstance(e, p.DirectMessage))
                         if isinstance(e, p.DirectMessage)]
                assert (dm.id, dm.sender, dm.to, dm.text) == \
                    (reply.id, "alice", "bob", "hi both of you")

    run(main())


def test_stored_dm_is_delivered_first_at_next_login_exactly_once(harness: Harness) -> None:
    async def main() -> None:
        await register_only(harness, "carol")
        async with harness.client("alice") as a:
            stored = await a.dm("carol", "read this when you are back")
            assert stored.delivered == "stored"
        async with harness.client() as c:
            logged_in = await c.login("carol", DEFAULT_PASSWORD)
            assert [(d.id, d.text) for d in logged_in.pending] == \
                [(stored.id, "read this when you are back")]
            first = await anext(c.events())  # events() yields the stored DM first
            assert isinstance(first, p.DirectMessage)
            assert (first.id, first.sender, first.to) == (stored.id, "alice", "carol")
            await c.send("lobby", "sentinel")
            later = await collect(c, lambda e: isinstance(e, p.MessagePosted)
                                  and e.text == "sentinel")
            assert not [e for e in later if isinstance(e, p.DirectMessage)]
            await c.logout()
        async with harness.client() as c:
            assert (await c.login("carol", DEFAULT_PASSWORD)).pending == ()

    run(main())


def test_dm_pushed_to_a_session_that_dies_unacknowledged_comes_at_next_login(
        harness: Harness) -> None:
    """The push reached a session that died before handing it on (no DM_ACK): the broker
    still holds it, and the next login gets it once."""
    async def main() -> None:
        await register_only(harness, "dave")
        with sync_dealer(harness.server) as dead:
            dead.send_multipart(login_frames(b"1", "dave"))
            recv_reply(dead)
            async with harness.client("alice") as a:
                sent = await a.dm("dave", "did you get this?")
                assert sent.delivered == "live"
            push = recv_reply(dead)  # the push arrived, and the session dies unacknowledged
            assert p.decode_from_broker(push, {})[1] == p.DirectMessage(
                id=sent.id, time=sent.time, sender="alice", to="dave", text="did you get this?")
        async with harness.client() as c:
            pending = (await c.login("dave", DEFAULT_PASSWORD)).pending
            assert [d.id for d in pending] == [sent.id]
            first = await c.next_event(5)  # handing it over acknowledges it
            assert isinstance(first, p.DirectMessage) and first.id == sent.id
            await c.logout()
        async with harness.client() as c:
            assert (await c.login("dave", DEFAULT_PASSWORD)).pending == ()

    run(main())


def test_dm_and_password_never_appear_on_pub() -> None:
    secret_live = "live secret 7f3a"
    secret_stored = "stored secret 91bc"
    password = "pub must not see this pw"

    async def main(h: Harness) -> None:
        await register_only(h, "carol")
        async with raw_socket(zmq.SUB, h.broker.pub_endpoint) as spy:
            spy.setsockopt(zmq.SUBSCRIBE, b"")
            seen: list[list[bytes]] = []

            async def until(pred: Callable[[list[bytes]], bool]) -> None:
                while True:
                    assert await spy.poll(3000), f"PUB went quiet; seen {seen}"
                    frames = await spy.recv_multipart()
                    seen.append(frames)
                    if pred(frames):
                        return

            await until(lambda f: f[0] == p.TOPIC_TICK)  # the spy's subscription is live
            async with h.client("bob") as bob, h.client("alice") as alice:
                async with h.client() as dave:
                    await dave.register("dave", password)
                    await dave.login("dave", password)
                assert (await alice.dm("bob", secret_live)).delivered == "live"
                assert (await alice.dm("carol", secret_stored)).delivered == "stored"
                await collect(bob, lambda e: isinstance(e, p.DirectMessage))
                await alice.send("lobby", "after the dms")
                await until(lambda f: b"after the dms" in f[-1])
                await until(lambda f: f[0] == p.TOPIC_TICK)
        blob = b"\n".join(b"".join(f) for f in seen)
        assert b"after the dms" in blob and b'"dave"' in blob  # the spy saw everything
        for secret in (secret_live, secret_stored, password):
            assert secret.encode() not in blob

    with running_broker(heartbeat_interval_s=0.1, heartbeat_timeout_s=3.0) as h:
        run(main(h))


# -- presence and who ----------------------------------------------------------------------


def test_presence_online_away_offline_seen_by_another_client(harness: Harness) -> None:
    async def main() -> None:
        await register_only(harness, "alice")
        async with harness.client("bob") as bob, \
                harness.client("alice", register=False) as alice:
            await collect(bob, is_presence("alice", "online"))
            await alice.set_presence("away", "lunch")
            away = await collect(bob, is_presence("alice", "away"))
            assert away[-1].text == "lunch"  # type: ignore[union-attr]
            await alice.logout()
            rest = await collect(bob, is_presence("alice", "offline"))
            assert presences(away + rest, "alice") == ["away", "offline"]

    run(main())


def test_who_lists_room_members_and_online_accounts(harness: Harness) -> None:
    async def main() -> None:
        await register_only(harness, "carol")
        async with harness.client("alice") as alice, harness.client("bob") as bob:
            await alice.join("dev")
            await bob.join("dev")
            room = await alice.who("dev")
            assert [(u.name, u.presence) for u in room.users] == \
                [("alice", "online"), ("bob", "online")]
            await bob.set_presence("away", "brb")
            everyone = await alice.who()
            assert [(u.name, u.presence, u.text) for u in everyone.users] == \
                [("alice", "online", ""), ("bob", "away", "brb")]
            lobby = await alice.who("lobby")
            assert ("carol", "offline") in [(u.name, u.presence) for u in lobby.users]

    run(main())


# -- room topics and quit messages ---------------------------------------------------------


def test_topic_set_by_one_member_reaches_the_others(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("alice") as a, harness.client("bob") as b:
            await a.join("dev")
            await b.join("dev")
            await a.set_topic("dev", "ship it — Friday")
            assert a.topic("dev") == "ship it — Friday"
            events = await collect(b, lambda e: isinstance(e, p.TopicChanged))
            changed = events[-1]
            assert isinstance(changed, p.TopicChanged)
            assert (changed.room, changed.topic, changed.by) == ("dev", "ship it — Friday",
                                                                 "alice")
            assert b.topic("dev") == "ship it — Friday"
            async with harness.client("carol") as c:
                assert (await c.join("dev")).topic == "ship it — Friday"
                assert c.topic("dev") == "ship it — Friday"
                with pytest.raises(RequestFailed) as info:
                    await c.set_topic("lobby", "line one\nline two")
                assert info.value.status == 422
                with pytest.raises(RequestFailed) as info:
                    await c.set_topic("dev", "x" * (p.MAX_TOPIC_CHARS + 1))
                assert info.value.status == 413

    run(main())


def test_quit_message_is_seen_in_the_offline_event(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("watcher") as w:
            async with harness.client("alice") as a:
                await collect(w, is_presence("alice", "online"))
                await a.logout("gone fishing 🎣")
            events = await collect(w, is_presence("alice", "offline"))
            offline = events[-1]
            assert isinstance(offline, p.PresenceChanged) and offline.text == "gone fishing 🎣"

    run(main())


# -- gap repair ----------------------------------------------------------------------------


class GapScenario:
    """alice posts while bob's SUB is unsubscribed from #dev, so bob misses messages."""

    def __init__(self, alice: Client, bob: Client) -> None:
        self.alice, self.bob = alice, bob
        self.posted: list[tuple[int, str]] = []
        self.history_calls = 0
        original = bob.history

        async def counting(*args: Any, **kwargs: Any) -> p.HistoryPage:
            self.history_calls += 1
            return await original(*args, **kwargs)

        bob.history = counting  # type: ignore[method-assign]

    async def post(self, text: str) -> int:
        seq = (await self.alice.send("dev", text)).seq
        self.posted.append((seq, text))
        return seq

    async def miss_messages(self) -> list[p.MessagePosted]:
        """Unsubscribe bob, then post until one message is not delivered live, and two
        more. Returns what bob did receive live meanwhile (before the unsubscription took
        effect)."""
        assert self.bob._sub is not None
        self.bob._sub.setsockopt(zmq.UNSUBSCRIBE, p.room_topic("dev"))
        live = []
        for i in range(20):
            await self.post(f"while away {i}")
            got = await next_message(self.bob, 0.3)
            if got is None:
                break
            live.append(got)
        else:
            raise AssertionError("bob kept receiving #dev after UNSUBSCRIBE")
        await self.post("missed a")
        await self.post("missed b")
        return live


def test_missed_messages_are_backfilled_in_order_without_duplicates(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(session, "CATCH_UP_PINGS_S", (3600.0,))  # as below

    async def main(h: Harness) -> None:
        async with h.client("alice") as alice, h.client("bob") as bob:
            await alice.join("dev")
            await bob.join("dev")
            gap = GapScenario(alice, bob)
            await gap.post("before")
            received = msgs(await collect(bob, is_msg(1)))
            received += await gap.miss_messages()
            assert bob._sub is not None
            bob._sub.setsockopt(zmq.SUBSCRIBE, p.room_topic("dev"))
            # Post until bob hears #dev live again; the first one he hears reveals the gap.
            for i in range(20):
                await gap.post(f"after {i}")
                got = await next_message(bob, 0.5)
                if got is not None:
                    received.append(got)
                    break
            else:
                raise AssertionError("bob never heard #dev again after SUBSCRIBE")
            last = gap.posted[-1][0]
            if received[-1].seq != last:
                received += msgs(await collect(bob, is_msg(last)))
            received += [e for e in await drain(bob, 0.2) if isinstance(e, p.MessagePosted)]
            assert [(m.seq, m.text) for m in received] == gap.posted
            assert gap.history_calls >= 1  # the gap was filled from HISTORY

    # A long heartbeat, so that only the next live message can reveal the gap.
    with running_broker(heartbeat_interval_s=30.0, heartbeat_timeout_s=90.0) as h:
        run(main(h))


def test_ping_alone_repairs_a_gap(monkeypatch: pytest.MonkeyPatch) -> None:
    # No catch-up PINGs: on a busy machine the one 0.5 s after the join could repair the
    # gap before this test's own PING, which is what the test is about.
    monkeypatch.setattr(session, "CATCH_UP_PINGS_S", (3600.0,))

    async def main(h: Harness) -> None:
        async with h.client("alice") as alice, h.client("bob") as bob:
            await alice.join("dev")
            await bob.join("dev")
            gap = GapScenario(alice, bob)
            await gap.post("before")
            received = msgs(await collect(bob, is_msg(1)))
            received += await gap.miss_messages()
            assert bob.last_seq("dev") < gap.posted[-1][0]
            assert gap.history_calls == 0
            pong = await bob.ping()
            assert {r.room: r.last_seq for r in pong.rooms}["dev"] == gap.posted[-1][0]
            received += [e for e in await drain(bob, 0.2) if isinstance(e, p.MessagePosted)]
            assert [(m.seq, m.text) for m in received] == gap.posted
            assert bob.last_seq("dev") == gap.posted[-1][0]
            assert gap.history_calls >= 1

    with running_broker(heartbeat_interval_s=30.0, heartbeat_timeout_s=90.0) as h:
        run(main(h))


# -- heartbeats ------------------------------------------------------------------------------


def test_silent_session_is_evicted_with_exactly_one_offline_event() -> None:
    async def main(h: Harness) -> None:
        await register_only(h, "ghost")
        async with h.client("watcher") as watcher:
            async with raw_socket(zmq.DEALER, h.server) as ghost:
                await ghost.send_multipart(login_frames(b"1", "ghost"))
                assert await ghost.poll(5000)
                reply = await ghost.recv_multipart()
                assert reply[:3] == [p.VERSION, b"1", b"OK"]
                # The ghost now says nothing at all.
                events = await collect(watcher, is_presence("ghost", "offline"), timeout_s=3)
                events += await drain(watcher, 0.8)
            assert presences(events, "ghost") == ["online", "offline"]
            assert "ghost" not in [u.name for u in (await watcher.who()).users]

    with running_broker(**FAST_BEATS) as h:
        run(main(h))


def test_live_client_that_pings_is_not_evicted() -> None:
    async def main(h: Harness) -> None:
        async with h.client("watcher") as watcher, h.client("live") as live:
            await collect(watcher, is_presence("live", "online"))
            events = await drain(watcher, 1.2)  # four heartbeat timeouts
            assert presences(events, "live") == []
            assert live.connected
            assert ("live", "online") in [(u.name, u.presence)
                                          for u in (await watcher.who()).users]

    with running_broker(**FAST_BEATS) as h:
        run(main(h))


def test_client_reports_connection_lost_when_the_broker_stops() -> None:
    cm = running_broker(**FAST_BEATS)
    h = cm.__enter__()
    stopped = False

    async def main() -> None:
        nonlocal stopped
        client = h.new_client(timeout_s=0.5)
        async with client:
            await client.register("alice", DEFAULT_PASSWORD)
            await client.login("alice", DEFAULT_PASSWORD)
            assert client.connected
            await asyncio.to_thread(cm.__exit__, None, None, None)
            stopped = True
            events = await collect(client, lambda e: isinstance(e, ConnectionLost),
                                   timeout_s=3)
            lost = events[-1]
            assert isinstance(lost, ConnectionLost)
            assert lost.silent_s > FAST_BEATS["heartbeat_timeout_s"]
            assert not client.connected

    try:
        run(main())
    finally:
        if not stopped:
            cm.__exit__(None, None, None)


# -- malformed input over real sockets -----------------------------------------------------

SEND_BODY = p.encode_body(p.Send(room="dev", text="must not be posted"))
V = p.VERSION

BAD_REQUESTS = {
    # name: (frames after login, expected status, expected echoed request id)
    "one frame": ([V], 400, None),
    "three frames": ([V, b"r3", b"SEND"], 400, b"r3"),
    "five frames": ([V, b"r5", b"SEND", SEND_BODY, b"extra"], 400, b"r5"),
    "request id too long": ([V, b"x" * 40, b"SEND", SEND_BODY], 400, b"x" * 32),
    "wrong version": ([b"ZC9", b"rv", b"SEND", SEND_BODY], 426, b"rv"),
    "undecodable body": ([V, b"ru", b"SEND", b"\xff\xfe"], 400, b"ru"),
    "invalid utf-8 in a string": ([V, b"ri", b"SEND", b'{"room":"dev","text":"\xc3("}'],
                                  400, b"ri"),
    "lone surrogate escape": ([V, b"rs", b"SEND", b'{"room":"dev","text":"\\ud800"}'],
                              400, b"rs"),
    "not json": ([V, b"rj", b"SEND", b"{room: dev}"], 400, b"rj"),
    "json array": ([V, b"ra", b"SEND", b'["dev", "text"]'], 400, b"ra"),
    "unknown type": ([V, b"rt", b"SHOUT", SEND_BODY], 405, b"rt"),
    "missing field": ([V, b"rm", b"SEND", b'{"room":"dev"}'], 400, b"rm"),
    "unknown field": ([V, b"rf", b"SEND", b'{"room":"dev","text":"x","to":"bob"}'],
                      400, b"rf"),
    "mistyped field": ([V, b"rw", b"SEND", b'{"room":"dev","text":42}'], 400, b"rw"),
    "oversized body": ([V, b"ro", b"SEND",
                        json.dumps({"room": "dev", "text": "x" * 70 * 1024}).encode()],
                       413, b"ro"),
}


def setup_room(h: Harness) -> None:
    """alice (registered) posts message 1 in #dev."""
    async def main() -> None:
        async with h.client("alice") as a:
            await a.join("dev")
            assert (await a.send("dev", "message one")).seq == 1
            await a.logout()

    run(main())


def assert_broker_still_serves(h: Harness, expected_last_seq: int = 1) -> None:
    """A new client registers, logs in, finds #dev unchanged and posts the next message."""
    async def main() -> None:
        async with h.client("newcomer") as c:
            assert (await c.join("dev")).last_seq == expected_last_seq
            assert (await c.send("dev", "still here")).seq == expected_last_seq + 1
            page = await c.history("dev")
            assert "must not be posted" not in [m.text for m in page.messages]

    run(main())


def error_of(reply: list[bytes]) -> p.Error:
    assert len(reply) == 4 and reply[0] == p.VERSION and reply[2] == b"ERROR", reply
    error: p.Error = p.decode_body(p.Error, reply[3])
    return error


@pytest.mark.parametrize("case", list(BAD_REQUESTS))
def test_malformed_request_gets_error_and_broker_keeps_serving(
        harness: Harness, case: str) -> None:
    frames, status, request_id = BAD_REQUESTS[case]
    setup_room(harness)
    with sync_dealer(harness.server) as d:
        d.send_multipart(login_frames(b"login", "alice"))
        assert recv_reply(d)[:3] == [V, b"login", b"OK"]
        d.send_multipart(frames)
        reply = recv_reply(d)
        error = error_of(reply)
        assert error.status == status, error
        if request_id is None:  # no request id could be read
            assert reply[1] in (b"", b"?")
        else:
            assert reply[1] == request_id
        assert error.reason
        # The same connection still works afterwards.
        d.send_multipart(p.encode_request(b"ok", p.Ping()))
        assert recv_reply(d)[:3] == [V, b"ok", b"OK"]
    assert_broker_still_serves(harness)


def test_request_before_login_is_refused_with_401(harness: Harness) -> None:
    setup_room(harness)
    with sync_dealer(harness.server) as d:
        d.send_multipart([V, b"early", b"SEND", SEND_BODY])
        reply = recv_reply(d)
        assert reply[1] == b"early"
        assert error_of(reply).status == 401
    assert_broker_still_serves(harness)


def test_frame_over_transport_limit_drops_only_that_connection() -> None:
    # Plain: the raw DEALER speaks the codec without CURVE (tests/test_curve.py has it).
    with running_broker(router="tcp://127.0.0.1:0", pub="tcp://127.0.0.1:0",
                        encryption="none") as h:
        setup_room(h)
        with sync_dealer(h.server) as d:
            monitor = d.get_monitor_socket(zmq.EVENT_CONNECTED | zmq.EVENT_DISCONNECTED)
            try:
                d.send_multipart(login_frames(b"login", "alice"))
                assert recv_reply(d)[:3] == [V, b"login", b"OK"]
                body = json.dumps({"room": "dev", "text": "y" * (p.MAX_TRANSPORT_FRAME_BYTES + 1)})
                d.send_multipart([V, b"big", b"SEND", body.encode()])
                while True:  # wait for libzmq to report the dropped connection
                    assert monitor.poll(5000), "the oversized frame did not drop the link"
                    if recv_monitor_message(monitor)["event"] == zmq.EVENT_DISCONNECTED:
                        break
                assert d.poll(0) == 0  # the broker never answered the oversized request
            finally:
                d.disable_monitor()
                monitor.close(linger=0)
        assert_broker_still_serves(h)


def test_peer_that_disconnects_before_its_reply_does_not_kill_the_broker(
        harness: Harness) -> None:
    async def main() -> None:
        await register_only(harness, "ghost")
        async with harness.client("watcher") as watcher:
            with sync_dealer(harness.server) as d:
                d.send_multipart(login_frames(b"1", "ghost"))
            # The login completes (presence goes online) but its reply has nowhere to go.
            await collect(watcher, is_presence("ghost", "online"))
            await watcher.join("dev")
            assert (await watcher.send("dev", "alive")).seq == 1

    run(main())
    assert harness.broker._stopping.is_set() is False


def test_text_over_the_transport_limit_is_refused_by_the_client_and_the_session_lives(
        harness: Harness) -> None:
    """A body over MAXMSGSIZE would make libzmq drop the connection without an answer; the
    client refuses it itself with the broker's 413, and the next message goes through."""
    async def main() -> None:
        async with harness.client("carol") as c:
            for size in (140_000, 4001):
                with pytest.raises(RequestFailed) as info:
                    await c.send("lobby", "x" * size)
                assert info.value.status == Status.TOO_LARGE
                assert f"message text is {size} bytes; the limit is 4000" in info.value.reason
            assert (await c.send("lobby", "still here")).seq == 1

    run(main())


def test_a_text_over_max_text_lines_is_refused_by_client_and_broker(harness: Harness) -> None:
    """Issue 13: the broker announces ``max_text_lines`` in INFO; the client refuses a
    longer SEND or DM itself with the broker's 413, and a client that does not know the
    limit (an older one: no such field) is refused by the broker the same way."""
    async def main() -> None:
        async with harness.client("carol") as c, harness.client("dave"):
            assert c.info is not None and c.info.max_text_lines == 50
            wall = "\n" * 1999 + "x"
            for call in (lambda: c.send("lobby", wall), lambda: c.dm("dave", wall)):
                with pytest.raises(RequestFailed) as info:
                    await call()
                assert info.value.status == Status.TOO_LARGE
                assert info.value.reason == "message text is 2000 lines; the limit is 50"
            c.info = msgspec.structs.replace(c.info, max_text_lines=0)  # as from an old broker
            for call in (lambda: c.send("lobby", "x\n" * 50), lambda: c.dm("dave", wall)):
                with pytest.raises(RequestFailed) as info:
                    await call()
                assert info.value.status == Status.TOO_LARGE
                assert "lines; the limit is 50" in info.value.reason
            assert (await c.send("lobby", "one\ntwo")).seq == 1

    run(main())


def test_a_second_connect_opens_nothing_more(harness: Harness) -> None:
    """``connect()`` on a client already connected (as inside ``async with Client(...)``)
    returns the INFO it has: it once opened a second DEALER and heartbeat task each time
    and never closed the first, so a tester's harness used up the 256 connections its
    address may hold."""
    async def main() -> None:
        async with harness.client("alice") as alice:
            dealer, supervisor, info = alice._dealer, alice._supervisor, alice.info
            assert await alice.connect() is info
            assert (alice._dealer, alice._supervisor) == (dealer, supervisor)
            assert (await alice.ping()).rooms is not None  # still served on the first
    run(main())
