"""The key service reads bytes, not whole messages (docs/PROTOCOL.md §16.3, issue 14 item 1):
``zchat.broker.zmtp.KeyPeer`` unit by unit, and a real ``zchat broker`` subprocess (CurveZMQ on,
loopback tcp) whose key service is sent one message of 3,000,000 empty frames while an
honest client PINGs the ROUTER.

Bounds asserted, and why: the honest client's worst PING round trip stays under 1.5 s (the
old key service, a ROUTER, took the whole message into Python: ~20 s for these 3,000,000
frames, 37 s for 6,000,000), and the broker's peak resident memory grows by less than
64 MiB (it grew by ~800 MiB). Nothing sleeps: every wait is a poll or a recv with a
deadline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import TcpBroker, start_broker, stop_broker
from floods import DEALER_READY, NULL_GREETING, Pinger, flood_plain, memory_kib

from zchat import keyformat
from zchat.broker import zmtp

ATTACK_FRAMES = 3_000_000
WORST_RTT_S = 1.5
GROWTH_KIB = 64 * 1024


def peer() -> zmtp.KeyPeer:
    return zmtp.KeyPeer(keyformat.KEY_SERVICE_MAX_FRAME_BYTES)


def test_a_key_request_split_across_reads_is_found_once() -> None:
    wire = NULL_GREETING + DEALER_READY + b"\x00\x03KEY" + b"\x00\x03KEY"
    kp = peer()
    found: list[bytes] = []
    for i in range(len(wire)):  # one byte a read: the worst split
        requests, close = kp.receive(wire[i:i + 1])
        assert close == ""
        found += requests
    assert found == [b"KEY", b"KEY"]
    assert len(kp.buffer) == 0


@pytest.mark.parametrize(("tail", "reason"), [
    (b"\x01\x00", "more than one frame"),
    (b"\x02" + b"\x00" * 8, "long frame"),
    (b"\x00\x41" + b"x" * 65, "over 64 bytes"),
    (b"\x06" + b"\x00" * 8, "long frame or command"),
    (b"\x00\x03KEY" * (zmtp.MAX_REQUESTS_PER_READ + 1), "requests in one read"),
])
def test_the_first_byte_beyond_a_key_request_closes(tail: bytes, reason: str) -> None:
    requests, close = peer().receive(NULL_GREETING + DEALER_READY + tail)
    assert requests == [] and reason in close


def test_a_wrong_greeting_or_no_ready_closes_at_once() -> None:
    assert peer().receive(b"GET / HTTP/1.1\r\n")[1]  # not even a ZMTP signature
    curve = NULL_GREETING[:12] + b"CURVE".ljust(20, b"\x00") + NULL_GREETING[32:]
    assert "NULL greeting" in peer().receive(curve)[1]
    assert "before READY" in peer().receive(NULL_GREETING + b"\x00\x03KEY")[1]


def test_the_reply_is_one_zmtp_message_of_three_frames() -> None:
    assert zmtp.encode_message([b"a", b"bc", b""]) == b"\x01\x01a\x01\x02bc\x00\x00"


# -- a real broker ---------------------------------------------------------------------------


@pytest.fixture
def curve_broker(tmp_path: Path) -> Iterator[tuple[TcpBroker, bytes, int]]:
    """``zchat broker`` with CURVE (the default); yields it, its public key and the key
    service's port."""
    broker, lines = start_broker(tmp_path, settings="key_rate_per_s = 0\n")
    try:
        key = next(line for line in lines if "public key:" in line).split()[-1].encode()
        port = int(next(line for line in lines if line.strip().startswith("key "))
                   .rpartition(":")[2])
        yield broker, key, port
    finally:
        if broker.process.popen.poll() is None:
            rc, _ = stop_broker(broker)
            assert rc == 0, broker.process.stderr


def fetch_key(ctx: zmq.Context[Any], port: int) -> bytes:
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(keyformat.KEY_REQUEST)
        assert dealer.poll(5000), "the key service did not answer"
        frames = dealer.recv_multipart()
        assert frames[:2] == [keyformat.KEY_REPLY, b"curve"]
        return frames[2]
    finally:
        dealer.close(linger=0)


def test_millions_of_frames_to_the_key_service_cost_next_to_nothing(
        curve_broker: tuple[TcpBroker, bytes, int]) -> None:
    broker, key, port = curve_broker
    pid = broker.process.popen.pid
    ctx = zmq.Context.instance()
    assert fetch_key(ctx, port) == key
    before = memory_kib(pid)
    with Pinger(ctx, broker.router, key) as pinger:
        attacker = flood_plain("127.0.0.1", port, ATTACK_FRAMES)
        try:
            # the broker closes the connection at the first frame flagged MORE
            attacker.settimeout(10)
            deadline = time.monotonic() + 10
            closed = False
            while not closed and time.monotonic() < deadline:
                try:
                    closed = attacker.recv(65536) == b""
                except ConnectionResetError:
                    closed = True
                except TimeoutError:
                    break
            assert closed, "the key service kept the flooding connection open"
            # the key service still answers honest clients, and so does the ROUTER
            assert fetch_key(ctx, port) == key
            for _ in range(5):
                pinger.ping_once()
        finally:
            attacker.close()
    after = memory_kib(pid)
    assert pinger.error is None, pinger.error
    assert pinger.worst < WORST_RTT_S, f"an honest PING waited {pinger.worst:.1f} s"
    assert after["VmHWM"] - before["VmHWM"] < GROWTH_KIB, (before, after)
