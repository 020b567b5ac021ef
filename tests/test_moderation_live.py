"""Moderation and private rooms against a real broker (docs/PROTOCOL.md §17, §6.30-§6.41):
real zmq sockets on inproc:// with the broker thread and real SQLite, driven by the
asyncio Client, plus one raw SUB socket eavesdropping on the broker's PUB endpoint.

Nothing here sleeps to wait for a socket: events are awaited with deadlines, and the
eavesdropper is known to be connected once it has received a public canary message.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import zmq
import zmq.asyncio
from conftest import run

from zchat import wire as p
from zchat.errors import RequestFailed, Status
from zchat.testing import DEFAULT_PASSWORD, Harness, next_event_of, next_message, running_broker


@pytest.fixture
def h() -> Any:
    with running_broker(admins=("root",)) as harness:
        yield harness



def test_private_room_messages_reach_members_as_pushes_in_order(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("olga") as olga, h.client("mia") as mia, \
                h.client("eve") as eve:
            joined = await olga.join("secret", private=True)
            assert joined.private and joined.created
            with pytest.raises(RequestFailed) as refused:
                await eve.join("secret")
            assert refused.value.status == Status.CONFLICT  # §17.2: the name is taken
            await olga.invite("secret", "mia")
            invited = await next_event_of(mia, p.Invited)
            assert (invited.room, invited.by) == ("secret", "olga")
            await mia.join("secret")
            sent = [await olga.send("secret", f"plan {i}") for i in range(5)]
            got = [await next_message(mia, "secret") for _ in sent]
            assert [(m.seq, m.text) for m in got] == [(s.seq, f"plan {i}")
                                                      for i, s in enumerate(sent)]
            with pytest.raises(RequestFailed) as history:
                await eve.history("secret")
            assert history.value.status == Status.NOT_FOUND  # §17.2: hidden
            assert "secret" not in [r.room for r in (await eve.list_rooms()).rooms]

    run(scenario())


def test_kicked_user_stops_receiving_the_room(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("olga") as olga, h.client("nick") as nick:
            await olga.join("dev")
            await nick.join("dev")
            await olga.send("dev", "before")
            assert (await next_message(nick, "dev")).text == "before"
            await olga.kick("dev", "nick", "off-topic")
            left = await next_event_of(nick, p.UserLeft)
            assert (left.name, left.by, left.reason) == ("nick", "olga", "off-topic")
            assert "dev" not in nick.rooms
            await olga.send("dev", "after the kick")
            await olga.send("lobby", "in lobby")  # nick still follows lobby
            got = await next_message(nick)
            assert (got.room, got.text) == ("lobby", "in lobby")  # nothing from #dev

    run(scenario())


def test_ban_mute_and_lock_over_the_wire(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("olga") as olga, h.client("nick") as nick, \
                h.client("mia") as mia:
            await olga.join("class")
            await nick.join("class")
            await mia.join("class")
            await olga.set_role("class", "mia", "moderator")
            await mia.mute("nick", "class", duration_s=600)
            with pytest.raises(RequestFailed) as muted:
                await nick.send("class", "hello?", patient=False)
            assert muted.value.status == 403 and "muted in #class" in muted.value.reason
            await mia.unmute("nick", "class")
            await olga.set_room("class", locked=True)
            with pytest.raises(RequestFailed) as locked:
                await nick.send("class", "hello?", patient=False)
            assert locked.value.status == 403 and "locked" in locked.value.reason
            assert (await mia.send("class", "lesson 1")).seq >= 1
            await olga.ban("nick", "class", reason="cheating")
            with pytest.raises(RequestFailed) as banned:
                await nick.join("class")
            assert banned.value.status == 403
            assert "banned from #class until lifted: cheating" in banned.value.reason
            with pytest.raises(RequestFailed) as moderating:
                await nick.kick("class", "mia")
            assert moderating.value.status == 403
            bans = (await olga.bans("class")).bans
            assert [(b.kind, b.name) for b in bans] == [("ban", "nick")]

    run(scenario())


def test_deleted_message_is_shown_deleted_and_seq_has_no_hole(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("olga") as olga, h.client("nick") as nick, \
                h.client("root") as root:
            await olga.join("dev")
            await nick.join("dev")
            for text in ("one", "rude", "three"):
                await nick.send("dev", text)
            await olga.delete_message("dev", 2)
            deleted = await next_event_of(nick, p.MessageDeleted)
            assert (deleted.seq, deleted.by) == (2, "olga")
            page = (await nick.history("dev")).messages
            assert [(m.seq, m.text, m.deleted_by) for m in page] == [
                (1, "one", ""), (2, "", "olga"), (3, "three", "")]
            entries = (await root.audit(action="delete")).entries
            assert [(e.actor, e.target, e.detail) for e in entries] == [
                ("olga", "nick", "#2: rude")]
            with pytest.raises(RequestFailed) as refused:
                await olga.audit()  # the whole log is for admins
            assert refused.value.status == 403

    run(scenario())


def test_server_wide_ban_ends_the_session_and_refuses_login(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("root") as root, h.client("nick") as nick:
            await root.ban("nick", reason="abuse")
            with pytest.raises(RequestFailed) as gone:
                await nick.who()
            assert gone.value.status == Status.UNAUTHORIZED
            async with h.client() as again:
                with pytest.raises(RequestFailed) as refused:
                    await again.login("nick", DEFAULT_PASSWORD)
                assert refused.value.status == 403
                assert "banned from this server" in refused.value.reason

    run(scenario())


def test_eavesdropper_on_pub_sees_public_rooms_but_no_dm_private_message_or_secret(
        h: Harness) -> None:
    """A raw SUB on the broker's PUB endpoint, subscribed to everything, while users log in
    with passwords and tokens, exchange DMs and talk in a private room. Public room
    messages DO reach it (so the test can fail); nothing secret does."""
    secrets_seen: list[bytes] = []

    async def scenario() -> None:
        ctx = zmq.asyncio.Context.shadow(h.context.underlying)
        async with h.client("olga", password="olga-pass-Xq7") as olga, \
                h.client("mia", password="mia-pass-Zr4") as mia:
            assert olga.info is not None
            spy = ctx.socket(zmq.SUB)
            spy.setsockopt(zmq.LINGER, 0)
            spy.setsockopt(zmq.SUBSCRIBE, b"")
            spy.connect(olga.info.pub)
            received: list[list[bytes]] = []

            async def drain_until(marker: bytes, timeout_s: float = 5.0) -> bool:
                loop = asyncio.get_running_loop()
                deadline = loop.time() + timeout_s
                while (left := deadline - loop.time()) > 0:
                    if not await spy.poll(int(left * 1000)):
                        break
                    frames = await spy.recv_multipart()
                    received.append(frames)
                    if any(marker in f for f in frames):
                        return True
                return False

            try:
                # the spy is connected once it hears a public canary (slow joiner)
                for i in range(100):
                    await olga.send("lobby", f"canary {i}")
                    if await drain_until(f"canary {i}".encode(), 0.2):
                        break
                else:
                    raise AssertionError("the eavesdropper never connected")
                await olga.join("secret", private=True)
                await olga.invite("secret", "mia")
                await mia.join("secret")
                await olga.send("secret", "PRIVATE-ROOM-TEXT-1")
                await mia.send("secret", "PRIVATE-ROOM-TEXT-2")
                await olga.set_topic("secret", "PRIVATE-TOPIC")
                await olga.dm("mia", "DM-TEXT-olga-to-mia")
                await mia.dm("olga", "DM-TEXT-mia-to-olga")
                token = (await mia.create_token("ci")).token
                async with h.client() as bot:
                    await bot.login("mia", token=token)
                    await bot.send("lobby", "PUBLIC-FROM-TOKEN-SESSION")
                sessions = [olga._state.session or "", mia._state.session or ""]
                await olga.send("lobby", "PUBLIC-END-MARKER")
                assert await drain_until(b"PUBLIC-END-MARKER")
                assert (await next_message(mia, "secret", sender="olga")).text == \
                    "PRIVATE-ROOM-TEXT-1"
            finally:
                spy.close(linger=0)
            wire = b"\n".join(b"".join(f) for f in received)
            # the test can fail: public traffic is visible to a PUB subscriber
            assert b"PUBLIC-END-MARKER" in wire and b"PUBLIC-FROM-TOKEN-SESSION" in wire
            for secret in (b"PRIVATE-ROOM-TEXT-1", b"PRIVATE-ROOM-TEXT-2", b"PRIVATE-TOPIC",
                           b"DM-TEXT-olga-to-mia", b"DM-TEXT-mia-to-olga",
                           b"olga-pass-Xq7", b"mia-pass-Zr4", token.encode(),
                           *(s.encode() for s in sessions if s),
                           p.room_topic("secret")):
                if secret in wire:
                    secrets_seen.append(secret)

    run(scenario())
    assert secrets_seen == []
