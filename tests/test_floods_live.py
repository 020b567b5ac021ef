"""Floods against a real ``zchat broker`` over loopback TCP (issue 14 items 3-5,
docs/PROTOCOL.md §15): one attacker runs the attack, scaled down to a few seconds, and a
second, honest client from another loopback address must keep being served.

Bounds (generous, for a loaded 2-core machine): an honest LOGIN is answered within
HONEST_LOGIN_S while the attacker keeps the password-job pool busy; an honest PING round
trip takes under HONEST_PING_S at any point of a flood.

Raw DEALER sockets speak the codec (plain transport; encryption is proved in
tests/test_curve.py). All peers are on 127.0.0.0/8, whose every address is loopback on
Linux: the attacker connects from 127.0.0.1, the honest client from 127.0.0.2, so that
the broker sees two addresses. Nothing sleeps: replies are awaited with deadlines.
"""

from __future__ import annotations

import contextlib
import itertools
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import start_broker

from zchat import wire as p
from zchat.errors import Status
from zchat.testing import DEFAULT_PASSWORD

#: An honest LOGIN must be answered within this while a flood of password jobs runs
#: (with the fix it waits for at most a few hashes, ~0.05 s each here; unfixed, for
#: hundreds of them).
HONEST_LOGIN_S = 3.0
#: An honest PING round trip (the loop itself is never blocked by a flood).
HONEST_PING_S = 1.0

_rids = itertools.count(1)


class Peer:
    """A DEALER from a chosen loopback source address, speaking the codec directly."""

    def __init__(self, ctx: zmq.Context[Any], port: int, source: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(f"tcp://{source}:0;127.0.0.1:{port}")
        #: Replies to other requests read while waiting for one: request id -> value.
        self.others: dict[bytes, Any] = {}

    def send(self, req: p.Request) -> bytes:
        rid = f"q{next(_rids)}".encode()
        self.sock.send_multipart(p.encode_request(rid, req))
        return rid

    def wait(self, rid: bytes, reply_type: type[p.Reply], timeout_s: float = 10.0) -> Any:
        """The reply to ``rid``; other replies read meanwhile go to ``others``, pushes
        are dropped."""
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            if not self.sock.poll(int(left * 1000) + 1):
                break
            got, value = p.decode_from_broker(self.sock.recv_multipart(), {rid: reply_type})
            if got == rid:
                return value
            if got:
                self.others[got] = value
        raise AssertionError(f"no reply to {rid!r} within {timeout_s:g} s")

    def call(self, req: p.Request, timeout_s: float = 10.0) -> Any:
        return self.wait(self.send(req), type(req).REPLY, timeout_s)

    def timed(self, req: p.Request, timeout_s: float) -> tuple[Any, float]:
        started = time.monotonic()
        value = self.call(req, timeout_s)
        return value, time.monotonic() - started

    def close(self) -> None:
        self.sock.close(linger=0)


@contextlib.contextmanager
def tcp_broker(tmp_path: Path, settings: str) -> Iterator[tuple[int, int]]:
    """``zchat broker`` on 127.0.0.1 (plain transport) with ``settings`` added to its
    ``[broker]`` table; yields the ROUTER's and the PUB's ports. Terminated at the end."""
    broker, lines = start_broker(tmp_path, settings='encryption = "none"\n' + settings)
    proc, port = broker.process, int(broker.router.rpartition(":")[2])
    pub = int(next(ln for ln in lines if ln.strip().startswith("pub")).rpartition(":")[2])
    try:
        yield port, pub
    finally:
        proc.popen.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def peers() -> Iterator[list[Peer]]:
    """Every Peer a test makes goes in this list, and is closed at the end."""
    made: list[Peer] = []
    yield made
    for peer in made:
        peer.close()


def connect(peers: list[Peer], port: int, source: str) -> Peer:
    peer = Peer(zmq.Context.instance(), port, source)
    peers.append(peer)
    return peer


def log_in(peer: Peer, name: str, register: bool = True) -> p.LoggedIn:
    if register:
        assert isinstance(peer.call(p.Register(name=name, password=DEFAULT_PASSWORD)),
                          p.Registered)
    logged = peer.call(p.Login(name=name, password=DEFAULT_PASSWORD))
    assert isinstance(logged, p.LoggedIn), logged
    return logged


# -- item 3: password jobs --------------------------------------------------------------------


def test_password_changes_from_one_address_do_not_keep_honest_logins_waiting(
        tmp_path: Path, peers: list[Peer]) -> None:
    """A tester kept the hash pool ~1,000 jobs deep with SET_PASSWORD from one address
    (a fresh bucket per connection) and six honest LOGINs from other addresses went
    unanswered for over 8 s. Scaled down: one hashing thread, real hashing cost
    (Argon2id at OWASP's 19 MiB, t=2), 8 sessions of one account each pipelining 30
    SET_PASSWORD."""
    shipped = "argon2_memory_kib = 19456\nargon2_time_cost = 2\nhash_workers = 1\n"
    with tcp_broker(tmp_path, shipped) as (port, _pub):
        honest = connect(peers, port, "127.0.0.2")
        log_in(honest, "alice")
        assert isinstance(honest.call(p.Logout()), p.Ok)
        first = connect(peers, port, "127.0.0.1")
        log_in(first, "mallory")
        sessions = [first] + [connect(peers, port, "127.0.0.1") for _ in range(7)]
        for peer in sessions[1:]:
            log_in(peer, "mallory", register=False)
        pings, guesses = [], []
        for peer in sessions:
            guesses.append([peer.send(p.SetPassword(old=f"guess {i}",
                                                    new="a brand new passphrase"))
                            for i in range(30)])
            pings.append(peer.send(p.Ping()))
        for peer, rid in zip(sessions, pings, strict=True):  # every guess was read
            assert isinstance(peer.wait(rid, p.Pong), p.Pong)
        pong, took = honest.timed(p.Ping(), HONEST_PING_S + 5)
        assert isinstance(pong, p.Pong) and took < HONEST_PING_S, took
        logged, took = honest.timed(p.Login(name="alice", password=DEFAULT_PASSWORD),
                                    HONEST_LOGIN_S + 10)
        assert isinstance(logged, p.LoggedIn), logged
        assert took < HONEST_LOGIN_S, f"an honest LOGIN waited {took:.1f} s"
        # Every guess was answered: at most the address's burst (30 tokens, 9 spent on
        # REGISTER and the LOGINs) were checked (401); the rest were refused with 429,
        # most for the jobs in flight.
        statuses = []
        for peer, rids in zip(sessions, guesses, strict=True):
            for rid in rids:
                reply = peer.others.get(rid) or peer.wait(rid, p.Ok)
                assert isinstance(reply, p.Error), reply
                statuses.append(reply.status)
        assert set(statuses) == {Status.UNAUTHORIZED, Status.TOO_MANY_REQUESTS}
        assert statuses.count(Status.UNAUTHORIZED) <= 21, statuses


def assert_served(honest: Peer) -> None:
    pong, took = honest.timed(p.Ping(), HONEST_PING_S + 5)
    assert isinstance(pong, p.Pong) and took < HONEST_PING_S, f"a PING took {took:.2f} s"


# -- item 4: presence ----------------------------------------------------------------------------


def test_a_presence_flood_reaches_nobody_beyond_the_burst(tmp_path: Path,
                                                         peers: list[Peer]) -> None:
    """A tester's 20,000 presence changes in 1.5 s reached every client. Scaled down:
    2,000 pipelined changes; a subscriber to presence hears at most the burst (10)."""
    with tcp_broker(tmp_path, "argon2_memory_kib = 1024\nargon2_time_cost = 1\n") as (port, pub), \
            zmq.Context.instance().socket(zmq.SUB) as sub:
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.SUBSCRIBE, p.TOPIC_PRESENCE_PREFIX)
        sub.connect(f"tcp://127.0.0.1:{pub}")
        honest = connect(peers, port, "127.0.0.2")
        log_in(honest, "alice")
        for i in itertools.count():  # until the subscription is in place: no sleep
            assert i < 500, "the subscriber never heard a presence event"
            state = "away" if i % 2 == 0 else "online"
            assert isinstance(honest.call(p.SetPresence(presence=state)), p.Ok)
            if sub.poll(20):
                break
        attacker = connect(peers, port, "127.0.0.1")
        log_in(attacker, "mallory")
        for i in range(2000):
            attacker.send(p.SetPresence(presence="away", text=f"spam {i}") if i % 2 == 0
                          else p.SetPresence(presence="online"))
        assert isinstance(attacker.call(p.Ping()), p.Pong)   # every change was read
        assert_served(honest)
        marker = honest.call(p.SetPresence(presence="away", text="the end"))
        assert isinstance(marker, p.Ok)
        heard = 0
        while True:  # PUB keeps order: alice's "the end" comes after mallory's events
            assert sub.poll(10_000), "no presence event within 10 s"
            topic, *frames = sub.recv_multipart()
            event = p.decode_event([topic, *frames])
            assert isinstance(event, p.PresenceChanged)
            if event.name == "mallory":
                heard += 1
            elif event.text == "the end":
                break
        assert 1 <= heard <= 12, heard   # login's online + the burst of 10 (+ a refill)
        refused = attacker.call(p.SetPresence(presence="away", text="more"))
        assert isinstance(refused, p.Error) and refused.status == Status.TOO_MANY_REQUESTS


# -- item 5: sending and room creation per account -----------------------------------------------


def test_many_sessions_of_one_account_store_no_more_than_one_burst(
        tmp_path: Path, peers: list[Peer]) -> None:
    """A tester's account stored 519 × 4 KB messages in 0.2 s and created 217 rooms a
    second, with a fresh send burst per LOGIN. Scaled down: 20 sessions each pipelining
    10 SENDs of 4,000 bytes and 10 JOINs of new rooms."""
    with tcp_broker(tmp_path, "argon2_memory_kib = 1024\nargon2_time_cost = 1\n") as (port, _pub):
        honest = connect(peers, port, "127.0.0.2")
        log_in(honest, "alice")
        sessions = [connect(peers, port, "127.0.0.1") for _ in range(20)]
        log_in(sessions[0], "mallory")
        for peer in sessions[1:]:
            log_in(peer, "mallory", register=False)
        pings = []
        for n, peer in enumerate(sessions):
            for i in range(10):
                peer.send(p.Send(room="lobby", text=f"{n}.{i} " + "x" * 3990))
                peer.send(p.Join(room=f"m{n}x{i}"))
            pings.append(peer.send(p.Ping()))
        for peer, rid in zip(sessions, pings, strict=True):
            assert isinstance(peer.wait(rid, p.Pong), p.Pong)
        assert_served(honest)
        page = honest.call(p.FetchHistory(room="lobby", limit=p.MAX_HISTORY_LIMIT))
        assert isinstance(page, p.HistoryPage)
        stored = [m for m in page.messages if m.sender == "mallory"]
        rooms = honest.call(p.ListRooms())
        assert isinstance(rooms, p.RoomList)
        created = [r for r in rooms.rooms if r.room.startswith("m")]
        # the account's sending bucket (40, SEND and JOIN of new rooms together) and its
        # room-creation bucket (10), plus a token or two refilled meanwhile
        assert len(stored) + len(created) <= 44, (len(stored), len(created))
        assert len(created) <= 11, len(created)
        assert honest.call(p.Send(room="lobby", text="still served")).seq > 0
