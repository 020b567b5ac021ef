"""Transport security (docs/PROTOCOL.md §16, docs/security.md): CurveZMQ on real tcp
sockets on 127.0.0.1, the ZAP handler, the broker's key pair, trust on first use and
key pinning, and proof that nothing readable crosses the wire.

The eavesdropper is a real TCP relay (``Relay``) between the clients and the broker that
records every byte in both directions; the same scenario with ``encryption = "none"``
shows the strings do appear in clear, so the assertion can fail.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import threading
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
import zmq.asyncio
from conftest import free_port, run, wait_until

from zchat import keyformat
from zchat import wire as p
from zchat.broker import keypair
from zchat.broker.loop import Broker, BrokerThread, TransportSecurityError
from zchat.client import trust
from zchat.client.client import Client
from zchat.config import BrokerConfig, ConfigError, config_from_dict
from zchat.errors import ConnectionFailed
from zchat.store import Store

PASSWORD = "correct horse battery staple"


# -- helpers -------------------------------------------------------------------------------


def broker_config(tmp_path: Path, data: str = "data", **overrides: Any) -> BrokerConfig:
    settings: dict[str, Any] = dict(router="tcp://127.0.0.1:0", pub="tcp://127.0.0.1:0",
                                    data_dir=str(tmp_path / data), argon2_memory_kib=1024, argon2_time_cost=1,
                                    login_rate_per_s=0.0)
    settings.update(overrides)
    return BrokerConfig(**settings)


@contextlib.contextmanager
def broker(tmp_path: Path, ctx: zmq.Context[Any], data: str = "data",
           **overrides: Any) -> Iterator[Broker]:
    cfg = broker_config(tmp_path, data, **overrides)
    with BrokerThread(cfg, Store(tmp_path / f"{data}.db"), ctx) as b:
        yield b


def client(b: Broker, ctx: zmq.Context[Any], known: Path, **kw: Any) -> Client:
    kw.setdefault("key_server", b.key_endpoint)
    kw.setdefault("timeout_s", 5.0)
    return Client(b.router_endpoint, context=ctx, known_brokers=known, **kw)


class Relay:
    """A TCP relay from a loopback port to ``target_port`` that records every byte it
    forwards, both ways (``captured``). Closed with ``close()``."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self._lock = threading.Lock()
        self._data = bytearray()
        self._socks: list[socket.socket] = [self.listener]
        self._threads = [threading.Thread(target=self._accept, daemon=True)]
        self._threads[0].start()

    @property
    def captured(self) -> bytes:
        with self._lock:
            return bytes(self._data)

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.listener.accept()
            except OSError:
                return
            try:
                up = socket.create_connection(("127.0.0.1", self.target_port))
            except OSError:
                down.close()
                continue
            with self._lock:
                self._socks += [down, up]
            for src, dst in ((down, up), (up, down)):
                t = threading.Thread(target=self._pump, args=(src, dst), daemon=True)
                t.start()
                self._threads.append(t)

    def _pump(self, src: socket.socket, dst: socket.socket) -> None:
        while True:
            try:
                chunk = src.recv(65536)
            except OSError:
                chunk = b""
            if not chunk:
                with contextlib.suppress(OSError):
                    dst.shutdown(socket.SHUT_WR)
                return
            with self._lock:
                self._data += chunk
            try:
                dst.sendall(chunk)
            except OSError:
                return

    def close(self) -> None:
        with self._lock:
            socks = list(self._socks)
        for s in socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()
        for t in self._threads:
            t.join(5)


def port_of(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


# -- keys, fingerprints, the pinned-keys file ----------------------------------------------


def test_broker_key_pair_is_created_private_and_reused(tmp_path: Path) -> None:
    first, created = keypair.load_or_create_broker_keys(tmp_path)
    assert created
    secret_file = tmp_path / keypair.BROKER_SECRET_FILE
    assert stat.S_IMODE(secret_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / keypair.BROKER_PUBLIC_FILE).stat().st_mode) == 0o600
    assert first.secret.decode() not in (tmp_path / keypair.BROKER_PUBLIC_FILE).read_text()
    assert first.secret.decode() not in repr(first)
    again, created_again = keypair.load_or_create_broker_keys(tmp_path)
    assert (again, created_again) == (first, False)
    # The pair is a real CURVE pair: the public key derives from the secret one.
    assert zmq.curve_public(first.secret) == first.public


def test_a_secret_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    keypair.load_or_create_broker_keys(tmp_path)
    secret_file = tmp_path / keypair.BROKER_SECRET_FILE
    os.chmod(secret_file, 0o644)
    with pytest.raises(keyformat.KeyFileError, match=r"accessible by others \(mode 0644\).*"
                                                r"chmod 600"):
        keypair.load_or_create_broker_keys(tmp_path)


def test_fingerprint_and_key_checks() -> None:
    public, _secret = zmq.curve_keypair()
    fp = keyformat.fingerprint(public)
    assert fp.startswith("SHA256:") and len(fp) == len("SHA256:") + 43 and "=" not in fp
    assert keyformat.fingerprint(public.decode()) == fp
    assert keyformat.fingerprint(zmq.curve_keypair()[0]) != fp
    assert keyformat.check_key(public.decode()) == public.decode()
    with pytest.raises(keyformat.BadKey, match="40 characters"):
        keyformat.check_key("short")
    with pytest.raises(keyformat.BadKey, match="not Z85"):
        keyformat.check_key("~" * 40)


def test_pinning_writes_a_private_toml_file_and_never_replaces_a_pin(tmp_path: Path) -> None:
    path = tmp_path / "cfg" / "zchat" / trust.KNOWN_BROKERS_FILE
    key_a, key_b = (zmq.curve_keypair()[0].decode() for _ in range(2))
    trust.pin_broker_key(path, "tcp://a.example:5555", key_a)
    trust.pin_broker_key(path, "tcp://b.example:5555", key_b)
    trust.pin_broker_key(path, "tcp://a.example:5555", key_b)  # kept: a pin is not replaced
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert tomllib.loads(path.read_text()) == {"brokers": {"tcp://a.example:5555": key_a,
                                                           "tcp://b.example:5555": key_b}}
    assert trust.load_known_brokers(path)["tcp://b.example:5555"] == key_b
    line = trust.pinned_line(path, "tcp://b.example:5555")
    assert line is not None and "b.example" in path.read_text().splitlines()[line - 1]
    path.write_text('[brokers]\n"tcp://x:1" = "nope"\n')
    with pytest.raises(keyformat.KeyFileError, match="40 characters"):
        trust.load_known_brokers(path)


def test_key_endpoint_is_derived_from_the_router_port() -> None:
    assert keyformat.key_endpoint_for("tcp://127.0.0.1:5555") == "tcp://127.0.0.1:5557"
    assert keyformat.key_endpoint_for("tcp://[::1]:7000") == "tcp://[::1]:7002"
    assert keyformat.key_endpoint_for("tcp://*:0") == "tcp://*:0"
    with pytest.raises(ValueError):
        keyformat.key_endpoint_for("tcp://h:65535")


def test_config_validates_encryption_and_server_key() -> None:
    with pytest.raises(ConfigError, match=r"\[broker\] encryption: must be one of curve, none"):
        config_from_dict({"broker": {"encryption": "tls"}})
    with pytest.raises(ConfigError, match=r"\[client\] server_key: .*40 characters"):
        config_from_dict({"client": {"server_key": "abc"}})
    key = zmq.curve_keypair()[0].decode()
    cfg = config_from_dict({"client": {"server_key": key, "encryption": "none"}})
    assert (cfg.client.server_key, cfg.client.encryption) == (key, "none")
    assert (cfg.broker.encryption, cfg.client.encryption) == ("curve", "none")


# -- the broker: CURVE on by default, ZAP always running -----------------------------------


def test_curve_round_trip_with_trust_on_first_use(tmp_path: Path,
                                                  ctx: zmq.Context[Any]) -> None:
    known = tmp_path / "known_brokers.toml"
    with broker(tmp_path, ctx) as b:
        assert b.encrypted and b.keys is not None and b.zap is not None
        assert b.zap.is_alive()
        assert b.key_endpoint.startswith("tcp://127.0.0.1:")
        zap_before = b.zap.requests

        async def scenario() -> tuple[p.MessagePosted, Client]:
            alice = client(b, ctx, known)
            bob = client(b, ctx, known)
            async with alice, bob:
                await alice.register("alice", PASSWORD)
                await bob.register("bob", PASSWORD)
                await alice.login("alice", PASSWORD)
                await bob.login("bob", PASSWORD)
                await alice.join("dev")
                await bob.join("dev")
                await alice.send("dev", "hello over curve")
                while True:
                    event = await bob.next_event(5.0)
                    assert event is not None, "bob got no message"
                    if isinstance(event, p.MessagePosted):
                        return event, alice

        msg, alice = run(scenario())
        assert (msg.room, msg.sender, msg.text) == ("dev", "alice", "hello over curve")
        # The first connection pinned the key; the second found the pin.
        assert alice.pinned is not None and alice.pinned.key == b.keys.public.decode()
        assert alice.pinned.path == known
        assert trust.load_known_brokers(known) == {b.router_endpoint: b.keys.public.decode()}
        assert stat.S_IMODE(known.stat().st_mode) == 0o600
        assert keyformat.fingerprint(b.keys.public) in alice.pinned.notice()
        # Every handshake went through the ZAP handler: 2 clients x (DEALER + SUB).
        assert b.zap.requests - zap_before >= 4


def test_broker_refuses_curve_when_its_zap_handler_cannot_run(tmp_path: Path,
                                                              ctx: zmq.Context[Any]) -> None:
    squatter = ctx.socket(zmq.REP)  # another handler already owns this context's ZAP
    squatter.bind("inproc://zeromq.zap.01")
    port = free_port()
    cfg = broker_config(tmp_path, router=f"tcp://127.0.0.1:{port}")
    b = Broker(cfg, Store(tmp_path / "z.db"), ctx)
    try:
        with pytest.raises(TransportSecurityError, match="refusing to run CURVE"):
            b.bind()
        assert b.zap is None
        # Nothing was bound: the ROUTER's port is still free.
        with socket.create_server(("127.0.0.1", port)):
            pass
    finally:
        b.close()
        squatter.close(0)


def test_zap_handler_stops_with_the_broker(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    with broker(tmp_path, ctx) as b:
        zap = b.zap
        assert zap is not None and zap.is_alive()
    assert not zap.is_alive()
    # The ZAP endpoint is free again: a second broker in the same context can start.
    with broker(tmp_path, ctx) as again:
        assert again.zap is not None and again.zap.is_alive()


def test_inproc_stays_plain_and_none_is_plain(tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    with broker(tmp_path, ctx, router="inproc://plain-r", pub="inproc://plain-p") as b:
        assert (b.encrypted, b.zap, b.key_endpoint) == (False, None, "")
    with broker(tmp_path, ctx, encryption="none") as b:
        assert (b.encrypted, b.zap, b.key_endpoint, b.keys) == (False, None, "", None)
        assert not (tmp_path / "data" / keypair.BROKER_SECRET_FILE).exists()


def test_key_service_ignores_junk_and_keeps_serving(tmp_path: Path,
                                                    ctx: zmq.Context[Any]) -> None:
    with broker(tmp_path, ctx) as b:
        junk = ctx.socket(zmq.DEALER)
        junk.setsockopt(zmq.LINGER, 0)
        try:
            junk.connect(b.key_endpoint)
            junk.send(b"GIVE ME THE SECRET")
            junk.send(b"x" * 1000)  # over the frame limit: libzmq drops the connection
            assert not junk.poll(300)
        finally:
            junk.close(0)

        async def fetch() -> str:
            actx = zmq.asyncio.Context.shadow(ctx.underlying)
            return await trust.fetch_broker_key(actx, b.key_endpoint, 5.0)

        assert b.keys is not None
        assert run(fetch()) == b.keys.public.decode()


# -- threats -------------------------------------------------------------------------------


def test_wrong_key_pinned_is_refused_loudly_and_nothing_is_sent(tmp_path: Path,
                                                                ctx: zmq.Context[Any]) -> None:
    known = tmp_path / "known_brokers.toml"
    with broker(tmp_path, ctx) as b:
        assert b.zap is not None and b.keys is not None
        relay = Relay(port_of(b.router_endpoint))
        server = f"tcp://127.0.0.1:{relay.port}"
        impostor = zmq.curve_keypair()[0].decode()
        trust.pin_broker_key(known, server, impostor)
        zap_before = b.zap.requests
        try:
            async def attempt() -> None:
                c = Client(server, context=ctx, known_brokers=known,
                           key_server=b.key_endpoint, timeout_s=1.0)
                async with c:
                    await c.login("alice", PASSWORD)

            with pytest.raises(trust.BrokerKeyChanged) as caught:
                run(attempt())
        finally:
            relay.close()
        text = str(caught.value)
        assert "BROKER IDENTIFICATION HAS CHANGED" in text
        assert f"{known}, line " in text
        assert keyformat.fingerprint(impostor) in text
        assert keyformat.fingerprint(b.keys.public) in text
        assert f"delete the line for {server}" in text
        # Nothing went through: no handshake reached the ZAP handler, no session exists,
        # and the password never crossed the relay.
        assert b.zap.requests == zap_before
        assert b.core is not None and not b.core.sessions
        assert PASSWORD.encode() not in relay.captured
        assert trust.load_known_brokers(known)[server] == impostor  # the pin is kept


def test_a_changed_broker_key_is_refused(tmp_path: Path) -> None:
    """The same endpoint served by a broker with a new data directory (a new key pair)."""
    known = tmp_path / "known_brokers.toml"
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    key_endpoint = f"tcp://127.0.0.1:{free_port()}"
    ends = dict(router=router, pub=pub, key_endpoint=key_endpoint)

    async def connect() -> Client:
        c = Client(router, known_brokers=known, key_server=key_endpoint, timeout_s=1.0)
        await c.connect()
        await c.close()
        return c

    first_ctx: zmq.Context[Any] = zmq.Context()
    try:
        with broker(tmp_path, first_ctx, "one", **ends) as b1:
            assert b1.keys is not None
            first_key = b1.keys.public.decode()
            assert run(connect()).pinned is not None
    finally:
        first_ctx.destroy(0)
    second_ctx: zmq.Context[Any] = zmq.Context()
    try:
        with broker(tmp_path, second_ctx, "two", **ends) as b2:
            assert b2.keys is not None and b2.keys.public.decode() != first_key
            with pytest.raises(trust.BrokerKeyChanged, match="IDENTIFICATION HAS CHANGED"):
                run(connect())
            assert b2.core is not None and not b2.core.sessions
    finally:
        second_ctx.destroy(0)
    assert trust.load_known_brokers(known) == {router: first_key}


def test_server_key_given_up_front_is_used_and_never_pinned(tmp_path: Path,
                                                            ctx: zmq.Context[Any]) -> None:
    known = tmp_path / "known_brokers.toml"
    with broker(tmp_path, ctx) as b:
        assert b.keys is not None

        async def scenario() -> Client:
            # No key service to ask (a closed port): the configured key is enough.
            c = Client(b.router_endpoint, context=ctx, known_brokers=known,
                       server_key=b.keys.public.decode() if b.keys else "",
                       key_server=f"tcp://127.0.0.1:{free_port()}")
            async with c:
                await c.register("carol", PASSWORD)
                assert (await c.login("carol", PASSWORD)).name == "carol"
            return c

        c = run(scenario())
        assert c.pinned is None and not known.exists()

        wrong = zmq.curve_keypair()[0].decode()

        async def mismatch() -> None:
            c = client(b, ctx, known, server_key=wrong, timeout_s=1.0)
            async with c:
                pass

        with pytest.raises(trust.BrokerKeyChanged, match=r"server_key") as caught:
            run(mismatch())
        assert keyformat.fingerprint(wrong) in str(caught.value)
        assert not known.exists()


def test_plaintext_client_gets_nothing_from_an_encrypting_broker(
        tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    with broker(tmp_path, ctx) as b:
        assert b.zap is not None
        zap_before = b.zap.requests

        async def attempt() -> None:
            c = client(b, ctx, tmp_path / "k.toml", encryption="none", timeout_s=1.0)
            async with c:
                pass

        with pytest.raises(ConnectionFailed, match=r"may require encryption.*encryption"):
            run(attempt())
        assert b.core is not None and not b.core.sessions
        assert b.zap.requests == zap_before


def test_curve_client_gets_nothing_from_a_plain_broker(tmp_path: Path,
                                                       ctx: zmq.Context[Any]) -> None:
    with broker(tmp_path, ctx, encryption="none") as b:
        async def attempt() -> None:
            c = Client(b.router_endpoint, context=ctx, known_brokers=tmp_path / "k.toml",
                       server_key=zmq.curve_keypair()[0].decode(),
                       key_server=f"tcp://127.0.0.1:{free_port()}", timeout_s=1.0)
            async with c:
                pass

        # A plain broker runs no key service: to a curve client it looks like a broker
        # that is down, and the error says what is known (issue 13 §5).
        with pytest.raises(ConnectionFailed, match=r"the broker does not answer"):
            run(attempt())


def test_down_broker_is_said_to_not_answer_not_to_lack_encryption(
        tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    """Nothing listens on the router nor on the key service: the broker is most likely
    down, and the error says so instead of hinting at the encryption settings."""
    port = free_port()

    async def attempt() -> None:
        c = Client(f"tcp://127.0.0.1:{port}", context=ctx, known_brokers=tmp_path / "k.toml",
                   server_key=zmq.curve_keypair()[0].decode(),
                   key_server=f"tcp://127.0.0.1:{free_port()}", timeout_s=1.0)
        async with c:
            pass

    with pytest.raises(ConnectionFailed) as caught:
        run(attempt())
    assert "the broker does not answer" in str(caught.value)
    assert "encryption" not in str(caught.value)


def test_broker_whose_key_service_answers_keeps_the_encryption_hint(
        tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    """The key service answers with the key the client uses, yet INFO goes unanswered:
    the broker runs, so the handshake is what failed."""
    with broker(tmp_path, ctx) as b:
        assert b.keys is not None and b.core is not None
        b.core.handle = lambda *a, **k: []  # type: ignore[method-assign]  # INFO unanswered

        async def attempt() -> None:
            c = client(b, ctx, tmp_path / "k.toml", server_key=b.keys.public.decode(),
                       timeout_s=1.0)
            async with c:
                pass

        with pytest.raises(ConnectionFailed, match=r"may not use encryption"):
            run(attempt())


def test_raw_subscriber_without_the_key_receives_nothing(tmp_path: Path,
                                                         ctx: zmq.Context[Any]) -> None:
    """An eavesdropper subscribing to everything on the PUB endpoint gets no event, while
    a proper client in the same room does."""
    with broker(tmp_path, ctx) as b:
        spy = ctx.socket(zmq.SUB)
        spy.setsockopt(zmq.LINGER, 0)
        spy.setsockopt(zmq.SUBSCRIBE, b"")
        spy.connect(b.pub_endpoint)
        try:
            async def scenario() -> p.MessagePosted:
                a = client(b, ctx, tmp_path / "k.toml")
                r = client(b, ctx, tmp_path / "k.toml")
                async with a, r:
                    await a.register("alice", PASSWORD)
                    await r.register("reader", PASSWORD)
                    await a.login("alice", PASSWORD)
                    await r.login("reader", PASSWORD)
                    await a.join("dev")
                    await r.join("dev")
                    await a.send("dev", "for members' eyes")
                    while True:
                        event = await r.next_event(5.0)
                        assert event is not None
                        if isinstance(event, p.MessagePosted):
                            return event

            assert run(scenario()).text == "for members' eyes"
            assert not spy.poll(500), "a subscriber without the broker's key got an event"
        finally:
            spy.close(0)


@pytest.mark.parametrize("encryption", ["curve", "none"])
def test_eavesdropper_on_the_wire_sees_no_secret(tmp_path: Path, ctx: zmq.Context[Any],
                                                 encryption: str) -> None:
    """Every byte between clients and broker (ROUTER and PUB) passes a recording relay.
    With CURVE no password, token, DM or room text appears in it; with "none" each does
    (so this test can fail)."""
    router_port, pub_port = free_port(), free_port()
    pub_relay = Relay(pub_port)
    overrides = dict(router=f"tcp://127.0.0.1:{router_port}",
                     pub=f"tcp://127.0.0.1:{pub_port}",
                     pub_advertised=f"tcp://127.0.0.1:{pub_relay.port}",
                     encryption=encryption)
    router_relay = Relay(router_port)
    secrets = {"password": PASSWORD, "dm": "the dm is 7d1e-secret",
               "room": "the room line is 4c9a-secret"}
    try:
        with broker(tmp_path, ctx, **overrides) as b:
            server = f"tcp://127.0.0.1:{router_relay.port}"

            async def scenario() -> str:
                kw: dict[str, Any] = dict(context=ctx, known_brokers=tmp_path / "k.toml",
                                          key_server=b.key_endpoint, encryption=encryption)
                alice, bob = Client(server, **kw), Client(server, **kw)
                async with alice, bob:
                    await alice.register("alice", PASSWORD)
                    await bob.register("bob", PASSWORD)
                    await alice.login("alice", PASSWORD)
                    token = (await alice.create_token("eavesdrop test")).token
                    await bob.login("bob", PASSWORD)
                    await alice.join("dev")
                    await bob.join("dev")
                    await alice.dm("bob", secrets["dm"])
                    await alice.send("dev", secrets["room"])
                    seen: set[str] = set()
                    while len(seen) < 2:
                        event = await bob.next_event(5.0)
                        assert event is not None
                        if isinstance(event, p.DirectMessage | p.MessagePosted):
                            seen.add(event.text)
                    assert seen == {secrets["dm"], secrets["room"]}
                    await alice.logout()
                    await alice.login("alice", token=token)  # a token login on the wire
                return token

            secrets["token"] = run(scenario())
            # Over PUB, or over the ROUTER when bob's subscription came late and his
            # client fetched it with HISTORY (a late joiner, PROTOCOL §14): once on a relay.
            wait_until(lambda: secrets["room"].encode() in pub_relay.captured
                       + router_relay.captured or encryption == "curve",
                       what="the room line on a relay")
    finally:
        router_relay.close()
        pub_relay.close()
    wire = router_relay.captured + pub_relay.captured
    assert len(router_relay.captured) > 1000 and len(pub_relay.captured) > 100
    found = {name for name, text in secrets.items() if text.encode() in wire}
    if encryption == "curve":
        assert found == set()
    else:
        assert found == {"password", "token", "dm", "room"}


def test_zap_reply_allows_curve_only() -> None:
    """RFC 27 replies of the broker's ZAP handler: CURVE with any key 200 on the ROUTER,
    the key (hex) as User-Id; on the PUB only a key the broker admits (§16.2); any other
    mechanism or a malformed request 400, echoing the request id."""
    from zchat.broker.zap import PUB_ZAP_DOMAIN, zap_reply

    curve = [b"1.0", b"7", b"zchat", b"127.0.0.1", b"", b"CURVE", b"k" * 32]
    user_id = (b"k" * 32).hex().encode()
    assert zap_reply(curve) == [b"1.0", b"7", b"200", b"OK", user_id, b""]
    assert zap_reply(curve, lambda key: False)[2] == b"200"  # the ROUTER admits any key
    pub = [b"1.0", b"8", PUB_ZAP_DOMAIN, b"127.0.0.1", b"", b"CURVE", b"k" * 32]
    asked: list[str] = []
    assert zap_reply(pub, lambda key: asked.append(key) or False)[2:4] == [
        b"400", b"log in before subscribing"]
    assert asked == [user_id.decode()]
    assert zap_reply(pub, lambda key: True)[2:5] == [b"200", b"OK", user_id]
    assert zap_reply(pub[:6] + [b"short"])[2] == b"400"  # not a CURVE key
    assert zap_reply([b"1.0", b"8", b"zchat", b"127.0.0.1", b"", b"NULL"])[2:3] == [b"400"]
    assert zap_reply([b"1.0", b"9", b"zchat", b"127.0.0.1", b"", b"PLAIN", b"u", b"p"]
                     )[1:3] == [b"9", b"400"]
    assert zap_reply([b"2.0", b"10", b"zchat", b"", b"", b"CURVE"])[1:3] == [b"10", b"400"]
    assert zap_reply([b"1.0"])[2] == b"400"
