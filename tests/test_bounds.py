"""Bounds found by testers breaking issue 5 (docs/PROTOCOL.md §9, §15): a JOIN flood and a
message of very many frames must neither grow the broker without bound nor stop it
serving the others."""

from __future__ import annotations

import asyncio

import pytest
import zmq
from conftest import run
from core_helpers import World

from zchat import wire as p
from zchat.errors import Status
from zchat.testing import DEFAULT_PASSWORD, Harness, running_broker


def test_join_takes_a_token_of_the_sending_bucket() -> None:
    world = World(send_rate_per_s=1.0, send_burst=3)
    alice = world.user("alice")
    for i in range(3):
        alice.must(p.Join(room=f"r{i}"))
    out = alice.call(p.Join(room="r3"))
    assert out.status == Status.TOO_MANY_REQUESTS
    assert isinstance(out.reply, p.Error) and out.reply.retry_after_ms == 1000
    assert "r3" not in world.core.rooms  # refused: nothing created
    alice.must(p.Join(room="r0"))  # already a member: costs nothing, changes nothing
    world.clock.jump(1.0)
    assert alice.must(p.Join(room="r3")).created


def test_an_account_is_in_at_most_max_rooms(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(p, "MAX_ROOMS_PER_ACCOUNT", 5)
    world = World(send_rate_per_s=0.0)
    alice = world.user("alice")  # in lobby already
    for i in range(4):
        alice.must(p.Join(room=f"r{i}"))
    out = alice.call(p.Join(room="one-too-many"))
    assert out.status == Status.FORBIDDEN
    assert isinstance(out.reply, p.Error) and "PART one first" in out.reply.reason
    assert "one-too-many" not in world.core.rooms
    alice.must(p.Join(room="r1"))  # rejoining one she is in is fine
    alice.must(p.Part(room="r1"))
    assert alice.must(p.Join(room="one-too-many")).created


def test_a_message_of_very_many_frames_is_refused_and_the_broker_serves_on() -> None:
    """libzmq bounds a frame's size, not the number of frames. The broker reads such a
    message frame by frame, keeping none beyond the five a request has, answers 400 with
    the count, and then serves the next request."""
    frames = 200_000

    async def main(server: str, context: zmq.Context[zmq.Socket[bytes]]) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(server)
        try:
            sock.send_multipart([p.VERSION, b"many", b"PING"] + [b""] * frames)
            assert sock.poll(20_000), "no answer to the many-frame message"
            reply = sock.recv_multipart()
            assert reply[:3] == [p.VERSION, b"many", b"ERROR"]
            error = p.decode_body(p.Error, reply[3])
            assert error.status == Status.BAD_REQUEST
            assert error.reason == f"a request has 4 frames, got {frames + 3}"
            sock.send_multipart(p.encode_request(b"next", p.Ping()))
            assert sock.poll(5_000), "no answer to the PING after it"
            assert sock.recv_multipart()[:3] == [p.VERSION, b"next", b"OK"]
        finally:
            sock.close(linger=0)

    with running_broker() as h:
        run(main(h.server, h.context), timeout_s=60)


def test_a_crowd_logging_in_from_one_address_all_get_in_at_the_login_rate() -> None:
    """Twenty clients from one address against a burst of 3 and 5 logins a second: every
    refused one is told about the same wait, and without jitter they would come back
    together and mostly give up (a tester's 45 logins behind one address: 6 failed)."""
    crowd = 20

    async def main(h: Harness) -> None:
        async with h.client() as admin:
            for i in range(crowd):
                await admin.register(f"pupil{i}", DEFAULT_PASSWORD)
        clients = [h.new_client() for _ in range(crowd)]
        try:
            for c in clients:
                await c.connect()
            replies = await asyncio.gather(*(c.login(f"pupil{i}", DEFAULT_PASSWORD)
                                             for i, c in enumerate(clients)))
            assert sorted(r.name for r in replies) == sorted(f"pupil{i}" for i in range(crowd))
        finally:
            for c in clients:
                await c.close()

    # tcp, so that every client has the same address (inproc peers are keyed per connection)
    with running_broker(router="tcp://127.0.0.1:0", pub="tcp://127.0.0.1:0",
                        encryption="none", login_rate_per_s=5.0, login_burst=3) as h:
        run(main(h), timeout_s=60)


def test_the_brokers_own_stall_is_not_the_clients_silence() -> None:
    world = World(heartbeat_interval_s=2.0, heartbeat_timeout_s=6.0)
    world.user("alice")
    bob = world.user("bob")
    world.clock.jump(5.0)
    bob.must(p.Ping())                     # bob's heartbeat got through; alice's waited
    world.clock.jump(4.0)                  # the loop was stuck for these 4 s
    world.core.credit_stall(4.0, world.clock.s)
    assert "offline" not in [e.presence for _t, e in world.tick()
                             if isinstance(e, p.PresenceChanged)]
    assert len(world.core.sessions) == 2
    world.clock.jump(3.0)                  # then alice really is silent
    gone = [e.name for _t, e in world.tick() if isinstance(e, p.PresenceChanged)]
    assert gone == ["alice"]


def test_a_many_frame_message_does_not_evict_the_others() -> None:
    """A message of 300,000 frames keeps the loop busy for longer than the heartbeat
    timeout here; the sessions whose heartbeats waited behind it stay, and an observer sees
    no presence change."""
    async def main(h: Harness) -> None:
        async with h.client("watcher") as watcher, h.client("bystander"):
            while await watcher.next_event(0.3) is not None:
                pass  # bystander's arrival
            def attack() -> bytes:  # in a thread: the clients' event loop keeps beating
                sock = zmq.Context.instance().socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.connect(h.server)
                try:
                    sock.send_multipart([p.VERSION, b"many", b"PING"] + [b""] * 300_000)
                    assert sock.poll(30_000)
                    return sock.recv_multipart()[2]
                finally:
                    sock.close(linger=0)

            assert await asyncio.to_thread(attack) == b"ERROR"
            events = []
            while (event := await watcher.next_event(0.5)) is not None:
                events.append(event)
            assert not [e for e in events if isinstance(e, p.PresenceChanged)
                        and e.name == "bystander"], events

    with running_broker(heartbeat_interval_s=0.1, heartbeat_timeout_s=0.3) as h:
        run(main(h), timeout_s=60)


def test_what_any_peer_can_cause_at_will_is_logged_once_per_interval(
        caplog: pytest.LogCaptureFixture) -> None:
    """A peer that never reads its replies makes the broker drop them at its queue's
    high-water mark; each drop used to be a log line, so an anonymous PING flood wrote
    tens of megabytes of log. One line per LOG_EVERY_S now, counting the rest."""
    pings = 3_000

    async def main(server: str) -> None:
        sock = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.RCVHWM, 1)
        sock.connect(server)
        try:
            for i in range(pings):  # never reads a reply
                sock.send_multipart(p.encode_request(str(i).encode(), p.Ping()))
            async with h.client("other") as other:  # served meanwhile
                await other.ping()
        finally:
            sock.close(linger=0)

    with running_broker(sndhwm=1) as h, caplog.at_level("WARNING", logger="zchat.broker"):
        run(main(h.server), timeout_s=60)
    dropped = [r.getMessage() for r in caplog.records if "dropped a reply" in r.getMessage()]
    assert 1 <= len(dropped) <= 2, dropped


def test_throttled_log_sums_up_what_it_held_back(caplog: pytest.LogCaptureFixture) -> None:
    from zchat.ratelimit import ThrottledLog

    throttled = ThrottledLog(30, "dropped a reply", every_s=10.0)
    with caplog.at_level("WARNING", logger="zchat.broker"):
        for i, now in enumerate([0.0, 1.0, 2.0, 9.9, 10.0, 10.5, 25.0]):
            throttled(f"to peer{i}", now)
    assert [r.getMessage() for r in caplog.records] == [
        "dropped a reply: to peer0",
        "dropped a reply: to peer4 (and 3 more like it in the last 10 s)",
        "dropped a reply: to peer6 (and 1 more like it in the last 10 s)"]
