"""The gateway's connection limits (one address, connections not yet registered) and
its answers during a broker outage (labeled messages kept, lookups that cannot be
made): real broker, real gateway, real sockets (docs/irc.md, "Connections" and "Broker
outages")."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from client_helpers import RestartableBroker, logged_in
from conftest import run
from irc_helpers import IrcClient, connect, gateway, registered

from zchat.client import Client
from zchat.irc.codec import Message
from zchat.irc.server import ClientOptions, Gateway
from zchat.irc.state import Settings
from zchat.testing import DEFAULT_PASSWORD, Harness


async def _idle(port: int, host: str = "127.0.0.1") -> IrcClient:
    """A connection that sends nothing, from ``host`` (any 127/8 address is loopback)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(host, 0))
    return IrcClient(reader, writer)


async def _held_open(irc: IrcClient, timeout_s: float = 0.3) -> bool:
    """Whether the gateway keeps ``irc`` open (no line, no EOF, for ``timeout_s``)."""
    try:
        raw = await asyncio.wait_for(irc.reader.readline(), timeout_s)
    except TimeoutError:
        return True
    raise AssertionError(f"the gateway answered an idle connection: {raw!r}")


async def _until(condition: Callable[[], bool], timeout_s: float = 5.0) -> None:
    """Wait until ``condition()`` holds (polled on the loop), or fail."""
    async def poll() -> None:
        while not condition():
            await asyncio.sleep(0.01)
    await asyncio.wait_for(poll(), timeout_s)


def test_one_address_cannot_take_every_place_of_the_gateway(harness: Harness) -> None:
    """A tester's 1,000 idle sockets from one address took every place ([irc]
    max_connections) and every real user got "this gateway is full". One address now
    holds at most max_connections_per_address; the next is told why and closed at once,
    and another address (a real user) still gets in."""
    async def scenario() -> None:
        await registered(harness, "alice")
        async with gateway(harness, max_connections=10, max_connections_per_address=3) \
                as (gw, port):
            idle = [await _idle(port) for _ in range(3)]
            for irc in idle:
                assert await _held_open(irc)
            refused = await _idle(port)
            line = await refused.command("ERROR")
            assert line.params == ("Closing link: too many connections from your "
                                   "address (3)",)
            await refused.closed()
            with pytest.raises(AssertionError, match="too many connections from your"):
                await connect(port, "alice")  # a real user from 127.0.0.1: refused too
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=("127.0.0.2", 0))
            other = IrcClient(reader, writer)
            other.send(f"PASS :alice:{DEFAULT_PASSWORD}")
            other.send("NICK alice")
            other.send("USER u 0 * :Real")
            welcome = await other.expect(lambda m: m.command in ("001", "464"), "001")
            assert welcome.command == "001", welcome
            idle[0].close()  # a place of 127.0.0.1 is free again
            await _until(lambda: gw.connections == 3)
            again = await _idle(port)
            assert await _held_open(again)
            for irc in (*idle, refused, other, again):
                irc.close()

    run(scenario(), timeout_s=30)


def test_connections_not_yet_registered_hold_half_the_gateway_at_most(
        harness: Harness) -> None:
    """Many addresses opening sockets that never register cannot fill the gateway:
    they hold half of max_connections at most, the rest stays for logged-in users; and
    they cannot lock new logins out either (a second tester did, from two addresses):
    a new connection closes the oldest one not yet registered rather than being
    refused, so an honest client gets in and registers."""
    async def scenario() -> None:
        await registered(harness, "alice", "bob", "carol", "dave")
        async with gateway(harness, max_connections=4, max_connections_per_address=0) \
                as (gw, port):
            alice = await connect(port, "alice")
            idle = [await _idle(port, f"127.0.0.{i + 2}") for i in range(2)]
            for irc in idle:
                assert await _held_open(irc)
            # an honest login while both places for unregistered ones are held: the
            # oldest idle socket makes room, and bob logs in
            bob = await connect(port, "bob")
            assert not [m for m in await bob.sync() if m.command == "ERROR"]
            line = await idle[0].command("ERROR")
            assert line.params == ("Closing link: Registration timeout: the gateway is busy "
                                   "(too many connections not yet registered); connect "
                                   "again",)
            await idle[0].closed()
            assert await _held_open(idle[1])
            await _until(lambda: gw.connections == 3)
            carol = await connect(port, "carol")  # the fourth place: the gateway is full
            # full, with a socket not yet registered (a third tester's lockout: logged-in
            # users past half, idle sockets in the rest): dave's login closes it
            dave = await connect(port, "dave")
            assert not [m for m in await dave.sync() if m.command == "ERROR"]
            line = await idle[1].command("ERROR")
            assert line.params[0].startswith("Closing link: Registration timeout")
            await idle[1].closed()
            await _until(lambda: gw.connections == 4)
            # full of registered users: refused
            full = await _idle(port, "127.0.0.10")
            line = await full.command("ERROR")
            assert line.params == ("Closing link: this gateway is full (4 connections)",)
            for irc in (alice, bob, carol, dave, full, *idle):
                irc.close()

    run(scenario(), timeout_s=30)


@contextlib.asynccontextmanager
async def _gateway_of(broker: RestartableBroker) -> AsyncIterator[int]:
    gw = Gateway(Settings(autojoin=False),
                 ClientOptions(server=broker.router, reconnect_max_s=0.5))
    _host, port = await gw.start("127.0.0.1", 0)
    try:
        yield port
    finally:
        await gw.shutdown()


async def _broker_lost(broker: RestartableBroker, irc: IrcClient) -> None:
    await asyncio.to_thread(broker.stop)
    await irc.expect(lambda m: m.command == "NOTICE" and "lost" in m.params[-1],
                     "the NOTICE of the lost broker", timeout_s=15)


def _labeled(label: str) -> Callable[[Message], bool]:
    return lambda m: m.tags.get("label") == label


def test_a_labeled_message_kept_through_an_outage_is_answered_with_its_outcome(
        inproc_broker: RestartableBroker) -> None:
    """A tester's: a labeled PRIVMSG kept while the broker was away got ``ACK`` at once,
    and its echo (or FAIL) came unlabeled later: the client believed it sent. The label
    now gets the outcome: the echo once stored; other commands, labeled too, are
    answered meanwhile."""
    async def scenario() -> None:
        await asyncio.to_thread(inproc_broker.start)
        account = await logged_in(inproc_broker, "alice")
        await account.logout()
        await account.close()
        async with _gateway_of(inproc_broker) as port:
            alice = await connect(port, "alice",
                                  caps="echo-message labeled-response batch message-tags")
            alice.send("JOIN #dev")
            await alice.command("366")
            await _broker_lost(inproc_broker, alice)
            alice.send("@label=X1 PRIVMSG #dev :while down")
            kept = await alice.expect(lambda m: m.command == "NOTICE"
                                      and "kept" in m.params[-1], "the NOTICE of kept")
            assert "label" not in kept.tags
            alice.send("@label=P2 PING meanwhile")
            pong = await alice.command("PONG")
            assert pong.tags.get("label") == "P2"
            assert not [m for m in alice.seen if m.tags.get("label") == "X1"]
            await asyncio.to_thread(inproc_broker.start)
            echo = await alice.expect(_labeled("X1"), "X1's answer", timeout_s=20)
            assert (echo.command, echo.params) == ("PRIVMSG", ("#dev", "while down"))
            assert not [m for m in await alice.sync() if m.tags.get("label") == "X1"]
            alice.close()

    run(scenario(), timeout_s=60)


def test_a_labeled_message_the_broker_never_took_gets_its_fail_labeled(
        inproc_broker: RestartableBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without echo-message, a kept labeled message the broker never came back for is
    answered with the FAIL, labeled (it used to get ACK at once, the FAIL unlabeled)."""
    from zchat.irc import server

    monkeypatch.setattr(server, "HELD_FOR_S", 1.5)

    async def scenario() -> None:
        await asyncio.to_thread(inproc_broker.start)
        account = await logged_in(inproc_broker, "alice")
        await account.logout()
        await account.close()
        async with _gateway_of(inproc_broker) as port:
            alice = await connect(port, "alice", caps="labeled-response batch")
            alice.send("JOIN #dev")
            await alice.command("366")
            await _broker_lost(inproc_broker, alice)
            alice.send("@label=F1 PRIVMSG #dev :never sent")
            fail = await alice.expect(_labeled("F1"), "F1's answer", timeout_s=10)
            assert fail.command == "FAIL", fail
            assert fail.params[:3] == ("PRIVMSG", "MESSAGE_REFUSED", "#dev")
            assert "did not come back within 1.5 s" in fail.params[-1]
            alice.close()

    run(scenario(), timeout_s=60)


def test_lookups_during_a_broker_outage_say_try_again_not_no_such_nick(
        inproc_broker: RestartableBroker) -> None:
    """A tester's: during an outage WHOIS of a real account said 401 No such nick and
    NAMES listed oneself alone. A lookup the broker cannot answer now gets 263
    RPL_TRYAGAIN (and the list's end numeric, so the client stops waiting)."""
    async def scenario() -> None:
        await asyncio.to_thread(inproc_broker.start)
        for name in ("alice", "bob"):
            account = await logged_in(inproc_broker, name, ("dev",))
            await account.logout()
            await account.close()
        async with _gateway_of(inproc_broker) as port:
            alice = await connect(port, "alice", caps="draft/chathistory batch")
            alice.send("JOIN #dev")
            await alice.command("366")
            await alice.sync()
            await _broker_lost(inproc_broker, alice)
            asked = {
                "WHOIS bob": ("WHOIS", "318"), "WHO #dev": ("WHO", "315"),
                "WHO bob": ("WHO", "315"), "NAMES #dev": ("NAMES", "366"),
                "NAMES #other": ("NAMES", "366"), "LIST": ("LIST", "323"),
                "TOPIC #other": ("TOPIC", None), "MODE #other": ("MODE", None),
                "MODE #dev +i": ("MODE", None), "MODE #dev b": ("MODE", "368"),
                "ISON bob": ("ISON", None), "MONITOR + bob": ("MONITOR", None),
                "LUSERS": ("LUSERS", None), "JOIN #other": ("JOIN", None),
                "PART #other": ("PART", None), "PART #dev": ("PART", None),
                "KICK #dev bob": ("KICK", None), "INVITE bob #dev": ("INVITE", None),
                "TOPIC #dev :new": ("TOPIC", None),
                "CHATHISTORY LATEST #dev * 10": ("CHATHISTORY", None),
            }
            for line, (command, end) in asked.items():
                alice.send(line)
                seen = await alice.sync()
                got = [(m.command, m.params[1:2]) for m in seen]
                want = [("263", (command,))] + ([(end, seen[-1].params[1:2])] if end else [])
                assert got == want, (line, seen)
            alice.close()

    run(scenario(), timeout_s=90)


def test_the_welcome_names_the_network_once(harness: Harness) -> None:
    """001 said "Welcome to the zchat zchat gateway": the network's name, then what
    this is, zchat's name once."""
    async def scenario() -> None:
        await registered(harness, "alice", "bob")
        async with gateway(harness) as (_gw, port):
            alice = await connect(port, "alice")
            assert alice.seen[-1].params == (
                "alice", "Welcome to the zchat network's IRC gateway, alice")
            alice.close()
        async with gateway(harness, network="acme") as (_gw, port):
            bob = await connect(port, "bob")
            assert bob.seen[-1].params == (
                "bob", "Welcome to the acme zchat network's IRC gateway, bob")
            bob.close()

    run(scenario(), timeout_s=30)


def test_an_idle_client_is_pinged_and_closed_counting_from_its_last_line(
        harness: Harness, monkeypatch: pytest.MonkeyPatch) -> None:
    """A tester saw a stopped client closed 120 s after it stopped, not 180: its last
    line (a lag-check PING) came before. The gateway PINGs IDLE_PING_S after the last
    line read and closes IDLE_CLOSE_S after that PING (docs/irc.md, "Robustness"),
    scaled down here."""
    from zchat.irc import server

    monkeypatch.setattr(server, "IDLE_PING_S", 1.0)
    monkeypatch.setattr(server, "IDLE_CLOSE_S", 0.6)

    async def scenario() -> None:
        await registered(harness, "alice")
        async with gateway(harness) as (_gw, port):
            alice = await connect(port, "alice")
            await alice.sync()
            loop = asyncio.get_running_loop()
            alice.send("PING lag-check")  # the client's last line
            last = loop.time()
            await alice.command("PONG")
            ping = await alice.command("PING", timeout_s=5)
            pinged = loop.time()
            assert ping.params == ("irc.zchat",)
            assert 0.9 <= pinged - last < 1.8  # (the loop clock and the timer round)
            error = await alice.command("ERROR", timeout_s=5)
            assert error.params == ("Closing link: Ping timeout",)
            assert 0.5 <= loop.time() - pinged < 1.4
            await alice.closed()

    run(scenario(), timeout_s=30)


def test_new_connections_from_one_address_are_throttled(harness: Harness) -> None:
    """A fourth tester's loops reopened idle sockets 1,000 times a second from ten
    addresses and pushed honest logins out: new connections from one address are
    limited to connections_per_minute_per_address (a burst, then a steady rate), the
    next told so with an ERROR line; another address is not held back."""
    async def scenario() -> None:
        await registered(harness, "alice")
        async with gateway(harness, connections_per_minute_per_address=3) as (_gw, port):
            first = [await _idle(port, "127.0.0.2") for _ in range(3)]
            for irc in first:
                irc.close()
            refused = await _idle(port, "127.0.0.2")
            line = await refused.command("ERROR")
            assert line.params[0].startswith(
                "Closing link: too many new connections from your address (at most 3 a "
                "minute): wait "), line
            await refused.closed()
            alice = await connect(port, "alice")  # from 127.0.0.1: its own budget
            assert not [m for m in await alice.sync() if m.command == "ERROR"]
            alice.close()

    run(scenario(), timeout_s=30)


def test_a_client_gone_during_its_login_leaves_no_session_online(harness: Harness) -> None:
    """A fourth tester's clients closed while their LOGIN was under way left their zchat
    sessions online for the broker's heartbeat timeout (NAMES and WHOIS showed them for
    30 s): the login was cancelled before the client learnt its session, so nothing
    logged it out. Now the login finishes and the session is logged out at once. The
    login is held at a gate (a real client whose ``login`` waits for the test) so that
    the IRC client is gone while it is under way."""
    async def scenario() -> None:
        await registered(harness, "alice")
        started, gate = asyncio.Event(), asyncio.Event()

        class GatedClient(Client):
            async def login(self, *args: Any, **kwargs: Any) -> Any:
                started.set()
                await gate.wait()
                return await super().login(*args, **kwargs)

        gw = Gateway(Settings(autojoin=False), ClientOptions(harness.server),
                     client_factory=lambda: GatedClient(harness.server, reconnect=True))
        _host, port = await gw.start("127.0.0.1", 0)
        try:
            async with harness.client("watcher") as watcher:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(f"PASS :alice:{DEFAULT_PASSWORD}\r\nNICK alice\r\n"
                             "USER a 0 * :A\r\n".encode())
                await asyncio.wait_for(started.wait(), 10)
                writer.close()  # gone while its login is under way
                await _until(lambda: reader.at_eof() or writer.is_closing())
                gate.set()
                await _until(lambda: gw.connections == 0)
                who = await watcher.who()
                assert "alice" not in [u.name for u in who.users], who
        finally:
            await gw.shutdown()

    run(scenario(), timeout_s=30)
