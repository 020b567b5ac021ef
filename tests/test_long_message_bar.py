"""A message of many frames to the ROUTER cannot be repeated (issue 14 item 7,
docs/PROTOCOL.md §9, §15.3): libzmq takes such a message whole before the broker sees it
and reading it costs the loop ~1 µs a frame, so the broker cannot refuse the first one
cheaply; it cuts that connection and admits no new one from the sender's address for
LONG_MESSAGE_BAR_S. A real ``zchat broker`` subprocess (CurveZMQ on loopback tcp); the
attacker connects from 127.0.0.3 (all of 127/8 is loopback on Linux), an honest client
PINGs from 127.0.0.1 throughout and another connects from 127.0.0.4 afterwards.

Bounds, and why: the honest worst PING under 1.5 s (the message of 50,000 frames costs
the loop well under that; the bound is loose for a loaded 2-core machine)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import TcpBroker, start_broker, stop_broker, wait_until
from floods import Pinger, curve_dealer, flood_curve

from zchat import wire as p
from zchat.broker.connections import LONG_MESSAGE_FRAMES, ConnectionTable, Limits
from zchat.testing import free_port, running_broker

WORST_RTT_S = 1.5


def test_a_barred_address_is_refused_until_its_bar_lapses() -> None:
    table = ConnectionTable(Limits(100, 10, 10))
    table.bar("10.0.0.3", until_s=60.0, now_s=0.0)
    why = table.admit("c1", "10.0.0.3", now_s=59.9)
    assert why is not None and "frames" in why
    assert table.admit("c2", "10.0.0.4", now_s=59.9) is None
    assert table.admit("c3", "10.0.0.3", now_s=60.0) is None
    assert table.total == 2


@pytest.fixture
def curve_broker(tmp_path: Path) -> Iterator[tuple[TcpBroker, bytes]]:
    broker, lines = start_broker(tmp_path)
    try:
        yield broker, next(ln for ln in lines if "public key:" in ln).split()[-1].encode()
    finally:
        if broker.process.popen.poll() is None:
            rc, _ = stop_broker(broker)
            assert rc == 0, broker.process.stderr


def pong_within(sock: zmq.Socket[Any], timeout_s: float) -> bool:
    sock.send_multipart(p.encode_request(b"x", p.Ping()), zmq.NOBLOCK)
    return bool(sock.poll(int(timeout_s * 1000)))


def test_a_many_frame_message_cuts_its_connection_and_bars_its_address(
        curve_broker: tuple[TcpBroker, bytes]) -> None:
    broker, server_key = curve_broker
    port = broker.router.rpartition(":")[2]
    ctx = zmq.Context()
    socks: list[zmq.Socket[Any]] = []
    try:
        with Pinger(ctx, broker.router, server_key) as honest:
            attacker = flood_curve(ctx, f"tcp://127.0.0.3:0;127.0.0.1:{port}", server_key,
                                   LONG_MESSAGE_FRAMES * 50)
            socks.append(attacker)
            line = broker.process.wait_line("stderr", "cut a connection", timeout_s=30)
            assert "127.0.0.3" in line
            # the same address again: refused at once, never served
            again = curve_dealer(ctx, f"tcp://127.0.0.3:0;127.0.0.1:{port}", server_key)
            socks.append(again)
            assert not pong_within(again, 1.0)
            # another address is served as ever
            other = curve_dealer(ctx, f"tcp://127.0.0.4:0;127.0.0.1:{port}", server_key)
            socks.append(other)
            assert pong_within(other, 10.0)
        assert honest.error is None, honest.error
        assert honest.worst < WORST_RTT_S, f"an honest PING waited {honest.worst:.2f} s"
    finally:
        for sock in socks:
            sock.close(linger=0)
        ctx.term()


def test_a_connection_admitted_before_its_address_was_barred_is_not_served() -> None:
    """The guard refuses a barred address's connections when libzmq reports them
    accepted, in its own thread; a connection it admitted first (or one whose CURVE
    handshake and PING beat it: a clean-clone CI run saw a barred address answered) is
    cut by the loop at its first request, which is not served."""
    router = f"tcp://127.0.0.1:{free_port()}"
    with running_broker(router=router, pub=f"tcp://127.0.0.1:{free_port()}",
                        encryption="none") as harness:
        guard = harness.broker.connections
        assert guard is not None
        ctx = zmq.Context()
        try:
            early = ctx.socket(zmq.DEALER)
            early.setsockopt(zmq.LINGER, 0)
            early.connect(f"tcp://127.0.0.6:0;{router[6:]}")
            wait_until(lambda: guard.table.held_by("127.0.0.6") == 1,
                       what="the guard to admit the connection")
            now = time.monotonic()
            guard.table.bar("127.0.0.6", now + 60, now)
            assert not pong_within(early, 1.0)
            other = ctx.socket(zmq.DEALER)
            other.setsockopt(zmq.LINGER, 0)
            other.connect(f"tcp://127.0.0.7:0;{router[6:]}")
            assert pong_within(other, 10.0)
        finally:
            ctx.destroy(linger=0)
