"""An in-process test harness: a real broker on ``inproc://`` with a real SQLite store.

No ports, no subprocesses: the broker's loop runs in a thread of the test process and
clients connect through the process's one zmq context.

    with running_broker() as harness:
        async with harness.client("alice") as alice:   # registered and logged in
            await alice.join("dev")

Password hashing uses scrypt with N=1024 here (``FAST_HASH``) so that a test logs in in
about a millisecond; production defaults are in config/zchat.toml.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from zchat.broker import Broker, BrokerThread
from zchat.client import Client
from zchat.config import BrokerConfig
from zchat.errors import RequestFailed
from zchat.store import Store

#: Cheap hash parameters for tests only (never for real accounts).
FAST_HASH = {"scrypt_n": 1024, "scrypt_r": 8, "scrypt_p": 1}
DEFAULT_PASSWORD = "correct horse battery staple"
_counter = itertools.count(1)


@dataclass
class Harness:
    """A running in-process broker: its endpoint, its Broker object and its store path."""

    server: str
    broker: Broker
    db_path: str
    context: zmq.Context[Any]

    def new_client(self, timeout_s: float = 5.0) -> Client:
        """A Client for this broker, not yet connected."""
        return Client(self.server, context=self.context, timeout_s=timeout_s)

    @contextlib.asynccontextmanager
    async def client(self, name: str | None = None, password: str = DEFAULT_PASSWORD,
                     register: bool = True) -> AsyncIterator[Client]:
        """A connected Client; with ``name``, registered (unless it exists) and logged in.
        Closed on exit."""
        client = self.new_client()
        await client.connect()
        try:
            if name is not None:
                if register:
                    with contextlib.suppress(RequestFailed):
                        await client.register(name, password)
                await client.login(name, password)
            yield client
        finally:
            await client.close()


def harness_config(**overrides: Any) -> BrokerConfig:
    """A BrokerConfig on fresh inproc endpoints with fast hashing; ``overrides`` replace
    any field."""
    n = next(_counter)
    tag = f"{os.getpid()}-{n}"
    base = BrokerConfig(router=f"inproc://zchat-router-{tag}", pub=f"inproc://zchat-pub-{tag}",
                        **FAST_HASH)  # type: ignore[arg-type]
    return dataclasses.replace(base, **overrides)


@contextlib.contextmanager
def running_broker(db_path: str | Path = ":memory:", context: zmq.Context[Any] | None = None,
                   **overrides: Any) -> Iterator[Harness]:
    """Start a broker thread on inproc:// (``overrides`` go to BrokerConfig) and stop it on
    exit. ``db_path`` defaults to an in-memory SQLite database."""
    ctx = context or zmq.Context.instance()
    config = harness_config(**overrides)
    store = Store(db_path)
    with BrokerThread(config, store, ctx) as broker:
        yield Harness(broker.router_endpoint, broker, str(db_path), ctx)
