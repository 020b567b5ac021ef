"""An in-process test harness: a real broker on ``inproc://`` with a real store (SQLite,
or PostgreSQL when given a ``postgresql://`` URL).

No ports, no subprocesses: the broker's loop runs in a thread of the test process and
clients connect through the process's one zmq context.

    with running_broker() as harness:
        async with harness.client("alice") as alice:   # registered and logged in
            await alice.join("dev")

Password hashing uses Argon2id with 1 MiB and one pass here (``FAST_HASH``) so that a test
logs in in about a millisecond; production defaults are in zchat/data/zchat.toml.

It is also a pytest plugin (entry point ``pytest11: zchat``), so a project that installs
zchat can test its bots with the ``zchat_broker`` fixture (docs/bots.md):

    def test_echo(zchat_broker):
        async def scenario():
            async with zchat_broker.run_bot(echo.make_bot()), \
                    zchat_broker.client("alice") as alice:
                await alice.dm("echo", "hi")
                assert (await next_dm(alice)).text == "hi"
        run(scenario())
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import os
import socket
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import zmq

from zchat import wire as p
from zchat.broker.loop import Broker, BrokerThread
from zchat.client.client import Client
from zchat.config import BrokerConfig
from zchat.core import DEFAULT_ROOM
from zchat.errors import ConnectionFailed, RequestFailed
from zchat.names import name_key, skeleton
from zchat.passwords import hash_password
from zchat.store import GroupStore, open_store

#: Cheap hash parameters for tests only (never for real accounts).
FAST_HASH = {"argon2_memory_kib": 1024, "argon2_time_cost": 1, "argon2_parallelism": 1}
DEFAULT_PASSWORD = "correct horse battery staple"
#: Overall bound of ``run()``: generous, only a hang should ever reach it.
RUN_TIMEOUT_S = 20.0
_counter = itertools.count(1)
T = TypeVar("T")

if TYPE_CHECKING:
    from zchat.bot import Bot


def wait_until(condition: Callable[[], T], timeout_s: float = 5.0, what: str = "condition",
               interval_s: float = 0.005) -> T:
    """Poll ``condition()`` until it returns something truthy; return that value. Raises
    AssertionError naming ``what`` after ``timeout_s`` seconds."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(interval_s)  # one polling step of a condition, not a wait for a socket


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago (bound to 0, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(coro: Coroutine[Any, Any, T], timeout_s: float = RUN_TIMEOUT_S) -> T:
    """Run ``coro`` on a fresh event loop (``asyncio.run``); raises TimeoutError after
    ``timeout_s`` so that a hung await fails the test instead of hanging it."""

    async def bounded() -> T:
        return await asyncio.wait_for(coro, timeout_s)

    return asyncio.run(bounded())


async def next_message(client: Client, room: str | None = None, *,
                       sender: str | None = None, timeout_s: float = 5.0) -> p.MessagePosted:
    """The next room message ``client`` receives (in ``room`` and from ``sender`` when
    given; other events are skipped and lost). Raises AssertionError after ``timeout_s``."""
    return await _next(client, p.MessagePosted, room, sender, timeout_s)


async def next_dm(client: Client, *, sender: str | None = None,
                  timeout_s: float = 5.0) -> p.DirectMessage:
    """The next direct message ``client`` receives (from ``sender`` when given; other
    events are skipped and lost). Raises AssertionError after ``timeout_s``."""
    return await _next(client, p.DirectMessage, None, sender, timeout_s)


async def next_event_of(client: Client, kind: type[T], timeout_s: float = 5.0) -> T:
    """The next event of type ``kind`` ``client`` receives (other events are skipped and
    lost). Raises AssertionError after ``timeout_s``."""
    return await _next(client, kind, None, None, timeout_s)


async def _next(client: Client, kind: type[T], room: str | None, sender: str | None,
                timeout_s: float) -> T:
    from zchat.names import name_key

    deadline = time.monotonic() + timeout_s
    while (remaining := deadline - time.monotonic()) > 0:
        event = await client.next_event(remaining)
        if event is None:
            break
        if not isinstance(event, kind):
            continue
        if room is not None and name_key(getattr(event, "room", "")) != name_key(room):
            continue
        if sender is not None and name_key(getattr(event, "sender", "")) != name_key(sender):
            continue
        return event
    where = f" in #{room}" if room else ""
    by = f" from {sender}" if sender else ""
    raise AssertionError(f"no {kind.__name__}{where}{by} for {client.name} within "
                         f"{timeout_s} s")


@dataclass
class Harness:
    """A running in-process broker: its endpoint, its Broker object and its store's
    location (an SQLite path or a PostgreSQL URL)."""

    server: str
    broker: Broker
    db_path: str
    context: zmq.Context[Any]

    def new_client(self, timeout_s: float = 5.0) -> Client:
        """A Client for this broker, not yet connected; on tcp with the broker's transport
        settings (its ``encryption``, and its key service for trust on first use)."""
        return Client(self.server, context=self.context, timeout_s=timeout_s,
                      encryption=self.broker.config.encryption,
                      key_server=self.broker.key_endpoint)

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

    @contextlib.asynccontextmanager
    async def run_bot(self, bot: Bot, password: str | None = None) -> AsyncIterator[Bot]:
        """Run ``bot`` against this broker for the ``async with`` block: its account is
        registered (with ``password``, else the bot's password, else DEFAULT_PASSWORD)
        unless it exists, logged in, its rooms joined before the block starts; it is
        stopped, logged out and closed on exit (a handler error never ends it; an error
        that did is raised on exit)."""
        secret = password or bot.password or DEFAULT_PASSWORD
        async with self.client(bot.name, secret) as client:
            async with bot.attach(client):
                yield bot
            with contextlib.suppress(RequestFailed, ConnectionFailed):
                await client.logout()


def fast_hash(password: str) -> str:
    """``password``'s Argon2id hash at FAST_HASH's parameters (about a millisecond): for
    accounts a test writes to a store directly."""
    return hash_password(password, FAST_HASH["argon2_memory_kib"],
                         FAST_HASH["argon2_time_cost"], FAST_HASH["argon2_parallelism"])


def create_admin_accounts(store: GroupStore, names: Iterable[str],
                          password: str = DEFAULT_PASSWORD, now_ms: int = 0) -> list[str]:
    """Create the account of each broker admin name in ``names`` that has none, with
    ``password`` (FAST_HASH), a member of ``lobby``, as an operator does with ``zchat
    admin create`` on the database before starting the broker: the broker refuses
    REGISTER of an admin's name (docs/admin.md). No audit entry is written, so that a
    test's audit log holds only what the test did. Returns the names created."""
    lobby = name_key(DEFAULT_ROOM)
    store.ensure_room(lobby, DEFAULT_ROOM, skeleton(DEFAULT_ROOM), now_ms)
    created = []
    for name in names:
        if store.get_account(name_key(name)) is None:
            store.create_account(name_key(name), name, skeleton(name),
                                 fast_hash(password),
                                 now_ms, rooms=(lobby,))
            created.append(name)
    return created


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
    exit. ``db_path`` defaults to an in-memory SQLite database; a ``postgresql://`` URL
    is a PostgreSQL database (zchat.store.open_store). The accounts of the
    ``admins`` override are created first (create_admin_accounts, DEFAULT_PASSWORD),
    since the broker refuses to REGISTER them."""
    ctx = context or zmq.Context.instance()
    config = harness_config(**overrides)
    store = open_store(db_path)
    create_admin_accounts(store, config.admins)  # as the operator does (docs/admin.md)
    with BrokerThread(config, store, ctx) as broker:
        yield Harness(broker.router_endpoint, broker, str(db_path), ctx)


@contextlib.contextmanager
def running_cluster(url: str, brokers: int = 3, context: zmq.Context[Any] | None = None,
                    **overrides: Any) -> Iterator[list[Harness]]:
    """Start ``brokers`` broker threads on one PostgreSQL database ``url`` (a cluster,
    docs/cluster.md), each on inproc:// endpoints of its own with the id
    ``broker-1``, ``broker-2`` …, and stop them all on exit; yields their Harnesses, so
    that a test puts clients on different brokers. ``overrides`` go to every broker's
    BrokerConfig (e.g. ``cluster_check_s``). The accounts of ``admins`` are created
    first, as in ``running_broker``."""
    ctx = context or zmq.Context.instance()
    with contextlib.ExitStack() as stack:
        harnesses = []
        for index in range(1, brokers + 1):
            config = harness_config(**{"id": f"broker-{index}", **overrides})
            store = open_store(url)
            if index == 1:
                create_admin_accounts(store, config.admins)
            broker = stack.enter_context(BrokerThread(config, store, ctx))
            harnesses.append(Harness(broker.router_endpoint, broker, url, ctx))
        yield harnesses


# -- the pytest plugin (entry point ``pytest11``) -------------------------------------------

try:
    import pytest
except ImportError:  # zchat.testing without pytest: the harness alone
    pass
else:

    @pytest.fixture
    def zchat_broker() -> Iterator[Harness]:
        """A real zchat broker thread on inproc:// with an in-memory SQLite store; yields
        the Harness (``client(name)``, ``run_bot(bot)``, ``server``)."""
        with running_broker() as harness:
            yield harness

    @pytest.fixture
    def zchat_file_broker(tmp_path: Path) -> Iterator[Harness]:
        """Like ``zchat_broker``, with the SQLite database in a file under ``tmp_path``."""
        with running_broker(tmp_path / "zchat.db") as harness:
            yield harness
