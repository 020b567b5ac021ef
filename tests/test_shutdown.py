"""Graceful shutdown (docs/PROTOCOL.md §6.29): a real ``zchat broker`` subprocess on
loopback TCP gets SIGTERM, says GOING_AWAY, exits 0; started again on the same ports and
database, the clients come back on their own and resume their sessions.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path

from client_helpers import collect, is_, msgs
from conftest import Proc, TcpBroker, cli_env, run, start_broker, stop_broker, zchat_command
from console_helpers import console_session, window_text

from zchat import wire as p
from zchat.client.client import Client
from zchat.client.events import ConnectionRestored, Event
from zchat.testing import DEFAULT_PASSWORD, Harness


def _restart_on(tmp_path: Path, old: TcpBroker, pub: str) -> TcpBroker:
    """``zchat broker`` again with the same ports, config and data directory."""
    proc = Proc([*zchat_command(), "broker", "--config", str(tmp_path / "broker.toml"),
                 "--data-dir", str(old.data_dir), "--router", old.router, "--pub", pub],
                cli_env(tmp_path))
    try:
        proc.wait_line("stdout", "database", timeout_s=15)
    except AssertionError:
        proc.kill()
        raise
    return TcpBroker(old.router, proc, old.data_dir)


async def _client(router: str, name: str, reconnect: bool) -> Client:
    # 3 s: a fresh broker subprocess on a loaded machine once took over 1 s to answer
    client = Client(router, timeout_s=3.0, reconnect=reconnect, reconnect_max_s=1.0)
    await client.connect()
    await client.register(name, DEFAULT_PASSWORD)
    await client.login(name, DEFAULT_PASSWORD)
    await client.join("dev")
    return client


def test_sigterm_says_going_away_exits_0_and_clients_resume(tmp_path: Path) -> None:
    broker, lines = start_broker(tmp_path)
    pub = next(line.split()[-1] for line in lines if line.strip().startswith("pub"))
    brokers = [broker]

    async def main() -> None:
        alice = await _client(broker.router, "alice", reconnect=True)
        try:
            token = alice._state.session
            async with asyncio.timeout(10):
                await alice.send("dev", "before")
            rc, _elapsed = await asyncio.to_thread(stop_broker, broker, signal.SIGTERM)
            assert rc == 0, broker.process.stderr
            seen: list[Event] = await collect(alice, is_(p.GoingAway), timeout_s=5)
            going = seen[-1]
            assert isinstance(going, p.GoingAway) and going.text
            assert any("stopped" in line for line in broker.process.stderr)

            again = await asyncio.to_thread(_restart_on, tmp_path, broker, pub)
            brokers.append(again)
            seen += await collect(alice, is_(ConnectionRestored), timeout_s=15)
            assert alice._state.session == token  # RESUME of the kept session
            bob = await _client(again.router, "bob", reconnect=False)
            try:
                await bob.send("dev", "after the restart")
                seen += await collect(alice, is_(p.MessagePosted, text="after the restart"))
            finally:
                await bob.close()
            assert [m.text for m in msgs(seen, "dev")] == ["before", "after the restart"]
            assert (await alice.send("dev", "me too")).seq == 3
        finally:
            await alice.close()

    try:
        run(main(), timeout_s=45)
    finally:
        for b in brokers:
            if b.process.popen.poll() is None:
                rc, _ = stop_broker(b)
                assert rc == 0, b.process.stderr


def test_console_shows_going_away(harness: Harness) -> None:
    async def main() -> None:
        async with console_session(harness) as s:
            s.console.on_event(p.GoingAway(text="maintenance", time=1_700_000_000_000))
            rows = window_text(s.console.pane, 70, 10)
            assert any("broker going away: maintenance; reconnecting…" in r for r in rows)
            assert s.console.state == "reconnecting"

    run(main())
