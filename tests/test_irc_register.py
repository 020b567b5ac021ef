"""IRCv3 draft/account-registration in the IRC gateway (zchat/irc/register.py,
docs/irc.md "Creating an account"), end to end: a real broker (tests/conftest.py
``harness``), the real gateway on a free loopback port, plain socket IRC clients, and the
new account used afterwards from zchat's client library."""

from __future__ import annotations

import asyncio

import pytest
from conftest import run
from irc_helpers import IrcClient, connect, gateway, registered

from zchat.errors import RequestFailed
from zchat.irc.codec import Message
from zchat.irc.server import FAILED_LOGIN_BURST
from zchat.testing import DEFAULT_PASSWORD, Harness

PASSWORD = "a new pass phrase"


async def _open(port: int, local: str = "127.0.0.1") -> IrcClient:
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=(local, 0))
    return IrcClient(reader, writer)


def _is_fail(code: str, command: str = "REGISTER"):  # type: ignore[no-untyped-def]
    return lambda m: m.command == "FAIL" and m.params[:2] == (command, code)


async def _can_log_in(harness: Harness, name: str, password: str) -> bool:
    try:
        async with harness.client(name, password, register=False) as client:
            await client.logout()
    except RequestFailed:
        return False
    return True


def test_register_before_connect_logs_in_as_the_new_account(harness: Harness) -> None:
    """CAP LS 302 offers the cap with before-connect; REGISTER during CAP negotiation
    creates the account and logs in (900, REGISTER SUCCESS); CAP END welcomes the new
    account; zchat's client library logs in with that password afterwards."""
    async def scenario() -> None:
        async with gateway(harness, autojoin=False) as (_gw, port):
            irc = await _open(port)
            irc.send("CAP LS 302")
            ls = await irc.command("CAP")
            caps = dict(c.partition("=")[::2] for c in ls.params[-1].split())
            assert caps["draft/account-registration"] == "before-connect"
            irc.send("CAP REQ :draft/account-registration")
            await irc.expect(lambda m: m.command == "CAP" and m.params[1] == "ACK", "ACK")
            irc.send("NICK newbie")
            irc.send("USER u 0 * :New")
            irc.send(f"REGISTER * * :{PASSWORD}")
            logged = await irc.command("900")
            assert logged.params[1:3] == ("newbie!~u@zchat", "newbie")
            done = await irc.command("REGISTER")
            assert done.params[:2] == ("SUCCESS", "newbie")
            irc.send("CAP END")
            welcome = await irc.command("001")
            assert welcome.params[0] == "newbie"
            irc.send("QUIT")
            await irc.closed()
        assert await _can_log_in(harness, "newbie", PASSWORD)

    run(scenario())


def test_register_pipelined_before_cap_end_waits_for_the_broker(harness: Harness) -> None:
    """CAP END sent right behind REGISTER does not end registration before REGISTER's
    answer (a client without guests would be closed for giving no credentials)."""
    async def scenario() -> None:
        async with gateway(harness, autojoin=False) as (_gw, port):
            irc = await _open(port)
            for line in ("CAP LS 302", "NICK pipe", "USER u 0 * :x",
                         f"REGISTER pipe someone@example.org :{PASSWORD}", "CAP END"):
                irc.send(line)
            done = await irc.command("REGISTER")
            assert done.params[:2] == ("SUCCESS", "pipe")
            assert "keeps no email address" in done.params[-1]
            assert (await irc.command("001")).params[0] == "pipe"
            irc.close()
        assert await _can_log_in(harness, "pipe", PASSWORD)

    run(scenario())


def test_a_guest_registers_its_nick_after_connecting(harness: Harness) -> None:
    """[irc] guests: a guest connection REGISTERs its own nick after 001: its account
    takes the password given and is no longer a guest's, so it outlives the
    connection (a guest's password is forgotten when it goes)."""
    async def scenario() -> None:
        async with gateway(harness, guests=True, autojoin=False) as (gw, port):
            irc = await connect(port, "visitor", password=None)
            await irc.command("001")
            assert "visitor" in gw.guest_passwords
            irc.send(f"REGISTER * * :{PASSWORD}")
            assert (await irc.command("900")).params[2] == "visitor"
            assert (await irc.command("REGISTER")).params[:2] == ("SUCCESS", "visitor")
            irc.send("WHOIS visitor")
            assert (await irc.command("330")).params[2] == "visitor"  # logged in now
            irc.send("QUIT")
            await irc.closed()
            assert "visitor" not in gw.guest_passwords
        assert await _can_log_in(harness, "visitor", PASSWORD)

    run(scenario())


def test_register_refusals_are_fail_codes_and_change_nothing(harness: Harness) -> None:
    async def scenario() -> None:
        await registered(harness, "alice")
        async with gateway(harness, autojoin=False) as (_gw, port):
            irc = await _open(port)
            irc.send("CAP LS 302")
            irc.send(f"REGISTER * * :{PASSWORD}")
            await irc.expect(_is_fail("NEED_NICK"), "NEED_NICK")
            irc.send("REGISTER onlyone")
            await irc.expect(_is_fail("INVALID_PARAMS"), "INVALID_PARAMS")
            irc.send("NICK alice")
            irc.send(f"REGISTER * * :{PASSWORD}")
            exists = await irc.expect(_is_fail("ACCOUNT_EXISTS"), "ACCOUNT_EXISTS")
            assert exists.params[2] == "alice"
            irc.send(f"REGISTER other * :{PASSWORD}")
            await irc.expect(_is_fail("ACCOUNT_NAME_MUST_BE_NICK"), "MUST_BE_NICK")
            irc.send("NICK bad-")  # a nick, but no new account name (ends with '-')
            irc.send(f"REGISTER * * :{PASSWORD}")
            await irc.expect(_is_fail("BAD_ACCOUNT_NAME"), "BAD_ACCOUNT_NAME")
            irc.send("NICK fresh")
            irc.send("REGISTER * * short")
            weak = await irc.expect(_is_fail("WEAK_PASSWORD"), "WEAK_PASSWORD")
            assert "at least" in weak.params[-1]
            irc.send("VERIFY fresh 12345")
            await irc.expect(_is_fail("INVALID_CODE", "VERIFY"), "FAIL VERIFY")
            # nothing was created, and no credentials: closed as before
            irc.send("USER u 0 * :x")
            irc.send("CAP END")
            await irc.expect(lambda m: m.command == "ERROR", "ERROR")
            irc.close()
            # logged in already (PASS): ALREADY_AUTHENTICATED
            alice = await connect(port, "alice")
            alice.send(f"REGISTER * * :{PASSWORD}")
            await alice.expect(_is_fail("ALREADY_AUTHENTICATED"), "ALREADY_AUTHENTICATED")
            alice.close()
        for name in ("fresh", "bad-", "other"):
            assert not await _can_log_in(harness, name, PASSWORD)
        assert await _can_log_in(harness, "alice", DEFAULT_PASSWORD)

    run(scenario())


@pytest.mark.parametrize("local", ["127.0.0.7"])
def test_registrations_are_limited_per_irc_address(harness: Harness, local: str) -> None:
    """Every REGISTER that reaches the broker takes a token of the address's failed-login
    bucket: after FAILED_LOGIN_BURST, the next is refused by the gateway at once with
    TEMPORARILY_UNAVAILABLE and creates nothing; another address is not held back."""
    async def scenario() -> None:
        async with gateway(harness, autojoin=False) as (_gw, port):
            async def register_from(addr: str, nick: str) -> Message:
                irc = await _open(port, addr)
                for line in ("CAP LS 302", f"NICK {nick}", f"REGISTER * * :{PASSWORD}"):
                    irc.send(line)
                reply = await irc.expect(lambda m: m.command in ("REGISTER", "FAIL"),
                                         "REGISTER or FAIL")
                irc.close()
                return reply

            for i in range(FAILED_LOGIN_BURST):
                assert (await register_from(local, f"many{i}")).params[0] == "SUCCESS"
            refused = await register_from(local, "onemore")
            assert refused.params[:3] == ("REGISTER", "TEMPORARILY_UNAVAILABLE", "onemore")
            assert "too many failed logins or registrations" in refused.params[-1]
            assert (await register_from("127.0.0.8", "elsewhere")).params[0] == "SUCCESS"
        assert not await _can_log_in(harness, "onemore", PASSWORD)
        assert await _can_log_in(harness, "many0", PASSWORD)

    run(scenario())
