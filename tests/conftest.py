"""Shared fixtures: an in-process broker (inproc://, real SQLite) and a broker subprocess on
loopback TCP for the end-to-end CLI tests; a real PostgreSQL server for the session
(tests/postgres_server.py) and a store on either engine (``store_db``).

Async tests are plain sync tests that call ``run(coro)``: ``asyncio.run`` with an overall
deadline, so no async plugin is needed and a hung await fails the test instead of hanging.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import queue
import signal
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Coroutine, Iterator
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import pytest
import zmq
from client_helpers import RestartableBroker
from postgres_server import PostgresServer, find_bindir
from processes import _no_process_left_behind as _no_process_left_behind
from processes import pytest_sessionfinish as pytest_sessionfinish

from zchat.client.trust import pin_broker_key
from zchat.store import GroupStore, Store, open_store
from zchat.testing import (
    DEFAULT_PASSWORD,
    Harness,
    create_admin_accounts,
    free_port,
    running_broker,
)
from zchat.testing import wait_until as wait_until  # the tests import it from here

T = TypeVar("T")

#: Overall bound of one ``run()``; generous, only a hang should ever reach it.
RUN_TIMEOUT_S = 20.0


def run(coro: Coroutine[Any, Any, T], timeout_s: float = RUN_TIMEOUT_S) -> T:
    """Run ``coro`` on a fresh event loop; fail (TimeoutError) after ``timeout_s``."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


#: The homes of whoever runs the suite, read before any test replaces them
#: (tests/test_hygiene.py checks that nothing of a test is written there).
REAL_HOMES = {name: os.environ.get(name, "") for name in (
    "HOME", "XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "XDG_CACHE_HOME",
    "XDG_RUNTIME_DIR")}


def private_homes(tmp_path: Path) -> dict[str, str]:
    """HOME and the XDG base directories (config, data, state, cache, runtime) of one test,
    all inside ``tmp_path``. Only the runtime directory is created (0700, as the XDG Base
    Directory Specification requires it to exist); zchat creates the others on use."""
    runtime = tmp_path / "xdg-runtime"
    runtime.mkdir(mode=0o700, exist_ok=True)
    return {"HOME": str(tmp_path / "home"),
            "XDG_CONFIG_HOME": str(tmp_path / "xdg-config"),
            "XDG_DATA_HOME": str(tmp_path / "xdg-data"),
            "XDG_STATE_HOME": str(tmp_path / "xdg-state"),
            "XDG_CACHE_HOME": str(tmp_path / "xdg-cache"),
            "XDG_RUNTIME_DIR": str(runtime)}


@pytest.fixture(autouse=True)
def _private_xdg_homes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Every test's HOME and XDG homes are inside its tmp_path (``private_homes``, the
    same ``cli_env`` gives subprocesses): a tcp client pins broker keys there, an
    in-process tcp broker without ``data_dir`` keeps its key pair there
    (docs/security.md), the console writes its console.log there, and a fallback to
    ~/.local/state or ~/.config lands there too: never in the real home. A port reused
    by another test's broker never meets a stale pin."""
    for name, value in private_homes(tmp_path).items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def harness(zchat_broker: Harness) -> Harness:
    """A real broker thread on inproc:// with an in-memory SQLite store (the zchat.testing
    plugin's ``zchat_broker``, under the shorter name these tests use)."""
    return zchat_broker


@pytest.fixture
def file_harness(zchat_file_broker: Harness) -> Harness:
    """The same with an SQLite file in ``tmp_path`` (``zchat_file_broker``)."""
    return zchat_file_broker


#: Numbers the inproc endpoints of ``inproc_broker`` apart within this process.
_tags = itertools.count(1)


@pytest.fixture
def inproc_broker(tmp_path: Path) -> Iterator[RestartableBroker]:
    """A broker thread on ``inproc://`` endpoints of its own and an SQLite file in
    ``tmp_path``, not yet started: the test starts and stops it, to restart it on the same
    endpoints and file (tests/client_helpers.py's ``RestartableBroker``). Stopped after."""
    tag = f"{os.getpid()}-{next(_tags)}"
    broker = RestartableBroker(tmp_path / "zchat.db", f"inproc://zchat-rc-router-{tag}",
                               f"inproc://zchat-rc-pub-{tag}")
    try:
        yield broker
    finally:
        broker.stop()


# -- PostgreSQL ----------------------------------------------------------------------------

#: The engines a store test runs on (``store_db``).
ENGINES = ("sqlite", "postgresql")


@pytest.fixture(scope="session")
def postgres_or_reason() -> Iterator[PostgresServer | str]:
    """One real PostgreSQL server for the whole session (initdb in a temporary directory,
    loopback TCP and a Unix socket, fsync off), stopped and removed at the end; or, where
    PostgreSQL is not installed, the reason. A fixture that needs the server names this
    one (or ``postgres_server``) as an argument rather than asking for it inside: a
    session fixture asked for mid-test would start its server after the test's
    process check took its snapshot (tests/processes.py), which would then take the
    server for a process the test left behind."""
    bindir, why = find_bindir()
    if bindir is None:
        yield why
        return
    server = PostgresServer(bindir)
    try:
        server.start()
        yield server
    finally:
        server.stop()


def need_postgres(server: PostgresServer | str) -> PostgresServer:
    """The server, or skip the test saying why there is none; fail it when ``CI=true`` or
    ``ZCHAT_REQUIRE_POSTGRES=1`` (.ci/run, which installs PostgreSQL), since CI must run
    these tests."""
    if isinstance(server, PostgresServer):
        return server
    if os.environ.get("CI") == "true" or os.environ.get("ZCHAT_REQUIRE_POSTGRES") == "1":
        pytest.fail(f"PostgreSQL is required here (CI=true or ZCHAT_REQUIRE_POSTGRES=1) "
                    f"but {server}", pytrace=False)
    pytest.skip(server)


@pytest.fixture(scope="session")
def postgres_server(postgres_or_reason: PostgresServer | str) -> PostgresServer:
    """The session's PostgreSQL server (``postgres_or_reason``); skips the test without
    one (fails it when ``CI=true``)."""
    return need_postgres(postgres_or_reason)


@pytest.fixture
def opened() -> Any:
    """``open(url)``: a PostgreSQL store (zchat.store.postgres.Store) for the test; every
    store it gave is closed after the test, in the order opened (a store holding a lock
    first, so that a write waiting on it ends)."""
    from zchat.store.postgres import Store as PostgresStore

    stores: list[PostgresStore] = []

    def open_(url: str) -> PostgresStore:
        store = PostgresStore(url)
        stores.append(store)
        return store

    yield open_
    for store in stores:
        store.close()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> Iterator[str]:
    """The URL of a new database of the session's server holding zchat's schema and no
    rows; dropped after the test (any session still on it is ended)."""
    with postgres_server.database() as url:
        yield url


class StoreDb:
    """A database a test opens stores on: ``engine`` "sqlite" (a file in tmp_path) or
    "postgresql" (a database of the session's server). Every store ``open()`` gave is
    closed after the test."""

    def __init__(self, engine: str, location: str) -> None:
        self.engine, self.location = engine, location
        self.opened: list[GroupStore] = []

    def open(self) -> Any:
        """A new Store on this database (a new connection), typed Any so that tests reach
        the adapters' methods beyond the port (``store_dm``, ``get_room`` …)."""
        store = open_store(self.location)
        self.opened.append(store)
        return store

    def count(self, table: str) -> int:
        """Rows in ``table``, as another connection sees them (committed only)."""
        other = self.open()
        try:
            return int(other._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        finally:
            other.close()

    def close_all(self) -> None:
        for store in self.opened:
            with contextlib.suppress(Exception):
                store.close()


@pytest.fixture(params=ENGINES)
def store_db(request: pytest.FixtureRequest, tmp_path: Path,
             postgres_or_reason: PostgresServer | str) -> Iterator[StoreDb]:
    """A fresh database on each engine in turn (``ENGINES``): the port's behaviour is
    tested once, on both. Without PostgreSQL its half skips (fails when ``CI=true``)."""
    if request.param == "sqlite":
        db = StoreDb("sqlite", str(tmp_path / "zchat.db"))
        try:
            yield db
        finally:
            db.close_all()
        return
    with need_postgres(postgres_or_reason).database() as url:
        db = StoreDb("postgresql", url)
        try:
            yield db
        finally:
            db.close_all()


@pytest.fixture(params=ENGINES)
def any_harness(request: pytest.FixtureRequest,
                postgres_or_reason: PostgresServer | str) -> Iterator[Harness]:
    """A real broker thread on inproc:// on each engine in turn: an in-memory SQLite
    store, then a fresh PostgreSQL database (zchat.testing.running_broker with its URL).
    A module runs its ``harness`` tests on both by defining ``harness`` as this."""
    if request.param == "sqlite":
        with running_broker() as harness:
            yield harness
        return
    with need_postgres(postgres_or_reason).database() as url, running_broker(url) as harness:
        yield harness


# -- subprocesses --------------------------------------------------------------------------


def zchat_command() -> list[str]:
    """The ``zchat`` console script of this interpreter's environment (``-m zchat`` if the
    script is missing)."""
    script = Path(sys.executable).parent / "zchat"
    return [str(script)] if script.exists() else [sys.executable, "-m", "zchat"]


#: The subprocesses (Proc) started by the running test: a failed test's report shows what
#: they printed (``pytest_runtest_makereport``).
_STARTED: list[Proc] = []
#: Lines of each stream shown per subprocess in a failed test's report.
REPORT_LINES = 30


def _machine_state() -> str:
    """The load average and the five busiest processes: a test that failed because the
    machine was shared with other work says so in its report."""
    try:
        load = Path("/proc/loadavg").read_text(encoding="ascii").strip()
    except OSError:
        load = "?"
    try:
        busiest = subprocess.run(["ps", "-eo", "pid,pcpu,rss,etime,args", "--sort=-pcpu"],
                                 capture_output=True, text=True, timeout=5).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        busiest = f"ps failed: {exc}"
    top = "\n".join(line[:200] for line in busiest.splitlines()[:6])
    try:
        fds = len(os.listdir("/proc/self/fd"))
    except OSError:
        fds = -1
    sockets = len(getattr(zmq.Context.instance(), "_sockets", ()))
    try:
        states = subprocess.run(["ss", "-Htan"], capture_output=True, text=True,
                                timeout=5).stdout.split("\n")
        counts: dict[str, int] = {}
        for line in states:
            if line.strip():
                counts[line.split()[0]] = counts.get(line.split()[0], 0) + 1
    except (OSError, subprocess.SubprocessError):
        counts = {}
    def command(*args: str) -> str:
        try:
            return subprocess.run(args, capture_output=True, text=True, timeout=5).stdout
        except (OSError, subprocess.SubprocessError) as exc:
            return f"{args[0]} failed: {exc}"
    # who listens where, and the kernel's counts of dropped handshakes: some runs' later
    # tests get no answer from fresh brokers (docs/testing.md, "A flake not understood")
    listening = " ".join(line.split()[3] + ("(" + line.split("users:")[1][:40] + ")"
                                             if "users:" in line else "")
                         for line in command("ss", "-Hltnp").splitlines() if line.strip())
    kernel = " ".join(line.split()[0] + "=" + line.split()[1]
                      for line in command("nstat", "-az").splitlines()
                      if any(k in line for k in ("ListenOverflows", "ListenDrops",
                                                 "TCPSynRetrans", "TCPReqQFull",
                                                 "AttemptFails", "TCPBacklogDrop")))
    # the threads of this process, each with its innermost frame: a broker thread or
    # socket left running by an earlier test (the flake of docs/testing.md shows this
    # process holding listening ports no test of its own opened)
    frames = sys._current_frames()
    threads = "; ".join(
        f"{t.name}@{frames[t.ident].f_code.co_filename.rsplit('/', 1)[-1]}:"
        f"{frames[t.ident].f_lineno}" if t.ident in frames else t.name
        for t in threading.enumerate())
    return (f"load average: {load}\n{top}\nthis process: {fds} descriptors, {sockets} "
            f"sockets in zmq.Context.instance(); tcp states: {counts}\n"
            f"threads: {threads}\n"
            f"listening: {listening}\nkernel (since boot): {kernel}")


#: Test files that load both cores for seconds (hundreds of subscribers, floods, the
#: benchmarks' runs, a cluster's processes, irctest's server per test): pytest-xdist's
#: ``--dist loadgroup`` (pyproject.toml) runs them on one worker, one at a time, so two
#: of them never compete for the CPU (docs/testing.md). A CI run that let two meet saw an
#: honest PING wait 5 s where it waits 0.02 s alone.
HEAVY_FILES = frozenset({
    "test_pub_many_subscribers.py", "test_benchmarks.py", "test_chaos.py",
    "test_abuse_script.py", "test_irctest.py", "test_cluster_failures.py",
    "test_bounds.py", "test_pub_slow_subscribers.py", "test_protection_live.py",
    "test_flood_memory.py",
})


@pytest.hookimpl(tryfirst=True)  # before xdist's, which reads the group into the node id
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.path.name in HEAVY_FILES:
            item.add_marker(pytest.mark.xdist_group("heavy"))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    """A failed test's report carries the last REPORT_LINES lines of what its
    subprocesses (brokers, CLI commands) printed, with their exit codes, and the
    machine's load: a failure on CI explains itself without a rerun."""
    report = yield
    if report.failed:
        for number, proc in enumerate(_STARTED):
            rc = proc.popen.poll()
            head = f"{' '.join(proc.argv[:4])} … (exit code {rc})"
            for name in ("stdout", "stderr"):
                lines = getattr(proc, name)[-REPORT_LINES:]
                if lines:
                    report.sections.append((f"subprocess {number} {name}: {head}",
                                            "\n".join(lines)))
        report.sections.append(("machine", _machine_state()))
    if call.when == "teardown":
        _STARTED.clear()
    return report


class Proc:
    """A subprocess whose stdout and stderr are drained by threads into line lists, so that
    a test can wait for a line with a deadline and a chatty process never blocks on a full
    pipe."""

    def __init__(self, argv: list[str], env: dict[str, str], stdin: int | None = None) -> None:
        self.argv = argv
        self.popen = subprocess.Popen(argv, env=env, stdin=stdin if stdin is not None
                                      else subprocess.DEVNULL, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True, encoding="utf-8")
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        _STARTED.append(self)
        self._lines: dict[str, queue.SimpleQueue[str | None]] = {
            "stdout": queue.SimpleQueue(), "stderr": queue.SimpleQueue()}
        self._threads = [
            threading.Thread(target=self._drain, args=(name, stream, store), daemon=True)
            for name, stream, store in (("stdout", self.popen.stdout, self.stdout),
                                        ("stderr", self.popen.stderr, self.stderr))]
        for t in self._threads:
            t.start()

    def _drain(self, name: str, stream: Any, store: list[str]) -> None:
        for line in stream:
            store.append(line.rstrip("\n"))
            self._lines[name].put(line.rstrip("\n"))
        self._lines[name].put(None)

    def wait_line(self, stream: str, contains: str, timeout_s: float = 10.0) -> str:
        """Return the first unread line of ``stream`` containing ``contains``; raises
        AssertionError when the stream ends or ``timeout_s`` passes first."""
        deadline = time.monotonic() + timeout_s
        q = self._lines[stream]
        while True:
            remaining = deadline - time.monotonic()
            try:
                line = q.get(timeout=max(remaining, 0.0))
            except queue.Empty:
                raise AssertionError(
                    f"no {stream} line with {contains!r} within {timeout_s} s from "
                    f"{self.argv}; stdout={self.stdout} stderr={self.stderr}") from None
            if line is None:
                q.put(None)
                raise AssertionError(
                    f"{stream} of {self.argv} ended without {contains!r} "
                    f"(exit {self.popen.poll()}); stdout={self.stdout} stderr={self.stderr}")
            if contains in line:
                return line

    def wait(self, timeout_s: float) -> int:
        """Exit code, waiting at most ``timeout_s``; also joins the drain threads."""
        rc = self.popen.wait(timeout_s)
        for t in self._threads:
            t.join(timeout_s)
        return rc

    def kill(self) -> None:
        if self.popen.poll() is None:
            self.popen.kill()
            self.popen.wait(5)


def cli_env(tmp_path: Path, password: str = DEFAULT_PASSWORD) -> dict[str, str]:
    """Environment of a zchat subprocess: the password, and HOME and the XDG directories
    inside ``tmp_path`` (``private_homes``) so that no user config or data is read and no
    log or state is written outside it."""
    env = dict(os.environ)
    env.update(private_homes(tmp_path), ZCHAT_PASSWORD=password, PYTHONUNBUFFERED="1")
    return env


class TcpBroker(NamedTuple):
    router: str
    process: Proc
    data_dir: Path


def start_broker(tmp_path: Path, attempts: int = 5, settings: str = "",
                 nofile: int | None = None) -> tuple[TcpBroker, list[str]]:
    """Start ``zchat broker`` on two free loopback ports and wait for its "database" line;
    ``settings`` are more TOML lines of its ``[broker]`` table (Argon2id at 1 MiB and one pass
    unless they set an ``argon2_`` key; with ``encryption = "none"`` no key is awaited or pinned); ``nofile`` its ``ulimit
    -n`` (soft and hard), if given (the shell then execs the broker: same pid).

    Returns the broker and the lines it printed at start. Retries with new ports when the
    bind fails (another process took a port between ``free_port`` and the bind). The
    accounts of the ``admins`` in ``settings`` are created first in the data directory's
    database (password DEFAULT_PASSWORD), as an operator does before the first start: the
    broker refuses to REGISTER an admin's name (docs/admin.md).
    """
    config = tmp_path / "broker.toml"
    table = tomllib.loads("[broker]\n" + settings)["broker"]
    cheap = "" if any(k.startswith("argon2_") for k in table) else "argon2_memory_kib = 1024\nargon2_time_cost = 1\n"
    config.write_text("[broker]\n" + cheap + settings, encoding="utf-8")
    data = tmp_path / "data"
    admins = table.get("admins", [])
    curve = table.get("encryption", "curve") != "none"
    if admins:
        data.mkdir(parents=True, exist_ok=True)
        store = Store(data / "zchat.db")
        try:
            create_admin_accounts(store, admins)
        finally:
            store.close()
    limit = ["sh", "-c", f'ulimit -n {nofile} && exec "$@"', "sh"] if nofile else []
    proc, router, _pub = spawn_on_free_ports(
        [*limit, *zchat_command(), "broker", "--config", str(config), "--data-dir",
         str(data)], cli_env(tmp_path), "database", attempts=attempts)
    try:
        key = proc.wait_line("stdout", "public key:", timeout_s=15).split()[-1] \
            if curve else ""
    except AssertionError:
        proc.kill()
        raise
    # Pinned up front, as a user who copied the printed key would: the CLI tests then
    # see no first-use notice on stderr (tests/test_e2e_curve.py covers first use).
    if curve:
        pin_broker_key(tmp_path / "xdg-config" / "zchat" / "known_brokers.toml", router, key)
    return TcpBroker(router, proc, data), list(proc.stdout)


def spawn_on_free_ports(command: list[str], env: dict[str, str], ready: str,
                        timeout_s: float = 30.0, attempts: int = 5) -> tuple[Proc, str, str]:
    """``command`` (a ``zchat broker …`` without endpoints) started with ``--router`` and
    ``--pub`` on free loopback ports, once its stdout printed a line with ``ready``; the
    process and its ROUTER and PUB endpoints (``timeout_s``: 30, a Python start on a
    loaded 2-core machine, the suite's other worker busy, once took over 15). Other ports
    when the bind fails (another
    process took one between ``free_port`` and the bind); AssertionError after
    ``attempts`` or when it fails otherwise (killed then)."""
    for _ in range(attempts):
        router = f"tcp://127.0.0.1:{free_port()}"
        pub = f"tcp://127.0.0.1:{free_port()}"
        if router == pub:
            continue
        proc = Proc([*command, "--router", router, "--pub", pub], env)
        try:
            proc.wait_line("stdout", ready, timeout_s=timeout_s)
        except AssertionError:
            proc.kill()
            # the stderr line decides, not the exit code: a CI run read the closed stdout
            # while the refused broker was still exiting (exit None) and gave up
            if any("cannot bind" in line for line in proc.stderr):
                continue
            raise
        return proc, router, pub
    raise AssertionError(f"could not bind a broker in {attempts} attempts")


def stop_broker(broker: TcpBroker, sig: int = signal.SIGTERM) -> tuple[int, float]:
    """Send ``sig`` and return (exit code, seconds until exit); kills it after 5 s."""
    start = time.monotonic()
    broker.process.popen.send_signal(sig)
    try:
        rc = broker.process.wait(5)
    except subprocess.TimeoutExpired:
        broker.process.kill()
        raise AssertionError(f"broker ignored signal {sig} for 5 s") from None
    return rc, time.monotonic() - start


@pytest.fixture
def tcp_broker(tmp_path: Path) -> Iterator[TcpBroker]:
    """``zchat broker`` as a subprocess on loopback TCP; yields (router, process, data dir).
    Teardown sends SIGTERM and asserts a clean exit (code 0) within 2 s."""
    broker, _lines = start_broker(tmp_path)
    try:
        yield broker
    finally:
        if broker.process.popen.poll() is None:
            rc, elapsed = stop_broker(broker)
            assert rc == 0, f"broker exit code {rc}; stderr={broker.process.stderr}"
            assert elapsed < 2.0, f"broker took {elapsed:.2f} s to stop"


@contextlib.contextmanager
def running_tcp_broker(tmp_path: Path, settings: str = "") -> Iterator[TcpBroker]:
    """``start_broker`` with ``settings`` for a ``with`` block; on exit, a broker still
    running is stopped and must exit cleanly (code 0)."""
    b = start_broker(tmp_path, settings=settings)[0]
    try:
        yield b
    finally:
        if b.process.popen.poll() is None:
            rc, _elapsed = stop_broker(b)
            assert rc == 0, b.process.stderr


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TcpBroker]:
    """``zchat broker`` on loopback tcp (its key pinned) with ``admins = ["root"]`` and the
    account root; teardown asserts a clean exit (code 0)."""
    with running_tcp_broker(tmp_path, 'admins = ["root"]\n') as b:
        yield b


@pytest.fixture
def ctx() -> Iterator[zmq.Context[Any]]:
    """A ZeroMQ context of the test's own, destroyed (linger 0) after it."""
    context: zmq.Context[Any] = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)
