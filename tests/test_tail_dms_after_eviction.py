"""``zchat tail`` that was away (stopped past the heartbeat timeout, evicted) prints, once
reconnected, the DMs another session of the account was handed meanwhile and nobody
read (docs/cli.md): a new user's tail never showed them, though they stayed unread and a
new tail printed them. Real processes on loopback tcp with CurveZMQ and short heartbeats;
the other session is a zchat Client in the test."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from cli_helpers import register
from conftest import Proc, TcpBroker, cli_env, run, running_tcp_broker, wait_until, zchat_command

from zchat.client.client import Client
from zchat.testing import DEFAULT_PASSWORD, next_dm

SHORT_BEATS = "heartbeat_interval_s = 0.3\nheartbeat_timeout_s = 1.0\n"


@pytest.mark.timeout(60)
def test_a_tail_evicted_while_stopped_prints_the_dms_it_missed(tmp_path: Path) -> None:
    with running_tcp_broker(tmp_path, SHORT_BEATS) as broker:
        env = cli_env(tmp_path)
        register(tmp_path, broker, "erin", "dave")
        tail = Proc([*zchat_command(), "tail", "--server", broker.router, "--as", "erin",
                     "--json"], env)
        try:
            tail.wait_line("stderr", "following", timeout_s=15)
            run(other_session_handed_dms(broker, tail), timeout_s=40)
            wait_until(lambda: len([ln for ln in tail.stdout if ln.startswith("{")]) >= 3,
                       timeout_s=15, what="the three DMs printed after the reconnect")
            texts = [json.loads(ln)["text"] for ln in tail.stdout if ln.startswith("{")]
            assert texts == ["missed 0", "missed 1", "missed 2"]
        finally:
            tail.popen.send_signal(signal.SIGCONT)
            tail.kill()


async def other_session_handed_dms(broker: TcpBroker, tail: Proc) -> None:
    """Stop the tail until the broker evicted it; meanwhile dave DMs erin and erin's
    other session is handed the DMs (it does not read them); then let the tail go."""
    async with Client(broker.router, timeout_s=5) as erin, \
            Client(broker.router, timeout_s=5) as dave:
        await erin.login("erin", DEFAULT_PASSWORD)
        await dave.login("dave", DEFAULT_PASSWORD)
        os.kill(tail.popen.pid, signal.SIGSTOP)
        await until(lambda: any("evicted erin" in ln for ln in broker.process.stderr),
                    "the broker to evict the stopped tail")
        for i in range(3):  # handed to the other session only, which takes them (as a
            await dave.dm("erin", f"missed {i}")  # console does when they arrive) unread
            assert (await next_dm(erin, sender="dave")).text == f"missed {i}"
        os.kill(tail.popen.pid, signal.SIGCONT)
        await until(lambda: any("reconnected" in ln for ln in tail.stderr),
                    "the tail to reconnect")


async def until(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    """Wait for ``condition`` without blocking the event loop (the test's own clients
    keep their heartbeats meanwhile); AssertionError after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)
