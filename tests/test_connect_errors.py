"""What a command says when it cannot reach the broker at all (docs/security.md).

A tester with no pinned key and a stopped broker was told first about the key service
and ``encryption = "curve"``; a new user's broker is simply not running, so the error
says that first. And ``--server tcp://nonexistent.invalid:5555`` waited the whole
timeout: libzmq resolves host names by itself, silently, so the client looks the host
up first and fails at once, naming it."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import cli_env, free_port, zchat_command

from zchat.client import endpoints
from zchat.client.client import Client
from zchat.errors import ConnectionFailed
from zchat.testing import run


def _zchat(tmp_path: Path, *args: str) -> tuple[subprocess.CompletedProcess[str], float]:
    start = time.monotonic()
    result = subprocess.run([*zchat_command(), *args], env=cli_env(tmp_path),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True,
                            timeout=60)
    return result, time.monotonic() - start


def test_first_connection_to_a_stopped_broker_says_it_does_not_answer_first(
        tmp_path: Path) -> None:
    port = free_port()
    result, _elapsed = _zchat(tmp_path, "say", "--as", "alice", "--room", "dev", "hi",
                              "--server", f"tcp://127.0.0.1:{port}", "--timeout", "1")
    assert (result.returncode, result.stdout) == (1, "")
    assert "Traceback" not in result.stderr
    line = result.stderr.strip()
    assert "\n" not in line
    assert line.startswith("zchat: error: the broker does not answer: nothing answered "
                           f"at its key service tcp://127.0.0.1:{port + 2} within 1 s")
    running = line.index("Is the broker running, and is the server address right?")
    assert running < line.index("encryption")  # the usual cause first, settings second
    assert "--server-key" in line


def test_an_unknown_host_fails_at_once_naming_it(tmp_path: Path) -> None:
    result, elapsed = _zchat(tmp_path, "say", "--as", "alice", "--room", "dev", "hi",
                             "--server", "tcp://nonexistent.invalid:5555",
                             "--timeout", "20")
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr.startswith("zchat: error: cannot find the host "
                                    "'nonexistent.invalid' (in "
                                    "tcp://nonexistent.invalid:5555): "), result.stderr
    assert result.stderr.endswith("; check the address\n")
    assert elapsed < 10  # not the 20 s timeout (the interpreter's start is in it too)


@pytest.mark.parametrize(("endpoint", "host"), [
    ("tcp://chat.example.org:5555", ("chat.example.org", "5555")),
    ("tcp://localhost:1", ("localhost", "1")),
    ("tcp://eth0;broker.lan:5555", ("broker.lan", "5555")),
    ("tcp://127.0.0.1:5555", None),
    ("tcp://[::1]:5555", None),
    ("tcp://*:5555", None),
    ("inproc://zchat", None),
    ("ipc:///tmp/zchat", None),
])
def test_which_endpoints_have_a_host_to_look_up(endpoint: str,
                                                host: tuple[str, str] | None) -> None:
    assert endpoints.lookup_host(endpoint) == host


def test_a_resolver_that_hangs_is_given_up_within_the_timeout(
        monkeypatch: pytest.MonkeyPatch) -> None:
    release = threading.Event()

    def hanging(*_args: Any, **_kwargs: Any) -> list[Any]:
        release.wait(10)
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", hanging)
    start = time.monotonic()
    try:
        with pytest.raises(ConnectionFailed, match=r"the host name 'slow.example' \(in "
                           r"tcp://slow.example:5555\) did not resolve within 0.3 s"):
            run(endpoints.resolve_host("tcp://slow.example:5555", 0.3))
        assert time.monotonic() - start < 2  # the stuck lookup does not hold the exit
    finally:
        release.set()


def test_a_client_with_a_pinned_key_fails_at_once_on_an_unknown_host(
        tmp_path: Path, ctx: zmq.Context[Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """The check is made on every connect, with a key given or not, encrypted or not."""
    def unknown(*_args: Any, **_kwargs: Any) -> list[Any]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    monkeypatch.setattr(socket, "getaddrinfo", unknown)

    async def attempt(encryption: str) -> None:
        async with Client("tcp://broker.lan:5555", context=ctx, timeout_s=20,
                          known_brokers=tmp_path / "k.toml", encryption=encryption,
                          server_key=zmq.curve_keypair()[0].decode()):
            pass

    for encryption in ("curve", "none"):
        start = time.monotonic()
        with pytest.raises(ConnectionFailed, match=r"cannot find the host 'broker.lan' "
                           r"\(in tcp://broker.lan:5555\): Name or service not known"):
            run(attempt(encryption))
        assert time.monotonic() - start < 2


def test_an_endpoint_list_over_the_cap_is_refused_at_once(tmp_path: Path) -> None:
    """A client takes at most MAX_SERVER_ENDPOINTS (16) endpoints (docs/cli.md): a longer
    list is one line naming the limit, before any is tried (5,000 dead ones once kept
    ``zchat who --timeout 2`` waiting for hours, each costing the whole timeout in turn)."""
    dead = ",".join(f"tcp://127.0.0.1:{port}" for port in range(20000, 25000))
    start = time.monotonic()
    try:
        result = subprocess.run([*zchat_command(), "who", "--as", "alice", "--server",
                                 dead + ",tcp://127.0.0.1:5555", "--timeout", "2"],
                                env=cli_env(tmp_path), stdin=subprocess.DEVNULL,
                                capture_output=True, text=True, timeout=20)
    except subprocess.TimeoutExpired:
        pytest.fail("a list of 5,001 endpoints was tried one by one, not refused")
    elapsed = time.monotonic() - start
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == ("zchat: error: command line: [client] server: 5001 endpoints given, at most "
                             "16 are taken (each one not answering costs the whole "
                             "timeout)\n")
    assert elapsed < 10.0  # none tried: the interpreter's start only

    from zchat.config import MAX_SERVER_ENDPOINTS, server_endpoints

    assert MAX_SERVER_ENDPOINTS == 16
    over = [f"tcp://h{i}:1" for i in range(MAX_SERVER_ENDPOINTS + 1)]
    assert len(server_endpoints(over[:-1])) == MAX_SERVER_ENDPOINTS  # the cap itself is fine
    with pytest.raises(ValueError, match="17 endpoints given, at most 16"):
        server_endpoints(",".join(over))
    with pytest.raises(ValueError, match="server: 17 endpoints given, at most 16"):
        Client(over)


def test_each_dead_endpoint_of_a_list_costs_the_timeout_in_turn(tmp_path: Path) -> None:
    """docs/cli.md: each endpoint of a list gets --timeout in turn, so a connect takes at
    most N × --timeout. Two dead endpoints, then a live broker: the command succeeds on
    the third, after about 2 × --timeout (and well under 3 ×)."""
    from conftest import running_tcp_broker

    timeout_s = 1.5
    with running_tcp_broker(tmp_path) as broker:
        registered, _ = _zchat(tmp_path, "register", "alice", "--server", broker.router)
        assert registered.returncode == 0, registered.stderr
        dead = [f"tcp://127.0.0.1:{free_port()}" for _ in range(2)]
        assert dead[0] != dead[1]
        # --room lobby: alice is listed as a member (her one-shot `who` announces no
        # presence, so the list of accounts online would be empty)
        result, elapsed = _zchat(tmp_path, "who", "--as", "alice", "--room", "lobby",
                                 "--timeout", f"{timeout_s:g}", "--server",
                                 ",".join([*dead, broker.router]))
    assert result.returncode == 0, result.stderr
    assert "alice" in result.stdout
    assert 2 * timeout_s <= elapsed < 3 * timeout_s + 2.0, elapsed
