"""End to end: the real ``zchat join`` console in a pseudo-terminal (pexpect), its output
fed into a terminal emulator (pyte), against a ``zchat broker`` subprocess on loopback TCP.

Waits read the terminal until the screen shows what is expected, with a deadline
(tests/terminal_helpers.py's ``Terminal``).
"""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
from cli_helpers import ok, register, zchat
from conftest import Proc, TcpBroker, cli_env, zchat_command
from terminal_helpers import Terminal, console_env, screen_on_failure


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
    # (--room lobby: a one-shot `who` announces no presence, so newuser is not online)
    who = ok(zchat(tmp_path, "who", "--server", tcp_broker.router, "--as", "newuser",
                   "--room", "lobby", password="s3cret pw"))
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
