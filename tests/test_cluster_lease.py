"""Leases, reaping, fencing and presence across a cluster (issue 16, docs/cluster.md
"Leases and fencing"): real PostgreSQL, real brokers — threads of this process
(zchat.testing.running_cluster) for the survivors, a real ``zchat broker`` process for the
broker that is killed or stopped — and raw SUB sockets counting PRESENCE events on each
surviving broker's PUB. Short leases (1 s, renewed every 0.2 s); every wait is on a
condition with a deadline."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zmq
from client_helpers import collect, is_, registered_and_logged_in

from zchat import wire as p
from zchat.client import Client
from zchat.client.events import ConnectionRestored, SessionEnded
from zchat.core.ports import BrokerIdInUse
from zchat.errors import ConnectionFailed, RequestFailed
from zchat.store import open_store
from zchat.testing import DEFAULT_PASSWORD, Harness, running_broker, running_cluster

LEASE = {"lease_s": 1.0, "lease_renew_s": 0.2}


def wait_for(what: str, check: Callable[[], bool], timeout_s: float = 15.0) -> None:
    """Poll ``check`` until true; fail naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        time.sleep(0.02)  # polling a condition, not waiting for a guess


class PresenceSub:
    """A raw SUB on one broker's PUB, subscribed to every account's presence."""

    def __init__(self, context: zmq.Context[Any], endpoint: str) -> None:
        self.sock = context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(endpoint)
        self.sock.setsockopt(zmq.SUBSCRIBE, p.TOPIC_PRESENCE_PREFIX)
        self.events: list[tuple[str, str, str]] = []

    def read_until(self, name: str, presence: str, timeout_s: float = 15.0
                   ) -> list[tuple[str, str, str]]:
        """Read events until (``name``, ``presence``) came; returns all read so far."""
        deadline = time.monotonic() + timeout_s
        while (name, presence) not in [(n, s) for n, s, _t in self.events]:
            left = deadline - time.monotonic()
            assert left > 0, f"no {presence} of {name} on the PUB; heard {self.events}"
            if self.sock.poll(int(left * 1000) + 1):
                event = p.decode_event(self.sock.recv_multipart())
                if isinstance(event, p.PresenceChanged):
                    self.events.append((event.name, event.presence, event.text))
        return self.events

    def close(self) -> None:
        self.sock.close(0)


@contextlib.contextmanager
def presence_subs(harnesses: list[Harness]) -> Iterator[list[PresenceSub]]:
    subs = [PresenceSub(h.context, h.broker.pub_endpoint) for h in harnesses]
    try:
        yield subs
    finally:
        for sub in subs:
            sub.close()


def run(coro: Any, timeout_s: float = 90.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def settle(subs: list[PresenceSub], marker: Client, harness: Harness,
                 name: str) -> None:
    """Log ``name`` in through ``harness`` and wait for its online on every SUB: what
    the PUBs carried before it is all there is (one PUB carries events in order)."""
    await registered_and_logged_in(marker, name)
    for sub in subs:
        await asyncio.to_thread(sub.read_until, name, "online")
    del harness


# -- presence across the cluster (in-process brokers) -------------------------------------


def test_presence_is_per_account_across_the_brokers(pg_url: str) -> None:
    with running_cluster(pg_url, 2, **LEASE) as (one, two), \
            presence_subs([one, two]) as subs:
        async def scenario() -> None:
            alice1 = await registered_and_logged_in(one.new_client(), "alice")
            for sub in subs:  # one online, on both PUBs (broker 2's relayed)
                await asyncio.to_thread(sub.read_until, "alice", "online")
            alice2 = await registered_and_logged_in(two.new_client(), "alice")
            # broker 2 answers WHO from the cluster: alice is online there anyway
            assert [u.name for u in (await alice2.who()).users] == ["alice"]
            await alice1.set_presence("away", "lunch")
            for sub in subs:
                await asyncio.to_thread(sub.read_until, "alice", "away")

            async def away_seen() -> bool:
                users = (await alice2.who()).users
                return [(u.name, u.presence, u.text) for u in users] == \
                    [("alice", "away", "lunch")]
            started = time.monotonic()
            while not await away_seen():  # broker 2's memory, from the relayed event
                assert time.monotonic() - started < 5
                await asyncio.sleep(0.01)
            await alice1.logout()  # her session on broker 2 keeps her online
            marker = await registered_and_logged_in(one.new_client(), "mark")
            for sub in subs:
                await asyncio.to_thread(sub.read_until, "mark", "online")
            await alice2.logout()  # the last one: offline, once on each PUB
            for sub in subs:
                await asyncio.to_thread(sub.read_until, "alice", "offline")
            await marker.logout()
            for sub in subs:
                events = await asyncio.to_thread(sub.read_until, "mark", "offline")
                alice = [(s, t) for n, s, t in events if n == "alice"]
                assert alice == [("online", ""), ("away", "lunch"), ("offline", "")], \
                    events
            for client in (alice1, alice2, marker):
                await client.close()

        run(scenario())


def test_two_brokers_logging_in_one_account_at_once_publish_one_online(
        pg_url: str) -> None:
    with running_cluster(pg_url, 2, **LEASE) as (one, two), \
            presence_subs([one, two]) as subs:
        async def scenario() -> None:
            setup = await registered_and_logged_in(one.new_client(), "alice")
            await setup.logout()
            for sub in subs:
                await asyncio.to_thread(sub.read_until, "alice", "offline")
                sub.events.clear()
            clients = [h.new_client() for _ in range(3) for h in (one, two)]
            for client in clients:
                await client.connect()
            await asyncio.gather(*(c.login("alice", DEFAULT_PASSWORD) for c in clients))
            await asyncio.gather(*(c.logout() for c in clients))
            marker = one.new_client()
            await settle(subs, marker, one, "mark")
            for sub in subs:
                alice = [s for n, s, _t in sub.events if n == "alice"]
                assert alice == ["online", "offline"], sub.events
            await marker.close()
            for client in clients:
                await client.close()

        run(scenario())


# -- reaping exactly once (the store's conditional UPDATE) -------------------------------


def test_two_brokers_reaping_one_dead_broker_take_its_sessions_once(pg_url: str) -> None:
    dead = open_store(pg_url)
    reapers = [open_store(pg_url), open_store(pg_url)]
    try:
        now_ms = int(time.time() * 1000)
        dead.create_account("alice", "alice", "alice", "x", now_ms)
        dead.create_account("bob", "bob", "bob", "x", now_ms)
        dead.register_broker("dead", 0.3, now_ms)
        dead.add_session("a1", "alice", None, "", now_ms)
        dead.add_session("b1", "bob", None, "", now_ms)
        reapers[0].register_broker("r1", 30, now_ms)
        reapers[1].register_broker("r2", 30, now_ms)
        reapers[1].add_session("b2", "bob", None, "", now_ms)  # bob is still on r2
        with psycopg.connect(pg_url, autocommit=True) as db:
            wait_for("the dead broker's lease expired", lambda: bool(db.execute(
                "SELECT lease_until < clock_timestamp() FROM brokers WHERE id = 'dead'"
            ).fetchone()[0]))  # type: ignore[index]
        results: list[Any] = [None, None]
        gate = threading.Barrier(2)

        def reap(index: int) -> None:
            store = reapers[index]
            store.begin_group()
            gate.wait(5)
            results[index] = store.reap_brokers(int(time.time() * 1000), 60_000)
            gate.wait(5)  # both looked before either commits
            store.commit_group()

        threads = [threading.Thread(target=reap, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        taken = [r for r in results if r[0]]
        assert len(taken) == 1, results
        assert taken[0] == ([("dead", 1)], ["alice"])  # bob has a session on r2
        assert [r for r in results if not r[0]] == [([], [])]
        with psycopg.connect(pg_url, autocommit=True) as db:
            rows = db.execute("SELECT token_sha256, broker_id FROM sessions "
                              "ORDER BY token_sha256").fetchall()
        assert rows == [("a1", ""), ("b1", ""), ("b2", "r2")]  # a1, b1 resumable
        assert not dead.renew_lease(0.3)  # fenced: its lease is gone for good
    finally:
        for store in (dead, *reapers):
            store.close()


# -- a real broker process, killed or stopped ---------------------------------------------


def free_port() -> int:
    for port in range(24000 + os.getpid() % 2000, 28000):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 24000-27999")


@contextlib.contextmanager
def broker_process(tmp_path: Path, url: str, broker_id: str) -> Iterator[
        tuple[subprocess.Popen[bytes], str, Path]]:
    """A ``zchat broker`` process on ``url`` with short leases, plain tcp on loopback;
    its process, ROUTER endpoint and log. Killed at the end whatever happened."""
    ports = [free_port()]
    with socket.socket() as hold:  # keep the first while the second is picked
        hold.bind(("127.0.0.1", ports[0]))
        ports.append(free_port())
    router, pub = (f"tcp://127.0.0.1:{port}" for port in ports)
    home = tmp_path / broker_id
    home.mkdir()
    config = home / "zchat.toml"
    config.write_text("[broker]\nencryption = \"none\"\nlease_s = 1.0\n"
                      "lease_renew_s = 0.2\nargon2_memory_kib = 1024\nargon2_time_cost = 1\n", encoding="utf-8")
    log = home / "broker.log"
    env = dict(os.environ, HOME=str(home), XDG_CONFIG_HOME=str(home / "config"),
               XDG_DATA_HOME=str(home / "data"), XDG_STATE_HOME=str(home / "state"))
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "zchat", "broker", "--config", str(config), "--store",
             url, "--data-dir", str(home / "data"), "--id", broker_id, "--router", router,
             "--pub", pub], stdout=out, stderr=subprocess.STDOUT, env=env)
    try:
        wait_for(f"broker {broker_id} started",
                 lambda: proc.poll() is not None or "lease taken" in log.read_text())
        assert proc.poll() is None, log.read_text()
        yield proc, router, log
    finally:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGCONT)
            proc.kill()
        proc.wait(10)


async def drain_events(client: Client, timeout_s: float = 5.0) -> list[Any]:
    """``client``'s events until its stream ends (after SessionEnded) or ``timeout_s``."""
    events: list[Any] = []
    deadline = asyncio.get_running_loop().time() + timeout_s
    while (left := deadline - asyncio.get_running_loop().time()) > 0:
        event = await client.next_event(left)
        if event is None:
            break
        events.append(event)
    return events


def plain_client(router: str, context: zmq.Context[Any]) -> Client:
    return Client(router, context=context, timeout_s=5.0, encryption="none")


def test_a_killed_brokers_sessions_are_reaped_once_with_one_offline_each(
        pg_url: str, tmp_path: Path) -> None:
    with running_cluster(pg_url, 2, **LEASE) as (two, three), \
            broker_process(tmp_path, pg_url, "victim") as (proc, router, _log), \
            presence_subs([two, three]) as subs:
        async def scenario() -> None:
            alice = await registered_and_logged_in(plain_client(router, two.context), "alice")
            bob_there = await registered_and_logged_in(plain_client(router, two.context), "bob")
            bob_here = await registered_and_logged_in(two.new_client(), "bob")
            for sub in subs:
                await asyncio.to_thread(sub.read_until, "alice", "online")
                await asyncio.to_thread(sub.read_until, "bob", "online")
            proc.kill()  # SIGKILL: no goodbye, its lease just stops being renewed
            await asyncio.to_thread(wait_for, "the victim's sessions reaped", lambda: any(
                h.broker.cluster is not None and h.broker.cluster.reaped
                for h in (two, three)))
            for sub in subs:
                await asyncio.to_thread(sub.read_until, "alice", "offline")
            marker = three.new_client()
            await settle(subs, marker, three, "mark")
            reaped = [r for h in (two, three) if h.broker.cluster is not None
                      for r in h.broker.cluster.reaped]
            assert reaped == [("victim", 1)]  # by one broker, once
            for sub in subs:
                assert [(n, s) for n, s, _t in sub.events if n in ("alice", "bob")] == \
                    [("alice", "online"), ("bob", "online"), ("alice", "offline")], \
                    sub.events
            for client in (marker, bob_here, alice, bob_there):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5)

        run(scenario())


def test_a_stopped_broker_finds_itself_fenced_and_acknowledges_nothing(
        pg_url: str, tmp_path: Path) -> None:
    with running_cluster(pg_url, 1, **LEASE) as (two,), \
            broker_process(tmp_path, pg_url, "sleeper") as (proc, router, log), \
            presence_subs([two]) as subs:
        async def scenario() -> None:
            alice = await registered_and_logged_in(plain_client(router, two.context), "alice")
            await alice.join("dev")
            before = (await alice.send("dev", "before the stop")).seq
            await asyncio.to_thread(subs[0].read_until, "alice", "online")
            proc.send_signal(signal.SIGSTOP)
            try:
                await asyncio.to_thread(
                    wait_for, "the sleeper's sessions reaped",
                    lambda: two.broker.cluster is not None and bool(
                        two.broker.cluster.reaped))
                await asyncio.to_thread(subs[0].read_until, "alice", "offline")
            finally:
                proc.send_signal(signal.SIGCONT)
            with pytest.raises(RequestFailed) as refused:
                await alice.send("dev", "after the stop")
            assert refused.value.status in (401, 503), refused.value
            await asyncio.to_thread(wait_for, "the fencing logged",
                                    lambda: "fenced out" in log.read_text())
            await asyncio.to_thread(wait_for, "a fresh lease",
                                    lambda: "epoch 2" in log.read_text())
            # alice's client does not reconnect: it is told its session is gone (a
            # second tester's went on hearing room events with no session)
            if alice.connected:
                with contextlib.suppress(RequestFailed, ConnectionFailed):
                    await alice.ping()
            ended = [e for e in await drain_events(alice) if isinstance(e, SessionEnded)]
            assert len(ended) == 1, ended
            assert "no longer knows this session" in ended[0].reason, ended
            with psycopg.connect(pg_url, autocommit=True) as db:
                row = db.execute("SELECT last_seq FROM rooms WHERE key = 'dev'").fetchone()
            assert row == (before,)  # nothing stored on stale state
            # nothing stale published: the sleeper's own offline for alice never came,
            # broker 2's did, once
            marker = two.new_client()
            await settle(subs, marker, two, "mark")
            assert [s for n, s, _t in subs[0].events if n == "alice"] == \
                ["online", "offline"], subs[0].events
            for client in (marker, alice):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5)

        run(scenario())


# -- one id, one broker (a tester's two brokers with one --id knocked each other out) ------


def test_an_id_held_by_another_live_owner_is_refused_the_same_owner_takes_it_back(
        pg_url: str) -> None:
    first, second = open_store(pg_url), open_store(pg_url)
    try:
        now_ms = int(time.time() * 1000)
        assert first.register_broker("chat-a", 30, now_ms, "owner-1")[0] == 1
        with pytest.raises(BrokerIdInUse, match="'chat-a' is in use by another broker"):
            second.register_broker("chat-a", 30, now_ms, "owner-2")
        assert first.renew_lease(30)  # the refusal changed nothing of the first's lease
        # the same owner (a crashed broker restarted within its lease) takes it back
        assert second.register_broker("chat-a", 30, now_ms, "owner-1")[0] == 2
        # a lease that expired can be taken by anyone
        first.register_broker("chat-b", 0.2, now_ms, "owner-1")
        with psycopg.connect(pg_url, autocommit=True) as db:
            wait_for("chat-b's lease expired", lambda: bool(db.execute(
                "SELECT lease_until < clock_timestamp() FROM brokers WHERE id = 'chat-b'"
            ).fetchone()[0]))  # type: ignore[index]
        assert second.register_broker("chat-b", 30, now_ms, "owner-2")[0] == 2
    finally:
        first.close()
        second.close()


def test_a_second_broker_process_with_the_same_id_is_refused_and_the_first_serves_on(
        pg_url: str, tmp_path: Path) -> None:
    with broker_process(tmp_path, pg_url, "chat-x") as (proc, router, log):
        other = tmp_path / "other"
        other.mkdir()
        config = other / "zchat.toml"
        config.write_text("[broker]\nencryption = \"none\"\n", encoding="utf-8")
        router_port = free_port()
        with socket.socket() as hold:  # keep the first while the second is picked
            hold.bind(("127.0.0.1", router_port))
            pub_port = free_port()
        result = subprocess.run(
            [sys.executable, "-m", "zchat", "broker", "--config", str(config), "--store",
             pg_url, "--id", "chat-x", "--data-dir", str(other / "data"), "--router",
             f"tcp://127.0.0.1:{router_port}", "--pub", f"tcp://127.0.0.1:{pub_port}"],
            capture_output=True, text=True, timeout=60,
            env=dict(os.environ, HOME=str(other), XDG_CONFIG_HOME=str(other / "config"),
                     XDG_DATA_HOME=str(other / "xdg-data")))
        assert result.returncode == 1, result
        lines = [line for line in result.stderr.splitlines() if "error" in line]
        assert lines[-1].startswith("zchat: error: broker id 'chat-x' is in use by "
                                    "another broker of the cluster"), result.stderr
        assert not (other / "data").exists()  # a refused start leaves nothing behind
        assert "router" not in result.stdout, result.stdout  # no start banner first
        # nor a line saying it listens for a cluster it was refused from (a 4th tester's)
        assert "listening for the other brokers" not in result.stderr, result.stderr
        assert proc.poll() is None and "fenced" not in log.read_text()

        async def still_serves() -> None:
            async with plain_client(router, zmq.Context.instance()) as client:
                await client.register("yara", DEFAULT_PASSWORD)
                await client.login("yara", DEFAULT_PASSWORD)

        run(still_serves())


# -- the grace of a session let go (no blink when its client moves or its broker restarts) --


def test_a_row_let_go_counts_as_held_for_the_grace_then_one_broker_says_offline(
        pg_url: str) -> None:
    stopping, others = open_store(pg_url), [open_store(pg_url), open_store(pg_url)]
    try:
        now_ms = int(time.time() * 1000)
        stopping.create_account("alice", "alice", "alice", "x", now_ms)
        for store in (stopping, *others):
            store.presence_grace_ms = 600
        stopping.register_broker("a", 30, now_ms, "owner-a")
        stopping.add_session("a1", "alice", None, "", now_ms)
        stopping.release_lease(now_ms)  # a clean stop: the row is let go
        assert others[0].sessions_held("alice") == 1  # still counts: no offline yet
        assert others[0].due_offline(int(time.time() * 1000)) == []
        wait_for("the grace passed", lambda: others[0].sessions_held("alice") == 0)
        due_at = int(time.time() * 1000)
        results: list[Any] = [None, None]
        gate = threading.Barrier(2)

        def look(index: int) -> None:
            store = others[index]
            store.begin_group()
            gate.wait(5)
            results[index] = store.due_offline(due_at)
            store.commit_group()

        threads = [threading.Thread(target=look, args=(i,)) for i in range(2)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert sorted(results, key=len) == [[], ["alice"]]  # one offline, by one broker
        assert others[0].due_offline(int(time.time() * 1000)) == []  # and never again
        row = others[0].session("a1")
        assert row is not None and row.released_ms < 0  # decided, still resumable
    finally:
        for store in (stopping, *others):
            store.close()


def test_a_client_that_moves_off_a_stopped_broker_makes_no_blink(pg_url: str) -> None:
    """A clean stop (a rolling upgrade's step): alice's client moves to broker 2 and
    RESUMEs; broker 2's PUB carries nothing for her. Bob, whose client does not come
    back, goes offline once, after the grace (lease_s)."""
    with contextlib.ExitStack() as first, running_cluster(pg_url, 1, **LEASE) as (two,), \
            presence_subs([two]) as subs:
        one = first.enter_context(running_broker(pg_url, id="broker-x", **LEASE))

        async def scenario() -> None:
            alice = await registered_and_logged_in(
                Client([one.server, two.server], context=one.context, reconnect=True,
                       timeout_s=2.0), "alice")
            bob = await registered_and_logged_in(one.new_client(), "bob")
            for name in ("alice", "bob"):
                await asyncio.to_thread(subs[0].read_until, name, "online")
            first.close()  # broker 1 stops: GOING_AWAY, its rows let go
            await collect(alice, is_(ConnectionRestored), timeout_s=15)
            assert alice.server == two.server
            await asyncio.to_thread(subs[0].read_until, "bob", "offline")
            marker = two.new_client()
            await settle(subs, marker, two, "mark")
            assert [(n, s) for n, s, _t in subs[0].events if n in ("alice", "bob")] == \
                [("alice", "online"), ("bob", "online"), ("bob", "offline")], subs[0].events
            for client in (marker, alice, bob):
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(client.close(), 5)

        run(scenario())


# -- a fenced broker holds no session (a third tester's ghost session) --------------------


def raw_call(sock: zmq.Socket[Any], request: p.Request) -> tuple[bytes, bytes]:
    """Send ``request`` on a raw DEALER; its reply's (kind, body): b"OK" or b"ERROR"."""
    sock.send_multipart(p.encode_request(b"r1", request))
    assert sock.poll(10_000), f"no reply to {request.TYPE}"
    frames = sock.recv_multipart()
    return frames[2], frames[-1]


def test_a_fenced_broker_answers_a_resume_503_and_keeps_no_session_of_it(
        pg_url: str) -> None:
    """A broker fenced out and kept out (another owner holds its id), whose sessions
    were reaped, answers a RESUME of one of them 503, and the core it rebuilds after that failed commit
    holds no session: before the fix the rebuilt core adopted the session the refused
    RESUME had made, whose later eviction published a second offline."""
    with running_cluster(pg_url, 1, **LEASE) as (one,):
        broker = one.broker
        sock = one.context.socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(one.server)
        try:
            assert raw_call(sock, p.Register(name="alice", password=DEFAULT_PASSWORD))[0] \
                == b"OK"
            kind, body = raw_call(sock, p.Login(name="alice", password=DEFAULT_PASSWORD))
            assert kind == b"OK", body
            token = p.decode_body(p.LoggedIn, body).session
            assert len(broker.core.sessions) == 1
            # another owner takes the id under a long lease: the broker is fenced at its
            # next renewal and cannot take the id back (BrokerIdInUse) while this lasts
            with psycopg.connect(pg_url, autocommit=True) as db:
                db.execute("UPDATE brokers SET epoch = epoch + 1, owner = 'thief', "
                           "lease_until = clock_timestamp() + interval '1 hour' "
                           "WHERE id = 'broker-1'")
                # as a reaper does: its session rows are let go, resumable anywhere
                db.execute("UPDATE sessions SET broker_id = '', broker_epoch = 0, "
                           "released_ms = %s WHERE broker_id = 'broker-1'",
                           (time.time_ns() // 1_000_000,))
            cluster = broker.cluster
            assert cluster is not None
            wait_for("broker-1 fenced", lambda: cluster.fenced)
            assert len(broker.core.sessions) == 0
            failures = broker.failed_commits
            kind, body = raw_call(sock, p.Resume(session=token))
            assert kind == b"ERROR" and b"503" in body, body
            assert broker.failed_commits > failures  # the RESUME's commit failed (and maybe
            # a periodic one of the fenced broker)
            assert cluster.fenced
            assert len(broker.core.sessions) == 0 and not broker.core.by_token, \
                list(broker.core.sessions.values())
        finally:
            sock.close(0)
            with psycopg.connect(pg_url, autocommit=True) as db:  # the id back for others
                db.execute("DELETE FROM brokers WHERE id = 'broker-1'")
