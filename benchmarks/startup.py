"""Startup benchmarks (issue 7): how long until a broker serves, and until the console shows.

Scenarios (``SCENARIOS``; ``python benchmarks/run.py --only broker_startup,join_startup``):

- ``broker_startup``: the time from spawning ``zchat broker`` (on an existing data
  directory: database, key pair and one account made by a first start) until a client gets
  OK to INFO and to a password LOGIN (Argon2id at the shipped parameters, so one hash is in
  the figure); median of 3 (quick) or 5 starts. The client's DEALER is connected right
  after the spawn with a 10 ms reconnect interval, so it is in at most 10 ms after the
  broker binds. The first start (creating the key pair and the database) is reported too.
- ``join_startup``: the time from spawning ``zchat join NAME`` in a pseudo-terminal
  (pty.openpty; TERM=xterm-256color, 100 x 30; XDG directories in a scratch directory; the
  broker's key pinned in its known_brokers.toml, or encryption none; the password in
  $ZCHAT_PASSWORD) until its first full screen: the sidebar heading ``Rooms`` and the room
  ``#lobby`` on the screen, read from the pty; median of 3 (quick) or 5. The console's
  cursor-position requests are answered as a terminal would.
"""

from __future__ import annotations

import fcntl
import os
import pty
import re
import select
import signal
import statistics
import struct
import subprocess
import sys
import termios
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from harness import Bench, Row, secure_with
from sessions import SHIPPED_HASH, BlockingClient

from zchat import wire as p
from zchat.client import trust

PASSWORD = "bench password"
COLS, ROWS = 100, 30
#: ANSI control sequences (CSI ... final byte, OSC ... BEL/ST, two-byte ESC x): stripped
#: from the pty's output before looking for the screen's text.
ANSI = re.compile(rb"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)|\x1b[@-Z\\-_]")
CPR_REQUEST = b"\x1b[6n"


def zchat_argv() -> list[str]:
    """The ``zchat`` console script of this interpreter's environment (``-m zchat`` if the
    script is missing)."""
    script = Path(sys.executable).parent / "zchat"
    return [str(script)] if script.exists() else [sys.executable, "-m", "zchat"]


def _time_to_login(ctx: zmq.Context[Any], argv: list[str], router: str,
                   key: bytes | None, name: str) -> tuple[float, float, subprocess.Popen[bytes]]:
    """Spawn the broker (``argv``) and return (s to INFO OK, s to LOGIN OK, process)."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.reconnect_ivl = 10
    secure_with(dealer, key)
    try:
        t0 = time.monotonic()
        proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        dealer.connect(router)
        dealer.send_multipart(p.encode_request(b"1", p.Info()))
        dealer.send_multipart(p.encode_request(b"2", p.Login(name=name, password=PASSWORD)))
        got: dict[bytes, float] = {}
        while len(got) < 2:
            if not dealer.poll(30_000):
                proc.kill()
                proc.wait()
                raise RuntimeError("the broker did not answer INFO and LOGIN within 30 s")
            frames = dealer.recv_multipart()
            rid, value = p.decode_from_broker(frames, {b"1": p.InfoReply, b"2": p.LoggedIn})
            if isinstance(value, p.Error):
                raise RuntimeError(f"broker start: {value.status} {value.reason}")
            got[rid] = time.monotonic() - t0
        return got[b"1"], got[b"2"], proc
    finally:
        dealer.close(0)


def _stop(proc: subprocess.Popen[Any]) -> None:
    proc.terminate()
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def broker_startup(bench: Bench) -> list[Row]:
    rounds = 3 if bench.quick else 5
    data = bench.scratch("startup-broker")
    t0 = time.monotonic()
    with bench.broker("startup", data_dir=data, **SHIPPED_HASH) as broker:
        first_s = time.monotonic() - t0  # spawn to "fingerprint" on a fresh directory
        client = BlockingClient(bench.ctx, broker)
        client.call(p.Register(name="starter", password=PASSWORD))
        client.close()
        argv = [*zchat_argv(), "broker", "--config", str(data / "bench.toml")]
        router, key = broker.router, broker.public_key
    info_s, login_s = [], []
    for _ in range(rounds):
        info, login, proc = _time_to_login(bench.ctx, argv, router, key, "starter")
        _stop(proc)
        info_s.append(info)
        login_s.append(login)
    raw = {"rounds": rounds, "info_s": info_s, "login_s": login_s,
           "first_start_ready_s": first_s, **SHIPPED_HASH,
           "encryption": bench.encryption}
    return [
        Row("zchat broker: spawn -> first INFO OK (median)", statistics.median(info_s) * 1000,
            "ms", raw=raw),
        Row("zchat broker: spawn -> first LOGIN OK (median)",
            statistics.median(login_s) * 1000, "ms", raw=raw),
        Row("zchat broker: first start (new keys, new db) -> bound", first_s * 1000, "ms",
            raw=raw),
    ]


class _Pty:
    """A process on a pseudo-terminal of COLS x ROWS; its output is kept as bytes."""

    def __init__(self, argv: list[str], env: dict[str, str]) -> None:
        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", ROWS, COLS, 0, 0))
        self.proc = subprocess.Popen(argv, stdin=slave, stdout=slave, stderr=slave, env=env,
                                     start_new_session=True, close_fds=True)
        os.close(slave)
        self.output = b""

    def screen_text(self) -> str:
        return ANSI.sub(b"", self.output).decode("utf-8", "replace")

    def wait_for(self, condition: Callable[[str], bool], timeout_s: float) -> bool:
        """Read until ``condition(text seen so far)``; False at EOF or after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not condition(self.screen_text()):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            ready, _w, _x = select.select([self.master], [], [], left)
            if not ready:
                continue
            try:
                chunk = os.read(self.master, 65536)
            except OSError:  # EIO: the process closed the terminal
                return False
            if not chunk:
                return False
            if CPR_REQUEST in chunk:  # answer "where is the cursor?" as a terminal does
                os.write(self.master, b"\x1b[1;1R" * chunk.count(CPR_REQUEST))
            self.output += chunk
        return True

    def close(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        os.close(self.master)


def _console_env(home: Path, broker_router: str, key: bytes | None) -> dict[str, str]:
    """Environment of a console: XDG directories under ``home``, a client config naming
    the broker, the key pinned (CURVE) or encryption none, the password."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "ZCHAT_"))}
    env.update(HOME=str(home), TERM="xterm-256color", LANG="C.UTF-8", LC_ALL="C.UTF-8",
               XDG_CONFIG_HOME=str(home / "config"), XDG_DATA_HOME=str(home / "data"),
               XDG_STATE_HOME=str(home / "state"), XDG_CACHE_HOME=str(home / "cache"),
               ZCHAT_PASSWORD=PASSWORD, COLUMNS=str(COLS), LINES=str(ROWS))
    config = home / "config" / "zchat"
    config.mkdir(parents=True, exist_ok=True)
    encryption = "curve" if key is not None else "none"
    (config / "zchat.toml").write_text(
        f'[client]\nserver = "{broker_router}"\nencryption = "{encryption}"\n')
    if key is not None:
        trust.pin_broker_key(config / trust.KNOWN_BROKERS_FILE, broker_router, key.decode())
    return env


def join_startup(bench: Bench) -> list[Row]:
    rounds = 3 if bench.quick else 5
    times: list[float] = []
    with bench.broker("startup-join", **SHIPPED_HASH) as broker:
        client = BlockingClient(bench.ctx, broker)
        client.call(p.Register(name="viewer", password=PASSWORD))
        client.close()
        for i in range(rounds):
            home = bench.scratch(f"join-{i}")
            env = _console_env(home, broker.router, broker.public_key)

            def full_screen(text: str) -> bool:
                return ("Rooms" in text and "#lobby" in text and "Members" in text
                        and "viewer" in text)

            t0 = time.monotonic()
            term = _Pty([*zchat_argv(), "join", "viewer"], env)
            try:
                if not term.wait_for(full_screen, 30.0):
                    tail = term.screen_text()[-600:]
                    raise RuntimeError(f"zchat join never showed its screen:\n{tail}")
                times.append(time.monotonic() - t0)
            finally:
                term.close()
    raw = {"rounds": rounds, "join_s": times, **SHIPPED_HASH,
           "encryption": bench.encryption}
    return [Row("zchat join: spawn -> first full screen (median)",
                statistics.median(times) * 1000, "ms", raw=raw)]


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {
    "broker_startup": broker_startup,
    "join_startup": join_startup,
}
