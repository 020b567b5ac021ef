"""End to end: the real ``zchat join`` console in a pseudo-terminal (pexpect), its output
fed into a terminal emulator (pyte), against a ``zchat broker`` subprocess on loopback TCP.

Waits read the terminal until the screen shows what is expected, with a deadline.
"""

from __future__ import annotations

import contextlib
import json
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pexpect
import pyte
import pytest
from conftest import Proc, TcpBroker, cli_env, zchat_command
from test_e2e_cli import ok, register, zchat

COLS, ROWS = 100, 30


class Terminal:
    """A process in a pseudo-terminal of COLS x ROWS whose output drives a pyte screen.
    The screen answers cursor-position requests like a real terminal."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        argv = [*zchat_command(), *args]
        self.child = pexpect.spawn(argv[0], argv[1:], env=env, dimensions=(ROWS, COLS))
        self.screen = pyte.Screen(COLS, ROWS)
        self.screen.write_process_input = self._answer  # type: ignore[method-assign]
        self.stream = pyte.ByteStream(self.screen)

    def _answer(self, data: str) -> None:
        self.child.send(data.encode())

    def read(self, timeout_s: float) -> bool:
        """Feed what the process wrote within ``timeout_s`` to the screen; False at EOF."""
        try:
            self.stream.feed(self.child.read_nonblocking(65536, timeout_s))
        except pexpect.TIMEOUT:
            pass
        except pexpect.EOF:
            return False
        return True

    def text(self) -> str:
        return "\n".join(line.rstrip() for line in self.screen.display)

    def wait_for(self, condition: Callable[[str], bool], what: str,
                 timeout_s: float = 10.0) -> str:
        """Read until ``condition(screen text)`` holds; return the screen text."""
        deadline = time.monotonic() + timeout_s
        while True:
            text = self.text()
            if condition(text):
                return text
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
            if not self.read(min(left, 0.1)):
                if condition(self.text()):
                    return self.text()
                raise AssertionError(f"the process ended while waiting for {what}")

    def wait_shows(self, needle: str, timeout_s: float = 10.0) -> str:
        return self.wait_for(lambda text: needle in text, repr(needle), timeout_s)

    def wait_exit(self, timeout_s: float) -> int:
        """Exit status, reading output until the process has ended."""
        deadline = time.monotonic() + timeout_s
        while self.read(0.1):
            if time.monotonic() > deadline:
                raise AssertionError(f"still running after {timeout_s} s")
        self.child.close()
        assert self.child.exitstatus is not None, f"killed by {self.child.signalstatus}"
        return int(self.child.exitstatus)

    def kill(self) -> None:
        if self.child.isalive():
            self.child.terminate(force=True)


@contextlib.contextmanager
def screen_on_failure(term: Terminal) -> Iterator[None]:
    """Add the final screen to any assertion that fails inside, for debugging."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc}\n--- screen ---\n{term.text()}") from None
    finally:
        term.kill()


def console_env(tmp_path: Path, password: bool = True) -> dict[str, str]:
    env = cli_env(tmp_path)
    env["TERM"] = "xterm-256color"
    if not password:
        del env["ZCHAT_PASSWORD"]
    return env


def test_console_sends_and_receives_in_a_terminal(tmp_path: Path,
                                                  tcp_broker: TcpBroker) -> None:
    server = ("--server", tcp_broker.router)
    register(tmp_path, tcp_broker, "alice", "bob", "carol")
    tail = Proc([*zchat_command(), "tail", *server, "--as", "carol", "--room", "lobby",
                 "--count", "2", "--json"], cli_env(tmp_path))
    try:
        tail.wait_line("stderr", "following #lobby as carol")
        term = Terminal(["join", "alice", *server], console_env(tmp_path))
        with screen_on_failure(term):
            screen = term.wait_for(lambda t: "#lobby" in t and "alice │ #lobby" in t
                                   and "connected" in t, "the console")
            assert "Rooms" in screen and "Members (3)" in screen

            ok(zchat(tmp_path, "say", *server, "--as", "bob", "--room", "lobby",
                     "hello from bob"))
            term.wait_shows("bob │ hello from bob")

            term.child.send(b"hello from alice\r")
            term.wait_shows("alice │ hello from alice")
            assert tail.wait(10) == 0, tail.stderr
            got = [json.loads(line) for line in tail.stdout]
            assert [(m["room"], m["from"], m["text"]) for m in got] == [
                ("lobby", "bob", "hello from bob"), ("lobby", "alice", "hello from alice")]
            assert got[1]["seq"] == got[0]["seq"] + 1
            # The own line shows once.
            assert term.text().count("hello from alice") == 1

            term.child.send(b"/quit\r")
            assert term.wait_exit(5) == 0
    finally:
        tail.kill()


def test_console_offers_to_create_a_missing_account(tmp_path: Path,
                                                    tcp_broker: TcpBroker) -> None:
    term = Terminal(["join", "newuser", "--server", tcp_broker.router],
                    console_env(tmp_path, password=False))
    with screen_on_failure(term):
        term.wait_shows("Password for newuser:")
        term.child.send(b"first try\r")
        term.wait_shows("There is no account named 'newuser'. Create it? [y/N]")
        term.child.send(b"y\r")
        term.wait_shows("New password (at least 8 characters):")
        term.child.send(b"s3cret pw\r")
        term.wait_shows("New password (again):")
        assert "s3cret" not in term.text()  # no echo
        term.child.send(b"s3cret pw\r")
        screen = term.wait_for(lambda t: "newuser │ #lobby" in t, "the console")
        assert "connected to" in screen
        term.child.send(b"\x03")
        assert term.wait_exit(5) == 0

    # The account now exists with that password.
    who = ok(zchat(tmp_path, "who", "--server", tcp_broker.router, "--as", "newuser",
                   password="s3cret pw"))
    assert "newuser" in who.stdout


def online_names(tmp_path: Path, server: tuple[str, str]) -> set[str]:
    """Accounts online, as bob sees them with ``zchat who --json`` (one JSON line each)."""
    out = ok(zchat(tmp_path, "who", *server, "--as", "bob", "--json")).stdout
    return {json.loads(line)["name"] for line in out.splitlines() if line.strip()}


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGHUP, 129), (signal.SIGTERM, 143)])
def test_closing_the_terminal_logs_the_console_out(tmp_path: Path, tcp_broker: TcpBroker,
                                                   sig: signal.Signals, code: int) -> None:
    """SIGHUP (the terminal window closed) and SIGTERM end ``zchat join`` with a LOGOUT,
    as /quit does: the others see the user offline at once, not after the heartbeat
    timeout (30 s by default, the broker here runs with it)."""
    server = ("--server", tcp_broker.router)
    register(tmp_path, tcp_broker, "alice", "bob")
    term = Terminal(["join", "alice", *server], console_env(tmp_path))
    with screen_on_failure(term):
        term.wait_for(lambda t: "alice │ #lobby" in t and "connected" in t, "the console")
        assert "alice" in online_names(tmp_path, server)
        term.child.kill(sig)
        assert term.wait_exit(5) == code
    assert "alice" not in online_names(tmp_path, server)
