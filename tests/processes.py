"""No test may leave a process running: the suite's leak check (docs/testing.md).

Every process this test session starts carries ``ZCHAT_TEST_RUN=<this run's id>`` in its
environment: the variable is put in ``os.environ`` when this module is imported, before
any test runs, and every subprocess whose environment is built from ``os.environ``
inherits it. Before and after each test, :func:`session_processes` lists the session's
running processes: the test process's descendants (the ppid of every /proc/PID/stat) and
every process whose /proc/PID/environ carries the marker, which finds one reparented to
init or to a subreaper once its parent is gone. What a test added is given ``GRACE_S`` to
exit (a process may still be ending when the test's clean-up returns), then SIGKILLed,
and the test fails at teardown naming each one's pid, parent and command line. At the
end of the session anything of it still running is killed too, and the run fails.

tests/conftest.py imports the fixture and the hook; it is also a plugin module of its own
(``pytest -p processes``), so tests/test_hygiene.py can run it in a pytest of its own.
"""

from __future__ import annotations

import collections
import contextlib
import os
import secrets
import signal
import sys
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

#: The environment variable that marks this session's processes, and its value.
MARKER_VARIABLE = "ZCHAT_TEST_RUN"
RUN_ID = f"{os.getpid()}-{secrets.token_hex(8)}"
os.environ[MARKER_VARIABLE] = RUN_ID
_MARKER = f"{MARKER_VARIABLE}={RUN_ID}".encode()

#: Seconds a process a test left behind may take to exit before it is killed (a broker
#: sent SIGTERM by a finalizer that does not wait, say). $ZCHAT_TEST_LEFTOVER_GRACE_S
#: overrides it: tests/test_hygiene.py's inner runs make it short.
GRACE_S = float(os.environ.get("ZCHAT_TEST_LEFTOVER_GRACE_S", "5"))
#: Seconds a SIGKILLed process may take to be gone (only one in uninterruptible sleep,
#: stuck in the kernel, takes longer).
KILL_WAIT_S = 5.0


@dataclass(frozen=True)
class Process:
    """One line of /proc/PID/stat. ``start_ticks`` (field 22, clock ticks after boot) and
    ``pid`` together name one process even after its pid is reused."""

    pid: int
    state: str
    ppid: int
    pgrp: int
    start_ticks: int

    @property
    def key(self) -> tuple[int, int]:
        return self.pid, self.start_ticks


def read_stat(pid: int) -> Process | None:
    """/proc/PID/stat of ``pid``; None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces and ")": split after
    # the last ")"; fields[0] is then field 3 (state), fields[19] field 22 (start time).
    fields = raw[raw.rindex(b")") + 2:].split()
    return Process(pid, fields[0].decode(), int(fields[1]), int(fields[2]), int(fields[19]))


def process_table() -> dict[int, Process]:
    """Every process now, by pid."""
    table = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit() and (process := read_stat(int(entry.name))) is not None:
            table[process.pid] = process
    return table


def command_line(pid: int) -> str:
    """The command line of ``pid`` with spaces between its arguments ("" once gone)."""
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode("utf-8", "replace").strip()


def _carries_marker(pid: int) -> bool:
    try:
        return _MARKER in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:  # gone, or not ours to read
        return False


def session_processes() -> dict[tuple[int, int], str]:
    """This session's running processes other than the test process: its descendants and
    every process carrying the marker; {(pid, start ticks): command line}. Zombies (ended,
    not yet reaped by their parent) are not running and not listed."""
    table = process_table()
    me = table[os.getpid()]
    children: dict[int, list[int]] = collections.defaultdict(list)
    for process in table.values():
        children[process.ppid].append(process.pid)
    found: set[int] = set()
    stack = list(children[me.pid])
    while stack:
        pid = stack.pop()
        found.add(pid)
        stack += children[pid]
    for process in table.values():  # a marked process cannot be older than this session
        if (process.pid not in found and process.pid != me.pid
                and process.start_ticks >= me.start_ticks and _carries_marker(process.pid)):
            found.add(process.pid)
    return {table[pid].key: command_line(pid) for pid in found if table[pid].state != "Z"}


def _running(key: tuple[int, int]) -> Process | None:
    process = read_stat(key[0])
    if process is None or process.key != key or process.state == "Z":
        return None
    return process


def wait_gone(keys: Iterable[tuple[int, int]], timeout_s: float) -> set[tuple[int, int]]:
    """Poll until none of ``keys`` runs or ``timeout_s`` passes; those still running."""
    deadline = time.monotonic() + timeout_s
    while True:
        alive = {key for key in keys if _running(key) is not None}
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(0.02)  # one polling step of process exits, with a deadline


def kill(keys: Iterable[tuple[int, int]]) -> set[tuple[int, int]]:
    """SIGKILL each of ``keys`` still running (checked just before, so a reused pid is
    never hit) and wait for them to be gone; those that are not after KILL_WAIT_S."""
    keys = set(keys)
    for key in keys:
        if _running(key) is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(key[0], signal.SIGKILL)
    return wait_gone(keys, KILL_WAIT_S)


def stop_leftovers(left: dict[tuple[int, int], str], grace_s: float) -> list[str]:
    """Give ``left`` ``grace_s`` to exit, SIGKILL the rest; a line per killed process."""
    still = wait_gone(left, grace_s)
    if not still:
        return []
    parents = {key: process.ppid for key in still if (process := _running(key)) is not None}
    unkillable = kill(still)
    return [f"pid {key[0]} (parent {parents.get(key, '?')}): {left[key]}"
            + (" -- still running after SIGKILL" if key in unkillable else "")
            for key in sorted(still)]


@pytest.fixture(autouse=True)
def _no_process_left_behind() -> Iterator[None]:
    """Fail a test (at teardown, after every other fixture's finalizer) that leaves a
    process of the session running, and kill that process so later tests do not meet it."""
    before = set(session_processes())
    yield
    left = {key: line for key, line in session_processes().items() if key not in before}
    if not left:
        return
    killed = stop_leftovers(left, GRACE_S)
    if killed:
        pytest.fail(f"the test left {len(killed)} process(es) running "
                    f"(SIGKILLed after {GRACE_S:g} s):\n  " + "\n  ".join(killed),
                    pytrace=False)


@pytest.hookimpl(trylast=True)  # after pytest's own finish, which tears fixtures down
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Kill whatever of the session still runs at its end, and fail the run if anything
    did (a process started outside any test, or a test interrupted by Ctrl-C)."""
    left = session_processes()
    if not left:
        return
    killed = stop_leftovers(left, GRACE_S)
    if killed:
        print("\nzchat tests: processes left running at the end of the session, killed:\n  "
              + "\n  ".join(killed), file=sys.stderr, flush=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
