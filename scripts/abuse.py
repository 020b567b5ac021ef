#!/usr/bin/env python3
"""Run zchat's abuse scenarios against a real broker and print what each attack costs.

    python scripts/abuse.py                      # every attack, ~10 s each
    python scripts/abuse.py --only 1,7 --seconds 5
    python scripts/abuse.py --markdown           # also the table for docs/security.md

Each attack (issue 14, "Proof") gets a fresh ``zchat broker`` subprocess with default
settings and CURVE on tcp, as shipped, its own data directory under a temporary directory,
and ports from ``--base-port`` (7300) up. An honest client, a separate process
(``--honest``) speaking the protocol on a raw DEALER from 127.0.0.2, is logged in and
sends PING every 50 ms and a LOGIN on a new connection every second while the attack
runs; a PING or LOGIN that never comes back within the attack counts as the whole attack
duration. Per attack the harness prints the honest PING p50/p99, the LOGIN p50/max, the
broker's peak RSS (VmHWM) and what the attacker got.

Attacks (``--only`` takes these ids, or a number for all its letters: ``2`` = 2a,2b):
  0   baseline: no attack
  1   key service: one message of millions of empty frames
  2a  HISTORY pages of 500 x 4 KB pipelined, never read
  2b  ROOMS pipelined on a broker with 2,000 rooms, never read
  3a  SET_PASSWORD guessing with a session token (RESUME) from new connections
  3b  the password-hash pool kept full from 127.0.0.1 while honest LOGINs wait
  4a  SET_PRESENCE flood (away texts)
  4b  SET_PRESENCE flood from a server-wide muted account
  5a  many LOGINs of one account, each with a fresh SEND burst
  5b  room creation by one account (JOIN/PART of new rooms over many sessions)
  6   thousands of idle TCP connections to ROUTER and PUB from many 127.x.y.z
  7   one message of 2,000,000 empty frames to the ROUTER over CURVE
  8   hundreds of CURVE SUBs to the PUB that never read, while a room is busy
  9   junk fuzzers on short-lived CURVE connections (4 processes; the broker's size after)

Only 2a/2b's fill phase runs a broker with send_rate_per_s = 0, room limits off (then stopped
and a broker with default settings is started on the same data directory for the attack).
Attack 6 runs its broker with ``ulimit -n`` lowered to ``--nofile`` (1024) so that its
1,500 connections reach the limit, the scaled form of 22,500 connections against 20,000.
A watchdog stops an attack when the broker's RSS passes ``--rss-cap-mb`` (3000).

Exit code 0 unless the harness itself failed (a broker that would not start, an honest
client that could not log in).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import resource
import select
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import zmq  # noqa: E402

from benchmarks.harness import (  # noqa: E402
    BrokerHandle,
    free_port,
    percentile,
    run_broker,
    stop_children,
)
from zchat import wire as p  # noqa: E402

HONEST_SOURCE = "127.0.0.2"   # the honest client's address: its own login bucket
ATTACK_SOURCE = "127.0.0.1"
PASSWORD = "correct horse battery"
TEXT_4K = "x" * 4000          # the default max_text_bytes
PING_EVERY_S = 0.05
LOGIN_EVERY_S = 1.0
#: Broker settings of every attack broker: the shipped defaults, quieter logs.
ATTACK_SETTINGS: dict[str, Any] = {"log_level": "warning"}
#: Fill phase only (2a, 2b): no sending or login limits, cheap hashes.
FILL_SETTINGS: dict[str, Any] = {"log_level": "warning", "send_rate_per_s": 0,
                                 "login_rate_per_s": 0, "room_create_rate_per_s": 0,
                                 "max_rooms_created": 0, "argon2_memory_kib": 1024,
                                 "argon2_time_cost": 1}


# -- wire helpers ---------------------------------------------------------------------------


def status_of(frames: list[bytes]) -> int:
    """200 for an OK reply, the ERROR's status otherwise; 0 for a push or junk."""
    if len(frames) != 4 or frames[1] == b"":
        return 0
    if frames[2] == b"OK":
        return 200
    try:
        return int(json.loads(frames[3]).get("status", 0))
    except ValueError:
        return 0


def body_of(frames: list[bytes]) -> dict[str, Any]:
    return dict(json.loads(frames[3])) if len(frames) == 4 and frames[3] else {}


class Conn:
    """A raw DEALER on the broker's ROUTER from ``source`` (a loopback address), CURVE
    when ``server_key`` is set. ``call`` waits for one reply; ``send`` pipelines."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, server_key: bytes | None,
                 source: str = ATTACK_SOURCE, **options: int) -> None:
        self.sock = ctx.socket(zmq.DEALER)
        self.sock.linger = 0
        for name, value in options.items():
            self.sock.setsockopt(getattr(zmq, name.upper()), value)
        if server_key is not None:
            public, secret = zmq.curve_keypair()
            self.sock.curve_serverkey = server_key
            self.sock.curve_publickey, self.sock.curve_secretkey = public, secret
        self.sock.connect(f"tcp://{source}:0;{endpoint.removeprefix('tcp://')}")
        self.n = 0

    def send(self, req: p.Request, flags: int = 0) -> bytes:
        self.n += 1
        rid = str(self.n).encode()
        self.sock.send_multipart(p.encode_request(rid, req), flags)
        return rid

    def recv(self, timeout_s: float) -> list[bytes] | None:
        if self.sock.poll(int(timeout_s * 1000)):
            return list(self.sock.recv_multipart())
        return None

    def call(self, req: p.Request, timeout_s: float = 10.0) -> list[bytes]:
        """Send ``req`` and return its reply's frames (pushes skipped). Raises
        TimeoutError when none comes within ``timeout_s``."""
        rid = self.send(req)
        deadline = time.monotonic() + timeout_s
        while (left := deadline - time.monotonic()) > 0:
            frames = self.recv(left)
            if frames is not None and len(frames) == 4 and frames[1] == rid:
                return frames
        raise TimeoutError(f"{req.TYPE}: no reply within {timeout_s} s")

    def ok(self, req: p.Request, timeout_s: float = 10.0) -> dict[str, Any]:
        frames = self.call(req, timeout_s)
        if status_of(frames) != 200:
            raise RuntimeError(f"{req.TYPE}: {body_of(frames)}")
        return body_of(frames)

    def close(self) -> None:
        self.sock.close(0)


def rotating_sources(start: int) -> Iterator[str]:
    """Loopback addresses 127.S.y.z, S >= ``start``: one machine, many login buckets."""
    for second in range(start, 255):
        for third in range(0, 256):
            for fourth in range(1, 255):
                yield f"127.{second}.{third}.{fourth}"


# -- the honest client (a separate process: python scripts/abuse.py --honest JSON) ---------


def honest_main(conf: dict[str, Any]) -> int:
    """Register (once) and log in from 127.0.0.2, print "ready", wait for "go" on stdin,
    then for ``seconds`` send PING every 50 ms on the logged-in connection and a LOGIN on
    a new connection every second; print one JSON line of round trips (ms)."""
    ctx: zmq.Context[Any] = zmq.Context()
    key = conf["key"].encode() if conf["key"] else None
    main = Conn(ctx, conf["router"], key, HONEST_SOURCE)
    logins: dict[zmq.Socket[Any], tuple[Conn, float]] = {}
    try:
        reg = main.call(p.Register(name=conf["name"], password=PASSWORD), 60.0)
        if status_of(reg) not in (200, 409):
            raise RuntimeError(f"honest REGISTER: {body_of(reg)}")
        main.ok(p.Login(name=conf["name"], password=PASSWORD), 60.0)
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            return 0
        seconds = float(conf["seconds"])
        start = time.monotonic()
        end = start + seconds
        pings: dict[bytes, float] = {}
        ping_ms: list[float] = []
        login_ms: list[float] = []
        login_errors: dict[str, int] = {}
        next_ping = next_login = start
        poller = zmq.Poller()
        poller.register(main.sock, zmq.POLLIN)
        while (now := time.monotonic()) < end:
            if now >= next_ping:
                pings[main.send(p.Ping())] = now
                next_ping += PING_EVERY_S
            if now >= next_login:
                conn = Conn(ctx, conf["router"], key, HONEST_SOURCE)
                conn.send(p.Login(name=conf["name"], password=PASSWORD))
                logins[conn.sock] = (conn, now)
                poller.register(conn.sock, zmq.POLLIN)
                next_login += LOGIN_EVERY_S
            wait_ms = max(0.0, min(next_ping, next_login, end) - time.monotonic()) * 1000
            for sock, _ in poller.poll(int(wait_ms)):
                frames = list(sock.recv_multipart())
                got = time.monotonic()
                if sock is main.sock:
                    sent = pings.pop(frames[1], None) if len(frames) == 4 else None
                    if sent is not None:
                        ping_ms.append((got - sent) * 1000)
                elif len(frames) == 4 and frames[1]:
                    conn, sent = logins.pop(sock)
                    poller.unregister(sock)
                    status = status_of(frames)
                    if status == 200:
                        login_ms.append((got - sent) * 1000)
                        with contextlib.suppress(zmq.ZMQError):
                            conn.send(p.Logout(), zmq.NOBLOCK)
                    else:
                        login_errors[str(status)] = login_errors.get(str(status), 0) + 1
                    conn.sock.close(200)
        print(json.dumps({"ping_ms": ping_ms, "ping_lost": len(pings),
                          "pings": len(ping_ms) + len(pings), "login_ms": login_ms,
                          "login_lost": len(logins), "login_errors": login_errors,
                          "seconds": seconds}), flush=True)
        return 0
    finally:
        for conn, _ in logins.values():
            conn.close()
        main.close()
        ctx.term()


# -- one attack run -------------------------------------------------------------------------


@dataclass
class Run:
    """What an attack function gets: the broker, the zmq context, the time it may take,
    and ``stop`` (set by the RSS watchdog or Ctrl-C; attacks poll ``over()``)."""

    ctx: zmq.Context[Any]
    broker: BrokerHandle
    seconds: float
    stop: threading.Event
    deadline: float = 0.0
    got: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def key(self) -> bytes | None:
        return self.broker.public_key

    def over(self) -> bool:
        return self.stop.is_set() or time.monotonic() >= self.deadline

    def wait(self) -> None:
        """Idle until the attack's time is up (the broker is working meanwhile)."""
        while not self.over():
            time.sleep(0.05)

    def conn(self, source: str = ATTACK_SOURCE, **options: int) -> Conn:
        return Conn(self.ctx, self.broker.router, self.key, source, **options)

    def login(self, name: str, source: str = ATTACK_SOURCE, register: bool = False,
              **options: int) -> tuple[Conn, str]:
        """A connection logged in as ``name`` (registered first when asked); returns it
        with the session token."""
        conn = self.conn(source, **options)
        if register:
            conn.ok(p.Register(name=name, password=PASSWORD), 60.0)
        body = conn.ok(p.Login(name=name, password=PASSWORD), 60.0)
        return conn, str(body["session"])


@dataclass
class Attack:
    id: str
    title: str
    #: Runs before the attack broker starts, on its data directory (a fill phase).
    prepare: Callable[[Path, dict[str, str], zmq.Context[Any]], None] | None
    #: Sets up (before "go") and returns the attack proper, which runs until run.over().
    setup: Callable[[Run], Callable[[], None]]
    settings: dict[str, Any] = field(default_factory=dict)
    nofile: int = 0


def _fill(data_dir: Path, endpoints: dict[str, str], body: Callable[[BrokerHandle], None]
          ) -> None:
    handle = start_broker(data_dir, FILL_SETTINGS, endpoints)
    try:
        body(handle)
    finally:
        handle.stop()


def _pipeline(conn: Conn, requests: Iterator[p.Request], window: int = 200) -> dict[int, int]:
    """Send every request keeping ``window`` in flight; returns {status: count}."""
    statuses: dict[int, int] = {}
    in_flight = 0
    for req in requests:
        conn.send(req)
        in_flight += 1
        while in_flight >= window:
            frames = conn.recv(30.0)
            if frames is None:
                raise TimeoutError("fill: no reply")
            if frames[1]:
                statuses[status_of(frames)] = statuses.get(status_of(frames), 0) + 1
                in_flight -= 1
    while in_flight:
        frames = conn.recv(30.0)
        if frames is None:
            raise TimeoutError("fill: no reply")
        if frames[1]:
            statuses[status_of(frames)] = statuses.get(status_of(frames), 0) + 1
            in_flight -= 1
    return statuses


# 0 ------------------------------------------------------------------------------------------

def setup_baseline(run: Run) -> Callable[[], None]:
    def attack() -> None:
        run.wait()
        run.got = "nothing (no attack)"
    return attack


# 1 ------------------------------------------------------------------------------------------

def setup_key_frames(run: Run) -> Callable[[], None]:
    frames = int(min(6_000_000, 200_000 * run.seconds))
    sock = run.ctx.socket(zmq.DEALER)
    sock.linger = 0
    sock.sndhwm = 0
    sock.connect(f"tcp://{ATTACK_SOURCE}:0;{run.broker.key_endpoint.removeprefix('tcp://')}")

    def attack() -> None:
        try:
            started = time.monotonic()
            sent = 0
            for _ in range(frames - 1):
                sock.send(b"", zmq.SNDMORE)
                sent += 1
                if sent % 100_000 == 0 and run.over():
                    break
            sock.send(b"")
            took = time.monotonic() - started
            replies = 0
            while not run.over():
                if sock.poll(50):
                    sock.recv_multipart()
                    replies += 1
            run.got = (f"sent one message of {sent + 1:,} empty frames in {took:.1f} s; "
                       f"{replies} replies")
        finally:
            sock.close(0)
    return attack


# 2a -----------------------------------------------------------------------------------------

def prepare_history(data_dir: Path, endpoints: dict[str, str], ctx: zmq.Context[Any]) -> None:
    def body(handle: BrokerHandle) -> None:
        conn = Conn(ctx, handle.router, handle.public_key)
        try:
            conn.ok(p.Register(name="filler", password=PASSWORD))
            conn.ok(p.Login(name="filler", password=PASSWORD))
            conn.ok(p.Join(room="big"))
            statuses = _pipeline(conn, (p.Send(room="big", text=TEXT_4K) for _ in range(500)))
            if statuses != {200: 500}:
                raise RuntimeError(f"fill: {statuses}")
        finally:
            conn.close()
    _fill(data_dir, endpoints, body)


def setup_history(run: Run) -> Callable[[], None]:
    conn, _ = run.login("hog", register=True, rcvhwm=1, rcvbuf=4096)
    conn.ok(p.Join(room="big"))
    page = conn.call(p.FetchHistory(room="big", limit=p.MAX_HISTORY_LIMIT))
    page_bytes = len(page[3])

    def attack() -> None:
        sent = _never_reading(run, conn, p.FetchHistory(room="big", limit=p.MAX_HISTORY_LIMIT))
        run.got = (f"{sent:,} HISTORY requests of 500 x 4 KB sent, none read "
                   f"(one reply is {page_bytes / 1e6:.1f} MB)")
    return attack


def _never_reading(run: Run, conn: Conn, req: p.Request) -> int:
    """Send ``req`` on ``conn`` over and over until the attack is over, reading nothing;
    close ``conn``; return how many were sent."""
    try:
        sent = 0
        while not run.over():
            try:
                conn.send(req, zmq.NOBLOCK)
                sent += 1
            except zmq.Again:
                time.sleep(0.01)
            if sent % 100 == 0:
                time.sleep(0.001)
        return sent
    finally:
        conn.close()


# 2b -----------------------------------------------------------------------------------------

ROOMS_FILL = 2000


def prepare_rooms(data_dir: Path, endpoints: dict[str, str], ctx: zmq.Context[Any]) -> None:
    def body(handle: BrokerHandle) -> None:
        per_account = p.MAX_ROOMS_PER_ACCOUNT - 1  # lobby is one of them
        for n in range(0, ROOMS_FILL, per_account):
            conn = Conn(ctx, handle.router, handle.public_key)
            try:
                name = f"builder{n}"
                conn.ok(p.Register(name=name, password=PASSWORD))
                conn.ok(p.Login(name=name, password=PASSWORD))
                rooms = (p.Join(room=f"room{i}") for i in range(n, min(ROOMS_FILL,
                                                                       n + per_account)))
                statuses = _pipeline(conn, rooms)
                if set(statuses) != {200}:
                    raise RuntimeError(f"fill: {statuses}")
            finally:
                conn.close()
    _fill(data_dir, endpoints, body)


def setup_rooms(run: Run) -> Callable[[], None]:
    conn, _ = run.login("lister", register=True, rcvhwm=1, rcvbuf=4096)
    reply = conn.call(p.ListRooms())
    count, size = len(body_of(reply).get("rooms", [])), len(reply[3])

    def attack() -> None:
        sent = _never_reading(run, conn, p.ListRooms())
        run.got = (f"{sent:,} ROOMS requests sent, none read (one reply lists "
                   f"{count:,} rooms, {size / 1e3:.0f} kB)")
    return attack


# 3a / 3b ------------------------------------------------------------------------------------

GUESSES_PER_CONN = 31  # one more than the login burst (30)


def _guessing(run: Run, sessions: list[str], label: str) -> Callable[[], None]:
    """Each session token in ``sessions`` is RESUMEd on a fresh connection which pipelines
    GUESSES_PER_CONN wrong SET_PASSWORDs; when all are answered, a new connection takes
    the session over. Counts the answers by status."""
    statuses: dict[int, int] = {}

    def attack() -> None:
        active: dict[zmq.Socket[Any], tuple[Conn, str, int]] = {}
        connections = 0
        poller = zmq.Poller()

        def open_one(session: str) -> None:
            nonlocal connections
            conn = run.conn()
            conn.send(p.Resume(session=session))
            for i in range(GUESSES_PER_CONN):
                conn.send(p.SetPassword(old=f"guess-{connections}-{i}", new=PASSWORD + "!"))
            connections += 1
            active[conn.sock] = (conn, session, GUESSES_PER_CONN + 1)
            poller.register(conn.sock, zmq.POLLIN)

        try:
            for session in sessions:
                open_one(session)
            while not run.over():
                for sock, _ in poller.poll(50):
                    conn, session, left = active[sock]
                    frames = list(sock.recv_multipart())
                    if len(frames) != 4 or not frames[1]:
                        continue
                    if frames[2] == b"OK" and frames[1] == b"1":
                        left -= 1  # the RESUME
                    else:
                        status = status_of(frames)
                        if status == 401 and b"log in before" in frames[3]:
                            status = 0  # no session here (its RESUME was refused): no guess
                        statuses[status] = statuses.get(status, 0) + 1
                        left -= 1
                    if left:
                        active[sock] = (conn, session, left)
                    else:
                        poller.unregister(sock)
                        del active[sock]
                        conn.close()
                        open_one(session)
        finally:
            for conn, _, _ in active.values():
                conn.close()
        guesses = statuses.get(401, 0)
        others = ", ".join(f"{s or 'no session'}: {n:,}"
                           for s, n in sorted(statuses.items()) if s != 401)
        run.got = (f"{guesses:,} password guesses checked ({guesses / run.seconds:.1f}/s; "
                   f"the limit means 30 then 0.5/s) over {connections:,} connections"
                   f"{label}; {others or 'no other replies'}")
    return attack


def setup_guess(run: Run) -> Callable[[], None]:
    conn, session = run.login("victim", register=True)
    conn.close()
    return _guessing(run, [session], "")


POOL_SESSIONS = 48  # 48 x 30 guesses in flight > MAX_PENDING_JOBS (1,024)


def setup_pool(run: Run) -> Callable[[], None]:
    sessions = []
    sources = rotating_sources(3)  # set-up only: each LOGIN from its own address
    conn = run.conn()
    conn.ok(p.Register(name="victim", password=PASSWORD), 60.0)
    conn.close()
    for _ in range(POOL_SESSIONS):
        conn, session = run.login("victim", next(sources))
        conn.close()
        sessions.append(session)
    return _guessing(run, sessions, f" in parallel ({POOL_SESSIONS} at once), all from "
                                    f"{ATTACK_SOURCE}")


# 4a / 4b ------------------------------------------------------------------------------------

def _presence_flood(run: Run, conn: Conn, label: str) -> Callable[[], None]:
    sub = run.ctx.socket(zmq.SUB)
    sub.linger = 0
    if run.key is not None:
        public, secret = zmq.curve_keypair()
        sub.curve_serverkey, sub.curve_publickey, sub.curve_secretkey = run.key, public, secret
    sub.setsockopt(zmq.SUBSCRIBE, p.TOPIC_PRESENCE_PREFIX)
    sub.rcvhwm = 0
    sub.connect(run.broker.pub)

    def attack() -> None:
        statuses: dict[int, int] = {}
        events = 0
        in_flight = 0
        n = 0
        try:
            while not run.over():
                while in_flight < 100:
                    n += 1
                    conn.send(p.SetPresence(presence="away", text=f"away #{n} " + "z" * 180))
                    in_flight += 1
                if conn.sock.poll(20):
                    while True:
                        try:
                            frames = list(conn.sock.recv_multipart(zmq.NOBLOCK))
                        except zmq.Again:
                            break
                        if len(frames) == 4 and frames[1]:
                            in_flight -= 1
                            status = status_of(frames)
                            statuses[status] = statuses.get(status, 0) + 1
                while True:
                    try:
                        sub.recv_multipart(zmq.NOBLOCK)
                        events += 1
                    except zmq.Again:
                        break
        finally:
            conn.close()
            sub.close(0)
        accepted = statuses.get(200, 0)
        others = ", ".join(f"{s}: {k:,}" for s, k in sorted(statuses.items()) if s != 200)
        run.got = (f"{accepted:,} presence changes accepted{label} "
                   f"({accepted / run.seconds:,.0f}/s), {events:,} PRESENCE events "
                   f"read by one subscriber; {others or 'no refusals'}")
    return attack


def setup_presence(run: Run) -> Callable[[], None]:
    conn, _ = run.login("flapper", register=True)
    return _presence_flood(run, conn, "")


def prepare_admin(data_dir: Path, endpoints: dict[str, str], ctx: zmq.Context[Any]) -> None:
    """Create the admin account "boss" on the database, as an operator does."""
    csv = data_dir / "admin.csv"
    csv.write_text(f"name,password\nboss,{PASSWORD}\n")
    subprocess.run([sys.executable, "-m", "zchat", "admin", "create", "--csv", str(csv),
                    "--db", str(data_dir / "zchat.db")], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=60)


def setup_muted_presence(run: Run) -> Callable[[], None]:
    boss, _ = run.login("boss")
    conn, _ = run.login("mutey", register=True)
    boss.ok(p.Mute(name="mutey", room="", reason="abuse scenario"))
    boss.close()
    refused = status_of(conn.call(p.Send(room="lobby", text="hello?")))
    return _presence_flood(run, conn, f" from a muted account (its SEND: {refused})")


# 5a / 5b ------------------------------------------------------------------------------------

def _session_churn(run: Run, requests: Callable[[int], list[p.Request]],
                   count: Callable[[p.Request], bool]) -> tuple[dict[str, int], Callable[[], None]]:
    """LOGIN "churner" again and again, each time from a new loopback address, up to 8
    logins in flight; each new session pipelines ``requests(n)``. Tallies in the dict:
    logins, counted OKs (``count``), 429s, other errors."""
    tally = {"logins": 0, "ok": 0, "429": 0, "other": 0}
    conn = run.conn()
    conn.ok(p.Register(name="churner", password=PASSWORD), 60.0)
    conn.close()
    sources = rotating_sources(5)

    def attack() -> None:
        active: dict[zmq.Socket[Any], tuple[Conn, dict[bytes, p.Request]]] = {}
        poller = zmq.Poller()
        n = 0
        try:
            while not run.over():
                while sum(1 for c, reqs in active.values() if not reqs) < 8:
                    conn = run.conn(next(sources))
                    conn.send(p.Login(name="churner", password=PASSWORD))
                    active[conn.sock] = (conn, {})
                    poller.register(conn.sock, zmq.POLLIN)
                for sock, _ in poller.poll(50):
                    conn, pending = active[sock]
                    frames = list(sock.recv_multipart())
                    if len(frames) != 4 or not frames[1]:
                        continue
                    status = status_of(frames)
                    if not pending and frames[1] == b"1":  # the LOGIN
                        if status != 200:
                            tally["other"] += 1
                            poller.unregister(sock)
                            del active[sock]
                            conn.close()
                            continue
                        tally["logins"] += 1
                        n += 1
                        for req in requests(n):
                            pending[conn.send(req)] = req
                        continue
                    if frames[1] not in pending:
                        continue
                    req = pending.pop(frames[1])
                    if status == 200:
                        tally["ok"] += count(req)
                    elif status == 429:
                        tally["429"] += 1
                    elif count(req):  # not a PART of a room whose JOIN was refused
                        tally["other"] += 1
                    if not pending:
                        poller.unregister(sock)
                        del active[sock]
                        conn.close()
        finally:
            for conn, _ in active.values():
                conn.close()
    return tally, attack


def setup_send_bursts(run: Run) -> Callable[[], None]:
    tally, churn = _session_churn(
        run, lambda n: [p.Send(room="lobby", text=f"burst {n} #{i}") for i in range(25)],
        lambda req: True)

    def attack() -> None:
        churn()
        run.got = (f"{tally['ok']:,} messages stored ({tally['ok'] / run.seconds:,.0f}/s; "
                   f"one session is held to 5/s after 20) over {tally['logins']:,} LOGINs "
                   f"of one account from rotating 127.5.x.y; 429: {tally['429']:,}, "
                   f"other errors: {tally['other']:,}")
    return attack


def setup_room_creation(run: Run) -> Callable[[], None]:
    def requests(n: int) -> list[p.Request]:
        out: list[p.Request] = []
        for i in range(25):
            out += [p.Join(room=f"c{n}x{i}"), p.Part(room=f"c{n}x{i}")]
        return out

    tally, churn = _session_churn(run, requests, lambda req: isinstance(req, p.Join))

    def attack() -> None:
        churn()
        run.got = (f"{tally['ok']:,} rooms created by one account "
                   f"({tally['ok'] / run.seconds:,.0f}/s; JOIN/PART, 1,000 rooms at most "
                   f"at once) over {tally['logins']:,} LOGINs from rotating 127.5.x.y; "
                   f"429: {tally['429']:,}, other errors: {tally['other']:,}")
    return attack


# 6 ------------------------------------------------------------------------------------------

IDLE_CONNECTIONS = 1500


def setup_idle_connections(run: Run) -> Callable[[], None]:
    targets = []
    for endpoint in (run.broker.router, run.broker.pub):
        host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
        targets.append((host, int(port)))

    def attack() -> None:
        socks: list[socket.socket] = []
        refused = 0
        sources = rotating_sources(6)
        try:
            for i in range(IDLE_CONNECTIONS):
                if run.over():
                    break
                s = socket.socket()
                try:
                    s.bind((next(sources), 0))
                    s.settimeout(1.0)
                    s.connect(targets[i % 2])
                    socks.append(s)
                except OSError:
                    refused += 1
                    s.close()
            # a new client now: is it served?
            probe = run.conn(HONEST_SOURCE)
            started = time.monotonic()
            try:
                probe.call(p.Info(), max(1.0, run.deadline - started))
                served = f"answered in {(time.monotonic() - started) * 1000:,.0f} ms"
            except TimeoutError:
                served = "never answered"
            finally:
                probe.close()
            closed = sum(1 for s in socks if _peer_closed(s))
            run.wait()
            run.got = (f"{len(socks):,} idle TCP connections made, each from its own "
                       f"loopback address ({refused} failed, {closed} closed by the "
                       f"broker); a new client's INFO after them: {served}")
        finally:
            for s in socks:
                s.close()
    return attack


def _peer_closed(s: socket.socket) -> bool:
    poller = select.poll()  # not select.select: these descriptors go past 1024
    poller.register(s, select.POLLIN)
    if not poller.poll(0):
        return False
    try:
        return s.recv(1, socket.MSG_PEEK) == b""
    except OSError:
        return True


# 7 ------------------------------------------------------------------------------------------

def setup_curve_frames(run: Run) -> Callable[[], None]:
    frames = int(min(2_000_000, 200_000 * run.seconds))
    conn = run.conn(sndhwm=0)
    conn.ok(p.Info())  # the CURVE handshake is done

    def attack() -> None:
        try:
            started = time.monotonic()
            conn.sock.send(b"ZC1", zmq.SNDMORE)
            conn.sock.send(b"big", zmq.SNDMORE)
            for _ in range(frames - 3):
                conn.sock.send(b"", zmq.SNDMORE)
            conn.sock.send(b"")
            took = time.monotonic() - started
            answer = "no reply"
            while not run.over():
                reply = conn.recv(0.05)
                if reply is not None and len(reply) == 4 and reply[1] == b"big":
                    answer = (f"reply {status_of(reply)} after "
                              f"{time.monotonic() - started:.1f} s")
                    break
            run.wait()
            run.got = (f"sent one message of {frames:,} empty frames over CURVE in "
                       f"{took:.1f} s; {answer}")
        finally:
            conn.close()
    return attack


# 8 ------------------------------------------------------------------------------------------

SUBSCRIBERS = 300
SENDERS = 20


def setup_sleeping_subscribers(run: Run) -> Callable[[], None]:
    subs = []
    for _ in range(SUBSCRIBERS):
        sub = run.ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = 1
        sub.rcvbuf = 4096
        if run.key is not None:
            public, secret = zmq.curve_keypair()
            sub.curve_serverkey, sub.curve_publickey, sub.curve_secretkey = (
                run.key, public, secret)
        sub.setsockopt(zmq.SUBSCRIBE, b"")
        sub.connect(run.broker.pub)
        subs.append(sub)
    sources = rotating_sources(8)
    conn = run.conn()
    conn.ok(p.Register(name="chatter", password=PASSWORD), 60.0)
    conn.close()
    senders = [run.login("chatter", next(sources))[0] for _ in range(SENDERS)]

    def attack() -> None:
        stored = refused = 0
        try:
            n = 0
            while not run.over():
                for conn in senders:
                    n += 1
                    conn.send(p.Send(room="lobby", text=f"{n} " + TEXT_4K[:3990]))
                time.sleep(0.1)  # twice the 5/s each session is allowed after its burst
                for conn in senders:
                    while (frames := conn.recv(0)) is not None:
                        if len(frames) == 4 and frames[1]:
                            if status_of(frames) == 200:
                                stored += 1
                            else:
                                refused += 1
            run.got = (f"{SUBSCRIBERS} CURVE subscribers (no account) read nothing while "
                       f"{stored:,} messages of 4 KB were posted in lobby by {SENDERS} "
                       f"sessions ({refused:,} refused)")
        finally:
            for conn in senders:
                conn.close()
            for sub in subs:
                sub.close(0)
    return attack


# 9 ------------------------------------------------------------------------------------------

JUNK_FUZZERS = 4
#: How long after the fuzzers stop the broker's resident size is watched (and reported).
JUNK_SETTLE_S = 10.0


def setup_junk(run: Run) -> Callable[[], None]:
    """A tester's fuzzers (tests/floods.py ``junk_flood``), each in its own process:
    random frames over a CURVE DEALER, a new connection 1 % of the time."""
    sys.path.insert(0, str(ROOT / "tests"))
    from floods import junk_command  # noqa: PLC0415 (tests/ is not a package)
    key = run.key or b""
    pid = run.broker.proc.pid

    def attack() -> None:
        before = vm_kb(pid, "VmRSS")
        seconds = max(0.5, run.deadline - time.monotonic())
        fuzzers = [subprocess.Popen(junk_command(run.broker.router, key, seconds, seed),
                                    stdout=subprocess.PIPE, text=True)
                   for seed in range(JUNK_FUZZERS)]
        try:
            figures = [json.loads(f.communicate(timeout=seconds + 30)[0] or "{}")
                       for f in fuzzers]
        finally:
            for f in fuzzers:
                if f.poll() is None:
                    f.kill()
                    f.wait()
        ended = vm_kb(pid, "VmRSS")
        settle = time.monotonic() + JUNK_SETTLE_S
        while time.monotonic() < settle:
            time.sleep(0.1)
        after = vm_kb(pid, "VmRSS")
        sent = sum(f.get("sent", 0) for f in figures)
        replies = sum(f.get("replies", 0) for f in figures)
        made = sum(f.get("connections", 0) for f in figures)
        run.got = (f"{sent:,} junk messages over {made:,} connections from "
                   f"{JUNK_FUZZERS} processes, {replies:,} replies read; broker "
                   f"{before / 1024:,.0f} MB before, {ended / 1024:,.0f} MB as they "
                   f"stopped, {after / 1024:,.0f} MB {JUNK_SETTLE_S:.0f} s after")
    return attack


ATTACKS = [
    Attack("0", "baseline: no attack", None, setup_baseline),
    Attack("1", "key service: one message of empty frames", None, setup_key_frames),
    Attack("2a", "HISTORY 500 x 4 KB pipelined, never read", prepare_history, setup_history),
    Attack("2b", f"ROOMS pipelined, {ROOMS_FILL:,} rooms, never read", prepare_rooms,
           setup_rooms),
    Attack("3a", "SET_PASSWORD guessing via RESUME on new connections", None, setup_guess),
    Attack("3b", "password-hash pool kept full from one address", None, setup_pool),
    Attack("4a", "SET_PRESENCE flood", None, setup_presence),
    Attack("4b", "SET_PRESENCE flood from a muted account", prepare_admin,
           setup_muted_presence, settings={"admins": ["boss"]}),
    Attack("5a", "many LOGINs of one account, a SEND burst each", None, setup_send_bursts),
    Attack("5b", "room creation by one account", None, setup_room_creation),
    Attack("6", f"{IDLE_CONNECTIONS:,} idle TCP connections to ROUTER/PUB", None,
           setup_idle_connections, nofile=1024),
    Attack("7", "one message of empty frames to the ROUTER over CURVE", None,
           setup_curve_frames),
    Attack("8", f"{SUBSCRIBERS} CURVE SUBs that never read, busy room", None,
           setup_sleeping_subscribers),
    Attack("9", f"junk from short-lived CURVE connections, {JUNK_FUZZERS} processes", None,
           setup_junk),
]


# -- running ----------------------------------------------------------------------------------


@dataclass
class Result:
    attack: Attack
    ping_p50_ms: float = float("nan")
    ping_p99_ms: float = float("nan")
    pings: int = 0
    ping_lost: int = 0
    login_p50_ms: float = float("nan")
    login_max_ms: float = float("nan")
    logins: int = 0
    login_lost: int = 0
    login_errors: dict[str, int] = field(default_factory=dict)
    rss_peak_mb: float = 0.0
    got: str = ""
    notes: list[str] = field(default_factory=list)
    error: str = ""


def vm_kb(pid: int, field_name: str) -> int:
    """A VmXXX figure of /proc/PID/status in kB (0 when the process is gone)."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
    return 0


@contextlib.contextmanager
def nofile_limit(limit: int) -> Iterator[None]:
    """Lower this process's soft RLIMIT_NOFILE to ``limit`` for the block (children
    started inside inherit it); 0 leaves it alone."""
    if not limit:
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(limit, hard), hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def endpoints_for(index: int, base_port: int) -> dict[str, str]:
    """ROUTER, PUB and key service of attack number ``index``: base + 4*index, +1, +2
    (free ports when ``base_port`` is 0)."""
    if base_port:
        router, pub, key = (base_port + 4 * index + k for k in range(3))
    else:
        router, pub, key = free_port(), free_port(), free_port()
    return {"router": f"tcp://127.0.0.1:{router}", "pub": f"tcp://127.0.0.1:{pub}",
            "key_endpoint": f"tcp://127.0.0.1:{key}"}


def start_broker(data_dir: Path, settings: dict[str, Any], endpoints: dict[str, str]
                 ) -> BrokerHandle:
    """benchmarks/harness.run_broker on the given ROUTER, PUB and key service."""
    return run_broker(data_dir, {**settings, "key_endpoint": endpoints["key_endpoint"]},
                      router=endpoints["router"], pub=endpoints["pub"])


def run_attack(attack: Attack, index: int, args: argparse.Namespace, tmp: Path,
               ctx: zmq.Context[Any]) -> Result:
    result = Result(attack)
    data_dir = tmp / f"{index:02d}-{attack.id}"
    data_dir.mkdir()
    endpoints = endpoints_for(index, args.base_port)
    if attack.prepare is not None:
        attack.prepare(data_dir, endpoints, ctx)
    with nofile_limit(attack.nofile):
        broker = start_broker(data_dir, {**ATTACK_SETTINGS, **attack.settings}, endpoints)
    honest: subprocess.Popen[str] | None = None
    stop = threading.Event()
    watching = threading.Event()
    peak_rss = [0]

    def watchdog() -> None:
        while not watching.is_set():
            rss = vm_kb(broker.proc.pid, "VmRSS")
            peak_rss[0] = max(peak_rss[0], rss)
            if rss > args.rss_cap_mb * 1024 and not stop.is_set():
                result.notes.append(f"stopped at the RSS cap ({args.rss_cap_mb} MB)")
                stop.set()
            watching.wait(0.1)

    watcher = threading.Thread(target=watchdog, daemon=True)
    watcher.start()
    try:
        conf = {"router": broker.router, "key": (broker.public_key or b"").decode(),
                "name": "honest", "seconds": args.seconds}
        honest = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--honest",
                                   json.dumps(conf)], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, text=True)
        assert honest.stdout is not None and honest.stdin is not None
        if honest.stdout.readline().strip() != "ready":
            raise RuntimeError("the honest client did not log in")
        run = Run(ctx, broker, args.seconds, stop)
        body = attack.setup(run)
        run.deadline = time.monotonic() + args.seconds
        honest.stdin.write("go\n")
        honest.stdin.flush()
        body()
        stop.set()
        line = honest.stdout.readline()
        honest.wait(30)
        if not line:
            raise RuntimeError("the honest client gave no figures")
        figures = json.loads(line)
        seconds_ms = float(figures["seconds"]) * 1000
        pings = sorted(figures["ping_ms"] + [seconds_ms] * figures["ping_lost"])
        logins = sorted(figures["login_ms"] + [seconds_ms] * figures["login_lost"])
        result.ping_p50_ms, result.ping_p99_ms = percentile(pings, 50), percentile(pings, 99)
        result.pings, result.ping_lost = figures["pings"], figures["ping_lost"]
        result.login_p50_ms = percentile(logins, 50)
        result.login_max_ms = logins[-1] if logins else float("nan")
        result.logins = len(logins) + sum(figures["login_errors"].values())
        result.login_lost = figures["login_lost"]
        result.login_errors = figures["login_errors"]
        result.got = run.got
        result.notes += run.notes
    except Exception as exc:  # one attack's failure is reported; the others still run
        result.error = f"{type(exc).__name__}: {exc}"
    finally:
        stop.set()
        if honest is not None and honest.poll() is None:
            honest.kill()
            honest.wait()
        result.rss_peak_mb = max(vm_kb(broker.proc.pid, "VmHWM"), peak_rss[0]) / 1024
        watching.set()
        watcher.join()
        broker.stop(timeout_s=5.0)
    return result


def fmt_ms(value: float) -> str:
    if value != value:  # nan
        return "-"
    return f"{value:,.1f}" if value < 10 else f"{value:,.0f}"


def line_of(r: Result) -> str:
    lost = f" ({r.ping_lost}/{r.pings} unanswered)" if r.ping_lost else ""
    login_extra = ""
    if r.login_lost or r.login_errors:
        errors = ", ".join(f"{k}: {v}" for k, v in sorted(r.login_errors.items()))
        login_extra = f" ({r.login_lost} unanswered{', ' + errors if errors else ''})"
    text = (f"{r.attack.id:>2}  {r.attack.title}: PING p50 {fmt_ms(r.ping_p50_ms)} ms "
            f"p99 {fmt_ms(r.ping_p99_ms)} ms{lost}; LOGIN p50 {fmt_ms(r.login_p50_ms)} ms "
            f"max {fmt_ms(r.login_max_ms)} ms{login_extra}; broker peak RSS "
            f"{r.rss_peak_mb:,.0f} MB; attacker: {r.got or '-'}")
    for note in r.notes:
        text += f" [{note}]"
    if r.error:
        text += f" [HARNESS ERROR: {r.error}]"
    return text


def markdown(results: list[Result]) -> str:
    rows = ["| # | Attack | Honest PING p50 / p99 (ms) | Unanswered PINGs | Honest LOGIN "
            "p50 / max (ms) | Broker peak RSS (MB) | What the attacker got |",
            "|---|---|---|---|---|---|---|"]
    for r in results:
        login = f"{fmt_ms(r.login_p50_ms)} / {fmt_ms(r.login_max_ms)}"
        if r.login_lost or r.login_errors:
            bits = [f"{r.login_lost} unanswered"] if r.login_lost else []
            bits += [f"{v}× {k}" for k, v in sorted(r.login_errors.items())]
            login += f" ({', '.join(bits)})"
        got = r.got or "-"
        if r.notes:
            got += " (" + "; ".join(r.notes) + ")"
        if r.error:
            got += f" (harness error: {r.error})"
        rows.append(f"| {r.attack.id} | {r.attack.title} | {fmt_ms(r.ping_p50_ms)} / "
                    f"{fmt_ms(r.ping_p99_ms)} | {r.ping_lost} of {r.pings} | {login} | "
                    f"{r.rss_peak_mb:,.0f} | {got.replace('|', '/')} |")
    return "\n".join(rows)


def select_attacks(only: str) -> list[tuple[int, Attack]]:
    indexed = list(enumerate(ATTACKS))
    if not only:
        return indexed
    wanted = [w.strip() for w in only.split(",") if w.strip()]
    unknown = [w for w in wanted if not any(a.id == w or a.id.rstrip("ab") == w
                                            for a in ATTACKS)]
    if unknown:
        raise SystemExit(f"abuse.py: unknown attack {', '.join(unknown)} "
                         f"(known: {', '.join(a.id for a in ATTACKS)})")
    return [(i, a) for i, a in indexed if a.id in wanted or a.id.rstrip("ab") in wanted]


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--honest"]:
        return honest_main(json.loads(argv[1]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n\n", 1)[1])
    parser.add_argument("--only", default="", help="attack ids, e.g. 1,3b,7 (default all)")
    parser.add_argument("--seconds", type=float, default=10.0,
                        help="how long each attack runs (default 10)")
    parser.add_argument("--markdown", action="store_true",
                        help="print the markdown table for docs/security.md too")
    parser.add_argument("--base-port", type=int, default=7300,
                        help="first tcp port; attack N uses base+4N..+2 (0: free ports)")
    parser.add_argument("--rss-cap-mb", type=int, default=3000,
                        help="stop an attack when the broker's RSS passes this (default 3000)")
    args = parser.parse_args(argv)
    selected = select_attacks(args.only)

    def on_sigterm(_signum: int, _frame: Any) -> None:
        raise SystemExit(143)

    signal.signal(signal.SIGTERM, on_sigterm)
    ctx: zmq.Context[Any] = zmq.Context()
    ctx.max_sockets = 4096
    results: list[Result] = []
    failed = False
    try:
        with tempfile.TemporaryDirectory(prefix="zchat-abuse-") as tmp:
            for index, attack in selected:
                result = run_attack(attack, index, args, Path(tmp), ctx)
                results.append(result)
                failed = failed or bool(result.error)
                print(line_of(result), flush=True)
    except KeyboardInterrupt:
        print("abuse.py: interrupted", file=sys.stderr)
        failed = True
    finally:
        left = stop_children()
        if left:
            print(f"abuse.py: stopped {len(left)} leftover processes", file=sys.stderr)
        ctx.destroy(linger=0)
    if args.markdown and results:
        print()
        print(markdown(results))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
