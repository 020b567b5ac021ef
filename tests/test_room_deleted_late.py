"""A ROOM_DELETED read late, after the application has already joined a new room of the
same name (docs/PROTOCOL.md §6.52.1, ``first_seq``), against a real broker (inproc, real
SQLite). A fresh tester's repro: a client whose event queue was full (so its SUB reader
waited, the deletion unread) joined the room again, which made a new one; when the old
deletion was finally read, the client stopped following the new room, and its messages,
the client's own included, were never handed on."""

from __future__ import annotations

from conftest import run

from zchat import wire as p
from zchat.client.client import Client
from zchat.testing import Harness, running_broker


async def drain(client: Client, quiet_s: float = 0.5) -> list[p.Message]:
    """Every event handed to the application until ``quiet_s`` passes with none."""
    events = []
    while (event := await client.next_event(quiet_s)) is not None:
        events.append(event)
    return events


def test_a_late_deletion_of_the_old_room_leaves_the_new_one_followed() -> None:
    async def scenario(h: Harness) -> None:
        async with h.client("alice") as alice, h.client("bob") as bob:
            bob.event_queue_max = 3  # bob's application falls behind: his reader waits
            await alice.join("r")
            await bob.join("r")
            for i in range(1, 6):
                await alice.send("r", f"old {i}")
            await alice.delete_room("r")  # bob's client cannot read this yet
            joined = await bob.join("r")  # a new room of that name, numbered on
            assert (joined.created, joined.last_seq, joined.first_seq) == (True, 5, 6)
            await alice.join("r")
            for i in range(3):
                await alice.send("r", f"new {i}")
            for i in range(2):
                await bob.send("r", f"mine {i}")
            events = await drain(bob)
            seqs = [e.seq for e in events if isinstance(e, p.MessagePosted)]
            # what of the old room was queued before the deletion (at most the queue's
            # three; how many reached the queue is a race), then the whole new room: its
            # first message is 6, and none is missing or repeated
            old = [s for s in seqs if s < 6]
            assert old == list(range(1, len(old) + 1)) and len(old) <= 3
            assert seqs[len(old):] == [6, 7, 8, 9, 10]
            assert not [e for e in events if isinstance(e, p.RoomDeleted)]
            await bob.ping()
            assert bob.last_seq("r") == 10
            await alice.send("r", "still followed")
            later = await drain(bob, 0.3)
            assert [e.seq for e in later if isinstance(e, p.MessagePosted)] == [11]

    with running_broker(heartbeat_interval_s=30.0, heartbeat_timeout_s=90.0) as h:
        run(scenario(h))


def test_the_deletion_of_the_followed_room_still_ends_following_it() -> None:
    """The ROOM_DELETED of the room the client follows (same ``first_seq``, also for a
    room made again under a deleted one's name) still stops following it."""

    async def scenario(h: Harness) -> None:
        async with h.client("alice") as alice, h.client("bob") as bob:
            for _ in range(2):  # a first room, then one made under its name
                await alice.join("r")
                joined = await bob.join("r")
                await alice.send("r", "hello")
                await alice.delete_room("r")
                events = await drain(bob, 0.3)
                deleted = [e for e in events if isinstance(e, p.RoomDeleted)]
                assert [d.first_seq for d in deleted] == [joined.first_seq]
                assert "r" not in bob.rooms
            assert joined.first_seq == 2

    with running_broker(heartbeat_interval_s=30.0, heartbeat_timeout_s=90.0) as h:
        run(scenario(h))
