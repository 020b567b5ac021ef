"""The console and deleted rooms (DELETE_ROOM and ROOM_DELETED, docs/PROTOCOL.md §6.52,
docs/console.md "When you are the one moderated"): a room deleted under you is said in
its pane and where you look, greyed, refuses lines, counts nothing and /close takes it
away; joining its name again shows the new room, whose seqs start at 1 again, in a new
conversation; ``/deleteroom`` asks first and shows refusals; ``/topic #room`` reads a
room you are not in.

The real prompt_toolkit Application on a pipe input and DummyOutput (the helpers of
tests/console_helpers.py) over real clients and a real broker thread on ``inproc://``;
the rule that tells a new room from the one shown is also tested as the pure function
it is. Every wait polls a condition with a deadline; nothing sleeps for a socket.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
from client_helpers import RestartableBroker
from conftest import run
from console_helpers import ENTER, ESC, Session, console_session, next_of, until

from zchat import wire as p
from zchat.client.client import Client
from zchat.console import view as v
from zchat.store import Store
from zchat.testing import Harness, running_broker


@pytest.fixture
def h() -> Iterator[Harness]:
    with running_broker(admins=("root",), send_rate_per_s=0.0) as harness:
        yield harness


def msg(seq: int, text: str, sender: str = "bob", at: int = 0) -> v.Line:
    return v.Line("message", 1_700_000_000_000 + (at or seq), sender, text, seq)


async def rooms_of(client: Client) -> set[str]:
    return {r.room for r in (await client.list_rooms()).rooms}


async def in_dev(s: Session) -> None:
    s.type_line("/join dev")
    await until(lambda: s.console.active == "dev", what="switch to #dev")
    await s.wait_text("you joined #dev")


# -- telling a new room from the one shown (pure) -------------------------------------------------


def test_a_room_whose_seqs_went_back_or_differ_is_another_room() -> None:
    conv = v.Conversation("dev", "dev", "room")
    for seq in range(1, 6):
        conv.add(msg(seq, f"old {seq}"), me="alice")
    page = [msg(4, "old 4"), msg(5, "old 5"), msg(6, "new six")]
    assert not conv.replaced_by(6, page)  # the same room, further on
    assert not conv.replaced_by(5, [])
    assert conv.replaced_by(3, [])  # a room's seqs never go back
    assert conv.replaced_by(None, [msg(2, "new two", at=99)])  # #2 said at another time
    assert conv.replaced_by(None, [msg(2, "old 2", sender="olga")])  # or by another
    assert not v.Conversation("x", "x", "room").replaced_by(0, [msg(1, "a")])  # none shown


# -- a room deleted under you ------------------------------------------------------------------


def test_a_deleted_room_is_said_greyed_refuses_lines_counts_nothing_and_closes(
        h: Harness) -> None:
    async def main() -> None:
        async with h.client("olga") as olga, console_session(h) as s:
            await olga.join("dev")  # olga made it: its owner
            await olga.set_topic("dev", "release planning")
            await in_dev(s)
            assert s.status(100).startswith(" alice │ #dev │ release planning ")
            s.type_line("/switch lobby")
            await until(lambda: s.console.active == "lobby", what="back in #lobby")
            await olga.send("dev", "anyone?")
            await until(lambda: " #dev (1)" in s.sidebar()[1:3], what="#dev (1)")
            assert "[Act: #dev]" in s.status(100)

            await olga.delete_room("dev", "spam cleanup")
            said = "#dev was deleted by olga: spam cleanup"
            await s.wait_text(said)  # where alice looks …
            await s.wait_text(said, key="dev")  # … and in the room's pane
            dev = s.console.conversations["dev"]
            assert not dev.joined and dev.deleted and not dev.members
            assert "anyone?" in s.texts("dev")  # its lines stay until /close
            assert " (#dev)" in s.sidebar()[1:3]  # greyed, with no count
            assert "[Act:" not in s.status(100)
            (row,) = [r for r in v.render_sidebar([dev], None, None, 24)[1:]]
            assert any("sidebar.parted" in style for style, _t in row)

            s.type_line("/switch dev")
            await until(lambda: s.console.active == "dev", what="switch to #dev")
            assert "release planning" not in s.status(100)  # the room's, gone with it
            s.type_line("still here?")
            refused = "#dev was deleted; /join dev makes a new, empty room of that name"
            await until(lambda: refused in s.errors(), what="the refusal")
            await until(lambda: s.console.input_buffer.text == "still here?",
                        what="the line given back")
            assert "dev" not in await rooms_of(olga)  # nothing made it again
            s.console.input_buffer.text = ""

            s.type_line("/close")
            await until(lambda: "dev" not in s.console.conversations, what="closed")
            assert s.console.active == "lobby" and s.console.order == ["lobby"]
            assert not [e for e in s.errors() if "refused" in e], s.errors()

    run(main())


def test_joining_a_deleted_rooms_name_again_shows_the_new_rooms_messages(
        h: Harness) -> None:
    """The old #dev had messages #1..#5; the new one's (numbered on: #6..#8, one in its
    history when alice joins, two live) must show in a pane of their own, and be marked
    read."""
    async def main() -> None:
        async with h.client("olga") as olga, console_session(h) as s:
            await olga.join("dev")
            await in_dev(s)
            for i in range(1, 6):
                await olga.send("dev", f"old {i}")
            await s.wait_text("old 5")
            assert [ln.seq for ln in s.conv.lines if ln.seq] == [1, 2, 3, 4, 5]
            await until(lambda: (s.client.unread.room("dev") or p.RoomRead(
                room="dev", read_seq=0, unread=0, mentions=0)).read_seq == 5,
                what="the old #dev read to #5")

            await olga.delete_room("dev", "starting over")
            await s.wait_text("#dev was deleted by olga: starting over")
            await olga.join("dev")  # a new room: olga owns it again
            await olga.send("dev", "new 1")

            s.type_line("/join dev")
            await s.wait_text("new 1", key="dev")
            for i in (2, 3):
                await olga.send("dev", f"new {i}")
            await s.wait_text("new 3", key="dev")
            conv = s.console.conversations["dev"]
            assert conv.joined and not conv.deleted
            assert [(ln.seq, ln.text) for ln in conv.lines if ln.seq] == [
                (6, "new 1"), (7, "new 2"), (8, "new 3")]
            assert not [t for t in s.texts("dev") if t.startswith("old ")]
            assert "you joined #dev" in s.texts("dev")
            assert s.console.order == ["lobby", "dev"]  # in the old one's place
            await until(lambda: (s.client.unread.room("dev") or p.RoomRead(
                room="dev", read_seq=0, unread=0, mentions=0)).read_seq == 8,
                what="the new #dev marked read to #8")
            s.type_line("hello new room")
            got = await next_of(olga, lambda e: isinstance(e, p.MessagePosted)
                                and e.text == "hello new room")
            assert isinstance(got, p.MessagePosted) and got.seq == 9
            await until(lambda: 9 in conv, what="alice's line as #9")
            assert s.errors() == []

    run(main())


@pytest.mark.parametrize("said", [1, 7])
def test_a_deletion_missed_while_kicked_is_found_when_joining_again(
        h: Harness, said: int) -> None:
    """Kicked from #dev, alice no longer follows it and gets no ROOM_DELETED; olga
    deletes it and makes it again. /join dev must not keep the old pane's #1..#5 above
    the new room's messages (#6 on): its history no longer has the oldest line shown."""
    async def main() -> None:
        async with h.client("olga") as olga, console_session(h) as s:
            await olga.join("dev")
            await in_dev(s)
            for i in range(1, 6):
                await olga.send("dev", f"old {i}")
            await s.wait_text("old 5")
            await olga.kick("dev", "alice")
            await until(lambda: not s.conv.joined, what="kicked")
            await olga.delete_room("dev")
            await olga.join("dev")
            for i in range(1, said + 1):
                await olga.send("dev", f"new {i}")
            s.type_line("/join dev")
            await s.wait_text(f"new {said}", key="dev")
            await s.wait_text("you joined #dev", key="dev")
            conv = s.console.conversations["dev"]
            assert [(ln.seq, ln.text) for ln in conv.lines if ln.seq] == [
                (5 + i, f"new {i}") for i in range(1, said + 1)]
            assert not [t for t in s.texts("dev") if t.startswith("old ")]
            await olga.send("dev", "one more")
            await s.wait_text("one more", key="dev")
            assert conv.newest_seq == 5 + said + 1 and s.console.conversations["dev"] is conv

    run(main())


def test_a_room_deleted_while_disconnected_is_said_so_after_the_reconnect(
        inproc_broker: RestartableBroker) -> None:  # noqa: F811 (the fixture)
    async def main() -> None:
        h = await asyncio.to_thread(inproc_broker.start)
        async with h.client("olga") as olga:
            await olga.join("dev")
            await olga.join("ops")
        client = inproc_broker.client(timeout_s=1.0, reconnect=True)
        async with console_session(h, client=client) as s:
            for room in ("dev", "ops"):
                s.type_line(f"/join {room}")
                await until(lambda room=room: s.console.active == room, what=room)
                await s.wait_text(f"you joined #{room}", key=room)
            await asyncio.to_thread(inproc_broker.stop)
            store = Store(inproc_broker.db)  # as DELETE_ROOM leaves it, unheard
            try:
                store.delete_room("dev")
                store.leave_room("ops", "alice")  # as a kick while away leaves it
            finally:
                store.close()
            await asyncio.to_thread(inproc_broker.start)
            await until(lambda: "reconnected" in s.texts(), timeout=15, what="reconnect")
            said = "#dev was deleted while you were disconnected"
            await until(lambda: said in s.texts("dev"), what="the deletion line")
            assert said in s.texts("ops")  # where alice looks too
            removed = ("you are no longer in #ops (removed while disconnected) — /join ops "
                       "to go back")
            await until(lambda: removed in s.texts("ops"), what="the removal line")
            dev, ops = s.console.conversations["dev"], s.console.conversations["ops"]
            assert dev.deleted and not dev.joined
            assert not ops.deleted and not ops.joined
            assert not [e for e in s.errors() if "refused" in e], s.errors()

    run(main())


# -- /deleteroom --------------------------------------------------------------------------------


def test_deleteroom_asks_first_then_deletes_for_everyone(h: Harness) -> None:
    async def main() -> None:
        async with h.client("bob") as bob, console_session(h) as s:
            await in_dev(s)  # alice made it: its owner
            await bob.join("dev")
            s.type_line("first")
            await until(lambda: 1 in s.conv, what="message #1")
            ask = ("/deleteroom deletes #dev and its 1 message for everyone (2 members), "
                   "for good: Enter on an empty line (or the same /deleteroom again) "
                   "deletes it, Esc cancels")
            # Esc cancels
            s.type_line("/deleteroom")
            await s.wait_text(ask)
            assert s.console.pending_delete == ("dev", "")
            assert s.console._prompt() == [("class:prompt", "[delete #dev? Enter/Esc] ")]
            s.send(ESC)
            await s.wait_text("room deletion cancelled: #dev stays")
            assert s.console.pending_delete is None
            # another line cancels, and is taken as typed
            s.type_line("/deleteroom dev")
            await until(lambda: s.texts().count(ask) == 2, what="asked again")
            s.type_line("not that")
            await until(lambda: s.texts().count("room deletion cancelled: #dev stays") == 2,
                        what="cancelled")
            await next_of(bob, lambda e: isinstance(e, p.MessagePosted)
                          and e.text == "not that")
            assert "dev" in await rooms_of(bob)
            # the same /deleteroom again deletes it, with the reason it gives
            s.type_line("/deleteroom #dev")
            await until(lambda: s.texts().count(ask.replace("1 message", "2 messages"))
                        == 1, what="asked a third time")
            s.type_line("/deleteroom dev moving to #ops")
            gone = await next_of(bob, lambda e: isinstance(e, p.RoomDeleted))
            assert isinstance(gone, p.RoomDeleted)
            assert (gone.room, gone.by, gone.reason) == ("dev", "alice", "moving to #ops")
            await s.wait_text("you deleted #dev: moving to #ops", key="dev")
            assert s.texts("dev").count("you deleted #dev: moving to #ops") == 1
            assert not s.console.conversations["dev"].joined
            assert "dev" not in await rooms_of(bob)
            assert s.errors() == []

    run(main())


def test_deleteroom_with_enter_and_its_refusals(h: Harness) -> None:
    async def main() -> None:
        async with h.client("olga") as olga, h.client("root") as root, \
                console_session(h) as s:
            await olga.join("ops")
            await olga.join("old")
            s.type_line("/join ops")  # alice is a member, not the owner
            await until(lambda: s.console.active == "ops", what="switch to #ops")
            s.type_line("/deleteroom")
            await until(lambda: s.console.pending_delete == ("ops", ""), what="asked")
            s.send(ENTER)
            await until(lambda: "refused: only the owner of #ops or a broker admin may "
                        "delete it (403)" in s.errors(), what="the 403")
            assert s.conv.joined and "ops" in await rooms_of(olga)
            s.type_line("/deleteroom lobby")
            await until(lambda: s.console.pending_delete == ("lobby", ""), what="asked")
            s.send(ENTER)
            await until(lambda: "refused: #lobby cannot be deleted: every account is in it "
                        "(403)" in s.errors(), what="lobby refused")
            s.type_line("/deleteroom nosuch")
            await until(lambda: "refused: no room named 'nosuch' (404)" in s.errors(),
                        what="the 404")
            assert s.console.pending_delete is None  # nothing to confirm
            # an admin deletes a room from anywhere, one the console does not show too
            async with console_session(h, "root") as admin:
                admin.type_line("/deleteroom old not used")
                await until(lambda: admin.console.pending_delete == ("old", "not used"),
                            what="asked")
                admin.send(ENTER)
                await admin.wait_text("you deleted #old: not used")
                assert "old" not in await rooms_of(root)

    run(main())


# -- /topic #room -------------------------------------------------------------------------------


def test_topic_of_a_room_not_joined_is_read_without_joining(h: Harness) -> None:
    async def main() -> None:
        async with h.client("olga") as olga, console_session(h) as s:
            await olga.join("ops")
            await olga.set_topic("ops", "deploys on Friday")
            await olga.join("sec", private=True)
            s.type_line("/topic #ops")
            await s.wait_text("topic of #ops: deploys on Friday (you are not in #ops; "
                              "1 member)")
            assert [u.name for u in (await olga.who("ops")).users] == ["olga"]
            assert "ops" not in s.console.conversations and s.console.active == "lobby"
            s.type_line("/topic #nosuch")
            await until(lambda: "refused: no room named 'nosuch' (404)" in s.errors(),
                        what="the 404")
            s.type_line("/topic #sec")  # a private room is no room to outsiders (§17.2)
            await until(lambda: "refused: no room named 'sec' (404)" in s.errors(),
                        what="the 404 of a private room")
            # in a room you are in, as before: its topic as shown, or set it
            s.type_line("/topic #lobby")
            await s.wait_text("topic of #lobby: (none)")
            s.type_line("/topic #lobby #1 rule: be nice")
            await s.wait_text("alice set the topic: #1 rule: be nice")
            s.type_line("/topic")
            await s.wait_text("topic of #lobby: #1 rule: be nice")

    run(main())
