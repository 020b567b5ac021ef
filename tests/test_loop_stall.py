"""The broker loop's own stalls are not its clients' silence (docs/PROTOCOL.md §10),
wherever in a wake-up they fall: also in the commit after the heartbeat check (a tester's
mass failover: a commit held by lock waits in PostgreSQL, then a rebuild of the core
after it failed, and idle clients whose heartbeats waited unread behind a thousand
RESUMEs were evicted 'silent 5.3 s'). A real broker thread on inproc with its SQLite
store, whose next commit is made slow on purpose; a raw DEALER whose heartbeats stop
for that long, as if they waited unread."""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq

from zchat import wire as p
from zchat.broker.loop import BrokerThread
from zchat.store import open_store
from zchat.testing import DEFAULT_PASSWORD, harness_config

#: Seconds of the slow commit: well past the heartbeat timeout below.
STALL_S = 1.5


class SlowCommit:
    """The store, but the first commit after ``arm()`` takes STALL_S (the loop's thread
    is held, as by lock waits in the database)."""

    def __init__(self, store: Any) -> None:
        self._store = store
        self.armed = threading.Event()
        self.stalled = threading.Event()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    def commit_group(self) -> None:
        self._store.commit_group()
        if self.armed.is_set() and not self.stalled.is_set():
            time.sleep(STALL_S)  # the stall under test, not a wait for a condition
            self.stalled.set()


def request(sock: zmq.Socket[Any], req: p.Request) -> list[bytes]:
    sock.send_multipart(p.encode_request(b"q", req))
    assert sock.poll(10_000), f"no answer to {req.TYPE}"
    return sock.recv_multipart()


def test_a_slow_commit_after_the_heartbeat_check_evicts_nobody() -> None:
    config = harness_config(heartbeat_interval_s=0.2, heartbeat_timeout_s=0.6)
    store = SlowCommit(open_store(":memory:"))
    ctx = zmq.Context.instance()
    with BrokerThread(config, store, ctx) as broker:  # type: ignore[arg-type]
        sock = ctx.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        try:
            sock.connect(broker.router_endpoint)
            assert request(sock, p.Register(name="idle", password=DEFAULT_PASSWORD))[2] == b"OK"
            assert request(sock, p.Login(name="idle", password=DEFAULT_PASSWORD))[2] == b"OK"
            assert request(sock, p.Ping())[2] == b"OK"
            ticks = ctx.socket(zmq.SUB)
            ticks.setsockopt(zmq.LINGER, 0)
            ticks.connect(broker.pub_endpoint)
            ticks.setsockopt(zmq.SUBSCRIBE, p.TOPIC_TICK)
            try:
                assert ticks.poll(10_000), "no TICK"  # subscribed
                store.armed.set()  # the next wake-up's commit holds the loop STALL_S
                assert store.stalled.wait(10), "the slow commit did not come"
                after_ms = time.time_ns() // 1_000_000
                # a heartbeat check after the stall (its TICK is published with it)
                deadline = time.monotonic() + 10
                while True:
                    assert ticks.poll(max(1, int((deadline - time.monotonic()) * 1000))), \
                        "no TICK after the stall"
                    event = p.decode_event(ticks.recv_multipart())
                    if isinstance(event, p.Tick) and event.time >= after_ms:
                        break
            finally:
                ticks.close(0)
            # silent for STALL_S, all of it the loop's own: the session is still there
            reply = request(sock, p.Ping())
            assert reply[2] == b"OK" and b'"session":""' not in reply[3], reply
            assert any(s.name == "idle" for s in list(broker.core.sessions.values()))
        finally:
            sock.close(0)
