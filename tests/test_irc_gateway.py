"""The IRC gateway end to end in one process: a real broker (in-process, tests/conftest.py
``harness``), the real gateway (zchat/irc/server.py) on a free loopback port, and plain
socket IRC clients. Waits are on lines arriving, each bounded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import re
import shutil
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from client_helpers import RestartableBroker, collect, is_, logged_in
from conftest import run
from irc_helpers import LINE_WAIT_S, IrcClient, connect, gateway, in_channel, registered

from zchat import wire as p
from zchat.client.events import ConnectionRestored
from zchat.irc.codec import Message
from zchat.irc.server import ClientOptions, Gateway, tls_context
from zchat.irc.state import Settings
from zchat.testing import DEFAULT_PASSWORD, Harness, next_message


def test_irc_users_and_a_zchat_user_talk(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "alice", "bob")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("carol") as carol:
            await carol.join("dev")
            alice = await connect(port, "alice", caps="echo-message server-time")
            bob = await connect(port, "bob")
            alice.send("JOIN #dev")
            await alice.command("366")
            bob.send("JOIN #dev")
            names = await bob.command("353")
            assert set(names.params[-1].split()) >= {"alice", "bob", "@carol"}
            await alice.expect(lambda m: m.command == "JOIN" and m.source.startswith("bob!"))
            # IRC -> zchat and IRC, with the echo once and in order
            alice.send("PRIVMSG #dev :héllo from irc")
            echoed = await alice.command("PRIVMSG")
            assert echoed.params == ("#dev", "héllo from irc") and "time" in echoed.tags
            got = await bob.command("PRIVMSG")
            assert got.source.startswith("alice!") and got.params[1] == "héllo from irc"
            posted = await next_message(carol, "dev")
            assert (posted.sender, posted.text) == ("alice", "héllo from irc")
            assert not [m for m in await alice.sync() if m.command == "PRIVMSG"]
            # zchat -> IRC: a /me and a long text of two lines
            await carol.send("dev", "waves", kind="action")
            action = await bob.command("PRIVMSG")
            assert action.params[1] == "\x01ACTION waves\x01"
            long_text = "ü" * 600 + "\nsecond"
            await carol.send("dev", long_text)
            pieces = [await bob.command("PRIVMSG")]
            while pieces[-1].params[1] != "second":
                pieces.append(await bob.command("PRIVMSG"))
            assert len(pieces) == 4  # 1,200 bytes in three lines, then the second line
            assert "".join(m.params[1] for m in pieces[:-1]) == "ü" * 600
            # a DM both ways
            bob.send("PRIVMSG carol :psst")
            await bob.sync()
            dm = await asyncio.wait_for(_next_dm(carol), LINE_WAIT_S)
            assert (dm.sender, dm.text) == ("bob", "psst")
            await carol.dm("bob", "hi bob")
            got = await bob.command("PRIVMSG")
            assert got.source.startswith("carol!") and got.params == ("bob", "hi bob")
            alice.close()
            bob.close()

    run(scenario())


async def _next_dm(client: object) -> p.DirectMessage:
    async for ev in client.events():  # type: ignore[attr-defined]
        if isinstance(ev, p.DirectMessage):
            return ev
    raise AssertionError("events ended")


def test_a_closed_irc_connection_ends_its_zchat_session(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "alice")
        async with gateway(harness) as (gw, port), harness.client("watcher") as watcher:
            alice = await connect(port, "alice")
            await alice.sync()
            assert gw.connections == 1
            alice.writer.transport.abort()  # no QUIT: the connection just dies

            async def offline() -> p.PresenceChanged:
                async for ev in watcher.events():
                    if isinstance(ev, p.PresenceChanged) and ev.name == "alice" \
                            and ev.presence == "offline":
                        return ev
                raise AssertionError("events ended")
            await asyncio.wait_for(offline(), LINE_WAIT_S)

    run(scenario())


def test_no_credentials_bad_password_and_guests(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "alice")
        async with gateway(harness) as (_gw, port):
            anon = await connect(port, "someone", password=None)
            err = await anon.command("ERROR")
            assert "no credentials" in err.params[0]
            await anon.closed()
            wrong = await connect(port, "alice", password=None)
            wrong.close()
            wrong = IrcClient(*await asyncio.open_connection("127.0.0.1", port))
            wrong.send("PASS alice:nope")
            wrong.send("NICK alice")
            wrong.send("USER u 0 * :x")
            await wrong.command("464")
            await wrong.closed()
        async with gateway(harness, guests=True) as (_gw, port):
            guest = await connect(port, "newbie", password=None)
            await guest.command("001")
            taken = await connect(port, "alice", password=None)
            await taken.command("433")
            taken.close()
            guest.close()

    run(scenario())


def test_garbage_and_overlong_lines_leave_the_gateway_up(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "alice", "bob")
        async with gateway(harness) as (_gw, port):
            alice = await connect(port, "alice")
            bob = await connect(port, "bob")
            alice.send(b"\xff\xfe\x00 not utf-8")
            await alice.command("FAIL")
            alice.send(b":::: ::: ::")
            alice.send(b"PRIVMSG " + b"x" * 20_000)
            await alice.command("417")
            alice.send(b"@" + b";" * 5000 + b" PING x")
            alice.send("JOIN")
            await alice.command("461")
            await alice.sync()
            await bob.sync()  # another user was never stalled
            alice.close()
            bob.close()

    run(scenario())


def test_broker_refusals_are_never_silent(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "alice")
        async with gateway(harness) as (_gw, port):
            alice = await connect(port, "alice")
            alice.send("JOIN #dev")
            await alice.command("366")
            alice.send("PRIVMSG #dev :" + "x" * 450)  # fits IRC, but see the next one
            alice.send("PRIVMSG #nojoin :hi")
            alice.send("PRIVMSG nobody :hi")
            alice.send("PART #nowhere")
            replies = [m.command for m in await alice.sync()]
            assert "403" in replies and "401" in replies, replies
            alice.close()

    run(scenario())


def test_shutdown_tells_every_client(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "alice")
        gw = Gateway(Settings(), ClientOptions(server=harness.server))
        _host, port = await gw.start("127.0.0.1", 0)
        alice = await connect(port, "alice")
        anon = IrcClient(*await asyncio.open_connection("127.0.0.1", port))
        anon.send("NICK x")
        await alice.sync()
        loop = asyncio.get_running_loop()
        start = loop.time()
        await gw.shutdown("going down")
        assert loop.time() - start < 2.0
        assert "going down" in (await alice.command("ERROR")).params[0]
        await alice.closed()
        await anon.command("ERROR")

    run(scenario())


def test_tls_listener(harness: Harness, tmp_path: Path) -> None:
    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("openssl is not installed (it makes the test's certificate)")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)

    async def scenario() -> None:
        await registered(harness, "alice")
        gw = Gateway(Settings(), ClientOptions(server=harness.server))
        _host, port = await gw.start("127.0.0.1", 0, tls_context(str(cert), str(key)))
        try:
            client_ctx = ssl.create_default_context()
            client_ctx.check_hostname = False
            client_ctx.verify_mode = ssl.CERT_NONE
            reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_ctx)
            irc = IrcClient(reader, writer)
            irc.send(f"PASS :{DEFAULT_PASSWORD}")
            irc.send("NICK alice")
            irc.send("USER u 0 * :x")
            assert (await irc.command("001")).params[0] == "alice"
            irc.send("QUIT")
            await irc.command("ERROR")
        finally:
            await gw.shutdown()

    run(scenario())


def test_a_broker_restart_leaves_irc_connections_up(inproc_broker: RestartableBroker) -> None:
    """The gateway's client reconnects (RESUME or LOGIN) and backfills: the IRC client
    stays connected, is told, and gets a message posted after the restart once."""
    async def scenario() -> None:
        await asyncio.to_thread(inproc_broker.start)
        alice_account = await logged_in(inproc_broker, "alice")
        await alice_account.logout()
        await alice_account.close()
        bob = await logged_in(inproc_broker, "bob", ("dev",), reconnect=True,
                              reconnect_max_s=0.5)
        gw = Gateway(Settings(autojoin=False),
                     ClientOptions(server=inproc_broker.router, reconnect_max_s=0.5))
        _host, port = await gw.start("127.0.0.1", 0)
        try:
            alice = await connect(port, "alice")
            alice.send("JOIN #dev")
            await alice.command("366")
            await alice.sync()
            await asyncio.to_thread(inproc_broker.stop)
            await asyncio.to_thread(inproc_broker.start)
            await alice.expect(lambda m: m.command == "NOTICE" and "back" in m.params[-1],
                               "the reconnect's NOTICE", timeout_s=15)
            # bob reconnects on his own schedule: the gateway's client may be back first
            # (a CI run's send met bob still reconnecting)
            if bob.state != "connected":
                await collect(bob, is_(ConnectionRestored), timeout_s=15)
            await bob.send("dev", "after the restart")
            got = await alice.command("PRIVMSG", timeout_s=15)
            assert got.params == ("#dev", "after the restart")
            assert not [m for m in await alice.sync() if m.command == "PRIVMSG"]
            alice.close()
        finally:
            await gw.shutdown()
            await bob.close()

    run(scenario(), timeout_s=60)


def test_a_guest_nick_is_never_handed_to_another_connection(harness: Harness) -> None:
    """``[irc] guests``: once a guest's connection ends, the gateway forgets its
    password, so the nick is taken (433) for good; nobody else gets its DMs (a second
    connection NICK guestann used to get 001, the offline DM and CHATHISTORY)."""
    async def scenario() -> None:
        async with gateway(harness, guests=True) as (_gw, port), \
                harness.client("carol") as carol:
            ann = await connect(port, "guestann", password=None)
            await ann.command("001")
            await carol.dm("guestann", "hello ann")
            await ann.expect(lambda m: m.command == "PRIVMSG" and m.params[-1] == "hello ann")
            ann.send("QUIT")
            await ann.closed()
            await carol.dm("guestann", "secret for ann")
            for _ in range(2):
                again = await connect(port, "guestann", password=None)
                reply = await again.expect(lambda m: m.command in ("001", "433"), "433")
                assert reply.command == "433", again.seen
                again.close()

    run(scenario())


async def _login_from(port: int, source: str, account: str, password: str) -> Message:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, local_addr=(source, 0))
    irc = IrcClient(reader, writer)
    irc.send(f"PASS :{account}:{password}")
    irc.send(f"NICK {account}")
    irc.send("USER u 0 * :x")
    reply = await irc.expect(lambda m: m.command in ("001", "464"), "001 or 464")
    irc.close()
    return reply


def test_failed_logins_are_limited_per_irc_address_at_the_gateway(harness: Harness) -> None:
    """Every IRC login reaches the broker from the gateway's one address, so the broker's
    per-address login budget is shared by all IRC users: the gateway keeps its own per
    IRC client address, and past FAILED_LOGIN_BURST failures refuses at once, before the
    broker (a tester's 40 wrong passwords delayed an honest login by 37 s)."""
    from zchat.irc.server import FAILED_LOGIN_BURST

    async def scenario() -> None:
        await registered(harness, "alice", "bob")
        async with gateway(harness) as (_gw, port):
            for _ in range(FAILED_LOGIN_BURST):
                reply = await _login_from(port, "127.0.0.3", "alice", "wrong")
                assert reply.command == "464" and "too many" not in reply.params[-1]
            loop = asyncio.get_running_loop()
            start = loop.time()
            reply = await _login_from(port, "127.0.0.3", "alice", DEFAULT_PASSWORD)
            assert reply.command == "464", reply
            assert "too many failed logins from your address" in reply.params[-1]
            assert loop.time() - start < 1.0
            # SASL from there: 904 with the same reason
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=("127.0.0.3", 0))
            sasl = IrcClient(reader, writer)
            blob = base64.b64encode(f"\0alice\0{DEFAULT_PASSWORD}".encode()).decode()
            for line in ("CAP REQ :sasl", "NICK alice", "USER u 0 * :x",
                         "AUTHENTICATE PLAIN", f"AUTHENTICATE {blob}"):
                sasl.send(line)
            failed = await sasl.command("904")
            assert "too many failed logins from your address" in failed.params[-1]
            sasl.close()
            # another address is not held back by it
            ok = await _login_from(port, "127.0.0.4", "bob", DEFAULT_PASSWORD)
            assert ok.command == "001"

    run(scenario())


def test_a_dead_flooding_connection_stops_posting_and_logs_out_at_once(
        harness: Harness, caplog: pytest.LogCaptureFixture) -> None:
    """200 PRIVMSGs written, the connection reset 1 s later: what was not handled yet is
    dropped and the session goes offline at once (all 200 used to be posted over ~40 s,
    rate-limited, the QUIT coming 35 s later)."""
    async def scenario() -> None:
        await registered(harness, "alice")
        async with gateway(harness) as (_gw, port), harness.client("bob") as bob:
            await bob.join("dev")
            alice = await connect(port, "alice")
            alice.send("JOIN #dev")
            await alice.command("366")
            alice.writer.write(b"".join(f"PRIVMSG #dev :flood {i}\r\n".encode()
                                        for i in range(200)))
            await asyncio.sleep(1.0)
            alice.writer.transport.abort()  # SIGKILL: no QUIT
            loop = asyncio.get_running_loop()
            gone = loop.time()
            posted: list[str] = []

            async def until_offline() -> None:
                async for ev in bob.events():
                    if isinstance(ev, p.MessagePosted):
                        posted.append(ev.text)
                    elif isinstance(ev, p.PresenceChanged) and ev.name == "alice" \
                            and ev.presence == "offline":
                        return
            await asyncio.wait_for(until_offline(), LINE_WAIT_S)
            assert loop.time() - gone < 2.0
            before = len(posted)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(until_offline(), 1.5)  # nothing more comes
            assert len(posted) == before < 60, posted

    with caplog.at_level(logging.INFO, logger="zchat.irc"):
        run(scenario())
    assert re.search(r"IRC connection of alice ended: \d+ lines not yet handled dropped",
                     caplog.text), caplog.text


def test_slow_mode_is_refused_at_once_and_blocks_nothing(harness: Harness) -> None:
    """A 429 asking for a long wait (slow mode 150 s) is answered at once with FAIL
    RATE_LIMITED and a NOTICE saying how long; PING, WHOIS and QUIT after it are answered
    at once (the connection used to freeze ~150 s, silently)."""
    async def scenario() -> None:
        await registered(harness, "alice")
        async with gateway(harness) as (_gw, port), harness.client("bob") as bob:
            await bob.join("dev")
            await bob.set_slow_mode("dev", 150)
            alice = await connect(port, "alice")
            alice.send("JOIN #dev")
            await alice.command("366")
            alice.send("PRIVMSG #dev :one")
            await alice.sync()
            loop = asyncio.get_running_loop()
            start = loop.time()
            alice.send("PRIVMSG #dev :two")
            alice.send("WHOIS bob")
            fail = await alice.command("FAIL", timeout_s=2.0)
            assert fail.params[:3] == ("PRIVMSG", "RATE_LIMITED", "#dev")
            assert "slow mode" in fail.params[-1]
            notice = await alice.expect(lambda m: m.command == "NOTICE"
                                        and "slow mode" in m.params[-1], "NOTICE", 2.0)
            assert "wait" in notice.params[-1]
            await alice.command("318", timeout_s=2.0)
            await alice.sync()
            alice.send("QUIT")
            await alice.command("ERROR", timeout_s=2.0)
            assert loop.time() - start < 3.0

    run(scenario())


def test_quit_after_a_flood_drops_what_would_wait_but_not_a_last_word(
        harness: Harness) -> None:
    """A QUIT behind 100 PRIVMSGs is answered within 2 s (the lines that would wait for
    the rate limit are dropped), while a PRIVMSG right before a QUIT is still posted."""
    async def scenario() -> None:
        await registered(harness, "alice", "carol")
        async with gateway(harness) as (_gw, port), harness.client("bob") as bob:
            await bob.join("dev")
            carol = await connect(port, "carol")
            carol.send("JOIN #dev")
            await carol.command("366")
            carol.writer.write(b"PRIVMSG #dev :bye all\r\nQUIT :done\r\n")
            await carol.command("ERROR")
            assert (await next_message(bob, "dev")).text == "bye all"
            alice = await connect(port, "alice")
            alice.send("JOIN #dev")
            await alice.command("366")
            loop = asyncio.get_running_loop()
            start = loop.time()
            alice.writer.write(b"".join(f"PRIVMSG #dev :flood {i}\r\n".encode()
                                        for i in range(100)) + b"QUIT :bye\r\n")
            await alice.command("ERROR", timeout_s=LINE_WAIT_S)
            assert loop.time() - start < 2.0

    run(scenario())


def test_messages_typed_during_a_broker_restart_are_sent_once_when_it_is_back(
        inproc_broker: RestartableBroker) -> None:
    """PRIVMSGs (room and DM) written while the broker is down are kept with their cmid
    and sent, in order, once the gateway's client is back: stored once, no FAIL (they
    used to be lost with FAIL MESSAGE_REFUSED while the IRC client showed them sent)."""
    async def scenario() -> None:
        await asyncio.to_thread(inproc_broker.start)
        for name in ("alice", "carol"):
            account = await logged_in(inproc_broker, name)
            await account.logout()
            await account.close()
        bob = await logged_in(inproc_broker, "bob", ("dev",), reconnect=True,
                              reconnect_max_s=0.5)
        gw = Gateway(Settings(autojoin=False),
                     ClientOptions(server=inproc_broker.router, reconnect_max_s=0.5))
        _host, port = await gw.start("127.0.0.1", 0)
        try:
            alice = await connect(port, "alice", caps="echo-message")
            alice.send("JOIN #dev")
            await alice.command("366")
            await alice.sync()
            await asyncio.to_thread(inproc_broker.stop)
            await alice.expect(lambda m: m.command == "NOTICE" and "lost" in m.params[-1],
                               "the NOTICE of the lost broker", timeout_s=15)
            for i in range(3):
                alice.send(f"PRIVMSG #dev :while down {i}")
            alice.send("PRIVMSG carol :a dm while down")
            await alice.expect(lambda m: m.command == "NOTICE" and "kept" in m.params[-1],
                               "the NOTICE of messages kept", timeout_s=15)
            await asyncio.sleep(1.0)
            await asyncio.to_thread(inproc_broker.start)
            echoed = [await alice.expect(lambda m: m.command in ("PRIVMSG", "FAIL"),
                                         "an echo", timeout_s=20) for _ in range(4)]
            assert [(m.command, m.params[0], m.params[-1]) for m in echoed] == [
                ("PRIVMSG", "#dev", f"while down {i}") for i in range(3)] + [
                ("PRIVMSG", "carol", "a dm while down")]
            if bob.state != "connected":
                await collect(bob, is_(ConnectionRestored), timeout_s=15)
            page = await bob.history("dev")
            texts = [m.text for m in page.messages if m.text.startswith("while down")]
            assert texts == [f"while down {i}" for i in range(3)]
            assert not [m for m in await alice.sync() if m.command == "FAIL"]
            alice.close()
        finally:
            await gw.shutdown()
            await bob.close()

    run(scenario(), timeout_s=90)


def test_messages_kept_for_a_broker_that_stays_away_end_in_a_clear_fail(
        inproc_broker: RestartableBroker, monkeypatch: pytest.MonkeyPatch) -> None:
    """The messages kept are bounded: past MAX_HELD_MESSAGES one is refused at once, and
    past HELD_FOR_S each gets FAIL PRIVMSG MESSAGE_REFUSED saying the broker did not
    come back; PING is answered meanwhile."""
    from zchat.irc import server

    monkeypatch.setattr(server, "HELD_FOR_S", 1.5)
    monkeypatch.setattr(server, "MAX_HELD_MESSAGES", 2)

    async def scenario() -> None:
        await asyncio.to_thread(inproc_broker.start)
        account = await logged_in(inproc_broker, "alice")
        await account.logout()
        await account.close()
        gw = Gateway(Settings(autojoin=False),
                     ClientOptions(server=inproc_broker.router, reconnect_max_s=0.5))
        _host, port = await gw.start("127.0.0.1", 0)
        try:
            alice = await connect(port, "alice")
            alice.send("JOIN #dev")
            await alice.command("366")
            await asyncio.to_thread(inproc_broker.stop)
            await alice.expect(lambda m: m.command == "NOTICE" and "lost" in m.params[-1],
                               "the NOTICE of the lost broker", timeout_s=15)
            for i in range(3):
                alice.send(f"PRIVMSG #dev :kept {i}")
            full = await alice.command("FAIL")
            assert "2 messages already wait" in full.params[-1]
            await alice.sync()
            fails = [await alice.command("FAIL", timeout_s=10) for _ in range(2)]
            assert all(f.params[:3] == ("PRIVMSG", "MESSAGE_REFUSED", "#dev")
                       and "did not come back within 1.5 s" in f.params[-1]
                       for f in fails), fails
            alice.close()
        finally:
            await gw.shutdown()

    run(scenario(), timeout_s=60)


def test_a_live_flooder_is_throttled_in_order(harness: Harness) -> None:
    """Past the send burst, a live client's PRIVMSGs wait the short rate-limit waits and
    are all posted, in order, with no FAIL."""
    async def scenario() -> None:
        await registered(harness, "alice")
        async with gateway(harness) as (_gw, port), harness.client("bob") as bob:
            await bob.join("dev")
            alice = await connect(port, "alice")
            alice.send("JOIN #dev")
            await alice.command("366")
            alice.writer.write(b"".join(f"PRIVMSG #dev :line {i}\r\n".encode()
                                        for i in range(30)))
            got = [(await next_message(bob, "dev")).text for _ in range(30)]
            assert got == [f"line {i}" for i in range(30)]
            assert not [m for m in await alice.sync() if m.command == "FAIL"]

    run(scenario(), timeout_s=60)


# -- NOTICE and PART reasons (docs/PROTOCOL.md §6.6, §6.8); the resync after a reconnect
# (zchat/irc/resync.py) -----------------------------------------------------------------


def _from(nick: str, command: str) -> Callable[[Message], bool]:
    return lambda m: m.command == command and m.source.startswith(nick + "!")


def test_notice_both_ways(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "alice", "bob")
        async with gateway(harness, autojoin=False) as (_gw, port), \
                harness.client("carol") as carol:
            await carol.join("dev")
            alice, bob = await in_channel(port, "alice", "bob")
            # IRC -> IRC and zchat: a NOTICE stays a notice
            alice.send("NOTICE #dev :heads up")
            got = await bob.expect(_from("alice", "NOTICE"), "alice's NOTICE")
            assert got.params == ("#dev", "heads up")
            posted = await next_message(carol, "dev")
            assert (posted.text, posted.kind, posted.notice) == ("heads up", "text", True)
            # a NOTICE carrying ACTION stays a notice (a tester's bot answered it as an
            # action): the notice "* alice text"
            alice.send("NOTICE #dev :\x01ACTION !ping quietly\x01")
            posted = await next_message(carol, "dev")
            assert (posted.text, posted.kind, posted.notice) == \
                ("* alice !ping quietly", "text", True)
            got = await bob.expect(_from("alice", "NOTICE"), "alice's NOTICE ACTION")
            assert got.params == ("#dev", "* alice !ping quietly")
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
            alice, bob = await in_channel(port, "alice", "bob")
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


def test_read_markers_are_gathered_and_set_before_the_session_ends(harness: Harness) -> None:
    """A benchmark found one MARK_READ per line delivered, each awaited before the next
    event (92,000 MARK_READs for 92,000 lines): now one per half second per room at most,
    off the events' path, and the last ones made before the session ends, so a client
    that quits is not given those lines again at its next login."""
    from zchat.client import Client

    marks: list[tuple[str | None, int | None]] = []

    class CountingClient(Client):
        async def mark_read(self, *, room: str | None = None, dm: str | None = None,
                            upto: int | None = None) -> p.ReadState:
            marks.append((room, upto))
            return await super().mark_read(room=room, dm=dm, upto=upto)

    async def scenario() -> None:
        await registered(harness, "bob")
        gw = Gateway(Settings(autojoin=False, playback=0), ClientOptions(harness.server),
                     client_factory=lambda: CountingClient(harness.server, reconnect=True))
        _host, port = await gw.start("127.0.0.1", 0)
        try:
            async with harness.client("carol") as carol:
                await carol.join("dev")
                bob = await connect(port, "bob")
                bob.send("JOIN #dev")
                await bob.command("366")
                for n in range(40):
                    last = (await carol.send("dev", f"line {n}")).seq
                for n in range(40):
                    assert (await bob.command("PRIVMSG")).params[1] == f"line {n}"
                bob.send("QUIT :bye")
                await bob.command("ERROR")
                await bob.closed()
                async with harness.client("bob") as again:
                    read = again.unread.room("dev")
                    assert read is not None and read.unread == 0, read
        finally:
            await gw.shutdown()
        assert 1 <= len(marks) <= 5, marks
        assert max(upto or 0 for _room, upto in marks) == last

    run(scenario())


def test_a_one_shot_sender_who_joins_is_not_shown_joined_but_its_line_is(
        harness: Harness) -> None:
    """``zchat say --as frank --room dev`` by a non-member: a one-shot session (LOGIN
    ``presence: false``, docs/PROTOCOL.md §6.3) joins #dev and posts. IRC users get the
    line but no JOIN (frank is offline: no QUIT would ever follow), and see frank JOIN
    when he really comes online."""
    async def scenario() -> None:
        await registered(harness, "alice", "frank")
        async with gateway(harness, autojoin=False) as (_gw, port):
            alice = await connect(port, "alice")
            alice.send("JOIN #dev")
            await alice.command("366")
            one_shot = harness.new_client()
            await one_shot.connect()
            try:
                await one_shot.login("frank", DEFAULT_PASSWORD, presence=False)
                await one_shot.join("dev")
                await one_shot.send("dev", "hello from the cli")
                line = await alice.expect(_from("frank", "PRIVMSG"), "frank's line")
                assert line.params == ("#dev", "hello from the cli")
                await one_shot.logout()
            finally:
                await one_shot.close()
            await alice.sync()
            assert not [m for m in alice.seen if m.source.startswith("frank!")
                        and m.command in ("JOIN", "QUIT")], alice.seen
            alice.send("NAMES #dev")
            names = await alice.command("353")
            assert "frank" not in names.params[-1].split()
            async with harness.client("frank") as frank:
                await alice.expect(_from("frank", "JOIN"), "frank's JOIN when online")
                await frank.logout()
            await alice.expect(_from("frank", "QUIT"), "frank's QUIT when he goes")
            alice.close()

    run(scenario())


def _joins_since_quit(seen: list[Message], nick: str) -> list[str]:
    """The channels ``nick`` was shown JOINing since its last QUIT (in order)."""
    quits = [i for i, m in enumerate(seen) if _from(nick, "QUIT")(m)]
    start = quits[-1] + 1 if quits else 0
    return [m.params[0] for m in seen[start:] if _from(nick, "JOIN")(m)]


def test_after_a_broker_restart_each_member_joins_once_and_before_its_lines(
        inproc_broker: RestartableBroker) -> None:
    """alice and bob (IRC) share #dev and #rs with carol (zchat). The broker stops (all
    QUIT) and comes back; carol's client resumes first and posts "outage-late", which the
    gateway's clients get in their backfill, before their resync's WHO. Each member is
    shown JOINing each channel once (the PRESENCE events and the resync's WHO answers
    race), and carol's JOIN of #dev comes before her line."""
    async def scenario() -> None:
        await asyncio.to_thread(inproc_broker.start)
        for name in ("alice", "bob"):
            account = await logged_in(inproc_broker, name, ("dev", "rs"))
            await account.logout()
            await account.close()
        carol = await logged_in(inproc_broker, "carol", ("dev", "rs"), reconnect=True,
                                reconnect_max_s=0.2)
        gw = Gateway(Settings(autojoin=False),
                     ClientOptions(server=inproc_broker.router, reconnect_max_s=3.0))
        _host, port = await gw.start("127.0.0.1", 0)
        try:
            alice = await connect(port, "alice", caps="away-notify")
            bob = await connect(port, "bob", caps="away-notify")
            for irc in (alice, bob):
                irc.send("JOIN #dev,#rs")
                await irc.expect(lambda m: m.command == "366" and m.params[1] == "#rs")
            await alice.sync()
            await bob.sync()
            await asyncio.to_thread(inproc_broker.stop)
            await asyncio.to_thread(inproc_broker.start)
            await collect(carol, is_(ConnectionRestored), timeout_s=15)
            await carol.send("dev", "outage-late")
            for irc, other in ((alice, "bob"), (bob, "alice")):
                await irc.expect(lambda m: m.command == "NOTICE" and "back" in m.params[-1],
                                 "the reconnect's NOTICE", timeout_s=15)
                for nick in ("carol", other):
                    for channel in ("#dev", "#rs"):
                        if channel not in _joins_since_quit(irc.seen, nick):
                            await irc.expect(
                                lambda m, n=nick, c=channel: _from(n, "JOIN")(m)
                                and m.params[0] == c, f"{nick}'s JOIN of {channel}",
                                timeout_s=10)
                await irc.sync()
                for nick in ("carol", other):
                    assert sorted(_joins_since_quit(irc.seen, nick)) == ["#dev", "#rs"], \
                        (nick, irc.seen)
                quit_at = max(i for i, m in enumerate(irc.seen) if _from("carol", "QUIT")(m))
                after = irc.seen[quit_at:]
                join_at = next(i for i, m in enumerate(after)
                               if _from("carol", "JOIN")(m) and m.params[0] == "#dev")
                line_at = next(i for i, m in enumerate(after) if _from("carol", "PRIVMSG")(m))
                assert join_at < line_at, after
            alice.close()
            bob.close()
        finally:
            await gw.shutdown()
            await carol.close()

    run(scenario(), timeout_s=60)


def test_a_sasl_users_first_joins_show_its_user_name(harness: Harness) -> None:
    """The broker publishes frank online at his SASL LOGIN, before his CAP END: alice's
    JOIN of him already shows ``~frankie`` (his USER), as WHO and his later lines do."""
    async def scenario() -> None:
        await registered(harness, "alice", "frank")
        async with harness.client("frank") as frank:
            await frank.join("dev")
            await frank.logout()
        async with gateway(harness, autojoin=False) as (_gw, port):
            alice = await connect(port, "alice")
            alice.send("JOIN #dev")
            await alice.command("366")
            irc = IrcClient(*await asyncio.open_connection("127.0.0.1", port))
            irc.send("CAP LS 302")
            irc.send("NICK frank")
            irc.send("USER frankie 0 * :Frank")
            irc.send("CAP REQ :sasl")
            irc.send("AUTHENTICATE PLAIN")
            await irc.expect(lambda m: m.command == "AUTHENTICATE")
            irc.send("AUTHENTICATE " + base64.b64encode(
                f"\0frank\0{DEFAULT_PASSWORD}".encode()).decode())
            await irc.command("903")
            # frank is online for the broker now: alice sees his JOIN before his CAP END
            join = await alice.expect(_from("frank", "JOIN"), "frank's JOIN")
            assert join.source == "frank!~frankie@zchat"
            irc.send("CAP END")
            await irc.command("001")
            irc.send("PRIVMSG #dev :hi")
            line = await alice.expect(_from("frank", "PRIVMSG"), "frank's line")
            assert line.source == "frank!~frankie@zchat"
            irc.close()
            alice.close()

    run(scenario())
