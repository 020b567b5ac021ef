"""A real IRC client, Debian's irssi, through the gateway (issue 17): a real broker (the
in-process ``harness``), the real gateway on a free loopback port, irssi in a pty with a
private home, and a native zchat client (the library) on the other side. What irssi shows
is read from its screen, rendered by pyte from the pty's output. Every wait is on a
condition with a deadline.

Skips when irssi is not installed, saying so; fails instead under
ZCHAT_REQUIRE_IRC_CLIENTS=1 (.ci/run installs it). WeeChat is not driven: see docs/irc.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pexpect
import pyte
import pytest
from conftest import run

from zchat import wire as p
from zchat.irc.server import ClientOptions, Gateway
from zchat.irc.state import Settings
from zchat.testing import Harness, next_dm, next_message

WAIT_S = 8.0
#: alice's password: irssi's ``-w`` sends it as PASS's last word, so no space in it
PASSWORD = "irssi-pass-7c1f"
COLUMNS, ROWS = 160, 50


@contextlib.asynccontextmanager
async def gateway(harness: Harness) -> AsyncIterator[int]:
    """The gateway on a free loopback port (autojoin off): its port."""
    gw = Gateway(Settings(autojoin=False), ClientOptions(server=harness.server))
    _host, port = await gw.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await gw.shutdown()


def _irssi() -> str:
    path = shutil.which("irssi")
    if path is None:
        why = "irssi is not installed (apt-get install irssi)"
        if os.environ.get("ZCHAT_REQUIRE_IRC_CLIENTS") == "1":  # CI (.ci/run)
            pytest.fail(why)
        pytest.skip(why)
    return path


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
        async with gateway(harness) as port, \
                harness.client("carol") as carol:
            await carol.join("dev")
            await carol.send("dev", "said before irssi came")
            irssi = Irssi(binary, tmp_path / "irssi", port, "alice")
            try:
                await irssi.shows("Welcome to the zchat zchat gateway")
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
