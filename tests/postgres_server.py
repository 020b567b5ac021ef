"""A real PostgreSQL server for the tests: ``initdb`` into a temporary directory, ``pg_ctl
start`` on a free loopback port and a Unix socket in that directory, a fresh database per
test cloned from a template that already holds zchat's schema, and ``pg_ctl stop`` and the
directory removed at the end.

PostgreSQL refuses to run as root: as root the server's commands run as the ``postgres``
user that Debian's postgresql package creates (``runuser -u postgres``), else as
``nobody``; the temporary directory is given to that user. Functional tests run it with
``fsync=off`` (nothing here tests a crash of the server; durability tests that do must
start a server of their own with ``fsync=True``).

Where no PostgreSQL is installed, ``find_bindir`` says so and the tests that need it are
skipped with that reason, or fail when ``CI=true`` (``.ci/run`` installs it).
"""

from __future__ import annotations

import contextlib
import itertools
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psycopg

from zchat.store.postgres import Store as PostgresStore
from zchat.testing import free_port

#: Where Debian's packages put each major version's programs.
DEBIAN_BINDIRS = "/usr/lib/postgresql/*/bin"
#: Seconds pg_ctl may wait for the server to start or stop.
PG_CTL_TIMEOUT_S = 60
#: The database every test's database is cloned from (it holds zchat's schema).
TEMPLATE = "zchat_template"
#: The bootstrap superuser made by initdb (trust authentication: a test server only).
SUPERUSER = "postgres"


def find_bindir() -> tuple[Path | None, str]:
    """The directory holding ``initdb`` and ``pg_ctl`` (on PATH, from ``pg_config
    --bindir``, or the newest of Debian's /usr/lib/postgresql/*/bin), and "" — or None
    and the reason none was found."""
    candidates: list[Path] = []
    if (initdb := shutil.which("initdb")) is not None:
        candidates.append(Path(initdb).resolve().parent)
    if (pg_config := shutil.which("pg_config")) is not None:
        with contextlib.suppress(OSError, subprocess.SubprocessError):
            out = subprocess.run([pg_config, "--bindir"], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
            candidates.append(Path(out))
    debian = sorted(Path("/").glob(DEBIAN_BINDIRS.lstrip("/")),
                    key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0)
    candidates += reversed(debian)
    for directory in candidates:
        if (directory / "initdb").is_file() and (directory / "pg_ctl").is_file():
            return directory, ""
    return None, ("PostgreSQL is not installed: no initdb and pg_ctl on PATH, from "
                  f"pg_config or in {DEBIAN_BINDIRS} (Debian: apt-get install postgresql)")


def server_user() -> str | None:
    """The user the server runs as when we are root (``postgres``, else ``nobody``), or
    None when we are not root (the server then runs as us)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    raise RuntimeError("running as root with neither a postgres nor a nobody user: "
                       "PostgreSQL refuses to run as root")


class PostgresServer:
    """One PostgreSQL server in a temporary directory; ``start()``, then ``new_database()``
    per test, ``stop()`` at the end (kills nothing else, removes the directory)."""

    def __init__(self, bindir: Path, *, fsync: bool = False) -> None:
        self.bindir = bindir
        self.fsync = fsync
        self.user = server_user()
        self.root = Path(tempfile.mkdtemp(prefix="zchat-pg-"))
        self.data = self.root / "data"
        self.socket_dir = self.root  # short: a socket path has ~100 bytes at most
        self.log = self.root / "server.log"
        self.port = 0
        self._names = itertools.count(1)
        self._admin: psycopg.Connection[object] | None = None
        self._options = ""  # pg_ctl's -o of the running server (``resume``)
        if self.user is not None:
            entry = pwd.getpwnam(self.user)
            os.chown(self.root, entry.pw_uid, entry.pw_gid)

    # -- running the server's programs -----------------------------------------------------

    def _command(self, program: str, *args: str) -> list[str]:
        argv = [str(self.bindir / program), *args]
        return ["runuser", "-u", self.user, "--", *argv] if self.user else argv

    def _run(self, program: str, *args: str) -> None:
        """Run one of the server's programs; raises RuntimeError with its output and the
        server's log when it fails."""
        done = subprocess.run(self._command(program, *args), capture_output=True, text=True,
                              timeout=PG_CTL_TIMEOUT_S + 30, cwd=self.root)
        if done.returncode != 0:
            raise RuntimeError(f"{program} {' '.join(args[:3])} … failed "
                               f"({done.returncode}): {done.stdout}{done.stderr}"
                               f"{self.log_tail()}")

    def log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "\nserver log:\n" + "\n".join(text.splitlines()[-lines:])

    def start(self, attempts: int = 5) -> None:
        """initdb, then start on a free loopback port (another one if it was taken
        meanwhile), then make the template database. Raises RuntimeError."""
        self._run("initdb", "-D", str(self.data), "-U", SUPERUSER, "--auth=trust",
                  "--encoding=UTF8", "--locale=C", "--no-sync", "--no-instructions")
        for attempt in range(attempts):
            self.port = free_port()
            options = " ".join([
                f"-p {self.port}", "-c listen_addresses=127.0.0.1",
                f"-c unix_socket_directories={self.socket_dir}",
                f"-c fsync={'on' if self.fsync else 'off'}",
                f"-c full_page_writes={'on' if self.fsync else 'off'}",
                "-c autovacuum=off", "-c max_connections=60", "-c shared_buffers=16MB",
                "-c max_wal_senders=0", "-c wal_level=minimal",
                "-c max_parallel_workers_per_gather=0", "-c jit=off"])
            try:
                self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log),
                          "-w", "-t", str(PG_CTL_TIMEOUT_S), "-o", options)
                self._options = options
                break
            except RuntimeError:
                if attempt == attempts - 1 or "already in use" not in self.log_tail(5):
                    raise
        self._admin = psycopg.connect(self.url("postgres"), autocommit=True)
        self._admin.execute(f"CREATE DATABASE {TEMPLATE}")
        PostgresStore(self.url(TEMPLATE)).close()  # the schema, once for every test

    def halt(self, mode: str = "fast") -> None:
        """Stop the server and keep its directory, as an operator's restart does first:
        ``mode`` "fast" ends every session cleanly, "immediate" kills the server like a
        crash (``resume`` then recovers from the WAL). Returns once it is down. Raises
        RuntimeError."""
        if mode not in ("fast", "immediate"):
            raise ValueError(f"not a pg_ctl shutdown mode: {mode!r}")
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        self._run("pg_ctl", "stop", "-D", str(self.data), "-m", mode, "-w",
                  "-t", str(PG_CTL_TIMEOUT_S))

    def resume(self) -> None:
        """Start the halted server again on the same port and settings; returns once it
        accepts connections (after its crash recovery, if any). Raises RuntimeError."""
        self._run("pg_ctl", "start", "-D", str(self.data), "-l", str(self.log),
                  "-w", "-t", str(PG_CTL_TIMEOUT_S), "-o", self._options)
        self._admin = psycopg.connect(self.url("postgres"), autocommit=True)

    def restart(self, mode: str = "fast") -> None:
        """``halt(mode)`` then ``resume()``: ``pg_ctl restart -m MODE``."""
        self.halt(mode)
        self.resume()

    def stop(self) -> None:
        """Stop the server (fast shutdown: its sessions are ended) and remove its
        directory. Safe to call twice, and after a failed start."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        try:
            if (self.data / "postmaster.pid").exists():
                try:
                    self._run("pg_ctl", "stop", "-D", str(self.data), "-m", "fast", "-w",
                              "-t", str(PG_CTL_TIMEOUT_S))
                except RuntimeError:
                    if (self.data / "postmaster.pid").exists():  # not already gone
                        self._run("pg_ctl", "stop", "-D", str(self.data), "-m",
                                  "immediate", "-w")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    # -- databases -------------------------------------------------------------------------

    def url(self, database: str) -> str:
        """The URL of ``database`` on this server, over loopback TCP."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def socket_url(self, database: str) -> str:
        """The URL of ``database`` over the server's Unix socket."""
        return f"postgresql://{SUPERUSER}@/{database}?host={self.socket_dir}&port={self.port}"

    def new_database(self, *, empty: bool = False) -> str:
        """A new database's name: a copy of the template (zchat's schema, no rows), or with
        ``empty`` one with no tables at all."""
        assert self._admin is not None, "the server is not started"
        name = f"zchat_test_{next(self._names)}"
        template = "template0" if empty else TEMPLATE
        self._admin.execute(f"CREATE DATABASE {name} TEMPLATE {template}")
        return name

    def drop_database(self, name: str) -> None:
        """Drop ``name``, ending any session still connected to it."""
        assert self._admin is not None, "the server is not started"
        self._admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")

    @contextlib.contextmanager
    def database(self, *, empty: bool = False) -> Iterator[str]:
        """A new database's URL for a ``with`` block; dropped after it."""
        name = self.new_database(empty=empty)
        try:
            yield self.url(name)
        finally:
            self.drop_database(name)


@contextlib.contextmanager
def running_postgres(*, fsync: bool = False) -> Iterator[PostgresServer]:
    """A started PostgresServer for a ``with`` block, stopped and removed after it.
    Raises RuntimeError when PostgreSQL is not installed or does not start."""
    bindir, why = find_bindir()
    if bindir is None:
        raise RuntimeError(why)
    server = PostgresServer(bindir, fsync=fsync)
    try:
        server.start()
        yield server
    finally:
        server.stop()
