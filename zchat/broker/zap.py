"""The broker's ZAP handler (RFC 27/ZAP): a thread answering libzmq's authentication
requests for the broker's CURVE sockets (docs/PROTOCOL.md §16.2).

It shares no mutable state with the broker's loop: it reads ``subscriber_keys``, an
immutable snapshot the loop replaces, and keeps its own count of PUB handshakes per key.
``zap_reply`` is the pure answer to one request.
"""

from __future__ import annotations

import errno
import itertools
import threading
import time
from collections.abc import Callable
from typing import Any

import zmq

#: Numbers for this process's inproc endpoints: unique for its life (``id(self)`` is
#: reused once an object is freed, before libzmq has let go of its socket's endpoint:
#: "Address already in use" in a test that restarted a broker).
_ENDPOINT_NUMBERS = itertools.count()

#: ZAP domains of the broker's CURVE sockets (RFC 27/ZAP): every handshake is checked by
#: the ZAP handler, which tells the ROUTER's (any client key) from the PUB's (only the
#: key of a live session) by it.
ZAP_DOMAIN = b"zchat"
PUB_ZAP_DOMAIN = b"zchat.pub"
#: PUB handshakes one client key may make while it is bound to a session: its SUB, and
#: libzmq reconnecting that SUB after a dropped TCP connection. Beyond it the key is
#: refused, so that one login cannot open hundreds of subscribers (docs/PROTOCOL.md
#: §16.2).
SUBSCRIPTIONS_PER_KEY = 4

#: Where libzmq sends ZAP requests, per context (RFC 27/ZAP).
ZAP_ENDPOINT = "inproc://zeromq.zap.01"
#: Seconds ``start()`` retries a bind that finds the endpoint in use: libzmq frees the
#: endpoint of a handler just stopped a moment later, in its reaper thread.
BIND_RETRY_S = 1.0


class ZapHandler:
    """The ZAP handler (RFC 27/ZAP): a thread answering libzmq's authentication requests
    for the broker's CURVE sockets, so that a CURVE server never runs without one ("no
    handler" would mean "allow all"). Only the CURVE mechanism is allowed (else 400).
    On the ROUTER (ZAP_DOMAIN) any client key is allowed — clients are identified by
    their LOGIN, not by their transport key — and the key is returned as the User-Id, so
    that the ROUTER's frames carry it to the core, which binds it to the session at LOGIN
    and RESUME. On the PUB (PUB_ZAP_DOMAIN) only a key in ``subscriber_keys`` is allowed,
    at most SUBSCRIPTIONS_PER_KEY times (docs/PROTOCOL.md §16.2). ``requests`` counts the
    handshakes answered.

    ``subscriber_keys`` is an immutable snapshot (client keys in hex) that the broker's
    loop replaces whenever a session binds or unbinds one, before it sends the LOGIN or
    RESUME reply; this thread only reads it. ``_subscribed`` (PUB handshakes per key) is
    this thread's alone.

    A plain blocking REP loop rather than pyzmq's asyncio ThreadAuthenticator: every
    handshake holds the GIL here, and the leaner loop halved the broker loop's p99 stall
    during 400 simultaneous handshakes (docs/PERFORMANCE.md). ``start()`` raises
    zmq.ZMQError when another handler holds the endpoint in this context."""

    def __init__(self, context: zmq.Context[Any]) -> None:
        self.context = context
        self.requests = 0
        self.subscriber_keys: frozenset[str] = frozenset()
        self._subscribed: dict[str, int] = {}
        self._socket: zmq.Socket[Any] | None = None
        self._wake: tuple[zmq.Socket[Any], zmq.Socket[Any]] | None = None
        self._thread = threading.Thread(target=self._run, name="zchat-zap", daemon=True)

    def start(self) -> None:
        sock = self.context.socket(zmq.REP)
        sock.setsockopt(zmq.LINGER, 0)
        deadline = time.monotonic() + BIND_RETRY_S
        while True:
            try:
                sock.bind(ZAP_ENDPOINT)
                break
            except zmq.ZMQError as exc:
                # libzmq frees an inproc name in its reaper thread, a moment after the
                # previous handler's socket was closed: a broker started right after
                # another stopped in this context met "Address already in use" (seen
                # under load in the suite); a handler still running holds it for good
                if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    sock.close()
                    raise
                time.sleep(0.01)  # the condition is the bind itself, retried until it holds
        inbox, outbox = self.context.socket(zmq.PAIR), self.context.socket(zmq.PAIR)
        endpoint = f"inproc://zchat-zap-stop-{next(_ENDPOINT_NUMBERS)}"
        inbox.bind(endpoint)
        outbox.connect(endpoint)
        self._socket, self._wake = sock, (inbox, outbox)
        self._thread.start()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def _run(self) -> None:
        assert self._socket is not None and self._wake is not None
        sock, stop = self._socket, self._wake[0]
        poller = zmq.Poller()
        poller.register(sock, zmq.POLLIN)
        poller.register(stop, zmq.POLLIN)
        while True:
            events = dict(poller.poll())
            if stop in events:
                return
            request = sock.recv_multipart()
            self.requests += 1
            sock.send_multipart(zap_reply(request, self._admit_subscriber))

    def _admit_subscriber(self, key: str) -> bool:
        """Whether client key ``key`` (hex) may open one more PUB connection: bound to a
        live session, and fewer than SUBSCRIPTIONS_PER_KEY PUB handshakes made with it.
        The counts of keys no longer bound are dropped when the table has grown to twice
        the bound keys (a key bound again then starts afresh; LOGIN is rate-limited)."""
        keys = self.subscriber_keys
        if key not in keys:
            return False
        used = self._subscribed.get(key, 0)
        if used >= SUBSCRIPTIONS_PER_KEY:
            return False
        self._subscribed[key] = used + 1
        if len(self._subscribed) > 2 * len(keys) + 64:
            self._subscribed = {k: n for k, n in self._subscribed.items() if k in keys}
        return True

    def stop(self) -> None:
        """Stop the thread and close its sockets (within 5 s)."""
        if self._wake is not None and self._thread.is_alive():
            self._wake[1].send(b"")
            self._thread.join(5)
        for sock in (self._socket, *(self._wake or ())):
            if sock is not None:
                sock.close(linger=0)
        self._socket = self._wake = None


def _allow_all(key: str) -> bool:
    return True


def zap_reply(request: list[bytes],
              admit_subscriber: Callable[[str], bool] = _allow_all) -> list[bytes]:
    """RFC 27's reply to one ZAP request (version, request id, domain, address, identity,
    mechanism, credentials...): 400 for any mechanism but CURVE or a request that is not
    ZAP 1.0; on PUB_ZAP_DOMAIN 400 unless ``admit_subscriber(key)``; else 200 with the
    client's public key (hex of its 32 bytes) as the User-Id. No metadata."""
    request_id = request[1] if len(request) > 1 else b""
    if len(request) < 6 or request[0] != b"1.0":
        return [b"1.0", request_id, b"400", b"not a ZAP 1.0 request", b"", b""]
    if request[5] != b"CURVE" or len(request) != 7 or len(request[6]) != 32:
        return [b"1.0", request_id, b"400", b"only CURVE is accepted", b"", b""]
    key = request[6].hex()
    if request[2] == PUB_ZAP_DOMAIN and not admit_subscriber(key):
        return [b"1.0", request_id, b"400", b"log in before subscribing", b"", b""]
    return [b"1.0", request_id, b"200", b"OK", key.encode("ascii"), b""]
