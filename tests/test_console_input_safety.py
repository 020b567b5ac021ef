"""What the console does with input that arrives faster than a person types: pastes and
lines typed ahead during a stall (never run, never sent unasked), a paste over the
broker's line limit, a burst of /join. A real broker thread on ``inproc://``, real
clients, and the real console fed from a pipe input (tests/console_helpers.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt

from conftest import run
from console_helpers import (
    CTRL_N,
    CTRL_U,
    DOWN,
    ENTER,
    ESC,
    UP,
    console_session,
    next_of,
    paste,
    until,
)

from zchat import wire as p
from zchat.client.client import Client
from zchat.config import ClientConfig
from zchat.console import view as v
from zchat.testing import Harness, running_broker

BACKSPACE, CTRL_Y = "\x7f", "\x19"


def test_a_burst_of_joins_gets_every_room_without_an_error() -> None:
    """A tester typed ``/join jN`` 50 ms apart: past the JOIN rate limit some were
    refused (429), and the only trace was a "sending too fast" line. Each /join now
    waits its turn (Client.join retries on 429)."""
    with running_broker(send_rate_per_s=20.0, send_burst=2) as h:
        async def main() -> None:
            async with console_session(h) as s:
                rooms = [f"j{i}" for i in range(10)]
                for room in rooms:
                    s.send(f"/join {room}" + ENTER)
                    # read on its own, as typed (two lines in one read are a paste)
                    await until(lambda room=room: s.console.history.entries[-1:]
                                == (f"/join {room}",), what=f"/join {room} read")
                await until(lambda: set(rooms) <= set(s.console.conversations),
                            timeout=10, what="every room open")
                assert set(rooms) <= set(s.client.rooms)
                assert s.errors() == []

        run(main())


# -- lines typed ahead, pastes ----------------------------------------------------------------


async def lobby_seq(client: Client) -> int:
    (lobby,) = [r for r in (await client.list_rooms()).rooms if r.room == "lobby"]
    return lobby.last_seq


def test_lines_typed_ahead_during_a_stall_ask_first_and_are_never_posted_unasked(
        harness: Harness) -> None:
    """A tester stopped dave's console (``kill -STOP``), typed ``/msg erin my password is
    hunter22`` Enter and ``/away`` Enter, and continued it: both lines reached the console
    in one read, counted as a paste of two lines, and were posted to #lobby as one public
    message. Every paste of several lines now asks first (``paste_confirm_lines`` 1, as
    WeeChat's ``paste_max_lines``), says that its lines start with commands, and Esc
    leaves them in the input history to be run one by one."""
    async def main() -> None:
        async with harness.client("erin") as erin, harness.client("bob") as bob, \
                console_session(harness, "dave") as s:
            before = await lobby_seq(bob)
            s.send("/msg erin my password is hunter22\r/away\r")  # one read, as after CONT
            await s.wait_text("pasted 2 lines for #lobby — they start with /msg, /away: "
                              "Enter sends them as text, in one message; Esc cancels")
            assert s.console.pending_paste is not None
            assert s.console.input_buffer.text == ""
            s.send(ESC)
            await s.wait_text("paste cancelled: its 2 lines are in the input history (Up)")
            buf = s.console.input_buffer
            s.send(UP)
            await until(lambda: buf.text == "/away")
            s.send(UP)
            await until(lambda: buf.text == "/msg erin my password is hunter22")
            s.send(ENTER)  # run as typed, now that it is on screen
            dm = await next_of(erin, lambda e: isinstance(e, p.DirectMessage))
            assert isinstance(dm, p.DirectMessage) and dm.text == "my password is hunter22"
            assert await lobby_seq(bob) == before  # nothing public at all
            assert (await erin.whois("dave")).presence == "online"  # /away did not run

            # tmux send-keys '/msg erin the door code is 4711' Enter '/msg erin do not
            # share it' Enter: the same, and Enter sends them as text, where dave is
            s.send(CTRL_N)  # back to #lobby from the conversation with erin
            await until(lambda: s.console.active == "lobby")
            s.send("/msg erin the door code is 4711\r/msg erin do not share it\r")
            await s.wait_text("pasted 2 lines for #lobby — they start with /msg: Enter "
                              "sends them as text, in one message; Esc cancels")
            assert await lobby_seq(bob) == before
            s.send(ENTER)
            got = await next_of(bob, lambda e: isinstance(e, p.MessagePosted))
            assert isinstance(got, p.MessagePosted) and got.text == (
                "/msg erin the door code is 4711\n/msg erin do not share it")

            # Two lines of plain text ask too, by default.
            s.send(paste("first\nsecond"))
            await s.wait_text("pasted 2 lines for #lobby: Enter sends them as one "
                              "message, Esc cancels")
            s.send(ESC)
            await until(lambda: s.console.pending_paste is None)

    run(main())
    assert ClientConfig().paste_confirm_lines == 1  # the default, as the console's


def test_a_paste_with_a_command_line_asks_whatever_paste_confirm_lines_says(
        harness: Harness) -> None:
    async def main() -> None:
        async with harness.client("bob") as bob, \
                console_session(harness, "dave", paste_confirm_lines=5) as s:
            before = await lobby_seq(bob)
            s.send("".join(f"/join r{i}\r" for i in range(1, 5)))
            await s.wait_text("pasted 4 lines for #lobby — they start with /join: Enter "
                              "sends them as text, in one message; Esc cancels")
            s.send(paste("hello\n/quit\nbye"))  # the latest paste waits instead
            await s.wait_text("pasted 3 lines for #lobby — 1 of them starts with /quit: "
                              "Enter sends them as text, in one message; Esc cancels")
            s.send(ESC)
            await until(lambda: s.console.pending_paste is None)
            s.send(paste("plain\ntext"))  # no command, under the setting: at once
            got = await next_of(bob, lambda e: isinstance(e, p.MessagePosted))
            assert isinstance(got, p.MessagePosted) and got.text == "plain\ntext"
            assert got.seq == before + 1
            assert s.console.order == ["lobby"]

    run(main())


def test_a_paste_over_the_line_limit_is_not_offered_and_comes_back_to_the_input(
        harness: Harness) -> None:
    """A tester pasted 60 lines (the broker takes 50, ``max_text_lines`` in INFO): it was
    offered for sending, refused with 413, and lost. Now it is not offered: it goes into
    the input to cut down, and Enter sends it once it fits."""
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness, "dave") as s:
            assert s.client.info is not None and s.client.info.max_text_lines == 50
            before = await lobby_seq(bob)
            sixty = "\n".join(f"row {i}" for i in range(1, 61))
            s.send(paste(sixty))
            await s.wait_text("pasted 60 lines, over the broker's limit of 50 lines a "
                              "message: not sent — it is in the input to cut down "
                              "(Ctrl-U clears it)")
            buf = s.console.input_buffer
            assert s.console.pending_paste is None and buf.text == sixty
            s.send(ENTER)  # still too long: said again, and kept
            await s.wait_text("not sent: 60 lines, over the broker's limit of 50 lines a "
                              "message — cut it down (Ctrl-U clears the input)")
            assert buf.text == sixty
            s.send(UP)  # in several lines, Up moves up a line (not the history)
            await until(lambda: buf.document.cursor_position_row == 58)
            s.send(DOWN)
            await until(lambda: buf.document.cursor_position_row == 59)
            s.send(BACKSPACE * len("\nrow 51" * 10))  # the last ten rows away
            await until(lambda: buf.text.count("\n") == 49, what="50 rows left")
            s.send(ENTER)
            got = await next_of(bob, lambda e: isinstance(e, p.MessagePosted))
            assert isinstance(got, p.MessagePosted)
            assert got.text == "\n".join(f"row {i}" for i in range(1, 51))
            assert got.seq == before + 1
            await until(lambda: buf.text == "")

            # A paste the broker refuses (a control character, 422) comes back too
            s.send(paste("one\x07\ntwo"))
            await until(lambda: s.console.pending_paste is not None)
            s.send(ENTER)
            await until(lambda: buf.text == "one\x07\ntwo", what="the paste given back")
            assert any("(422)" in e for e in s.errors())
            assert [ln.status for ln in s.conv.lines if ln.text == "one\x07\ntwo"] == [
                "failed"]
            s.send(CTRL_U)  # from the start of an input of several lines: all of it
            await until(lambda: buf.text == "", what="cleared")
            s.send(CTRL_Y)
            await until(lambda: buf.text == "one\x07\ntwo", what="yanked back")
            assert await lobby_seq(bob) == before + 1

    run(main())


def test_the_fold_of_a_message_not_sent_says_so() -> None:
    """A long message refused showed ``(not sent)`` only after its last line, which the
    fold hid."""
    long = v.Line("message", 1_700_000_000_000, "dave",
                  "\n".join(f"row {i}" for i in range(1, 31)), status="failed")
    rows = v.render_line(long, 80, "dave", dt.UTC, fold_rows=v.FOLD_ROWS)
    last = "".join(t for _s, t in rows[-1])
    assert last.endswith("│ (not sent) … 21 more lines (Ctrl-O unfolds)")
    sending = v.render_line(dataclasses.replace(long, status="pending"), 60, "dave",
                            dt.UTC, fold_rows=v.FOLD_ROWS)
    assert "│ (sending…) … 21 more lines" in "".join(t for _s, t in sending[-1])
    sent = v.render_line(dataclasses.replace(long, status=""), 60, "dave", dt.UTC,
                         fold_rows=v.FOLD_ROWS)
    assert "".join(t for _s, t in sent[-1]).endswith("│ … 21 more lines (Ctrl-O unfolds)")
