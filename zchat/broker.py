"""The broker's event loop: a ROUTER for requests, a PUB for events, one thread owning state.

This is the I/O adapter around zchat.broker_core.BrokerCore. It is a plain ``zmq.Poller``
loop, not asyncio: pyzmq's asyncio integration costs about ten times as much per message
on this kind of machine (see the performance issue), and the pure core keeps the loop
swappable. Each wake-up drains up to ``BATCH`` requests before it looks at timers.

Socket options (docs/PROTOCOL.md §2):

- ROUTER_MANDATORY on the ROUTER, with every send non-blocking: a reply to a peer that has
  gone (EHOSTUNREACH) or whose queue is full (EAGAIN at the high-water mark) is dropped and
  logged; it never blocks or crashes the broker.
- Routing ids are the ROUTER's own random per-connection ids (clients set no identity), so
  a reconnecting client is a new peer and cannot take over another's queue.
- MAXMSGSIZE = protocol.MAX_TRANSPORT_FRAME_BYTES (128 KiB) on the ROUTER: libzmq disconnects a peer
  that sends a larger frame before it reaches us (the frame count is not bounded: PROTOCOL §9).
- SNDHWM/RCVHWM from config (messages, per peer).
- LINGER at close: SHUTDOWN_LINGER_MS (0.5 s) after a graceful stop, so that GOING_AWAY
  and the last replies leave; 0 otherwise. A stopping broker never hangs on a dead peer.

Password hashing runs on a small thread pool (``hash_workers``); finished jobs come back
through a queue and wake the poller through a pipe, so hashing never stalls the loop.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import queue
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import zmq

from zchat.broker_core import Action, BrokerCore, Offload, ToPeer, ToTopic
from zchat.config import BrokerConfig
from zchat.protocol import MAX_TRANSPORT_FRAME_BYTES
from zchat.store import Store

log = logging.getLogger("zchat.broker")

#: Requests handled per wake-up before timers are looked at again.
BATCH = 256
#: LINGER at close after a graceful stop, in milliseconds: time for the GOING_AWAY event
#: and the last replies to leave (docs/PROTOCOL.md §6.29); well inside the 2 s a stopping
#: broker is given.
SHUTDOWN_LINGER_MS = 500
_ADDRESS_TYPES = (b"LOGIN", b"REGISTER")


def _peer_address(frame: zmq.Frame) -> str:
    """The sender's IP address from the frame's metadata ("" on inproc/ipc)."""
    try:
        return str(frame.get("Peer-Address") or "")
    except zmq.ZMQError:
        return ""


def wall_ms() -> int:
    """The broker's clock for timestamps on the wire: UTC milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class Broker:
    """A broker bound to ``router`` and ``pub`` endpoints, serving ``store``.

    Use as a context manager (binds on enter, closes on exit) and call ``run()`` in the
    thread that owns it; ``stop()`` may be called from any thread or a signal handler.
    ``router_endpoint``/``pub_endpoint`` are the bound endpoints (ports resolved when 0 or
    ``*`` was asked for).
    """

    def __init__(self, config: BrokerConfig, store: Store,
                 context: zmq.Context[Any] | None = None) -> None:
        self.config = config
        self.store = store
        self.context = context or zmq.Context.instance()
        self.router_endpoint = config.router
        self.pub_endpoint = config.pub
        self._router: zmq.Socket[Any] | None = None
        self._pub: zmq.Socket[Any] | None = None
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._done: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=config.hash_workers,
                                        thread_name_prefix="zchat-hash")
        self.core: BrokerCore | None = None
        self.ready = threading.Event()
        self._linger_ms = 0  # SHUTDOWN_LINGER_MS once run() has said GOING_AWAY

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Broker:
        self.bind()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def bind(self) -> None:
        """Create and bind both sockets. Raises zmq.ZMQError (e.g. address in use)."""
        router = self.context.socket(zmq.ROUTER)
        pub = self.context.socket(zmq.PUB)
        self._router, self._pub = router, pub
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_TRANSPORT_FRAME_BYTES)
        router.setsockopt(zmq.SNDHWM, self.config.sndhwm)
        router.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
        router.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, self.config.sndhwm)
        pub.setsockopt(zmq.LINGER, 0)
        router.bind(self.config.router)
        pub.bind(self.config.pub)
        self.router_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        advertised = self.config.pub_advertised or self.pub_endpoint
        self.core = BrokerCore(self.store, self.config, advertised, wall_ms())

    def stop(self) -> None:
        """Ask ``run()`` to return; safe from any thread and from signal handlers."""
        self._stopping.set()
        # A full or closed pipe is fine: the loop wakes anyway.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Close sockets, the worker pool, the wake pipe and the store. LINGER is 0, or
        SHUTDOWN_LINGER_MS after ``run()`` returned from ``stop()``, so that GOING_AWAY can
        still leave (a process must then term its context to wait for it: ``zchat
        broker`` does)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        for sock in (self._router, self._pub):
            if sock is not None:
                sock.close(linger=self._linger_ms)
        self._router = self._pub = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self.store.close()

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until ``stop()``; then stop taking requests, publish GOING_AWAY and end
        every session in memory (publishing offline presence; the sessions stay in the
        store for RESUME) (docs/PROTOCOL.md §6.29)."""
        assert self._router is not None and self.core is not None, "bind() first"
        router, core = self._router, self.core
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        self.ready.set()
        self._execute(core.tick(time.monotonic(), wall_ms()))
        while not self._stopping.is_set():
            deadline = core.next_deadline()
            wait_s = self.config.heartbeat_interval_s if deadline is None else \
                max(0.0, deadline - time.monotonic())
            events = dict(poller.poll(int(wait_s * 1000) + 1))
            if router in events:
                self._drain_router(router, core)
            if self._wake_r in events:
                self._drain_jobs(core)
            self._execute(core.tick(time.monotonic(), wall_ms()))
        self._execute(core.shutdown(wall_ms()))
        self._linger_ms = SHUTDOWN_LINGER_MS

    def _drain_router(self, router: zmq.Socket[Any], core: BrokerCore) -> None:
        for _ in range(BATCH):
            try:
                parts = router.recv_multipart(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            # The outermost per-message boundary: whatever one request does, the loop
            # logs it and goes on serving the others.
            try:
                routing_id = parts[0].bytes
                frames = [f.bytes for f in parts[1:]]
                address = ""
                if len(frames) > 2 and frames[2] in _ADDRESS_TYPES:
                    address = _peer_address(parts[-1])
                self._execute(core.handle(routing_id, frames, time.monotonic(), wall_ms(),
                                          address))
            except Exception:
                log.exception("unexpected error serving one request; still serving")

    def _drain_jobs(self, core: BrokerCore) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                job_id, result = self._done.get_nowait()
            except queue.Empty:
                return
            self._execute(core.complete(job_id, result, time.monotonic(), wall_ms()))

    def _job_done(self, job_id: int, future: Future[Any]) -> None:
        """Runs in a worker thread: hand the result to the loop and wake it."""
        exc = future.exception() if not future.cancelled() else None
        self._done.put((job_id, exc if exc is not None else future.result()))
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"j")

    def _execute(self, actions: list[Action]) -> None:
        assert self._router is not None and self._pub is not None
        for action in actions:
            if isinstance(action, ToTopic):
                self._pub.send_multipart(action.frames, zmq.NOBLOCK)
            elif isinstance(action, ToPeer):
                try:
                    self._router.send_multipart([action.routing_id, *action.frames],
                                                zmq.NOBLOCK)
                except zmq.Again:
                    log.warning("dropped a reply to %s: its queue is full (high-water mark)",
                                action.routing_id.hex())
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
                    log.debug("dropped a reply to %s: peer gone", action.routing_id.hex())
            elif isinstance(action, Offload):
                future = self._pool.submit(action.work)
                future.add_done_callback(functools.partial(self._job_done, action.job_id))


class BrokerThread:
    """Run a Broker in a background thread (tests, the in-process harness).

    ``with BrokerThread(config, store, context) as broker:`` binds, starts the loop, and on
    exit stops it and closes everything; raises if the loop does not stop within 5 s.
    """

    def __init__(self, config: BrokerConfig, store: Store,
                 context: zmq.Context[Any] | None = None) -> None:
        self.broker = Broker(config, store, context)
        self._thread = threading.Thread(target=self._run, name="zchat-broker", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.broker.run()
        except BaseException as exc:  # reported to the test on exit
            self.error = exc
            log.exception("broker loop died")

    def __enter__(self) -> Broker:
        self.broker.bind()
        self._thread.start()
        if not self.broker.ready.wait(5):
            raise RuntimeError("broker did not start within 5 s")
        return self.broker

    def __exit__(self, *exc: object) -> None:
        self.broker.stop()
        self._thread.join(5)
        alive = self._thread.is_alive()
        if not alive:
            self.broker.close()
        if alive:
            raise RuntimeError("broker loop did not stop within 5 s")
        if self.error is not None:
            raise RuntimeError("broker loop died") from self.error
