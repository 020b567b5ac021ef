"""Protocol additions for the IRC gateway (issue 17), against real brokers: notices
(SEND/DM ``notice``, docs/PROTOCOL.md §6.8), PART reasons (§6.6, carried by LEFT) and
sessions that announce no presence (LOGIN ``presence`` false, §6.3, §8) — on SQLite and
PostgreSQL (``any_harness``), on a PostgreSQL cluster of two brokers, and through the
``zchat`` command line as subprocesses over tcp with CurveZMQ."""

from __future__ import annotations

import asyncio
import datetime as dt
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar, Literal

import msgspec
import pytest
from cli_helpers import json_lines, ok, register, zchat
from client_helpers import collect, is_
from conftest import TcpBroker, run

from zchat import wire as p
from zchat.bot import Bot, Context
from zchat.client import Client
from zchat.client.sync import SyncClient
from zchat.console.view import line_from_event, render_line
from zchat.errors import RequestFailed
from zchat.testing import DEFAULT_PASSWORD, Harness, next_message, running_cluster


@pytest.fixture
def harness(any_harness: Harness) -> Iterator[Harness]:
    yield any_harness


async def _sentinel(observer: Client, poster: Client, room: str) -> list[object]:
    """Everything ``observer`` hears up to a message ``poster`` posts now in ``room``:
    PUB keeps one broker's order, so an event published before it is in the list."""
    await poster.send(room, "sentinel")
    return await collect(observer, is_(p.MessagePosted, text="sentinel"))


def _presence_of(events: list[object], name: str) -> list[p.PresenceChanged]:
    return [e for e in events if isinstance(e, p.PresenceChanged) and e.name == name]


# -- notices ------------------------------------------------------------------------------


def test_a_notice_is_stored_and_delivered_as_a_notice(harness: Harness) -> None:
    async def scenario() -> None:
        async with harness.client("alice") as alice, harness.client("bob") as bob:
            await bob.logout()
            await alice.join("dev")
            await alice.send("dev", "plain")
            await alice.send("dev", "heads up", notice=True)
            await alice.dm("bob", "psst", notice=True)
            await alice.dm("bob", "hello")
            page = await alice.history("dev", limit=5)
            assert [(m.text, m.kind, m.notice) for m in page.messages] == \
                [("plain", "text", False), ("heads up", "text", True)]
            dms = await alice.dm_history("bob", limit=5)
            assert [(m.text, m.notice) for m in dms.messages] == \
                [("psst", True), ("hello", False)]
        # stored: the pending DMs of a later login keep it
        async with harness.client("bob") as bob:
            pending = await collect(bob, is_(p.DirectMessage, text="hello"))
            assert [(e.text, e.notice) for e in pending if isinstance(e, p.DirectMessage)] \
                == [("psst", True), ("hello", False)]
            await bob.join("dev")
            async with harness.client("alice") as alice:
                await alice.send("dev", "live notice", notice=True)
                live = await next_message(bob, "dev")
                assert (live.text, live.kind, live.notice) == ("live notice", "text", True)
                await alice.dm("bob", "live dm notice", notice=True)
                got = await collect(bob, is_(p.DirectMessage, text="live dm notice"))
                assert got[-1].notice is True  # type: ignore[attr-defined]

    run(scenario())


def test_a_notice_is_text_only(harness: Harness) -> None:
    async def scenario() -> None:
        async with harness.client("alice") as alice:
            await alice.join("dev")
            with pytest.raises(RequestFailed) as refused:
                await alice.send("dev", "waves", kind="action", notice=True)
            assert refused.value.status == 400 and "notice" in refused.value.reason
            assert (await alice.history("dev", limit=5)).messages == ()

    run(scenario())


class _OldMessagePosted(msgspec.Struct, frozen=True):
    """MESSAGE as a client from before notices reads it (zchat/wire/events.py then)."""

    room: str
    seq: int
    time: int
    sender: str
    text: str
    kind: Literal["text", "action"] = "text"
    deleted_by: str = ""


def test_an_older_client_reads_a_notice_as_text() -> None:
    """A notice is ``kind`` "text" with ``notice``: a client that knows no notices reads
    it as text (it ignores the field, §13); a ``kind`` "notice" would fail its decoder."""
    event = p.MessagePosted(room="dev", seq=3, time=1, sender="alice", text="hi",
                            notice=True)
    body = p.encode_event(p.room_topic("dev"), event)[3]
    old = msgspec.json.decode(body, type=_OldMessagePosted)
    assert (old.kind, old.text) == ("text", "hi")
    with pytest.raises(msgspec.ValidationError):
        msgspec.json.decode(body.replace(b'"kind":"text"', b'"kind":"notice"'),
                            type=_OldMessagePosted)


class _OldSend(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """SEND as a broker from before notices reads it: unknown fields are refused."""

    TYPE: ClassVar[str] = "SEND"
    room: str
    text: str
    kind: Literal["text", "action"] = "text"
    cmid: str = ""


def test_added_request_fields_are_left_out_unless_used() -> None:
    """``notice``, PART's ``reason`` and LOGIN's ``presence`` are sent only when used, so
    an older broker (which refuses unknown fields) gets the request it knows (§13)."""
    plain = p.encode_body(p.Send(room="dev", text="hi", cmid="c1"))
    assert b"notice" not in plain
    assert msgspec.json.decode(plain, type=_OldSend) == _OldSend("dev", "hi", "text", "c1")
    assert b'"notice":true' in p.encode_body(p.Send(room="dev", text="hi", notice=True))
    assert p.encode_body(p.Part(room="dev")) == b'{"room":"dev"}'
    assert p.encode_body(p.Login(name="a", password="x")) == \
        b'{"name":"a","password":"x","token":""}'
    assert p.decode_body(p.Part, b'{"room":"dev"}').reason is p.UNSET
    assert typing.get_type_hints(p.Login)["presence"] == bool | msgspec.UnsetType


# -- PART reasons -------------------------------------------------------------------------


def test_a_part_reason_reaches_the_other_members(harness: Harness) -> None:
    async def scenario() -> None:
        async with harness.client("alice") as alice, harness.client("bob") as bob:
            await alice.join("dev")
            await bob.join("dev")
            for bad, status in (("x" * 201, 413), ("bye\x07", 422), ("two\nlines", 422),
                                ("   ", 422)):
                with pytest.raises(RequestFailed) as refused:
                    await alice.part("dev", reason=bad)
                assert refused.value.status == status, bad
            # refused: alice is still in (a message of hers is taken)
            await alice.send("dev", "still here")
            await alice.part("dev", reason="off to lunch")
            left = await collect(bob, is_(p.UserLeft, name="alice"))
            assert (left[-1].reason, left[-1].by) == ("off to lunch", "")  # type: ignore[attr-defined]
            await bob.part("dev")  # no reason: as before

    run(scenario())


# -- sessions that announce no presence ---------------------------------------------------


def test_a_session_without_presence_never_changes_the_presence(harness: Harness) -> None:
    async def scenario() -> None:
        async with harness.client("olga") as olga, harness.client("alice") as alice:
            await alice.logout()
            await olga.join("dev")
            await _sentinel(olga, olga, "dev")  # alice's own offline is behind us
            script = harness.new_client()
            await script.connect()
            try:
                await script.login("alice", DEFAULT_PASSWORD, presence=False)
                await script.join("dev")
                await script.send("dev", "from a script")
                assert {u.name: u.presence for u in (await olga.who("dev")).users}["alice"] \
                    == "offline"
                with pytest.raises(RequestFailed) as refused:
                    await script.set_presence("away", "scripting")
                assert refused.value.status == 409
                events = await _sentinel(olga, olga, "dev")
                assert _presence_of(events, "alice") == []
                assert [e.text for e in events if isinstance(e, p.MessagePosted)
                        and e.sender == "alice"] == ["from a script"]
                # a normal session makes alice online once; the script's coming and going
                # meanwhile changes nothing, and the normal session's end is offline
                # although the script's session is still there
                async with harness.client("alice", register=False) as phone:
                    await script.logout()
                    await script.login("alice", DEFAULT_PASSWORD, presence=False)
                    await phone.logout()
                events = await _sentinel(olga, olga, "dev")
                assert [e.presence for e in _presence_of(events, "alice")] == \
                    ["online", "offline"]
                # still a normal session otherwise: DMs reach it
                await olga.dm("alice", "for the script")
                await collect(script, is_(p.DirectMessage, text="for the script"))
                await script.logout()
            finally:
                await script.close()
            events = await _sentinel(olga, olga, "dev")
            assert _presence_of(events, "alice") == []

    run(scenario())


def test_sessions_without_presence_are_not_counted_in_a_cluster(pg_url: str) -> None:
    """Brokers decide presence on the database's count of an account's sessions: a
    session without presence on one broker must not keep the account online for another,
    nor hide its online."""
    async def scenario(one: Harness, two: Harness) -> None:
        async with two.client("alice") as reg:
            await reg.logout()
        async with one.client("olga") as olga, two.client("carol") as carol:
            await olga.join("dev")
            await carol.join("dev")
            await _sentinel(olga, carol, "dev")  # alice's own online and offline: past
            script = two.new_client()
            await script.connect()
            try:
                await script.login("alice", DEFAULT_PASSWORD, presence=False)
                async with one.client("alice", register=False) as phone:
                    await phone.logout()
                events = await _sentinel(olga, olga, "dev")
                assert [e.presence for e in _presence_of(events, "alice")] == \
                    ["online", "offline"]
                await script.logout()
            finally:
                await script.close()
            events = await _sentinel(olga, carol, "dev")
            assert _presence_of(events, "alice") == []

    with running_cluster(pg_url, 2) as (one, two):
        run(scenario(one, two), timeout_s=60)


# -- the command line ---------------------------------------------------------------------


def test_one_shot_commands_blink_no_presence_and_show_notices(
        tmp_path: Path, tcp_broker: TcpBroker) -> None:
    """`zchat say`, `history`, `who` as subprocesses over tcp (CurveZMQ): an observer
    hears their messages and no PRESENCE of their account; a notice reads ``-alice-``."""
    register(tmp_path, tcp_broker, "alice", "olga")
    server = ("--server", tcp_broker.router)
    with SyncClient(tcp_broker.router) as olga:
        olga.login("olga", DEFAULT_PASSWORD)
        olga.join("dev")
        ok(zchat(tmp_path, "say", *server, "--as", "alice", "--room", "dev", "hello"))
        ok(zchat(tmp_path, "say", *server, "--as", "alice", "--room", "dev", "--notice",
                 "deploy at 5"))
        history = ok(zchat(tmp_path, "history", *server, "--as", "alice", "--room", "dev"))
        as_json = ok(zchat(tmp_path, "history", *server, "--as", "alice", "--room", "dev",
                           "--json"))
        who = ok(zchat(tmp_path, "who", *server, "--as", "alice", "--room", "dev", "--json"))
        parted = ok(zchat(tmp_path, "part", *server, "--as", "alice", "dev", "--reason",
                          "done for today"))
        olga.send("dev", "sentinel")
        heard: list[object] = []
        while not (heard and isinstance(heard[-1], p.MessagePosted)
                   and heard[-1].text == "sentinel"):
            event = olga.next_event(10)
            assert event is not None, f"no sentinel; heard {heard}"
            heard.append(event)
    assert _presence_of(heard, "alice") == []
    assert [(e.text, e.notice) for e in heard if isinstance(e, p.MessagePosted)
            and e.sender == "alice"] == [("hello", False), ("deploy at 5", True)]
    lines = history.stdout.splitlines()
    assert lines[-1].endswith("#dev #2 -alice- deploy at 5") and "<alice> hello" in lines[-2]
    assert [(m["text"], m["kind"]) for m in json_lines(as_json.stdout)] == \
        [("hello", "text"), ("deploy at 5", "notice")]
    assert {u["name"]: u["presence"] for u in json_lines(who.stdout)}["alice"] == "offline"
    assert parted.stdout.strip() == "left #dev"
    assert [e.reason for e in heard if isinstance(e, p.UserLeft) and e.name == "alice"] \
        == ["done for today"]


def test_the_console_shows_notices_and_part_reasons() -> None:
    notice = line_from_event(p.MessagePosted(room="dev", seq=1, time=0, sender="alice",
                                             text="deploy at 5", notice=True), "bob")
    rows = render_line(notice, 60, "bob", dt.UTC)
    assert "-alice-" in "".join(t for _s, t in rows[0])
    plain = line_from_event(p.MessagePosted(room="dev", seq=2, time=0, sender="alice",
                                            text="hi"), "bob")
    assert "-alice-" not in "".join(t for _s, t in render_line(plain, 60, "bob", dt.UTC)[0])
    left = line_from_event(p.UserLeft(room="dev", name="alice", time=0, reason="lunch"),
                           "bob")
    assert left.text == "alice left #dev: lunch"



# -- bots never answer a notice -----------------------------------------------------------


def test_a_bot_hands_notices_only_to_on_notice_handlers(zchat_broker: Harness) -> None:
    """A notice reads ``!ping`` and would match every handler: only ``on_notice`` gets it
    (RFC 2812 §3.3.2), in a room and by DM; the bot answers plain text as before, and
    its own answers may be notices."""
    bot = Bot("helper", rooms=("dev",))
    calls: list[tuple[str, str]] = []

    @bot.on_command("ping")
    async def ping(ctx: Context) -> None:
        calls.append(("command", ctx.text))
        await ctx.reply("pong", notice=True)

    @bot.on_message(room="dev")
    async def message(ctx: Context) -> None:
        calls.append(("message", ctx.text))

    @bot.on_dm()
    async def dm(ctx: Context) -> None:
        calls.append(("dm", ctx.text))

    both_notices = asyncio.Event()

    @bot.on_notice()
    async def notice(ctx: Context) -> None:
        calls.append(("notice", "dm" if ctx.is_dm else ctx.room or ""))
        if sum(kind == "notice" for kind, _ in calls) == 2:
            both_notices.set()

    async def scenario() -> None:
        async with zchat_broker.run_bot(bot), zchat_broker.client("alice") as alice:
            await alice.join("dev")
            await alice.send("dev", "!ping", notice=True)
            await alice.dm("helper", "!ping", notice=True)
            await alice.send("dev", "!ping")
            pong = await next_message(alice, "dev", sender="helper")
            assert (pong.text, pong.notice) == ("pong", True)
            await asyncio.wait_for(both_notices.wait(), 5)

    run(scenario())
    # a DM (a push) and a room message (PUB) may come in either order
    assert sorted(calls) == [("command", "!ping"), ("notice", "dev"), ("notice", "dm")]
