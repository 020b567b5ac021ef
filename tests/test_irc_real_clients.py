"""Real IRC clients from Debian through the gateway (issue 17).

irssi: a real broker (the in-process ``harness``), the real gateway on a free loopback
port, irssi in a pty with a private home, and a native zchat client (the library) on the
other side. What irssi shows is read from its screen, rendered by pyte from the pty's
output.

WeeChat (``weechat-headless``, which has no screen): a real ``zchat broker`` (loopback
tcp, CurveZMQ, its key pinned) and ``zchat irc`` as subprocesses, ``zchat say`` and
``zchat tail`` on the other side, WeeChat with a private home driven through its FIFO
plugin, what it received read from its logger plugin's files (flushed at once).

Every wait is on a condition with a deadline. Each test skips when its client is not
installed, saying so; fails instead under ZCHAT_REQUIRE_IRC_CLIENTS=1 (.ci/run installs
both).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import shutil
import signal
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pexpect
import pyte
import pytest
from cli_helpers import json_lines, ok, register, start_irc_gateway, zchat
from conftest import Proc, TcpBroker, cli_env, run, zchat_command
from irc_helpers import gateway

from zchat import wire as p
from zchat.testing import DEFAULT_PASSWORD, Harness, next_dm, next_message

WAIT_S = 8.0
#: alice's password: irssi's ``-w`` sends it as PASS's last word, so no space in it
PASSWORD = "irssi-pass-7c1f"
COLUMNS, ROWS = 160, 50


def _binary(name: str, package: str) -> str:
    """The path of ``name``; skips the test when it is missing (fails under
    ZCHAT_REQUIRE_IRC_CLIENTS=1)."""
    path = shutil.which(name)
    if path is None:
        why = f"{name} is not installed (apt-get install {package})"
        if os.environ.get("ZCHAT_REQUIRE_IRC_CLIENTS") == "1":  # CI (.ci/run)
            pytest.fail(why)
        pytest.skip(why)
    return path


def _irssi() -> str:
    return _binary("irssi", "irssi")


class Irssi:
    """irssi in a pty: keystrokes in, the screen (pyte) out."""

    def __init__(self, binary: str, home: Path, port: int, nick: str) -> None:
        home.mkdir()
        # private messages without query windows, no theme or scripts of anyone's home,
        # and no flood protection (irssi spaces its commands 2.2 s apart after a burst)
        (home / "config").write_text(
            'settings = {\n  core = { real_name = "Alice Real"; user_name = "alice"; '
            'cmd_queue_speed = "0msec"; max_cmds_at_once = "1000"; };\n'
            '  "fe-common/core" = { autocreate_query_level = "NONE"; '
            'autocreate_own_query = "no"; };\n};\n', encoding="utf-8")
        self.screen = pyte.Screen(COLUMNS, ROWS)
        self.stream = pyte.ByteStream(self.screen)
        env = {"HOME": str(home), "TERM": "xterm", "LANG": "C.UTF-8",
               "PATH": os.environ.get("PATH", "/usr/bin:/bin")}
        self.child = pexpect.spawn(
            binary, [f"--home={home}", "-c", "127.0.0.1", "-p", str(port), "-n", nick,
                     "-w", f"{nick}:{PASSWORD}"],
            env=env, dimensions=(ROWS, COLUMNS), timeout=WAIT_S)

    def text(self) -> str:
        return "\n".join(self.screen.display)

    def _pump(self) -> None:
        with contextlib.suppress(pexpect.TIMEOUT):
            self.stream.feed(self.child.read_nonblocking(65536, timeout=0.05))

    async def shows(self, needle: str, timeout_s: float = WAIT_S) -> str:
        """Wait until ``needle`` is on irssi's screen; the screen then."""
        deadline = time.monotonic() + timeout_s
        while needle not in self.text():
            if time.monotonic() > deadline:
                raise AssertionError(f"irssi does not show {needle!r} in {timeout_s} s; "
                                     f"screen:\n{self.text()}")
            await asyncio.to_thread(self._pump)
        return self.text()

    def type(self, line: str) -> None:
        self.child.send(line + "\r")

    def close(self) -> None:
        if self.child.isalive():
            self.type("/quit bye")
            with contextlib.suppress(pexpect.TIMEOUT, pexpect.EOF):
                self.child.expect(pexpect.EOF, timeout=3)
        self.child.close(force=True)


def test_irssi_joins_and_talks_with_a_zchat_client(harness: Harness, tmp_path: Path
                                                   ) -> None:
    binary = _irssi()

    async def scenario() -> None:
        async with harness.client("alice", password=PASSWORD) as alice:
            await alice.logout()
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("carol") as carol:
            await carol.join("dev")
            await carol.send("dev", "said before irssi came")
            irssi = Irssi(binary, tmp_path / "irssi", port, "alice")
            try:
                await irssi.shows("Welcome to the zchat network's IRC gateway")
                irssi.type("/join #dev")
                # the playback on JOIN, then the nick list with carol as operator (owner)
                await irssi.shows("said before irssi came")
                await irssi.shows("@carol")
                await carol.send("dev", "hello from zchat")
                await irssi.shows("hello from zchat")
                irssi.type("hello from irssi")
                got = await next_message(carol, "dev", sender="alice", timeout_s=WAIT_S)
                assert (got.text, got.kind) == ("hello from irssi", "text")
                irssi.type("/me waves")
                got = await next_message(carol, "dev", sender="alice", timeout_s=WAIT_S)
                assert (got.text, got.kind) == ("waves", "action")
                irssi.type("/msg carol a word in private")
                dm = await next_dm(carol, sender="alice", timeout_s=WAIT_S)
                assert dm.text == "a word in private"
                await carol.dm("alice", "private answer")
                irssi.type("/window 1")  # a message without a query window: the status one
                await irssi.shows("private answer")
                irssi.type("/window 2")
                await carol.set_topic("dev", "release on friday")
                await irssi.shows("release on friday")
                irssi.type("/topic new topic from irssi")
                deadline = time.monotonic() + WAIT_S
                async for ev in carol.events():
                    if isinstance(ev, p.TopicChanged) and ev.by == "alice":
                        assert ev.topic == "new topic from irssi"
                        break
                    assert time.monotonic() < deadline, "no TOPIC from irssi"
            finally:
                irssi.close()

    run(scenario(), timeout_s=30)


# -- WeeChat ---------------------------------------------------------------------------

#: The IRC server's name in WeeChat: its buffers are ``irc.server.zchat`` and
#: ``irc.zchat.#channel``, and so are its log files' names.
WEECHAT_SERVER = "zchat"
#: What WeeChat 3.8 (Debian 12's) asks for by default (its ``capabilities`` option "*")
#: of what the gateway offers (docs/irc.md): not echo-message, which 3.8 does not know.
#: A later WeeChat may ask for more.
WEECHAT_CAPS = {"away-notify", "cap-notify", "extended-join", "message-tags", "multi-prefix",
                "sasl", "server-time", "userhost-in-names"}
#: The logger's time format (its default), in UTC (TZ=UTC in WeeChat's environment).
LOG_TIME = "%Y-%m-%d %H:%M:%S"
#: One step of polling a log file for a line, under a deadline.
POLL_S = 0.02


@dataclass(frozen=True)
class LogLine:
    """One line of a WeeChat log file: ``time\\tprefix\\tmessage``."""

    time: str
    prefix: str
    text: str

    @property
    def nick(self) -> str:
        """The prefix without the nick's mode (``@bob`` is bob)."""
        return self.prefix.lstrip("@%+~&")


class WeeChat:
    """weechat-headless with a private home (``-d``, no autoconnect, only the irc, logger
    and fifo plugins): commands in through its FIFO, what it shows out of its log files."""

    def __init__(self, binary: str, home: Path, port: int, account: str,
                 password: str) -> None:
        home.mkdir()
        self.fifo = home / "weechat_fifo"
        self.logs = home / "logs"
        server = f"irc.server.{WEECHAT_SERVER}"
        setup = [
            "/set logger.file.auto_log on", "/set logger.file.flush_delay 0",
            f"/set logger.file.path {self.logs}", f'/set logger.file.time_format "{LOG_TIME}"',
            "/set fifo.file.enabled on", f"/set fifo.file.path {self.fifo}",
            f"/server add {WEECHAT_SERVER} 127.0.0.1/{port} -notls",
            f"/set {server}.nicks {account}", f"/set {server}.username {account}",
            f'/set {server}.realname "WeeChat user"',
            f"/set {server}.sasl_mechanism plain", f"/set {server}.sasl_username {account}",
            f'/set {server}.sasl_password "{password}"',
            f"/connect {WEECHAT_SERVER}"]
        env = dict(os.environ, HOME=str(home), TZ="UTC", LANG="C.UTF-8")
        env.pop("WEECHAT_HOME", None)
        self.proc = Proc([binary, "--stdout", "-d", str(home), "-a", "-P", "irc,logger,fifo",
                          "-r", "; ".join(setup)], env)

    def log(self, buffer: str) -> Path:
        """The log file of ``buffer``: "server" or a channel ("#dev")."""
        name = f"server.{WEECHAT_SERVER}" if buffer == "server" else f"{WEECHAT_SERVER}.{buffer}"
        return self.logs / f"irc.{name}.weechatlog"

    def lines(self, buffer: str) -> list[LogLine]:
        try:
            text = self.log(buffer).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [LogLine(*line.split("\t", 2)) for line in text.splitlines()
                if line.count("\t") >= 2]

    def wait_line(self, buffer: str, contains: str, timeout_s: float = WAIT_S) -> LogLine:
        """The first line of ``buffer``'s log whose message contains ``contains``, waiting
        for it at most ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while True:
            for line in self.lines(buffer):
                if contains in line.text:
                    return line
            if self.proc.popen.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(
                    f"WeeChat's {buffer} log has no {contains!r} within {timeout_s} s "
                    f"(exit {self.proc.popen.poll()}): {self.lines(buffer)}")
            time.sleep(POLL_S)  # one polling step of a file, under the deadline

    def command(self, text: str, buffer: str = "") -> None:
        """``text`` (a /command, or a message) typed in ``buffer`` ("server", "#dev"; "":
        the core buffer), through the FIFO: ``irc.zchat.#dev *text``."""
        deadline = time.monotonic() + WAIT_S
        while not self.fifo.is_fifo():
            assert time.monotonic() < deadline, f"WeeChat made no FIFO {self.fifo}"
            time.sleep(POLL_S)  # one polling step of a file, under the deadline
        target = ("" if not buffer else f"irc.server.{WEECHAT_SERVER} " if buffer == "server"
                  else f"irc.{WEECHAT_SERVER}.{buffer} ")
        # non-blocking: no reader (WeeChat gone) is an error at once, not a hang
        fd = os.open(self.fifo, os.O_WRONLY | os.O_NONBLOCK)
        try:
            os.write(fd, f"{target}*{text}\n".encode())
        finally:
            os.close(fd)

    def close(self) -> None:
        self.proc.kill()


def _second(iso_utc: str) -> str:
    """``2026-12-07T18:58:20.961Z`` as WeeChat logs a line of that time (to the second)."""
    return datetime.fromisoformat(iso_utc.replace("Z", "+00:00")).strftime(LOG_TIME)


def _say(tmp_path: Path, broker: TcpBroker, user: str, text: str) -> None:
    ok(zchat(tmp_path, "say", "--server", broker.router, "--as", user, "--room", "dev", text))


def test_weechat_logs_in_with_sasl_and_talks_with_say_and_tail(tmp_path: Path,
                                                               broker: TcpBroker) -> None:
    """WeeChat's own habits where irssi's differ: SASL PLAIN after CAP LS 302, the
    capabilities it asks for, server-time (the playback and live lines carry the broker's
    time, no "[time] " in the text), extended-join (the account in JOIN)."""
    binary = _binary("weechat-headless", "weechat-headless")
    register(tmp_path, broker, "alice", "bob", "carol")
    env = cli_env(tmp_path)
    tail = Proc([*zchat_command(), "tail", "--server", broker.router, "--as", "bob",
                 "--room", "dev", "--json"], env)
    gateway: Proc | None = None
    weechat: WeeChat | None = None
    try:
        tail.wait_line("stderr", "following #dev", timeout_s=15)
        _say(tmp_path, broker, "bob", "said before weechat came")
        before = json.loads(tail.wait_line("stdout", "said before weechat came"))
        gateway, port = start_irc_gateway(tmp_path, broker)
        weechat = WeeChat(binary, tmp_path / "weechat", port, "alice", DEFAULT_PASSWORD)
        requested = weechat.wait_line("server", "client capability, requesting: ")
        enabled = weechat.wait_line("server", "client capability, enabled: ")
        asked = set(requested.text.partition("requesting: ")[2].split())
        assert set(enabled.text.partition("enabled: ")[2].split()) == asked  # all ACKed
        assert asked >= WEECHAT_CAPS, asked
        weechat.wait_line("server", "SASL authentication successful")
        weechat.wait_line("server", "Welcome to the zchat network's IRC gateway, alice")

        weechat.command("/join #dev", "server")
        # extended-join: WeeChat shows the account in brackets, then the real name
        joined = weechat.wait_line("#dev", "has joined #dev")
        assert re.fullmatch(r"alice \[alice\] \(WeeChat user\) \(~?alice@\S+\) has joined #dev",
                            joined.text), joined
        # the playback, dated by server-time with the broker's time of the message
        played = weechat.wait_line("#dev", "said before weechat came")
        assert (played.nick, played.text) == ("bob", "said before weechat came")
        assert played.time == _second(before["time"])

        _say(tmp_path, broker, "carol", "hello from zchat")
        live = weechat.wait_line("#dev", "hello from zchat")
        posted = json.loads(tail.wait_line("stdout", "hello from zchat"))
        assert (live.nick, live.text) == ("carol", "hello from zchat")
        assert live.time == _second(posted["time"])
        # carol's one-shot session (no presence, docs/PROTOCOL.md §6.3) joined #dev to
        # say it: she is offline, so no JOIN (no QUIT would ever follow it)

        weechat.command("hello from weechat", "#dev")
        got = json.loads(tail.wait_line("stdout", "hello from weechat"))
        assert (got["from"], got["text"], got["kind"]) == ("alice", "hello from weechat",
                                                           "text")
        weechat.command("/me waves from weechat", "#dev")
        got = json.loads(tail.wait_line("stdout", "waves from weechat"))
        assert (got["from"], got["text"], got["kind"]) == ("alice", "waves from weechat",
                                                           "action")
        assert not [line for line in weechat.lines("#dev")
                    if "carol [carol]" in line.text], weechat.lines("#dev")

        # /quit: WeeChat sends QUIT and exits; the gateway logs alice's session out (the
        # broker's log says so), and WHO lists her no more (it lists who is online)
        weechat.command("/quit gone fishing")
        assert weechat.proc.wait(WAIT_S) == 0
        broker.process.wait_line("stderr", "logout alice", timeout_s=WAIT_S)
        who = json_lines(ok(zchat(tmp_path, "who", "--server", broker.router, "--as", "bob",
                                  "--json")).stdout)
        assert {u["name"] for u in who} == {"bob"}, who
    finally:
        if weechat is not None:
            weechat.close()
        tail.kill()
        if gateway is not None:
            gateway.popen.send_signal(signal.SIGTERM)
            try:
                assert gateway.wait(5) == 0, gateway.stderr
            finally:
                gateway.kill()
