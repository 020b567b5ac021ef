"""Issue 13 §1 as its reporter ran it: ``zchat tail --json`` SIGSTOPped as soon as it says
"following", 2,000 lines posted with ``zchat say -``, then SIGCONT: tail prints every
message once and in seq order (docs/PROTOCOL.md §14, G2). Real processes on loopback tcp
with CurveZMQ; the broker's PUB high-water mark is small here, so that the paused tail
also loses messages on PUB and must refill them from HISTORY. tests/test_paused_subscriber.py
pauses a subscriber at each point of joining, many times over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest
from conftest import Proc, cli_env, start_broker, stop_broker, wait_until, zchat_command

LINES = 2000


def state(pid: int) -> str:
    """The process's state letter from /proc (``T`` when stopped)."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]


def seqs(tail: Proc) -> list[int]:
    return [json.loads(line)["seq"] for line in list(tail.stdout) if line.startswith("{")]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("busy", [False, True], ids=["new room", "busy room"])
def test_a_tail_stopped_while_2000_messages_pass_prints_each_once_in_order(
        tmp_path: Path, busy: bool) -> None:
    broker, _ = start_broker(tmp_path, settings="send_rate_per_s = 0\nsndhwm = 100\n"
                               "pub_sndhwm = 100\n")
    env = cli_env(tmp_path)
    cli = [*zchat_command()]
    server = ["--server", broker.router]
    tail: Proc | None = None
    try:
        for name in ("bob", "carol"):
            subprocess.run([*cli, "register", *server, name], env=env, check=True,
                           capture_output=True, timeout=30)
        before = 0
        if busy:  # history already there, and the tail joins a room in use
            subprocess.run([*cli, "say", *server, "--as", "bob", "--room", "fresh", "-"],
                           env=env, check=True, capture_output=True, timeout=60,
                           input="".join(f"earlier {i}\n" for i in range(300)), text=True)
            before = 300
        tail = Proc([*cli, "tail", *server, "--as", "carol", "--room", "fresh", "--json"],
                    env)
        tail.wait_line("stderr", "following", timeout_s=30)
        os.kill(tail.popen.pid, signal.SIGSTOP)
        wait_until(lambda: state(tail.popen.pid) == "T", 5, "the tail to stop")
        subprocess.run([*cli, "say", *server, "--as", "bob", "--room", "fresh", "-"],
                       env=env, check=True, capture_output=True, timeout=90, text=True,
                       input="".join(f"line {i}\n" for i in range(LINES)))
        os.kill(tail.popen.pid, signal.SIGCONT)
        last = before + LINES
        wait_until(lambda: last in seqs(tail), 60, f"the tail to print #{last}")
        assert seqs(tail) == list(range(before + 1, last + 1))
    finally:
        if tail is not None and tail.popen.poll() is None:
            os.kill(tail.popen.pid, signal.SIGCONT)
            tail.popen.terminate()
            tail.wait(10)
        stop_broker(broker)
