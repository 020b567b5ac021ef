"""A client whose path to the broker's ROUTER is cut while the broker's PUB still reaches
it moves on (docs/PROTOCOL.md §10): TICKs on the SUB show that the PUB works, not that the
broker hears the client. A fourth tester put a proxy in front of one broker's ROUTER only
(the SUB connects straight to the PUB that INFO advertises) and stopped it: the client
stayed for ever, hearing TICKs, while the broker evicted its session.

Real parts: an in-process broker on loopback tcp, tests/tcp_proxy.py in front of its
ROUTER, the real Client with reconnect. Every wait is on an event with a deadline."""

from __future__ import annotations

import asyncio

from client_helpers import collect, is_
from conftest import run
from tcp_proxy import TcpProxy

from zchat import wire as p
from zchat.client.client import Client
from zchat.client.events import ConnectionLost, ConnectionRestored, Reconnecting
from zchat.testing import DEFAULT_PASSWORD, running_broker


def test_a_client_whose_router_path_is_cut_reconnects_though_ticks_still_arrive() -> None:
    async def main() -> None:
        with running_broker(router="tcp://127.0.0.1:0", pub="tcp://127.0.0.1:0",
                            encryption="none", heartbeat_interval_s=0.2,
                            heartbeat_timeout_s=5.0) as harness:
            port = int(harness.server.rsplit(":", 1)[1])
            with TcpProxy("127.0.0.1", port) as proxy:
                alice = Client(f"tcp://127.0.0.1:{proxy.port}", context=harness.context,
                               timeout_s=1.0, reconnect=True, reconnect_max_s=0.5,
                               encryption="none")
                try:
                    await alice.connect()
                    await alice.register("alice", DEFAULT_PASSWORD)
                    await alice.login("alice", DEFAULT_PASSWORD)
                    await alice.join("dev")
                    token = alice._state.session
                    proxy.blackhole()
                    # the PUB still reaches alice: TICKs go on arriving
                    seen = await collect(alice, is_(Reconnecting), timeout_s=10)
                    assert any(isinstance(e, ConnectionLost) for e in seen), seen
                    # within the 5 s timeout the session is still there: it is resumed,
                    # with no presence change, once the path heals
                    proxy.forward()
                    await collect(alice, is_(ConnectionRestored), timeout_s=10)
                    assert alice._state.session == token
                    reply = await alice.send("dev", "back")
                    assert reply.seq == 1
                    async with harness.client("bob") as bob:
                        history = await bob.history("dev")
                        assert [(m.sender, m.text) for m in history.messages
                                if isinstance(m, p.MessagePosted)] == [("alice", "back")]
                finally:
                    await asyncio.wait_for(alice.close(), 5)

    run(main())
