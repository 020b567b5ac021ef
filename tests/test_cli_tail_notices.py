"""``zchat tail`` when its own account is moderated (docs/cli.md, ``zchat tail``).

Beside tests/test_moderation_notices.py (a mute's line, the end on a kick): the end on a timed
room ban, the end on SESSION_CLOSED (docs/PROTOCOL.md §6.47, an admin's server-wide ban),
and the pure wording of those lines. The real CLI in subprocesses against a ``zchat
broker`` subprocess on loopback tcp; nothing sleeps to wait for a socket.
"""

from __future__ import annotations

import datetime as dt
import re
import subprocess
from pathlib import Path

from conftest import Proc, TcpBroker, cli_env, zchat_command

from zchat import wire as p
from zchat.cli import _fmt_ms, mute_notice, removal_reason

#: 2024-06-01 12:00:00.250 UTC: not on a whole second, so rounding shows.
T0 = int(dt.datetime(2024, 6, 1, 12, 0, 0, 250_000, dt.UTC).timestamp() * 1000)


# -- the wording (pure) ------------------------------------------------------------------------


def test_mute_notices_name_who_where_until_and_why() -> None:
    timed = p.MuteChanged(room="dev", muted=True, by="olga", time=T0, reason="flood",
                          until=T0 + 90_000)
    assert mute_notice(timed, dt.UTC) == \
        "olga muted you in #dev until 12:01:31 (1 min 30 s): flood"
    server = p.MuteChanged(room="", muted=True, by="root", time=T0)
    assert mute_notice(server, dt.UTC) == \
        "root muted you on this whole server (DMs too) until lifted"
    lifted = p.MuteChanged(room="dev", muted=False, by="olga", time=T0)
    assert mute_notice(lifted, dt.UTC) == "olga unmuted you in #dev; you may post again"


def test_removal_reasons_for_a_kick_and_bans() -> None:
    kick = p.UserLeft(room="dev", name="nick", time=T0, by="olga", reason="be nice")
    assert removal_reason(kick, dt.UTC) == "you were kicked from #dev by olga: be nice"
    ban = p.UserLeft(room="dev", name="nick", time=T0, by="olga", reason="spam", ban=True,
                     until=T0 + 86_400_000)
    assert removal_reason(ban, dt.UTC) == \
        "you were banned from #dev by olga until 2024-06-02 12:00:01 (1 d): spam"
    forever = p.UserLeft(room="dev", name="nick", time=T0, by="olga", ban=True)
    assert removal_reason(forever, dt.UTC) == "you were banned from #dev by olga until lifted"


def test_ban_list_times_are_utc_seconds_rounded_up_for_an_end_only() -> None:
    assert _fmt_ms(T0 + 90_000, round_up=True) == "2024-06-01 12:01:31 UTC"
    assert _fmt_ms(T0) == "2024-06-01 12:00:00 UTC"  # an audit entry's time: as it was
    assert _fmt_ms(None, round_up=True) == "never"


# -- the CLI against a broker subprocess -------------------------------------------------------


def zchat(tmp_path: Path, *args: str) -> str:
    done = subprocess.run([*zchat_command(), *args], env=cli_env(tmp_path),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0, (args, done.returncode, done.stdout, done.stderr)
    return done.stdout


def follow(tmp_path: Path, broker: TcpBroker, *names: str) -> Proc:
    """Register ``names`` (olga creates #dev), then a ``tail`` of #dev as nick."""
    srv = ("--server", broker.router)
    for name in names:
        zchat(tmp_path, "register", *srv, name)
    zchat(tmp_path, "say", *srv, "--as", "olga", "--room", "dev", "hello")
    tail = Proc([*zchat_command(), "tail", *srv, "--as", "nick", "--room", "dev"],
                cli_env(tmp_path))
    tail.wait_line("stderr", "following #dev")
    return tail


def test_tail_ends_on_a_timed_ban_with_its_end_to_the_second(tmp_path: Path,
                                                             broker: TcpBroker) -> None:
    tail = follow(tmp_path, broker, "olga", "nick")
    try:
        zchat(tmp_path, "mod", "--server", broker.router, "--as", "olga", "ban", "dev",
              "nick", "--duration", "2h", "--reason", "spam")
        assert tail.wait(10) == 1
        assert re.fullmatch(r"zchat: error: you were banned from #dev by olga until "
                            r"(\d{4}-\d\d-\d\d )?\d\d:\d\d:\d\d \(2 h\): spam",
                            tail.stderr[-1]), tail.stderr
        assert "Traceback" not in "\n".join(tail.stderr)
    finally:
        tail.kill()


def test_tail_ends_once_when_an_admin_bans_the_account_server_wide(
        tmp_path: Path, broker: TcpBroker) -> None:
    tail = follow(tmp_path, broker, "olga", "nick")
    try:
        zchat(tmp_path, "mod", "--server", broker.router, "--as", "root", "ban", "*",
              "nick", "--reason", "abuse")
        assert tail.wait(10) == 1
        assert tail.stderr[-1] == ("zchat: error: session ended by root: you are banned "
                                   "from this server until lifted: abuse")
        assert not [line for line in tail.stderr if "reconnect" in line], tail.stderr
        assert "Traceback" not in "\n".join(tail.stderr)
    finally:
        tail.kill()
