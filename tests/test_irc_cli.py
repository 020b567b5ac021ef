"""``zchat irc`` as a process: a real ``zchat broker`` (curve, the key pinned as a user
would), the gateway on a free port, a socket IRC client, ``zchat say`` and ``zchat tail``
on the other side; SIGTERM tells the IRC client and exits within 2 s; a plain listener
off loopback is refused with a clear message."""

from __future__ import annotations

import signal
import socket
import subprocess
import time
from pathlib import Path

from conftest import Proc, TcpBroker, cli_env, zchat_command

from zchat.testing import DEFAULT_PASSWORD, free_port


def read_until(sock: socket.socket, needle: bytes, timeout_s: float = 10.0) -> bytes:
    sock.settimeout(timeout_s)
    data = b""
    deadline = time.monotonic() + timeout_s
    while needle not in data:
        if time.monotonic() > deadline:
            raise AssertionError(f"no {needle!r} in {timeout_s} s: {data!r}")
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"closed before {needle!r}: {data!r}")
        data += chunk
    return data


def start_gateway(tmp_path: Path, broker: TcpBroker) -> tuple[Proc, int]:
    for _ in range(5):
        port = free_port()
        proc = Proc([*zchat_command(), "irc", "--server", broker.router, "--listen",
                     f"127.0.0.1:{port}"], cli_env(tmp_path))
        try:
            proc.wait_line("stdout", "listening on", timeout_s=15)
        except AssertionError:
            proc.kill()
            if any("cannot listen" in line for line in proc.stderr):
                continue
            raise
        return proc, port
    raise AssertionError("no free port for the gateway")


def test_irc_client_talks_with_say_and_tail_then_sigterm(tmp_path: Path,
                                                         broker: TcpBroker) -> None:
    env = cli_env(tmp_path)
    for name in ("alice", "bob"):
        subprocess.run([*zchat_command(), "register", "--server", broker.router, name],
                       env=env, check=True, capture_output=True, timeout=30)
    gateway, port = start_gateway(tmp_path, broker)
    tail = Proc([*zchat_command(), "tail", "--server", broker.router, "--as", "bob",
                 "--room", "dev"], env)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as irc:
            irc.sendall(f"PASS :alice:{DEFAULT_PASSWORD}\r\nNICK alice\r\n"
                        "USER a 0 * :Alice\r\nJOIN #dev\r\n".encode())
            read_until(irc, b" 366 ")
            subprocess.run([*zchat_command(), "say", "--server", broker.router, "--as",
                            "bob", "--room", "dev", "hello from zchat"],
                           env=env, check=True, capture_output=True, timeout=30)
            got = read_until(irc, b"hello from zchat")
            assert b":bob!" in got and b"PRIVMSG #dev :hello from zchat" in got
            irc.sendall(b"PRIVMSG #dev :hello from irc\r\n")
            tail.wait_line("stdout", "hello from irc", timeout_s=15)
            start = time.monotonic()
            gateway.popen.send_signal(signal.SIGTERM)
            assert b"ERROR :Closing link" in read_until(irc, b"ERROR")
            assert gateway.wait(5) == 0
            assert time.monotonic() - start < 2.0
    finally:
        tail.kill()
        gateway.kill()


def test_plain_listener_off_loopback_is_refused(tmp_path: Path) -> None:
    done = subprocess.run([*zchat_command(), "irc", "--listen", "0.0.0.0:6667"],
                          env=cli_env(tmp_path), capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 1
    assert "not a loopback address" in done.stderr and "tls_listen" in done.stderr


def test_help_lists_irc(tmp_path: Path) -> None:
    done = subprocess.run([*zchat_command(), "--help"], env=cli_env(tmp_path),
                          capture_output=True, text=True, timeout=30)
    assert " irc " in done.stdout or "irc," in done.stdout or "\n    irc" in done.stdout


def test_sighup_closes_like_sigterm(tmp_path: Path, broker: TcpBroker) -> None:
    """Closing the terminal (SIGHUP) tells the IRC client ERROR and logs its session out,
    as SIGTERM does (it used to kill the gateway with no cleanup)."""
    env = cli_env(tmp_path)
    subprocess.run([*zchat_command(), "register", "--server", broker.router, "alice"],
                   env=env, check=True, capture_output=True, timeout=30)
    gateway, port = start_gateway(tmp_path, broker)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as irc:
            irc.sendall(f"PASS :alice:{DEFAULT_PASSWORD}\r\nNICK alice\r\n"
                        "USER a 0 * :Alice\r\n".encode())
            read_until(irc, b" 001 ")
            gateway.popen.send_signal(signal.SIGHUP)
            assert b"ERROR :Closing link: gateway shutting down" in read_until(irc, b"ERROR")
            assert gateway.wait(5) == 0
        who = subprocess.run([*zchat_command(), "who", "--server", broker.router],
                             env=env, capture_output=True, text=True, timeout=30)
        assert "alice" not in who.stdout or "offline" in who.stdout, who.stdout
    finally:
        gateway.kill()
