"""Late joiners (docs/PROTOCOL.md §14): a client's SUB subscription reaches the PUB socket
some time after its LOGIN or JOIN reply, so messages posted in between are not delivered
live. The client knows the room's last sequence number from the reply and repairs the gap
from HISTORY. These tests log in and join while another client posts without pause, many
times over, so that the window is hit for real; every message after the reply's
``last_seq`` must then arrive exactly once, in order."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from conftest import run

from zchat import wire as p
from zchat.client.client import Client
from zchat.testing import DEFAULT_PASSWORD, Harness, running_broker

ROUNDS = 15


class Poster:
    """Posts to ``room`` as ``alice`` without pause until stopped; ``posted`` holds each
    OK'd seq, ``until(pred)`` waits (at most 10 s) until ``pred(posted)`` holds."""

    def __init__(self, alice: Client, room: str) -> None:
        self.posted: list[int] = []
        self._changed = asyncio.Condition()
        self._stop = False
        self._task = asyncio.create_task(self._run(alice, room))

    async def _run(self, alice: Client, room: str) -> None:
        i = 0
        while not self._stop:
            seq = (await alice.send(room, f"flow {i}")).seq
            i += 1
            async with self._changed:
                self.posted.append(seq)
                self._changed.notify_all()

    async def until(self, pred: Callable[[list[int]], bool]) -> None:
        async with asyncio.timeout(10), self._changed:
            await self._changed.wait_for(lambda: pred(self.posted))

    async def stop(self) -> list[int]:
        self._stop = True
        await self._task
        return self.posted


async def _messages_until(client: Client, room: str, last: int,
                          timeout_s: float = 10.0) -> list[int]:
    """Sequence numbers of ``room`` delivered to ``client`` until ``last`` arrives."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    seqs: list[int] = []
    while not seqs or seqs[-1] < last:
        remaining = deadline - loop.time()
        event = await client.next_event(remaining) if remaining > 0 else None
        if event is None:
            raise AssertionError(f"{client.name} got {seqs[-5:]} of #{room}, not up to "
                                 f"#{last}, within {timeout_s} s")
        if isinstance(event, p.MessagePosted) and event.room == room:
            seqs.append(event.seq)
    return seqs


def test_a_client_logging_in_while_a_room_is_busy_gets_every_later_message_once() -> None:
    async def main(h: Harness) -> None:
        async with h.client("alice") as alice, h.client("bob") as bob_setup:
            await alice.join("busy")
            await bob_setup.join("busy")
            await bob_setup.logout()
            for _ in range(ROUNDS):
                poster = Poster(alice, "busy")
                await poster.until(lambda s: len(s) >= 3)  # busy before bob logs in
                bob = h.new_client()
                await bob.connect()
                try:
                    reply = await bob.login("bob", DEFAULT_PASSWORD)
                    start = {r.room: r.last_seq for r in reply.rooms}["busy"]
                    await poster.until(lambda s, start=start: s[-1] > start + 5)
                    posted = await poster.stop()
                    seqs = await _messages_until(bob, "busy", posted[-1])
                    assert seqs == list(range(start + 1, posted[-1] + 1))
                    await bob.logout()
                finally:
                    await bob.close()

    # A long heartbeat: only the next live message, not a PONG, can reveal the gap.
    with running_broker(heartbeat_interval_s=30.0, heartbeat_timeout_s=90.0,
                        send_rate_per_s=0.0) as h:  # posts without pause on purpose
        run(main(h), timeout_s=60)


def test_a_client_joining_a_busy_room_gets_every_message_after_its_join_once() -> None:
    async def main(h: Harness) -> None:
        async with h.client("alice") as alice, h.client("bob") as bob:
            for n in range(ROUNDS):
                room = f"busy{n}"
                await alice.join(room)
                poster = Poster(alice, room)
                await poster.until(lambda s: len(s) >= 3)
                start = (await bob.join(room)).last_seq
                await poster.until(lambda s, start=start: s[-1] > start + 5)
                posted = await poster.stop()
                seqs = await _messages_until(bob, room, posted[-1])
                assert seqs == list(range(start + 1, posted[-1] + 1))

    # posts without pause on purpose; creates ROUNDS rooms, over the room-creation burst
    with running_broker(heartbeat_interval_s=30.0, heartbeat_timeout_s=90.0,
                        send_rate_per_s=0.0, room_create_rate_per_s=0.0) as h:
        run(main(h), timeout_s=60)


def test_a_join_is_followed_by_a_catch_up_heartbeat_long_before_the_interval() -> None:
    """With the shipped 10 s heartbeat a message posted before a new subscription took
    effect would wait up to 10 s for the next PONG; the client sends a catch-up PING
    about half a second after it starts following a room (session.CATCH_UP_PINGS_S in zchat/client/session.py)."""

    async def scenario(h: Harness) -> None:
        async with h.client("bob") as bob:
            assert bob.rtt_s is None  # no heartbeat yet: the first is 10 s away
            await bob.join("dev")
            # Within 5 s, so from the catch-up: the interval's PING is 10 s away.
            async with asyncio.timeout(5):
                while bob.rtt_s is None:
                    await asyncio.sleep(0.05)  # polling a client attribute, not a socket

    with running_broker(heartbeat_interval_s=10.0, heartbeat_timeout_s=30.0) as h:
        run(scenario(h), 20)
