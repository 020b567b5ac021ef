"""Tools for the flood tests (issue 14) and benchmarks/floods.py: a raw ZMTP peer that sends
one message of many empty frames, an honest CURVE client that PINGs and records its round
trips, the broker's memory from /proc, and a junk fuzzer on short-lived CURVE connections
(``junk_flood``; ``python tests/floods.py junk ENDPOINT KEY SECONDS SEED`` runs one, as
tests/test_flood_memory.py and scripts/abuse.py do in several processes).

Nothing here sleeps to wait for a socket: the pinger waits on its stop event between
PINGs (a pace, not a wait for a condition) and on ``poll`` for each reply.
"""

from __future__ import annotations

import json
import os
import random
import socket
import sys
import threading
import time
from pathlib import Path
from typing import Any

import zmq

from zchat import wire as p

#: ZMTP 3.0 greeting of a NULL-mechanism client (RFC 23/ZMTP): signature, version 3.0,
#: mechanism, as-server 0, filler.
NULL_GREETING = (b"\xff" + b"\x00" * 8 + b"\x7f" + b"\x03\x00" + b"NULL".ljust(20, b"\x00")
                 + b"\x00" + b"\x00" * 31)


def _property(name: bytes, value: bytes) -> bytes:
    return bytes([len(name)]) + name + len(value).to_bytes(4, "big") + value


#: The READY command of a DEALER with an empty identity.
DEALER_READY = (lambda body: b"\x04" + bytes([len(body)]) + body)(
    b"\x05READY" + _property(b"Socket-Type", b"DEALER") + _property(b"Identity", b""))


#: The READY command of a SUB.
SUB_READY = (lambda body: b"\x04" + bytes([len(body)]) + body)(
    b"\x05READY" + _property(b"Socket-Type", b"SUB"))


def empty_frames(count: int) -> bytes:
    """One ZMTP message of ``count`` empty frames: ``count - 1`` with MORE, then a last."""
    return b"\x01\x00" * (count - 1) + b"\x00\x00"


def flood_plain(host: str, port: int, frames: int) -> socket.socket:
    """Connect a raw TCP socket to a plain ZMTP endpoint (the key service) and send it one
    message of ``frames`` empty frames as a NULL-mechanism DEALER: 2 bytes a frame on the
    wire, no libzmq on this side. Returns the socket (the caller closes it); the bytes
    may still be in flight."""
    sock = socket.create_connection((host, port), timeout=10)
    try:
        sock.sendall(NULL_GREETING + DEALER_READY)
        # libzmq drops a peer whose first message arrives in one read with the handshake:
        # wait for the broker's greeting and READY (64 bytes and a command) first
        seen = b""
        while len(seen) < len(NULL_GREETING) + 2 or \
                len(seen) < len(NULL_GREETING) + 2 + seen[len(NULL_GREETING) + 1]:
            chunk = sock.recv(4096)
            assert chunk, "the key service closed the connection during the handshake"
            seen += chunk
        sock.sendall(empty_frames(frames))
    except OSError:  # the broker closed the connection: it refused the message early
        pass
    return sock


def curve_dealer(ctx: zmq.Context[Any], endpoint: str, server_key: bytes,
                 sndhwm: int | None = None) -> zmq.Socket[Any]:
    """A DEALER with a fresh CURVE key pair, connected to ``endpoint`` (a broker whose
    public key is ``server_key``); the caller closes it."""
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    if sndhwm is not None:
        sock.setsockopt(zmq.SNDHWM, sndhwm)
    public, secret = zmq.curve_keypair()
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = \
        server_key, public, secret
    sock.connect(endpoint)
    return sock


def flood_curve(ctx: zmq.Context[Any], endpoint: str, server_key: bytes,
                frames: int) -> zmq.Socket[Any]:
    """A CURVE DEALER that sends one message of ``frames`` empty frames to ``endpoint``.
    Returns the socket (the caller closes it)."""
    sock = curve_dealer(ctx, endpoint, server_key, sndhwm=0)
    more = int(zmq.SNDMORE)
    for _ in range(frames - 1):
        sock.send(b"", more)
    sock.send(b"")
    return sock


class Pinger:
    """An honest peer: PINGs the broker in a thread, one at a time, ``every_s`` apart,
    and keeps each round trip (seconds). ``worst`` is the longest, counting a PING still
    unanswered when it stopped. Use as a context manager."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, server_key: bytes | None,
                 every_s: float = 0.02, timeout_s: float = 60.0) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        if server_key is not None:
            public, secret = zmq.curve_keypair()
            self.sock.curve_serverkey, self.sock.curve_publickey, self.sock.curve_secretkey = \
                server_key, public, secret
        self.sock.connect(endpoint)
        self.every_s, self.timeout_s = every_s, timeout_s
        self.rtts: list[float] = []
        self._pending_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="pinger", daemon=True)
        self._one_at_a_time = threading.Lock()
        self.error: BaseException | None = None

    def ping_once(self, timeout_s: float = 10.0) -> float:
        """One PING and its round trip in seconds (AssertionError without a PONG). Safe
        from the test's thread while the pinger's own runs: one at a time on the socket
        (a ZeroMQ socket is not thread-safe; two threads on it took each other's PONGs,
        and the test failed with "no PONG" on a broker that had answered)."""
        with self._one_at_a_time:
            return self._ping_once(timeout_s)

    def _ping_once(self, timeout_s: float) -> float:
        rid = b"p%d" % len(self.rtts)
        start = time.monotonic()
        self._pending_since = start
        self.sock.send_multipart(p.encode_request(rid, p.Ping()))
        deadline = start + timeout_s
        while True:
            left = deadline - time.monotonic()
            assert left > 0 and self.sock.poll(int(left * 1000) + 1), "no PONG"
            frames = self.sock.recv_multipart()
            if frames[1] == rid:
                rtt = time.monotonic() - start
                self._pending_since = None
                self.rtts.append(rtt)
                return rtt

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                self.ping_once(self.timeout_s)
                self._stop.wait(self.every_s)
        except BaseException as exc:  # reported by worst / __exit__
            self.error = exc

    @property
    def worst(self) -> float:
        waiting = self._pending_since
        now = time.monotonic()
        return max([*self.rtts, now - waiting if waiting is not None else 0.0])

    def __enter__(self) -> Pinger:
        self.ping_once()  # connected and served before the attack starts
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self.timeout_s + 5)
        self.sock.close(linger=0)


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident) of process ``pid``, in KiB, from /proc."""
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            out[name] = int(value.split()[0])
    return out


def raw_zmtp_peer(port: int, source: str, ready: bytes = DEALER_READY) -> socket.socket:
    """A raw TCP connection from ``source`` that has done the ZMTP 3.0 NULL handshake of a
    DEALER (or what ``ready`` says) with the broker (its greeting and READY read)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.bind((source, 0))
    sock.connect(("127.0.0.1", port))
    sock.sendall(NULL_GREETING + ready)
    seen = b""
    head = len(NULL_GREETING)
    while len(seen) < head + 2 or len(seen) < head + 2 + seen[head + 1]:
        chunk = sock.recv(4096)
        assert chunk, "the broker closed the connection during the handshake"
        seen += chunk
    return sock


#: What the junk fuzzer puts in a frame: versions (right and wrong), request types,
#: JSON bodies (fake tokens and sessions), random bytes.
_JUNK_VERSIONS = [b"ZC1", b"ZC1", b"ZC9", b"1", b""]
_JUNK_TYPES = [b"PING", b"LOGIN", b"RESUME", b"SEND", b"JOIN", b"HISTORY", b"INFO",
               b"REGISTER", b"NOPE"]
_JUNK_FRAME_COUNTS = [1, 2, 3, 4, 4, 4, 5, 6]


def _junk(rnd: random.Random) -> list[bytes]:
    frames = []
    for _ in range(rnd.choice(_JUNK_FRAME_COUNTS)):
        pick = rnd.random()
        if pick < 0.3:
            frames.append(rnd.choice(_JUNK_VERSIONS))
        elif pick < 0.5:
            frames.append(rnd.choice(_JUNK_TYPES))
        elif pick < 0.8:
            frames.append(json.dumps({"token": rnd.randbytes(8).hex(),
                                      "session": rnd.randbytes(8).hex(),
                                      "name": "a" * rnd.randint(0, 50)}).encode())
        else:
            frames.append(rnd.randbytes(rnd.randint(0, 200)))
    return frames


def junk_flood(endpoint: str, server_key: bytes, seconds: float, seed: int,
               reopen: float = 0.01) -> dict[str, int]:
    """A tester's fuzzer: a CURVE DEALER (fresh key) that sends random frames (wrong frame
    counts, random JSON bodies, bad versions, fake RESUMEs) as fast as it can for
    ``seconds``, reading whatever comes back, and swaps its socket for a new one (new
    connection, new key) with probability ``reopen`` after each message. Returns what it
    sent (messages queued; those still queued at a swap are dropped), the replies it read
    and the connections it made."""
    rnd = random.Random(seed)
    ctx: zmq.Context[Any] = zmq.Context()

    def connect() -> zmq.Socket[Any]:
        return curve_dealer(ctx, endpoint, server_key)

    sock, sent, got, made = connect(), 0, 0, 1
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            try:
                sock.send_multipart(_junk(rnd), zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                pass
            while sock.poll(0):
                sock.recv_multipart()
                got += 1
            if rnd.random() < reopen:
                sock.close(0)
                sock, made = connect(), made + 1
    finally:
        sock.close(0)
        ctx.term()
    return {"sent": sent, "replies": got, "connections": made}


def junk_command(endpoint: str, server_key: bytes, seconds: float, seed: int) -> list[str]:
    """The command line that runs ``junk_flood`` in its own process (it prints its figures
    as one JSON line)."""
    return [sys.executable, os.path.abspath(__file__), "junk", endpoint, server_key.decode(),
            str(seconds), str(seed)]


if __name__ == "__main__" and sys.argv[1:2] == ["junk"]:
    _endpoint, _key, _seconds, _seed = sys.argv[2:6]
    print(json.dumps(junk_flood(_endpoint, _key.encode(), float(_seconds), int(_seed))),
          flush=True)
