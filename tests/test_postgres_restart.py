"""PostgreSQL restarted under a cluster that takes messages (issue 16, docs/cluster.md
"What a PostgreSQL restart looks like to a user"): ``pg_ctl stop -m fast`` (sessions ended
cleanly) and ``-m immediate`` (a crash: recovery from the WAL), then ``pg_ctl start``,
while two brokers (real broker threads, real zmq, real clients) serve a client each that
posts without pause.

What must hold: while the database is down every request is answered, 503 (no hang, no
crash: each request has a deadline); the brokers reconnect by themselves, their store
connection and their LISTEN connection both; and afterwards every acknowledged message
is in the database with the seq it was acknowledged with, no seq was given twice, and
each room's seqs have no gap. The server runs with fsync on: this is a durability test.

The outage lasts until each client has been refused at least once (a condition, not a
time), so the 503s are seen whatever the machine's speed; the numbers it prints are the
ones docs/cluster.md quotes."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import psycopg
import pytest
from client_helpers import collect, is_
from conftest import need_postgres
from postgres_server import PostgresServer, find_bindir

from zchat import wire as p
from zchat.client import Client
from zchat.client.client import UNAVAILABLE_RETRY_FIRST_S
from zchat.errors import RequestFailed
from zchat.testing import Harness, running_cluster

#: Seconds one SEND may take before the test calls it a hang (the broker answers a
#: request at once whether the database is there or not; a reconnection attempt to a
#: server that is down is refused at once on loopback).
REQUEST_DEADLINE_S = 10.0
#: Messages each client has acknowledged before the restart, and after it.
BEFORE, AFTER = 15, 15
#: Seconds the whole scenario may take.
SCENARIO_S = 90.0


@pytest.fixture
def durable_server() -> Iterator[PostgresServer]:
    """A PostgreSQL server of this test's own with fsync and full_page_writes on (the
    session's runs with fsync off), stopped and removed after it. Its own, not the
    session's: the test restarts it."""
    bindir, why = find_bindir()
    if bindir is None:
        need_postgres(why)
    assert bindir is not None
    server = PostgresServer(bindir, fsync=True)
    try:
        server.start()
        yield server
    finally:
        server.stop()


@dataclass
class Sender:
    """One client posting to a room (or, with ``dm``, DMing the account ``room``)
    without pause: every outcome, timed."""

    client: Client
    room: str
    dm: bool = False
    #: (cmid, text, seq, monotonic time of the OK)
    acked: list[tuple[str, str, int, float]] = field(default_factory=list)
    #: monotonic times of the 503s
    refused: list[float] = field(default_factory=list)
    #: reasons of the 503s, one of each
    reasons: set[str] = field(default_factory=set)
    stop: bool = False
    #: set after every outcome: what ``_until`` waits on
    changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self) -> None:
        """Post ``<name> <i>`` with cmid ``<name>-<i>`` until ``stop``; a 503 is tried
        again with the same cmid after the client's own first retry pause (G3), as
        ``zchat say`` does; any other error, or no answer in REQUEST_DEADLINE_S, fails."""
        try:
            await self._post()
        finally:
            self.changed.set()  # a sender that ended wakes ``_until`` too

    async def _post(self) -> None:
        i = 0
        while not self.stop:
            kind = "dm" if self.dm else "msg"
            cmid, text = f"{self.client.name}-{kind}-{i}", f"{self.client.name} {kind} {i}"
            try:
                if self.dm:
                    dm = await asyncio.wait_for(self.client.dm(self.room, text, cmid=cmid),
                                                REQUEST_DEADLINE_S)
                    seq = dm.id
                else:
                    sent = await asyncio.wait_for(
                        self.client.send(self.room, text, cmid=cmid,
                                         retry_unavailable=False), REQUEST_DEADLINE_S)
                    seq = sent.seq
            except RequestFailed as exc:
                assert int(exc.status) == 503, exc
                self.refused.append(time.monotonic())
                self.reasons.add(exc.reason.split(":")[0])
                self.changed.set()
                await asyncio.sleep(UNAVAILABLE_RETRY_FIRST_S)  # the client's retry pause
                continue
            self.acked.append((cmid, text, seq, time.monotonic()))
            self.changed.set()
            i += 1


async def _until(senders: list[Sender], condition: Callable[[], bool], timeout_s: float,
                 what: str) -> float:
    """Wait until ``condition()`` holds, checking it after each outcome of a sender (they
    post without pause, so that is often); returns when it did (monotonic). Fails the
    test after ``timeout_s``, or when a sender ended (its error is raised later)."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise AssertionError(f"not within {timeout_s} s: {what}")
        for sender in senders:
            sender.changed.clear()
        waits = [asyncio.ensure_future(s.changed.wait()) for s in senders]
        try:
            await asyncio.wait(waits, timeout=remaining, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for wait in waits:
                wait.cancel()
    return time.monotonic()


async def _logged_in(harness: Harness, name: str) -> Client:
    client = harness.new_client()
    await client.connect()
    await client.register(name, "correct horse battery staple")
    await client.login(name, "correct horse battery staple")
    return client


@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_a_postgresql_restart_is_503_meanwhile_and_loses_no_acknowledged_message(
        durable_server: PostgresServer, mode: str) -> None:
    server = durable_server
    with server.database() as url, running_cluster(
            url, 2, send_rate_per_s=0, account_send_rate_per_s=0,
            cluster_check_s=0.5) as brokers:
        timings: dict[str, float] = {}

        async def scenario() -> list[Sender]:
            clients = [await _logged_in(h, n) for h, n in zip(brokers, ("alice", "bob"),
                                                                strict=True)]
            try:
                for client in clients:
                    await client.join("dev")
                senders = [Sender(c, "dev") for c in clients]
                dmers = [Sender(clients[0], "bob", dm=True), Sender(clients[1], "alice",
                                                                    dm=True)]
                senders += dmers
                tasks = [asyncio.create_task(s.run()) for s in senders]

                def each(test: Callable[[Sender], bool]) -> Callable[[], bool]:
                    """``test`` holds for every sender, or one of them ended."""
                    return lambda: all(test(s) for s in senders) \
                        or any(t.done() for t in tasks)

                def listening() -> bool:
                    links = [h.broker.cluster for h in brokers]
                    return all(link is not None and link.listener.connected
                               and link.listener.connects >= 2 for link in links)

                try:
                    await _until(senders, each(lambda s: len(s.acked) >= BEFORE), 30,
                                 "posting before")
                    started = time.monotonic()
                    await asyncio.to_thread(server.halt, mode)
                    timings["halted"] = time.monotonic() - started
                    await _until(senders, each(lambda s: bool(s.refused)), 30,
                                 "a 503 for each client while the database is down")
                    resuming = time.monotonic()
                    await asyncio.to_thread(server.resume)
                    ready = time.monotonic()
                    timings["down"] = ready - started
                    timings["start"] = ready - resuming
                    await _until(senders, each(lambda s: sum(a[3] > ready for a in s.acked)
                                               >= AFTER), 30, "posting after")
                    for sender in senders:
                        first_ok = min(a[3] for a in sender.acked if a[3] > ready)
                        timings[f"ok after ready {sender.client.name}"] = first_ok - ready
                        timings[f"503 span {sender.client.name}"] = \
                            max(sender.refused) - min(sender.refused)
                    relisten = await _until(senders, listening, 30, "listening again")
                    timings["listening again after ready"] = relisten - ready
                finally:
                    for sender in senders:
                        sender.stop = True
                    await asyncio.gather(*tasks)  # re-raises a sender's failure
                # delivery across the brokers works again: the last message through
                # broker 1 reaches bob on broker 2, and the other way round
                senders = senders[:2]
                for sender, other in ((senders[0], clients[1]), (senders[1], clients[0])):
                    last = sender.acked[-1][2]
                    await collect(other, is_(p.MessagePosted, room="dev", seq=last),
                                  timeout_s=20)
                return senders + dmers
            finally:
                for client in clients:
                    await client.close()

        senders = asyncio.run(asyncio.wait_for(scenario(), SCENARIO_S))
        print(f"\n{mode}: " + ", ".join(f"{k} {v:.3f} s" for k, v in timings.items())
              + f"; 503s {[len(s.refused) for s in senders]}"
              + f"; reasons {sorted(set().union(*(s.reasons for s in senders)))}")
        acked = [a for s in senders if not s.dm for a in s.acked]
        seqs = [seq for _cmid, _text, seq, _t in acked]
        assert len(seqs) == len(set(seqs)), "a seq was acknowledged twice"
        assert all(len(s.refused) >= 1 for s in senders)
        assert len(acked) >= 2 * (BEFORE + AFTER)
        _check_database(url, acked)
        _check_dms(url, [a for s in senders if s.dm for a in s.acked])
        # the brokers were back well within their retry bounds (store: 1 s at most
        # between attempts; LISTEN: at the first check after the store's reconnection)
        assert all(timings[f"ok after ready {n}"] < 2.0 for n in ("alice", "bob")), timings
        assert timings["listening again after ready"] < 4.0, timings


def _check_database(url: str,
                    acked: list[tuple[str, str, int, float]]) -> None:
    """Every acknowledged (cmid, text) is stored once under the seq it was acknowledged
    with; the room's seqs are 1..last_seq with no gap; no cmid is stored twice."""
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute("SELECT seq, cmid, text FROM messages WHERE room_key = 'dev' "
                          "ORDER BY seq").fetchall()
        last = db.execute("SELECT last_seq FROM rooms WHERE key = 'dev'").fetchone()
    assert last is not None
    assert [r[0] for r in rows] == list(range(1, last[0] + 1)), "a gap in the room's seqs"
    cmids = [r[1] for r in rows if r[1]]
    assert len(cmids) == len(set(cmids)), "a cmid stored twice"
    stored = {r[1]: (r[0], r[2]) for r in rows}
    for cmid, text, seq, _t in acked:
        assert stored.get(cmid) == (seq, text), f"acknowledged {cmid} as #{seq}, " \
                                                f"stored {stored.get(cmid)}"


def _check_dms(url: str, acked: list[tuple[str, str, int, float]]) -> None:
    """Every acknowledged DM is stored once under the id it was acknowledged with; no
    cmid is stored twice."""
    assert acked
    with psycopg.connect(url, autocommit=True) as db:
        rows = db.execute("SELECT id, cmid, text FROM direct_messages ORDER BY id").fetchall()
    cmids = [r[1] for r in rows]
    assert len(cmids) == len(set(cmids)), "a DM's cmid stored twice"
    stored = {r[1]: (r[0], r[2]) for r in rows}
    for cmid, text, dm_id, _t in acked:
        assert stored.get(cmid) == (dm_id, text), f"acknowledged {cmid} as {dm_id}, " \
                                                  f"stored {stored.get(cmid)}"
