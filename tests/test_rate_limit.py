"""The client's politeness towards a rate-limiting broker: SEND and DM answered with ERROR
429 wait ``retry_after_ms`` and try again, at most RATE_LIMIT_TRIES times in all.

The broker has no limiter yet, so a tiny fake broker plays it: a raw ROUTER on inproc that
answers INFO and LOGIN, then SEND/DM from a script of replies.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import zmq
import zmq.asyncio
from client_helpers import serve_scripted
from conftest import run

from zchat import wire as p
from zchat.client.client import RATE_LIMIT_TRIES, Client
from zchat.errors import RequestFailed, Status

_endpoints = itertools.count(1)
T0 = 1_700_000_000_000


class FakeBroker:
    """Answers INFO and LOGIN; answers each SEND or DM with the next of ``script`` (an
    Error, or None for OK). ``seen`` records (monotonic time, TYPE) of those requests."""

    def __init__(self, script: list[p.Error | None]) -> None:
        self.endpoint = f"inproc://fake-broker-{next(_endpoints)}"
        self.script = list(script)
        self.seen: list[tuple[float, str]] = []

    def answer(self, req: p.Request) -> p.Reply | p.Error:
        if isinstance(req, p.Info):
            return p.InfoReply(version=1, pub=self.endpoint + "-pub", time=T0,
                               heartbeat_interval_ms=60_000, heartbeat_timeout_ms=180_000,
                               max_text_bytes=4000)
        if isinstance(req, p.Login):
            return p.LoggedIn(name=req.name, session="s-1", rooms=())
        self.seen.append((time.monotonic(), req.TYPE))
        scripted = self.script.pop(0) if self.script else None
        if scripted is not None:
            return scripted
        if isinstance(req, p.Send):
            return p.Sent(room=req.room, seq=len(self.seen), time=T0)
        if isinstance(req, p.SendDirect):
            return p.DmSent(id=len(self.seen), time=T0, delivered="live")
        return p.Ok()

    async def serve(self, router: zmq.asyncio.Socket) -> None:
        await serve_scripted(router, self.answer)


@asynccontextmanager
async def logged_in(fake: FakeBroker) -> AsyncIterator[Client]:
    ctx = zmq.asyncio.Context.shadow(zmq.Context.instance().underlying)
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.LINGER, 0)
    router.bind(fake.endpoint)
    server = asyncio.create_task(fake.serve(router))
    try:
        async with Client(fake.endpoint, timeout_s=2.0) as client:
            await client.login("ops", "pw")
            yield client
    finally:
        server.cancel()
        await asyncio.wait([server])
        router.close(linger=0)


def slow_down(ms: int) -> p.Error:
    return p.Error(status=429, reason="slow down", retry_after_ms=ms)


def test_send_waits_retry_after_then_succeeds() -> None:
    fake = FakeBroker([slow_down(50), None])

    async def scenario() -> p.Sent:
        async with logged_in(fake) as client:
            return await client.send("alerts", "disk full")

    sent = run(scenario())
    assert sent.room == "alerts"
    assert [t for _s, t in fake.seen] == ["SEND", "SEND"]
    waited = fake.seen[1][0] - fake.seen[0][0]
    assert 0.045 <= waited < 1.0


def test_dm_waits_too() -> None:
    fake = FakeBroker([slow_down(60), slow_down(60), None])

    async def scenario() -> p.DmSent:
        async with logged_in(fake) as client:
            return await client.dm("bob", "psst")

    assert run(scenario()).delivered == "live"
    assert [t for _s, t in fake.seen] == ["DM", "DM", "DM"]
    assert fake.seen[2][0] - fake.seen[0][0] >= 0.11


def test_retries_are_bounded() -> None:
    fake = FakeBroker([slow_down(1)] * (RATE_LIMIT_TRIES + 5))

    async def scenario() -> None:
        async with logged_in(fake) as client:
            await client.send("alerts", "x")

    with pytest.raises(RequestFailed) as info:
        run(scenario())
    assert info.value.status == Status.TOO_MANY_REQUESTS
    assert info.value.retry_after_ms == 1
    assert len(fake.seen) == RATE_LIMIT_TRIES


def test_other_errors_are_not_retried() -> None:
    fake = FakeBroker([p.Error(status=403, reason="not a member")])

    async def scenario() -> None:
        async with logged_in(fake) as client:
            await client.send("alerts", "x")

    with pytest.raises(RequestFailed) as info:
        run(scenario())
    assert info.value.status == Status.FORBIDDEN
    assert len(fake.seen) == 1
