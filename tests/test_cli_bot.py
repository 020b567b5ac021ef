"""``zchat bot FILE.py``: load errors as one line, and examples/echo.py as a subprocess
against a ``zchat broker`` subprocess, stopped by a signal after which it is offline."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest
from conftest import Proc, TcpBroker, cli_env, run, zchat_command

from zchat import cli
from zchat.client.client import Client
from zchat.testing import DEFAULT_PASSWORD, next_dm

ECHO = Path(__file__).resolve().parent.parent / "examples" / "echo.py"


def test_missing_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["bot", str(tmp_path / "nope.py")]) == 1
    err = capsys.readouterr().err
    assert err == f"zchat: error: no such bot file: {tmp_path / 'nope.py'}\n"


def test_file_without_bot_is_one_line(tmp_path: Path,
                                      capsys: pytest.CaptureFixture[str]) -> None:
    empty = tmp_path / "empty.py"
    empty.write_text("answer = 42\n", encoding="utf-8")
    assert cli.main(["bot", str(empty)]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith(f"zchat: error: {empty} defines no bot")


@pytest.mark.parametrize(("sig", "code", "server_from"), [
    (signal.SIGTERM, 143, "--server"), (signal.SIGINT, 130, "--server"),
    # the broker from the config file's [client] server (it was once ignored for the
    # bot's own default)
    (signal.SIGTERM, 143, "--config")])
def test_echo_bot_runs_and_logs_out_on_signal(tmp_path: Path, tcp_broker: TcpBroker,
                                               sig: int, code: int, server_from: str) -> None:
    async def register() -> None:
        async with Client(tcp_broker.router) as c:
            await c.register("parrot", DEFAULT_PASSWORD)
            await c.register("alice", DEFAULT_PASSWORD)

    run(register())
    where = [server_from, tcp_broker.router]
    if server_from == "--config":
        config = tmp_path / "client.toml"
        config.write_text(f'[client]\nserver = "{tcp_broker.router}"\n', encoding="utf-8")
        where = ["--config", str(config)]
    proc = Proc([*zchat_command(), "bot", str(ECHO), "--as", "parrot", *where],
                cli_env(tmp_path))
    try:
        proc.wait_line("stderr", "bot parrot serving #lobby")

        async def talk() -> dict[str, str]:
            async with Client(tcp_broker.router) as alice:
                await alice.login("alice", DEFAULT_PASSWORD)
                await alice.dm("parrot", "polly wants a cracker")
                reply = await next_dm(alice, sender="parrot")
                assert reply.text == "polly wants a cracker"
                proc.popen.send_signal(sig)
                # the bot logs out before it exits: its offline PRESENCE arrives at once
                while True:
                    event = await alice.next_event(5)
                    assert event is not None, "no offline presence for parrot"
                    if getattr(event, "name", None) == "parrot" and \
                            getattr(event, "presence", None) == "offline":
                        break
                return {u.name: u.presence for u in (await alice.who()).users}

        users = run(talk())
        assert users.get("parrot", "offline") == "offline"
        assert proc.wait(5) == code, proc.stderr
        assert not any("Traceback" in line for line in proc.stderr), proc.stderr
    finally:
        proc.kill()
