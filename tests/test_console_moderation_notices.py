"""What the console tells you when you are the one moderated (docs/console.md; loose ends
of issue 6): being kicked, banned, muted or having your session ended by an operator,
seen through the real prompt_toolkit Application (pipe input, DummyOutput) over real
clients and a real broker thread on inproc:// (the helpers of tests/console_helpers.py).

Every wait polls a condition with a deadline; nothing sleeps for a socket.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest
from conftest import run
from console_helpers import console_session, until

from zchat.client.client import Client
from zchat.client.events import ConnectionRestored
from zchat.testing import Harness, running_broker


@pytest.fixture
def h() -> Iterator[Harness]:
    with running_broker(admins=("root",)) as harness:
        yield harness


async def last_seq(client: Client, room: str) -> int:
    (info,) = [r for r in (await client.list_rooms()).rooms if r.room == room]
    return info.last_seq


@pytest.mark.parametrize("private", [False, True])
def test_kicked_room_stays_marked_not_joined_and_typing_there_sends_nothing(
        h: Harness, private: bool) -> None:
    async def main() -> None:
        async with h.client("bob") as bob, console_session(h) as s:
            await bob.join("dev", private=private)  # bob creates #dev: its owner
            if private:
                await bob.invite("dev", "alice")
            s.type_line("/join dev")
            await until(lambda: s.console.active == "dev", what="switch to #dev")
            await until(lambda: "alice" in s.console.conversations["dev"].members,
                        what="alice listed")
            await bob.send("dev", "before the kick")
            await s.wait_text("before the kick")
            await bob.kick("dev", "alice", "cool off")
            said = "you were kicked from #dev by bob: cool off — /join dev to go back"
            await s.wait_text(said)
            conv = s.console.conversations["dev"]
            assert not conv.joined and conv.members == {}
            assert said in s.errors()
            assert "before the kick" in s.texts()  # the lines stay, as in WeeChat
            assert "(#dev)" in [row.strip() for row in s.sidebar()]
            assert "(#dev: not joined) > " in "".join(t for _st, t in s.console._prompt())
            seq = await last_seq(bob, "dev")
            s.type_line("are you there?")
            error = "you are not in #dev; /join dev to go back"
            await until(lambda: error in s.errors(), what="the not-joined error")
            assert s.console.input_buffer.text == "are you there?"  # given back
            s.console.input_buffer.text = ""
            s.type_line("/me waves")
            await until(lambda: s.errors().count(error) == 2, what="/me refused too")
            assert s.console.input_buffer.text == "/me waves"  # given back too
            s.console.input_buffer.text = ""
            assert await last_seq(bob, "dev") == seq  # nothing reached the broker
            assert not any("403" in e for e in s.errors())
            if private:
                await bob.invite("dev", "alice")
            s.type_line("/join dev")
            await until(lambda: conv.joined, what="joined again")
            s.type_line("back again")
            await s.wait_text("back again")
            assert await last_seq(bob, "dev") == seq + 1
            assert "#dev" in [row.strip() for row in s.sidebar()]

    run(main())


def test_ban_with_an_end_is_said_in_the_room_and_where_you_look(h: Harness) -> None:
    async def main() -> None:
        async with h.client("bob") as bob, console_session(h) as s:
            await bob.join("dev")
            s.type_line("/join dev")
            await until(lambda: s.console.active == "dev", what="switch to #dev")
            s.type_line("/switch lobby")
            await until(lambda: s.console.active == "lobby", what="back in #lobby")
            await bob.ban("alice", "dev", reason="spam", duration_s=90)
            pattern = re.compile(r"you were banned from #dev by bob until "
                                 r"\d\d:\d\d:\d\d \(1 min 30 s\): spam — /join dev after that")
            await until(lambda: any(pattern.fullmatch(t) for t in s.errors()),
                        what="the ban line in #lobby")
            assert any(pattern.fullmatch(t) for t in s.texts("dev"))
            assert not s.console.conversations["dev"].joined
            # a permanent ban gives no hint to come back
            await bob.join("ops")
            s.type_line("/join ops")
            await until(lambda: "ops" in s.console.conversations, what="#ops open")
            await bob.ban("alice", "ops")
            await s.wait_text("you were banned from #ops by bob until lifted", key="ops")

    run(main())


def test_mute_unmute_and_the_end_of_a_timed_mute_are_shown(h: Harness) -> None:
    async def main() -> None:
        async with h.client("bob") as bob, console_session(h) as s:
            await bob.join("dev")
            s.type_line("/join dev")
            await until(lambda: s.console.active == "dev", what="switch to #dev")
            await bob.mute("alice", "dev", reason="flood", duration_s=90)
            pattern = re.compile(r"bob muted you in #dev until \d\d:\d\d:\d\d "
                                 r"\(1 min 30 s\): flood — you can read but not post")
            await until(lambda: any(pattern.fullmatch(t) for t in s.errors()),
                        what="the mute line")
            await bob.unmute("alice", "dev")
            await s.wait_text("bob unmuted you in #dev; you may post again")
            # a timed mute's end is announced when it comes (the broker sends nothing)
            await bob.mute("alice", "dev", duration_s=1)
            await s.wait_text("your mute in #dev has ended; you may post again")
            s.type_line("free again")
            await s.wait_text("free again")
            # server-wide, by an admin: said where you look
            async with h.client("root") as root:
                await root.mute("alice")
                await until(lambda: any(t.startswith("root muted you on this whole server "
                                                     "(DMs too) until lifted")
                                        for t in s.errors()), what="server-wide mute")

    run(main())


@pytest.mark.parametrize(("order", "why"), [
    ("reset", "your password was reset; log in with the new one"),
    ("disable", "your account was disabled; ask a broker admin to enable it"),
])
def test_operator_ending_the_session_is_said_once_not_as_a_lost_connection(
        h: Harness, order: str, why: str) -> None:
    async def main() -> None:
        client = Client(h.server, context=h.context, timeout_s=2.0, reconnect=True)
        async with h.client("root") as root, console_session(h, client=client) as s:
            if order == "reset":
                await root.admin_set_password("alice", "a-brand-new-password")
            else:
                await root.set_disabled("alice")
            said = f"session ended by root: {why} — /quit to leave"
            await until(lambda: said in s.errors(), what="the session-ended line")
            assert s.console.state == "disconnected" and s.console.ended
            assert s.errors().count(said) == 1
            assert not any(e.startswith(("lost the broker", "the broker ended our session"))
                           for e in s.errors()), s.errors()
            assert "disconnected" in s.status()
            s.type_line("anyone?")
            await until(lambda: any("session ended by root" in e and "(401)" in e
                                    for e in s.errors()), what="a clear refusal")

    run(main())


def test_removed_room_is_marked_after_a_reconnect(h: Harness) -> None:
    """The broker no longer lists a room (kicked while the console was away): the
    ConnectionRestored check marks it parted with a line saying so."""
    async def main() -> None:
        async with h.client("bob") as bob, console_session(h) as s:
            await bob.join("dev")
            s.type_line("/join dev")
            await until(lambda: s.console.active == "dev", what="switch to #dev")
            await s.client.part("dev")  # as the reconnect would find it: not a member
            s.console.on_event(ConnectionRestored())
            await s.wait_text("you are no longer in #dev (removed while disconnected) — "
                              "/join dev to go back")
            assert not s.console.conversations["dev"].joined
            assert s.console.conversations["lobby"].joined

    run(main())


def test_left_event_of_someone_else_is_still_a_plain_notice(h: Harness) -> None:
    async def main() -> None:
        async with h.client("bob") as bob, h.client("carol") as carol, \
                console_session(h) as s:
            await bob.join("dev")
            await carol.join("dev")
            s.type_line("/join dev")
            await until(lambda: "dev" in s.console.conversations
                        and "carol" in s.console.conversations["dev"].members,
                        what="carol listed")
            await bob.ban("carol", "dev", duration_s=90)
            await s.wait_text("carol was banned from #dev by bob")
            assert s.console.conversations["dev"].joined
            assert "carol" not in s.console.conversations["dev"].members
            assert not any(t.startswith("you were") for t in s.texts())

    run(main())
