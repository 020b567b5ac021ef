"""What a moderated or operator-ended user is told, below the console (loose ends of
issue 6; the console's side is tests/test_console_moderation_notices.py).

- MUTED (docs/PROTOCOL.md §6.33.1) to the muted account's sessions, on mute and unmute;
- LEFT carries a ban's ``until`` (§6.19); expiries are shown to the second everywhere;
- SESSION_CLOSED (§6.47) before an admin's password reset, disable or server-wide ban
  ends a session: the client ends with one SessionEnded naming who and why, never a
  ConnectionLost, and requests then get 401 with that reason;
- ``zchat tail`` prints a mute and ends on its removal from the room; ``zchat mod bans``
  and ``zchat admin bans`` show times to the second; every ``zchat admin`` refusal names
  what was refused; ``--help`` says where a default comes from.

Real parts: the pure core through the real codec on a fake clock (World/Peer), a real
broker thread on inproc:// with real clients, and the real CLI in subprocesses against a
``zchat broker`` subprocess on loopback tcp. Nothing sleeps to wait for a socket.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import math
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import Proc, TcpBroker, cli_env, run, zchat_command
from core_helpers import PASSWORD, World

from zchat import wire as p
from zchat.client.client import Client
from zchat.client.events import ConnectionLost, SessionEnded
from zchat.console.view import duration_text, expiry_text
from zchat.core import ToPeer
from zchat.errors import RequestFailed, Status
from zchat.testing import DEFAULT_PASSWORD, Harness, next_event_of, running_broker

SECONDS_UTC = re.compile(r"until (\d{4}-\d\d-\d\d \d\d:\d\d:\d\d) UTC")


def utc_second(ms: int) -> str:
    """A ban's end as the broker and the CLI show it: to the second, rounded up."""
    return dt.datetime.fromtimestamp(math.ceil(ms / 1000), dt.UTC).strftime(
        "%Y-%m-%d %H:%M:%S")


# -- the pure core ---------------------------------------------------------------------------


@pytest.fixture
def world() -> World:
    return World(admins=("root",))


def test_core_mute_and_unmute_push_muted_to_every_session_of_the_target(world: World) -> None:
    olga = world.user("olga")
    olga.must(p.Join(room="dev"))
    nick1 = world.user("nick")
    nick2 = world.peer()
    assert nick2.login("nick").ok
    nick1.must(p.Join(room="dev"))
    out = olga.call(p.Mute(room="dev", name="nick", reason="flood", duration_s=90))
    assert out.ok
    expected = p.MuteChanged(room="dev", muted=True, by="olga", time=world.clock.ms,
                             reason="flood", until=world.clock.ms + 90_000)
    assert sorted(out.pushes, key=lambda rp: rp[0]) == sorted(
        [(nick1.routing_id, expected), (nick2.routing_id, expected)], key=lambda rp: rp[0])
    assert out.events == []  # a mute is not announced to the room
    world.clock.jump(5)
    out = olga.call(p.Unmute(room="dev", name="nick"))
    assert out.ok and [v for _r, v in out.pushes] == [
        p.MuteChanged(room="dev", muted=False, by="olga", time=world.clock.ms)] * 2
    # a refused UNMUTE (not muted any more) pushes nothing
    out = olga.call(p.Unmute(room="dev", name="nick"))
    assert out.status == Status.NOT_FOUND and out.pushes == []


def test_core_server_wide_mute_push_has_an_empty_room_and_no_expiry(world: World) -> None:
    root = world.user("root")
    nick = world.user("nick")
    out = root.call(p.Mute(name="nick"))
    assert out.pushes == [(nick.routing_id, p.MuteChanged(room="", muted=True, by="root",
                                                          time=world.clock.ms))]


def test_core_ban_left_carries_until_and_kick_none(world: World) -> None:
    olga = world.user("olga")
    olga.must(p.Join(room="dev"))
    for name in ("nick", "max"):
        world.user(name).must(p.Join(room="dev"))
    kicked = olga.call(p.Kick(room="dev", name="max")).events_of(p.UserLeft)[0][1]
    assert (kicked.ban, kicked.until) == (False, None)
    banned = olga.call(p.Ban(room="dev", name="nick", duration_s=90)).events_of(p.UserLeft)
    assert banned[0][1].until == world.clock.ms + 90_000 and banned[0][1].ban


def test_core_ban_expiry_is_told_to_the_second(world: World) -> None:
    olga = world.user("olga")
    olga.must(p.Join(room="dev"))
    nick = world.user("nick")
    world.clock.jump(0.25)  # not on a whole second: the time shown is rounded up
    olga.must(p.Ban(room="dev", name="nick", reason="spam", duration_s=90))
    until = world.clock.ms + 90_000
    out = nick.call(p.Join(room="dev"))
    assert out.status == Status.FORBIDDEN
    reason = out.reply.reason  # type: ignore[attr-defined]
    assert reason == f"you are banned from #dev until {utc_second(until)} UTC: spam"
    audit = [r for r in world.store.audit_log() if r.action == "ban"]
    assert audit[0].detail == f"until {utc_second(until)} UTC; spam"


def test_core_session_closed_goes_first_then_the_session_is_gone(world: World) -> None:
    root = world.user("root")
    nick = world.user("nick")
    out = root.call(p.SetDisabled(name="nick"))
    assert out.ok
    closed = [a for a in out.actions if isinstance(a, ToPeer)
              and a.routing_id == nick.routing_id]
    assert len(closed) == 1
    _rid, push = p.decode_from_broker(closed[0].frames, {})
    assert push == p.SessionClosed(reason="your account was disabled; ask a broker admin "
                                          "to enable it", by="root", time=world.clock.ms)
    assert nick.call(p.Who()).status == Status.UNAUTHORIZED
    # the account's own password change: the other session is told, this one goes on
    alice1 = world.user("alice")
    alice2 = world.peer()
    assert alice2.login("alice").ok
    out = alice1.call(p.SetPassword(old=PASSWORD, new="new-pass-1"))
    assert out.ok
    assert out.pushes == [(alice2.routing_id, p.SessionClosed(
        reason="your password was changed from another session; log in with the new one",
        by="alice", time=world.clock.ms))]
    assert alice1.call(p.Who()).ok


# -- real clients on an inproc broker ---------------------------------------------------------


@pytest.fixture
def h() -> Iterator[Harness]:
    with running_broker(admins=("root",)) as harness:
        yield harness



async def events_until(client: Client, kind: type[Any], timeout_s: float = 5.0) -> list[Any]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    seen: list[Any] = []
    while (left := deadline - loop.time()) > 0:
        event = await client.next_event(left)
        seen.append(event)
        if isinstance(event, kind) or event is None:
            return seen
    raise AssertionError(f"no {kind.__name__} within {timeout_s} s; saw {seen}")


def test_live_mute_notice_reaches_the_muted_client(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("olga") as olga, h.client("nick") as nick:
            await olga.join("dev")
            await nick.join("dev")
            await olga.mute("nick", "dev", reason="flood", duration_s=90)
            muted = await next_event_of(nick, p.MuteChanged)
            assert (muted.room, muted.muted, muted.by, muted.reason) == \
                ("dev", True, "olga", "flood")
            assert muted.until - muted.time == 90_000
            await olga.unmute("nick", "dev")
            lifted = await next_event_of(nick, p.MuteChanged)
            assert (lifted.muted, lifted.by, lifted.until) == (False, "olga", None)

    run(scenario())


@pytest.mark.parametrize(("action", "reason"), [
    ("reset", "your password was reset; log in with the new one"),
    ("disable", "your account was disabled; ask a broker admin to enable it"),
    ("ban", "you are banned from this server until lifted: abuse"),
])
def test_live_operator_ends_session_with_one_clear_event(h: Harness, action: str,
                                                         reason: str) -> None:
    async def scenario() -> None:
        async with h.client("nick"):  # registered
            pass
        async with h.client("root") as root:
            nick = Client(h.server, context=h.context, reconnect=True, timeout_s=5.0)
            await nick.connect()
            try:
                await nick.login("nick", DEFAULT_PASSWORD)
                if action == "reset":
                    await root.admin_set_password("nick", "a-new-password")
                elif action == "disable":
                    await root.set_disabled("nick")
                else:
                    await root.ban("nick", reason="abuse")
                seen = await events_until(nick, SessionEnded)
                assert not any(isinstance(e, ConnectionLost) for e in seen), seen
                ended = seen[-1]
                assert isinstance(ended, SessionEnded)
                assert (ended.by, ended.reason) == ("root", reason)
                assert await nick.next_event(1.0) is None  # the stream ended
                with pytest.raises(RequestFailed) as after:
                    await nick.who()
                assert after.value.status == Status.UNAUTHORIZED
                assert after.value.reason == f"session ended by root: {reason}"
            finally:
                await nick.close()

    run(scenario())


# -- the CLI against a broker subprocess -------------------------------------------------------


def zchat(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*zchat_command(), *args], env=cli_env(tmp_path),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30)


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    return result.stdout


def refused(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert result.stderr.startswith("zchat: error: ")
    return result.stderr.strip()


def test_tail_prints_a_mute_and_ends_on_a_kick(tmp_path: Path, broker: TcpBroker) -> None:
    srv = ("--server", broker.router)
    for name in ("olga", "nick"):
        ok(zchat(tmp_path, "register", *srv, name))
    ok(zchat(tmp_path, "say", *srv, "--as", "olga", "--room", "dev", "hello"))
    tail = Proc([*zchat_command(), "tail", *srv, "--as", "nick", "--room", "dev"],
                cli_env(tmp_path))
    try:
        tail.wait_line("stderr", "following #dev")
        ok(zchat(tmp_path, "mod", *srv, "--as", "olga", "mute", "dev", "nick",
                 "--duration", "90s", "--reason", "flood"))
        line = tail.wait_line("stderr", "muted you")
        assert re.fullmatch(r"zchat: olga muted you in #dev until \d\d:\d\d:\d\d "
                            r"\(1 min 30 s\): flood", line), line
        ok(zchat(tmp_path, "mod", *srv, "--as", "olga", "kick", "dev", "nick",
                 "--reason", "be nice"))
        assert tail.wait(10) == 1
        assert tail.stderr[-1] == "zchat: error: you were kicked from #dev by olga: be nice"
        assert "Traceback" not in "\n".join(tail.stderr)
    finally:
        tail.kill()


def test_ban_lists_show_the_end_to_the_second(tmp_path: Path, broker: TcpBroker) -> None:
    srv = ("--server", broker.router)
    for name in ("olga", "nick"):  # root, an admin, is created by start_broker
        ok(zchat(tmp_path, "register", *srv, name))
    ok(zchat(tmp_path, "say", *srv, "--as", "olga", "--room", "dev", "hello"))
    ok(zchat(tmp_path, "mod", *srv, "--as", "olga", "ban", "dev", "nick",
             "--duration", "90s", "--reason", "spam"))
    (mod_line,) = ok(zchat(tmp_path, "mod", *srv, "--as", "olga", "bans", "dev")).splitlines()
    mod_until = SECONDS_UTC.search(mod_line)
    assert mod_until is not None, mod_line
    admin_out = ok(zchat(tmp_path, "admin", "bans", *srv, "--as", "root", "--json"))
    (row,) = [json.loads(x) for x in admin_out.splitlines()]
    until_ms = int(dt.datetime.fromisoformat(row["until"].replace("Z", "+00:00"))
                   .timestamp() * 1000)
    assert mod_until.group(1) == utc_second(until_ms)
    table = ok(zchat(tmp_path, "admin", "bans", *srv, "--as", "root"))
    assert utc_second(until_ms) in table
    error = refused(zchat(tmp_path, "say", *srv, "--as", "nick", "--room", "dev", "hi"))
    assert f"until {utc_second(until_ms)} UTC: spam" in error


ADMIN_REFUSALS = [
    (("users",), "only broker admins may list accounts"),
    (("sessions",), "only broker admins may list sessions"),
    (("create", "--csv", "{csv}"), "only broker admins may create accounts"),
    (("reset-password", "olga", "--generate"), "only broker admins may reset passwords"),
    (("disable", "olga"), "only broker admins may disable or enable accounts"),
    (("enable", "olga"), "only broker admins may disable or enable accounts"),
    (("bans",), "only broker admins may list every room's bans"),
    (("bans", "--room", "*"), "only broker admins may list server-wide bans"),
    (("unban", "olga"), "only broker admins may unban server-wide"),
    (("unban", "olga", "--mute"), "only broker admins may unmute server-wide"),
    (("audit",), "only broker admins may read the whole audit log"),
]


def test_every_admin_refusal_names_what_was_refused(tmp_path: Path,
                                                    broker: TcpBroker) -> None:
    srv = ("--server", broker.router)
    for name in ("olga", "nick"):
        ok(zchat(tmp_path, "register", *srv, name))
    csv_file = tmp_path / "class.csv"
    csv_file.write_text("name,password\nada,pw-ada-123\n", encoding="utf-8")
    for args, expected in ADMIN_REFUSALS:
        argv = [a.format(csv=csv_file) for a in args]
        error = refused(zchat(tmp_path, "admin", argv[0], *srv, "--as", "nick", *argv[1:]))
        assert error == f"zchat: error: {expected} (403)", (args, error)
    # nothing was created or changed by the refused requests
    users = ok(zchat(tmp_path, "admin", "users", "--db", str(broker.data_dir / "zchat.db")))
    assert "ada" not in users


def test_help_names_the_config_setting_before_the_built_in_default(tmp_path: Path) -> None:
    config = tmp_path / "mine.toml"
    config.write_text('[client]\nserver = "tcp://10.9.8.7:7000"\n', encoding="utf-8")
    out = ok(zchat(tmp_path, "say", "--config", str(config), "--help"))
    flat = " ".join(out.split())
    assert "--server ENDPOINT the broker's ROUTER endpoint (default: [client] server in " \
           "the config file, else tcp://127.0.0.1:5555)" in flat
    assert "default: [client] timeout_s in the config file, else 5" in flat
    broker_help = " ".join(ok(zchat(tmp_path, "broker", "--help")).split())
    assert "(default: [broker] router in the config file, else tcp://127.0.0.1:5555)" \
        in broker_help
    docs = (Path(__file__).resolve().parent.parent / "docs" / "cli.md").read_text()
    flat_docs = " ".join(docs.split())
    assert "default: `[client] server` in the config file, else `tcp://127.0.0.1:5555`" \
        in flat_docs
    readme = " ".join((Path(__file__).resolve().parent.parent / "README.md").read_text()
                      .split())
    assert "`[client] server` in the config file, else `tcp://127.0.0.1:5555`" in readme


# -- formatting (pure) -------------------------------------------------------------------------


def test_durations_and_expiries_are_exact_enough() -> None:
    assert [duration_text(ms) for ms in (0, 1, 45_000, 60_000, 90_000, 725_000,
                                         7_500_000, 277_200_000, 86_400_000)] == \
        ["0 s", "1 s", "45 s", "1 min", "1 min 30 s", "12 min 5 s", "2 h 5 min",
         "3 d 5 h", "1 d"]
    t0 = int(dt.datetime(2024, 6, 1, 12, 0, 0, 250_000, dt.UTC).timestamp() * 1000)
    assert expiry_text(None, t0, dt.UTC) == "until lifted"
    assert expiry_text(t0 + 90_000, t0, dt.UTC) == "until 12:01:31 (1 min 30 s)"
    assert expiry_text(t0 + 86_400_000, t0, dt.UTC) == \
        "until 2024-06-02 12:00:01 (1 d)"
