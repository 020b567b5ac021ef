"""Raw protocol requests on a DEALER, for the tests that speak the wire themselves (an
attacker's socket, or a client without zchat.client): ``call`` sends one request and
waits, with a deadline, for one reply."""

from __future__ import annotations

from typing import Any

import zmq

from zchat import wire as p


def call(sock: zmq.Socket[Any], rid: bytes, req: p.Request) -> list[bytes]:
    """Send ``req`` with request id ``rid`` and return the next message (20 s at most;
    AssertionError naming the request without one)."""
    sock.send_multipart(p.encode_request(rid, req))
    assert sock.poll(20_000), f"no reply to {req.TYPE}"
    return sock.recv_multipart()
