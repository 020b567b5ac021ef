"""Raw protocol requests on a DEALER, for the tests that speak the wire themselves (an
attacker's socket, or a client without zchat.client): ``call`` sends one request and
waits, with a deadline, for one reply."""

from __future__ import annotations

import itertools
from typing import Any

import zmq

from zchat import wire as p


def call(sock: zmq.Socket[Any], rid: bytes, req: p.Request) -> list[bytes]:
    """Send ``req`` with request id ``rid`` and return the next message (20 s at most;
    AssertionError naming the request without one)."""
    sock.send_multipart(p.encode_request(rid, req))
    assert sock.poll(20_000), f"no reply to {req.TYPE}"
    return sock.recv_multipart()


_rids = itertools.count(1)


class RawPeer:
    """A DEALER to ``router`` (``tcp://HOST:PORT``) from a chosen loopback source address
    (``127.0.0.2``: the broker sees another client address), speaking the codec
    directly; ``call`` waits 10 s at most for the reply."""

    def __init__(self, ctx: zmq.Context[Any], router: str, source: str) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(router.replace("tcp://", f"tcp://{source}:0;", 1))

    def call(self, req: p.Request) -> Any:
        """The reply to ``req``: a Reply value, or the ErrorReply."""
        rid = f"r{next(_rids)}".encode()
        self.sock.send_multipart(p.encode_request(rid, req))
        assert self.sock.poll(10_000), f"no reply to {req.TYPE} within 10 s"
        got, value = p.decode_from_broker(self.sock.recv_multipart(), {rid: type(req).REPLY})
        assert got == rid
        return value

    def close(self) -> None:
        self.sock.close(linger=0)
