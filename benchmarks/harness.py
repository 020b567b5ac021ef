"""Shared pieces of the zchat benchmarks: a real ``zchat broker`` subprocess on loopback,
free ports, CurveZMQ client set-up, and a blocking raw client over the codec.

Every scenario module (benchmarks/*.py) imports from here; benchmarks/run.py runs them.
"""

from __future__ import annotations

import contextlib
import json
import multiprocessing
import os
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import zmq

from zchat import wire as p
from zchat.broker.connections import FD_HEADROOM
from zchat.config import MIN_ARGON2_MEMORY_KIB

WINDOW = 200          # SEND requests in flight at once
PAYLOAD = "x" * 100   # 100-byte message text, as in the performance issue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The broker's public key (Z85) when it runs with CURVE; None for a plain broker.
BROKER_KEY: bytes | None = None


def secure(sock: zmq.Socket[Any]) -> None:
    """Make ``sock`` a CurveZMQ client of the broker, when it encrypts (before connect)."""
    if BROKER_KEY is not None:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
            BROKER_KEY, public, secret)


#: The cheapest password hashing the broker accepts (Argon2id at 1 MiB, one pass): for
#: set-ups whose logins are not what is timed (the shipped cost is the sessions
#: scenario's ``login_storm``).
FAST_HASH_SETTINGS: dict[str, Any] = {"argon2_memory_kib": MIN_ARGON2_MEMORY_KIB,
                                      "argon2_time_cost": 1}


def start_broker(data_dir: Path, argon2_memory_kib: int = MIN_ARGON2_MEMORY_KIB,
                 encryption: str = "curve") -> tuple[subprocess.Popen[str], str]:
    global BROKER_KEY
    router, pub = free_port(), free_port()
    config = data_dir / "bench.toml"
    # The SEND rate limit is off: one sender keeping a window of requests in flight
    # measures the broker's ceiling, not its protection (docs/PROTOCOL.md §15).
    config.write_text(f"[broker]\nargon2_memory_kib = {argon2_memory_kib}\n"
                      f"argon2_time_cost = 1\nlog_level = \"warning\"\n"
                      f"send_rate_per_s = 0\nencryption = \"{encryption}\"\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "zchat", "broker", "--config", str(config), "--data-dir",
         str(data_dir), "--router", f"tcp://127.0.0.1:{router}",
         "--pub", f"tcp://127.0.0.1:{pub}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    BROKER_KEY = None
    for line in proc.stdout:
        if "public key:" in line:
            BROKER_KEY = line.split()[-1].encode()
        if "fingerprint" in line or "encryption none" in line:
            break
    return proc, f"tcp://127.0.0.1:{router}"


class RawClient:
    """A blocking client over the codec, for load generation without asyncio overhead."""

    def __init__(self, ctx: zmq.Context[Any], server: str) -> None:
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        secure(self.dealer)
        self.dealer.connect(server)
        self.n = 0
        self.info: p.InfoReply = self.call(p.Info())

    def send(self, req: p.Request) -> bytes:
        self.n += 1
        rid = str(self.n).encode()
        self.dealer.send_multipart(p.encode_request(rid, req))
        return rid

    def call(self, req: p.Request) -> Any:
        rid = self.send(req)
        while True:
            got, value = p.decode_from_broker(self.dealer.recv_multipart(), {rid: req.REPLY})
            if got == rid:
                if isinstance(value, p.Error):
                    raise RuntimeError(f"{req.TYPE}: {value.status} {value.reason}")
                return value




# -- the scenario interface (benchmarks/run.py) ---------------------------------------------
#
# Each scenario module exposes ``SCENARIOS: dict[str, Callable[[Bench], list[Row]]]``;
# run.py calls every selected scenario with one Bench and prints all rows in one table.
# Everything below is added for that interface; the functions above keep their shape.

#: Where a scenario spawns its helper processes: "spawn", never fork (a forked child would
#: inherit the parent's zmq context and its I/O threads, which ZeroMQ does not support).
MP = multiprocessing.get_context("spawn")

#: Broker settings every benchmark broker gets unless a scenario overrides them:
#: - send_rate_per_s = 0: the per-session SEND limit (docs/PROTOCOL.md §15) is off, so a
#:   sender keeping a window of requests in flight measures the broker, not its protection;
#: - login_rate_per_s = 0: hundreds of members log in from 127.0.0.1 in a second;
#: - read_rate_bytes_per_s = 0: the history scenario times thousands of pages back to back;
#: - heartbeat_timeout_s = 3600: the load generators' members do not heartbeat, and must not
#:   be evicted in the middle of a run (the sessions scenario sets its own);
#: - sndhwm / rcvhwm / pub_sndhwm = 10,000,000: the PUB drops at its high-water mark per
#:   subscriber (ZeroMQ's PUB semantics), and the harness's Python receivers, raw SUBs that
#:   do not repair gaps from HISTORY as zchat's client does, are slower than the broker
#:   with many subscribers on 2 cores: the bare relay runs unbounded too (sndhwm 0);
#: - FAST_HASH_SETTINGS (Argon2id at 1 MiB, one pass): member set-up is not what these
#:   scenarios time (the password-login cost is measured at the shipped parameters by the
#:   sessions scenario);
#: - max_connections and max_connections_per_address = what ``ulimit -n`` carries (its
#:   hard limit less FD_HEADROOM, docs/PROTOCOL.md §15.3): every member connects from
#:   127.0.0.1, and a sessions run holds a DEALER and a SUB for each of 10,000 clients.
_HARD_NOFILE = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
_CONNECTIONS = 1_000_000 if _HARD_NOFILE == resource.RLIM_INFINITY \
    else max(1, min(_HARD_NOFILE, 1_000_000) - FD_HEADROOM)
BROKER_DEFAULTS: dict[str, Any] = {
    "log_level": "warning", "send_rate_per_s": 0, "login_rate_per_s": 0,
    "read_rate_bytes_per_s": 0,
    "heartbeat_timeout_s": 3600.0, "sndhwm": 10_000_000, "rcvhwm": 10_000_000,
    "pub_sndhwm": 10_000_000,
    **FAST_HASH_SETTINGS, "max_sessions": 20_000,
    "max_connections": _CONNECTIONS, "max_connections_per_address": _CONNECTIONS,
}


@dataclass
class Row:
    """One line of the results table.

    ``name`` says what was measured ("1 sender -> 50 subs delivered"), ``value`` in
    ``unit``; ``ratio`` is value / the bare relay's figure for the same shape measured in
    the same run (None where the issue asks for none or the ceiling was not measured);
    ``target`` the issue's target as text ("" = none) and ``met`` whether it was reached
    (None = no target). ``raw`` holds every figure behind the row (written to the JSON).
    ``error`` is a correctness failure (loss, duplicates, error replies): run.py then exits
    non-zero, whatever the figures.
    """

    name: str
    value: float
    unit: str
    ratio: float | None = None
    target: str = ""
    met: bool | None = None
    raw: dict[str, Any] = field(default_factory=dict)
    error: str = ""


@dataclass
class BrokerHandle:
    """A running ``zchat broker`` subprocess: its endpoints, data directory (the SQLite file
    is ``db``), public key (None without CURVE) and log file."""

    proc: subprocess.Popen[bytes]
    router: str
    pub: str
    key_endpoint: str
    data_dir: Path
    public_key: bytes | None
    log: Path
    settings: dict[str, Any]

    @property
    def db(self) -> Path:
        return self.data_dir / "zchat.db"

    def stop(self, timeout_s: float = 10.0) -> int:
        """SIGTERM, then wait (SIGKILL after ``timeout_s``); returns the exit code."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout_s)
        return int(self.proc.returncode)


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")


def run_broker(data_dir: Path, settings: dict[str, Any], *, router: str | None = None,
               pub: str | None = None, ready_timeout_s: float = 60.0) -> BrokerHandle:
    """Start ``zchat broker`` as a subprocess on loopback with ``settings`` (the [broker]
    keys of zchat/data/zchat.toml) and return once it has bound its sockets (it printed its
    fingerprint or "encryption none"). Free ports are chosen unless ``router``/``pub``
    are given (a restart on the same endpoints). Output goes to ``data_dir/broker.log``.
    Raises RuntimeError if the broker exits or stays silent for ``ready_timeout_s``."""
    data_dir.mkdir(parents=True, exist_ok=True)
    router = router or f"tcp://127.0.0.1:{free_port()}"
    pub = pub or f"tcp://127.0.0.1:{free_port()}"
    key_endpoint = settings.get("key_endpoint") or f"tcp://127.0.0.1:{free_port()}"
    merged = {**settings, "router": router, "pub": pub, "key_endpoint": key_endpoint,
              "data_dir": str(data_dir)}
    config = data_dir / "bench.toml"
    config.write_text("[broker]\n" + "".join(f"{k} = {_toml_value(v)}\n"
                                             for k, v in merged.items()))
    log = data_dir / "broker.log"
    # ZCHAT_BENCH_PROFILE=DIR: run the broker under cProfile, one file per start in DIR
    # (written when it stops on SIGTERM; read with `python -m pstats FILE`).
    profile = os.environ.get("ZCHAT_BENCH_PROFILE")
    runner = [sys.executable]
    if profile:
        Path(profile).mkdir(parents=True, exist_ok=True)
        runner += ["-m", "cProfile", "-o",
                   str(Path(profile) / f"broker-{data_dir.name}-{time.time_ns()}.prof")]
    proc: subprocess.Popen[bytes] | None = None
    public_key: bytes | None = None
    text = ""
    try:
        # Popen cannot be interrupted safely: a SIGTERM handled inside it, after the fork,
        # raises out of it with the child running and its pid lost. Held back here, the
        # signal is handled once ``proc`` is set, and the except clause below stops it.
        with sigterm_held(), open(log, "ab") as out:
            offset = out.tell()
            proc = subprocess.Popen([*runner, "-m", "zchat", "broker", "--config",
                                     str(config)], stdout=out, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + ready_timeout_s
        while True:
            text = log.read_bytes()[offset:].decode("utf-8", "replace") if log.exists() \
                else ""
            if "fingerprint" in text or "encryption none" in text:
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the broker did not start:\n{text}")
            time.sleep(0.02)  # polling a log file for a line, not waiting for a socket
    except BaseException:  # not started, or the run was stopped (SIGTERM, Ctrl-C) meanwhile
        if proc is not None:
            proc.kill()
            proc.wait()
        raise
    for line in text.splitlines():
        if "public key:" in line:
            public_key = line.split()[-1].encode()
    return BrokerHandle(proc, router, pub, key_endpoint, data_dir, public_key, log, merged)


@contextlib.contextmanager
def sigterm_held() -> Iterator[None]:
    """Hold SIGTERM back for the ``with`` block: a SIGTERM that arrives inside it is
    recorded, and raised again once the previous handler is back (benchmarks/run.py's
    raises SystemExit; the default ends the process), when the block ends. For steps that
    must not be cut in two, such as a spawn and the bookkeeping that stops the child.

    Only the main thread can set a handler, and only it runs Python handlers: called from
    another thread, the block runs unguarded."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, _frame: arrived.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        if arrived:
            signal.raise_signal(signal.SIGTERM)


def child_processes() -> dict[int, str]:
    """This process's running children (/proc/*/stat: ppid, state not Z): {pid: command
    line}. Leaves out multiprocessing's resource tracker, which exits with its parent."""
    children: dict[int, str] = {}
    me = os.getpid()
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            stat = Path(entry.path, "stat").read_bytes()
            cmdline = Path(entry.path, "cmdline").read_bytes()
        except OSError:  # gone meanwhile
            continue
        state, ppid = stat[stat.rindex(b")") + 2:].split()[:2]
        line = cmdline.replace(b"\0", b" ").decode("utf-8", "replace").strip()
        if int(ppid) == me and state != b"Z" and "multiprocessing.resource_tracker" not in line:
            children[int(entry.name)] = line
    return children


def stop_children(timeout_s: float = 5.0) -> list[str]:
    """SIGTERM every child process still running (:func:`child_processes`), SIGKILL those
    still there after ``timeout_s``, reap them; returns their command lines. The last word
    of a run: whatever a scenario left (a broker it lost track of) does not outlive it."""
    left = child_processes()
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    waiting = set(left)
    while waiting:
        for pid in list(waiting):
            try:
                done, _status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:  # reaped by its Popen meanwhile
                done = pid
            if done == pid:
                waiting.discard(pid)
        if not waiting:
            break
        if time.monotonic() > deadline:
            for pid in waiting:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            for pid in waiting:
                with contextlib.suppress(ChildProcessError):
                    os.waitpid(pid, 0)  # SIGKILLed: it ends at once
            break
        time.sleep(0.01)  # one polling step of exits with a deadline, not a wait
    return list(left.values())


def secure_with(sock: zmq.Socket[Any], server_key: bytes | None,
                keypair: tuple[bytes, bytes] | None = None) -> tuple[bytes, bytes] | None:
    """Make ``sock`` a CurveZMQ client of a server with public key ``server_key`` (Z85)
    with ``keypair`` or a fresh one, and return the pair used; nothing (None) when
    ``server_key`` is None. Call before connect. A SUB must use the pair of a DEALER that
    has logged in, and connect after the login: the broker's PUB admits only the key of
    a live session (docs/PROTOCOL.md §16.2)."""
    if server_key is None:
        return None
    public, secret = keypair or zmq.curve_keypair()
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
        server_key, public, secret)
    return public, secret


@dataclass
class Bench:
    """What every scenario gets: the zmq context of this process, the parsed arguments,
    ``quick`` (small sizes for a smoke run), a scratch directory, the transport
    (``encryption``: "curve" or "none"), and the ceiling figures measured so far in this
    run (``ceiling``: key -> figure; see ``ceiling_key``)."""

    ctx: zmq.Context[Any]
    args: Any
    quick: bool
    tmp: Path
    encryption: str = "curve"
    ceiling: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    _counter: int = 0

    def scratch(self, name: str) -> Path:
        """A fresh directory under ``tmp`` for one broker's data."""
        self._counter += 1
        path = self.tmp / f"{self._counter:03d}-{name}"
        path.mkdir(parents=True)
        return path

    @contextlib.contextmanager
    def broker(self, name: str = "broker", data_dir: Path | None = None,
               **settings: Any) -> Iterator[BrokerHandle]:
        """Run a broker for the ``with`` block: BROKER_DEFAULTS, this run's encryption,
        then ``settings`` (zchat/data/zchat.toml [broker] keys; ``router``/``pub`` to reuse
        endpoints). A fresh data directory unless ``data_dir`` is given. Stopped after."""
        endpoints = {k: settings.pop(k) for k in ("router", "pub") if k in settings}
        merged = {**BROKER_DEFAULTS, "encryption": self.encryption, **settings}
        handle: BrokerHandle | None = None
        try:  # run_broker inside: a SIGTERM right after it returns still stops the broker
            handle = run_broker(data_dir or self.scratch(name), merged, **endpoints)
            yield handle
        finally:
            if handle is not None:
                handle.stop()

    def note(self, text: str) -> None:
        """A line printed under the table (for example where the harness is the limit)."""
        if text not in self.notes:
            self.notes.append(text)


def ceiling_key(senders: int, subscribers: int, figure: str) -> str:
    """Key of a bare-relay figure in ``Bench.ceiling``: ``relay/{senders}x{subs}/{figure}``
    with figure ``acked_per_s`` or ``delivered_per_s``."""
    return f"relay/{senders}x{subscribers}/{figure}"


def rss_kib(pid: int) -> int:
    """Resident memory of ``pid`` (VmRSS) in KiB; 0 when it is gone."""
    with contextlib.suppress(OSError):
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def percentile(sorted_values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) of an ascending list, nearest-rank method."""
    if not sorted_values:
        return float("nan")
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[min(len(sorted_values), int(rank)) - 1]


def spawn(target: Callable[..., None], *args: Any) -> Any:
    """Start ``target(*args)`` in a fresh (spawned) Python process; returns the process."""
    proc = MP.Process(target=target, args=args, daemon=True)
    proc.start()
    return proc


def machine_info() -> dict[str, Any]:
    """CPU model (/proc/cpuinfo), cores, load, Python, libzmq, pyzmq and SQLite versions,
    and the date (UTC), for the JSON results."""
    import platform
    import sqlite3

    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = os.getloadavg() if hasattr(os, "getloadavg") else (0.0, 0.0, 0.0)
    return {"cpu_model": model, "cores": os.cpu_count(), "load_avg_1_5_15": list(load),
            "platform": platform.platform(), "python": platform.python_version(),
            "libzmq": zmq.zmq_version(), "pyzmq": zmq.__version__,
            "sqlite": sqlite3.sqlite_version,
            "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
