"""The console after a removal (issue 6, a fresh tester's round, docs/console.md "When you
are the one moderated"): joining a room again shows what was said meanwhile after the
lines already shown and after the removal's notice, in seq order, scrolled into view,
with a ``--> you joined`` line; a reconnect does not ask about rooms marked not joined;
the end of one mute says which mute still holds; ``/me`` and moderation commands in a
room not joined come back to the input.

The real prompt_toolkit Application on a pipe input and DummyOutput (the helpers of
tests/console_helpers.py) over real clients and a real broker thread on ``inproc://``
(restarted on the same endpoints and SQLite file, tests/client_helpers.py, where a
reconnect is needed); the view's placement rule is also tested as the pure function it
is. Every wait polls a condition with a deadline; nothing sleeps for a socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sqlite3
from collections.abc import Iterator

import pytest
from client_helpers import RestartableBroker
from conftest import run
from console_helpers import PAGE_UP, console_session, until

from zchat.client.client import Client
from zchat.console import view as v
from zchat.testing import Harness, running_broker


@pytest.fixture
def h() -> Iterator[Harness]:
    with running_broker(admins=("root",), send_rate_per_s=0.0) as harness:
        yield harness


async def last_seq(client: Client, room: str) -> int:
    (info,) = [r for r in (await client.list_rooms()).rooms if r.room == room]
    return info.last_seq


def pane(console: object, width: int = 80, height: int = 8) -> list[str]:
    """The text of the message pane's rows as drawn (``ChatConsole._message_rows``)."""
    rows = console._message_rows(width, height)  # type: ignore[attr-defined]
    return ["".join(text for _style, text, *_ in row).rstrip() for row in rows]


def drawn(console: object) -> list[str]:
    """The message pane as the running Application last laid it out (its real size)."""
    info = console.pane.render_info  # type: ignore[attr-defined]
    assert info is not None
    return pane(console, info.window_width, info.window_height)


# -- the placement rule (pure) -------------------------------------------------------------------


def msg(seq: int, text: str, sender: str = "bob") -> v.Line:
    return v.Line("message", 1_700_000_000_000 + seq, sender, text, seq)


def test_missed_lines_go_after_the_anchor_in_seq_order_before_later_live_lines() -> None:
    conv = v.Conversation("dev", "dev", "room")
    for line in (msg(1, "old 1"), msg(2, "old 2")):
        conv.add(line, me="alice")
    kicked = v.Line("error", None, None, "you were kicked from #dev by bob", marker="=!=")
    conv.add(kicked, me="alice")
    conv.add(msg(9, "live after the join"), me="alice")  # arrived meanwhile
    page = [msg(8, "eighth"), msg(2, "old 2"), msg(1, "old 1"), msg(7, "seventh"),
            msg(9, "live after the join")]
    assert conv.insert_missed(page, "alice", after=kicked) == 2
    assert [ln.text for ln in conv.lines] == [
        "old 1", "old 2", "you were kicked from #dev by bob", "seventh", "eighth",
        "live after the join"]
    assert conv.newest_seq == 9 and 7 in conv and 8 in conv


def test_missed_lines_in_a_pane_without_messages_come_after_its_notices() -> None:
    """The tester's #empty1: no message shown, so ``insert_older`` (which orders by seq
    and treats every seq as older when none is loaded) put them above the notice."""
    conv = v.Conversation("empty1", "empty1", "room")
    notes = [v.Line("info", None, None, f"help line {i}") for i in range(3)]
    for line in notes:
        conv.add(line, me="mem")
    conv.scroll_up(2)  # looking at older lines: the new ones are counted, not lost
    added = conv.insert_missed([msg(2, "second message", "owen"),
                                msg(1, "first ever message mem", "owen")],
                               "mem", after=notes[-1])
    assert added == 2
    assert [ln.text for ln in conv.lines][3:] == ["first ever message mem",
                                                  "second message"]
    assert conv.lines[3].mention  # "mem" named in the first
    assert conv.new_while_scrolled == 2


def test_missed_lines_skip_what_is_older_than_the_shown_messages() -> None:
    conv = v.Conversation("dev", "dev", "room")
    conv.add(msg(5, "five"), me="alice")
    anchor = conv.lines[-1]
    assert conv.insert_missed([msg(3, "three"), msg(6, "six")], "alice", after=anchor) == 1
    assert [ln.text for ln in conv.lines] == ["five", "six"]


# -- joining again, live -----------------------------------------------------------------------


def test_rejoining_after_a_kick_shows_what_was_said_after_the_kick_line(h: Harness) -> None:
    """The tester's pane read the two messages ABOVE ``you were kicked``."""
    async def main() -> None:
        async with h.client("owen") as owen, console_session(h, "mem") as s:
            await owen.join("empty1")  # owen creates it: its owner; nothing said yet
            s.type_line("/join empty1")
            await until(lambda: s.console.active == "empty1", what="switch to #empty1")
            await s.wait_text("you joined #empty1")
            await owen.kick("empty1", "mem")
            kicked = "you were kicked from #empty1 by owen — /join empty1 to go back"
            await s.wait_text(kicked)
            await owen.send("empty1", "first ever message")
            await owen.send("empty1", "second message")
            s.type_line("/join empty1")
            await until(lambda: s.texts().count("you joined #empty1") == 2,
                        what="the second joined line")
            texts = s.texts()
            i = texts.index(kicked)
            assert texts[i:] == [kicked, "first ever message", "second message",
                                 "you joined #empty1"], texts
            assert s.console.conversations["empty1"].joined
            assert pane(s.console)[-3:] == [
                pane_row("owen", "first ever message", s),
                pane_row("owen", "second message", s),
                pane_row("-->", "you joined #empty1", s)]
            # owen sees the join as everyone does; mem's own JOINED is not a second line
            assert "mem joined #empty1" not in texts

    run(main())


def pane_row(nick: str, text: str, s: object) -> str:
    """How the pane draws one line of the conversation shown in session ``s``."""
    conv = s.conv  # type: ignore[attr-defined]
    line = next(ln for ln in reversed(conv.lines) if ln.text == text)
    rows = v.render_line(line, 80, "mem", s.console.tz)  # type: ignore[attr-defined]
    drawn = "".join(t for _st, t in rows[0]).rstrip()
    assert nick in drawn
    return drawn


def test_removed_while_disconnected_then_rejoined_shows_the_new_lines_at_the_bottom(
        inproc_broker: RestartableBroker) -> None:  # noqa: F811 (the fixture)
    """The tester's #pub: a long pane of lines without a seq (here /help), removed while
    the console was away, two messages later; after /join they went to the very top."""
    async def main() -> None:
        h = await asyncio.to_thread(inproc_broker.start)
        async with h.client("owen") as owen:
            await owen.join("pub")
        # 2 s: a JOIN unanswered within 1 s on a loaded machine (the suite's other
        # worker busy) failed the test before the broker was even stopped
        client = inproc_broker.client(timeout_s=2.0, reconnect=True)
        async with console_session(h, "mem", client=client) as s:
            s.type_line("/join pub")
            await until(lambda: s.console.active == "pub", timeout=10, what="switch to #pub")
            for i in range(1, 4):  # /help is short now (issue 13): three of them
                s.type_line("/help")
                await until(lambda i=i: len(s.texts()) > 7 * i, what="the help lines")
            await until(lambda: len(s.texts()) > 20, what="the help lines")
            before = s.texts()
            s.send(PAGE_UP)  # scrolled up, as one is when reading a long pane
            await until(lambda: not s.conv.following, what="scrolled up")
            await asyncio.to_thread(inproc_broker.stop)
            with contextlib.closing(sqlite3.connect(inproc_broker.db)) as db, db:
                db.execute("DELETE FROM members WHERE room_key = 'pub' AND "
                           "account_key = 'mem'")  # as a kick while away leaves it
            h2 = await asyncio.to_thread(inproc_broker.start)
            removed = ("you are no longer in #pub (removed while disconnected) — "
                       "/join pub to go back")
            await until(lambda: removed in s.texts(), timeout=15, what="the removal line")
            async with h2.client("owen") as owen:
                await owen.send("pub", "said while mem was out 1")
                await owen.send("pub", "said while mem was out 2")
            s.type_line("/join pub")
            await until(lambda: "you joined #pub" in s.texts()[len(before):],
                        what="joined again")
            texts = s.texts()
            assert texts[:len(before)] == before  # the old lines stay where they were
            tail = texts[len(before):]
            assert tail.index(removed) < tail.index("said while mem was out 1") \
                < tail.index("said while mem was out 2") < tail.index("you joined #pub")
            assert s.conv.following  # /join shows the newest lines
            shown = "\n".join(pane(s.console, height=6))
            assert "said while mem was out 2" in shown and "you joined #pub" in shown

    run(main())


def test_a_reconnect_asks_nothing_about_a_room_marked_not_joined(
        inproc_broker: RestartableBroker) -> None:  # noqa: F811 (the fixture)
    """Banned from a private room, then a reconnect: the member refresh asked WHO #sec and
    showed ``refused: #sec is private: only its members may read it (403)``."""
    async def main() -> None:
        h = await asyncio.to_thread(inproc_broker.start)
        client = inproc_broker.client(timeout_s=1.0, reconnect=True)
        async with console_session(h, "mem", client=client) as s:
            async with h.client("owen") as owen:
                await owen.join("sec", private=True)
                await owen.invite("sec", "mem")
            s.type_line("/join sec")
            await until(lambda: s.console.active == "sec", what="switch to #sec")
            async with h.client("owen") as owen:
                await owen.ban("mem", "sec", "spam")
            await until(lambda: not s.console.conversations["sec"].joined, what="banned")
            s.type_line("/switch lobby")
            await until(lambda: s.console.active == "lobby", what="back in #lobby")
            await asyncio.to_thread(inproc_broker.stop)
            await asyncio.to_thread(inproc_broker.start)
            await until(lambda: "reconnected" in s.texts(), timeout=15, what="reconnect")
            await until(lambda: not s.console._tasks, what="the member refresh")
            assert "mem" in s.console.conversations["lobby"].members  # it did run
            everywhere = [t for conv in s.console.conversations.values()
                          for t in (ln.text for ln in conv.lines)]
            assert not [t for t in everywhere if "403" in t or "refused" in t], everywhere
            assert not s.console.conversations["sec"].joined

    run(main())


def test_scrolling_to_the_top_of_a_private_room_not_joined_asks_nothing(h: Harness) -> None:
    """Above the oldest loaded line the console fetches older history; in a private room
    you were banned from that is a 403 whose line kept the pane at the top, asking again
    at every redraw."""
    async def main() -> None:
        async with h.client("owen") as owen, console_session(h, "mem") as s:
            await owen.join("sec", private=True)
            await owen.invite("sec", "mem")
            for i in range(60):
                await owen.send("sec", f"m{i}")
            s.type_line("/join sec")
            await until(lambda: s.console.active == "sec", what="switch to #sec")
            await s.wait_text("m59")
            await owen.ban("mem", "sec")
            await until(lambda: not s.conv.joined, what="banned")
            oldest = s.conv.oldest_seq
            assert oldest is not None and oldest > 1
            for _ in range(5):
                s.send(PAGE_UP * 10)
                await until(lambda: drawn(s.console)[0].endswith("m10"), what="the top")
            await until(lambda: not s.console._tasks, what="nothing in flight")
            assert s.conv.oldest_seq == oldest
            assert not [t for t in s.errors() if "403" in t], s.errors()

    run(main())


# -- mutes ------------------------------------------------------------------------------------


def test_a_room_mute_ending_under_a_server_wide_mute_says_that_one_holds(h: Harness) -> None:
    async def main() -> None:
        async with h.client("bob") as bob, h.client("root") as root, \
                console_session(h) as s:
            await bob.join("dev")
            s.type_line("/join dev")
            await until(lambda: s.console.active == "dev", what="switch to #dev")
            await root.mute("alice", reason="flood")  # server-wide, until lifted
            await until(lambda: any(t.startswith("root muted you on this whole server")
                                    for t in s.errors()), what="the server-wide mute")
            await bob.mute("alice", "dev", duration_s=1)
            await s.wait_text("your mute in #dev has ended; you are still muted on this "
                              "whole server (DMs too) until lifted")
            assert not any("you may post again" in t for t in s.texts())
            seq = await last_seq(bob, "dev")
            s.type_line("still muted?")
            await until(lambda: any("(403)" in t and "muted" in t for t in s.errors()),
                        what="the refusal")
            assert await last_seq(bob, "dev") == seq
            # a room mute that holds while the server-wide one ends (timed)
            s.console.input_buffer.text = ""
            await root.unmute("alice")
            await s.wait_text("root unmuted you on this whole server (DMs too); you may "
                              "post again")
            await bob.mute("alice", "dev")  # until lifted
            await until(lambda: any(t.startswith("bob muted you in #dev until lifted")
                                    for t in s.errors()), what="the room mute")
            await root.mute("alice", duration_s=1)
            await s.wait_text("your mute on this whole server (DMs too) has ended; you are "
                              "still muted in #dev until lifted")
            await bob.unmute("alice", "dev")
            await s.wait_text("bob unmuted you in #dev; you may post again")

    run(main())


# -- typing in a room not joined ------------------------------------------------------------------


@pytest.mark.parametrize("line", ["/me waves", "/kick bob", "/mute bob 10m spam",
                                  "plain words"])
def test_a_line_refused_in_a_room_not_joined_comes_back_to_the_input(
        h: Harness, line: str) -> None:
    async def main() -> None:
        async with h.client("bob") as bob, console_session(h) as s:
            await bob.join("dev")
            s.type_line("/join dev")
            await until(lambda: s.console.active == "dev", what="switch to #dev")
            await bob.kick("dev", "alice")
            await until(lambda: not s.conv.joined, what="kicked")
            seq = await last_seq(bob, "dev")
            s.type_line(line)
            error = "you are not in #dev; /join dev to go back"
            await until(lambda: error in s.errors(), what="the not-joined error")
            await until(lambda: s.console.input_buffer.text == line, what="given back")
            assert s.console.input_buffer.cursor_position == len(line)
            assert await last_seq(bob, "dev") == seq  # nothing reached the broker
            assert "bob" in [u.name for u in (await bob.who("dev")).users]
            assert not any(re.search(r"\(\d{3}\)", e) for e in s.errors())

    run(main())
