"""Rooms the account joins or leaves on another device (a fresh tester: ``zchat say --as
carol --room slowroom hi`` joined carol to #slowroom, and her open console never showed
it, while ``zchat unread`` and a fresh console did). The PONG of every heartbeat lists the
account's rooms (docs/PROTOCOL.md §6.13): the client follows a room it lists that it does
not follow (JoinedElsewhere) and stops following one it no longer lists (LeftElsewhere);
a reconnect's LOGIN/RESUME reply does the same. A PONG that may predate this client's own
JOIN or PART of a room changes nothing for it.

Real clients and a real broker thread on ``inproc://`` (restarted on the same SQLite file
where a reconnect is needed, tests/client_helpers.py), the console on a pipe input
(tests/console_helpers.py); every wait polls or reads events with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
import time
from collections.abc import Iterator

import pytest
from client_helpers import FAST_BEATS, RestartableBroker, collect, is_, logged_in
from conftest import run
from console_helpers import console_session, until

from zchat import wire as p
from zchat.client.events import ConnectionRestored, JoinedElsewhere, LeftElsewhere
from zchat.testing import Harness, running_broker


@pytest.fixture
def h() -> Iterator[Harness]:
    with running_broker(**FAST_BEATS) as harness:
        yield harness


def test_a_room_joined_on_another_device_is_followed_with_its_unread_count(
        h: Harness) -> None:
    async def main() -> None:
        async with h.client("carol") as laptop, h.client("carol") as phone, \
                h.client("bob") as bob:
            await bob.join("slowroom")
            await bob.send("slowroom", "before carol")
            await phone.join("slowroom")
            await bob.send("slowroom", "hi carol, are you there?")  # unread, a mention
            seen = await collect(laptop, is_(JoinedElsewhere, room="slowroom"))
            joined = seen[-1]
            assert isinstance(joined, JoinedElsewhere)
            if joined.last_seq < 2:  # followed before bob's message: it comes live
                await collect(laptop, is_(p.MessagePosted, room="slowroom", seq=2))
            assert "slowroom" in laptop.rooms
            state = laptop.unread.room("slowroom")
            assert state is not None and (state.unread, state.mentions) == (1, 1)
            await bob.send("slowroom", "live now")
            await collect(laptop, is_(p.MessagePosted, room="slowroom", text="live now"))

            await phone.part("slowroom")
            await collect(laptop, is_(LeftElsewhere, room="slowroom"))
            assert "slowroom" not in laptop.rooms
            assert laptop.unread.room("slowroom") is None
            assert "slowroom" not in phone.rooms  # its own PART: no event, not followed

    run(main())


def test_a_stale_pong_does_not_undo_this_clients_own_join_or_part(h: Harness) -> None:
    """A PONG computed before the broker processed this client's JOIN must not make it
    stop following the room it just joined, nor one computed before its PART follow the
    room again. Replies on one connection come in order, so this race needs the PONG to
    be handled late (a repair, a kick's LEFT read first on the SUB): the stale PONG is
    fed to the reconciliation by hand."""
    async def main() -> None:
        async with h.client("carol") as carol:
            await carol.join("dev")
            before = carol._membership.snapshot()
            stale: p.Pong = await carol.request(p.Ping())  # lists lobby and dev
            await carol.join("mine")
            await carol.part("dev")
            await carol._follow_membership(stale.rooms, before)
            assert set(carol.rooms) == {"lobby", "mine"}
            # A fresh PONG speaks for every room again
            await carol.ping()
            assert set(carol.rooms) == {"lobby", "mine"}

    run(main())


def test_a_kick_read_before_a_pong_that_predates_it_does_not_follow_the_room_again(
        ) -> None:
    with running_broker(admins=("root",), **FAST_BEATS) as h:
        async def main() -> None:
            async with h.client("carol") as carol, h.client("root") as root:
                await root.join("ops")
                await carol.join("ops")
                before = carol._membership.snapshot()
                stale: p.Pong = await carol.request(p.Ping())  # lists ops
                await root.kick("ops", "carol", "testing")
                await collect(carol, is_(p.UserLeft, name="carol", room="ops"))
                assert "ops" not in carol.rooms
                await carol._follow_membership(stale.rooms, before)
                assert "ops" not in carol.rooms

        run(main())


def test_rooms_joined_and_left_while_disconnected_are_told_before_the_reconnect(
        inproc_broker: RestartableBroker) -> None:  # noqa: F811 (the fixture)
    async def main() -> None:
        await asyncio.to_thread(inproc_broker.start)
        bob = await logged_in(inproc_broker, "bob", ("newroom", "oldroom"))
        await bob.send("newroom", "said before carol came")
        await bob.close()
        carol = await logged_in(inproc_broker, "carol", ("oldroom",), timeout_s=1.0,
                                reconnect=True)
        try:
            await asyncio.to_thread(inproc_broker.stop)
            with contextlib.closing(sqlite3.connect(inproc_broker.db)) as db, db:
                # as another device of carol's would leave it, through a broker
                # started meanwhile
                db.execute("INSERT INTO members (room_key, account_key, joined_ms) "
                           "VALUES ('newroom', 'carol', ?)", (int(time.time() * 1000),))
                db.execute("DELETE FROM members WHERE room_key = 'oldroom' AND "
                           "account_key = 'carol'")
            await asyncio.to_thread(inproc_broker.start)
            seen = await collect(carol, is_(ConnectionRestored), timeout_s=10)
            found = [e for e in seen if isinstance(e, JoinedElsewhere | LeftElsewhere)]
            assert found == [JoinedElsewhere("newroom", 1, ""), LeftElsewhere("oldroom")]
            assert set(carol.rooms) == {"lobby", "newroom"}
            state = carol.unread.room("newroom")
            assert state is not None and state.unread == 1
        finally:
            await carol.close()

    run(main(), timeout_s=30)


# -- the console ----------------------------------------------------------------------------


def test_the_console_opens_a_room_joined_on_another_device_and_marks_one_left(
        h: Harness) -> None:
    async def main() -> None:
        async with h.client("bob") as bob, console_session(h, "carol") as s, \
                h.client("carol") as phone:
            await bob.join("slowroom")
            await phone.join("slowroom")
            await bob.send("slowroom", "carol: the build is green")
            await until(lambda: "slowroom" in s.console.conversations, what="#slowroom")
            await s.wait_text("you joined #slowroom on another device")  # where she is
            assert s.console.active == "lobby"
            await until(lambda: "!#slowroom (1)" in s.sidebar(),
                        what=f"!#slowroom (1) in {s.sidebar()}")
            await s.wait_text("carol: the build is green", key="slowroom")
            assert s.errors() == []

            await phone.part("slowroom")
            gone = "you left #slowroom on another device — /join slowroom to go back"
            await s.wait_text(gone)
            await s.wait_text(gone, key="slowroom")
            assert not s.console.conversations["slowroom"].joined
            s.type_line("/join slowroom")  # and back from here, as usual
            await until(lambda: s.console.conversations["slowroom"].joined
                        and s.console.active == "slowroom", what="joined again")
            await s.wait_text("you joined #slowroom", key="slowroom")

    run(main())
