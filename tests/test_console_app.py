"""The console application driven key by key: a real broker thread on ``inproc://``, real
clients, and the real prompt_toolkit Application reading a pipe input and drawing to a
DummyOutput (STYLE.md §5), through the drivers of tests/console_helpers.py.

Every wait polls a condition with a deadline (``until``); nothing sleeps for a socket.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import sqlite3
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from client_helpers import FAST_BEATS
from conftest import run
from console_helpers import (
    CTRL_A,
    CTRL_C,
    CTRL_D,
    CTRL_E,
    CTRL_N,
    CTRL_P,
    CTRL_U,
    CTRL_W,
    DOWN,
    END,
    ENTER,
    ESC,
    PAGE_DOWN,
    PAGE_UP,
    TAB,
    UP,
    Script,
    alt,
    console_session,
    login,
    next_of,
    paste,
    until,
    window_text,
)
from prompt_toolkit.input import create_pipe_input
from prompt_toolkit.output import DummyOutput

from zchat import wire as p
from zchat.client.client import Client
from zchat.client.events import Event
from zchat.console import view as v
from zchat.console.app import HISTORY_ON_OPEN, OLDER_PAGE, ChatConsole, login_flow
from zchat.errors import ConnectionFailed, ProtocolError, RequestFailed
from zchat.testing import DEFAULT_PASSWORD, Harness, running_broker


@pytest.fixture
def harness() -> Iterator[Harness]:
    """The in-process broker with the SEND/DM rate limit off: these tests build scroll-back
    by posting 60 to 160 messages in a burst (``post_many``), far over the default burst
    of 20 (docs/PROTOCOL.md §15). Refusals in the console are tested with the limit on in
    tests/test_protection_live.py. Room creation is unlimited too: one test /joins 30 new
    rooms in a row, over the default burst of 10 (tests/test_account_limits.py)."""
    with running_broker(send_rate_per_s=0.0, room_create_rate_per_s=0.0) as h:
        yield h


def posted(text: str) -> Callable[[Event], bool]:
    return lambda e: isinstance(e, p.MessagePosted) and e.text == text


async def post_many(client: Client, room: str, n: int) -> None:
    for i in range(1, n + 1):
        await client.send(room, f"m{i}")


async def room_last_seq(client: Client, room: str) -> int:
    """The room's last sequence number as the broker lists it."""
    (info,) = [r for r in (await client.list_rooms()).rooms if r.room == room]
    return info.last_seq


# -- opening ----------------------------------------------------------------------------------


def test_lands_in_lobby_with_the_last_50_messages(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob:
            await post_many(bob, "lobby", 60)
            async with console_session(harness) as s:
                assert s.console.active == "lobby"
                assert s.console.order == ["lobby"]
                assert HISTORY_ON_OPEN == 50
                assert s.seqs() == list(range(11, 61))
                assert s.texts(kinds=("message",)) == [f"m{i}" for i in range(11, 61)]
                assert set(s.conv.members) == {"alice", "bob"}
                await bob.send("lobby", "after start")
                await s.wait_text("after start")
                assert s.seqs() == list(range(11, 62))

    run(main())


def test_no_duplicate_at_the_seam_of_history_and_live_messages(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob:
            await post_many(bob, "lobby", 60)
            client, logged_in = await login(harness, "alice")
            with create_pipe_input() as keys:
                console = ChatConsole(client, logged_in, input=keys, output=DummyOutput(),
                                      tz=dt.UTC)
                task = asyncio.ensure_future(console.run())
                # Posted while the console fetches its history: it may come both in the
                # HISTORY page and on PUB.
                for i in range(61, 66):
                    await bob.send("lobby", f"m{i}")
                await until(lambda: "lobby" in console.conversations
                            and 65 in console.conversations["lobby"])
                seqs = [ln.seq for ln in console.conversations["lobby"].lines
                        if ln.seq is not None]
                assert len(seqs) == len(set(seqs))
                assert seqs == list(range(seqs[0], 66))
                assert seqs[0] <= 16  # at least the last 50
                keys.send_text(CTRL_C)
                await asyncio.wait_for(task, 2)

    run(main())


def test_an_account_in_no_room_lands_in_the_lobby_joined(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("alice") as before:
            await before.part("lobby")
            await before.logout()
        async with harness.client("bob") as bob, console_session(harness) as s:
            assert s.console.active == "lobby" and s.console.order == ["lobby"]
            assert "alice" in [u.name for u in (await bob.who("lobby")).users]
            s.type_line("back in the lobby")
            got = await next_of(bob, posted("back in the lobby"))
            assert isinstance(got, p.MessagePosted) and got.sender == "alice"
            assert s.errors() == []

    run(main())


# -- sending and receiving ----------------------------------------------------------------------


def test_enter_sends_to_the_room_and_the_line_shows_once(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness) as s:
            s.type_line("hello from alice")
            got = await next_of(bob, posted("hello from alice"))
            assert isinstance(got, p.MessagePosted)
            assert (got.room, got.sender, got.kind) == ("lobby", "alice", "text")
            assert s.console.input_buffer.text == ""
            await bob.send("lobby", "hello from bob")  # a barrier: it arrives after ours
            await s.wait_text("hello from bob")
            mine = [ln for ln in s.conv.lines if ln.text == "hello from alice"]
            assert len(mine) == 1
            assert (mine[0].seq, mine[0].sender, mine[0].own) == (got.seq, "alice", True)
            theirs = [ln for ln in s.conv.lines if ln.text == "hello from bob"]
            assert (theirs[0].sender, theirs[0].own, theirs[0].kind) == ("bob", False,
                                                                        "message")

    run(main())


def test_commands_join_part_me_topic(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness) as s:
            s.type_line("/join dev")
            await until(lambda: s.console.active == "dev", what="switch to #dev")
            assert s.console.order == ["lobby", "dev"]
            rooms = {r.room: r for r in (await bob.list_rooms()).rooms}
            assert (rooms["dev"].members, rooms["dev"].joined) == (1, False)
            assert s.console.input_buffer.text == ""

            await bob.join("dev")
            await until(lambda: "bob" in s.conv.members, what="bob in the member list")
            assert "bob joined #dev" in s.texts()

            s.type_line("/me waves")
            action = await next_of(bob, posted("waves"))
            assert isinstance(action, p.MessagePosted)
            assert (action.room, action.sender, action.kind) == ("dev", "alice", "action")
            await until(lambda: any(ln.kind == "action" for ln in s.conv.lines))

            s.type_line("/topic new topic")
            topic = await next_of(bob, lambda e: isinstance(e, p.TopicChanged))
            assert isinstance(topic, p.TopicChanged)
            assert (topic.room, topic.topic, topic.by) == ("dev", "new topic", "alice")
            await s.wait_text("alice set the topic: new topic")
            assert s.conv.topic == "new topic"
            assert s.status().startswith(" alice │ #dev │ new topic ")

            s.type_line("/topic")
            await s.wait_text("topic of #dev: new topic")

            s.type_line("/part")
            await until(lambda: s.console.active == "lobby", what="back to the lobby")
            assert s.console.order == ["lobby"]
            left = await next_of(bob, lambda e: isinstance(e, p.UserLeft))
            assert isinstance(left, p.UserLeft)
            assert (left.room, left.name) == ("dev", "alice")
            assert s.errors() == []

    run(main())


def test_msg_opens_the_dm_conversation(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness) as s:
            s.type_line("/msg bob hi")
            dm = await next_of(bob, lambda e: isinstance(e, p.DirectMessage))
            assert isinstance(dm, p.DirectMessage)
            assert (dm.sender, dm.to, dm.text) == ("alice", "bob", "hi")
            await until(lambda: s.console.active == "dm:bob", what="the @bob conversation")
            assert s.texts(kinds=("dm",)) == ["hi"]
            assert s.status().startswith(" alice │ @bob ")

            # Text typed in a DM conversation goes to bob directly; his answer shows.
            s.type_line("and more")
            dm2 = await next_of(bob, lambda e: isinstance(e, p.DirectMessage))
            assert isinstance(dm2, p.DirectMessage) and dm2.text == "and more"
            await bob.dm("alice", "hello alice")
            await s.wait_text("hello alice")
            assert s.texts(kinds=("dm",)) == ["hi", "and more", "hello alice"]

    run(main())


def test_message_from_another_client_appears(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness) as s:
            sent = await bob.send("lobby", "anyone here?")
            await s.wait_text("anyone here?")
            (line,) = [ln for ln in s.conv.lines if ln.text == "anyone here?"]
            assert (line.sender, line.seq, line.time_ms) == ("bob", sent.seq, sent.time)
            rows = window_text(s.console.pane, 55, 38)
            hhmm = dt.datetime.fromtimestamp(sent.time / 1000, dt.UTC).strftime("%H:%M")
            assert f"{hhmm}          bob │ anyone here?" in rows

    run(main())


def test_away_and_back_change_presence_for_others(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness) as s:
            s.type_line("/away gone")
            # (bob saw alice come online first)
            away = await next_of(bob, lambda e: isinstance(e, p.PresenceChanged)
                                 and e.name == "alice" and e.presence != "online")
            assert isinstance(away, p.PresenceChanged)
            assert (away.presence, away.text) == ("away", "gone")
            await s.wait_text("you are marked away: gone")
            await until(lambda: s.conv.members["alice"].presence == "away")
            s.type_line("/back")
            back = await next_of(bob, lambda e: isinstance(e, p.PresenceChanged)
                                 and e.name == "alice")
            assert isinstance(back, p.PresenceChanged)
            assert (back.presence, back.text) == ("online", "")
            await s.wait_text("you are back")
            await until(lambda: s.conv.members["alice"].presence == "online")
            # Presence changes are shown in the member list, not as lines.
            assert not [t for t in s.texts(kinds=("notice",)) if "is away" in t]

    run(main())


def test_who_and_rooms_print_info_lines(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness) as s:
            await bob.join("dev")
            await bob.set_presence("away", "lunch")
            await until(lambda: s.conv.members["bob"].presence == "away")
            s.type_line("/who")
            await s.wait_text("  bob (away) — lunch")
            info = s.texts(kinds=("info",))
            start = info.index("2 members #lobby:")
            assert info[start:start + 3] == ["2 members #lobby:", "  alice (online)",
                                             "  bob (away) — lunch"]
            s.type_line("/rooms")
            await s.wait_text("2 rooms:")
            await until(lambda: s.texts(kinds=("info",))[-1].startswith(" "))
            info = s.texts(kinds=("info",))
            start = info.index("2 rooms:")
            assert sorted(info[start + 1:start + 3]) == ["  #dev (1 member)",
                                                         " *#lobby (2 members)"]

    run(main())


def test_history_loads_older_and_clear_empties(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob:
            await post_many(bob, "lobby", 60)
            async with console_session(harness) as s:
                assert s.seqs()[0] == 11
                s.type_line("/history 5")
                await s.wait_text("loaded 5 older messages")
                assert s.seqs() == list(range(6, 61))
                s.type_line("/history 500")  # only 5 are left
                await until(lambda: s.texts().count("loaded 5 older messages") == 2)
                assert s.seqs() == list(range(1, 61))
                s.type_line("/clear")
                await until(lambda: not s.conv.lines, what="an empty pane")
                await bob.send("lobby", "after clear")
                await s.wait_text("after clear")
                assert s.texts() == ["after clear"]

    run(main())


def test_switching_conversations(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob"), console_session(harness) as s:
            s.type_line("/msg bob psst")
            await until(lambda: s.console.active == "dm:bob")
            s.type_line("/join dev")
            await until(lambda: s.console.active == "dev")
            # Opened in this order; the sidebar (and Alt-N, Ctrl-N/P) lists rooms first.
            assert s.console.order == ["lobby", "dm:bob", "dev"]
            assert s.sidebar()[:5] == ["Rooms", " #lobby", " #dev", "Direct", " @bob"]

            s.type_line("/switch lobby")
            await until(lambda: s.console.active == "lobby")
            s.type_line("/switch #dev")
            await until(lambda: s.console.active == "dev")
            s.type_line("/switch @bob")
            await until(lambda: s.console.active == "dm:bob")
            s.type_line("/switch nowhere")
            await until(lambda: s.errors() == [  # issue 13: it said "not in nowhere"
                "you are not in #nowhere; /join nowhere to join it, or /query nowhere to "
                "talk with someone of that name"])
            assert s.console.active == "dm:bob"

            s.send(alt("1"))
            await until(lambda: s.console.active == "lobby")
            s.send(alt("2"))
            await until(lambda: s.console.active == "dev")
            s.send(alt("3"))
            await until(lambda: s.console.active == "dm:bob")
            s.send(alt("9") + alt("2"))  # no ninth conversation: nothing happens
            await until(lambda: s.console.active == "dev")

            s.send(CTRL_N)
            await until(lambda: s.console.active == "dm:bob")
            s.send(CTRL_N)  # wraps around
            await until(lambda: s.console.active == "lobby")
            s.send(CTRL_P)
            await until(lambda: s.console.active == "dm:bob")
            s.send(CTRL_P)
            await until(lambda: s.console.active == "dev")
            assert s.console.input_buffer.text == ""

    run(main())


# -- errors: one line, nothing sent ------------------------------------------------------------


def test_unknown_command_and_refused_requests_show_one_error_line() -> None:
    async def main(h: Harness) -> None:
        async with h.client("bob") as bob, console_session(h) as s:
            before = await room_last_seq(bob, "lobby")
            s.type_line("/frobnicate now")
            await until(lambda: s.errors() == ["unknown command /frobnicate — try /help"])

            s.type_line("/join bad!name")
            await until(lambda: len(s.errors()) == 2, what="the refused /join")
            assert s.errors()[1].startswith("refused: ")
            assert s.errors()[1].endswith("(422)")
            assert s.console.order == ["lobby"] and s.console.active == "lobby"

            s.type_line("x" * 101)
            await until(lambda: len(s.errors()) == 3, what="the refused message")
            assert s.errors()[2].startswith("refused: ")
            assert s.errors()[2].endswith("(413)")
            # the refused line is given back to fix and resend
            await until(lambda: s.console.input_buffer.text == "x" * 101)
            s.send(CTRL_U)
            await until(lambda: s.console.input_buffer.text == "")

            s.type_line("/msg nobody-here hi")
            await until(lambda: len(s.errors()) == 4, what="the refused DM")
            assert s.errors()[3] == "refused: no account named 'nobody-here' (404)"
            assert "dm:nobody-here" not in s.console.order
            # given back to fix the name
            await until(lambda: s.console.input_buffer.text == "/msg nobody-here hi")
            s.send(CTRL_U)
            await until(lambda: s.console.input_buffer.text == "")

            # Nothing reached the room: its last sequence number is unchanged, and a
            # message sent now is the very next one.
            assert await room_last_seq(bob, "lobby") == before
            s.type_line("fine")
            got = await next_of(bob, posted("fine"))
            assert isinstance(got, p.MessagePosted) and got.seq == before + 1
            assert len(s.errors()) == 4
            assert s.console.app.is_running

    with running_broker(max_text_bytes=100) as h:
        run(main(h))


# -- editing -----------------------------------------------------------------------------------


def test_input_history_up_and_down(harness: Harness) -> None:
    async def main() -> None:
        async with console_session(harness) as s:
            buf = s.console.input_buffer
            s.type_line("first")
            # Not in the same read as the next line: two lines read at once are a paste
            # (zchat/console/paste_input.py), which a person cannot type.
            await s.wait_text("first")
            s.type_line("second")
            await s.wait_text("second")
            s.send("draft")
            await until(lambda: buf.text == "draft")
            s.send(UP)
            await until(lambda: buf.text == "second")
            s.send(UP)
            await until(lambda: buf.text == "first")
            s.send(UP)  # at the oldest: stays
            s.send(DOWN)
            await until(lambda: buf.text == "second")
            assert buf.cursor_position == len("second")
            s.send(DOWN)
            await until(lambda: buf.text == "draft")

    run(main())


def test_tab_completes_nicks_and_commands(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob"), harness.client("bonnie"), \
                console_session(harness) as s:
            buf = s.console.input_buffer
            await until(lambda: {"bob", "bonnie"} <= set(s.conv.members))
            s.send("bo" + TAB)
            await until(lambda: buf.text == "bob: ")
            s.send(TAB)  # the next candidate
            await until(lambda: buf.text == "bonnie: ")
            s.send("\x1b[Z")  # Shift-Tab: back
            await until(lambda: buf.text == "bob: ")
            s.send("hi " + "bon" + TAB)
            await until(lambda: buf.text == "bob: hi bonnie ")
            s.send(CTRL_U + "/jo" + TAB)
            await until(lambda: buf.text == "/join ")
            s.send("lo" + TAB)
            await until(lambda: buf.text == "/join lobby ")

    run(main())


def test_readline_editing_keys(harness: Harness) -> None:
    async def main() -> None:
        async with console_session(harness) as s:
            buf = s.console.input_buffer
            s.send("hello big world")
            await until(lambda: buf.text == "hello big world")
            s.send(CTRL_A)
            await until(lambda: buf.cursor_position == 0)
            s.send(">")
            await until(lambda: buf.text == ">hello big world")
            s.send(CTRL_E)
            await until(lambda: buf.cursor_position == len(buf.text))
            s.send(CTRL_W)
            await until(lambda: buf.text == ">hello big ")
            s.send(CTRL_U)
            await until(lambda: buf.text == "")
            assert s.texts(kinds=("message",)) == []

    run(main())


# -- paste -------------------------------------------------------------------------------------


def test_paste_of_a_few_lines_sends_one_message(harness: Harness) -> None:
    """With ``paste_confirm_lines`` raised from its default of 1 (every paste of several
    lines asks, tests/test_console_input_safety.py), a short paste goes at once."""
    async def main() -> None:
        async with harness.client("bob") as bob, \
                console_session(harness, paste_confirm_lines=5) as s:
            s.send(paste("one\r\ntwo\r\nthree\r\n"))
            got = await next_of(bob, lambda e: isinstance(e, p.MessagePosted))
            assert isinstance(got, p.MessagePosted)
            assert got.text == "one\ntwo\nthree"
            await s.wait_text("one\ntwo\nthree")
            assert s.console.input_buffer.text == ""

            # A pasted /quit line is text, never a command; and a paste with a line
            # that looks like one asks first, whatever paste_confirm_lines says.
            s.send(paste("/quit\n/part lobby\n"))
            await s.wait_text("pasted 2 lines for #lobby — they start with /quit, /part: "
                              "Enter sends them as text, in one message; Esc cancels")
            s.send(ENTER)
            got = await next_of(bob, lambda e: isinstance(e, p.MessagePosted))
            assert isinstance(got, p.MessagePosted) and got.text == "/quit\n/part lobby"
            await s.wait_text("/quit\n/part lobby")
            assert s.console.app.is_running and s.console.order == ["lobby"]

            # One line goes into the input line to be edited, not sent.
            s.send(paste("/quit"))
            await until(lambda: s.console.input_buffer.text == "/quit")
            assert s.console.app.is_running

    run(main())


def test_long_paste_asks_first(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, \
                console_session(harness, paste_confirm_lines=5) as s:
            before = await room_last_seq(bob, "lobby")
            eight = "\n".join(f"line {i}" for i in range(1, 9))
            s.send(paste(eight))
            await s.wait_text("pasted 8 lines for #lobby: Enter sends them as one message, "
                              "Esc cancels")
            assert s.console.pending_paste is not None
            assert await room_last_seq(bob, "lobby") == before
            s.send(ENTER)
            got = await next_of(bob, lambda e: isinstance(e, p.MessagePosted))
            assert isinstance(got, p.MessagePosted) and got.text == eight
            assert s.console.pending_paste is None

            s.send(paste(eight.upper()))
            await until(lambda: s.console.pending_paste is not None)
            s.send(ESC)
            await s.wait_text("paste cancelled: its 8 lines are in the input history (Up)")
            assert s.console.pending_paste is None
            assert s.console.history.entries[-8:] == tuple(eight.upper().split("\n"))
            s.type_line("after")  # the next message is the next seq: nothing else went
            got = await next_of(bob, lambda e: isinstance(e, p.MessagePosted))
            assert isinstance(got, p.MessagePosted)
            assert (got.text, got.seq) == ("after", before + 2)

    run(main())


# -- unread, mentions, scrolling ------------------------------------------------------------------


def test_unread_count_and_mention_marker_on_an_inactive_room(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness) as s:
            await bob.join("dev")
            s.type_line("/join dev")
            await until(lambda: s.console.active == "dev")
            s.send(alt("1"))
            await until(lambda: s.console.active == "lobby")
            await bob.send("dev", "just chatting")
            await until(lambda: " #dev (1)" in s.sidebar()[1:3], what="#dev (1)")
            dev = s.console.conversations["dev"]
            await bob.send("dev", "hey Alice, look")
            await until(lambda: "!#dev (2)" in s.sidebar()[1:3], what="!#dev (2)")
            s.send(alt("2"))
            await until(lambda: s.console.active == "dev")
            await until(lambda: s.client.unread.room("dev") == p.RoomRead(
                room="dev", read_seq=dev.newest_seq or 0, unread=0, mentions=0),
                what="#dev marked read on the broker")
            s.send(alt("1"))
            await until(lambda: s.console.active == "lobby")
            assert " #dev" in s.sidebar()[1:3]
            (line,) = [ln for ln in dev.lines if ln.text == "hey Alice, look"]
            assert line.mention

    run(main())


def test_scrolling_page_up_new_messages_and_end(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob:
            await post_many(bob, "lobby", 160)
            async with console_session(harness) as s:
                conv = s.conv
                assert s.seqs()[0] == 111
                await until(lambda: s.console.pane.render_info is not None)
                s.send(PAGE_UP)
                await until(lambda: not conv.following, what="PageUp to leave following")
                await bob.send("lobby", "while scrolled")
                await until(lambda: conv.new_while_scrolled == 1)
                assert not conv.following
                await until(lambda: "-- 1 new message (End) --"
                            in window_text(s.console.pane, 55, 38)[-1])
                s.send(END)
                await until(lambda: conv.following)
                assert conv.new_while_scrolled == 0
                assert window_text(s.console.pane, 55, 38)[-1].endswith(
                    "bob │ while scrolled")

                # Scrolling above the loaded lines fetches the page before them.
                for _ in range(4):
                    s.send(PAGE_UP)
                await until(lambda: s.seqs()[0] == 111 - OLDER_PAGE,
                            what="an older page")
                assert s.seqs() == list(range(11, 162))
                s.send(PAGE_DOWN * 10)
                await until(lambda: conv.following, what="PageDown back to the bottom")

                # The mouse wheel scrolls the pane too (SGR mouse report, row 5).
                s.send("\x1b[<64;10;5M")
                await until(lambda: not conv.following, what="wheel up")
                assert conv.scroll_rows == 3
                s.send("\x1b[<65;10;5M")
                await until(lambda: conv.following, what="wheel down")

    run(main())


def test_text_from_the_wire_is_drawn_sanitized(harness: Harness) -> None:
    async def main() -> None:
        async with console_session(harness) as s:
            evil = p.MessagePosted(room="lobby", seq=999, time=1_700_000_000_000,
                                   sender="mallory", text="boom\x1b[2J\x07done")
            s.console.on_event(evil)
            rows = window_text(s.console.pane, 55, 10)
            assert not any("\x1b" in r or "\x07" in r for r in rows)
            assert any("boom␛[2J␇done" in r for r in rows)
            assert rows[-1] == f"22:13      mallory │ {v.sanitize(evil.text)}"

    run(main())


# -- leaving -----------------------------------------------------------------------------------


def test_quit_logs_out_with_a_message_within_a_second(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness) as s:
            s.type_line("/quit see you")
            assert await s.wait_exit(1.0) < 1.0
            gone = await next_of(bob, lambda e: isinstance(e, p.PresenceChanged)
                                 and e.name == "alice" and e.presence == "offline")
            assert isinstance(gone, p.PresenceChanged)
            assert (gone.presence, gone.text) == ("offline", "see you")
            assert s.client.state == "closed"

    run(main())


def test_quit_with_a_refused_message_still_logs_out_at_once(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness) as s:
            s.type_line("/quit " + "q" * 300)  # over the 200-character limit: 413
            assert await s.wait_exit(1.0) < 1.0
            gone = await next_of(bob, lambda e: isinstance(e, p.PresenceChanged)
                                 and e.name == "alice" and e.presence == "offline")
            assert isinstance(gone, p.PresenceChanged) and gone.text == ""
            assert [u.name for u in (await bob.who()).users] == ["bob"]

    run(main())


def test_member_list_follows_newcomers_and_the_sidebar_keeps_the_active_room_in_sight(
        harness: Harness) -> None:
    async def main() -> None:
        async with console_session(harness) as s:
            async with harness.client() as c:
                await c.register("carol", DEFAULT_PASSWORD)
            await until(lambda: "carol" in s.conv.members, what="carol in the members")
            assert s.conv.members["carol"].presence == "offline"  # registered, not logged in
            for i in range(30):
                s.type_line(f"/join rapid{i:02d}")
                await until(lambda i=i: s.console.active == f"rapid{i:02d}",
                            what=f"rapid{i:02d}")
            rows = s.console._sidebar_rows(24, 12)
            assert len(rows) == 12
            texts = ["".join(t for _s, t, *_ in row) for row in rows]
            assert any("#rapid29" in t for t in texts), texts

    run(main())


def test_ctrl_c_exits(harness: Harness) -> None:
    async def main() -> None:
        async with console_session(harness) as s:
            s.send("half typed")
            s.send(CTRL_C)
            assert await s.wait_exit(1.0) < 1.0

    run(main())


def test_ctrl_d_exits_only_on_an_empty_line(harness: Harness) -> None:
    async def main() -> None:
        async with console_session(harness) as s:
            buf = s.console.input_buffer
            s.send("ab" + CTRL_A + CTRL_D)  # deletes the character under the cursor
            await until(lambda: buf.text == "b")
            assert not s.task.done()
            s.send(CTRL_E + CTRL_U)  # Ctrl-U deletes before the cursor
            await until(lambda: buf.text == "")
            assert not s.task.done()
            s.send(CTRL_D)
            assert await s.wait_exit(1.0) < 1.0

    run(main())


def test_exits_within_a_second_after_the_broker_is_gone() -> None:
    cm = running_broker()
    h = cm.__enter__()
    stopped = False

    async def main() -> None:
        nonlocal stopped
        async with console_session(h) as s:
            await asyncio.to_thread(cm.__exit__, None, None, None)
            stopped = True
            s.send(CTRL_C)
            assert await s.wait_exit(1.0) < 1.0

    try:
        run(main())
    finally:
        if not stopped:
            cm.__exit__(None, None, None)


@pytest.mark.parametrize(("reconnect", "state"), [(True, "reconnecting"),
                                                  (False, "disconnected")])
def test_status_bar_after_losing_the_broker(reconnect: bool, state: str) -> None:
    cm = running_broker(**FAST_BEATS)
    h = cm.__enter__()
    stopped = False

    async def main() -> None:
        nonlocal stopped
        client = Client(h.server, context=h.context, timeout_s=0.5, reconnect=reconnect)
        async with console_session(h, client=client) as s:
            assert re.fullmatch(r" alice │ #lobby +connected( \d+ ms)? ", s.status())
            await asyncio.to_thread(cm.__exit__, None, None, None)
            stopped = True
            await until(lambda: s.console.state == state, timeout=5, what=state)
            right = {"reconnecting": r"reconnecting( in \d+ s|…)", "disconnected": "disconnected"}
            assert re.fullmatch(rf" alice │ #lobby +{right[state]} ", s.status())
            # A broker stopped gracefully says GOING_AWAY; that line replaces "lost the
            # broker" (the console shows one reason, not two).
            assert any(t.startswith(("lost the broker", "the broker ended our session",
                                     "broker going away: "))
                       for t in s.errors()), s.errors()
            s.send(CTRL_C)
            assert await s.wait_exit(1.0) < 1.0

    try:
        run(main())
    finally:
        if not stopped:
            cm.__exit__(None, None, None)


# -- before the screen: login_flow --------------------------------------------------------------


def test_login_flow_creates_a_missing_account(harness: Harness) -> None:
    async def main() -> None:
        script = Script("pw number one", "y", "pw number one", "pw number one")
        async with harness.client() as client:
            logged_in = await login_flow(client, "carol", script.ask, None, script.say)
            assert logged_in.name == "carol"
            assert [r.room for r in logged_in.rooms] == ["lobby"]
        assert script.prompts == [
            "Password for carol: (secret)",
            "There is no account named 'carol'. Create it? [y/N] ",
            "New password (at least 8 characters): (secret)",
            "New password (again): (secret)"]
        assert script.said == ["Created the account carol."]
        async with harness.client() as again:  # the account exists with that password
            assert (await again.login("carol", "pw number one")).name == "carol"

    run(main())


def test_login_flow_asks_again_when_new_passwords_differ(harness: Harness) -> None:
    async def main() -> None:
        script = Script("x", "y", "first pw", "second pw",   # mismatch
                        "x", "yes", "third pw", "third pw")
        async with harness.client() as client:
            logged_in = await login_flow(client, "dave", script.ask, None, script.say)
            assert logged_in.name == "dave"
        assert script.said == ["The passwords do not match.", "Created the account dave."]
        assert len(script.prompts) == 8 and script.answers == []
        async with harness.client() as again:
            with pytest.raises(RequestFailed) as wrong:
                await again.login("dave", "first pw")
            assert wrong.value.status == 401
            assert (await again.login("dave", "third pw")).name == "dave"

    run(main())


def test_login_flow_asks_again_for_a_new_password_too_short(harness: Harness) -> None:
    """The broker's min_password_chars (INFO) is checked before REGISTER: the rule is
    in the prompt, and a password under it is refused in the broker's words and asked
    again, rather than the console exiting with the broker's 422."""
    async def main() -> None:
        script = Script("x", "y", "short", "", "long enough", "long enough")
        async with harness.client() as client:
            assert client.info is not None and client.info.min_password_chars == 8
            logged_in = await login_flow(client, "gina", script.ask, None, script.say)
            assert logged_in.name == "gina"
        assert script.prompts[2:] == ["New password (at least 8 characters): (secret)"] * 3 \
            + ["New password (again): (secret)"]
        assert script.said == ["Password must be at least 8 characters long.",
                               "Password must not be empty.", "Created the account gina."]
        async with harness.client() as again:
            assert (await again.login("gina", "long enough")).name == "gina"

    run(main())


def test_login_flow_refuses_a_short_environment_password_for_a_new_account(
        harness: Harness) -> None:
    async def main() -> None:
        script = Script("y")
        async with harness.client() as client:
            with pytest.raises(ProtocolError) as short:
                await login_flow(client, "hank", script.ask, "2short", script.say)
            assert short.value.status == 422
            assert short.value.reason == ("password must be at least 8 characters long "
                                          "(the password from $ZCHAT_PASSWORD, for the "
                                          "new account)")
            assert script.said == [] and script.answers == []
            with pytest.raises(RequestFailed) as missing:
                await client.login("hank", "2short")
            assert missing.value.status == 404  # nothing was created

    run(main())


def test_login_flow_declined_creation_raises_not_found(harness: Harness) -> None:
    async def main() -> None:
        script = Script("x", "n")
        async with harness.client() as client:
            with pytest.raises(RequestFailed) as failed:
                await login_flow(client, "erin", script.ask, None, script.say)
        assert failed.value.status == 404
        assert script.said == []

    run(main())


def test_login_flow_wrong_password_asks_again(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("alice"):
            pass
        script = Script("not it", DEFAULT_PASSWORD)
        async with harness.client() as client:
            logged_in = await login_flow(client, "alice", script.ask, None, script.say)
            assert logged_in.name == "alice"
        assert script.said == ["Wrong password, try again."]
        assert script.prompts == ["Password for alice: (secret)"] * 2

    run(main())


def test_login_flow_wrong_password_from_the_environment_raises(harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("alice"):
            pass
        script = Script()
        async with harness.client() as client:
            with pytest.raises(RequestFailed) as failed:
                await login_flow(client, "alice", script.ask, "not it", script.say)
        assert failed.value.status == 401
        assert script.prompts == [] and script.said == []

    run(main())


def test_login_flow_creates_with_the_environment_password(harness: Harness) -> None:
    async def main() -> None:
        script = Script("y")
        async with harness.client() as client:
            logged_in = await login_flow(client, "frank", script.ask, "env password", script.say)
            assert logged_in.name == "frank"
        assert script.prompts == ["There is no account named 'frank'. Create it? [y/N] "]
        async with harness.client() as again:
            assert (await again.login("frank", "env password")).name == "frank"

    run(main())


def test_activity_in_the_status_bar_completion_of_broker_rooms_and_paste_target(
        harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob:
            await bob.join("elsewhere")  # a room alice is not in
            async with console_session(harness, paste_confirm_lines=2) as s:
                s.type_line("/join dev")
                await until(lambda: s.console.active == "dev")
                s.send(alt("1"))
                await until(lambda: s.console.active == "lobby")
                await bob.join("dev")
                await bob.send("dev", "psst alice")
                await bob.dm("alice", "hello")
                await until(lambda: "[Act: !#dev,!@bob]" in s.status(100),
                            what=f"activity in {s.status(100)!r}")
                # /join completes rooms of the broker that alice is not in
                await until(lambda: "elsewhere" in s.console.known_rooms)
                s.send("/join els" + TAB)
                await until(lambda: s.console.input_buffer.text == "/join elsewhere ")
                s.send(CTRL_U)
                # a paste waiting for Enter goes where it was pasted, not where Enter is
                s.send(paste("one\ntwo\nthree"))
                await until(lambda: s.console.pending_paste is not None)
                s.send(CTRL_N)
                await until(lambda: s.console.active == "dev")
                s.send(ENTER)
                got = await next_of(bob, lambda e: isinstance(e, p.MessagePosted)
                                    and e.text == "one\ntwo\nthree")
                assert isinstance(got, p.MessagePosted) and got.room == "lobby"

    run(main())


def test_rejoining_after_a_kick_shows_what_was_said_meanwhile(harness: Harness) -> None:
    """A tester's console, kicked and then back with /join, went from the last line before
    the kick straight to new ones: the messages said while out were never shown."""
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness) as s:
            await bob.join("dev")  # bob creates #dev: its owner
            s.type_line("/join dev")
            await until(lambda: s.console.active == "dev", what="switch to #dev")
            await bob.send("dev", "before the kick")
            await s.wait_text("before the kick")
            await bob.kick("dev", "alice", "cool off")
            await until(lambda: "alice" not in bob_members(s), timeout=5, what="kicked")
            await bob.send("dev", "said while out 1")
            await bob.send("dev", "said while out 2")
            s.type_line("/join dev")
            await s.wait_text("said while out 2")
            texts = s.texts()
            assert texts.index("before the kick") < texts.index("said while out 1") \
                < texts.index("said while out 2")

    def bob_members(s: Any) -> set[str]:
        return set(s.console.conversations["dev"].members)

    run(main())


def test_a_line_the_broker_never_answered_comes_back_and_is_stored_once(tmp_path: Any) -> None:
    """Typed while the broker is gone, a line fails with one clear error, comes back to
    the input, and Enter after the reconnect sends it with the same client message id
    (so a first try that did get through could not be stored twice)."""
    db = tmp_path / "z.db"
    beats = dict(FAST_BEATS, resume_grace_s=60.0)
    cm = running_broker(db, **beats)
    h = cm.__enter__()
    endpoints = {"router": h.broker.config.router, "pub": h.broker.config.pub}
    live: list[Any] = [cm]

    async def main() -> None:
        client = Client(h.server, context=h.context, timeout_s=0.5, reconnect=True)
        async with console_session(h, client=client) as s:
            await asyncio.to_thread(live.pop().__exit__, None, None, None)
            # the client's own state too: the console's may still tell of an earlier
            # reconnect a loaded machine caused (0.5 s timeout) while the client is back
            await until(lambda: s.console.state == "reconnecting"
                        and client.state == "reconnecting", timeout=5, what="reconnecting")
            # With something else in the input, the line is not put back: the error says
            # which line it was and where to find it.
            s.console.input_buffer.text = "half typed"
            with pytest.raises(ConnectionFailed, match="'other line' is in the input history"):
                await s.console._say("other line")
            assert s.console.input_buffer.text == "half typed"
            s.console.input_buffer.text = ""
            s.type_line("typed into the outage")
            await until(lambda: any(e.startswith("not sent: the broker is lost")
                                    and "Enter sends it again" in e for e in s.errors()),
                        what="the not-sent line")
            assert s.console.input_buffer.text == "typed into the outage"
            cmid, _typed = s.console._unanswered[("lobby", "typed into the outage")]
            assert set(s.console._unanswered) == {("lobby", "typed into the outage"),
                                                  ("lobby", "other line")}
            again = running_broker(db, **beats, **endpoints)
            again.__enter__()
            live.append(again)
            await until(lambda: s.console.state == "connected", timeout=10, what="resumed")
            # The line stays in the pane, marked not sent (issue 13), until sent again.
            assert [(ln.text, ln.status) for ln in s.conv.lines if ln.own] == [
                ("other line", "failed"), ("typed into the outage", "failed")]
            s.send(ENTER)
            await until(lambda: [(ln.text, ln.status, ln.seq is not None)
                                 for ln in s.conv.lines if ln.own] == [
                ("other line", "failed", False), ("typed into the outage", "", True)],
                what="the line sent, in place of its not-sent mark")
            assert set(s.console._unanswered) == {("lobby", "other line")}
            with sqlite3.connect(db) as other:
                rows = other.execute("SELECT cmid FROM messages WHERE text = ?",
                                     ("typed into the outage",)).fetchall()
            assert rows == [(cmid,)]

    try:
        run(main(), 60)
    finally:
        for cm_ in live:
            cm_.__exit__(None, None, None)
