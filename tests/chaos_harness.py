"""Chaos harness: a real broker subprocess, client worker processes, faults, and an audit.

Everything here is real: ``zchat broker`` runs as a subprocess on loopback TCP with its own
SQLite file; each chat client is a separate OS process (``python tests/chaos_harness.py worker``)
driving :class:`zchat.client.Client` with ``reconnect=True``, so it can be killed with
SIGKILL, paused with SIGSTOP or cut off by a broker restart. A worker writes what it saw to
a JSON-lines file, one flushed line per record:

- ``{"e": "login", "session": …}`` and ``{"e": "joined", "room": …, "last_seq": N}``;
- ``{"e": "sent", "room": …, "seq": N, "cmid": …}`` for every SEND answered OK;
- ``{"e": "msg", "room": …, "seq": N, "sender": …, "id": cmid}`` for every room message
  the client library delivered to the application;
- ``{"e": "presence", "name": …, "presence": …}``, ``{"e": "lost"}``, ``{"e": "restored"}``,
  ``{"e": "cycle", "i": N}``, ``{"e": "sent_all"}``, ``{"e": "cycles_done"}``, ``{"e": "bye"}``.

Message texts are ``"<cmid> <padding>"`` so a text identifies its send. :func:`audit`
compares the logs with the broker's store (read over HISTORY) and counts, per scenario,
messages sent (OK'd), stored, delivered, lost, duplicated and out of order; the
guarantees of docs/PROTOCOL.md §14 ("Delivery guarantees") say lost, duplicated and out
of order must all be 0.

The scenarios (:func:`scenario_kill_clients`, :func:`scenario_stop_client`,
:func:`scenario_kill_broker`, :func:`scenario_login_cycles`, and on a cluster of three
brokers on one PostgreSQL, :func:`cluster_run`, :func:`scenario_cluster_kill_broker` and
:func:`scenario_cluster_stop_broker`) are used by
tests/test_chaos.py in short versions and by scripts/chaos.py in long ones. No scenario
sleeps to wait for a condition: it polls the logs with a deadline (:func:`wait_until`).
Workers pace their sends with a rate, which is load generation, not waiting.

Test-only tooling: it lives with the tests, not in the installed package (issue 15).
scripts/chaos.py puts tests/ on ``sys.path`` to use it.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import dataclasses
import functools
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO, TypeVar

T = TypeVar("T")

#: This file: workers run it as a script (``python tests/chaos_harness.py worker``).
HARNESS = Path(__file__).resolve()

#: The chat room every worker joins.
ROOM = "chaos"
#: Password of every chaos account (the broker hashes with Argon2id at 1 MiB, one pass, here).
PASSWORD = "chaos horse battery staple"
#: Broker heartbeats for chaos runs: short, so that a killed client is evicted quickly.
HEARTBEAT_INTERVAL_S = 0.5
HEARTBEAT_TIMEOUT_S = 2.0


def wait_until(condition: Callable[[], T], timeout_s: float, what: str) -> T:
    """``zchat.testing.wait_until`` polling every 50 ms (the conditions read log files)."""
    from zchat import testing  # not at import: the worker processes do not need it

    return testing.wait_until(condition, timeout_s, what, interval_s=0.05)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONUNBUFFERED"] = "1"
    env["ZCHAT_PASSWORD"] = PASSWORD
    return env


# -- the broker subprocess ----------------------------------------------------------------


def broker_settings(**overrides: Any) -> dict[str, Any]:
    """``[broker]`` settings of a chaos broker: fast hashing, short heartbeats, and every
    rate limit the broker knows switched off (0) so that the limiter never throttles a
    scenario. Keys the running zchat does not have are left out (getattr-safe), then
    ``overrides`` are applied the same way."""
    from zchat.config import BrokerConfig

    known = {f.name for f in dataclasses.fields(BrokerConfig)}
    wanted: dict[str, Any] = {
        "argon2_memory_kib": 1024, "argon2_time_cost": 1, "hash_workers": 2, "log_level": "info",
        "heartbeat_interval_s": HEARTBEAT_INTERVAL_S,
        "heartbeat_timeout_s": HEARTBEAT_TIMEOUT_S,
        "send_rate_per_s": 0, "login_rate_per_s": 0, "max_sessions": 100_000,
        # Plain transport: the scenarios test delivery under faults with raw sockets too;
        # encryption is proved in tests/test_curve.py.
        "encryption": "none",
    }
    wanted.update(overrides)
    return {k: v for k, v in wanted.items() if k in known}


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return json.dumps(value)
    return repr(value)


class BrokerProcess:
    """``zchat broker`` as a subprocess on two fixed loopback ports and one data
    directory, so that it can be killed and started again where clients expect it.

    ``start()`` waits for its "database" line (raises AssertionError after 20 s);
    ``pid``/``alive`` tell which process serves; ``stderr_text()`` is its log so far.
    """

    def __init__(self, workdir: Path, data_dir: Path | None = None, *, store: str = "",
                 broker_id: str = "", **settings: Any) -> None:
        self.workdir = workdir
        self.store = store            # a PostgreSQL URL (cluster_run), "" for SQLite
        self.broker_id = broker_id
        workdir.mkdir(parents=True, exist_ok=True)
        self.data_dir = data_dir or workdir / "data"
        self.config_path = workdir / "broker.toml"
        lines = ["[broker]"] + [f"{k} = {_toml_value(v)}"
                                for k, v in broker_settings(**settings).items()]
        self.config_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        from zchat.testing import free_port  # not at import: see wait_until

        self.router = f"tcp://127.0.0.1:{free_port()}"
        self.pub = f"tcp://127.0.0.1:{free_port()}"
        self.popen: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def pid(self) -> int:
        assert self.popen is not None
        return self.popen.pid

    @property
    def alive(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def _path(self, stream: str) -> Path:
        return self.workdir / f"broker-{self.starts}.{stream}"

    def start(self, timeout_s: float = 20.0) -> None:
        """Start (again) on the same ports and data directory; a port still held by the
        previous process's socket is retried until the deadline."""
        assert not self.alive, "already running"
        deadline = time.monotonic() + timeout_s
        while True:
            self.starts += 1
            out = self._path("stdout").open("wb")
            err = self._path("stderr").open("wb")
            with out, err:
                cluster = ["--store", self.store, "--id", self.broker_id] if self.store else []
                self.popen = subprocess.Popen(
                    [sys.executable, "-m", "zchat", "broker", "--config",
                     str(self.config_path), "--data-dir", str(self.data_dir),
                     "--router", self.router, "--pub", self.pub, *cluster],
                    env=_env(), stdin=subprocess.DEVNULL, stdout=out, stderr=err)
            popen = self.popen

            def started(popen: subprocess.Popen[bytes] = popen) -> str:
                if "database" in self._path("stdout").read_text("utf-8", "replace"):
                    return "up"
                return "exited" if popen.poll() is not None else ""

            state = wait_until(started, max(deadline - time.monotonic(), 0.1),
                               f"the broker to start ({self._path('stderr')})")
            if state == "up":
                return
            if time.monotonic() > deadline or "cannot bind" not in \
                    self._path("stderr").read_text("utf-8", "replace"):
                raise AssertionError(f"broker exited at start: {self.stderr_text()[-2000:]}")

    def public_key(self) -> str:
        """The public key this start printed ("" with ``encryption = "none"``)."""
        for line in self._path("stdout").read_text("utf-8", "replace").splitlines():
            if line.strip().startswith("public key:"):
                return line.split(":", 1)[1].strip()
        return ""

    def stderr_text(self) -> str:
        """The log of every start so far, in order."""
        return "".join((self.workdir / f"broker-{i}.stderr").read_text("utf-8", "replace")
                       for i in range(1, self.starts + 1)
                       if (self.workdir / f"broker-{i}.stderr").exists())

    def kill(self) -> None:
        """SIGKILL and reap."""
        if self.popen is not None and self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(10)

    def terminate(self, timeout_s: float = 10.0) -> int:
        """SIGTERM and wait; SIGKILL after ``timeout_s``. Returns the exit code."""
        assert self.popen is not None
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)
        return int(self.popen.returncode)


# -- worker processes ------------------------------------------------------------------------


@dataclass
class Worker:
    """One worker process and its JSON-lines log."""

    name: str
    log_path: Path
    popen: subprocess.Popen[bytes]
    killed: bool = False
    _records: list[dict[str, Any]] = field(default_factory=list)
    _kinds: collections.Counter[str] = field(default_factory=collections.Counter)
    _offset: int = 0

    def records(self) -> list[dict[str, Any]]:
        """Every complete line of the log so far. Read incrementally (only what was
        appended since the last call), so polling a long log stays cheap; a last line
        without its newline (being written, or cut by SIGKILL) waits for the next call."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(self._offset)
                chunk = f.read()
        except FileNotFoundError:
            return self._records
        end = chunk.rfind(b"\n") + 1
        self._offset += end
        for line in chunk[:end].splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            self._records.append(record)
            self._kinds[record["e"]] += 1
        return self._records

    def count(self, kind: str) -> int:
        """How many records of ``kind`` the log has so far."""
        self.records()
        return self._kinds[kind]

    def has(self, kind: str) -> bool:
        return self.count(kind) > 0

    def signal(self, sig: int) -> None:
        if self.popen.poll() is None:
            self.popen.send_signal(sig)

    def kill(self) -> None:
        """SIGKILL and reap; the worker then counts as killed (no expectations)."""
        self.killed = True
        if self.popen.poll() is None:
            self.popen.kill()
        self.popen.wait(10)

    def stop(self, timeout_s: float = 10.0) -> None:
        """SIGCONT (in case it is paused) and SIGTERM: it logs out and exits."""
        if self.popen.poll() is None:
            self.popen.send_signal(signal.SIGCONT)
            self.popen.terminate()
            try:
                self.popen.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(10)


def spawn_worker(broker: BrokerProcess | str, workdir: Path, name: str, *, send: int = 0,
                 rate: float = 0.0, window: int = 1, pad: int = 0, cycles: int = 0,
                 join: bool = True, server_key: str = "") -> Worker:
    """Start ``python tests/chaos_harness.py worker`` as ``name``: it registers (if needed), logs in,
    joins ROOM, sends ``send`` messages at ``rate`` per second (0 = as fast as ``window``
    concurrent sends allow) with ``pad`` bytes of padding, or makes ``cycles``
    login/logout cycles, and keeps receiving until SIGTERM.

    ``broker`` is a broker, or an endpoint list ``"tcp://a,tcp://b"`` (a cluster: the
    worker connects to the first that answers and moves along the list when it loses
    it). With ``server_key`` the worker uses CurveZMQ with that key for every endpoint
    (pins kept in ``workdir``), else plain transport."""
    log_path = workdir / f"{name}.jsonl"
    server = broker if isinstance(broker, str) else broker.router
    argv = [sys.executable, str(HARNESS), "worker", "--server", server,
            "--name", name, "--log", str(log_path), "--send", str(send), "--rate", str(rate),
            "--window", str(window), "--pad", str(pad), "--cycles", str(cycles)]
    if not join:
        argv.append("--no-join")
    if server_key:
        argv += ["--server-key", server_key, "--known-brokers",
                 str(workdir / f"{name}.known_brokers.toml")]
    err = (workdir / f"{name}.stderr").open("wb")
    with err:
        popen = subprocess.Popen(argv, env=_env(), stdin=subprocess.DEVNULL,
                                 stdout=subprocess.DEVNULL, stderr=err)
    return Worker(name, log_path, popen)


class _Log:
    def __init__(self, path: Path) -> None:
        self._file: TextIO = path.open("a", encoding="utf-8")

    def __call__(self, kind: str, **fields: Any) -> None:
        self._file.write(json.dumps({"e": kind, "t": round(time.monotonic(), 4), **fields})
                         + "\n")
        self._file.flush()

    def close(self) -> None:
        self._file.close()


async def run_worker(args: argparse.Namespace) -> int:
    """The worker process's body (see :func:`spawn_worker`). Exit code 0 after SIGTERM."""
    from zchat import wire as p
    from zchat.client.client import Client
    from zchat.client.events import ConnectionLost, ConnectionRestored
    from zchat.errors import ConnectionFailed, RequestFailed

    record = _Log(Path(args.log))
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, stopping.set)
    loop.add_signal_handler(signal.SIGINT, stopping.set)
    client = Client(args.server, timeout_s=args.timeout, reconnect=True,
                    reconnect_max_s=args.reconnect_max,
                    encryption="curve" if args.server_key else "none",
                    server_key=args.server_key,
                    known_brokers=Path(args.known_brokers) if args.known_brokers else None)

    async def until_connected() -> None:
        while client.state != "connected":
            await asyncio.sleep(0.05)  # polling the client's state from a load generator

    async def persist(what: Callable[[], Any]) -> Any:
        """Retry a request through reconnects (and 429/503) until it gets an answer."""
        while True:
            try:
                return await what()
            except ConnectionFailed:
                await until_connected()
            except RequestFailed as exc:
                if exc.status not in (429, 503):
                    raise
                await asyncio.sleep(max(exc.retry_after_ms, 50) / 1000)

    async def receive() -> None:
        async for event in client.events():
            if isinstance(event, p.MessagePosted):
                record("msg", room=event.room, seq=event.seq, sender=event.sender,
                       id=event.text.split(" ", 1)[0])
            elif isinstance(event, p.PresenceChanged):
                record("presence", name=event.name, presence=event.presence)
            elif isinstance(event, ConnectionLost):
                record("lost", session_only=event.session_only)
            elif isinstance(event, ConnectionRestored):
                record("restored", server=client.server)

    async def orphan_watch() -> None:
        """Stop when the harness that started this worker is gone (killed itself), so a
        worker never outlives its scenario and reconnects for ever."""
        parent = os.getppid()
        while os.getppid() == parent:
            await asyncio.sleep(1.0)  # polling the parent pid, not waiting for a socket
        stopping.set()

    watch = asyncio.create_task(orphan_watch())
    await client.connect()
    with contextlib.suppress(RequestFailed):
        await client.register(args.name, PASSWORD)
    reader = asyncio.create_task(receive())
    tasks: list[asyncio.Task[Any]] = []
    try:
        if args.cycles:
            await _cycle(client, args, record, stopping)
        else:
            reply = await client.login(args.name, PASSWORD)
            record("login", session=reply.session[:6], server=client.server)
            if args.join:
                joined = await persist(lambda: client.join(ROOM))
                record("joined", room=joined.room, last_seq=joined.last_seq)
            if args.send:
                tasks.append(asyncio.create_task(_send_all(client, args, record, persist)))
        await stopping.wait()
    finally:
        watch.cancel()
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.logout(), 2.0)
        await client.close()
        reader.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await reader
        record("bye")
        record.close()
    return 0


async def _send_all(client: Any, args: argparse.Namespace, record: _Log,
                    persist: Callable[[Callable[[], Any]], Any]) -> None:
    """Send ``args.send`` messages with at most ``args.window`` in flight, paced at
    ``args.rate`` per second; each with a cmid, retried with the same cmid until OK."""
    counter = iter(range(args.send))
    padding = "x" * args.pad
    start = time.monotonic()

    async def lane() -> None:
        for i in counter:
            if args.rate > 0:
                due = start + i / args.rate
                delay = due - time.monotonic()
                if delay > 0:
                    await asyncio.sleep(delay)  # pacing the load, not waiting for a state
            cmid = f"{args.name}-{i}"
            text = f"{cmid} {padding}" if padding else cmid
            sent = await persist(functools.partial(client.send, ROOM, text, cmid=cmid))
            record("sent", room=sent.room, seq=sent.seq, cmid=cmid)

    await asyncio.gather(*(lane() for _ in range(max(args.window, 1))))
    record("sent_all", seconds=round(time.monotonic() - start, 3))


async def _cycle(client: Any, args: argparse.Namespace, record: _Log,
                 stopping: asyncio.Event) -> None:
    """``args.cycles`` rapid LOGIN/LOGOUT cycles on one connection."""
    for i in range(args.cycles):
        if stopping.is_set():
            return
        await client.login(args.name, PASSWORD)
        await client.logout()
        record("cycle", i=i)
    record("cycles_done")


# -- the audit -------------------------------------------------------------------------------


@dataclass
class Summary:
    """What one scenario saw. ``lost``, ``duplicated``, ``out_of_order``, ``stored_twice``
    and ``mismatched`` must be 0 for the guarantees of docs/PROTOCOL.md §14 to hold."""

    scenario: str
    sent: int = 0               # SENDs answered OK
    stored: int = 0             # messages in the room's history
    members: int = 0            # surviving members audited
    delivered: int = 0          # room messages handed to surviving members' applications
    lost: int = 0               # OK'd but not stored, or stored but not delivered
    duplicated: int = 0         # a member got a sequence number twice
    out_of_order: int = 0       # a member got a lower seq after a higher one
    stored_twice: int = 0       # a cmid stored more than once (idempotent send)
    mismatched: int = 0         # a seq's text differs between a member and the store
    seconds: float = 0.0
    notes: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.lost or self.duplicated or self.out_of_order or self.stored_twice
                    or self.mismatched or self.problems)

    def row(self) -> str:
        return (f"{self.scenario:<16} {self.sent:>7} {self.stored:>7} {self.delivered:>9} "
                f"{self.lost:>5} {self.duplicated:>5} {self.out_of_order:>5} "
                f"{self.stored_twice:>6} {self.seconds:>7.1f}  {'ok' if self.ok else 'FAIL'}")


SUMMARY_HEADER = (f"{'scenario':<16} {'sent':>7} {'stored':>7} {'delivered':>9} {'lost':>5} "
                  f"{'dup':>5} {'order':>5} {'stored2':>6} {'seconds':>7}  result")


def fetch_history(server: str, room: str = ROOM, name: str = "auditor",
                  server_key: str = "", known_brokers: Path | None = None
                  ) -> list[tuple[int, str]]:
    """Every message of ``room`` as (seq, id) in seq order, read over HISTORY pages by a
    client logged in as ``name`` (registered if needed); over CurveZMQ with
    ``server_key`` (pins in ``known_brokers``), else plain."""
    from zchat import wire as p
    from zchat.client.sync import SyncClient
    from zchat.errors import RequestFailed

    rows: list[tuple[int, str]] = []
    with SyncClient(server, timeout_s=10.0, encryption="curve" if server_key else "none",
                    server_key=server_key, known_brokers=known_brokers) as client:
        with contextlib.suppress(RequestFailed):
            client.register(name, PASSWORD)
        client.login(name, PASSWORD)
        after = 0
        while True:
            page = client.history(room, after=after, limit=p.MAX_HISTORY_LIMIT)
            if not page.messages:
                break
            rows += [(m.seq, m.text.split(" ", 1)[0]) for m in page.messages]
            after = page.messages[-1].seq
        with contextlib.suppress(Exception):
            client.logout()
    return rows


def audit(scenario: str, workers: Sequence[Worker], history: list[tuple[int, str]],
          room: str = ROOM) -> Summary:
    """Compare the workers' logs with the room's ``history`` (from :func:`fetch_history`).

    Every OK'd send must be stored under its seq; every surviving member (a worker that
    joined and was not killed) must have been handed every stored message after its
    join's ``last_seq`` exactly once and in seq order; no cmid may be stored twice.
    """
    summary = Summary(scenario)
    by_seq = dict(history)
    summary.stored = len(history)
    seqs = [s for s, _ in history]
    if seqs != list(range(1, len(seqs) + 1)):
        summary.problems.append("the room's sequence numbers are not 1..N without gaps")
    counts = collections.Counter(cmid for _, cmid in history)
    summary.stored_twice = sum(n - 1 for n in counts.values() if n > 1)
    for worker in workers:
        records = worker.records()
        for r in records:
            if r["e"] == "sent" and r["room"].casefold() == room.casefold():
                summary.sent += 1
                if by_seq.get(r["seq"]) != r["cmid"]:
                    summary.lost += 1
                    summary.problems.append(f"{worker.name}: OK'd {r['cmid']} as #{r['seq']}"
                                            f" but the store has {by_seq.get(r['seq'])!r}")
        if worker.killed:
            continue
        joined = [r for r in records if r["e"] == "joined"]
        if not joined:
            continue
        summary.members += 1
        base = joined[0]["last_seq"]
        got = [r for r in records if r["e"] == "msg" and r["room"].casefold() == room.casefold()]
        received = [r["seq"] for r in got]
        summary.delivered += len(received)
        summary.duplicated += len(received) - len(set(received))
        summary.out_of_order += sum(1 for a, b in zip(received, received[1:], strict=False)
                                    if b < a)
        missing = sorted(set(s for s in seqs if s > base) - set(received))
        summary.lost += len(missing)
        if missing:
            summary.problems.append(f"{worker.name} never got {len(missing)} messages, "
                                    f"first #{missing[0]}")
        summary.mismatched += sum(1 for r in got if by_seq.get(r["seq"]) != r["id"])
    return summary


def _live_count(worker: Worker) -> int:
    """Room messages ``worker`` logged before its first ConnectionLost (a lower bound of
    what reached it live on PUB rather than from HISTORY)."""
    n = 0
    for r in worker.records():
        if r["e"] == "lost":
            break
        n += r["e"] == "msg"
    return n


def last_seq_seen(worker: Worker, room: str = ROOM) -> int:
    """The highest room seq ``worker`` logged as delivered (0 if none)."""
    for r in reversed(worker.records()):  # delivered in seq order: the last one is highest
        if r["e"] == "msg" and r["room"].casefold() == room.casefold():
            return int(r["seq"])
    return 0


def wait_delivered(workers: Sequence[Worker], upto: int, timeout_s: float) -> None:
    """Wait until every live worker that joined has logged room message ``upto``."""
    for worker in workers:
        if worker.killed or upto == 0:
            continue
        wait_until(functools.partial(_reached, worker, upto), timeout_s,
                   f"{worker.name} to receive #{upto}")


def _reached(worker: Worker, upto: int) -> bool:
    return last_seq_seen(worker) >= upto


def wait_for(worker: Worker, kind: str, timeout_s: float) -> None:
    """Wait until ``worker`` has logged a record of ``kind``."""
    wait_until(functools.partial(worker.has, kind), timeout_s, f"{worker.name} to log {kind}")


def _saw(observer: Worker, name: str, presence: str) -> bool:
    return presence in presence_of(observer, name)


def wait_presence(observer: Worker, name: str, presence: str, timeout_s: float) -> None:
    """Wait until ``observer`` has logged ``name`` going ``presence``."""
    wait_until(functools.partial(_saw, observer, name, presence), timeout_s,
               f"the observer to see {name} {presence}")


def presence_of(observer: Worker, name: str) -> list[str]:
    """The presence values ``observer`` logged for account ``name``, in order."""
    return [r["presence"] for r in observer.records()
            if r["e"] == "presence" and r["name"] == name]


#: Where scenarios keep the broker's database: a tmpfs when there is one (see
#: :func:`chaos_run`), else the scenario's work directory. Set to False for real disk.
USE_TMPFS = True


@contextlib.contextmanager
def chaos_run(workdir: Path, **settings: Any) -> Iterator[tuple[BrokerProcess, list[Worker]]]:
    """Start a broker in ``workdir``; on exit stop every worker in the list yielded (which
    the scenario appends to) and the broker, whatever happened.

    The database goes on /dev/shm when it exists and USE_TMPFS is set: fsync is free there,
    so the broker commits thousands of messages a second even on a busy disk. Killing the
    broker process with SIGKILL still tests that an OK'd message was committed first (the
    kernel keeps what a dead process wrote); only a power cut would need the real disk."""
    shm = Path("/dev/shm")
    data: Path | None = None
    if USE_TMPFS and shm.is_dir() and os.access(shm, os.W_OK):
        data = Path(tempfile.mkdtemp(prefix="zchat-chaos-", dir=shm))
    broker = BrokerProcess(workdir, data, **settings)
    workers: list[Worker] = []
    try:
        broker.start()
        yield broker, workers
    finally:
        for worker in workers:
            worker.signal(signal.SIGCONT)
        for worker in workers:
            with contextlib.suppress(Exception):
                worker.stop()
        if broker.alive:
            broker.terminate()
        if data is not None:
            shutil.rmtree(data, ignore_errors=True)


def _finish(summary: Summary, broker: BrokerProcess, started: float) -> Summary:
    summary.seconds = time.monotonic() - started
    log = broker.stderr_text()
    if "internal error" in log or "Traceback" in log:
        summary.problems.append("the broker logged an internal error or a traceback")
    return summary


# -- scenarios -------------------------------------------------------------------------------


def _observer_and_members(broker: BrokerProcess, workdir: Path, workers: list[Worker],
                          names: str, clients: int, messages: int, rate: float,
                          timeout_s: float) -> tuple[Worker, list[Worker]]:
    """Start an observer, then ``clients`` members named ``names.format(i=...)`` each
    sending ``messages`` at ``rate``/s; return once the observer has seen every member
    come online. All of them are appended to ``workers`` (stopped by chaos_run)."""
    observer = spawn_worker(broker, workdir, "observer")
    workers.append(observer)
    wait_until(lambda: observer.has("joined"), timeout_s, "the observer to join")
    members = [spawn_worker(broker, workdir, names.format(i=i), send=messages, rate=rate)
               for i in range(clients)]
    workers += members
    for m in members:
        wait_presence(observer, m.name, "online", timeout_s)
    return observer, members


def scenario_kill_clients(workdir: Path, *, clients: int = 20, killed: int = 10,
                          messages: int = 20, rate: float = 20.0,
                          timeout_s: float = 60.0) -> Summary:
    """(a) ``clients`` workers chat (``messages`` each at ``rate``/s) while ``killed`` of
    them are SIGKILLed at once. Survivors get everything; an observer sees exactly one
    offline event per killed account and none for the survivors; the broker is alive with
    the same pid."""
    started = time.monotonic()
    with chaos_run(workdir) as (broker, workers):
        pid = broker.pid
        observer, chatters = _observer_and_members(broker, workdir, workers, "c{i:02d}",
                                                   clients, messages, rate, timeout_s)
        victims = chatters[:killed]
        # kill mid-stream: once every victim has had at least one message OK'd
        for v in victims:
            wait_for(v, "sent", timeout_s)
        for v in victims:
            v.popen.send_signal(signal.SIGKILL)
        for v in victims:
            v.kill()
        survivors = chatters[killed:]
        for s in survivors:
            wait_for(s, "sent_all", timeout_s)
        for v in victims:
            wait_presence(observer, v.name, "offline", timeout_s)
        history = fetch_history(broker.router)
        final = history[-1][0] if history else 0
        wait_delivered([observer, *survivors], final, timeout_s)
        summary = audit("kill-clients", workers, history)
        for v in victims:
            offline = presence_of(observer, v.name).count("offline")
            if offline != 1:
                summary.problems.append(f"observer saw {offline} offline events for {v.name}")
        for s in survivors:
            if "offline" in presence_of(observer, s.name):
                summary.problems.append(f"observer saw survivor {s.name} go offline")
        if not broker.alive or broker.pid != pid:
            summary.problems.append("the broker died or was replaced")
        summary.notes.update(clients=clients, killed=killed)
        return _finish(summary, broker, started)


def scenario_stop_client(workdir: Path, *, messages: int = 5000, pad: int = 1000,
                         window: int = 16, sndhwm: int = 1000,
                         timeout_s: float = 120.0) -> Summary:
    """(b) SIGSTOP one member while a sender posts ``messages`` messages (padded with
    ``pad`` bytes, ``window`` in flight), then SIGCONT it: it must end with all of them
    exactly once and in order, as must a member that was never paused. The broker's PUB
    high-water mark is ``sndhwm`` messages, so that the paused member's backlog overflows
    it (more than the socket buffers hold) and the broker drops the rest for it. It is
    let go only once the broker has logged its eviction by heartbeat timeout (however
    fast or slow the messages passed), so it must always reconnect and backfill from
    HISTORY on its own. The running member's receive throughput goes into ``notes`` (no
    timing assertion)."""
    started = time.monotonic()
    with chaos_run(workdir, sndhwm=sndhwm, pub_sndhwm=sndhwm) as (broker, workers):
        pid = broker.pid
        paused = spawn_worker(broker, workdir, "paused")
        steady = spawn_worker(broker, workdir, "steady")
        workers += [paused, steady]
        for w in (paused, steady):
            wait_for(w, "joined", timeout_s)
        paused.signal(signal.SIGSTOP)
        sender = spawn_worker(broker, workdir, "sender", send=messages, window=window,
                              pad=pad)
        workers.append(sender)
        wait_until(lambda: sender.has("sent_all"), timeout_s, "the sender to send all")
        history = fetch_history(broker.router)
        final = history[-1][0] if history else 0
        wait_delivered([steady], final, timeout_s)
        # Eviction comes heartbeat_timeout_s after its last heartbeat, whether the messages
        # took less time than that (an idle machine) or more (a busy one): wait for it.
        wait_until(lambda: "evicted paused (" in broker.stderr_text(), timeout_s,
                   "the broker to evict the paused member")
        paused.signal(signal.SIGCONT)
        wait_delivered([paused, sender], final, timeout_s)
        # its next heartbeat finds the session gone: it must come back by itself
        wait_until(lambda: paused.has("restored"), timeout_s, "the paused member to reconnect")
        summary = audit("stop-client", workers, history)
        summary.notes["paused_evicted"] = "evicted paused (" in broker.stderr_text()
        summary.notes["paused_backfilled"] = max(0, final - _live_count(paused))
        msgs = [r["t"] for r in steady.records() if r["e"] == "msg"]
        if len(msgs) > 1 and msgs[-1] > msgs[0]:
            summary.notes["steady_msgs_per_s"] = round((len(msgs) - 1) / (msgs[-1] - msgs[0]))
        summary.notes["paused_reconnects"] = sum(1 for r in paused.records()
                                                 if r["e"] == "restored")
        if not broker.alive or broker.pid != pid:
            summary.problems.append("the broker died or was replaced")
        return _finish(summary, broker, started)


def scenario_kill_broker(workdir: Path, *, clients: int = 4, messages: int = 150,
                         rate: float = 50.0, timeout_s: float = 60.0) -> Summary:
    """(c) ``clients`` members send ``messages`` each at ``rate``/s; the broker is
    SIGKILLed mid-stream and started again on the same ports and database. Every OK'd
    message must be stored, every cmid stored at most once, and every member must get
    every message exactly once in order after reconnecting on its own."""
    started = time.monotonic()
    with chaos_run(workdir) as (broker, workers):
        members = [spawn_worker(broker, workdir, f"m{i}", send=messages, rate=rate,
                                window=2) for i in range(clients)]
        workers += members
        for m in members:
            wait_for(m, "joined", timeout_s)
        third = max(1, clients * messages // 3)
        wait_until(lambda: sum(m.count("sent") for m in members) >= third, timeout_s,
                   f"{third} messages to be sent")
        broker.kill()
        broker.start()
        for m in members:
            wait_for(m, "sent_all", timeout_s)
        history = fetch_history(broker.router)
        final = history[-1][0] if history else 0
        wait_delivered(members, final, timeout_s)
        summary = audit("kill-broker", workers, history)
        summary.notes["reconnects"] = sum(1 for m in members for r in m.records()
                                          if r["e"] == "restored")
        if summary.sent != clients * messages:
            summary.problems.append(f"{summary.sent} sends OK'd of {clients * messages}")
        return _finish(summary, broker, started)


def scenario_login_cycles(workdir: Path, *, cycles: int = 200, clients: int = 3,
                          messages: int = 100, rate: float = 50.0,
                          timeout_s: float = 60.0) -> Summary:
    """(d) one worker makes ``cycles`` rapid LOGIN/LOGOUT cycles while ``clients``
    members chat. The broker stays alive (same pid), the members lose nothing, and an
    observer sees the cycling account's presence alternate online/offline ``cycles``
    times, ending offline."""
    started = time.monotonic()
    with chaos_run(workdir) as (broker, workers):
        pid = broker.pid
        observer, members = _observer_and_members(broker, workdir, workers, "m{i}",
                                                  clients, messages, rate, timeout_s)
        cycler = spawn_worker(broker, workdir, "cycler", cycles=cycles, join=False)
        workers.append(cycler)
        wait_until(lambda: cycler.has("cycles_done"), timeout_s, "the login cycles")
        for m in members:
            wait_for(m, "sent_all", timeout_s)
        wait_until(lambda: presence_of(observer, "cycler")[-1:] == ["offline"]
                   and len(presence_of(observer, "cycler")) >= 2 * cycles, timeout_s,
                   "the observer to see every cycle")
        history = fetch_history(broker.router)
        final = history[-1][0] if history else 0
        wait_delivered([observer, *members], final, timeout_s)
        summary = audit("login-cycles", workers, history)
        seen = presence_of(observer, "cycler")
        if seen != ["online", "offline"] * cycles:
            summary.problems.append(f"cycler presence not {cycles} online/offline pairs: "
                                    f"{len(seen)} events, {seen[:6]}…")
        if not broker.alive or broker.pid != pid:
            summary.problems.append("the broker died or was replaced")
        summary.notes["cycles"] = cycles
        return _finish(summary, broker, started)


# -- a cluster: brokers on one PostgreSQL database -------------------------------------------

#: ``[broker]`` settings of a cluster chaos run, over broker_settings: leases short enough
#: that a stopped broker is reaped and fenced within about a second (docs/cluster.md,
#: "Leases and fencing": the tests use 1 s and 0.2 s), the periodic room check twice a
#: second, and CurveZMQ as shipped, so that a client that moves checks the next broker's
#: key against the cluster's one.
CLUSTER_SETTINGS: dict[str, Any] = {"lease_s": 1.0, "lease_renew_s": 0.2,
                                    "cluster_check_s": 0.5, "encryption": "curve"}


@dataclass
class Cluster:
    """Brokers on one PostgreSQL database (``url``) sharing one key pair (``key``)."""

    brokers: list[BrokerProcess]
    url: str
    key: str
    workdir: Path

    def endpoints(self, home: int) -> str:
        """Every broker's ROUTER endpoint, broker ``home``'s first: a client given this
        list connects to ``home`` and moves round robin from there."""
        routers = [b.router for b in self.brokers]
        return ",".join(routers[home:] + routers[:home])

    def home_of(self, worker: Worker) -> int:
        """Index of the broker ``worker`` logged in on first (-1 before its login)."""
        for r in worker.records():
            if r["e"] == "login":
                return [b.router for b in self.brokers].index(r["server"])
        return -1

    def history(self, via: int) -> list[tuple[int, str]]:
        """:func:`fetch_history` through broker ``via`` (alone: no move to another)."""
        return fetch_history(self.brokers[via].router, server_key=self.key,
                             known_brokers=self.workdir / "auditor.known_brokers.toml")

    def database_seqs(self, room: str = ROOM) -> tuple[list[int], int]:
        """The room's stored seqs in order and its ``last_seq``, read from the database
        itself (not through a broker)."""
        import psycopg

        with psycopg.connect(self.url) as conn:
            seqs = [int(row[0]) for row in conn.execute(
                "SELECT seq FROM messages WHERE room_key = %s ORDER BY seq", (room,))]
            last = conn.execute("SELECT last_seq FROM rooms WHERE key = %s",
                                (room,)).fetchone()
        return seqs, int(last[0]) if last else 0


@contextlib.contextmanager
def cluster_run(workdir: Path, brokers: int = 3, url: str | None = None, **settings: Any
                ) -> Iterator[tuple[Cluster, list[Worker]]]:
    """The database ``url`` (an empty one, e.g. the test session's ``pg_url``), or else a
    PostgreSQL server of its own (tests/postgres_server.py: ``initdb`` + ``pg_ctl`` in
    a temporary directory, as the ``postgres`` user when run as root) and ``brokers``
    ``zchat broker`` processes on one database, ids ``chaos-0`` …, each with its own data
    directory holding the one key pair made for the first (copied as docs/cluster.md
    tells an operator) and its own ROUTER, PUB and key service ports. On exit every
    worker in the list yielded and every broker is stopped (continued first if paused),
    then the server, whatever happened.

    PostgreSQL runs with ``fsync`` off: the scenarios kill brokers, never the database
    server, and what PostgreSQL wrote survives a broker's death without it."""
    from postgres_server import running_postgres  # not at import: workers do not need it

    from zchat.broker import keypair
    from zchat.testing import free_port

    procs: list[BrokerProcess] = []
    workers: list[Worker] = []
    with contextlib.ExitStack() as own:
        if url is None:
            server = own.enter_context(running_postgres())
            url = server.url(server.new_database())
        try:
            for i in range(brokers):
                home = workdir / f"broker-{i}"
                data = home / "data"
                data.mkdir(parents=True, mode=0o700)
                if i == 0:
                    keypair.load_or_create_broker_keys(data)
                else:
                    for name in (keypair.BROKER_SECRET_FILE, keypair.BROKER_PUBLIC_FILE):
                        shutil.copy2(procs[0].data_dir / name, data / name)
                broker = BrokerProcess(home, data, store=url, broker_id=f"chaos-{i}", **{
                    **CLUSTER_SETTINGS, "key_endpoint": f"tcp://127.0.0.1:{free_port()}",
                    **settings})
                procs.append(broker)
                broker.start()
            keys = [wait_until(b.public_key, 10, f"broker {b.broker_id}'s key line")
                    for b in procs]
            if len(set(keys)) != 1:
                raise AssertionError(f"the brokers do not share one key: {keys}")
            yield Cluster(procs, url, keys[0], workdir), workers
        finally:
            for worker in workers:
                worker.signal(signal.SIGCONT)
            for worker in workers:
                with contextlib.suppress(Exception):
                    worker.stop()
            for broker in procs:
                if broker.alive:
                    broker.popen.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
                    broker.terminate()


def _cluster_members(cluster: Cluster, workdir: Path, workers: list[Worker], clients: int,
                     messages: int, rate: float, timeout_s: float
                     ) -> tuple[Worker, list[Worker]]:
    """An observer on the last broker (never faulted by the scenarios), then ``clients``
    members ``m0`` … dealt round robin over the brokers, each given every endpoint with
    its home broker first and sending ``messages`` at ``rate``/s; returns once the
    observer has seen each of them online and each logged in where it was sent."""
    last = len(cluster.brokers) - 1
    observer = spawn_worker(cluster.endpoints(last), workdir, "observer",
                            server_key=cluster.key)
    workers.append(observer)
    wait_for(observer, "joined", timeout_s)
    members = [spawn_worker(cluster.endpoints(i % len(cluster.brokers)), workdir, f"m{i}",
                            send=messages, rate=rate, window=2, server_key=cluster.key)
               for i in range(clients)]
    workers += members
    for i, m in enumerate(members):
        wait_presence(observer, m.name, "online", timeout_s)
        wait_for(m, "joined", timeout_s)
        if cluster.home_of(m) != i % len(cluster.brokers):
            raise AssertionError(f"{m.name} logged in on broker {cluster.home_of(m)}, "
                                 f"not {i % len(cluster.brokers)}")
    return observer, members


def _moved(worker: Worker, away_from: str) -> float | None:
    """Monotonic time of ``worker``'s first ConnectionRestored on another endpoint than
    ``away_from``, or None."""
    for r in worker.records():
        if r["e"] == "restored" and r["server"] != away_from:
            return float(r["t"])
    return None


def _wait_moved(cluster: Cluster, members: Sequence[Worker], victim: int, since: float,
                timeout_s: float) -> list[float]:
    """Wait until every member that logged in on broker ``victim`` has been restored
    (RESUMEd) on another broker; the seconds each took from ``since`` (monotonic; the
    workers' records use the same clock)."""
    router = cluster.brokers[victim].router
    took = []
    for m in members:
        if cluster.home_of(m) == victim:
            at = wait_until(functools.partial(_moved, m, router), timeout_s,
                            f"{m.name} to move off broker {victim}")
            assert at is not None  # wait_until returns a true value
            took.append(round(at - since, 3))
    return took


def _reaped(cluster: Cluster, victim: int) -> bool:
    line = f"took over the sessions of broker chaos-{victim} "
    return any(line in b.stderr_text() for i, b in enumerate(cluster.brokers) if i != victim)


def _cluster_audit(scenario: str, cluster: Cluster, workers: list[Worker], observer: Worker,
                   members: list[Worker], started: float, timeout_s: float) -> Summary:
    """Every member sent all, got everything once in order (:func:`audit`, with the
    history read through the observer's broker); and beyond :func:`audit`: the room's
    seqs in the database itself are 1..last_seq with no gap and match the history,
    every live broker serves the same history, the observer last saw every member
    online, and no broker logged a traceback or an internal error."""
    for m in members:
        wait_for(m, "sent_all", timeout_s)
    last = len(cluster.brokers) - 1
    history = cluster.history(last)
    final = history[-1][0] if history else 0
    wait_delivered([observer, *members], final, timeout_s)
    summary = audit(scenario, workers, history)
    seqs, last_seq = cluster.database_seqs()
    if seqs != list(range(1, last_seq + 1)):
        summary.problems.append(f"the database's seqs are not 1..{last_seq} without gaps")
    if seqs != [s for s, _ in history]:
        summary.problems.append("the database and the history read through a broker differ")
    for i, broker in enumerate(cluster.brokers[:last]):
        if broker.alive and cluster.history(i) != history:
            summary.problems.append(f"broker {i} serves another history")
    offline = 0
    for m in members:
        seen = presence_of(observer, m.name)
        offline += seen.count("offline")
        if seen[-1:] != ["online"]:
            summary.problems.append(f"the observer last saw {m.name} {seen[-1:]}")
    summary.notes["member_offline_events"] = offline
    # what the members and the observer should have got: each message after its join
    summary.notes["due"] = sum(final - w.records()[[r["e"] for r in w.records()]
                                                   .index("joined")]["last_seq"]
                               for w in (observer, *members))
    summary.notes["moves"] = sum(1 for m in members for r in m.records()
                                 if r["e"] == "restored")
    summary.seconds = time.monotonic() - started
    for broker in cluster.brokers:
        log = broker.stderr_text()
        if "internal error" in log or "Traceback" in log:
            summary.problems.append(f"broker {broker.broker_id} logged an internal error "
                                    "or a traceback")
    return summary


def scenario_cluster_kill_broker(workdir: Path, *, clients: int = 6, messages: int = 60,
                                 rate: float = 20.0, victim: int = 0,
                                 timeout_s: float = 60.0, url: str | None = None) -> Summary:
    """(e) three brokers on one PostgreSQL; ``clients`` members dealt over them with every
    endpoint, sending ``messages`` each at ``rate``/s; broker ``victim`` is SIGKILLed
    mid-stream. Its members move to another broker and RESUME there, a surviving broker
    reaps its lease, and the audit holds (:func:`_cluster_audit`). ``notes["move_s"]``:
    seconds from the kill until each of its members was restored elsewhere."""
    started = time.monotonic()
    with cluster_run(workdir, url=url) as (cluster, workers):
        observer, members = _cluster_members(cluster, workdir, workers, clients, messages,
                                             rate, timeout_s)
        third = max(1, clients * messages // 3)
        wait_until(lambda: sum(m.count("sent") for m in members) >= third, timeout_s,
                   f"{third} messages to be sent")
        killed_at = time.monotonic()
        cluster.brokers[victim].kill()
        move_s = _wait_moved(cluster, members, victim, killed_at, timeout_s)
        wait_until(lambda: _reaped(cluster, victim), timeout_s,
                   f"a surviving broker to reap chaos-{victim}'s lease")
        summary = _cluster_audit("cluster-kill", cluster, workers, observer, members,
                                 started, timeout_s)
        summary.notes["move_s"] = move_s
        if summary.sent != clients * messages:
            summary.problems.append(f"{summary.sent} sends OK'd of {clients * messages}")
        return summary


def scenario_cluster_stop_broker(workdir: Path, *, clients: int = 6, messages: int = 60,
                                 rate: float = 20.0, victim: int = 1,
                                 timeout_s: float = 60.0, url: str | None = None) -> Summary:
    """(f) as (e), but broker ``victim`` is SIGSTOPped mid-stream until another broker has
    reaped its lease and its members have moved, then SIGCONTinued: it must find itself
    fenced out (its log says so), drop its sessions rather than act on them, take a
    fresh lease and serve the same history again; the audit holds throughout."""
    started = time.monotonic()
    with cluster_run(workdir, url=url) as (cluster, workers):
        observer, members = _cluster_members(cluster, workdir, workers, clients, messages,
                                             rate, timeout_s)
        third = max(1, clients * messages // 3)
        wait_until(lambda: sum(m.count("sent") for m in members) >= third, timeout_s,
                   f"{third} messages to be sent")
        stopped = cluster.brokers[victim]
        stopped_at = time.monotonic()
        stopped.popen.send_signal(signal.SIGSTOP)  # type: ignore[union-attr]
        wait_until(lambda: _reaped(cluster, victim), timeout_s,
                   f"a broker to reap the stopped chaos-{victim}'s lease")
        move_s = _wait_moved(cluster, members, victim, stopped_at, timeout_s)
        stopped.popen.send_signal(signal.SIGCONT)  # type: ignore[union-attr]
        wait_until(lambda: "fenced out of the cluster" in stopped.stderr_text(), timeout_s,
                   f"chaos-{victim} to find itself fenced out")
        wait_until(lambda: stopped.stderr_text().count(": lease taken, epoch") >= 2,
                   timeout_s, f"chaos-{victim} to take a fresh lease")
        summary = _cluster_audit("cluster-stop", cluster, workers, observer, members,
                                 started, timeout_s)
        summary.notes["move_s"] = move_s
        summary.notes["fenced"] = next(line.split("fenced out of the cluster ", 1)[1][:80]
                                       for line in stopped.stderr_text().splitlines()
                                       if "fenced out of the cluster" in line)
        if not stopped.alive:
            summary.problems.append(f"the stopped broker chaos-{victim} exited")
        if summary.sent != clients * messages:
            summary.problems.append(f"{summary.sent} sends OK'd of {clients * messages}")
        return summary


# -- command line ------------------------------------------------------------------------------


def _worker_parser(sub: Any) -> None:
    w = sub.add_parser("worker", help="one chaos client (started by the harness)")
    w.add_argument("--server", required=True)
    w.add_argument("--name", required=True)
    w.add_argument("--log", required=True)
    w.add_argument("--send", type=int, default=0)
    w.add_argument("--rate", type=float, default=0.0)
    w.add_argument("--window", type=int, default=1)
    w.add_argument("--pad", type=int, default=0)
    w.add_argument("--cycles", type=int, default=0)
    w.add_argument("--timeout", type=float, default=2.0)
    w.add_argument("--reconnect-max", type=float, default=2.0)
    w.add_argument("--no-join", dest="join", action="store_false")
    w.add_argument("--server-key", default="")
    w.add_argument("--known-brokers", default="")


def main(argv: list[str] | None = None) -> int:
    """``python tests/chaos_harness.py worker …`` (the harness's client process)."""
    parser = argparse.ArgumentParser(prog="python tests/chaos_harness.py")
    sub = parser.add_subparsers(dest="command", required=True)
    _worker_parser(sub)
    args = parser.parse_args(argv)
    return asyncio.run(run_worker(args))


if __name__ == "__main__":
    sys.exit(main())
