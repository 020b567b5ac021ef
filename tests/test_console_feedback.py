"""What the console says back, found by a fresh tester: output with no conversation open,
a line stored after all when the broker answered late, a note to yourself, /me in a
direct conversation, the conversation numbers on a narrow terminal.

The real prompt_toolkit Application on a pipe input and DummyOutput over a real broker
thread (the helpers of tests/console_helpers.py).
"""

from __future__ import annotations

import asyncio

from conftest import run
from console_helpers import console_session, until, window_text

from zchat import wire as p
from zchat.console.app import NO_CONVERSATION, NOTE_TO_SELF
from zchat.errors import ConnectionFailed
from zchat.testing import Harness
from zchat.wire import MessageKind


def pane_text(console: object, width: int = 80, height: int = 24) -> str:
    return "\n".join(row.rstrip()
                     for row in window_text(console.pane, width, height))  # type: ignore[attr-defined]


def test_with_no_conversation_open_commands_and_errors_still_show(harness: Harness) -> None:
    """Tester: erin (only in #lobby) typed /part, then /help, /frob, hello, /names,
    /rooms: nothing at all showed, for there was no pane to draw them in."""
    async def main() -> None:
        async with console_session(harness, "erin") as s:
            s.type_line("/part")
            await until(lambda: s.console.current is None, what="no conversation")
            assert pane_text(s.console).startswith(NO_CONVERSATION)
            for typed, shown in (
                    ("/help", "/help CMD explains one command"),
                    ("/frob", "unknown command /frob"),
                    ("hello", "no conversation: /join ROOM or /query NAME first"),
                    ("/names", "/names works in rooms"),
                    ("/rooms", "1 room:")):
                s.console.input_buffer.text = ""
                s.type_line(typed)
                await until(lambda shown=shown: shown in pane_text(s.console, 100, 60),
                            what=f"{typed}: {shown!r} on screen")
                if typed == "hello":  # it went nowhere: back in the input, to keep
                    await until(lambda: s.console.input_buffer.text == "hello",
                                what="hello given back")
            s.console.input_buffer.text = ""
            s.type_line("/join lobby")
            await until(lambda: s.console.active == "lobby", what="back in #lobby")
            assert "you joined #lobby" in s.texts()

    run(main())


def test_a_dm_to_yourself_is_a_note_to_yourself_never_offline(harness: Harness) -> None:
    """Tester: ``/query alice`` as alice, then ``note to self``, said ``alice is offline;
    they get it at their next login`` while she was online, typing it."""
    async def main() -> None:
        async with console_session(harness, "alice") as s:
            s.type_line("/query alice")
            await until(lambda: s.console.active == "dm:alice", what="@alice shown")
            s.type_line("note to self")
            await until(lambda: NOTE_TO_SELF in s.texts(), what="a note to yourself")
            s.type_line("another one")
            await until(lambda: [(ln.text, ln.status) for ln in s.conv.lines if ln.own]
                        == [("note to self", ""), ("another one", "")], what="both stored")
            assert not any("offline" in t for t in s.texts()), s.texts()
            assert s.texts().count(NOTE_TO_SELF) == 1
            assert s.texts().count("note to self") == 1  # not shown twice (the echo)

    run(main())


def test_a_line_the_broker_stores_after_no_answer_is_taken_back_as_stored(
        harness: Harness) -> None:
    """Tester: a broker frozen 34 s while two lines were typed: the console said ``not
    sent, no answer from the broker … press Enter to send it again`` and gave the line
    back, yet both were stored when the broker came back; Up and Enter stored one again.
    Now the wording says it may have been stored, and when the message turns up in the
    room, it takes the ``(no answer)`` line's place and leaves the input. The SEND here
    gets no answer and reaches the broker only when the test lets it, as the frozen
    broker's queue did; a second one is stored before its no-answer, which is then no
    error at all."""
    async def main() -> None:
        async with console_session(harness, "alice") as s:
            real_send = s.client.send
            release = asyncio.Event()

            async def frozen(room: str, text: str, kind: MessageKind = "text",
                             cmid: str = "", **_kw: object) -> p.Sent:
                async def stored_later() -> None:
                    await release.wait()
                    await real_send(room, text, kind=kind, cmid=cmid)
                asyncio.ensure_future(stored_later())
                raise ConnectionFailed("no answer from the broker within 5 s")

            s.client.send = frozen  # type: ignore[method-assign]
            s.type_line("first line")
            await until(lambda: any("it may not have been stored" in e
                                    for e in s.errors()), what="the wording")
            assert not any("not sent" in e for e in s.errors()), s.errors()
            assert s.console.input_buffer.text == "first line"
            assert [(ln.text, ln.status) for ln in s.conv.lines if ln.own] == [
                ("first line", "unknown")]
            assert "first line (no answer)" in pane_text(s.console)
            release.set()
            await until(lambda: not s.console.input_buffer.text, what="taken back")
            await until(lambda: [(ln.text, ln.status, ln.seq is not None)
                                 for ln in s.conv.lines if ln.own]
                        == [("first line", "", True)], what="stored, in its place")
            assert any("'first line' was stored after all" in t for t in s.texts())

            async def stored_unanswered(room: str, text: str, kind: MessageKind = "text",
                                        cmid: str = "", **_kw: object) -> p.Sent:
                await real_send(room, text, kind=kind, cmid=cmid)
                await until(lambda: any(ln.text == text and not ln.status
                                        for ln in s.conv.lines), what="its MESSAGE")
                raise ConnectionFailed("no answer from the broker within 5 s")

            s.client.send = stored_unanswered  # type: ignore[method-assign]
            errors_before = s.errors()
            s.type_line("second line")
            await until(lambda: [(ln.text, ln.status) for ln in s.conv.lines if ln.own]
                        == [("first line", ""), ("second line", "")], what="second stored")
            await asyncio.sleep(0.2)  # the ConnectionFailed, handled by now
            assert s.errors() == errors_before
            assert s.console.input_buffer.text == ""
            page = await s.client.history("lobby", limit=10)
            assert [m.text for m in page.messages if m.sender == "alice"] == [
                "first line", "second line"]

    run(main())


def test_window_alone_lists_the_conversation_numbers_for_a_narrow_terminal(
        harness: Harness) -> None:
    """Tester: below 78 columns the sidebar is hidden, and nothing showed the numbers
    ``/window N`` uses. ``/window`` alone lists them; the /help overview says so and
    still fits 22 rows of a 60-column pane."""
    async def main() -> None:
        async with harness.client("bob") as bob, console_session(harness, "alice") as s:
            s.type_line("/join dev")
            await until(lambda: s.console.active == "dev", what="#dev")
            await bob.dm("alice", "hi")
            await until(lambda: "dm:bob" in s.console.conversations, what="@bob")
            s.type_line("/window")
            listed = ("conversations: 1 #lobby, 2 #dev (shown), 3 @bob (1) — /window N "
                      "or Alt-N shows one")
            await until(lambda: listed in s.texts(), what=f"the list in {s.texts()}")
            s.type_line("/window 3")
            await until(lambda: s.console.active == "dm:bob", what="/window 3")
            s.type_line("/help")
            await until(lambda: any(t.startswith("// at the start") for t in s.texts()),
                        what="/help")
            shown = pane_text(s.console, 60, 22)
            assert "/help CMD explains one command" in shown, shown
            assert "starting with /." in shown, shown  # the whole overview, in 22 rows
            assert any(t.startswith("move: ") and t.endswith(
                "— /window alone lists their numbers") for t in s.texts()), s.texts()

    run(main())


def test_me_in_a_direct_conversation_says_why_and_gives_the_line_back(
        harness: Harness) -> None:
    """A DM has no action kind on the wire (docs/PROTOCOL.md §6.7): /me there says so
    and the line comes back to send as text, rather than being lost."""
    async def main() -> None:
        async with harness.client("bob"), console_session(harness, "alice") as s:
            s.type_line("/query bob")
            await until(lambda: s.console.active == "dm:bob", what="@bob")
            s.type_line("/me waves")
            await until(lambda: any("a direct message cannot carry an action" in e
                                    for e in s.errors()), what="why")
            await until(lambda: s.console.input_buffer.text == "/me waves", what="back")

    run(main())
