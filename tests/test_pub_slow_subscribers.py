"""Logged-in subscribers that never read cost the broker a bounded amount (docs/PROTOCOL.md
§15.2, `pub_sndhwm`; issue 14): libzmq's PUB queues up to its high-water mark of events
per subscriber, each ~250 bytes however big (the body is shared), so a tester's 1,200
such subscribers held 3 GB of the broker at 10,000 events; now 1,000.

``zchat broker`` as a subprocess on loopback tcp with CURVE, sending limits off: SUBSCRIBERS
sessions log in on raw DEALERs and open a SUB with the same key pair (a key bound to a live
session is admitted, §16.2) with a 1-event receive high-water mark that never reads, while
one session posts EVENTS small messages to lobby, where they all are. The broker's peak
resident size (VmHWM) grows by less than GROWTH_MIB (26 MiB here; with the old 10,000
events: 224 MiB).
Every wait is on a condition with a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import TcpBroker, running_tcp_broker
from floods import memory_kib
from raw_helpers import call
from subscriber_helpers import Subscriber, broker_key, settle

from zchat import wire as p
from zchat.client.endpoints import pub_endpoint_for
from zchat.testing import DEFAULT_PASSWORD

SUBSCRIBERS = 100
EVENTS = 12_000
GROWTH_MIB = 100


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TcpBroker]:
    with running_tcp_broker(tmp_path, "send_rate_per_s = 0.0\nlogin_rate_per_s = 0.0\n") as b:
        yield b


def dealer(ctx: zmq.Context[Any], broker: TcpBroker, key: bytes,
           keypair: tuple[bytes, bytes]) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = key, *keypair
    sock.connect(broker.router)
    return sock


@pytest.mark.timeout(120)
def test_subscribers_that_never_read_hold_a_bounded_backlog(
        tmp_path: Path, broker: TcpBroker, ctx: zmq.Context[Any]) -> None:
    key = broker_key(tmp_path, broker)
    pid = broker.process.popen.pid
    socks: list[zmq.Socket[Any]] = []
    subs: list[Subscriber] = []
    try:
        poster = dealer(ctx, broker, key, zmq.curve_keypair())
        socks.append(poster)
        call(poster, b"r", p.Register(name="poster", password=DEFAULT_PASSWORD))
        info = call(poster, b"l", p.Login(name="poster", password=DEFAULT_PASSWORD))
        assert info[2] == b"OK", info
        _, reply = p.decode_from_broker(call(poster, b"i", p.Info()), {b"i": p.InfoReply})
        assert isinstance(reply, p.InfoReply)
        pub = pub_endpoint_for(broker.router, reply.pub)
        for i in range(SUBSCRIBERS):
            keypair = zmq.curve_keypair()
            sock = dealer(ctx, broker, key, keypair)
            socks.append(sock)
            name = f"stall{i}"
            assert call(sock, b"r", p.Register(name=name, password=DEFAULT_PASSWORD))[2] \
                == b"OK"
            assert call(sock, b"l", p.Login(name=name, password=DEFAULT_PASSWORD))[2] == b"OK"
            sub = Subscriber(ctx, pub, key, keypair)
            sub.sub.setsockopt(zmq.RCVBUF, 4096)
            subs.append(sub)
        assert settle(subs) == ["ok"] * SUBSCRIBERS
        before = memory_kib(pid)
        text = "m" * 200
        for start in range(0, EVENTS, 500):  # in windows of 500, each waited for
            for i in range(start, start + 500):
                poster.send_multipart(p.encode_request(b"s%d" % i,
                                                       p.Send(room="lobby", text=text)))
            for _ in range(500):
                assert poster.poll(20_000), "no reply to SEND"
                assert poster.recv_multipart()[2] == b"OK"
        after = memory_kib(pid)
    finally:
        for sub in subs:
            sub.close()
        for sock in socks:
            sock.close(linger=0)
    grown_mib = (after["VmHWM"] - before["VmHWM"]) / 1024
    assert grown_mib < GROWTH_MIB, f"the broker grew by {grown_mib:.0f} MiB"
