"""Who may subscribe to the broker's PUB over tcp with CURVE (docs/PROTOCOL.md §16.2, issue
14 item 8): only a CURVE key bound to a live session by its LOGIN or RESUME.

A tester connected 500 SUBs with fresh keys that never logged in and never read: the
honest clients' PING median rose to 67 ms. Here the same, scaled down, against
``zchat broker`` as a subprocess on loopback tcp (CURVE on), with raw SUB sockets for the
attacker (a monitor on each says whether its handshake passed) and zchat Clients for the
honest side. Every wait is on a condition with a deadline.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import TcpBroker, run, running_tcp_broker, wait_until
from subscriber_helpers import Subscriber, broker_key, settle

from zchat import wire as p
from zchat.client.client import Client
from zchat.client.endpoints import pub_endpoint_for
from zchat.testing import DEFAULT_PASSWORD, next_message

#: Anonymous subscribers of the attack (500 in the tester's run).
ATTACKERS = 200
#: Bound of every honest PING round trip during the attack, and of their median: generous
#: for a loaded 2-core machine (idle: about 1 ms).
PING_BOUND_S = 1.5
PING_MEDIAN_BOUND_S = 0.25
#: Descriptors the broker may hold beyond its count before the attack (a refused SUB's
#: connection is closed; an admitted one would hold one each).
FD_SLACK = 20


@pytest.fixture
def broker(tmp_path: Path) -> Iterator[TcpBroker]:
    with running_tcp_broker(tmp_path, "send_rate_per_s = 0.0\n") as b:
        yield b


def fd_count(pid: int) -> int:
    import os
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_anonymous_subscribers_are_refused_and_honest_clients_served(
        tmp_path: Path, broker: TcpBroker, ctx: zmq.Context[Any]) -> None:
    key = broker_key(tmp_path, broker)
    pid = broker.process.popen.pid
    subs: list[Subscriber] = []

    async def scenario() -> None:
        async with Client(broker.router, timeout_s=5) as ann, \
                Client(broker.router, timeout_s=5) as bob:
            for client, name in ((ann, "ann"), (bob, "bob")):
                await client.register(name, DEFAULT_PASSWORD)
                await client.login(name, DEFAULT_PASSWORD)
            assert ann.info is not None
            pub = pub_endpoint_for(broker.router, ann.info.pub)
            # the honest clients' SUBs work over tcp + CURVE (they logged in first)
            await bob.send("lobby", "hello")
            assert (await next_message(ann, "lobby")).text == "hello"
            before = fd_count(pid)
            for _ in range(ATTACKERS):
                subs.append(Subscriber(ctx, pub, key))
            outcomes = settle(subs)
            assert outcomes == [f"refused {400}"] * ATTACKERS, set(outcomes)
            wait_until(lambda: fd_count(pid) <= before + FD_SLACK, timeout_s=10,
                       what="the refused subscribers' connections to close")
            # honest traffic while the refused subscribers stay around
            times = []
            for i in range(200):
                await bob.send("lobby", f"m{i}")
                if i % 10 == 0:
                    start = time.monotonic()
                    await ann.ping(timeout_s=5)
                    times.append(time.monotonic() - start)
            assert max(times) < PING_BOUND_S, times
            assert statistics.median(times) < PING_MEDIAN_BOUND_S, times
            got = [(await next_message(ann, "lobby")).text for _ in range(200)]
            assert got == [f"m{i}" for i in range(200)]  # every one, once, in order
            assert not any(s.sub.poll(0) for s in subs)  # no event reached an attacker

    try:
        run(scenario(), timeout_s=40)
    finally:
        for s in subs:
            s.close()


def request(dealer: zmq.Socket[Any], req: p.Request, reply: type[p.Reply]) -> Any:
    request_id = f"{time.monotonic_ns()}".encode()
    dealer.send_multipart(p.encode_request(request_id, req))
    assert dealer.poll(5000), f"no answer to {req.TYPE}"
    _rid, value = p.decode_from_broker(dealer.recv_multipart(), {request_id: reply})
    assert not isinstance(value, p.Error), value
    return value


def test_a_sessions_key_may_subscribe_until_the_session_ends(
        tmp_path: Path, broker: TcpBroker, ctx: zmq.Context[Any]) -> None:
    from zchat.broker.zap import SUBSCRIPTIONS_PER_KEY
    key = broker_key(tmp_path, broker)
    keypair = zmq.curve_keypair()
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.setsockopt(zmq.CURVE_SERVERKEY, key)
    dealer.setsockopt(zmq.CURVE_PUBLICKEY, keypair[0])
    dealer.setsockopt(zmq.CURVE_SECRETKEY, keypair[1])
    dealer.connect(broker.router)
    subs: list[Subscriber] = []
    try:
        info = request(dealer, p.Info(), p.InfoReply)
        pub = pub_endpoint_for(broker.router, info.pub)
        # before LOGIN: refused, even with the DEALER's own key
        subs.append(Subscriber(ctx, pub, key, keypair))
        assert settle(subs[-1:]) == ["refused 400"]
        request(dealer, p.Register(name="cat", password=DEFAULT_PASSWORD), p.Registered)
        request(dealer, p.Login(name="cat", password=DEFAULT_PASSWORD), p.LoggedIn)
        # logged in: that key may subscribe, a few times (a SUB reconnecting), no more;
        # another key still may not
        subs += [Subscriber(ctx, pub, key, keypair) for _ in range(SUBSCRIPTIONS_PER_KEY)]
        assert settle(subs[1:]) == ["ok"] * SUBSCRIPTIONS_PER_KEY
        subs += [Subscriber(ctx, pub, key, keypair), Subscriber(ctx, pub, key)]
        assert settle(subs[-2:]) == ["refused 400"] * 2
        # the session ends: its key may no longer subscribe
        request(dealer, p.Logout(), p.Ok)
        subs.append(Subscriber(ctx, pub, key, keypair))
        assert settle(subs[-1:]) == ["refused 400"]
    finally:
        for s in subs:
            s.close()
        dealer.close(linger=0)


# -- the core's part, with a fake clock: which keys are bound ------------------------------


def test_the_core_binds_a_key_to_its_session_until_it_ends(tmp_path: Path) -> None:
    from core_helpers import PASSWORD, Clock, config, run

    from zchat.core import BrokerCore
    from zchat.store import Store

    clock = Clock()
    store = Store(tmp_path / "z.db")
    try:
        core = BrokerCore(store, config(), "tcp://127.0.0.1:5556", clock.ms)

        def call(rid: bytes, req: p.Request, key: str = "") -> Any:
            actions = run(core, core.handle(rid, p.encode_request(b"1", req), clock.s,
                                            clock.ms, "127.0.0.1", key), clock)
            reply = p.decode_from_broker(actions[0].frames, {b"1": type(req).REPLY})[1]
            assert not isinstance(reply, p.Error), reply
            return reply

        call(b"a", p.Register(name="ann", password=PASSWORD), "aa" * 32)
        assert core.subscriber_keys == {}  # REGISTER binds nothing
        version = core.subscriber_version
        session = call(b"a", p.Login(name="ann", password=PASSWORD), "aa" * 32).session
        assert core.subscriber_keys == {"aa" * 32: 1}
        assert core.subscriber_version > version
        # RESUME on a new connection moves the session to that connection's key
        call(b"b", p.Resume(session=session), "bb" * 32)
        assert core.subscriber_keys == {"bb" * 32: 1}
        call(b"b", p.Logout())
        assert core.subscriber_keys == {}
        # a plain connection (no key) binds nothing; eviction unbinds as LOGOUT does
        call(b"c", p.Login(name="ann", password=PASSWORD))
        call(b"d", p.Login(name="ann", password=PASSWORD), "dd" * 32)
        assert core.subscriber_keys == {"dd" * 32: 1}
        clock.jump(config().heartbeat_timeout_s + 1)
        core.tick(clock.s, clock.ms)
        assert core.subscriber_keys == {}
    finally:
        store.close()
