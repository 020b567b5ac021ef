"""Helpers for the tests that run ``zchat admin …`` and the other operator commands as
subprocesses against a ``zchat broker`` subprocess whose config names the admin "root"
(tests/conftest.py's ``broker`` fixture): ``zchat`` runs a command with the password
DEFAULT_PASSWORD and extra environment variables, ``failed`` checks a refusal, ``wire``
is the ``--server``/``--as`` arguments, ``register`` creates accounts other than root.
``ok`` and ``json_lines`` are tests/cli_helpers.py's.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from cli_helpers import ok
from conftest import TcpBroker, cli_env, zchat_command

from zchat.testing import DEFAULT_PASSWORD


def zchat(tmp_path: Path, *args: str, password: str = DEFAULT_PASSWORD,
          stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = cli_env(tmp_path, password)
    environment.update(env)
    return subprocess.run([*zchat_command(), *args], env=environment, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("zchat: error: ")
    return result.stderr


def wire(broker: TcpBroker, user: str = "root") -> tuple[str, ...]:
    return ("--server", broker.router, "--as", user)


def register(tmp_path: Path, broker: TcpBroker, *names: str) -> None:
    """Register ``names``; not the admin "root": start_broker created that account (the
    broker refuses to REGISTER an admin's name, docs/admin.md)."""
    for name in names:
        ok(zchat(tmp_path, "register", "--server", broker.router, name))
