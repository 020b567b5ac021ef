"""A client whose event connection (SUB) the broker refuses while it took its request
connection (DEALER) does not stay deaf (docs/PROTOCOL.md §10): a sixth tester's broker at
`max_connections_per_address` took 129 DEALERs and 127 SUBs from one address, and two
clients had a working session that never heard an event. Now a SUB silent past the
heartbeat timeout (not even a TICK) makes the client reconnect, and once a slot is free
it hears events again.

Real parts: an in-process broker on loopback tcp with a per-address limit of 5, an
observer (two connections) and two raw TCP connections holding four of the slots, the
real Client. Every wait is on an event or a
condition with a deadline."""

from __future__ import annotations

import asyncio
import socket

from client_helpers import collect, is_
from conftest import run

from zchat import wire as p
from zchat.client.client import Client
from zchat.client.events import ConnectionRestored, Reconnecting
from zchat.testing import DEFAULT_PASSWORD, running_broker


def test_a_client_whose_sub_is_refused_reconnects_and_hears_events_once_it_can() -> None:
    async def main() -> None:
        with running_broker(router="tcp://127.0.0.1:0", pub="tcp://127.0.0.1:0",
                            encryption="none", heartbeat_interval_s=0.2,
                            heartbeat_timeout_s=1.0, max_connections_per_address=5,
                            login_timeout_s=0) as harness:
            async with harness.client("bob") as bob:  # two of the five slots
                await bob.join("dev")
                port = int(harness.server.rsplit(":", 1)[1])
                fillers = [socket.create_connection(("127.0.0.1", port)) for _ in range(2)]
                alice = Client(harness.server, context=harness.context, timeout_s=2.0,
                               reconnect=True, reconnect_max_s=0.3, encryption="none")
                try:
                    await alice.connect()  # the DEALER takes the third slot
                    await alice.register("alice", DEFAULT_PASSWORD)
                    await alice.login("alice", DEFAULT_PASSWORD)
                    await alice.join("dev")
                    # its SUB is refused: nothing arrives on it, not even a TICK
                    await collect(alice, is_(Reconnecting), timeout_s=10)
                    fillers.pop().close()  # a slot for the SUB
                    await collect(alice, is_(ConnectionRestored), timeout_s=15)
                    await bob.send("dev", "can you hear me")
                    await collect(alice, is_(p.MessagePosted, text="can you hear me"),
                                  timeout_s=10)
                finally:
                    for filler in fillers:
                        filler.close()
                    await asyncio.wait_for(alice.close(), 5)

    run(main())
