"""Big replies cannot starve small requests (docs/PROTOCOL.md §15.2, issue 14 item 2): once
a wake-up's replies to reading requests reach BATCH_READ_BYTES, the broker goes on reading
but puts the reading requests aside and serves them later, the connection served the
fewest bytes first; a peer's later requests wait behind its own, and beyond
DEFERRED_PER_PEER it is answered 429.

A real broker thread on inproc:// (ZeroMQ's ROUTER fair-queues its peers one message each,
on inproc as on tcp). What is asserted is not a time but the broker's own count of reply
bytes (``BrokerCore.read_bytes``) served between a probe and its reply: before, each PING
waited for a whole round of the readers' pages (40 peers x 2 MB here: 80 MB), and a small
HISTORY page of a logged-in client waited its turn in that round too; now at most three
wake-ups' worth (BATCH_READ_BYTES each, and one reply past it).
"""

from __future__ import annotations

import threading
from typing import Any

import pytest
import zmq
from conftest import wait_until
from raw_helpers import call

from zchat import wire as p
from zchat.broker.loop import BATCH_READ_BYTES, DEFERRED_PER_PEER
from zchat.testing import DEFAULT_PASSWORD, running_broker

READERS = 40
PAGES_EACH = 3
TEXT = "x" * 4000


def dealer(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(endpoint)
    return sock


def fill_room(ctx: zmq.Context[Any], endpoint: str) -> zmq.Socket[Any]:
    """The account "reader" exists, is in "big", and "big" holds a full page of 4 KB
    messages; returns the logged-in socket."""
    sock = dealer(ctx, endpoint)
    call(sock, b"r", p.Register(name="reader", password=DEFAULT_PASSWORD))
    assert call(sock, b"l", p.Login(name="reader", password=DEFAULT_PASSWORD))[2] == b"OK"
    assert call(sock, b"j", p.Join(room="big"))[2] == b"OK"
    for i in range(p.MAX_HISTORY_LIMIT):
        sock.send_multipart(p.encode_request(b"s%d" % i, p.Send(room="big", text=TEXT)))
    for _ in range(p.MAX_HISTORY_LIMIT):
        assert sock.poll(20_000)
        assert sock.recv_multipart()[2] == b"OK"
    return sock


class Drain:
    """Reads and counts every reply the readers get, in a thread (so that nothing piles
    up in memory), by status frame."""

    def __init__(self, socks: list[zmq.Socket[Any]]) -> None:
        self.socks = socks
        self.statuses: dict[bytes, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        poller = zmq.Poller()
        for sock in self.socks:
            poller.register(sock, zmq.POLLIN)
        while not self._stop.is_set():
            for sock, _ in poller.poll(50):
                status = sock.recv_multipart()[2]
                self.statuses[status] = self.statuses.get(status, 0) + 1

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)


@pytest.mark.parametrize("reads", [False, True], ids=["PING", "a small HISTORY page"])
def test_small_requests_are_served_between_other_peers_big_replies(reads: bool) -> None:
    """The honest peer PINGs without a session (served as read), or, logged in, asks
    HISTORY pages of 10 (put aside like the others' full pages, but served first: its
    connection was served the fewest bytes, and a page of 10 is estimated smaller than
    one of 500, even when the contention has just begun)."""
    with running_broker(send_rate_per_s=0, account_send_rate_per_s=0,
                        read_rate_bytes_per_s=0) as h:
        core = h.broker.core
        assert core is not None
        first = fill_room(h.context, h.server)
        readers = [first]
        for i in range(READERS - 1):
            sock = dealer(h.context, h.server)
            assert call(sock, b"l%d" % i, p.Login(name="reader",
                                                  password=DEFAULT_PASSWORD))[2] == b"OK"
            readers.append(sock)
        honest = dealer(h.context, h.server)
        if reads:
            assert call(honest, b"hl", p.Login(name="reader",
                                               password=DEFAULT_PASSWORD))[2] == b"OK"
        probe: p.Request = p.FetchHistory(room="big", limit=10) if reads else p.Ping()
        page = p.encode_request(b"h", p.FetchHistory(room="big", limit=p.MAX_HISTORY_LIMIT))
        drain = Drain(readers)
        try:
            start = core.read_bytes
            for sock in readers:
                for _ in range(PAGES_EACH):
                    sock.send_multipart(page)
            served_during = []
            for i in range(8):
                before = core.read_bytes
                reply = call(honest, b"p%d" % i, probe)
                assert reply[2] == b"OK"
                served_during.append(core.read_bytes - before)
            served_by_then = core.read_bytes - start
            wait_until(lambda: drain.statuses.get(b"OK", 0) == READERS * PAGES_EACH,
                       timeout_s=60, what="every page")
        finally:
            drain.stop()
            for sock in (*readers, honest):
                sock.close(linger=0)
        page_bytes = (core.read_bytes - start) // (READERS * PAGES_EACH)
        assert page_bytes > 2_000_000  # the pages were full: 500 x 4 KB
        total = page_bytes * READERS * PAGES_EACH
        # the wake-up under way, the one that reads the probe (and puts it aside), and the
        # one that serves it first
        bound = 3 * (BATCH_READ_BYTES + page_bytes)
        # the attack was still under way while the probes were answered
        assert served_by_then < (total if reads else total // 2), served_by_then
        # each probe waited at most three wake-ups of big replies, not a round of 40 pages
        assert max(served_during) <= bound, served_during
        assert drain.statuses == {b"OK": READERS * PAGES_EACH}


def test_a_peer_with_too_many_requests_aside_gets_429_and_keeps_its_order() -> None:
    with running_broker(send_rate_per_s=0, account_send_rate_per_s=0,
                        read_rate_bytes_per_s=0) as h:
        sock = fill_room(h.context, h.server)
        try:
            many = 40 + DEFERRED_PER_PEER * 2
            for i in range(many):
                sock.send_multipart(p.encode_request(
                    b"h%d" % i, p.FetchHistory(room="big", limit=p.MAX_HISTORY_LIMIT)))
            sock.send_multipart(p.encode_request(b"last", p.Ping()))
            replies = []
            while len(replies) < many + 1:
                assert sock.poll(30_000), f"{len(replies)} replies of {many + 1}"
                replies.append(sock.recv_multipart())
        finally:
            sock.close(linger=0)
        ids = [r[1] for r in replies]
        statuses = [r[2] for r in replies]
        busy = [r for r in replies if r[2] == b"ERROR"]
        assert busy, "no request was refused"
        assert all(b'"status": 429' in r[3] or b'"status":429' in r[3] for r in busy), busy[0]
        # what was served, was served in the order sent
        served = [i for i, s in zip(ids, statuses, strict=True) if s == b"OK"]
        order = [b"h%d" % i for i in range(many)] + [b"last"]
        assert served == [i for i in order if i in served]
        assert statuses.count(b"OK") >= DEFERRED_PER_PEER
