"""Helpers for the tests that run the ``zchat`` command line as subprocesses against a
``zchat broker`` subprocess on loopback TCP (tests/conftest.py's ``start_broker``):
``zchat`` runs one command and returns what it printed, ``ok`` and ``one_line_error``
check how it ended, ``register`` creates accounts, ``json_lines`` reads ``--json``
output, ``restart_on_same_ports`` starts a stopped broker again on its endpoints, and
``start_irc_gateway`` runs ``zchat irc`` against one.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from conftest import Proc, TcpBroker, cli_env, zchat_command

from zchat.testing import free_port


def zchat(tmp_path: Path, *args: str, password: str | None = None, stdin: str | None = None,
          timeout_s: float = 15.0) -> subprocess.CompletedProcess[str]:
    env = cli_env(tmp_path) if password is None else cli_env(tmp_path, password)
    return subprocess.run([*zchat_command(), *args], env=env, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=timeout_s)


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def one_line_error(result: subprocess.CompletedProcess[str]) -> str:
    """The single stderr line of a command that failed with exit code 1."""
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("zchat: ")
    return lines[0]


def register(tmp_path: Path, broker: TcpBroker, *names: str) -> None:
    for name in names:
        result = ok(zchat(tmp_path, "register", "--server", broker.router, name))
        assert result.stdout.strip() == f"registered {name}"


def json_lines(text: str) -> list[dict[str, object]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def restart_on_same_ports(tmp_path: Path, broker: TcpBroker, pub: str,
                          data: Path) -> Proc:
    """A new ``zchat broker`` on the ROUTER/PUB endpoints of ``broker`` (stopped) with the
    data directory ``data``."""
    proc = Proc([*zchat_command(), "broker", "--config", str(tmp_path / "broker.toml"),
                 "--data-dir", str(data), "--router", broker.router, "--pub", pub],
                cli_env(tmp_path))
    proc.wait_line("stdout", "fingerprint", timeout_s=15)
    return proc


def start_irc_gateway(tmp_path: Path, broker: TcpBroker, shell_limits: str = "",
                      extra: tuple[str, ...] = ()) -> tuple[Proc, int]:
    """``zchat irc`` on a free loopback port against ``broker``, once it printed
    "listening on"; the process and its port. Other ports when the bind fails (another
    process took the port between ``free_port`` and the bind). ``shell_limits``: ``ulimit``
    options the gateway starts under (``"-Sn 256"``), through ``sh``'s ``exec`` (the same
    process). ``extra``: more arguments of ``zchat irc``."""
    for _ in range(5):
        port = free_port()
        argv = [*zchat_command(), "irc", "--server", broker.router, "--listen",
                f"127.0.0.1:{port}", *extra]
        if shell_limits:
            argv = ["sh", "-c", f'ulimit {shell_limits} && exec "$@"', "sh", *argv]
        proc = Proc(argv, cli_env(tmp_path))
        try:
            proc.wait_line("stdout", "listening on", timeout_s=15)
        except AssertionError:
            proc.kill()
            if any("cannot listen" in line for line in proc.stderr):
                continue
            raise
        return proc, port
    raise AssertionError("no free port for the gateway")
