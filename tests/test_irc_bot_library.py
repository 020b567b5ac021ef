"""Bots written with the ``irc`` library from PyPI (jaraco's ``irc.client`` and
``irc.bot``) through the gateway, as IRC bot authors write them (issue 17): a real broker
(in-process, tests/conftest.py ``harness``), the real gateway on a free loopback port,
the bot's reactor in a thread of its own (``Reactor.process_once`` in a loop, as the
library allows for an outside main loop), and a native zchat client on the other side.

Also what the library makes of the gateway's lines: ``nick!user@host`` sources, IRCv3
tags, ISUPPORT (005) in ``connection.features``, SASL PLAIN with ``sasl_login``.
Every wait is on an event with a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import irc.bot
import irc.client
from conftest import run
from irc_helpers import gateway

from zchat.testing import DEFAULT_PASSWORD, Harness, next_dm, next_message

WAIT_S = 8.0
#: The bot account's password. irc.client sends PASS without a ':' before its last
#: parameter, so a password with a space would be cut at the space (the library's
#: limit, not the gateway's): bot authors give ``account:password`` without spaces.
BOT_PASSWORD = "bot-pass-5e2d"


class Events:
    """Every event of a connection, recorded by the reactor's thread; the test's thread
    waits for one that matches."""

    def __init__(self) -> None:
        self.seen: list[irc.client.Event] = []
        self._changed = threading.Condition()

    def record(self, _connection: irc.client.ServerConnection,
               event: irc.client.Event) -> None:
        with self._changed:
            self.seen.append(event)
            self._changed.notify_all()

    def wait(self, pred: Callable[[irc.client.Event], bool], what: str,
             timeout_s: float = WAIT_S, start: int = 0) -> irc.client.Event:
        """The first event from index ``start`` on that matches ``pred``; AssertionError
        after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        with self._changed:
            while True:
                for event in self.seen[start:]:
                    if pred(event):
                        return event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"no {what} in {timeout_s} s; seen "
                                         + "\n".join(map(str, self.seen)))
                self._changed.wait(remaining)

    async def next(self, kind: str, what: str = "", timeout_s: float = WAIT_S,
                   start: int = 0, **fields: Any) -> irc.client.Event:
        """From the event loop: the first event of type ``kind`` (from ``start``) whose
        attributes equal ``fields`` (``nick`` is the source's nick)."""
        def pred(event: irc.client.Event) -> bool:
            values = {"nick": irc.client.NickMask(event.source or "").nick,
                      "target": event.target, "arguments": event.arguments}
            return event.type == kind and all(values[k] == v for k, v in fields.items())
        return await asyncio.to_thread(self.wait, pred, what or f"{kind} {fields}",
                                       timeout_s, start)


class NoReconnect(irc.bot.ReconnectStrategy):
    """A test's bot ends with the test: no reconnecting (the default waits 60 s)."""

    def run(self, bot: irc.bot.SingleServerIRCBot) -> None:
        pass


class PingBot(irc.bot.SingleServerIRCBot):
    """A bot as its authors write one: joins its channel once welcomed, answers ``!ping``
    in a channel, and answers a private message."""

    def __init__(self, port: int, channel: str) -> None:
        super().__init__([irc.bot.ServerSpec("127.0.0.1", port, f"pingbot:{BOT_PASSWORD}")],
                         "pingbot", "Ping Bot", recon=NoReconnect())
        self.channel = channel
        self.events = Events()
        self.reactor.add_global_handler("all_events", self.events.record, -30)

    def on_welcome(self, connection: irc.client.ServerConnection,
                   event: irc.client.Event) -> None:
        connection.join(self.channel)

    def on_pubmsg(self, connection: irc.client.ServerConnection,
                  event: irc.client.Event) -> None:
        if event.arguments[0] == "!ping":
            connection.privmsg(event.target, f"{event.source.nick}: pong")

    def on_privmsg(self, connection: irc.client.ServerConnection,
                   event: irc.client.Event) -> None:
        connection.privmsg(event.source.nick, f"you said: {event.arguments[0]}")


@contextlib.contextmanager
def reactor_thread(reactor: irc.client.Reactor, connect: Callable[[], object]
                   ) -> Iterator[None]:
    """``connect()`` (it opens the connection), then the reactor's loop in a thread
    until the block ends; every connection of the reactor is closed then."""
    connect()
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            reactor.process_once(timeout=0.05)  # select() for 50 ms, then look at stop

    thread = threading.Thread(target=loop, name="irc-reactor", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(WAIT_S)
        assert not thread.is_alive(), "the irc library's reactor did not stop"
        reactor.disconnect_all()


async def quit_and_wait(connection: irc.client.ServerConnection, events: Events) -> None:
    """QUIT, then the gateway's ERROR and the end of the connection."""
    start = len(events.seen)
    with connection.reactor.mutex:
        connection.quit("bye")
    await events.next("error", start=start)
    await events.next("disconnect", start=start)


def _time_tag(ms: int) -> str:
    """server-time's form (https://ircv3.net/specs/extensions/server-time)."""
    return datetime.datetime.fromtimestamp(ms / 1000, datetime.UTC) \
        .strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


def test_a_bot_answers_ping_and_private_messages(harness: Harness) -> None:
    """An irc.bot.SingleServerIRCBot logged in with PASS joins #dev, answers ``!ping``
    from a zchat user and a DM, sees a zchat /me as an ``action`` event and the
    gateway's playback NOTICE as a ``pubnotice``; its /me and NOTICE reach zchat."""
    async def scenario() -> None:
        async with harness.client("pingbot", password=BOT_PASSWORD) as bot_account:
            await bot_account.logout()
        async with gateway(harness, autojoin=False) as (_gw, port), harness.client("carol") as carol:
            await carol.join("dev")
            before = await carol.send("dev", "said before the bot came")
            bot = PingBot(port, "#dev")
            with reactor_thread(bot.reactor, bot._connect):  # what bot.start() does first
                events = bot.events
                await events.next("welcome")
                await events.next("join", nick="pingbot", target="#dev")
                await events.next("endofnames")
                # NAMES parsed with the gateway's PREFIX: carol, the room's owner, is @
                channel = bot.channels["#dev"]
                assert sorted(channel.users()) == ["carol", "pingbot"]
                assert channel.is_oper("carol") and not channel.is_oper("pingbot")
                # the playback on JOIN: the server's NOTICE to the channel, then the
                # message, its time in front (no server-time asked for)
                notice = await events.next("pubnotice", target="#dev")
                assert notice.source == "irc.zchat"
                assert notice.arguments == ["Playback of the last message of #dev"]
                stamp = datetime.datetime.fromtimestamp(before.time / 1000, datetime.UTC)
                await events.next("pubmsg", nick="carol", arguments=[
                    f"[{stamp:%Y-%m-%d %H:%M}Z] said before the bot came"])

                await carol.send("dev", "!ping")
                ping = await events.next("pubmsg", arguments=["!ping"])
                assert ping.source == "carol!~u@zchat"
                assert (ping.source.nick, ping.source.user, ping.source.host) == \
                    ("carol", "~u", "zchat")
                pong = await next_message(carol, "dev", sender="pingbot", timeout_s=WAIT_S)
                assert (pong.text, pong.kind) == ("carol: pong", "text")

                await carol.dm("pingbot", "hello bot")
                dm = await events.next("privmsg", nick="carol", arguments=["hello bot"])
                assert dm.target == "pingbot"
                answer = await next_dm(carol, sender="pingbot", timeout_s=WAIT_S)
                assert answer.text == "you said: hello bot"

                await carol.send("dev", "waves", kind="action")
                await events.next("ctcp", nick="carol", target="#dev",
                                  arguments=["ACTION", "waves"])
                await events.next("action", nick="carol", target="#dev", arguments=["waves"])

                with bot.reactor.mutex:
                    bot.connection.action("#dev", "dances")
                got = await next_message(carol, "dev", sender="pingbot", timeout_s=WAIT_S)
                assert (got.text, got.kind) == ("dances", "action")
                with bot.reactor.mutex:  # zchat has no notices: a NOTICE posts a message
                    bot.connection.notice("#dev", "a notice from the bot")
                got = await next_message(carol, "dev", sender="pingbot", timeout_s=WAIT_S)
                assert (got.text, got.kind) == ("a notice from the bot", "text")

                await quit_and_wait(bot.connection, events)

    run(scenario(), timeout_s=30)


def test_the_library_reads_the_gateways_lines_as_it_expects(harness: Harness) -> None:
    """SASL PLAIN with ``sasl_login`` (a password with spaces), ISUPPORT in
    ``connection.features``, the server's name, IRCv3 tags after a CAP REQ, and a wrong
    password as the library's ``login_failed`` event."""
    async def scenario() -> None:
        async with harness.client("alice") as alice:
            await alice.logout()
        async with gateway(harness, autojoin=False) as (_gw, port), harness.client("carol") as carol:
            await carol.join("dev")
            reactor = irc.client.Reactor()
            events = Events()
            reactor.add_global_handler("all_events", events.record, -30)
            conn = reactor.server()
            with reactor_thread(reactor, lambda: conn.connect(
                    "127.0.0.1", port, "alice", password=DEFAULT_PASSWORD,
                    sasl_login="alice")):
                await events.next("saslsuccess")
                await events.next("welcome")
                await events.next("featurelist")
                assert conn.get_nickname() == "alice"
                assert conn.get_server_name() == "irc.zchat"
                f = conn.features
                assert f.chantypes == "#"
                assert dict(f.prefix) == {"@": "o"}
                assert f.casemapping == "ascii"
                assert (f.nicklen, f.channellen, f.topiclen, f.kicklen, f.awaylen) == \
                    (32, 33, 300, 200, 200)
                assert f.chanmodes == ["b", "", "", "imnt"]
                assert f.network == "zchat"
                assert f.chanlimit == {"#": 1000}
                assert (f.targmax["PRIVMSG"], f.targmax["NOTICE"], f.targmax["JOIN"]) == \
                    (1, 1, None)

                start = len(events.seen)
                with reactor.mutex:
                    conn.cap("REQ", "server-time", "message-tags", "account-tag")
                ack = await events.next("cap", start=start)
                assert ack.arguments[0] == "ACK"
                assert set(ack.arguments[1].split()) == {"server-time", "message-tags",
                                                         "account-tag"}
                with reactor.mutex:
                    conn.join("#dev")
                await events.next("endofnames")
                sent = await carol.send("dev", "tagged; with = signs\\ and spaces")
                msg = await events.next("pubmsg", nick="carol", target="#dev")
                assert msg.arguments == ["tagged; with = signs\\ and spaces"]
                assert {t["key"]: t["value"] for t in msg.tags} == {
                    "time": _time_tag(sent.time), "msgid": f"dev/{sent.seq}",
                    "account": "carol"}
                await quit_and_wait(conn, events)

            # a wrong SASL password: the library's login_failed event (904's text)
            reactor = irc.client.Reactor()
            events = Events()
            reactor.add_global_handler("all_events", events.record, -30)
            conn = reactor.server()
            with reactor_thread(reactor, lambda: conn.connect(
                    "127.0.0.1", port, "alice", password="not the password",
                    sasl_login="alice")):
                failed = await events.next("login_failed")
                # irc 20.5 builds this event with the 904's parameters as its target
                assert failed.target == ["SASL authentication failed: wrong name or password"]
                # then CAP END, with no login: the gateway says ERROR and closes
                error = await events.next("error")
                await events.next("disconnect")
                assert not any(e.type == "welcome" for e in events.seen), error

    run(scenario(), timeout_s=30)
