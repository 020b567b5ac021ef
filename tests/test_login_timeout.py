"""A ROUTER connection that holds no session ``login_timeout_s`` after it was made is cut
(docs/PROTOCOL.md §15.3, issue 14): a tester's 700 CURVE connections that finished their
handshake and never logged in held every place of a broker (``max_connections`` 600)
for as long as they liked, and no newcomer got in. IRC servers time out an unregistered
connection the same way.

``zchat broker`` as a subprocess on loopback tcp with CURVE and ``login_timeout_s = 2``:
an idle DEALER (its handshake done, no request), one that asked INFO only, and one that
logged in. The first two are reset by the broker (their monitors see the disconnect);
the logged-in one is still served after twice the timeout. Every wait is on a condition
with a deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import TcpBroker, running_tcp_broker, wait_until
from subscriber_helpers import broker_key
from zmq.utils.monitor import parse_monitor_message

from zchat import wire as p
from zchat.testing import DEFAULT_PASSWORD

TIMEOUT_S = 2.0


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TcpBroker]:
    with running_tcp_broker(tmp_path, f"login_timeout_s = {TIMEOUT_S}\n") as b:
        yield b


class Peer:
    """A CURVE DEALER with a monitor that records when its connection was dropped."""

    def __init__(self, ctx: zmq.Context[Any], broker: TcpBroker, key: bytes) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        public, secret = zmq.curve_keypair()
        self.sock.curve_serverkey, self.sock.curve_publickey, self.sock.curve_secretkey = \
            key, public, secret
        self.monitor = self.sock.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_DISCONNECTED)
        self.events: list[int] = []
        self.sock.connect(broker.router)

    def seen(self, event: int) -> bool:
        while self.monitor.poll(0):
            self.events.append(parse_monitor_message(self.monitor.recv_multipart())["event"])
        return event in self.events

    def call(self, rid: bytes, req: p.Request) -> list[bytes]:
        self.sock.send_multipart(p.encode_request(rid, req))
        assert self.sock.poll(10_000), f"no reply to {req.TYPE}"
        return self.sock.recv_multipart()

    def close(self) -> None:
        self.sock.disable_monitor()
        self.monitor.close(linger=0)
        self.sock.close(linger=0)


def test_connections_without_a_session_are_cut_after_the_login_timeout(
        tmp_path: Path, broker: TcpBroker, ctx: zmq.Context[Any]) -> None:
    key = broker_key(tmp_path, broker)
    peers = [Peer(ctx, broker, key) for _ in range(3)]
    idle, info_only, member = peers
    try:
        wait_until(lambda: all(peer.seen(zmq.EVENT_HANDSHAKE_SUCCEEDED) for peer in peers),
                   timeout_s=10, what="three handshakes")
        started = time.monotonic()
        assert info_only.call(b"i", p.Info())[2] == b"OK"
        member.call(b"r", p.Register(name="ann", password=DEFAULT_PASSWORD))
        assert member.call(b"l", p.Login(name="ann", password=DEFAULT_PASSWORD))[2] == b"OK"
        wait_until(lambda: idle.seen(zmq.EVENT_DISCONNECTED)
                   and info_only.seen(zmq.EVENT_DISCONNECTED),
                   timeout_s=TIMEOUT_S + 10, what="the broker to cut both")
        assert time.monotonic() - started >= TIMEOUT_S - 0.5  # not before the timeout
        wait_until(lambda: time.monotonic() - started > 2 * TIMEOUT_S, timeout_s=10,
                   what="twice the timeout")
        assert member.call(b"p", p.Ping())[2] == b"OK"
        assert not member.seen(zmq.EVENT_DISCONNECTED)
    finally:
        for peer in peers:
            peer.close()
    assert any("no session" in line for line in broker.process.stderr), \
        broker.process.stderr[-5:]
