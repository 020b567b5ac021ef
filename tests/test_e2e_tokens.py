"""End to end: bot accounts and account tokens through the ``zchat`` command line
(subprocesses against a ``zchat broker`` subprocess on loopback TCP)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from cli_helpers import ok, one_line_error, zchat
from conftest import TcpBroker, cli_env, zchat_command


def with_token(tmp_path: Path, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    """A zchat command with $ZCHAT_TOKEN set and a wrong $ZCHAT_PASSWORD: only the token
    can log it in."""
    env = cli_env(tmp_path, "not-the-password")
    env["ZCHAT_TOKEN"] = token
    return subprocess.run([*zchat_command(), *args], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=15)


def test_bot_token_say_then_revoke(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    server = ("--server", tcp_broker.router)
    reg = ok(zchat(tmp_path, "register", *server, "--bot", "ops"))
    assert reg.stdout.strip() == "registered ops (bot)"

    created = ok(zchat(tmp_path, "token", "create", *server, "--as", "ops",
                       "--label", "alerts pipe"))
    token = created.stdout.strip()
    assert len(token) == 43 and "\n" not in token
    assert "shown only this once" in created.stderr

    listed = ok(zchat(tmp_path, "token", "list", *server, "--as", "ops", "--json"))
    (row,) = [json.loads(line) for line in listed.stdout.splitlines()]
    assert row["label"] == "alerts pipe" and token not in listed.stdout

    ok(with_token(tmp_path, token, "say", *server, "--as", "ops", "--room", "alerts",
                  "disk full"))
    history = ok(zchat(tmp_path, "history", *server, "--as", "ops", "--room", "alerts",
                       "--json"))
    assert [(m["from"], m["text"]) for m in map(json.loads, history.stdout.splitlines())] == \
        [("ops", "disk full")]
    # `who` is one-shot and announces no presence: the room's members list ops
    who = ok(with_token(tmp_path, token, "who", *server, "--as", "ops", "--room", "alerts",
                        "--json"))
    assert {(u["name"], u["bot"]) for u in map(json.loads, who.stdout.splitlines())} == \
        {("ops", True)}

    revoked = ok(zchat(tmp_path, "token", "revoke", *server, "--as", "ops", str(row["id"])))
    assert revoked.stdout.strip() == f"revoked token {row['id']}"

    refused = with_token(tmp_path, token, "say", *server, "--as", "ops", "--room", "alerts",
                         "again")
    line = one_line_error(refused)
    assert "(401)" in line

    again = zchat(tmp_path, "token", "revoke", *server, "--as", "ops", str(row["id"]))
    assert "(404)" in one_line_error(again)
