"""The zchat client library: an asyncio ``Client`` and a small synchronous ``SyncClient``.

A client holds a DEALER connected to the broker's ROUTER (requests, replies, direct
messages) and a SUB connected to its PUB (room messages, notices, presence, ticks); the
PUB endpoint is learned from the INFO reply. Consoles and bots sit on top of it.

Room messages are passed through a ``RoomTracker`` per room (pure; sequence numbers per
docs/PROTOCOL.md §7): duplicates are dropped and a gap is filled from HISTORY before later
messages are delivered, so the application sees each room's messages once and in order.
The PONG of every heartbeat carries the rooms' last sequence numbers, so a message lost on
PUB (late subscription, high-water mark) is noticed within one heartbeat interval.

Errors: every request raises RequestFailed(status, reason) when the broker answers ERROR,
and ConnectionFailed when it does not answer within ``timeout_s``.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import urlsplit

import zmq
import zmq.asyncio

from zchat import protocol as p
from zchat.errors import ConnectionFailed, LocalProtocolError, ProtocolError, RequestFailed
from zchat.names import name_key

log = logging.getLogger("zchat.client")

R = TypeVar("R", bound=p.Reply)
T = TypeVar("T")

#: SUB-side queue bound in messages. Generous because a gap is repaired from history
#: anyway; it bounds memory when the application stops reading.
SUB_RCVHWM = 100_000


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """Client-side event: nothing heard from the broker for ``silent_s`` seconds (more than
    its heartbeat timeout)."""

    silent_s: float


@dataclass(frozen=True, slots=True)
class ConnectionRestored:
    """Client-side event: the broker is heard again after a ConnectionLost."""


Event = (p.MessagePosted | p.UserJoined | p.UserLeft | p.PresenceChanged | p.DirectMessage
         | ConnectionLost | ConnectionRestored)


@dataclass(slots=True)
class RoomTracker:
    """Per-room delivery state (pure): the highest sequence number delivered.

    ``offer(msg)`` says what to do with a message from PUB: "deliver" (the next one),
    "drop" (a duplicate or older), or "gap" (later than the next: fetch history first).
    """

    last_seq: int
    wanted: bool = True  # False after PART: events for the room are ignored

    def offer(self, seq: int) -> str:
        if seq <= self.last_seq:
            return "drop"
        if seq == self.last_seq + 1:
            return "deliver"
        return "gap"

    def delivered(self, seq: int) -> None:
        self.last_seq = max(self.last_seq, seq)


def pub_endpoint_for(server: str, advertised: str) -> str:
    """The PUB endpoint to connect to: ``advertised`` with a wildcard host (``*``,
    ``0.0.0.0``, ``::``) replaced by the host of ``server``."""
    if not advertised.startswith("tcp://"):
        return advertised
    adv = urlsplit(advertised)
    if adv.hostname not in ("*", "0.0.0.0", "::", "") or not server.startswith("tcp://"):
        return advertised
    host = urlsplit(server).hostname or "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"tcp://{host}:{adv.port}"


def _async_context(context: zmq.Context[Any] | None) -> zmq.asyncio.Context:
    if isinstance(context, zmq.asyncio.Context):
        return context
    # Shadow the process's one context, so inproc:// endpoints are shared with a broker
    # running in this process.
    return zmq.asyncio.Context.shadow((context or zmq.Context.instance()).underlying)


@dataclass
class _State:
    name: str | None = None
    session: str | None = None
    rooms: dict[str, RoomTracker] = field(default_factory=dict)
    room_names: dict[str, str] = field(default_factory=dict)


class Client:
    """An asyncio zchat client. ``async with Client(server) as c:`` connects and closes.

    ``server`` is the broker's ROUTER endpoint (``tcp://host:5555``, ``inproc://…``).
    ``timeout_s`` bounds every request. Incoming traffic is read with ``events()``.
    """

    def __init__(self, server: str, *, context: zmq.Context[Any] | None = None,
                 timeout_s: float = 5.0) -> None:
        self.server = server
        self.timeout_s = timeout_s
        self.context = _async_context(context)
        self.info: p.InfoReply | None = None
        self.rtt_s: float | None = None
        self.connected = False
        self._state = _State()
        self._dealer: zmq.asyncio.Socket | None = None
        self._sub: zmq.asyncio.Socket | None = None
        self._ids = itertools.count(1)
        self._pending: dict[bytes, asyncio.Future[p.Message]] = {}
        self._reply_types: dict[bytes, type[p.Reply]] = {}
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._tasks: list[asyncio.Task[None]] = []
        self._room_locks: dict[str, asyncio.Lock] = {}
        # Topics subscribed on the SUB: libzmq counts SUBSCRIBEs per topic, so subscribing
        # twice would need two UNSUBSCRIBEs and PART would leave the room's traffic flowing.
        self._topics: set[bytes] = set()
        self._last_heard = time.monotonic()
        self._lost = False
        self._closed = False

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def name(self) -> str | None:
        """The logged-in account's display name, or None."""
        return self._state.name

    @property
    def rooms(self) -> list[str]:
        """Display names of the rooms this client follows (joined), in join order."""
        return [self._state.room_names[k] for k, t in self._state.rooms.items() if t.wanted]

    def last_seq(self, room: str) -> int:
        """Highest sequence number delivered for ``room`` (0 if none)."""
        tracker = self._state.rooms.get(name_key(room))
        return tracker.last_seq if tracker else 0

    async def connect(self) -> p.InfoReply:
        """Connect both sockets and fetch INFO. Raises ConnectionFailed when the broker does
        not answer within ``timeout_s``."""
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        dealer.connect(self.server)
        self._dealer = dealer
        self._tasks.append(asyncio.create_task(self._read_dealer(), name="zchat-dealer"))
        info = await self.request(p.Info())
        self.info = info
        sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
        sub.connect(pub_endpoint_for(self.server, info.pub))
        sub.setsockopt(zmq.SUBSCRIBE, p.TOPIC_TICK)
        self._sub = sub
        self.connected = True
        self._tasks.append(asyncio.create_task(self._read_sub(), name="zchat-sub"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="zchat-heartbeat"))
        return info

    async def close(self) -> None:
        """Stop background tasks and close sockets (LINGER 0). Idempotent. Does not LOGOUT:
        call ``logout()`` first for a clean offline event."""
        if self._closed:
            return
        self._closed = True
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionFailed("client closed"))
        for sock in (self._dealer, self._sub):
            if sock is not None:
                sock.close(linger=0)
        self._events.put_nowait(None)

    # -- requests --------------------------------------------------------------------------

    async def request(self, req: p.Request, timeout_s: float | None = None) -> Any:
        """Send one request and return its OK reply value.

        Raises RequestFailed on ERROR, ConnectionFailed on no answer in time.
        """
        if self._dealer is None or self._closed:
            raise LocalProtocolError("client is not connected")
        request_id = str(next(self._ids)).encode()
        fut: asyncio.Future[p.Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        self._reply_types[request_id] = req.REPLY
        wait = self.timeout_s if timeout_s is None else timeout_s
        try:
            try:
                # The send is inside the deadline too: a DEALER with no connected peer
                # (an inproc broker that closed) blocks on send instead of queueing.
                async with asyncio.timeout(wait):
                    await self._dealer.send_multipart(p.encode_request(request_id, req))
                    reply = await fut
            except TimeoutError:
                raise ConnectionFailed(f"no answer from the broker at {self.server} within "
                                       f"{wait:g} s") from None
        finally:
            self._pending.pop(request_id, None)
            self._reply_types.pop(request_id, None)
        if isinstance(reply, p.Error):
            raise RequestFailed(reply.status, reply.reason, reply.retry_after_ms)
        return reply

    async def register(self, name: str, password: str) -> p.Registered:
        """Create an account (joined to ``lobby``). Raises RequestFailed 409 if taken,
        422 if the name breaks the rules (docs/PROTOCOL.md §12)."""
        reply: p.Registered = await self.request(p.Register(name=name, password=password))
        return reply

    async def login(self, name: str, password: str) -> p.LoggedIn:
        """Log in; subscribes to the account's rooms and presence, queues stored direct
        messages as events (oldest first). Raises RequestFailed 404 (no such account) or
        401 (wrong password)."""
        reply: p.LoggedIn = await self.request(p.Login(name=name, password=password))
        self._state.name = reply.name
        self._state.session = reply.session
        assert self._sub is not None
        self._subscribe(p.TOPIC_PRESENCE_PREFIX)
        for room in reply.rooms:
            self._follow(room.room, room.last_seq)
        for dm in reply.pending:
            self._events.put_nowait(dm)
        return reply

    async def logout(self) -> None:
        await self.request(p.Logout())
        self._state = _State()

    async def join(self, room: str) -> p.RoomJoined:
        """Join (creating if needed) and follow ``room`` from its current last message."""
        key = name_key(room)
        assert self._sub is not None
        self._subscribe(p.room_topic(key))  # before JOIN: no seam gap
        reply: p.RoomJoined = await self.request(p.Join(room=room))
        tracker = self._state.rooms.get(key)
        if tracker is None or not tracker.wanted:
            self._follow(reply.room, reply.last_seq)
        return reply

    async def part(self, room: str) -> None:
        await self.request(p.Part(room=room))
        key = name_key(room)
        tracker = self._state.rooms.get(key)
        if tracker is not None:
            tracker.wanted = False
        if self._sub is not None and p.room_topic(key) in self._topics:
            self._topics.discard(p.room_topic(key))
            self._sub.setsockopt(zmq.UNSUBSCRIBE, p.room_topic(key))

    async def list_rooms(self) -> p.RoomList:
        reply: p.RoomList = await self.request(p.ListRooms())
        return reply

    async def send(self, room: str, text: str, kind: p.MessageKind = "text",
                   cmid: str = "") -> p.Sent:
        """Post to a room; the reply carries the message's sequence number and time."""
        reply: p.Sent = await self.request(p.Send(room=room, text=text, kind=kind, cmid=cmid))
        return reply

    async def dm(self, to: str, text: str) -> p.DmSent:
        """Send a direct message; ``delivered`` says "live" or "stored"."""
        reply: p.DmSent = await self.request(p.SendDirect(to=to, text=text))
        return reply

    async def history(self, room: str, before: int | None = None, after: int | None = None,
                      limit: int = p.DEFAULT_HISTORY_LIMIT) -> p.HistoryPage:
        reply: p.HistoryPage = await self.request(
            p.FetchHistory(room=room, before=before, after=after, limit=limit))
        return reply

    async def who(self, room: str | None = None) -> p.WhoList:
        reply: p.WhoList = await self.request(p.Who(room=room))
        return reply

    async def set_presence(self, presence: str, text: str = "") -> None:
        await self.request(p.SetPresence(presence=presence, text=text))  # type: ignore[arg-type]

    async def ping(self, timeout_s: float | None = None) -> p.Pong:
        """One heartbeat round trip; updates ``rtt_s`` and repairs room gaps it reveals."""
        start = time.monotonic()
        pong: p.Pong = await self.request(p.Ping(), timeout_s)
        self.rtt_s = time.monotonic() - start
        for room in pong.rooms:
            tracker = self._state.rooms.get(name_key(room.room))
            if tracker is not None and tracker.wanted and room.last_seq > tracker.last_seq:
                await self._backfill(name_key(room.room), room.last_seq)
        return pong

    async def sessions(self) -> p.SessionList:
        reply: p.SessionList = await self.request(p.ListSessions())
        return reply

    # -- incoming ----------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Incoming events in arrival order, room messages once each and in sequence order;
        ends when the client is closed."""
        while True:
            event = await self._events.get()
            if event is None:
                self._events.put_nowait(None)  # let other iterators end too
                return
            yield event

    async def next_event(self, timeout_s: float | None = None) -> Event | None:
        """The next event, or None when ``timeout_s`` passes (or the client closed)."""
        try:
            event = await asyncio.wait_for(self._events.get(), timeout_s)
        except TimeoutError:
            return None
        if event is None:
            self._events.put_nowait(None)
        return event

    def _follow(self, room: str, last_seq: int) -> None:
        key = name_key(room)
        self._state.rooms[key] = RoomTracker(last_seq)
        self._state.room_names[key] = room
        if self._sub is not None:
            self._subscribe(p.room_topic(key))

    def _subscribe(self, topic: bytes) -> None:
        """SUBSCRIBE ``topic`` on the SUB unless it already is (once per topic)."""
        assert self._sub is not None
        if topic not in self._topics:
            self._topics.add(topic)
            self._sub.setsockopt(zmq.SUBSCRIBE, topic)

    def _heard(self) -> None:
        self._last_heard = time.monotonic()
        if self._lost:
            self._lost = False
            self._events.put_nowait(ConnectionRestored())

    async def _read_dealer(self) -> None:
        assert self._dealer is not None
        while True:
            frames = await self._dealer.recv_multipart()
            self._heard()
            try:
                request_id, value = p.decode_from_broker(frames, self._reply_types)
            except ProtocolError as exc:
                log.warning("ignored a malformed message from the broker: %s", exc)
                continue
            if request_id:
                fut = self._pending.get(request_id)
                if fut is not None and not fut.done():
                    fut.set_result(value)
            elif isinstance(value, p.DirectMessage):
                self._events.put_nowait(value)

    async def _read_sub(self) -> None:
        assert self._sub is not None
        while True:
            frames = await self._sub.recv_multipart()
            self._heard()
            try:
                event = p.decode_event(frames)
            except ProtocolError as exc:
                log.warning("ignored a malformed event: %s", exc)
                continue
            if isinstance(event, p.Tick):
                continue
            if isinstance(event, p.MessagePosted):
                await self._on_room_message(event)
            elif isinstance(event, p.UserJoined | p.UserLeft):
                tracker = self._state.rooms.get(name_key(event.room))
                if tracker is not None and tracker.wanted:
                    self._events.put_nowait(event)
            elif isinstance(event, p.PresenceChanged):
                self._events.put_nowait(event)

    async def _on_room_message(self, msg: p.MessagePosted) -> None:
        key = name_key(msg.room)
        tracker = self._state.rooms.get(key)
        if tracker is None or not tracker.wanted:
            return
        async with self._room_locks.setdefault(key, asyncio.Lock()):
            verdict = tracker.offer(msg.seq)
            if verdict == "drop":
                return
            if verdict == "deliver":
                tracker.delivered(msg.seq)
                self._events.put_nowait(msg)
                return
        await self._backfill(key, msg.seq - 1)
        await self._on_room_message(msg)

    async def _backfill(self, key: str, upto: int) -> None:
        """Fetch and deliver messages after the tracker's last up to ``upto`` (inclusive)."""
        async with self._room_locks.setdefault(key, asyncio.Lock()):
            tracker = self._state.rooms.get(key)
            while tracker is not None and tracker.wanted and tracker.last_seq < upto:
                page = await self.history(self._state.room_names[key], after=tracker.last_seq,
                                          limit=p.MAX_HISTORY_LIMIT)
                if not page.messages:
                    return
                for msg in page.messages:
                    if tracker.offer(msg.seq) != "drop":
                        tracker.delivered(msg.seq)
                        self._events.put_nowait(msg)

    async def _heartbeat(self) -> None:
        assert self.info is not None
        interval = self.info.heartbeat_interval_ms / 1000
        timeout = self.info.heartbeat_timeout_ms / 1000
        while True:
            await asyncio.sleep(interval)
            silent = time.monotonic() - self._last_heard
            if silent > timeout and not self._lost:
                self._lost = True
                self.connected = False
                self._events.put_nowait(ConnectionLost(silent))
            try:
                # Bounded by the interval, so that silence is checked every interval even
                # while the broker is gone (ConnectionLost within timeout + interval).
                await self.ping(timeout_s=interval)
                self.connected = True
            except (ConnectionFailed, RequestFailed) as exc:
                log.debug("heartbeat failed: %s", exc)


class SyncClient:
    """A blocking wrapper for scripts: the asyncio Client runs on a private event loop in a
    background thread, so heartbeats keep the session alive between calls.

    Every method of Client is available with the same arguments and errors, blocking;
    ``next_event(timeout_s)`` returns the next event or None.
    """

    def __init__(self, server: str, *, context: zmq.Context[Any] | None = None,
                 timeout_s: float = 5.0) -> None:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="zchat-client",
                                        daemon=True)
        self._thread.start()
        self._timeout_s = timeout_s

        async def make() -> Client:
            return Client(server, context=context, timeout_s=timeout_s)

        self.client = self._run(make())
        try:
            self._run(self.client.connect())
        except BaseException:
            self.close()
            raise

    def _run(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    def __enter__(self) -> SyncClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._loop.is_closed():
            return
        if hasattr(self, "client"):
            with contextlib.suppress(Exception):
                self._run(self.client.close())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    def __getattr__(self, attr: str) -> Any:
        method = getattr(self.client, attr)
        if not asyncio.iscoroutinefunction(method):
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            return self._run(method(*args, **kwargs))

        return call
