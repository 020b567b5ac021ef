"""The client's repair of a room's message stream against a real broker (inproc, real
SQLite): what the application is handed when live traffic, HISTORY pages, PART and JOIN
cross each other (docs/PROTOCOL.md §14, G2). The test decides which live messages the
client hears: ``FilteringClient`` lets through only the listed ones, as lost PUB traffic
would, and can hold its HISTORY requests until told."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

from conftest import run

from zchat import wire as p
from zchat.client import session
from zchat.client.client import Client
from zchat.testing import DEFAULT_PASSWORD, Harness, running_broker


class FilteringClient(Client):
    """Hears only the live messages of ``room`` whose seq is in ``heard``; while
    ``history_gate`` is clear, the first HISTORY request waits for it before it is sent
    (later ones go on)."""

    def __init__(self, *args: Any, room: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.room = room
        self.heard: set[int] = set()
        self.history_gate = asyncio.Event()
        self.history_gate.set()
        self.history_waiting = asyncio.Event()
        self.history_waiting.set()  # (nothing held until a test clears it)

    async def _on_event(self, event: p.Message) -> None:
        if isinstance(event, p.MessagePosted) and event.room == self.room \
                and event.seq not in self.heard:
            return
        await super()._on_event(event)

    async def request(self, req: p.Request, timeout_s: float | None = None) -> Any:
        if isinstance(req, p.FetchHistory) and not self.history_waiting.is_set():
            self.history_waiting.set()
            await self.history_gate.wait()
        return await super().request(req, timeout_s)


@contextlib.asynccontextmanager
async def filtering_bob(h: Harness) -> AsyncIterator[FilteringClient]:
    """``bob``, registered and logged in, hearing nothing of #dev live until told."""
    bob = FilteringClient(h.server, context=h.context, room="dev")
    await bob.connect()
    try:
        await bob.register("bob", DEFAULT_PASSWORD)
        await bob.login("bob", DEFAULT_PASSWORD)
        yield bob
    finally:
        bob.history_gate.set()
        await bob.close()


async def handed(client: Client, room: str, quiet_s: float = 0.3) -> list[int]:
    """The seqs of ``room``'s messages handed to the application until ``quiet_s`` passes
    with nothing more."""
    seqs = []
    while (event := await client.next_event(quiet_s)) is not None:
        if isinstance(event, p.MessagePosted) and event.room == room:
            seqs.append(event.seq)
    return seqs


def test_a_rejoin_during_a_repair_hands_on_nothing_old_and_nothing_twice() -> None:
    """A gap repair's HISTORY is under way when the user parts and joins the room again.
    The new membership follows from the JOIN's last_seq; the old repair's page must not be
    handed on, and the repair must not hold up live traffic meanwhile. (Before, the SUB
    reader itself waited for the page, so #5 came only after it, and the stale page then
    handed on #1..#5 ahead of #5 once more.)"""

    async def scenario(h: Harness) -> None:
        async with h.client("alice") as alice, filtering_bob(h) as bob:
            await alice.join("dev")
            await bob.join("dev")
            await alice.send("dev", "m1")  # lost on the way to bob
            await alice.send("dev", "m2")  # lost too
            bob.history_gate.clear()
            bob.history_waiting.clear()
            bob.heard.add(3)
            await alice.send("dev", "m3")  # heard: shows the gap, a repair starts
            await asyncio.wait_for(bob.history_waiting.wait(), 5)
            await bob.part("dev")
            await alice.send("dev", "m4")
            assert (await bob.join("dev")).last_seq == 4
            bob.heard.add(5)
            await alice.send("dev", "m5")
            await bob.ping()  # (in case #5 came before the new subscription took effect)
            assert await handed(bob, "dev") == [5]
            bob.history_gate.set()  # the old repair's page comes now
            assert await handed(bob, "dev") == []
            assert bob.last_seq("dev") == 5

    with running_broker(heartbeat_interval_s=30.0, heartbeat_timeout_s=90.0) as h:
        run(scenario(h))


def test_live_messages_heard_during_a_repair_wait_for_the_gap_before_them() -> None:
    """Messages heard live while a gap before them is fetched are handed on after it, in
    order, and none twice."""

    async def scenario(h: Harness) -> None:
        async with h.client("alice") as alice, filtering_bob(h) as bob:
            await alice.join("dev")
            await bob.join("dev")
            for i in range(1, 6):
                await alice.send("dev", f"m{i}")  # all lost on the way to bob
            bob.history_gate.clear()
            bob.history_waiting.clear()
            bob.heard.update({6, 7, 8})
            for i in (6, 7, 8):
                await alice.send("dev", f"m{i}")
            await asyncio.wait_for(bob.history_waiting.wait(), 5)
            assert await handed(bob, "dev", 0.2) == []  # 6..8 wait for 1..5
            bob.history_gate.set()
            assert await handed(bob, "dev") == list(range(1, 9))

    with running_broker(heartbeat_interval_s=30.0, heartbeat_timeout_s=90.0) as h:
        run(scenario(h))


def test_a_message_heard_before_the_join_reply_is_kept_not_fetched_again() -> None:
    """A message posted just after the broker handled our JOIN can arrive on the SUB
    before the JOIN reply: it is kept for the room and handed on, with no HISTORY."""

    class SlowJoin(FilteringClient):
        async def request(self, req: p.Request, timeout_s: float | None = None) -> Any:
            reply = await super().request(req, timeout_s)
            if isinstance(req, p.Join):
                # the broker has our JOIN; a message is published before we read the reply
                await alice_posts()
                await asyncio.wait_for(heard_early.wait(), 5)
            return reply

    heard_early = asyncio.Event()
    alice: Client

    async def alice_posts() -> None:
        await alice.send("dev", "right after the join")

    async def scenario(h: Harness) -> None:
        nonlocal alice
        async with h.client("alice") as alice:
            bob = SlowJoin(h.server, context=h.context, room="dev")
            bob.heard.update(range(1, 10))
            await bob.connect()
            try:
                await bob.register("bob", "correct horse battery staple")
                await bob.login("bob", "correct horse battery staple")
                await alice.join("dev")
                original = bob._on_room_message

                async def noting(msg: p.MessagePosted) -> None:
                    await original(msg)
                    heard_early.set()

                bob._on_room_message = noting  # type: ignore[method-assign]
                bob.history_gate.clear()  # no HISTORY may be needed
                bob.history_waiting.clear()
                assert (await bob.join("dev")).last_seq == 0
                assert await handed(bob, "dev") == [1]
                assert not bob.history_waiting.is_set()
            finally:
                await bob.close()

    with running_broker(heartbeat_interval_s=30.0, heartbeat_timeout_s=90.0) as h:
        run(scenario(h))


def test_catch_up_pings_count_from_the_latest_room_followed(monkeypatch: Any) -> None:
    """The catch-up PINGs (session.CATCH_UP_PINGS_S) are timed from the latest room the
    client started following: a JOIN just before the login's last catch-up PING still
    gets its own (before, it got none, and a message lost on the new subscription waited
    for the heartbeat interval)."""
    monkeypatch.setattr(session, "CATCH_UP_PINGS_S", (0.2, 0.4))

    async def scenario(h: Harness) -> None:
        async with h.client("bob") as bob:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(0.3)  # places the JOIN between the login's two catch-ups
            await bob.join("dev")
            joined = loop.time()
            whens = sorted(t.when() for t in bob._catch_up_timers)
            assert len(whens) >= 2
            assert whens[0] >= joined + 0.2 - 0.05, (whens, joined)
            assert whens[-1] >= joined + 0.4 - 0.05, (whens, joined)

    with running_broker(heartbeat_interval_s=30.0, heartbeat_timeout_s=90.0) as h:
        run(scenario(h))
