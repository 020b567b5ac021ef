"""A RESUME the broker cannot answer now (503: its database away; 429: a lock busy) is
tried again at the next reconnect attempt; only a 401 (the session is gone) makes the
client LOGIN with its password (docs/PROTOCOL.md §6.27, §10). A fifth tester's cluster,
after a 40 s PostgreSQL outage, saw 364 clients LOGIN instead of RESUMEing: each made a
new session while the old one was still held, and the brokers published a second online.

The broker here is a scripted peer on a real ROUTER socket (inproc), so that the
RESUME's 503 is followed by a LOGIN that would succeed, which a real broker gives only
in an instant of an outage's end. Every wait is on an event with a deadline."""

from __future__ import annotations

import asyncio
import itertools

import zmq
import zmq.asyncio
from client_helpers import collect, is_, serve_scripted
from conftest import run

from zchat import wire as p
from zchat.client.client import LOGIN_RATE_LIMIT_TRIES, Client
from zchat.client.events import ConnectionRestored
from zchat.errors import Status

_endpoints = itertools.count(1)
T0 = 1_700_000_000_000


class ScriptedBroker:
    """INFO and LOGIN answered as a broker does (LOGIN makes session ``s-N``); the first
    PING after the login answered with no session (the client then reconnects); each
    RESUME answered with the next of ``resumes`` (an Error, or None for the session)."""

    def __init__(self, resumes: list[p.Error | None]) -> None:
        self.endpoint = f"inproc://scripted-broker-{next(_endpoints)}"
        self.resumes = list(resumes)
        self.seen: list[str] = []
        self.sessions = 0
        self.forgot = False

    def answer(self, req: p.Request) -> p.Reply | p.Error:
        self.seen.append(req.TYPE)
        if isinstance(req, p.Info):
            return p.InfoReply(version=1, pub=self.endpoint + "-pub", time=T0,
                               heartbeat_interval_ms=100, heartbeat_timeout_ms=60_000,
                               max_text_bytes=4000)
        if isinstance(req, p.Login):
            self.sessions += 1
            return p.LoggedIn(name=req.name, session=f"s-{self.sessions}", rooms=())
        if isinstance(req, p.Resume):
            scripted = self.resumes.pop(0) if self.resumes else None
            return scripted or p.LoggedIn(name="ops", session=req.session, rooms=())
        if isinstance(req, p.Ping):
            if not self.forgot:  # once: as a broker that lost the session's memory
                self.forgot = True
                return p.Pong(time=T0, session="")
            return p.Pong(time=T0, session=f"s-{self.sessions}")
        return p.Ok()

    async def serve(self, router: zmq.asyncio.Socket) -> None:
        await serve_scripted(router, self.answer)


async def reconnect_through(broker: ScriptedBroker) -> Client:
    """Log in, let the broker forget the session, and wait for the reconnect."""
    ctx = zmq.asyncio.Context.shadow(zmq.Context.instance().underlying)
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(broker.endpoint)
    server = asyncio.create_task(broker.serve(router))
    client = Client(broker.endpoint, timeout_s=2.0, reconnect=True, reconnect_max_s=0.2)
    try:
        await client.connect()
        await client.login("ops", "pw")
        await collect(client, is_(ConnectionRestored), timeout_s=10)
        return client
    finally:
        await asyncio.wait_for(client.close(), 5)
        server.cancel()
        await asyncio.wait([server])
        router.close(linger=0)


def test_a_resume_answered_503_is_tried_again_not_replaced_by_a_login() -> None:
    busy = p.Error(status=int(Status.UNAVAILABLE), reason="storage unavailable")
    broker = ScriptedBroker([busy, busy])
    client = run(reconnect_through(broker))
    after_login = broker.seen[broker.seen.index("LOGIN") + 1:]
    assert [t for t in after_login if t in ("RESUME", "LOGIN")] == \
        ["RESUME", "RESUME", "RESUME"], broker.seen
    assert broker.sessions == 1  # the session kept, none made anew
    assert client.name == "ops"


def test_a_resume_answered_429_is_tried_again_too() -> None:
    busy = p.Error(status=int(Status.TOO_MANY_REQUESTS), reason="storage busy",
                   retry_after_ms=10)
    # the client waits out LOGIN_RATE_LIMIT_TRIES 429s itself (_patiently); one more
    # fails the attempt, and the next attempt RESUMEs again
    broker = ScriptedBroker([busy] * (LOGIN_RATE_LIMIT_TRIES + 1))
    run(reconnect_through(broker))
    assert "LOGIN" not in broker.seen[broker.seen.index("LOGIN") + 1:], broker.seen
    assert broker.sessions == 1


def test_a_resume_answered_401_logs_in_again() -> None:
    gone = p.Error(status=int(Status.UNAUTHORIZED), reason="unknown or expired session")
    broker = ScriptedBroker([gone])
    run(reconnect_through(broker))
    after_login = broker.seen[broker.seen.index("LOGIN") + 1:]
    assert [t for t in after_login if t in ("RESUME", "LOGIN")] == ["RESUME", "LOGIN"], \
        broker.seen
    assert broker.sessions == 2
