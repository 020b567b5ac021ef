"""Helpers for the tests that drive ``zchat.client.Client`` against a real broker thread:
waiting for and matching a client's events (``collect``, ``msgs``, ``is_msg``, ``is_``),
heartbeats fast enough that a lost broker is noticed in a fraction of a second
(``FAST_BEATS``), and a broker stopped and started again on the same endpoints and SQLite
file (``RestartableBroker``, with ``logged_in`` clients; tests/conftest.py's
``inproc_broker`` fixture gives one on ``inproc://``).

Every wait is for an event with a timeout that fails the test; nothing sleeps for a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq

from zchat import wire as p
from zchat.broker.loop import BindError
from zchat.client.client import Client
from zchat.client.events import Event
from zchat.errors import RequestFailed
from zchat.testing import DEFAULT_PASSWORD, Harness, running_broker

FAST_BEATS = {"heartbeat_interval_s": 0.1, "heartbeat_timeout_s": 0.3}


async def collect(client: Client, until: Callable[[Event], bool],
                  timeout_s: float = 5.0) -> list[Event]:
    """Events of ``client`` up to and including the first for which ``until`` holds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    events: list[Event] = []
    while True:
        remaining = deadline - loop.time()
        event = await client.next_event(remaining) if remaining > 0 else None
        if event is None:
            raise AssertionError(f"{client.name}: condition not met within {timeout_s} s; "
                                 f"events so far: {events}")
        events.append(event)
        if until(event):
            return events


def msgs(events: list[Event], room: str | None = None) -> list[p.MessagePosted]:
    return [e for e in events if isinstance(e, p.MessagePosted)
            and (room is None or e.room == room)]


def is_msg(seq: int, room: str = "dev") -> Callable[[Event], bool]:
    return lambda e: isinstance(e, p.MessagePosted) and e.room == room and e.seq == seq


def is_(kind: type, **fields: Any) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, kind) and all(getattr(e, k) == v
                                                 for k, v in fields.items())


class RestartableBroker:
    """A broker thread on fixed endpoints and one SQLite file, stopped and started again
    by the test (``start``/``stop`` block: call them through ``asyncio.to_thread``)."""

    def __init__(self, db: Path, router: str, pub: str) -> None:
        self.db, self.router, self.pub = db, router, pub
        self._cm: contextlib.AbstractContextManager[Harness] | None = None
        self.harness: Harness | None = None

    def start(self) -> Harness:
        """Start on the same endpoints. libzmq closes the previous broker's listening
        sockets in its I/O thread, after ``close()`` returned, so a tcp bind right after a
        stop can meet EADDRINUSE for a moment: retry the bind until it succeeds (2 s)."""
        assert self._cm is None, "already running"
        deadline = time.monotonic() + 2.0
        while True:
            cm = running_broker(self.db, router=self.router, pub=self.pub, **FAST_BEATS)
            try:
                self.harness = cm.__enter__()
                break
            except BindError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)  # the condition is the bind itself, retried until it holds
        self._cm = cm
        return self.harness

    def bind_when_free(self, sock: zmq.Socket[Any], deadline_s: float = 2.0) -> None:
        """Bind ``sock`` on the router endpoint of a stopped broker: the endpoint is
        free once libzmq's reaper thread has destroyed the old ROUTER, a moment after
        ``stop()`` returned (an inproc name too: a CI run met "Address already in use"),
        so the bind is retried until it succeeds (``deadline_s``)."""
        deadline = time.monotonic() + deadline_s
        while True:
            try:
                sock.bind(self.router)
                return
            except zmq.ZMQError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() > deadline:
                    raise
                time.sleep(0.02)  # the condition is the bind itself, retried until it holds

    def stop(self) -> None:
        cm, self._cm = self._cm, None
        if cm is not None:
            cm.__exit__(None, None, None)

    def client(self, **kwargs: Any) -> Client:
        """A Client for this broker's router endpoint (not connected)."""
        assert self.harness is not None
        return Client(self.router, context=self.harness.context, **kwargs)


async def logged_in(broker: RestartableBroker, name: str, rooms: tuple[str, ...] = (),
                    register: bool = True, **kwargs: Any) -> Client:
    client = broker.client(**kwargs)
    await client.connect()
    if register:
        await client.register(name, DEFAULT_PASSWORD)
    await client.login(name, DEFAULT_PASSWORD)
    for room in rooms:
        await client.join(room)
    return client


async def registered_and_logged_in(client: Client, name: str) -> Client:
    """``client`` connected, ``name`` registered (409, taken, is fine) and logged in, with
    DEFAULT_PASSWORD."""
    await client.connect()
    with contextlib.suppress(RequestFailed):
        await client.register(name, DEFAULT_PASSWORD)
    await client.login(name, DEFAULT_PASSWORD)
    return client


async def serve_scripted(router: Any, answer: Callable[[p.Request], p.Reply | p.Error]
                         ) -> None:
    """A scripted broker peer on ``router`` (a zmq.asyncio ROUTER): each request is
    answered with ``answer(request)``, for the client tests that need replies a real
    broker gives only in an instant (a 429 on cue, a 503 then a LOGIN that works)."""
    while True:
        routing_id, *frames = await router.recv_multipart()
        request_id, req = p.decode_request(frames)
        await router.send_multipart([routing_id, *p.encode_reply(request_id, answer(req))])
