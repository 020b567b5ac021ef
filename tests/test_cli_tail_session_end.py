"""``zchat tail`` says why its session ended once (docs/cli.md, ``zchat tail``): a fresh
tester saw the reason twice on stderr — ``session ended by boss: …`` (zchat.client's log
warning, printed by Python's last-resort handler) and then ``zchat: error: session ended by
boss: …`` — and, for a changed broker key, a one-line ``session ended: the broker's key
changed (…)`` before the full warning.

The real CLI in subprocesses against ``zchat broker`` subprocesses on loopback tcp;
nothing sleeps to wait for a socket.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from cli_helpers import restart_on_same_ports
from conftest import Proc, TcpBroker, cli_env, start_broker, stop_broker, zchat_command


def zchat(tmp_path: Path, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run([*zchat_command(), *args], env=cli_env(tmp_path), input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
    return done.stdout


def follow(tmp_path: Path, router: str) -> Proc:
    """Register olga and nick (olga creates #dev), then a ``tail`` of #dev as nick."""
    for name in ("olga", "nick"):
        zchat(tmp_path, "register", "--server", router, name)
    zchat(tmp_path, "say", "--server", router, "--as", "olga", "--room", "dev", "hello")
    tail = Proc([*zchat_command(), "tail", "--server", router, "--as", "nick", "--room",
                 "dev"], cli_env(tmp_path))
    tail.wait_line("stderr", "following #dev")
    return tail


def test_a_password_reset_ends_tail_with_one_line(tmp_path: Path,
                                                  broker: TcpBroker) -> None:
    tail = follow(tmp_path, broker.router)
    try:
        zchat(tmp_path, "admin", "reset-password", "--server", broker.router, "--as", "root",
              "nick", "--stdin", stdin="a-brand-new-password\n")
        assert tail.wait(10) == 1
        why = "session ended by root: your password was reset; log in with the new one"
        assert tail.stderr == ["following #dev as nick", f"zchat: error: {why}"], \
            tail.stderr
    finally:
        tail.kill()


def test_a_changed_broker_key_ends_tail_with_the_warning_once(tmp_path: Path) -> None:
    broker, lines = start_broker(tmp_path)
    pub = next(line.split()[1] for line in lines if line.strip().startswith("pub "))
    impostor: Proc | None = None
    tail: Proc | None = None
    try:
        tail = follow(tmp_path, broker.router)
        assert stop_broker(broker)[0] == 0  # GOING_AWAY: tail reconnects at once
        impostor = restart_on_same_ports(tmp_path, broker, pub, tmp_path / "new-data")
        assert tail.wait(30) == 1
        err = tail.stderr
        assert "Traceback" not in "\n".join(err)
        assert not [line for line in err if line.startswith("session ended")], err
        assert sum("BROKER IDENTIFICATION HAS CHANGED" in line for line in err) == 1, err
        assert sum(line.startswith("zchat: error:") for line in err) == 1, err
        assert not [line for line in err if "key changed (pinned" in line], err
    finally:
        if tail is not None:
            tail.kill()
        if impostor is not None:
            impostor.popen.terminate()
            impostor.wait(5)
        if broker.process.popen.poll() is None:
            stop_broker(broker)
