"""Trusted proxies (docs/security.md "Trusted proxies", docs/PROTOCOL.md §6.3, §15.1): a
peer in ``[broker] trusted_proxies`` (the IRC gateway) tells, in LOGIN and REGISTER, the
address of the user it acts for, and the broker counts the attempt in that address's login
buckets instead of the proxy's one; any other peer that tells one gets 403, a malformed
address 400, and neither changes anything.

Three layers: the pure core with a fake clock (tests/core_helpers.py), a real ``zchat
broker`` on loopback TCP driven by raw DEALERs from chosen loopback source addresses
(Peer-Address is real only on tcp://), and the real IRC gateway in-process with
``tell_addresses`` in front of that broker. Nothing is measured by time: a login that is
not delayed is one answered within the usual timeouts, not refused 429.
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import TcpBroker, run, running_tcp_broker
from core_helpers import PASSWORD, World, handle_raw
from irc_helpers import IrcClient
from raw_helpers import RawPeer

from zchat import wire as p
from zchat.config import ConfigError, config_from_dict
from zchat.core import Offload
from zchat.errors import Status
from zchat.irc.server import ClientOptions, Gateway
from zchat.irc.state import Settings
from zchat.ratelimit import is_trusted, proxy_networks, told_address
from zchat.testing import DEFAULT_PASSWORD

GATEWAY = "10.0.0.1"
USER_A, USER_B = "203.0.113.5", "198.51.100.7"

# -- the pure parts -------------------------------------------------------------------------


def test_proxy_networks_and_told_addresses() -> None:
    nets = proxy_networks(["127.0.0.1", "10.0.0.0/8", "::1"])
    assert [str(n) for n in nets] == ["127.0.0.1/32", "10.0.0.0/8", "::1/128"]
    assert is_trusted("127.0.0.1", nets) and is_trusted("10.200.1.2", nets)
    assert is_trusted("::ffff:10.1.2.3", nets) and is_trusted("[::1]", nets)
    assert not is_trusted("127.0.0.2", nets) and not is_trusted("", nets)
    assert not is_trusted("tcp://10.0.0.1:4000", nets)  # not a bare address: never
    assert not is_trusted("127.0.0.1", ())
    assert told_address("2001:DB8::7") == "2001:db8::7"
    assert told_address("::ffff:192.0.2.1") == "192.0.2.1"
    for bad in ("", " 192.0.2.1", "192.0.2.1/32", "192.0.2.300", "example.org",
                "[::1]", "fe80::1%eth0", "1" * 46):
        with pytest.raises(ValueError, match="not an IP address"):
            told_address(bad)
    with pytest.raises(ValueError, match="has host bits set"):
        proxy_networks(["10.0.0.1/8"])


def test_config_trusted_proxies_and_tell_addresses() -> None:
    cfg = config_from_dict({"broker": {"trusted_proxies": ["127.0.0.1", "fd00::/8"]},
                            "irc": {"tell_addresses": True}})
    assert cfg.broker.trusted_proxies == ("127.0.0.1", "fd00::/8")
    assert cfg.irc.tell_addresses is True
    default = config_from_dict({})
    assert default.broker.trusted_proxies == () and default.irc.tell_addresses is False
    with pytest.raises(ConfigError) as info:
        config_from_dict({"broker": {"trusted_proxies": ["127.0.0.1", "gateway.lan"]}})
    assert str(info.value) == ("[broker] trusted_proxies: 'gateway.lan' is not an IP "
                               "address or a CIDR network ('gateway.lan' does not appear "
                               "to be an IPv4 or IPv6 network)")
    with pytest.raises(ConfigError, match=r"\[broker\] trusted_proxies: .*host bits set"):
        config_from_dict({"broker": {"trusted_proxies": ["10.0.0.1/8"]}})
    with pytest.raises(ConfigError, match="expected an array of strings"):
        config_from_dict({"broker": {"trusted_proxies": "127.0.0.1"}})
    with pytest.raises(ConfigError, match="tell_addresses"):
        config_from_dict({"irc": {"tell_addresses": "yes"}})


def test_the_address_field_is_left_out_unless_given() -> None:
    """Older brokers refuse unknown request fields: without ``address`` the bytes are
    those of before (§13)."""
    assert p.encode_request(b"r", p.Login(name="a", password="b"))[3] == \
        b'{"name":"a","password":"b","token":""}'
    assert p.encode_request(b"r", p.Register(name="a", password="b"))[3] == \
        b'{"name":"a","password":"b","bot":false}'
    assert p.encode_request(b"r", p.Login(name="a", password="b", address=USER_A))[3] == \
        b'{"name":"a","password":"b","token":"","address":"203.0.113.5"}'


# -- the core, with a fake clock -------------------------------------------------------------


def proxy_world(**overrides: Any) -> World:
    return World(trusted_proxies=(GATEWAY, "192.0.2.0/24"), login_rate_per_s=0.5,
                 login_burst=3, **overrides)


def test_core_a_trusted_proxy_counts_each_told_address_apart(
        caplog: pytest.LogCaptureFixture) -> None:
    world = proxy_world()
    gateway = world.peer()
    gateway.address = GATEWAY
    assert gateway.call(p.Register(name="alice", password=PASSWORD, address=USER_A)).ok
    for _ in range(2):  # A's tokens 2 and 3
        out = gateway.call(p.Login(name="alice", password="guess", address=USER_A))
        assert out.status == Status.UNAUTHORIZED
    refused = gateway.call(p.Login(name="alice", password=PASSWORD, address=USER_A))
    assert refused.status == Status.TOO_MANY_REQUESTS
    assert isinstance(refused.reply, p.Error)
    assert refused.reply.reason.startswith("too many login attempts from your address")
    # B, through the same gateway at the same moment, logs in at once: its own bucket
    with caplog.at_level(logging.INFO, logger="zchat.broker"):
        assert gateway.call(p.Login(name="alice", password=PASSWORD, address=USER_B)).ok
    assert f"login alice from {USER_B} via {GATEWAY}" in caplog.text
    (session,) = world.core.sessions.values()
    assert session.address == USER_B  # SESSIONS shows the user's address
    # the gateway's own bucket (requests that tell nothing) was not spent either
    other = world.peer()
    other.address = "192.0.2.44"  # a second gateway, of the trusted network
    assert other.login("alice").ok
    assert other.call(p.Logout()).ok
    for _ in range(2):
        assert other.login("alice", "guess").status == Status.UNAUTHORIZED
    assert other.login("alice").status == Status.TOO_MANY_REQUESTS  # its own 3, spent
    assert other.call(p.Login(name="alice", password=PASSWORD, address="::ffff:" + USER_B)
                      ).ok  # B's bucket (an IPv4-mapped form of it): 2 of 3 spent


def test_core_failed_login_log_names_both_addresses(caplog: pytest.LogCaptureFixture) -> None:
    world = proxy_world()
    gateway = world.peer()
    gateway.address = GATEWAY
    with caplog.at_level(logging.INFO, logger="zchat.broker"):
        assert gateway.call(p.Register(name="alice", password=PASSWORD, address=USER_A)).ok
        assert gateway.call(p.Login(name="alice", password="guess", address=USER_A)
                            ).status == Status.UNAUTHORIZED
        assert gateway.call(p.Login(name="alice", token="x" * 43, address=USER_A)
                            ).status == Status.UNAUTHORIZED
    assert f"registered alice from {USER_A} via {GATEWAY}" in caplog.text
    assert f"failed login for alice from {USER_A} via {GATEWAY}" in caplog.text
    assert f"failed token login for alice from {USER_A} via {GATEWAY}" in caplog.text


def test_core_an_untrusted_peer_may_not_tell_an_address() -> None:
    world = proxy_world()
    owner = world.peer()
    owner.address = "10.0.0.9"
    assert owner.register("alice").ok
    before = world.counts()
    for peer_address in ("10.0.0.9", "tcp://10.0.0.1:4000", ""):
        peer = world.peer()
        peer.address = peer_address
        for request in (p.Login(name="alice", password=PASSWORD, address=USER_A),
                        p.Register(name="bob", password=PASSWORD, address=USER_A),
                        p.Login(name="alice", password=PASSWORD, address="junk")):
            actions = handle_raw(world, peer.routing_id, request, peer.address)
            assert not any(isinstance(a, Offload) for a in actions), "hashed a refusal"
            out = peer.call(request)
            assert out.status == Status.FORBIDDEN
            assert isinstance(out.reply, p.Error)
            assert out.reply.reason.startswith("only a trusted proxy may give address "
                                               "(the broker's trusted_proxies)")
    assert world.core.sessions == {} and world.counts() == before
    assert "bob" not in world.core.accounts
    # no token was taken: the untrusted peer still has its 3 (it already used one)
    assert owner.login("alice", "guess").status == Status.UNAUTHORIZED
    assert owner.login("alice").ok


def test_core_a_malformed_address_is_400_and_counts_nothing() -> None:
    world = proxy_world()
    gateway = world.peer()
    gateway.address = GATEWAY
    assert gateway.register("alice").ok  # the gateway's own bucket: 1 of 3
    before = world.counts()
    for bad in ("", "203.0.113.500", "203.0.113.0/24", "irc.example.org", "x" * 100):
        for request in (p.Login(name="alice", password=PASSWORD, address=bad),
                        p.Register(name="bob", password=PASSWORD, address=bad)):
            out = gateway.call(request)
            assert out.status == Status.BAD_REQUEST, (bad, out.reply)
            assert isinstance(out.reply, p.Error)
            assert out.reply.reason.startswith("address: not an IP address")
            assert len(out.reply.reason) < 100
    assert world.core.sessions == {} and world.counts() == before
    # neither the gateway's bucket nor any other was spent
    assert gateway.login("alice", "guess").status == Status.UNAUTHORIZED
    assert gateway.login("alice").ok


def test_core_no_trusted_proxies_by_default() -> None:
    world = World()
    peer = world.peer()
    peer.address = "127.0.0.1"
    out = peer.call(p.Register(name="bob", password=PASSWORD, address=USER_A))
    assert out.status == Status.FORBIDDEN and "bob" not in world.core.accounts


# -- a real broker on loopback TCP -----------------------------------------------------------

@pytest.fixture
def proxied_broker(tmp_path: Path) -> Iterator[TcpBroker]:
    """``zchat broker`` on loopback TCP (plain: the raw DEALERs speak no CURVE) trusting
    127.0.0.1 as a proxy, with the default login limit (30 at once) refilled slowly (one
    per 100 s), so that a spent bucket stays spent for the whole test."""
    with running_tcp_broker(tmp_path, 'encryption = "none"\ntrusted_proxies = ["127.0.0.1"]\n'
                            "login_rate_per_s = 0.01\n") as broker:
        yield broker


@pytest.fixture
def zctx() -> Iterator[zmq.Context[Any]]:
    context: zmq.Context[Any] = zmq.Context()
    try:
        yield context
    finally:
        context.destroy(linger=0)


def test_tcp_told_addresses_have_their_own_buckets(proxied_broker: TcpBroker,
                                                   zctx: zmq.Context[Any]) -> None:
    """A trusted gateway spends address A's budget with 40 wrong passwords; a login it
    tells as address B is not held back, and A stays refused with the broker's reason."""
    gateway = RawPeer(zctx, proxied_broker.router, "127.0.0.1")
    try:
        assert isinstance(gateway.call(p.Register(name="alice", password=DEFAULT_PASSWORD,
                                                  address=USER_B)), p.Registered)
        statuses = []
        for _ in range(40):
            err = gateway.call(p.Login(name="alice", password="wrong pass", address=USER_A))
            assert isinstance(err, p.Error)
            statuses.append(err.status)
        assert statuses == [Status.UNAUTHORIZED] * 30 + [Status.TOO_MANY_REQUESTS] * 10
        logged = gateway.call(p.Login(name="alice", password=DEFAULT_PASSWORD,
                                      address=USER_B))
        assert isinstance(logged, p.LoggedIn) and logged.name == "alice"
        again = RawPeer(zctx, proxied_broker.router, "127.0.0.1")
        try:
            err = again.call(p.Login(name="alice", password=DEFAULT_PASSWORD, address=USER_A))
            assert isinstance(err, p.Error) and err.status == Status.TOO_MANY_REQUESTS
            assert err.reason.startswith("too many login attempts from your address: wait ")
            assert err.retry_after_ms > 0
            # the gateway's own address was never counted
            own = again.call(p.Login(name="alice", password=DEFAULT_PASSWORD))
            assert isinstance(own, p.LoggedIn)
        finally:
            again.close()
    finally:
        gateway.close()
    proxied_broker.process.wait_line(
        "stderr", f"failed login for alice from {USER_A} via 127.0.0.1")
    proxied_broker.process.wait_line("stderr", f"login alice from {USER_B} via 127.0.0.1")


def test_tcp_an_untrusted_peer_gets_403_and_a_bad_address_400(
        proxied_broker: TcpBroker, zctx: zmq.Context[Any]) -> None:
    outsider = RawPeer(zctx, proxied_broker.router, "127.0.0.2")
    gateway = RawPeer(zctx, proxied_broker.router, "127.0.0.1")
    try:
        assert isinstance(outsider.call(p.Register(name="alice", password=DEFAULT_PASSWORD)),
                          p.Registered)
        err = outsider.call(p.Login(name="alice", password=DEFAULT_PASSWORD, address=USER_A))
        assert isinstance(err, p.Error) and err.status == Status.FORBIDDEN
        assert err.reason == ("only a trusted proxy may give address (the broker's "
                              "trusted_proxies); this connection comes from 127.0.0.2")
        err = outsider.call(p.Register(name="bob", password=DEFAULT_PASSWORD, address=USER_A))
        assert isinstance(err, p.Error) and err.status == Status.FORBIDDEN
        pong = outsider.call(p.Ping())
        assert isinstance(pong, p.Pong) and pong.session == ""  # the login did not happen
        missing = outsider.call(p.Login(name="bob", password=DEFAULT_PASSWORD))
        assert isinstance(missing, p.Error) and missing.status == Status.NOT_FOUND
        for bad in ("203.0.113.500", "not-an-ip", "", "203.0.113.0/24"):
            err = gateway.call(p.Login(name="alice", password=DEFAULT_PASSWORD, address=bad))
            assert isinstance(err, p.Error) and err.status == Status.BAD_REQUEST, (bad, err)
            assert err.reason.startswith("address: not an IP address")
        pong = gateway.call(p.Ping())
        assert isinstance(pong, p.Pong) and pong.session == ""
    finally:
        outsider.close()
        gateway.close()


def test_tcp_without_address_the_peer_s_own_bucket_as_before(
        proxied_broker: TcpBroker, zctx: zmq.Context[Any]) -> None:
    gateway = RawPeer(zctx, proxied_broker.router, "127.0.0.1")
    try:
        assert isinstance(gateway.call(p.Register(name="alice", password=DEFAULT_PASSWORD)),
                          p.Registered)                                      # token 1
        for _ in range(29):                                                  # 2 to 30
            err = gateway.call(p.Login(name="alice", password="wrong pass"))
            assert isinstance(err, p.Error) and err.status == Status.UNAUTHORIZED
        err = gateway.call(p.Login(name="alice", password=DEFAULT_PASSWORD))
        assert isinstance(err, p.Error) and err.status == Status.TOO_MANY_REQUESTS
        assert err.reason.startswith("too many login attempts from your address: wait ")
        # a user's address the gateway tells has a bucket of its own
        logged = gateway.call(p.Login(name="alice", password=DEFAULT_PASSWORD, address=USER_B))
        assert isinstance(logged, p.LoggedIn)
    finally:
        gateway.close()
    line = proxied_broker.process.wait_line("stderr", "failed login for alice from 127.0.0.1")
    assert line.rstrip().endswith("failed login for alice from 127.0.0.1"), line


# -- the real IRC gateway with tell_addresses ------------------------------------------------


async def irc_login(port: int, source: str, nick: str, password: str) -> IrcClient:
    reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                   local_addr=(source, 0))
    irc = IrcClient(reader, writer)
    irc.send(f"PASS :{password}")
    irc.send(f"NICK {nick}")
    irc.send("USER u 0 * :Real")
    return irc


def test_gateway_tells_each_irc_client_s_address(proxied_broker: TcpBroker) -> None:
    """Eight IRC addresses with 5 wrong passwords each (40 at the broker: the gateway's
    old shared budget of 30 spent, and more) leave an honest IRC login from a ninth
    address welcomed at once; each attacker address is then refused by the gateway's own
    limit, and each told address was counted by the broker apart."""
    owner = RawPeer(zmq.Context.instance(), proxied_broker.router, "127.0.0.20")
    try:
        assert isinstance(owner.call(p.Register(name="alice", password=DEFAULT_PASSWORD)),
                          p.Registered)
    finally:
        owner.close()

    async def scenario() -> None:
        gw = Gateway(Settings(autojoin=False),
                     ClientOptions(server=proxied_broker.router, encryption="none"),
                     tell_addresses=True)
        _host, port = await gw.start("127.0.0.1", 0)
        try:
            for i in range(8):
                for _ in range(5):
                    irc = await irc_login(port, f"127.0.0.{30 + i}", "alice", "wrong pass")
                    assert (await irc.command("464")).params[-1] == \
                        "Password incorrect (wrong name or password)"
                    await irc.closed()
            # the gateway itself refuses a sixth try from an attacker's address
            irc = await irc_login(port, "127.0.0.30", "alice", "wrong pass")
            assert "too many failed logins from your address" in \
                (await irc.command("464")).params[-1]
            await irc.closed()
            honest = await irc_login(port, "127.0.0.50", "alice", DEFAULT_PASSWORD)
            assert (await honest.command("001")).params[0] == "alice"
            honest.send("QUIT")
            await honest.command("ERROR")
        finally:
            await gw.shutdown()

    run(scenario())
    for i in range(8):
        proxied_broker.process.wait_line(
            "stderr", f"failed login for alice from 127.0.0.{30 + i} via 127.0.0.1")
    proxied_broker.process.wait_line("stderr", "login alice from 127.0.0.50 via 127.0.0.1")
    # the gateway's own address was never counted as a login's
    assert not [line for line in proxied_broker.process.stderr
                if re.search(r"login (for )?alice from 127\.0\.0\.1\b(?! via)", line)]


def test_gateway_told_addresses_refused_by_a_broker_that_does_not_trust_it(
        proxied_broker: TcpBroker, caplog: pytest.LogCaptureFixture) -> None:
    """A gateway reaching the broker from an address not in its trusted_proxies: the
    login is refused with the broker's reason, and the gateway logs what to configure."""
    owner = RawPeer(zmq.Context.instance(), proxied_broker.router, "127.0.0.20")
    try:
        assert isinstance(owner.call(p.Register(name="alice", password=DEFAULT_PASSWORD)),
                          p.Registered)
    finally:
        owner.close()
    server = proxied_broker.router.replace("tcp://", "tcp://127.0.0.2:0;", 1)

    async def scenario() -> None:
        gw = Gateway(Settings(autojoin=False),
                     ClientOptions(server=server, encryption="none"), tell_addresses=True)
        _host, port = await gw.start("127.0.0.1", 0)
        try:
            irc = await irc_login(port, "127.0.0.60", "alice", DEFAULT_PASSWORD)
            assert (await irc.command("464")).params[-1] == (
                "Password incorrect (only a trusted proxy may give address (the broker's "
                "trusted_proxies); this connection comes from 127.0.0.2)")
            await irc.closed()
            reader, writer = await asyncio.open_connection("127.0.0.1", port,
                                                           local_addr=("127.0.0.61", 0))
            irc = IrcClient(reader, writer)
            for line in ("CAP LS 302", "NICK bob", "USER u 0 * :x",
                         f"REGISTER * * :{DEFAULT_PASSWORD}"):
                irc.send(line)
            fail = await irc.command("FAIL")
            assert fail.params[:3] == ("REGISTER", "TEMPORARILY_UNAVAILABLE", "bob")
            assert fail.params[-1].startswith("only a trusted proxy may give address")
            irc.close()
        finally:
            await gw.shutdown()

    with caplog.at_level(logging.ERROR, logger="zchat.irc"):
        run(scenario())
    assert "[irc] tell_addresses is on, but the broker does not trust this gateway" \
        in caplog.text
