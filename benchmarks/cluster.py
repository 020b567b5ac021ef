"""One broker on SQLite, one on PostgreSQL, three on one PostgreSQL (issue 16): what each
carries and what it costs, in one run, with ratios to the first.

Run: ``python benchmarks/cluster.py [--quick] [--failover-only] [--json FILE]``. Standalone (not one of
benchmarks/run.py's scenarios: it needs PostgreSQL, which it starts itself from the
machine's packages, tests/postgres_server.py, as the ``postgres`` user when run as root,
with ``fsync`` and ``full_page_writes`` on: a durable set-up, as the SQLite broker's
``synchronous=FULL`` WAL is).

Three set-ups, each real ``zchat broker`` subprocesses on loopback TCP with CurveZMQ as
shipped (benchmarks/harness.py's run_broker and BROKER_DEFAULTS: rate limits off,
Argon2id at 1 MiB, one pass), started once per set-up and used by every measurement of it:

- ``sqlite``: one broker, its SQLite file;
- ``pg1``: one broker on a fresh PostgreSQL database;
- ``pg3``: three brokers on one fresh PostgreSQL database, sharing one key pair (copied
  from the first broker's data directory, as docs/cluster.md says).

Measurements (benchmarks/loadgen.py's senders and receivers, unchanged; the sender and
its prober always on the first broker; members dealt round robin over the brokers
starting with the second, so that 1 -> 1 on ``pg3`` crosses brokers):

- **sessions**: N sessions (DEALER + SUB each, logged in, in one room) spread over the
  brokers; each broker's resident memory (VmRSS) and CPU before and after, then P PINGs
  from each session (a heartbeat's cost). Gives RSS per session, CPU per login and CPU
  per PING, summed over the brokers;
- **ingest 1 -> 1** and **1 -> 50**: one sender, 200 SENDs in flight, every message
  acknowledged only once committed (durable); acked and delivered msg/s, loss and
  duplicates per member (must be 0: exit code 1 otherwise), rows stored; the brokers' CPU
  and PostgreSQL's (the postmaster and its backends, from /proc) over the run;
- **latency**: a paced sender at 100 msg/s to 100 members; send -> delivery on every
  member, p50/p99/p99.9/max.

- **failover**: three brokers on one fresh PostgreSQL database (a set-up of its own, as
  it kills one), N clients (zchat.client.Client with ``reconnect=True``, CurveZMQ, the
  list of all three endpoints, the first broker first) logged in on the first broker and
  following a room; the first broker is SIGKILLed and the time is taken from the kill
  until each client has RESUMEd its session on another broker (its ConnectionRestored,
  on another endpoint, with the same session id): p50 and max, for each heartbeat
  setting of FAILOVER_HEARTBEATS. What drives it (docs/cluster.md, "How clients move"):
  a SIGKILLed broker answers nothing, so a client notices at its first heartbeat PING
  that gets no answer within ``heartbeat_interval_s`` — the next PING comes within one
  interval, then waits one more: between 1 and 2 intervals — then waits the first
  reconnect back-off (0.5 s, ±10 %) and RESUMEs on the next endpoint of its list.

Everything the run starts (PostgreSQL, brokers, load processes) is stopped at its end.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import zmq
from harness import BROKER_DEFAULTS, BrokerHandle, machine_info, rss_kib, run_broker, secure_with
from ingest import correctness, stored_rows
from latency import paced_sender_main, summarize
from loadgen import ROOM, Target, run_fanout

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres_server import running_postgres  # noqa: E402 (test-only tooling)

from zchat import wire as p  # noqa: E402
from zchat.broker.keypair import BROKER_PUBLIC_FILE, BROKER_SECRET_FILE  # noqa: E402

PASSWORD = "bench-password"
SETUPS = [("sqlite", 1), ("pg1", 1), ("pg3", 3)]
#: Sizes of a full run and of --quick (a smoke run, well under 30 s in all).
FULL = {"failover_clients": 50, "sessions": 500, "pings": 20, "ingest_1x1": 20_000, "ingest_fanout": 5_000,
        "fanout_members": 50, "latency_members": 100, "latency_rate": 100,
        "latency_s": 10.0, "receiver_processes": 4}
QUICK = {"failover_clients": 5, "sessions": 6, "pings": 3, "ingest_1x1": 100, "ingest_fanout": 50,
         "fanout_members": 3, "latency_members": 3, "latency_rate": 100,
         "latency_s": 0.3, "receiver_processes": 1}  # one a broker: spawns cost seconds
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
IDLE_ROOM = "idle"

#: FAILOVER: "time from a broker's SIGKILL until all its clients are resumed elsewhere"
#: (issue 16), measured by :func:`failover` for each (heartbeat_interval_s,
#: heartbeat_timeout_s) of the brokers: the shipped 10 s / 30 s, and 1 s / 3 s. --quick
#: measures 0.5 s / 2 s with a few clients only.
FAILOVER_HEARTBEATS = [(10.0, 30.0), (1.0, 3.0)]
QUICK_FAILOVER_HEARTBEATS = [(0.5, 2.0)]
FAILOVER_ROOM = "failover"
#: Seconds to wait for every client to be resumed before giving up (an error).
FAILOVER_LIMIT_S = 120.0


# -- /proc ------------------------------------------------------------------------------

def cpu_s(pid: int, children: bool = False) -> float:
    """CPU seconds (user + system) of process ``pid``, its threads included; with
    ``children`` also its waited-for children's (cutime + cstime). 0 when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    fields = stat[stat.rindex(")") + 2:].split()
    ticks = int(fields[11]) + int(fields[12])
    if children:
        ticks += int(fields[13]) + int(fields[14])
    return ticks / CLOCK_TICKS


def postgres_cpu_s(data_dir: Path | None) -> float:
    """CPU seconds of a PostgreSQL server: its postmaster (with the backends that exited,
    which it waited for) and every live child (backends, WAL writer, checkpointer …)."""
    if data_dir is None:
        return 0.0
    try:
        master = int((data_dir / "postmaster.pid").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 0.0
    total = cpu_s(master, children=True)
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(entry.path, "stat").read_text()
            if int(stat[stat.rindex(")") + 2:].split()[1]) == master:
                total += cpu_s(int(entry.name))
    return total


@dataclass
class Snapshot:
    cpu: list[float]        # per broker, seconds
    rss: list[int]          # per broker, KiB
    pg_cpu: float           # the PostgreSQL server, seconds
    wall: float

    @classmethod
    def take(cls, setup: Setup) -> Snapshot:
        pids = [b.proc.pid for b in setup.brokers]
        return cls([cpu_s(pid) for pid in pids], [rss_kib(pid) for pid in pids],
                   postgres_cpu_s(setup.pg_data), time.monotonic())

    def since(self, before: Snapshot) -> dict[str, Any]:
        return {"cpu_s": [a - b for a, b in zip(self.cpu, before.cpu, strict=True)],
                "rss_kib_before": before.rss, "rss_kib_after": self.rss,
                "pg_cpu_s": self.pg_cpu - before.pg_cpu, "wall_s": self.wall - before.wall}


# -- the set-ups -------------------------------------------------------------------------

@dataclass
class Setup:
    name: str
    brokers: list[BrokerHandle]
    url: str | None         # the PostgreSQL database, None on SQLite
    pg_data: Path | None

    @property
    def targets(self) -> list[Target]:
        return [Target.of_broker(b) for b in self.brokers]

    @property
    def member_targets(self) -> list[Target]:
        """Where members go: round robin from the second broker on (the first carries the
        sender), so that one member is on another broker than the sender."""
        t = self.targets
        return t[1:] + t[:1]


@contextlib.contextmanager
def started(name: str, count: int, root: Path, url: str | None, pg_data: Path | None,
            **overrides: Any) -> Iterator[Setup]:
    """``count`` brokers on ``url`` (None: SQLite), one key pair, stopped (SIGTERM) after;
    ``overrides`` are [broker] settings over BROKER_DEFAULTS."""
    brokers: list[BrokerHandle] = []
    settings = {**BROKER_DEFAULTS, "encryption": "curve", **overrides}
    try:
        for i in range(count):
            data_dir = root / f"{name}-broker{i}"
            data_dir.mkdir(parents=True, mode=0o700)
            if i > 0:  # the shared key pair, as docs/cluster.md tells an operator
                for key_file in (BROKER_SECRET_FILE, BROKER_PUBLIC_FILE):
                    shutil.copy2(brokers[0].data_dir / key_file, data_dir / key_file)
            extra = {"store": url, "id": f"{name}-{i}"} if url else {}
            brokers.append(run_broker(data_dir, {**settings, **extra}))
        keys = {b.public_key for b in brokers}
        if len(keys) != 1:
            raise RuntimeError(f"{name}: the brokers do not share one key: {keys}")
        yield Setup(name, brokers, url, pg_data)
    finally:
        for broker in brokers:
            broker.stop()


def stored(setup: Setup, base: int, total: int) -> tuple[int, int]:
    """(rows of the run in loadgen's room, its last_seq) from the set-up's database."""
    if setup.url is None:
        return stored_rows(setup.brokers[0].db, base, total)
    with psycopg.connect(setup.url) as conn:
        (count,) = conn.execute("SELECT count(*) FROM messages WHERE room_key = %s AND seq "
                                "BETWEEN %s AND %s", (ROOM, base, base + total - 1)
                                ).fetchone()  # type: ignore[misc]
        (last,) = conn.execute("SELECT last_seq FROM rooms WHERE key = %s",
                               (ROOM,)).fetchone()  # type: ignore[misc]
    return int(count), int(last)


# -- measurements ------------------------------------------------------------------------

def _call_all(dealers: list[zmq.Socket[Any]], requests: list[p.Request]) -> list[Any]:
    """Send ``requests[i]`` on ``dealers[i]``, all at once, then wait for every reply.
    Raises RuntimeError on an error reply or after 60 s of silence."""
    rids = []
    for n, (dealer, req) in enumerate(zip(dealers, requests, strict=True)):
        rid = b"c%d" % n
        dealer.send_multipart(p.encode_request(rid, req))
        rids.append(rid)
    replies = []
    for dealer, rid, req in zip(dealers, rids, requests, strict=True):
        while True:
            if not dealer.poll(60_000):
                raise RuntimeError(f"no reply to {req.TYPE} in 60 s")
            got, value = p.decode_from_broker(dealer.recv_multipart(), {rid: req.REPLY})
            if got == rid:
                if isinstance(value, p.Error):
                    raise RuntimeError(f"{req.TYPE}: {value.status} {value.reason}")
                replies.append(value)
                break
    return replies


def sessions(ctx: zmq.Context[Any], setup: Setup, count: int, pings: int) -> dict[str, Any]:
    """``count`` sessions dealt over the brokers (a DEALER and a SUB each, joined to one
    room, the SUB live); memory and CPU per session, then ``pings`` PINGs each."""
    homes = [setup.brokers[(i + 1) % len(setup.brokers)] for i in range(count)]
    names = [f"{setup.name}s{i:04d}" for i in range(count)]
    pairs = [zmq.curve_keypair() for _ in range(count)]
    dealers: list[zmq.Socket[Any]] = []
    subs: list[zmq.Socket[Any]] = []
    before = Snapshot.take(setup)
    try:
        for home, pair in zip(homes, pairs, strict=True):
            dealer = ctx.socket(zmq.DEALER)
            dealer.linger = 0
            secure_with(dealer, home.public_key, pair)
            dealer.connect(home.router)
            dealers.append(dealer)
        _call_all(dealers, [p.Register(name=n, password=PASSWORD) for n in names])
        _call_all(dealers, [p.Login(name=n, password=PASSWORD) for n in names])
        _call_all(dealers, [p.Join(room=IDLE_ROOM) for _ in names])
        for home, pair in zip(homes, pairs, strict=True):
            sub = ctx.socket(zmq.SUB)
            sub.linger = 0
            secure_with(sub, home.public_key, pair)
            sub.connect(home.pub)
            sub.subscribe(p.room_topic(IDLE_ROOM))
            subs.append(sub)
        heard = [False] * count  # a probe message heard on every SUB: all are live
        deadline = time.monotonic() + 60
        while not all(heard):
            if time.monotonic() > deadline:
                raise RuntimeError(f"{heard.count(False)} SUBs heard no probe in 60 s")
            _call_all(dealers[:1], [p.Send(room=IDLE_ROOM, text="probe")])
            poller = zmq.Poller()
            for i, sub in enumerate(subs):
                if not heard[i]:
                    poller.register(sub, zmq.POLLIN)
            end = time.monotonic() + 0.2
            while (left := end - time.monotonic()) > 0:
                ready = dict(poller.poll(int(left * 1000) + 1))
                for sub in ready:
                    while True:
                        try:
                            sub.recv(zmq.NOBLOCK)
                        except zmq.Again:
                            break
                    heard[subs.index(sub)] = True
                    poller.unregister(sub)
                if all(heard):
                    break
        live = Snapshot.take(setup)
        for _ in range(pings):
            _call_all(dealers, [p.Ping() for _ in dealers])
        pinged = Snapshot.take(setup)
        _call_all(dealers, [p.Logout() for _ in dealers])
    finally:
        for sock in subs + dealers:
            sock.close()
    logged_in, heartbeats = live.since(before), pinged.since(live)
    rss_growth = sum(live.rss) - sum(before.rss)
    return {"sessions": count, "pings_each": pings, "login": logged_in,
            "pings": heartbeats,
            "rss_kib_per_session": rss_growth / count,
            "cpu_ms_per_session_login": sum(logged_in["cpu_s"]) * 1000 / count,
            "cpu_us_per_ping": sum(heartbeats["cpu_s"]) * 1e6 / (count * pings),
            "pg_cpu_us_per_ping": heartbeats["pg_cpu_s"] * 1e6 / (count * pings)}


def ingest(ctx: zmq.Context[Any], setup: Setup, members: int, count: int,
           prefix: str, receivers: int) -> dict[str, Any]:
    """One sender on the first broker, ``members`` members spread over the brokers (read
    by ``receivers`` processes, at least one a broker)."""
    before = Snapshot.take(setup)
    r = run_fanout(ctx, setup.targets[0], 1, members, count,
                   member_targets=setup.member_targets, prefix=prefix,
                   receiver_processes=receivers)
    r["cost"] = Snapshot.take(setup).since(before)
    return _checked(setup, r)


def latency(ctx: zmq.Context[Any], setup: Setup, members: int, rate: int, seconds: float,
            prefix: str, receivers: int) -> dict[str, Any]:
    sender = functools.partial(paced_sender_main, rate, seconds)
    r = run_fanout(ctx, setup.targets[0], 1, members, int(rate * seconds),
                   latency_sender=sender, member_targets=setup.member_targets,
                   prefix=prefix, receiver_processes=receivers)
    return _checked(setup, summarize(r))


def _checked(setup: Setup, r: dict[str, Any]) -> dict[str, Any]:
    r["stored"], r["last_seq"] = stored(setup, r["base_seq"], r["messages"])
    r.pop("sender", None)
    r["error"] = correctness(r)
    return r


def measure(ctx: zmq.Context[Any], setup: Setup, size: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {"brokers": len(setup.brokers), "seconds": {}}
    receivers = size["receiver_processes"]
    steps = [
        ("sessions", lambda: sessions(ctx, setup, size["sessions"], size["pings"])),
        ("ingest_1x1", lambda: ingest(ctx, setup, 1, size["ingest_1x1"], f"{setup.name}a",
                                      receivers)),
        ("ingest_fanout", lambda: ingest(ctx, setup, size["fanout_members"],
                                         size["ingest_fanout"], f"{setup.name}b",
                                         receivers)),
        ("latency", lambda: latency(ctx, setup, size["latency_members"],
                                    size["latency_rate"], size["latency_s"],
                                    f"{setup.name}c", receivers)),
    ]
    for step, run in steps:
        began = time.monotonic()
        out[step] = run()
        out["seconds"][step] = time.monotonic() - began
    out["costs"] = costs(out)
    return out


def costs(out: dict[str, Any]) -> dict[str, Any]:
    """Per-message costs from the ingest runs: the brokers' CPU (all brokers together)
    per stored message (1 -> 1) and per delivery (1 -> many), PostgreSQL's CPU per stored
    message, and on a cluster the CPU per delivery of a broker that only fans out (it
    stored none of the messages: it reads them from the database and publishes them)."""
    one, many = out["ingest_1x1"], out["ingest_fanout"]
    c: dict[str, Any] = {
        "broker_cpu_us_per_message_1x1": sum(one["cost"]["cpu_s"]) * 1e6 / one["messages"],
        "broker_cpu_us_per_delivery_fanout": sum(many["cost"]["cpu_s"]) * 1e6
        / max(1, many["delivered"]),
        "pg_cpu_us_per_message_1x1": one["cost"]["pg_cpu_s"] * 1e6 / one["messages"],
        "pg_cpu_us_per_message_fanout": many["cost"]["pg_cpu_s"] * 1e6 / many["messages"],
    }
    # members_per_target follows member_targets: brokers 1, 2, …, then 0 (the sender's).
    n = out["brokers"]
    if n > 1:
        per_broker = []
        for h, members in enumerate(many["members_per_target"]):
            broker = (h + 1) % n
            cpu = many["cost"]["cpu_s"][broker]
            per_broker.append({"broker": broker, "members": members,
                               "deliveries": members * many["messages"], "cpu_s": cpu,
                               "cpu_us_per_delivery": cpu * 1e6
                               / max(1, members * many["messages"])})
        c["fanout_per_broker"] = per_broker
        # 1 -> 1: the sender's broker stores, the member's reads and delivers once, any
        # other broker only reads each message from the database (its cost per message
        # for a room it has no member of: what each added broker costs).
        c["one_to_one_cpu_us_per_message_per_broker"] = [
            cpu * 1e6 / one["messages"] for cpu in one["cost"]["cpu_s"]]
        fan_only = [b for b in per_broker if b["broker"] != 0]
        c["fanout_only_broker_cpu_us_per_delivery"] = (
            sum(b["cpu_s"] for b in fan_only) * 1e6
            / max(1, sum(b["deliveries"] for b in fan_only)))
    return c


def failover(root: Path, url: str, pg_data: Path, clients: int, interval_s: float,
             timeout_s: float) -> dict[str, Any]:
    """Three brokers on ``url`` with heartbeats of ``interval_s`` / ``timeout_s``;
    ``clients`` clients with all three endpoints logged in on the first and following
    FAILOVER_ROOM; SIGKILL the first; seconds from the kill until each client's
    ConnectionRestored on another broker with its session kept (RESUME, not a new
    LOGIN). Raises RuntimeError when a client does not come back within
    FAILOVER_LIMIT_S, comes back on the dead broker, or logged in again."""
    import asyncio

    from zchat.client import Client
    from zchat.client.events import ConnectionLost, ConnectionRestored

    name = f"failover{interval_s:g}".replace(".", "_")
    with started(name, 3, root, url, pg_data, heartbeat_interval_s=interval_s,
                 heartbeat_timeout_s=timeout_s) as setup:
        routers = [b.router for b in setup.brokers]
        key = (setup.brokers[0].public_key or b"").decode("ascii")
        dead = setup.brokers[0]

        async def run() -> dict[str, Any]:
            known = root / f"{name}.known_brokers.toml"
            members = [Client(routers, reconnect=True, server_key=key,
                              known_brokers=known, timeout_s=10.0) for _ in range(clients)]
            restored: dict[int, tuple[float, str]] = {}
            lost: dict[int, float] = {}
            everyone = asyncio.Event()

            async def watch(i: int, client: Client) -> None:
                async for event in client.events():
                    if isinstance(event, ConnectionLost) and i not in lost:
                        lost[i] = time.monotonic()
                    if isinstance(event, ConnectionRestored) and i not in restored:
                        restored[i] = (time.monotonic(), client.server)
                        if len(restored) == clients:
                            everyone.set()

            watchers: list[asyncio.Task[None]] = []
            try:
                for i, client in enumerate(members):
                    await client.connect()
                    await client.register(f"{name}c{i:03d}", PASSWORD)
                    await client.login(f"{name}c{i:03d}", PASSWORD)
                    await client.join(FAILOVER_ROOM)
                    watchers.append(asyncio.create_task(watch(i, client)))
                if {c.server for c in members} != {dead.router}:
                    raise RuntimeError("failover: the clients are not all on the first broker")
                # the session each holds (private: the library does not show it)
                before = [c._state.session for c in members]  # noqa: SLF001
                killed_at = time.monotonic()
                dead.proc.kill()
                dead.proc.wait(10)
                try:
                    await asyncio.wait_for(everyone.wait(), FAILOVER_LIMIT_S)
                except TimeoutError:
                    raise RuntimeError(f"failover: {clients - len(restored)} of {clients} "
                                       f"clients not resumed in {FAILOVER_LIMIT_S:g} s"
                                       ) from None
                kept = sum(c._state.session == s  # noqa: SLF001
                           for c, s in zip(members, before, strict=True))
            finally:
                for task in watchers:
                    task.cancel()
                for client in members:
                    with contextlib.suppress(Exception):
                        await asyncio.wait_for(client.close(), 5)
            took = sorted(at - killed_at for at, _ in restored.values())
            noticed = sorted(at - killed_at for at in lost.values())
            moved_to = [routers.index(server) for _, server in restored.values()]
            if 0 in moved_to:
                raise RuntimeError("failover: a client came back on the killed broker")
            if kept != clients:
                raise RuntimeError(f"failover: {clients - kept} clients logged in anew "
                                   "instead of resuming their session")
            return {"clients": clients, "heartbeat_interval_s": interval_s,
                    "heartbeat_timeout_s": timeout_s, "resumed": len(took),
                    "sessions_kept": kept,
                    "moved_to": {str(i): moved_to.count(i) for i in (1, 2)},
                    "min_s": took[0], "p50_s": took[len(took) // 2], "max_s": took[-1],
                    "noticed_p50_s": noticed[len(noticed) // 2],
                    "noticed_max_s": noticed[-1]}

        return asyncio.run(run())


def failover_text(runs: list[dict[str, Any]]) -> str:
    """One line per heartbeat setting, with what drives the figure."""
    lines = []
    for r in runs:
        i = r["heartbeat_interval_s"]
        lines.append(
            f"  heartbeat {i:g} s / timeout {r['heartbeat_timeout_s']:g} s: "
            f"{r['resumed']} of {r['clients']} clients resumed on another broker "
            f"(to broker 1: {r['moved_to']['1']}, broker 2: {r['moved_to']['2']}), "
            f"p50 {r['p50_s']:.2f} s, max {r['max_s']:.2f} s; noticed the loss "
            f"p50 {r['noticed_p50_s']:.2f} s, max {r['noticed_max_s']:.2f} s "
            f"(bound: {i + 0.45:.2f} to {2 * i + 0.55:.2f} s plus the RESUME)")
    lines.append("  driven by: heartbeat_interval_s (a client notices a dead broker when a "
                 "PING gets no answer within one interval: 1 to 2 intervals after the kill, "
                 "as its next PING falls), then the first reconnect back-off "
                 "(0.5 s +-10 %), then the RESUME on the next endpoint of its list; "
                 "heartbeat_timeout_s and the lease (lease_s) do not enter")
    return "\n".join(lines)


# -- the report --------------------------------------------------------------------------

#: (label, path into a set-up's results, format)
FIGURES = [
    ("ingest 1 -> 1 acked msg/s", ("ingest_1x1", "acked_per_s"), "{:,.0f}"),
    ("ingest 1 -> 1 delivered msg/s", ("ingest_1x1", "delivered_per_s"), "{:,.0f}"),
    ("ingest 1 -> M acked msg/s", ("ingest_fanout", "acked_per_s"), "{:,.0f}"),
    ("ingest 1 -> M delivered msg/s", ("ingest_fanout", "delivered_per_s"), "{:,.0f}"),
    ("latency p50 ms", ("latency", "p50_ms"), "{:.2f}"),
    ("latency p99 ms", ("latency", "p99_ms"), "{:.2f}"),
    ("latency p99.9 ms", ("latency", "p99.9_ms"), "{:.2f}"),
    ("latency max ms", ("latency", "max_ms"), "{:.2f}"),
    ("RSS per session KiB (all brokers)", ("sessions", "rss_kib_per_session"), "{:.1f}"),
    ("CPU per login ms (Argon2id 1 MiB, t=1)", ("sessions", "cpu_ms_per_session_login"), "{:.2f}"),
    ("broker CPU per PING us", ("sessions", "cpu_us_per_ping"), "{:.1f}"),
    ("broker CPU per message 1 -> 1 us", ("costs", "broker_cpu_us_per_message_1x1"),
     "{:.1f}"),
    ("broker CPU per delivery 1 -> M us", ("costs", "broker_cpu_us_per_delivery_fanout"),
     "{:.2f}"),
    ("  of a fan-out-only broker us", ("costs", "fanout_only_broker_cpu_us_per_delivery"),
     "{:.2f}"),
    ("PostgreSQL CPU per message 1 -> 1 us", ("costs", "pg_cpu_us_per_message_1x1"),
     "{:.1f}"),
    ("PostgreSQL CPU per PING us", ("sessions", "pg_cpu_us_per_ping"), "{:.2f}"),
]


def lookup(result: dict[str, Any], path: tuple[str, str]) -> float | None:
    value = result.get(path[0], {}).get(path[1])
    return None if value is None else float(value)


def report(results: dict[str, dict[str, Any]], size: dict[str, Any]) -> None:
    names = list(results)
    base = results[names[0]]
    head = ["figure"] + [f"{n} ({results[n]['brokers']} broker"
                         f"{'s' if results[n]['brokers'] > 1 else ''})" for n in names]
    lines = [head]
    for label, path, form in FIGURES:
        label = label.replace("M", str(size["fanout_members"]))
        row = [label]
        a = lookup(base, path)
        for n in names:
            v = lookup(results[n], path)
            if v is None:
                row.append("-")
            elif n == names[0] or not a:
                row.append(form.format(v))
            else:
                row.append(f"{form.format(v)} ({v / a:.2f}x)")
        lines.append(row)
    lines.append(["lost / duplicated / out of order (all runs)"] + [
        " / ".join(str(sum(results[n][k][f] for k in ("ingest_1x1", "ingest_fanout",
                                                       "latency")))
                   for f in ("lost", "duplicates", "out_of_order")) for n in names])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    for i, line in enumerate(lines):
        print("  ".join([line[0].ljust(widths[0])]
                        + [c.rjust(w) for c, w in zip(line[1:], widths[1:], strict=True)]))
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print(f"(ratios: each figure / the {names[0]} broker's in this run; M = "
          f"{size['fanout_members']} members; latency at {size['latency_rate']} msg/s to "
          f"{size['latency_members']} members for {size['latency_s']:g} s)")
    for n in names:
        for b in results[n]["costs"].get("fanout_per_broker", []):
            print(f"{n}: broker {b['broker']}{' (sender)' if b['broker'] == 0 else ''}: "
                  f"{b['members']} members, {b['deliveries']:,} deliveries, "
                  f"{b['cpu_s']:.2f} CPU s, {b['cpu_us_per_delivery']:.2f} us per delivery")
    for n in names:
        per = results[n]["costs"].get("one_to_one_cpu_us_per_message_per_broker")
        if per:
            print(f"{n}: ingest 1 -> 1, CPU per message: broker 0 (stores) {per[0]:.1f} us, "
                  f"broker 1 (the member's) {per[1]:.1f} us, "
                  + ", ".join(f"broker {i} (no member) {v:.1f} us"
                              for i, v in enumerate(per[2:], 2)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes (a smoke run)")
    parser.add_argument("--json", type=Path, help="write every raw figure here")
    parser.add_argument("--failover-only", action="store_true",
                        help="measure only the failover (a SIGKILLed broker's clients "
                             "until resumed elsewhere)")
    args = parser.parse_args(argv)
    size = QUICK if args.quick else FULL
    info = machine_info()
    started_at = time.monotonic()
    results: dict[str, dict[str, Any]] = {}
    failovers: list[dict[str, Any]] = []
    seconds: dict[str, float] = {}
    ctx: zmq.Context[Any] = zmq.Context()
    try:
        with tempfile.TemporaryDirectory(prefix="zchat-bench-cluster-") as tmp, \
                running_postgres(fsync=True) as server:
            seconds["postgresql_start"] = time.monotonic() - started_at
            for name, count in [] if args.failover_only else SETUPS:
                url = None if name == "sqlite" else server.url(
                    server.new_database(empty=True))
                began = time.monotonic()
                with started(name, count, Path(tmp), url,
                             server.data if url else None) as setup:
                    seconds[f"{name}_start"] = time.monotonic() - began
                    results[name] = measure(ctx, setup, size)
            for interval_s, timeout_s in (QUICK_FAILOVER_HEARTBEATS if args.quick
                                          else FAILOVER_HEARTBEATS):
                began = time.monotonic()
                failovers.append(failover(
                    Path(tmp), server.url(server.new_database(empty=True)), server.data,
                    int(size["failover_clients"]), interval_s, timeout_s))
                seconds[f"failover_{interval_s:g}"] = time.monotonic() - began
    finally:
        ctx.destroy(linger=0)
    info["load_avg_after"] = list(os.getloadavg())
    print(f"zchat cluster benchmark, {info['date_utc']}, {info['cores']} cores "
          f"({info['cpu_model']}), load {info['load_avg_1_5_15'][0]:.1f} before, "
          f"{info['load_avg_after'][0]:.1f} after, {time.monotonic() - started_at:.0f} s"
          f"{', --quick' if args.quick else ''}")
    if results:
        report(results, size)
    print("failover (SIGKILL of a broker of three until all its clients resumed "
          "elsewhere):")
    print(failover_text(failovers))
    errors = [f"{n} {k}: {r[k]['error']}" for n, r in results.items()
              for k in ("ingest_1x1", "ingest_fanout", "latency") if r[k]["error"]]
    for error in errors:
        print(f"ERROR {error}")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "quick": args.quick,
                                         "seconds": seconds,
                                         "sizes": size, "results": results,
                                         "failover": failovers, "errors": errors},
                                        indent=1, default=str))
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
