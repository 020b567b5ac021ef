"""The IRC gateway's NOTICE and PART reasons (onto zchat notices and PART's reason,
docs/PROTOCOL.md §6.6, §6.8) and its resync after its client comes back from a broker
restart (zchat/irc/resync.py): a real broker, the real gateway on a loopback port, plain
socket IRC clients (tests/test_irc_gateway.py's helpers), native zchat clients."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from client_helpers import RestartableBroker, collect, is_, logged_in
from conftest import run
from test_irc_gateway import connect, gateway, registered

from zchat import wire as p
from zchat.client.events import ConnectionRestored
from zchat.irc.codec import Message
from zchat.irc.server import ClientOptions, Gateway
from zchat.irc.state import Settings
from zchat.testing import Harness, next_message


def _from(nick: str, command: str) -> Callable[[Message], bool]:
    return lambda m: m.command == command and m.source.startswith(nick + "!")


def test_notice_both_ways(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "alice", "bob")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("carol") as carol:
            await carol.join("dev")
            alice = await connect(port, "alice")
            bob = await connect(port, "bob")
            for irc in (alice, bob):
                irc.send("JOIN #dev")
                await irc.command("366")
            # IRC -> IRC and zchat: a NOTICE stays a notice
            alice.send("NOTICE #dev :heads up")
            got = await bob.expect(_from("alice", "NOTICE"), "alice's NOTICE")
            assert got.params == ("#dev", "heads up")
            posted = await next_message(carol, "dev")
            assert (posted.text, posted.kind, posted.notice) == ("heads up", "text", True)
            # zchat -> IRC
            await carol.send("dev", "deploy at 5", notice=True)
            got = await bob.expect(_from("carol", "NOTICE"), "carol's NOTICE")
            assert got.params == ("#dev", "deploy at 5")
            await carol.send("dev", "plain")
            got = await bob.expect(_from("carol", "PRIVMSG"), "carol's PRIVMSG")
            assert got.params == ("#dev", "plain")
            # to a nick: a DM notice both ways
            alice.send("NOTICE carol :psst")
            await alice.sync()
            dms = await collect(carol, is_(p.DirectMessage, text="psst"))
            assert dms[-1].notice is True  # type: ignore[attr-defined]
            await carol.dm("bob", "ping you", notice=True)
            got = await bob.expect(_from("carol", "NOTICE"), "carol's DM NOTICE")
            assert got.params == ("bob", "ping you")
            alice.close()
            bob.close()

    run(scenario())


def test_part_reasons_travel(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "alice", "bob")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("carol") as carol:
            await carol.join("dev")
            alice = await connect(port, "alice")
            bob = await connect(port, "bob")
            for irc in (alice, bob):
                irc.send("JOIN #dev")
                await irc.command("366")
            await alice.expect(_from("bob", "JOIN"), "bob's JOIN")
            # IRC formatting is taken out of the reason; the PART itself goes through
            alice.send("PART #dev :\x02see\x02 you tomorrow")
            own = await alice.expect(_from("alice", "PART"), "alice's own PART")
            assert own.params == ("#dev", "\x02see\x02 you tomorrow")
            got = await bob.expect(_from("alice", "PART"), "alice's PART")
            assert got.params == ("#dev", "see you tomorrow")
            left = await collect(carol, is_(p.UserLeft, name="alice"))
            assert left[-1].reason == "see you tomorrow"  # type: ignore[attr-defined]
            await carol.part("dev", reason="lunch")
            got = await bob.expect(_from("carol", "PART"), "carol's PART")
            assert got.params == ("#dev", "lunch")
            bob.send("PART #dev")
            got = await bob.expect(_from("bob", "PART"), "bob's own PART")
            assert got.params == ("#dev",)
            alice.close()
            bob.close()

    run(scenario())


def test_after_a_broker_restart_the_gateway_resyncs_who_is_there(
        inproc_broker: RestartableBroker) -> None:
    """A stopping broker publishes everyone offline (IRC users see QUITs); after the
    restart each RESUME publishes online again, but those published while the gateway's
    clients were still reconnecting are lost for them. carol, whose client resumes
    first, and dave, who logs in and goes away while the gateway is still reconnecting,
    must be shown JOINed (and dave away) all the same — once."""
    async def scenario() -> None:
        await asyncio.to_thread(inproc_broker.start)
        for name in ("alice", "bob", "dave"):
            account = await logged_in(inproc_broker, name, ("dev",))
            await account.logout()
            await account.close()
        carol = await logged_in(inproc_broker, "carol", ("dev",), reconnect=True,
                                reconnect_max_s=0.2)
        # a long back-off: the gateway's clients come back after carol's and dave's
        gw = Gateway(Settings(autojoin=False),
                     ClientOptions(server=inproc_broker.router, reconnect_max_s=3.0))
        _host, port = await gw.start("127.0.0.1", 0)
        dave = None
        try:
            alice = await connect(port, "alice", caps="away-notify")
            bob = await connect(port, "bob", caps="away-notify")
            for irc in (alice, bob):
                irc.send("JOIN #dev")
                names = await irc.command("353")
                assert "carol" in names.params[-1].split()
            await alice.sync()
            await asyncio.to_thread(inproc_broker.stop)
            await asyncio.to_thread(inproc_broker.start)
            await collect(carol, is_(ConnectionRestored), timeout_s=15)
            dave = await logged_in(inproc_broker, "dave", register=False)
            await dave.set_presence("away", "lunch")
            for irc in (alice, bob):
                await irc.expect(_from("carol", "QUIT"), "carol's QUIT at the stop")
                await irc.expect(lambda m: m.command == "NOTICE" and "back" in m.params[-1],
                                 "the reconnect's NOTICE", timeout_s=15)
                await irc.expect(_from("carol", "JOIN"), "carol's JOIN", timeout_s=10)
                await irc.expect(_from("dave", "JOIN"), "dave's JOIN", timeout_s=10)
                away = await irc.expect(_from("dave", "AWAY"), "dave's AWAY", timeout_s=10)
                assert away.params == ("lunch",)
            # once: a later sync brings no second JOIN
            seen = await alice.sync()
            assert not [m for m in seen if m.command == "JOIN"
                        and m.source.startswith(("carol!", "dave!"))]
            await dave.logout()
            await alice.expect(_from("dave", "QUIT"), "dave's QUIT")
            alice.close()
            bob.close()
        finally:
            await gw.shutdown()
            await carol.close()
            if dave is not None:
                await dave.close()

    run(scenario(), timeout_s=60)
