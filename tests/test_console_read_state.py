"""The console on the broker's read state (issue 13 §2, docs/console.md "Unread counts"
and "When a conversation counts as read"): the sidebar's counts, its ``!`` and the
hotlist come from ``Client.unread`` — so they survive a restart of the console and agree
on every device — a conversation is marked read when it is drawn at its bottom, never
when a message merely arrives, and a direct conversation shows its history when it
opens: at start for every one with unread DMs, on /query, and after a reconnect the DMs
that went to the account's other sessions meanwhile.

The real prompt_toolkit Application on a pipe input and DummyOutput (the helpers of
tests/console_helpers.py) over real clients and a real broker thread on ``inproc://``.
Every wait polls a condition with a deadline; nothing sleeps for a socket. Where a test
shows that something does *not* happen (no MARK_READ while scrolled up), it waits for
the READ push a mark would cause for well over the console's mark interval and its
redraw interval, and then makes the mark happen, so that the wait is not vacuous.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Iterator

import pytest
from client_helpers import FAST_BEATS, RestartableBroker
from conftest import run
from console_helpers import END, PAGE_UP, Session, alt, console_session, login, next_of, until
from prompt_toolkit.application import create_app_session

from zchat import wire as p
from zchat.console.app import HISTORY_ON_OPEN, MARK_READ_INTERVAL_S
from zchat.testing import Harness, next_dm, running_broker


@pytest.fixture
def h() -> Iterator[Harness]:
    """The in-process broker with the SEND/DM rate limit off: these tests send bursts."""
    with running_broker(send_rate_per_s=0.0) as harness:
        yield harness


def is_read(room: str = "", peer: str = "") -> object:
    return lambda e: isinstance(e, p.ReadMarked) and e.room == room and e.peer == peer


@contextlib.asynccontextmanager
async def second_console(h: Harness, name: str) -> AsyncIterator[Session]:
    """Another console of ``name`` beside a first one in the same process: in an
    AppSession of its own, or prompt_toolkit hands the keys typed into one to the
    Application started last (its ``get_app()`` is per AppSession)."""
    with create_app_session():
        async with console_session(h, name) as session:
            yield session


async def fresh_login(h: Harness, name: str) -> p.LoggedIn:
    """What a new LOGIN of ``name`` is told (its read state), the session closed again."""
    client, reply = await login(h, name)
    await client.close()
    return reply


# -- the repro: a DM never opened ----------------------------------------------------


def test_a_dm_never_opened_is_unread_at_the_next_start_until_a_device_shows_it(
        h: Harness) -> None:
    """Issue 13 §2: bob's console is open on #dev, erin writes to him, the sidebar says
    ``!@erin (1)``, he quits without opening it; his next console had no Direct section
    (the DM had been acknowledged, and that was all). Now it lists erin with the DM
    unread and shows it; when one of his consoles shows it, the other loses the count."""
    async def main() -> None:
        async with h.client("erin") as erin:
            async with console_session(h, "bob") as first:
                first.type_line("/join dev")
                await until(lambda: first.console.active == "dev", what="on #dev")
                await erin.dm("bob", "ping me")
                await until(lambda: "!@erin (1)" in first.sidebar(),
                            what=f"!@erin (1) in {first.sidebar()}")
                first.type_line("/quit")
                await first.wait_exit(2.0)
            reply = await fresh_login(h, "bob")
            assert [(d.peer, d.unread) for d in reply.dm_reads] == [("erin", 1)]

            async with console_session(h, "bob") as one, second_console(h, "bob") as two:
                for s in (one, two):
                    assert s.console.active == "lobby"  # lands as before, not on the DM
                    assert s.sidebar()[:5] == ["Rooms", " #lobby", " #dev", "Direct",
                                               "!@erin (1)"]
                    assert s.texts("dm:erin") == ["ping me"]  # its history, loaded
                    assert "[Act: !@erin]" in s.status(100)
                one.type_line("/switch @erin")
                await until(lambda: one.console.active == "dm:erin", what="@erin shown")
                await until(lambda: two.sidebar()[4] == " @erin",
                            what=f"the other console's count gone: {two.sidebar()}")
                assert "[Act:" not in two.status(100)
                read = two.client.unread.dm("erin")
                assert read is not None and read.unread == 0
            assert (await fresh_login(h, "bob")).dm_reads == ()

    run(main())


# -- rooms: counts from the broker, marked read when on screen --------------------------------


def test_a_rooms_count_and_mention_survive_a_restart_of_the_console(h: Harness) -> None:
    """A message arriving in the room on screen is read; three said while the console
    was closed, one naming alice, are ``!#dev (3)`` at the next start (the console
    counted from 0 at each start before) until #dev is shown."""
    async def main() -> None:
        async with h.client("bob") as bob:
            await bob.join("dev")
            async with console_session(h, "alice") as s:
                s.type_line("/join dev")
                await until(lambda: s.console.active == "dev", what="on #dev")
                seen = await bob.send("dev", "seen on screen")
                await until(lambda: s.client.unread.room("dev") == p.RoomRead(
                    room="dev", read_seq=seen.seq, unread=0, mentions=0),
                    what="the line on screen marked read")
            for text in ("one", "hey alice, look", "three"):
                await bob.send("dev", text)
            async with console_session(h, "alice") as s:
                assert s.console.active == "lobby"
                assert s.sidebar()[1:3] == [" #lobby", "!#dev (3)"]
                assert "[Act: !#dev]" in s.status(100)
                assert [ln.text for ln in s.console.conversations["dev"].lines
                        if ln.mention] == ["hey alice, look"]
                s.send(alt("2"))
                await until(lambda: s.console.active == "dev", what="on #dev")
                await until(lambda: (s.client.unread.room("dev") or p.RoomRead("")).unread
                            == 0, what="#dev read")
                s.send(alt("1"))
                await until(lambda: s.console.active == "lobby", what="back on #lobby")
                assert s.sidebar()[1:3] == [" #lobby", " #dev"]
            reads = (await fresh_login(h, "alice")).room_reads
            assert [(r.room, r.unread, r.mentions) for r in reads] == [("lobby", 0, 0),
                                                                      ("dev", 0, 0)]

    run(main())


def test_scrolled_up_nothing_is_marked_read_until_the_bottom_is_shown_again(
        h: Harness) -> None:
    async def main() -> None:
        async with h.client("bob") as bob:
            for i in range(1, 161):
                await bob.send("lobby", f"m{i}")
            async with console_session(h, "alice") as s, h.client("alice") as phone:
                await until(lambda: s.console.pane.render_info is not None)
                s.send(PAGE_UP)
                await until(lambda: not s.conv.following, what="scrolled up")
                sent = await bob.send("lobby", "while scrolled")
                await until(lambda: s.conv.new_while_scrolled == 1, what="the new line")
                with pytest.raises(AssertionError, match="no matching event"):
                    await next_of(phone, is_read(room="lobby"),
                                  timeout=3 * MARK_READ_INTERVAL_S + 1.0)
                state = s.client.unread.room("lobby")
                assert state is not None and (state.read_seq, state.unread) == (sent.seq - 1,
                                                                                1)
                s.send(END)  # back at the bottom: now it is on screen
                read = await next_of(phone, is_read(room="lobby"))
                assert isinstance(read, p.ReadMarked)
                assert (read.upto, read.unread, read.mentions) == (sent.seq, 0, 0)

    run(main())


def test_messages_arriving_at_the_bottom_are_marked_read_at_most_twice_a_second(
        h: Harness) -> None:
    """Each line arriving in the room on screen is read, a burst in few MARK_READs (one
    at a time, at most one per MARK_READ_INTERVAL_S); a room not shown stays unread."""
    async def main() -> None:
        async with h.client("bob") as bob:
            await bob.join("dev")
            async with console_session(h, "alice") as s, h.client("alice") as phone:
                s.type_line("/join dev")
                await until(lambda: s.console.active == "dev", what="on #dev")
                s.send(alt("1"))
                await until(lambda: s.console.active == "lobby", what="on #lobby")
                await bob.send("dev", "elsewhere")
                start = time.monotonic()
                for i in range(20):
                    last = await bob.send("lobby", f"burst {i}")
                reads: list[p.ReadMarked] = []
                while not reads or reads[-1].upto < last.seq:
                    read = await next_of(phone, lambda e: isinstance(e, p.ReadMarked))
                    assert isinstance(read, p.ReadMarked)
                    reads.append(read)
                took = time.monotonic() - start
                assert all(r.room == "lobby" for r in reads), reads
                assert [r.upto for r in reads] == sorted({r.upto for r in reads})
                assert (reads[-1].unread, reads[-1].mentions) == (0, 0)
                assert len(reads) <= 1 + took / MARK_READ_INTERVAL_S, (len(reads), took)
                dev = s.client.unread.room("dev")
                assert dev is not None and dev.unread == 1
                assert s.sidebar()[1:3] == [" #lobby", " #dev (1)"]

    run(main())


# -- direct conversations: their history ------------------------------------------------------


def test_a_direct_conversation_opens_with_its_history_and_scrolls_back_to_its_start(
        h: Harness) -> None:
    """All of it read: no Direct section at start; /query shows the last DMs both ways,
    and scrolling up fetches the older ones (DM_HISTORY ``before``) down to the first."""
    async def main() -> None:
        async with h.client("erin") as erin, h.client("bob") as bob:
            for i in range(1, 151):
                await erin.dm("bob", f"e{i}")
            for _ in range(150):
                await next_dm(bob, sender="erin")  # handed over: no longer pending
            for i in range(1, 11):
                await bob.dm("erin", f"b{i}")  # answering reads the conversation
        async with console_session(h, "bob") as s:
            assert "Direct" not in s.sidebar()
            s.type_line("/query erin")
            await until(lambda: s.console.active == "dm:erin", what="@erin shown")
            assert s.texts() == [f"e{i}" for i in range(111, 151)] + [
                f"b{i}" for i in range(1, 11)]
            assert len(s.texts()) == HISTORY_ON_OPEN
            assert [ln.own for ln in s.conv.lines][-11:] == [False] + [True] * 10
            s.type_line("/history 5")  # in a direct conversation too
            await s.wait_text("loaded 5 older messages")
            assert s.texts(kinds=("dm",))[:2] == ["e106", "e107"]
            await until(lambda: s.console.pane.render_info is not None)

            def page_up_until_the_start() -> bool:
                # PageUp at the top while a page loads is lost (the view stops at the top
                # line): one more at each poll until the first DM is loaded.
                if not s.conv.history_complete:
                    s.send(PAGE_UP)
                return s.conv.history_complete

            await until(page_up_until_the_start, timeout=10, what="back to the first DM")
            assert s.texts(kinds=("dm",)) == [f"e{i}" for i in range(1, 151)] + [
                f"b{i}" for i in range(1, 11)]
            ids = [ln.seq for ln in s.conv.lines if ln.seq is not None]
            assert ids == sorted(set(ids))
            assert "Direct" in s.sidebar()

    run(main())


def test_every_unread_dm_shows_at_start_even_beyond_a_page(h: Harness) -> None:
    """70 DMs handed to another session of bob (acknowledged: not pending any more) but
    never shown: the console opens the conversation with all of them, paging back
    beyond its first page to the read marker, and the DMs read before above them."""
    async def main() -> None:
        async with h.client("erin") as erin, h.client("bob") as bob:
            await erin.dm("bob", "hello")
            await bob.dm("erin", "hi erin")
            for i in range(1, 71):
                await erin.dm("bob", f"u{i}")
            for _ in range(71):
                await next_dm(bob, sender="erin")  # handed over: acknowledged
            await bob.list_rooms()  # a round trip after the acknowledgements: they are in
        reply = await fresh_login(h, "bob")
        assert reply.pending == ()
        assert [(d.peer, d.unread) for d in reply.dm_reads] == [("erin", 70)]
        async with console_session(h, "bob") as s:
            assert "!@erin (70)" in s.sidebar()
            assert s.texts("dm:erin") == ["hello", "hi erin"] + [f"u{i}" for i in
                                                                 range(1, 71)]

    run(main())


def test_dms_that_went_to_another_device_during_an_outage_show_after_the_reconnect(
        inproc_broker: RestartableBroker) -> None:  # noqa: F811 (the fixture)
    """While bob's console was cut off, erin wrote to him and he answered from his
    phone, which read her DM: nothing of it is pending for the console, and a DM is not
    pushed again. After the reconnect the console fetches what came after its newest."""
    async def main() -> None:
        h = await asyncio.to_thread(inproc_broker.start)
        async with h.client("bob"), h.client("erin") as erin:
            await erin.dm("bob", "before")
        client = inproc_broker.client(timeout_s=1.0, reconnect=True)
        async with console_session(h, "bob", client=client) as s:
            await until(lambda: "before" in s.texts("dm:erin"), what="the first DM")
            await asyncio.to_thread(inproc_broker.stop)
            # The same database on other endpoints: the phone reaches it, the console not.
            with running_broker(inproc_broker.db, **FAST_BEATS) as elsewhere:
                async with elsewhere.client("erin") as erin2, \
                        elsewhere.client("bob") as phone:
                    dm = await erin2.dm("bob", "while you were away")
                    await next_dm(phone, sender="erin")
                    await phone.mark_read(dm="erin", upto=dm.id)
                    await phone.dm("erin", "answered from the phone")
            await asyncio.to_thread(inproc_broker.start)
            await until(lambda: s.texts("dm:erin")[-2:] == [
                "while you were away", "answered from the phone"], timeout=20,
                what="the DMs of the outage")
            assert s.texts("dm:erin") == ["before", "while you were away",
                                          "answered from the phone"]
            assert "!@erin" not in " ".join(s.sidebar())  # read on the phone

    run(main(), 60)
