"""The zchat client library's asyncio ``Client`` (the blocking ``SyncClient`` wraps it,
zchat/client/sync.py).

A client holds a DEALER connected to the broker's ROUTER (requests, replies, direct
messages) and, once logged in, a SUB connected to its PUB (room messages, notices,
presence, ticks); the PUB endpoint is learned from the INFO reply. The SUB is opened when
a LOGIN or RESUME succeeds, with the DEALER's CURVE key pair: over tcp with CURVE the
broker lets only a key bound to a live session subscribe (docs/PROTOCOL.md §16.2), and
libzmq does not retry a SUB that the broker refused. Whatever is published between the
reply and the subscription taking effect is found by the catch-up heartbeats and filled
from HISTORY, as for any room followed. Consoles and bots sit on top of it.

What the client decides is pure and lives in zchat/client/session.py: the Client reads
its sockets and its clock, asks the session module, and carries out the answer. Room
messages go through a ``RoomFeed`` per room (sequence numbers per docs/PROTOCOL.md §7): whatever arrives live or from HISTORY waits in the feed until
every message before it is there, so the application sees each room's messages once and
in order, and a gap is filled from HISTORY by one repair task per room while live traffic
keeps being read. The PONG of every heartbeat carries the rooms' last sequence numbers, so
a message lost on PUB (late subscription, high-water mark) is noticed within one
heartbeat interval.

The PONG (and the LOGIN or RESUME reply of a reconnect) also lists every room the account
is in: a room joined by another device of the account is followed from then on
(``JoinedElsewhere``), and a room it no longer lists is no longer followed
(``LeftElsewhere``). A PONG that may have been computed before this client's own JOIN,
PART or DELETE_ROOM of a room (one in flight, or done since the PING went) changes
nothing for that room; the next one does.

Reconnecting (``reconnect=True``, docs/PROTOCOL.md §10): once logged in, a client that
hears nothing from the broker for its heartbeat timeout, whose heartbeat PING fails with
nothing else heard meanwhile, or whose PING shows that the broker no longer knows its
session (a restarted broker), emits ``ConnectionLost`` once and
then tries again with exponential back-off (``session.backoff_delay``), emitting ``Reconnecting``
before each wait. Each attempt opens new sockets, sends INFO, then RESUME with the kept
session token (docs/PROTOCOL.md §6.27: no presence flap) or, when that is refused with 401,
LOGIN with the credentials kept in this object's memory, resubscribes, sets the account's presence
again when it is away (``presence``: a restarted broker forgets it), fills every
followed room from HISTORY, then emits ``ConnectionRestored``. A GOING_AWAY event
(§6.29) starts the reconnect at once. A refused LOGIN (password changed) ends it with a
terminal ``SessionEnded``. A client given several endpoints (a cluster, docs/cluster.md)
makes each attempt on another one, the lost one last in each round
(``session.reconnect_endpoint``), and RESUMEs there: every broker of the cluster finds
the session in the shared database. Requests issued meanwhile fail at once with
ConnectionFailed.

Transport security (docs/PROTOCOL.md §16): with ``encryption="curve"`` (the default) a
tcp client is a CurveZMQ client with a fresh key pair per connection (its DEALER and SUB
share it: the SUB is admitted by the key its session is bound to). The broker's public
key comes from ``server_key``, else the pinned-keys file, else the broker's key service
(trust on first use: then pinned, and ``pinned`` tells what was trusted; zchat/client/trust.py). A broker whose
key differs from the pinned or configured one raises BrokerKeyChanged before anything is
sent; a broker that does not answer the handshake gives ConnectionFailed with a hint.

Errors: every request raises RequestFailed(status, reason) when the broker answers ERROR,
and ConnectionFailed when it does not answer within ``timeout_s`` (or the client is
reconnecting, or its session ended).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import itertools
import logging
import random
import secrets
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, TypeVar

import zmq
import zmq.asyncio

from zchat import wire as p
from zchat.client import session, trust
from zchat.client.endpoints import pub_endpoint_for, resolve_host
from zchat.client.events import (
    ConnectionLost,
    ConnectionRestored,
    Event,
    JoinedElsewhere,
    LeftElsewhere,
    Reconnecting,
    SessionEnded,
)
from zchat.client.session import (
    MAX_HELD,
    RECONNECT_JITTER,
    MembershipChanges,
    RoomFeed,
    Unread,
    UnreadTracker,
    backoff_delay,
)
from zchat.config import server_endpoints
from zchat.errors import (
    ConnectionFailed,
    LocalProtocolError,
    ProtocolError,
    RequestFailed,
    Status,
    ZchatError,
)
from zchat.keyformat import (
    ENCRYPTION_MODES,
    BadKey,
    check_key,
    fingerprint,
    is_tcp,
    key_endpoint_for,
)
from zchat.names import name_key, text_lines

log = logging.getLogger("zchat.client")

R = TypeVar("R", bound=p.Reply)
T = TypeVar("T")

#: How long a DM_ACK may wait to be queued on the DEALER before it is given up (the DM
#: is then offered again at the next login).
ACK_SEND_TIMEOUT_S = 0.5
#: SUB-side queue bound in messages. Generous because a gap is repaired from history
#: anyway; it bounds memory when the application stops reading. Read at each new SUB
#: (tests lower it).
SUB_RCVHWM = 100_000
#: Bound of the client's event queue (what ``events()`` yields), in events. When the
#: application has this many unread, the SUB reader stops reading: libzmq then queues up
#: to SUB_RCVHWM and drops beyond, and the sequence-number repair refills the room from
#: HISTORY once the application reads again (docs/PROTOCOL.md §14), so room messages are
#: delayed, never lost. Replies never wait for it. A DM push is still queued up to twice
#: this bound; beyond that it is left unacknowledged on the broker, which offers it again
#: at the next LOGIN or RESUME. Connection events (ConnectionLost, Reconnecting, …) are
#: few and always queued.
CLIENT_EVENT_QUEUE_MAX = 10_000
#: How long ``send``/``dm`` keep retrying a message whose reply was lost (connection lost,
#: session lost) on a client with ``reconnect=True``, by default, in seconds. Every try
#: carries the same client message id, so the broker stores it at most once (§6.8).
SEND_RETRY_S = 30.0
#: A SEND or DM refused with 503 (storage failed; nothing stored) is tried again within
#: its retry time, after this pause, doubling up to UNAVAILABLE_RETRY_MAX_S.
UNAVAILABLE_RETRY_FIRST_S = 0.1
UNAVAILABLE_RETRY_MAX_S = 2.0
# The reconnect back-off (RECONNECT_FIRST_S, RECONNECT_JITTER, ``backoff_delay``), the
# catch-up PINGs (CATCH_UP_PINGS_S) and a 429's wait (``rate_limit_wait_s``) are
# decisions: zchat/client/session.py.

#: Tries of one SEND or DM that the broker rate-limits (ERROR 429): between tries the
#: client waits the reply's ``retry_after_ms`` (docs/PROTOCOL.md §4), then gives up
#: with the last 429.
RATE_LIMIT_TRIES = 10
#: Tries in all for LOGIN and REGISTER: a crowd behind one address (a classroom) waits
#: its turn at the login rate (docs/PROTOCOL.md §15.1), which takes longer than a send.
LOGIN_RATE_LIMIT_TRIES = 40
#: Tries in all for JOIN, which takes a sending token (docs/PROTOCOL.md §15.1): a burst of
#: joins (a person typing /join for each of their rooms, a script) waits its turn behind
#: the one before it, a token every 0.2 s at the default rate, so the last of 30 joins
#: past the burst waits about 6 s, longer than RATE_LIMIT_TRIES short waits last.
JOIN_RATE_LIMIT_TRIES = 40
#: Share of ``timeout_s`` that a CURVE connect keeps, when INFO goes unanswered, to ask
#: the key service whether the broker's key changed (BrokerKeyChanged instead of a
#: timeout); INFO waits the rest. ``timeout_s`` bounds the whole connect: key lookup,
#: handshake, INFO and that check together (docs/cli.md, --timeout).
KEY_CHECK_SHARE = 0.25

ConnState = Literal["connected", "reconnecting", "closed"]
#: Requests not sent again after the re-login that follows a 401 (``Client.request``):
#: SET_PASSWORD's 401 is a wrong old password, and a LOGOUT refused is done already.
NOT_SENT_AGAIN_AFTER_401 = (p.SetPassword, p.Logout)

#: True while the reconnect machinery itself talks to the broker (INFO, LOGIN, HISTORY):
#: those requests pass while the application's fail fast.
_INTERNAL: contextvars.ContextVar[bool] = contextvars.ContextVar("zchat_internal",
                                                                  default=False)


def new_cmid() -> str:
    """A fresh client message id: 16 URL-safe characters (96 random bits)."""
    return secrets.token_urlsafe(12)


def _curve_client(sock: zmq.Socket[Any], broker_key: bytes, public: bytes,
                  secret: bytes) -> None:
    """Make ``sock`` a CurveZMQ client of the broker with public key ``broker_key``
    (Z85), using this connection's own key pair. Before ``connect()``."""
    sock.setsockopt(zmq.CURVE_SERVERKEY, broker_key)
    sock.setsockopt(zmq.CURVE_PUBLICKEY, public)
    sock.setsockopt(zmq.CURVE_SECRETKEY, secret)


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
    rooms: dict[str, RoomFeed] = field(default_factory=dict)
    room_names: dict[str, str] = field(default_factory=dict)
    topics: dict[str, str] = field(default_factory=dict)


class _LoginRefused(Exception):
    """The broker refused the kept credentials at re-login: reconnecting cannot succeed."""


class Client:
    """An asyncio zchat client. ``async with Client(server) as c:`` connects and closes.

    ``server`` is the broker's ROUTER endpoint (``tcp://host:5555``, ``inproc://…``),
    or for a cluster (docs/cluster.md) several: a sequence, or one string with commas
    (``"tcp://a:5555,tcp://b:5555"``). ``connect()`` tries them in order; a reconnect
    moves to one of the others first (``session.reconnect_endpoint``: each client starts
    at its own place among them, so a dead broker's clients spread out) and
    RESUMEs the session there. ``servers`` is the tuple, ``server`` the one in use.
    Raises ValueError for a bad list (``zchat.config.server_endpoints``).
    ``timeout_s`` bounds every request. Incoming traffic is read with ``events()``.
    With ``reconnect=True``, a client that has logged in keeps its credentials in memory
    and reconnects by itself after losing the broker, waiting at most ``reconnect_max_s``
    between attempts (see the module docstring). ``state`` is "connected",
    "reconnecting" or "closed" (also before ``connect()``); ``rtt_s`` the last heartbeat
    round trip in seconds (None before the first).

    Transport (docs/PROTOCOL.md §16, tcp servers only): ``encryption`` is "curve" or
    "none"; ``server_key`` the broker's Z85 public key if known up front; ``key_server``
    its key service endpoint ("" = the server's port + 2); ``known_brokers`` the
    pinned-keys file (None = ``$XDG_CONFIG_HOME/zchat/known_brokers.toml``). After a
    ``connect()`` that pinned a key by trust on first use, ``pinned`` says what.
    """

    def __init__(self, server: str | Sequence[str], *,
                 context: zmq.Context[Any] | None = None, timeout_s: float = 5.0,
                 reconnect: bool = False, reconnect_max_s: float = 30.0, encryption: str = "curve",
                 server_key: str = "", key_server: str = "",
                 known_brokers: Path | None = None) -> None:
        if reconnect_max_s <= 0:
            raise ValueError("reconnect_max_s must be > 0")
        if encryption not in ENCRYPTION_MODES:
            raise ValueError(f"encryption must be one of {ENCRYPTION_MODES}")
        self.encryption = encryption
        self.server_key = check_key(server_key, "server_key") if server_key else ""
        self.key_server = key_server
        self.known_brokers = known_brokers
        self.pinned: trust.Pinned | None = None
        self._broker_key: str | None = None   # resolved at the first connect
        self._key_source = ""                 # where it came from, for BrokerKeyChanged
        try:
            self.servers: tuple[str, ...] = server_endpoints(server)
        except ValueError as exc:
            raise ValueError(f"server: {exc}") from None
        self._endpoint = 0  # index in servers of the one in use
        #: Endpoints whose key was checked against the cluster's (``_resolve_broker_key``).
        self._key_checked: set[str] = set()
        self.timeout_s = timeout_s
        self.reconnect = reconnect
        self.reconnect_max_s = reconnect_max_s
        self.context = _async_context(context)
        self.info: p.InfoReply | None = None
        self.rtt_s: float | None = None
        self.connected = False
        self._state = _State()
        self._dealer: zmq.asyncio.Socket | None = None
        self._sub: zmq.asyncio.Socket | None = None
        # The connection's CURVE key pair and the broker's key (None when plain), for the
        # SUB opened after the login (_open_sub).
        self._curve: tuple[bytes, bytes, bytes] | None = None
        self._ids = itertools.count(1)
        self._pending: dict[bytes, asyncio.Future[p.Message]] = {}
        self._sent_at: dict[bytes, float] = {}  # request id -> monotonic s, while pending
        self._dms_seen: set[int] = set()    # DM ids queued for the application
        self._dms_handed: set[int] = set()  # ... and handed to it (acknowledged)
        self._reply_types: dict[bytes, type[p.Reply]] = {}
        self._events: asyncio.Queue[Event | None] = asyncio.Queue()
        self._io_tasks: list[asyncio.Task[None]] = []     # socket readers, per connection
        self._supervisor: asyncio.Task[None] | None = None  # heartbeats and reconnecting
        self._wake = asyncio.Event()
        self._catch_up_timers: list[asyncio.TimerHandle] = []
        self._room_locks: dict[str, asyncio.Lock] = {}   # one repair of a room at a time
        self._repairs: dict[str, asyncio.Task[None]] = {}  # background repair per room
        # Rooms being joined: their live messages heard before the JOIN reply, kept for
        # the room's feed (at most MAX_HELD each) instead of dropped and fetched again.
        self._joining: dict[str, list[p.MessagePosted]] = {}
        # Topics subscribed on the SUB: libzmq counts SUBSCRIBEs per topic, so subscribing
        # twice would need two UNSUBSCRIBEs and PART would leave the room's traffic flowing.
        # A new SUB (reconnect) subscribes to all of them again.
        self._topics: set[bytes] = set()
        # Changes of the account's membership made by this client, per room key, and the
        # requests in flight: a PONG speaks only for rooms settled since its PING went.
        self._membership = MembershipChanges()
        # JoinedElsewhere/LeftElsewhere found by a reconnect, emitted with its success.
        self._elsewhere: list[JoinedElsewhere | LeftElsewhere] = []
        # (name, password, token), one of the last two empty: reconnect=True, after login
        self._credentials: tuple[str, str, str] | None = None
        self._mode: ConnState = "closed"
        self._restoring = False        # in the reconnect loop: application requests fail
        self._session_gone = False     # a PONG or a 401 showed the broker forgot us
        self._ended: str | None = None  # SessionEnded's reason
        self._rng = random.Random()
        #: Where this client starts among the other brokers when it moves (``session.
        #: reconnect_endpoint``): drawn once, so that a dead broker's clients spread out.
        self._spread = self._rng.randrange(1 << 16)
        self._last_heard = time.monotonic()
        #: When the SUB last received anything (a TICK at least every heartbeat
        #: interval), or None while this connection has no SUB.
        self._events_heard: float | None = None
        self._lost = False
        self._closed = False
        self._going_away = False       # GOING_AWAY heard: reconnect now, not at timeout
        self._closed_by_broker: p.SessionClosed | None = None  # heard: end, with why
        #: Called as ``on_rate_limited(request, error, wait_s)`` before each wait after a
        #: 429 (rate limit, slow mode), e.g. to tell a person why nothing happens.
        self.on_rate_limited: Callable[[p.Request, RequestFailed, float], None] | None = None
        #: Bound of the event queue (CLIENT_EVENT_QUEUE_MAX); room traffic waits for room.
        self.event_queue_max = CLIENT_EVENT_QUEUE_MAX
        self._space = asyncio.Event()  # set when the application takes an event
        #: Pushed events of private rooms, from the DEALER reader to _read_room_pushes.
        self._room_pushes: asyncio.Queue[p.Message] = asyncio.Queue()
        #: The account's read state (``unread``): loaded from each LOGIN/RESUME reply,
        #: carried forward as events are handed over and read markers move.
        self._unread = UnreadTracker()
        #: The account's presence and away text as last set or heard (``presence``),
        #: set again after a reconnect.
        self._presence: tuple[p.Presence, str] = ("online", "")
        #: LOGIN's ``presence``: whether this client's session announces presence (§6.3).
        self._announces = True
        #: LOGIN's ``address`` (a trusted proxy's user's, §6.3), sent again by a
        #: reconnect's LOGIN; UNSET when none was given.
        self._told_address: p.Added[str] = p.UNSET

    # -- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Client:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    @property
    def server(self) -> str:
        """The broker endpoint in use (or last tried), one of ``servers``."""
        return self.servers[self._endpoint]

    @property
    def state(self) -> ConnState:
        """"connected"; "reconnecting" from ConnectionLost to ConnectionRestored; "closed"
        before ``connect()``, after ``close()`` and after SessionEnded."""
        return self._mode

    @property
    def name(self) -> str | None:
        """The logged-in account's display name, or None."""
        return self._state.name

    @property
    def rooms(self) -> list[str]:
        """Display names of the rooms this client follows (joined), in join order."""
        return [self._state.room_names[k] for k, f in self._state.rooms.items()
                if f.following]

    @property
    def events_waiting(self) -> int:
        """Events queued for ``events()`` and not taken yet (a gateway answers an IRC PING
        once the events heard before it are passed on, zchat/irc/server.py)."""
        return self._events.qsize()

    @property
    def unanswered_since(self) -> float | None:
        """``time.monotonic()`` at which the oldest request still waiting for its reply
        was sent (a heartbeat PING included), or None when none is waiting. A person's
        client can say early that the broker is silent, before the request times out."""
        return min(self._sent_at.values(), default=None)

    @property
    def presence(self) -> tuple[p.Presence, str]:
        """The account's presence and away text as this client knows them: ("online",
        "") after the login; then as ``set_presence`` set them, or as the broker said
        they are — a PRESENCE event of this account (another device of it went away or
        came back) or this account's row in a WHO or WHOIS reply. Never "offline" (an
        offline event of this account, e.g. a broker going away, changes nothing). A
        reconnect sets "away" with its text again (docs/PROTOCOL.md §8: presence lives
        in the broker's memory, and a restarted broker has everyone online)."""
        return self._presence

    def _heard_presence(self, name: str, presence: p.Presence, text: str) -> None:
        """The broker says account ``name`` is ``presence``: taken when it is this
        account and not "offline" (``presence``)."""
        if presence != "offline" and self._state.name is not None \
                and name_key(name) == name_key(self._state.name):
            self._presence = (presence, text if presence == "away" else "")

    def last_seq(self, room: str) -> int:
        """Highest sequence number delivered for ``room`` (0 if none)."""
        feed = self._state.rooms.get(name_key(room))
        return feed.delivered if feed else 0

    def topic(self, room: str) -> str:
        """The last known topic of ``room`` ("" if none or unknown): from LOGIN, JOIN, the
        heartbeat's PONG and TOPIC events."""
        return self._state.topics.get(name_key(room), "")

    @property
    def unread(self) -> Unread:
        """What the account has not read (docs/PROTOCOL.md §6.3.1), as a value: per
        followed room the read marker, unread messages and unread mentions; per direct
        conversation with unread DMs since the login the marker and unread count. From
        the last LOGIN/RESUME reply (the broker's, agreed across the account's devices),
        then carried forward by the events handed to the application (``events()``,
        ``next_event``), this client's ``mark_read``, ``send``/``dm`` (posting reads
        the conversation) and READ events (another session moved a marker). See
        zchat.client.session for the counting rules."""
        return self._unread.snapshot()

    async def connect(self) -> p.InfoReply:
        """Connect both sockets and fetch INFO. Raises ConnectionFailed when the broker does
        not answer within ``timeout_s`` (the sockets are then closed again). On a client
        already connected it opens nothing more and returns the INFO it has (a second
        call once leaked a connection and a heartbeat task each time)."""
        if self._closed:
            raise LocalProtocolError("client is closed")
        if self._supervisor is not None and self.info is not None:
            return self.info
        failures: list[str] = []
        for index in range(len(self.servers)):
            self._endpoint = index
            try:
                info = await self._open()
                break
            except ConnectionFailed as exc:  # a key refused is not: BrokerKeyChanged
                await self._close_sockets("connect failed")
                if len(self.servers) == 1:
                    raise
                log.info("no connection to %s: %s", self.server, exc)
                failures.append(f"{self.server}: {exc}")
            except BaseException:
                await self._close_sockets("connect failed")
                raise
        else:
            raise ConnectionFailed(f"none of the {len(self.servers)} brokers answered: "
                                   + "; ".join(failures))
        self._mode = "connected"
        self.connected = True
        self._last_heard = time.monotonic()
        self._supervisor = asyncio.create_task(self._supervise(), name="zchat-heartbeat")
        return info

    async def close(self) -> None:
        """Stop background tasks (a reconnect in progress too) and close sockets (LINGER
        0). Idempotent. Does not LOGOUT: call ``logout()`` first for a clean offline
        event. Forgets the kept credentials."""
        if self._closed:
            return
        self._closed = True
        self._credentials = None
        for timer in self._catch_up_timers:
            timer.cancel()
        self._catch_up_timers.clear()
        await self._stop_repairs()
        supervisor, self._supervisor = self._supervisor, None
        if supervisor is not None and supervisor is not asyncio.current_task():
            supervisor.cancel()
            await asyncio.wait([supervisor])
            if not supervisor.cancelled():
                # a heartbeat that ran into this close() ("client is closed") ended
                # with that error: retrieved here, it is not reported as lost
                supervisor.exception()
        await self._close_sockets("client closed")
        self._restoring = False
        self._mode = "closed"
        self.connected = False
        self._events.put_nowait(None)

    async def _open(self) -> p.InfoReply:
        """A new DEALER, its readers started, and INFO. Takes at most ``timeout_s`` in all:
        the key service lookup (first use), INFO and, when INFO is not answered, the key
        check. The SUB follows a successful LOGIN or RESUME (``_open_sub``)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.timeout_s
        await resolve_host(self.server, self.timeout_s)  # an unknown host fails at once
        broker_key = await self._resolve_broker_key()
        client_public, client_secret = zmq.curve_keypair()  # this connection's own pair
        dealer = self.context.socket(zmq.DEALER)
        dealer.setsockopt(zmq.LINGER, 0)
        self._dealer = dealer  # set at once, so that close() always finds it
        self._curve = None
        if broker_key is not None:
            _curve_client(dealer, broker_key, client_public, client_secret)
            self._curve = (broker_key, client_public, client_secret)
        dealer.connect(self.server)
        self._spawn(self._read_dealer(dealer), "zchat-dealer")
        self._spawn(self._read_room_pushes(), "zchat-room-pushes")
        check_s = self.timeout_s * KEY_CHECK_SHARE if broker_key is not None else 0.0
        try:
            info: p.InfoReply = await self.request(
                p.Info(), max(deadline - loop.time() - check_s, 0.001))
        except ConnectionFailed as failed:
            exc = ConnectionFailed(f"no answer from the broker at {self.server} within "
                                   f"{self.timeout_s:g} s") \
                if str(failed).startswith("no answer") else failed
            raise await self._explain_silence(exc, broker_key,
                                              deadline - loop.time()) from None
        self.info = info
        return info

    def _open_sub(self) -> None:
        """The SUB of this connection, once a LOGIN or RESUME on it succeeded (over tcp
        with CURVE the broker admits only a key bound to a session, §16.2): the DEALER's
        key pair, every kept topic subscribed, its reader started. Does nothing when there
        is one, or no DEALER (closed meanwhile)."""
        if self._sub is not None or self._dealer is None or self.info is None:
            return
        sub = self.context.socket(zmq.SUB)
        sub.setsockopt(zmq.LINGER, 0)
        sub.setsockopt(zmq.RCVHWM, SUB_RCVHWM)
        self._sub = sub
        self._events_heard = time.monotonic()
        pub = pub_endpoint_for(self.server, self.info.pub)
        if self._curve is not None and is_tcp(pub):
            _curve_client(sub, *self._curve)
        sub.connect(pub)
        sub.setsockopt(zmq.SUBSCRIBE, p.TOPIC_TICK)
        sub.setsockopt(zmq.SUBSCRIBE, p.TOPIC_BROKER)
        for topic in sorted(self._topics):
            sub.setsockopt(zmq.SUBSCRIBE, topic)
        self._spawn(self._read_sub(sub), "zchat-sub")

    def _known_brokers_path(self) -> Path:
        return self.known_brokers or trust.default_known_brokers_path()

    def _key_service(self) -> str:
        return self.key_server or key_endpoint_for(self.server)

    async def _resolve_broker_key(self) -> bytes | None:
        """The broker's public key (Z85 bytes) for a CURVE connection to ``server``, or
        None when the connection is plain ("none", or not tcp). In order:
        ``server_key``; the pin of the first of ``servers`` pinned in the pinned-keys
        file; else fetched from the key service and pinned (trust on first use;
        ``self.pinned`` is set). Resolved once, reused by reconnects.

        The endpoints of one list are one cluster, which shares one key pair
        (docs/cluster.md): the key found is the cluster's. An endpoint of the list not
        pinned yet gets its key service asked once, and the key it offers pinned for it
        only if it is that key; a pin or an offer of another key raises
        BrokerKeyChanged, as for one endpoint. Raises KeyFileError (unreadable
        pinned-keys file), ConnectionFailed (the key service does not answer), BadKey,
        ValueError (no key service port)."""
        if self.encryption != "curve" or not is_tcp(self.server):
            return None
        path = self._known_brokers_path()
        if self._broker_key is None:
            pins = {} if self.server_key else trust.load_known_brokers(path)
            first = next((e for e in self.servers if e in pins), None)
            if self.server_key:
                self._broker_key = self.server_key
                self._key_source = "the server_key setting ([client] server_key or " \
                                   "--server-key)"
            elif first is not None:
                self._broker_key = pins[first]
                self._key_checked.add(first)
                line = trust.pinned_line(path, first)
                self._key_source = f"{path}" + (f", line {line}" if line else "")
            else:
                key = await trust.fetch_broker_key(self.context, self._key_service(),
                                                   self.timeout_s)
                trust.pin_broker_key(path, self.server, key)
                self.pinned = trust.Pinned(self.server, key, path)
                log.info("pinned the public key of %s (%s) in %s", self.server,
                         fingerprint(key), path)
                self._broker_key = key
                line = trust.pinned_line(path, self.server)
                self._key_source = f"{path}" + (f", line {line}" if line else "")
                self._key_checked.add(self.server)
        if not self.server_key and self.server not in self._key_checked:
            await self._check_cluster_key(path, self._broker_key)
        return self._broker_key.encode("ascii")

    async def _check_cluster_key(self, path: Path, key: str) -> None:
        """``server``, another endpoint of the list than the one whose key is pinned,
        has the cluster's ``key``: its own pin if it has one, else the key its key
        service offers, then pinned for it. Raises BrokerKeyChanged (another key),
        ConnectionFailed (the key service does not answer: the broker is down)."""
        pinned = trust.load_known_brokers(path).get(self.server)
        offered = pinned if pinned is not None else await trust.fetch_broker_key(
            self.context, self._key_service(), self.timeout_s)
        if offered != key:
            where = (f"the pin of {self.server} in {path}" if pinned is not None
                     else f"{self.server}'s key service")
            raise trust.BrokerKeyChanged(
                self.server, key, offered, self._key_source,
                f"The endpoints {', '.join(self.servers)} are given as one cluster, "
                f"which shares one key pair (docs/cluster.md), but {where} has another "
                f"key. If {self.server} is not part of the cluster, remove it from "
                f"--server / [client] server; if the cluster's key changed, delete the "
                f"lines of its endpoints in {path} and connect again.")
        if pinned is None:
            trust.pin_broker_key(path, self.server, key)
            log.info("pinned the cluster's key (%s) for %s in %s", fingerprint(key),
                     self.server, path)
        self._key_checked.add(self.server)

    async def _explain_silence(self, exc: ConnectionFailed, broker_key: bytes | None,
                               left_s: float) -> ZchatError:
        """The error for an INFO that got no answer: BrokerKeyChanged when the key service
        now offers another key than the one used (asked for at most ``left_s`` seconds,
        what is left of the connect's ``timeout_s``); "the broker does not answer" when
        the key service is silent too (the broker is most likely down); else ``exc`` with
        a hint about the transport settings on tcp (the broker runs, the handshake
        failed)."""
        if not is_tcp(self.server):
            return exc
        if broker_key is None:
            return ConnectionFailed(f"{exc}; the broker may require encryption: check "
                                    f"[client] encryption (\"none\" here) and server_key")
        try:
            offered = await trust.fetch_broker_key(self.context, self._key_service(),
                                                   max(left_s, 0.001))
        except ConnectionFailed:
            return ConnectionFailed(f"{exc}: the broker does not answer, nor does its key "
                                    f"service at {self._key_service()}; is it running?")
        except BadKey:
            offered = None
        expected = broker_key.decode("ascii")
        if offered is not None and offered != expected:
            if self.server_key:
                remedy = ("If the new key is right, change [client] server_key or "
                          "--server-key; otherwise ask the broker's operator.")
            else:
                remedy = (f"If the new key is right, delete the line for {self.server} "
                          f"in {self._known_brokers_path()} and connect again to pin "
                          f"the new one.")
            return trust.BrokerKeyChanged(self.server, expected, offered, self._key_source,
                                          remedy)
        return ConnectionFailed(f"{exc}; the broker may not use encryption or the "
                                f"handshake failed: check [client] encryption (\"curve\" "
                                f"here) and server_key")

    def _spawn(self, coro: Coroutine[Any, Any, None], name: str) -> None:
        # A fresh context: a reader started by the reconnect machinery must not inherit
        # its permission to talk while reconnecting.
        self._io_tasks.append(asyncio.create_task(coro, name=name,
                                                  context=contextvars.Context()))

    @staticmethod
    def _closed_error(closed: p.SessionClosed) -> RequestFailed:
        """What requests raise once the broker ended the session (SESSION_CLOSED, §6.47):
        401 with who ended it and why, as the broker itself would answer them."""
        by = f" by {closed.by}" if closed.by else ""
        return RequestFailed(Status.UNAUTHORIZED, f"session ended{by}: {closed.reason}")

    async def _close_sockets(self, reason: str,
                             error: Callable[[], ZchatError] | None = None) -> None:
        """Stop the socket readers, fail every pending request with ``error()`` (default
        ConnectionFailed(``reason``)), and close both sockets with LINGER 0.
        Subscriptions are kept in ``_topics``."""
        await self._stop_repairs()
        tasks = list(self._io_tasks)
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)  # raises only if we are cancelled ourselves
        self._io_tasks = [t for t in self._io_tasks if t not in tasks]
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(error() if error else ConnectionFailed(reason))
        dealer, sub, self._dealer, self._sub = self._dealer, self._sub, None, None
        for sock in (dealer, sub):
            if sock is not None:
                sock.close(linger=0)

    # -- requests --------------------------------------------------------------------------

    def _check_usable(self) -> zmq.asyncio.Socket:
        """The DEALER to send on. Raises ConnectionFailed while reconnecting or after the
        session ended, LocalProtocolError when not connected or closed."""
        if self._closed_by_broker is not None:  # not a network problem (§6.47)
            raise self._closed_error(self._closed_by_broker)
        if self._ended is not None:
            raise ConnectionFailed(f"the session ended: {self._ended}")
        if self._closed:
            raise LocalProtocolError("client is closed")
        if self._restoring and not _INTERNAL.get():
            raise ConnectionFailed(f"lost the broker at {self.server}; reconnecting")
        if self._dealer is None:
            if self._restoring:
                raise ConnectionFailed(f"lost the broker at {self.server}; reconnecting")
            raise LocalProtocolError("client is not connected")
        return self._dealer

    def _check_size(self, req: p.Request, body: bytes) -> None:
        """Refuse here what the broker would refuse for its size, with the same 413: a
        text over INFO's ``max_text_bytes`` or ``max_text_lines`` (when announced), and a
        body over the transport limit, which would not even get an answer (libzmq drops
        the connection, docs/PROTOCOL.md §2), and the session with it."""
        text = getattr(req, "text", None)
        limit = self.info.max_text_bytes if self.info is not None else None
        if isinstance(req, p.Send | p.SendDirect) and isinstance(text, str) and limit:
            size = len(text.encode("utf-8", "surrogatepass"))
            if size > limit:
                raise RequestFailed(Status.TOO_LARGE, f"message text is {size} bytes; the "
                                    f"limit is {limit}")
            max_lines = self.info.max_text_lines if self.info is not None else 0
            lines = text_lines(text)
            if max_lines and lines > max_lines:
                raise RequestFailed(Status.TOO_LARGE, f"message text is {lines} lines; the "
                                    f"limit is {max_lines}")
        if len(body) > p.MAX_BODY_BYTES:
            raise RequestFailed(Status.TOO_LARGE, f"body of {len(body)} bytes exceeds "
                                f"{p.MAX_BODY_BYTES}")

    async def request(self, req: p.Request, timeout_s: float | None = None) -> Any:
        """Send one request and return its OK reply value.

        With ``reconnect=True`` after a login, a request the broker refuses with 401
        because it no longer knows the session (evicted after a long suspension of this
        process, say) waits for the client to log in again and is sent once more: a
        refused request changed nothing (docs/PROTOCOL.md §6.16), and the caller sees
        its answer rather than a 401 that belonged to the old session. Not logged in
        again within ``timeout_s``, it raises ConnectionFailed.

        Raises RequestFailed on ERROR; ConnectionFailed on no answer in time, at once while
        reconnecting, or after SessionEnded.
        """
        try:
            return await self._request_once(req, timeout_s)
        except RequestFailed as exc:
            if not (exc.status == Status.UNAUTHORIZED and req.NEEDS_SESSION
                    and not isinstance(req, NOT_SENT_AGAIN_AFTER_401) and self._retryable() and self._closed_by_broker is None
                    and not _INTERNAL.get()):
                raise
            wait = self.timeout_s if timeout_s is None else timeout_s
            await self._until_usable(asyncio.get_running_loop().time() + wait)
            if self._closed_by_broker is None and self._ended is None and (
                    self._mode != "connected" or self._restoring or self._session_gone):
                raise ConnectionFailed(f"the broker at {self.server} ended the session; "
                                       "logging in again") from None
            log.info("%s refused with 401 for the old session; sent again", req.TYPE)
            return await self._request_once(req, timeout_s)

    async def _request_once(self, req: p.Request, timeout_s: float | None = None) -> Any:
        dealer = self._check_usable()
        request_id = str(next(self._ids)).encode()
        frames = p.encode_request(request_id, req)
        self._check_size(req, frames[3])
        fut: asyncio.Future[p.Message] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        self._sent_at[request_id] = time.monotonic()
        self._reply_types[request_id] = req.REPLY
        wait = self.timeout_s if timeout_s is None else timeout_s
        try:
            try:
                # The send is inside the deadline too: a DEALER with no connected peer
                # (an inproc broker that closed) blocks on send instead of queueing.
                async with asyncio.timeout(wait):
                    await dealer.send_multipart(frames)
                    reply = await fut
            except TimeoutError:
                raise ConnectionFailed(f"no answer from the broker at {self.server} within "
                                       f"{wait:g} s") from None
        finally:
            self._pending.pop(request_id, None)
            self._sent_at.pop(request_id, None)
            self._reply_types.pop(request_id, None)
        if isinstance(reply, p.Error):
            # Only a refusal of the current connection's session says it is gone: one
            # sent before a re-login, answered after it, would start another one.
            if (reply.status == Status.UNAUTHORIZED and req.NEEDS_SESSION
                    and self._credentials is not None and not _INTERNAL.get()
                    and dealer is self._dealer and not self._restoring):
                self._session_lost("a request was refused with 401")
            raise RequestFailed(reply.status, reply.reason, reply.retry_after_ms)
        if isinstance(reply, p.LoggedIn):  # LOGIN or RESUME, the application's or a
            self._unread.load(reply)        # reconnect's: the broker's read state
            self._open_sub()                # the session's key may subscribe now
        return reply

    async def register(self, name: str, password: str, *, bot: bool = False,
                       address: str | None = None) -> p.Registered:
        """Create an account (joined to ``lobby``); ``bot`` marks it as a bot in WHO.
        ``address``: a trusted proxy's (the IRC gateway's) user's IP address, counted by
        the broker instead of this connection's (docs/PROTOCOL.md §6.2; None, the
        default, sends none). Raises RequestFailed 409 if taken, 422 if the name breaks
        the rules (docs/PROTOCOL.md §12), 403 when ``address`` is given and this
        connection is no trusted proxy of the broker, 400 when it is no IP address.
        Rate-limited (429, too many attempts from this address), it waits and retries
        (``_patiently``)."""
        reply: p.Registered = await self._patiently(p.Register(
            name=name, password=password, bot=bot,
            address=p.UNSET if address is None else address))
        return reply

    async def login(self, name: str, password: str = "", *, token: str = "",
                    presence: bool = True, address: str | None = None) -> p.LoggedIn:
        """Log in with exactly one of ``password`` and ``token`` (an account token from
        ``create_token``); subscribes to the account's rooms and presence, queues stored
        direct messages as events (oldest first). With ``reconnect=True`` the credential
        used is kept in memory for logging in again after a reconnect. ``presence=False``
        makes a session that announces no presence: it never makes the account online or
        offline, and may not SET_PRESENCE (409); one-shot commands and scripts use it
        (docs/PROTOCOL.md §6.3). ``address``: a trusted proxy's (the IRC gateway's)
        user's IP address, whose login buckets the broker counts this login in instead of
        this connection's (§6.3, §15.1); None, the default, sends none. It is sent again
        by a reconnect's LOGIN. Raises
        LocalProtocolError when both or neither is given, RequestFailed 404 (no such
        account) or 401 (wrong password, wrong or revoked token), 403 when ``address`` is
        given and this connection is no trusted proxy of the broker, 400 when it is no
        IP address. Rate-limited (429, too many attempts from this address), it waits
        and retries (``_patiently``)."""
        if bool(password) == bool(token):
            raise LocalProtocolError("give exactly one of password and token")
        told = p.UNSET if address is None else address
        reply: p.LoggedIn = await self._patiently(p.Login(
            name=name, password=password, token=token,
            presence=p.UNSET if presence else False, address=told))
        self._told_address = told
        self._announces = presence
        self._state.name = reply.name
        self._state.session = reply.session
        self._presence = ("online", "")  # until WHO, WHOIS or a PRESENCE event says more
        if self.reconnect:
            self._credentials = (name, password, token)
        self._subscribe(p.TOPIC_PRESENCE_PREFIX)
        for room in reply.rooms:
            self._follow(room.room, room.last_seq, room.topic)
        await self._take_pending(reply.pending)
        return reply

    async def logout(self, text: str = "") -> None:
        """End the session; ``text`` is a quit message (at most MAX_AWAY_TEXT_CHARS) shown
        in the offline PRESENCE event when this was the account's last session. A 429
        (on a cluster, another broker holds the account's presence lock for a moment:
        docs/cluster.md, "Deadlocks between brokers") is waited out and tried again."""
        self._credentials = None
        await self._patiently(p.Logout(text=text))
        self._state = _State()
        self._unread.clear()
        self._presence = ("online", "")

    async def join(self, room: str, *, private: bool = False) -> p.RoomJoined:
        """Join (creating if needed; ``private`` creates it invite-only) and follow
        ``room`` from its current last message. Raises RequestFailed 403 when banned from
        it, or it is private and there is no invitation (docs/PROTOCOL.md §17.2).
        Rate-limited (429: a JOIN of a room not joined yet takes a sending token,
        §15.1), it waits and retries (``_patiently``, up to JOIN_RATE_LIMIT_TRIES tries):
        a refused JOIN changed nothing, and joining twice is joining once."""
        self._check_usable()
        key = name_key(room)
        self._subscribe(p.room_topic(key))  # before JOIN: no seam gap
        feed = self._state.rooms.get(key)
        early = self._joining.setdefault(key, []) if feed is None or not feed.following \
            else None
        try:
            with self._changing_membership(key):
                reply: p.RoomJoined = await self._patiently(
                    p.Join(room=room, private=private), JOIN_RATE_LIMIT_TRIES)
        finally:
            if early is not None:
                self._joining.pop(key, None)
        feed = self._state.rooms.get(key)
        if feed is None or not feed.following or reply.created:
            # (created: the room followed so far was deleted, its ROOM_DELETED not read
            # yet; this is a new room of that name, numbered on from it, §6.52)
            self._follow(reply.room, reply.last_seq, reply.topic)
            heard = [m for m in feed.held.values() if m is not None and m.seq > reply.last_seq] \
                if feed is not None and feed.following else []
            for msg in [*heard, *(early or ())]:  # heard while the reply travelled
                self._on_live(key, msg)
            feed = self._state.rooms[key]
        feed.first_seq = reply.first_seq
        self._state.topics[key] = reply.topic
        self._unread.joined(reply.room, reply.last_seq)
        return reply

    async def part(self, room: str, reason: str = "") -> None:
        """Leave ``room`` and stop following it; ``reason`` (at most
        p.MAX_AWAY_TEXT_CHARS characters, one line) reaches the other members in LEFT
        (docs/PROTOCOL.md §6.6). Raises RequestFailed 403 when not in it, 404 when there
        is no such room, 413/422 for a reason too long or holding control characters."""
        with self._changing_membership(name_key(room)):
            await self.request(p.Part(room=room, reason=reason or p.UNSET))
        self._stop_following(name_key(room))

    async def set_slow_mode(self, room: str, seconds: int) -> None:
        """Set ``room``'s slow mode: each member may post once per ``seconds`` (0 turns it
        off; at most p.MAX_SLOW_MODE_S; a topic change counts as a post) (docs/PROTOCOL.md
        §6.28). Raises RequestFailed 403 (not a member, or not the room's creator, one of
        its moderators or an admin), 400 (seconds out of range), 404 (no such room)."""
        await self.request(p.SetSlowMode(room=room, seconds=seconds))

    async def set_topic(self, room: str, topic: str) -> None:
        """Set ``room``'s topic ("" clears it); members only. Raises RequestFailed 403 (not
        a member, muted, or the room is locked), 413 (over MAX_TOPIC_CHARS), 422 (a control
        character or line break), 429 at once (a change takes a sending token and counts
        as a post in slow mode: docs/PROTOCOL.md §6.22; unlike ``send`` it is not retried
        — ``retry_after_ms`` on the error says when it may be)."""
        await self.request(p.SetTopic(room=room, topic=topic))
        self._state.topics[name_key(room)] = topic

    # -- moderation (docs/PROTOCOL.md §17, §6.30-§6.41) ------------------------------------
    # Each raises RequestFailed 403 when the account may not (the reason names the rule),
    # 404 for an unknown room, account, message or ban, as the sections say.

    async def kick(self, room: str, name: str, reason: str = "") -> None:
        """Remove ``name`` from ``room`` (moderators; §6.30)."""
        await self.request(p.Kick(room=room, name=name, reason=reason))

    async def ban(self, name: str, room: str = "", reason: str = "",
                  duration_s: int = 0) -> None:
        """Ban ``name`` from ``room`` ("" = the server, admins only) for ``duration_s``
        seconds (0 = until lifted) (§6.31)."""
        await self.request(p.Ban(name=name, room=room, reason=reason, duration_s=duration_s))

    async def unban(self, name: str, room: str = "") -> None:
        """Lift a ban (§6.32)."""
        await self.request(p.Unban(name=name, room=room))

    async def mute(self, name: str, room: str = "", reason: str = "",
                   duration_s: int = 0) -> None:
        """Forbid ``name`` to post in ``room`` ("" = everywhere, admins only) (§6.33)."""
        await self.request(p.Mute(name=name, room=room, reason=reason, duration_s=duration_s))

    async def unmute(self, name: str, room: str = "") -> None:
        """Lift a mute (§6.34)."""
        await self.request(p.Unmute(name=name, room=room))

    async def invite(self, room: str, name: str) -> None:
        """Invite ``name`` to ``room`` (moderators; §6.35)."""
        await self.request(p.Invite(room=room, name=name))

    async def set_role(self, room: str, name: str, role: str) -> None:
        """Make ``name`` a "moderator" or a "member" of ``room`` (owner, admins; §6.36)."""
        await self.request(p.SetRole(room=room, name=name, role=role))  # type: ignore[arg-type]

    async def set_room(self, room: str, *, private: bool | None = None,
                       locked: bool | None = None) -> None:
        """Set ``room``'s private and/or locked mode (§6.37)."""
        await self.request(p.SetRoom(room=room, private=private, locked=locked))

    async def delete_message(self, room: str, seq: int) -> None:
        """Delete message ``seq`` of ``room`` (moderators, or its sender; §6.38)."""
        await self.request(p.DeleteMessage(room=room, seq=seq))

    async def delete_room(self, room: str, reason: str = "") -> None:
        """Delete ``room`` with its history (its owner, from inside, or a broker admin;
        never ``lobby``; §6.52). Its members get ROOM_DELETED and their clients stop
        following it, this one too. Raises RequestFailed 403 (not allowed, or lobby),
        404 (no such room), 405 (an older broker)."""
        with self._changing_membership(name_key(room)):
            await self.request(p.DeleteRoom(room=room, reason=reason))
        self._stop_following(name_key(room))

    async def bans(self, room: str | None = None) -> p.BanList:
        """Bans and mutes in force: of ``room``, server-wide (""), or all (None) (§6.40)."""
        reply: p.BanList = await self._patiently(p.ListBans(room=room))
        return reply

    async def audit(self, room: str | None = None, *, actor: str = "", target: str = "",
                    action: str = "", before: int | None = None,
                    limit: int = p.DEFAULT_AUDIT_LIMIT) -> p.AuditList:
        """Audit-log entries, newest first (admins; a room's owner for it) (§6.41)."""
        reply: p.AuditList = await self._patiently(p.ReadAudit(
            room=room, actor=actor, target=target, action=action, before=before,
            limit=limit))
        return reply

    async def list_rooms(self) -> p.RoomList:
        reply: p.RoomList = await self._patiently(p.ListRooms())
        return reply

    async def room_info(self, room: str) -> p.RoomDetails:
        """``room``'s topic, modes, member count and last seq, read without joining it
        (ROOM_INFO, docs/PROTOCOL.md §6.51). Raises RequestFailed 404 (no such room),
        403 (private, and not a member nor an admin), 405 (an older broker)."""
        reply: p.RoomDetails = await self._patiently(p.FetchRoom(room=room))
        return reply

    async def send(self, room: str, text: str, kind: p.MessageKind = "text",
                   cmid: str = "", *, retry_for_s: float = SEND_RETRY_S,
                   patient: bool = True, retry_unavailable: bool = False,
                   notice: bool = False) -> p.Sent:
        """Post to a room; the reply carries the message's sequence number and time.
        Rate-limited (429), it waits and retries (``_patiently``). ``cmid`` (at most
        MAX_CMID_CHARS; a random one when empty) makes retries idempotent: with
        ``reconnect=True``, a try whose reply is lost is repeated after the reconnect for
        up to ``retry_for_s`` seconds, and the broker stores the message at most once
        (docs/PROTOCOL.md §6.8). With ``patient=False`` a 429 (rate limit, a room's slow
        mode) is raised at once, with its ``retry_after_ms``, for a person who would rather
        see why than wait. With ``retry_unavailable``, a 503 (storage unavailable, e.g. the
        database restarting; nothing stored) is retried with the same ``cmid`` for up to
        ``retry_for_s`` (off by default: a full disk would hold the caller that long).
        ``notice`` posts a notice (IRC's NOTICE, kind "text" only): shown apart, never
        answered by bots (docs/PROTOCOL.md §6.8).
        Raises RequestFailed, or ConnectionFailed when no try was answered in time."""
        reply: p.Sent = await self._reliably(
            p.Send(room=room, text=text, kind=kind, cmid=cmid or new_cmid(),
                   notice=True if notice else p.UNSET),
            retry_for_s,
            RATE_LIMIT_TRIES if patient else 1, retry_unavailable)
        self._unread.sent(reply.room, reply.seq)
        return reply

    async def dm(self, to: str, text: str, cmid: str = "", *,
                 retry_for_s: float = SEND_RETRY_S, patient: bool = True,
                 retry_unavailable: bool = False, notice: bool = False) -> p.DmSent:
        """Send a direct message; ``delivered`` says "live" or "stored". Rate-limited
        (429), it waits and retries (``_patiently``); a lost reply is retried with the
        same ``cmid`` as in ``send`` (docs/PROTOCOL.md §6.7); ``patient`` and
        ``retry_unavailable`` and ``notice`` as in ``send``. Raises RequestFailed 404 for
        an unknown account, ConnectionFailed when no try was answered in time."""
        reply: p.DmSent = await self._reliably(
            p.SendDirect(to=to, text=text, cmid=cmid or new_cmid(),
                         notice=True if notice else p.UNSET),
            retry_for_s,
            RATE_LIMIT_TRIES if patient else 1, retry_unavailable)
        self._unread.sent_dm(to, reply.id)
        return reply

    async def through_reconnects(self, send: Callable[[float], Coroutine[Any, Any, T]],
                                 retry_for_s: float = SEND_RETRY_S) -> T:
        """``await send(remaining_s)`` — one ``send`` or ``dm`` with a cmid fixed by the
        caller, given the seconds left — and, while the client is reconnecting (a broker
        restart: a message first offered then fails at once), wait for the reconnect
        and call it again, hence with the same cmid, so that the broker stores it once,
        for up to ``retry_for_s`` seconds in all (``zchat say -``, the IRC gateway).
        Raises what ``send`` raises: RequestFailed, or ConnectionFailed when the broker
        stays away."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for_s
        while True:
            try:
                return await send(max(0.0, deadline - loop.time()))
            except ConnectionFailed:
                if self.state != "reconnecting" or loop.time() >= deadline:
                    raise
            while self.state == "reconnecting" and loop.time() < deadline:
                await asyncio.sleep(0.05)  # the client's own reconnect loop is at work

    async def dm_history(self, name: str, before: int | None = None,
                         after: int | None = None,
                         limit: int = p.DEFAULT_HISTORY_LIMIT) -> p.DmHistoryPage:
        """A page of this account's direct conversation with ``name``, both ways,
        ascending by DM id (docs/PROTOCOL.md §6.48): with ``before``, the newest
        ``limit`` DMs below that id; with ``after``, the oldest above it (``after`` a
        ``read_id`` from ``unread`` gives the unread ones); with neither, the newest.
        Reading history changes neither delivery nor read state. Raises RequestFailed
        404 (no such account), 400 (both bounds, a bound below 0, ``limit`` outside
        1..MAX_HISTORY_LIMIT)."""
        reply: p.DmHistoryPage = await self._patiently(
            p.FetchDmHistory(peer=name, before=before, after=after, limit=limit))
        return reply

    async def mark_read(self, *, room: str | None = None, dm: str | None = None,
                        upto: int | None = None) -> p.ReadState:
        """Mark ``room`` (up to a sequence number) or the direct conversation with ``dm``
        (up to a DM id) read, for every device of the account (docs/PROTOCOL.md §6.49):
        the broker moves its read marker forward only and pushes READ to the account's
        other sessions. Call it when a person has had the conversation on screen, not
        when a message arrives. ``upto`` defaults to the newest message of that
        conversation handed to the application (or known from the login). Returns the
        marker and what is still unread after it, and updates ``unread``. Raises
        LocalProtocolError (neither or both of room and dm; no ``upto`` known),
        RequestFailed 400 (``upto`` beyond the newest message), 403 (not in the room),
        404 (no such room, account or conversation)."""
        if (room is None) == (dm is None):
            raise LocalProtocolError("give exactly one of room and dm")
        if upto is None:
            upto = self._unread.room_last(room) if room is not None \
                else self._unread.dm_last(dm or "")
            if upto is None:
                raise LocalProtocolError(f"nothing known of {room or dm}: give upto")
        state: p.ReadState = await self.request(
            p.MarkRead(upto=upto, room=room or "", peer=dm or ""))
        self._unread.marked(state)
        return state

    async def _reliably(self, req: p.Send | p.SendDirect, retry_for_s: float,
                        tries: int = RATE_LIMIT_TRIES, retry_unavailable: bool = False) -> Any:
        """``_patiently(req)``; with ``retry_unavailable``, a try refused with 503 (storage
        unavailable: nothing was stored) is made again after a growing pause until
        ``retry_for_s`` passes; with
        ``reconnect=True`` and a login, a try that fails with
        ConnectionFailed (no reply: the broker or the network went away) or 401 (the
        broker lost the session) waits for the reconnect and tries again with the same
        request, hence the same cmid, until ``retry_for_s`` seconds have passed; then the
        last error is raised. A message first offered while the client is already
        reconnecting was never sent: it fails at once with ConnectionFailed, as every
        request does then (module docstring)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + retry_for_s
        first = True
        unavailable = 0
        while True:
            unsent = first and self._restoring
            first = False
            try:
                return await self._patiently(req, tries)
            except ConnectionFailed:
                if unsent or not self._retryable() or loop.time() >= deadline:
                    raise
            except RequestFailed as exc:
                if retry_unavailable and exc.status == Status.UNAVAILABLE \
                        and not self._closed and loop.time() < deadline:
                    # storage failed and nothing was stored (a database restarting, a
                    # full disk): the same request again, hence the same cmid, after a
                    # growing pause (PROTOCOL §14, G3)
                    wait_s = min(UNAVAILABLE_RETRY_MAX_S, UNAVAILABLE_RETRY_FIRST_S * 2 ** unavailable,
                                 max(0.0, deadline - loop.time()))
                    unavailable += 1
                    log.info("%s %s refused (%s); trying again in %.2f s", req.TYPE,
                             req.cmid, exc, wait_s)
                    await asyncio.sleep(wait_s)
                    continue
                if exc.status != Status.UNAUTHORIZED or not self._retryable() \
                        or loop.time() >= deadline:
                    raise
            log.info("%s %s not acknowledged; retrying after the reconnect", req.TYPE,
                     req.cmid)
            await self._until_usable(deadline)

    def _retryable(self) -> bool:
        return (self.reconnect and self._credentials is not None and not self._closed
                and self._ended is None)

    async def _until_usable(self, deadline: float) -> None:
        """Wait until the client is connected with a live session (or ``deadline``, loop
        time, passes, or the client closed). Polls every 20 ms: the reconnect machinery
        changes this state in several places."""
        loop = asyncio.get_running_loop()
        while loop.time() < deadline and self._retryable():
            if self._mode == "connected" and not self._restoring \
                    and not self._session_gone and not self._going_away:
                return
            await asyncio.sleep(0.02)

    async def _patiently(self, req: p.Request, tries: int = RATE_LIMIT_TRIES) -> Any:
        """``request(req)``, but an ERROR 429 is answered by waiting its ``retry_after_ms``
        (``session.rate_limit_wait_s``, jittered) and trying again, at most
        ``tries`` times in all; then the last 429 is raised. Safe to repeat: a
        refused request changed nothing (docs/PROTOCOL.md §6.16)."""
        if isinstance(req, p.Login | p.Register) and tries == RATE_LIMIT_TRIES:
            tries = LOGIN_RATE_LIMIT_TRIES
        for attempt in range(1, tries + 1):
            try:
                return await self.request(req)
            except RequestFailed as exc:
                if exc.status != Status.TOO_MANY_REQUESTS or attempt == tries:
                    raise
                wait_s = session.rate_limit_wait_s(
                    exc.retry_after_ms, self._rng.uniform(1.0, 1.0 + session.RATE_LIMIT_JITTER))
                log.info("%s rate-limited (try %d); retrying in %.2f s", req.TYPE, attempt,
                         wait_s)
                if self.on_rate_limited is not None:
                    self.on_rate_limited(req, exc, wait_s)
                await asyncio.sleep(wait_s)
        raise AssertionError("unreachable")  # the loop returns or raises

    async def create_token(self, label: str = "") -> p.TokenCreated:
        """Create an account token (docs/PROTOCOL.md §6.24); ``token`` in the reply is the
        only time the secret is seen. Raises RequestFailed 403 when this session logged in
        with a token, 413/422 for a bad label."""
        reply: p.TokenCreated = await self.request(p.CreateToken(label=label))
        return reply

    async def list_tokens(self) -> p.TokenList:
        """The account's live tokens: id, label, creation time; never the secrets."""
        reply: p.TokenList = await self._patiently(p.ListTokens())
        return reply

    async def revoke_token(self, token_id: int) -> None:
        """Revoke one of the account's tokens; sessions logged in with it end. Raises
        RequestFailed 404 when the account has no token of that id."""
        await self.request(p.RevokeToken(id=token_id))

    async def history(self, room: str, before: int | None = None, after: int | None = None,
                      limit: int = p.DEFAULT_HISTORY_LIMIT) -> p.HistoryPage:
        reply: p.HistoryPage = await self._patiently(
            p.FetchHistory(room=room, before=before, after=after, limit=limit))
        return reply

    async def who(self, room: str | None = None) -> p.WhoList:
        reply: p.WhoList = await self._patiently(p.Who(room=room))
        for user in reply.users:
            self._heard_presence(user.name, user.presence, user.text)
        return reply

    async def whois(self, name: str) -> p.UserFound:
        """One account by name, with its presence, offline ones too (docs/PROTOCOL.md
        §6.50). Raises RequestFailed 404 when there is no such account, 405 from a broker
        older than WHOIS."""
        reply: p.UserFound = await self._patiently(p.Whois(name=name))
        self._heard_presence(reply.name, reply.presence, reply.text)
        return reply

    async def set_presence(self, presence: str, text: str = "") -> None:
        """Set the account's presence, "online" or "away" with ``text`` as the away
        message, for all its sessions (docs/PROTOCOL.md §6.12). Remembered
        (``presence``): a reconnect sets "away" again. Raises RequestFailed 413/422
        for a bad text, 400 for another presence."""
        await self.request(p.SetPresence(presence=presence, text=text))  # type: ignore[arg-type]
        if presence in ("online", "away"):
            self._presence = (presence, text if presence == "away" else "")  # type: ignore[assignment]

    async def ping(self, timeout_s: float | None = None) -> p.Pong:
        """One heartbeat round trip; updates ``rtt_s`` and the rooms' topics, repairs room
        gaps it reveals, and notices when the broker no longer knows this session."""
        sent_with = self._state.session
        changes = self._membership.snapshot()
        start = time.monotonic()
        pong: p.Pong = await self.request(p.Ping(), timeout_s)
        self.rtt_s = time.monotonic() - start
        verdict = session.pong_verdict(sent_with, self._state.session, pong.session,
                                       pong.listed)
        if verdict == "session lost":
            self._session_lost("the broker no longer knows this session")
            return pong
        if verdict == "no news":  # the account's reading budget is spent (§6.13)
            return pong
        if verdict == "rooms and membership":
            await self._follow_membership(pong.rooms, changes)
        for room in pong.rooms:
            key = name_key(room.room)
            feed = self._state.rooms.get(key)
            if feed is not None and feed.following:
                self._state.topics[key] = room.topic
                feed.known(room.last_seq)
                if feed.behind and not self._room_locks.setdefault(key, asyncio.Lock()).locked():
                    # No repair running: do it now (not waiting for room in the event
                    # queue: the next PONG goes on where this one stops). A repair already
                    # running picks up the new target itself.
                    await self._repair(key, wait=False)
        return pong

    async def _follow_membership(self, rooms: tuple[p.RoomState, ...],
                                 changes: dict[str, int]) -> None:
        """Follow what a PONG says of the account's rooms (``rooms``), for each room whose
        membership this client has not been changing since the PING went (``changes``,
        ``session.MembershipChanges.settled``): a room it does not follow is followed,
        with the account's read state of it (MARK_READ of ``upto`` 0, which moves
        nothing, §6.49), then JoinedElsewhere; a followed room not listed is no longer
        followed, then LeftElsewhere."""
        listed = {name_key(room.room) for room in rooms}
        for key in session.rooms_left(self._state.rooms, listed, self._membership, changes):
            name = self._state.room_names.get(key, key)
            log.info("the account is no longer in %s (left on another device?)", name)
            self._stop_following(key)
            self._events.put_nowait(LeftElsewhere(name))
        for room in rooms:
            key = name_key(room.room)
            if not session.joined_elsewhere(self._state.rooms, key, self._membership,
                                            changes):
                continue
            try:
                read: p.ReadState | None = await self.request(
                    p.MarkRead(upto=0, room=room.room))
            except RequestFailed as exc:  # 403: left again meanwhile; the next PONG says
                log.info("no read state of %s: %s", room.room, exc)
                read = None
            if not session.joined_elsewhere(self._state.rooms, key, self._membership,
                                            changes):
                continue  # joined here meanwhile, or left: the next PONG says
            log.info("the account joined %s on another device; following it", room.room)
            self._follow(room.room, room.last_seq, room.topic)
            self._unread.followed(room.room, room.last_seq, read)
            self._events.put_nowait(JoinedElsewhere(room.room, room.last_seq, room.topic))

    @contextlib.contextmanager
    def _changing_membership(self, key: str) -> Iterator[None]:
        """Around a request that changes the account's membership of room ``key``
        (JOIN, PART, DELETE_ROOM): counted as a change when it begins and when it ends,
        and as in flight meanwhile (``session.MembershipChanges``)."""
        self._membership.begin(key)
        try:
            yield
        finally:
            self._membership.end(key)

    async def sessions(self) -> p.SessionList:
        reply: p.SessionList = await self._patiently(p.ListSessions())
        return reply

    # -- operator tools (docs/PROTOCOL.md §6.42-§6.46, docs/admin.md) -----------------------

    async def users(self) -> p.UserList:
        """Every account with its state (admins only: RequestFailed 403 otherwise)."""
        reply: p.UserList = await self._patiently(p.ListUsers())
        return reply

    async def create_accounts(self, accounts: tuple[p.NewAccount, ...],
                              timeout_s: float | None = None) -> p.AccountsCreated:
        """Create ``accounts`` all or none (admins; §6.43). Raises RequestFailed 422 (or
        409) naming every refused account, 403 not an admin. The broker hashes every
        password first: give ``timeout_s`` room for it (about a tenth of a second an
        account with the default Argon2id cost)."""
        reply: p.AccountsCreated = await self.request(p.CreateAccounts(accounts=accounts),
                                                      timeout_s)
        return reply

    async def admin_set_password(self, name: str, password: str) -> None:
        """Give ``name`` a new password, ending all its sessions (admins; §6.44)."""
        await self.request(p.AdminSetPassword(name=name, password=password))

    async def set_disabled(self, name: str, disabled: bool = True) -> None:
        """Disable (ending its sessions) or enable the account ``name`` (admins; §6.45)."""
        await self.request(p.SetDisabled(name=name, disabled=disabled))

    async def set_quota(self, name: str, quota_bytes: int | None) -> p.QuotaSet:
        """Give the account ``name`` a storage quota of its own, ``quota_bytes`` of message
        text (0: no quota), or with None the broker's default again (admins; §6.53).
        Raises RequestFailed 403 (not an admin, or another admin's account), 404, 400."""
        reply: p.QuotaSet = await self.request(p.SetQuota(name=name, quota_bytes=quota_bytes))
        return reply

    async def set_password(self, old: str, new: str) -> None:
        """Change this account's password (§6.46); its other sessions end, this one goes
        on. Raises RequestFailed 401 (wrong old password; counted by the login rate
        limit), 429 (too many attempts), 422/413 (new password)."""
        await self.request(p.SetPassword(old=old, new=new))
        if self._credentials is not None and self._credentials[1]:
            self._credentials = (self._credentials[0], new, self._credentials[2])

    # -- incoming ----------------------------------------------------------------------------

    async def events(self) -> AsyncIterator[Event]:
        """Incoming events in arrival order, room messages once each and in sequence order;
        ends when the client is closed or after SessionEnded.

        A direct message to this account is acknowledged to the broker (DM_ACK) as it is
        handed over here; until then the broker keeps it for the next login."""
        while True:
            event = await self._events.get()
            self._space.set()
            if event is None:
                self._events.put_nowait(None)  # let other iterators end too
                return
            await self._hand_off(event)
            yield event

    async def next_event(self, timeout_s: float | None = None) -> Event | None:
        """The next event, or None when ``timeout_s`` passes (or the client closed); direct
        messages are acknowledged as in ``events()``."""
        try:
            event = await asyncio.wait_for(self._events.get(), timeout_s)
        except TimeoutError:
            return None
        self._space.set()
        if event is None:
            self._events.put_nowait(None)
        else:
            await self._hand_off(event)
        return event

    def _queue_dm(self, dm: p.DirectMessage) -> None:
        """Queue a direct message once per id (a reconnect's LOGIN may list one again)."""
        if dm.id in self._dms_seen:
            return
        if self._events.qsize() >= 2 * self.event_queue_max:
            # Not acknowledged, so the broker offers it again at the next LOGIN/RESUME.
            log.warning("event queue full: DM %d left pending on the broker", dm.id)
            return
        self._dms_seen.add(dm.id)
        self._events.put_nowait(dm)

    async def _take_pending(self, pending: tuple[p.DirectMessage, ...]) -> None:
        """Queue a LOGIN reply's pending DMs; acknowledge again the ones already handed to
        the application (their first acknowledgement was lost, e.g. sent on a session the
        broker had just evicted), so that no later login offers them once more."""
        again = tuple(dm.id for dm in pending if dm.id in self._dms_handed)
        for dm in pending:
            self._queue_dm(dm)
        if again:
            await self._ack(again)

    async def _hand_off(self, event: Event) -> None:
        """Count the event in ``unread``; acknowledge a direct message addressed to us as
        it is handed over (delivered, which is not read: docs/PROTOCOL.md §6.7)."""
        self._unread.handed(event, self._state.name)
        if not isinstance(event, p.DirectMessage) or self._state.name is None or \
                name_key(event.to) != name_key(self._state.name):
            return
        self._dms_handed.add(event.id)
        await self._ack((event.id,))

    async def _ack(self, ids: tuple[int, ...]) -> None:
        """Send DM_ACK without waiting for the reply: if it is lost, the broker simply
        offers the messages again at the next login (and ``_take_pending`` acks again)."""
        try:
            dealer = self._check_usable()
            for start in range(0, len(ids), p.MAX_ACK_IDS):
                chunk = ids[start:start + p.MAX_ACK_IDS]
                # NOBLOCK and a deadline: with no broker (inproc) a send can wait forever,
                # and zmq.asyncio queues even a NOBLOCK send behind a send already waiting
                async with asyncio.timeout(ACK_SEND_TIMEOUT_S):
                    await dealer.send_multipart(
                        p.encode_request(b"ack", p.AckDirect(ids=chunk)), flags=zmq.NOBLOCK)
        except (ZchatError, zmq.ZMQError, TimeoutError) as exc:
            log.debug("DMs %s not acknowledged now (%s); offered again at next login",
                      ids, exc)

    def _follow(self, room: str, last_seq: int, topic: str = "") -> None:
        """Follow ``room`` from ``last_seq`` (its newest message when joined: what came
        before is history, not news), subscribing to its topic."""
        key = name_key(room)
        self._membership.changed(key)
        self._forget_repair(key)
        self._state.rooms[key] = RoomFeed(last_seq)
        self._state.room_names[key] = room
        self._state.topics[key] = topic
        self._subscribe(p.room_topic(key))
        self._catch_up_soon()

    def _stop_following(self, key: str) -> None:
        """Stop following a room (PART, kicked, banned, parted elsewhere, the room was
        deleted): nothing more of it is handed on, no gap repair, and its topic is
        unsubscribed (and not resubscribed at a reconnect)."""
        feed = self._state.rooms.get(key)
        if feed is not None:
            feed.following = False
            feed.held.clear()
        self._membership.changed(key)
        self._forget_repair(key)
        self._unread.parted(key)  # the broker forgets the read marker with the membership
        self._unsubscribe(p.room_topic(key))

    def _forget_repair(self, key: str) -> None:
        """Drop a repair of the room's former feed: cancel its background task and give
        the room a new lock, so that a repair still waiting for an old page (it hands
        nothing of it on) never holds up the new feed's."""
        task = self._repairs.pop(key, None)
        if task is not None:
            task.cancel()
        self._room_locks[key] = asyncio.Lock()

    def _catch_up_soon(self) -> None:
        """Wake the heartbeat at the catch-up times (``session.catch_up_times``), so that
        a message published before the new subscription took effect is found soon. Timed
        from the latest room followed: the timers of an earlier one are replaced (a LOGIN
        following many rooms sets them once, in effect)."""
        for timer in self._catch_up_timers:
            timer.cancel()
        loop = asyncio.get_running_loop()
        self._catch_up_timers = [loop.call_at(when, self._wake.set)
                                 for when in session.catch_up_times(loop.time())]

    def _subscribe(self, topic: bytes) -> None:
        """SUBSCRIBE ``topic`` on the SUB unless it already is (once per topic); kept for
        the SUB of the next reconnect too."""
        if topic not in self._topics:
            self._topics.add(topic)
            if self._sub is not None:
                self._sub.setsockopt(zmq.SUBSCRIBE, topic)

    def _unsubscribe(self, topic: bytes) -> None:
        if topic in self._topics:
            self._topics.discard(topic)
            if self._sub is not None:
                self._sub.setsockopt(zmq.UNSUBSCRIBE, topic)

    def _heard(self) -> None:
        self._last_heard = time.monotonic()
        if self._lost and not self._restoring:  # reconnect=False: the transport came back
            self._lost = False
            self.connected = True
            self._mode = "connected"
            self._events.put_nowait(ConnectionRestored())

    def _session_lost(self, why: str) -> None:
        """The broker no longer knows this client's session (a PONG without it; for a
        client that reconnects, a 401 too): a client that reconnects logs in again; one
        that does not ends with SessionEnded when a PONG says so (a 401 may be a wrong
        password of SET_PASSWORD; a broker fenced out of its cluster drops its sessions
        silently, and such a client went on hearing room events with no session:
        docs/cluster.md)."""
        if self._credentials is not None:
            if not self._session_gone:
                log.info("%s; logging in again", why)
                self._session_gone = True
                self._wake.set()
        elif self._state.session and self._ended is None:
            self._end(f"{why}; log in again")

    async def _read_dealer(self, dealer: zmq.asyncio.Socket) -> None:
        while True:
            frames = await dealer.recv_multipart()
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
                self._queue_dm(value)
            elif isinstance(value, p.Invited | p.MuteChanged | p.ReadMarked):
                self._events.put_nowait(value)  # READ: counted as it is handed over
            elif isinstance(value, p.SessionClosed):
                # The broker ends this session on someone's order (docs/PROTOCOL.md
                # §6.47): say so, once, instead of "connection lost" and a refused login.
                self._closed_by_broker = value
                self._wake.set()
            else:
                # A private room's event (docs/PROTOCOL.md §6.39). Handled by another task:
                # its gap repair sends HISTORY, whose reply this reader must be free to read.
                self._room_pushes.put_nowait(value)

    async def _read_room_pushes(self) -> None:
        """Hand a private room's pushed events to ``_on_event``, as if from PUB."""
        while True:
            event = await self._room_pushes.get()
            try:
                await self._on_event(event)
            except ZchatError as exc:  # a gap's HISTORY failed: the next PONG repairs it
                log.info("could not fill a gap now (the next heartbeat retries): %s", exc)

    async def _read_sub(self, sub: zmq.asyncio.Socket) -> None:
        while True:
            # Not proof that the broker hears us: only its replies on the DEALER are
            # (``_heard``). A broker whose PUB still reached a client while the path to its
            # ROUTER was cut kept the client with TICKs for ever while it evicted the
            # session (a fourth tester's, through a proxy in front of the ROUTER only).
            frames = await sub.recv_multipart()
            self._events_heard = time.monotonic()
            try:
                event = p.decode_event(frames)
            except ProtocolError as exc:
                log.warning("ignored a malformed event: %s", exc)
                continue
            try:
                await self._on_event(event)
            except ZchatError as exc:  # a gap's HISTORY failed: the next PONG repairs it
                log.info("could not fill a gap now (the next heartbeat retries): %s", exc)

    async def _on_event(self, event: p.Message) -> None:
        if isinstance(event, p.GoingAway):
            self._on_going_away(event)
        elif isinstance(event, p.MessagePosted):
            await self._on_room_message(event)
        elif isinstance(event, p.UserJoined | p.UserLeft | p.TopicChanged
                        | p.SlowModeChanged | p.MessageDeleted | p.RoomModeChanged
                        | p.RoleChanged | p.RoomDeleted):
            key = name_key(event.room)
            feed = self._state.rooms.get(key)
            if isinstance(event, p.RoomDeleted) and feed is not None \
                    and feed.first_seq not in (None, event.first_seq):
                # a room of that name deleted before the one joined since (§6.52.1)
                log.info("ignoring the deletion of an earlier #%s", event.room)
                return
            if feed is not None and feed.following:
                if isinstance(event, p.TopicChanged):
                    self._state.topics[key] = event.topic
                await self._room_for_events()
                self._events.put_nowait(event)
                if isinstance(event, p.UserLeft) and event.by and self._state.name \
                        and name_key(event.name) == name_key(self._state.name):
                    # kicked or banned (docs/PROTOCOL.md §6.19): stop following the room
                    self._stop_following(key)
                elif isinstance(event, p.UserLeft) and self._state.name \
                        and name_key(event.name) == name_key(self._state.name):
                    # This account left: here (PART) or on another device. A heartbeat
                    # now says which, at once rather than within an interval.
                    self._wake.set()
                elif isinstance(event, p.RoomDeleted):  # gone (§6.52.1): nothing to follow
                    self._stop_following(key)
        elif isinstance(event, p.PresenceChanged):
            self._heard_presence(event.name, event.presence, event.text)
            await self._room_for_events()
            self._events.put_nowait(event)

    def _on_going_away(self, event: p.GoingAway) -> None:
        """GOING_AWAY (docs/PROTOCOL.md §6.29): hand it to the application and, with
        ``reconnect=True`` after a login, reconnect at once (back-off and RESUME) instead
        of waiting out the heartbeat timeout."""
        self._events.put_nowait(event)
        if self._credentials is not None and not self._restoring:
            log.info("the broker is going away: %s", event.text)
            self._going_away = True
            self._wake.set()

    def _has_room(self) -> bool:
        return self._events.qsize() < self.event_queue_max

    async def _room_for_events(self) -> None:
        """Wait until the event queue is below its bound (CLIENT_EVENT_QUEUE_MAX). Only
        the SUB reader waits here: while it does, libzmq holds or drops the room traffic
        and the seq repair refills it later."""
        while not self._has_room():
            self._space.clear()
            await self._space.wait()

    async def _on_room_message(self, msg: p.MessagePosted) -> None:
        """A room message heard live (PUB, or a private room's push): into the room's
        feed, which hands on what is next in ``seq`` order. Waits first while the event
        queue is full, so that libzmq holds (or drops, and HISTORY refills) the traffic
        meanwhile; never waits for HISTORY, which a repair task fetches."""
        await self._room_for_events()
        key = name_key(msg.room)
        feed = self._state.rooms.get(key)
        if feed is None or not feed.following:
            early = self._joining.get(key)
            if early is not None and len(early) < MAX_HELD:
                early.append(msg)  # a JOIN of the room is under way: keep it for its feed
            return
        self._on_live(key, msg)

    def _on_live(self, key: str, msg: p.MessagePosted) -> None:
        feed = self._state.rooms[key]
        feed.live(msg)
        self._hand_on(feed)
        if session.repair_due(feed):
            self._repair_soon(key)

    def _hand_on(self, feed: RoomFeed) -> None:
        """Queue what ``feed`` can hand on now, as far as the event queue has room."""
        for msg in feed.take(self.event_queue_max - self._events.qsize()):
            self._events.put_nowait(msg)
        if feed.skipped:
            log.warning("the broker's history lacks %d message(s) of a room; skipped "
                        "(delivered up to #%d)", feed.skipped, feed.delivered)
            feed.skipped = 0

    def _repair_soon(self, key: str) -> None:
        """Start the room's background repair unless one runs (or a reconnect, which
        repairs every room itself, is under way)."""
        task = self._repairs.get(key)
        if (task is not None and not task.done()) or self._restoring or self._closed:
            return
        self._repairs[key] = asyncio.create_task(self._repair_in_background(key),
                                                 name=f"zchat-repair-{key}")

    async def _repair_in_background(self, key: str) -> None:
        try:
            await self._repair(key, wait=True)
        except ZchatError as exc:  # the next PONG (or live message) tries again
            log.info("could not fill a gap in a room now (the next heartbeat retries): %s",
                     exc)

    async def _stop_repairs(self) -> None:
        tasks = [t for t in self._repairs.values() if not t.done()]
        self._repairs.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)

    async def _repair(self, key: str, wait: bool) -> None:
        """Bring the room's feed up to date: hand on what it holds, fetch each gap from
        HISTORY, until nothing is missing. One repair per room at a time (its lock). With
        ``wait`` (the background task) it waits for room in the event queue until done;
        without (heartbeat, reconnect) it stops when the queue is full: the next PONG
        shows the room still behind and the repair goes on then. Raises what HISTORY
        raises (ConnectionFailed, RequestFailed)."""
        async with self._room_locks.setdefault(key, asyncio.Lock()):
            while True:
                feed = self._state.rooms.get(key)
                if feed is not None and feed.following:
                    self._hand_on(feed)
                step = session.next_repair(feed, self._has_room(), wait)
                if step == "stop":
                    return
                if step == "wait":
                    await self._room_for_events()
                    continue
                assert feed is not None and not isinstance(step, str)
                after, limit = step
                page = await self.history(self._state.room_names[key], after=after,
                                          limit=limit)
                if self._state.rooms.get(key) is not feed:  # followed anew meanwhile
                    return
                feed.page(page.messages, after)

    # -- heartbeats and reconnecting ---------------------------------------------------------

    async def _supervise(self) -> None:
        """PING every heartbeat interval; notice a silent broker (ConnectionLost) and, with
        ``reconnect`` after a login, reconnect (docs/PROTOCOL.md §10)."""
        while True:
            assert self.info is not None
            interval = self.info.heartbeat_interval_ms / 1000
            timeout = self.info.heartbeat_timeout_ms / 1000
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), interval)
            self._wake.clear()
            if self._closed_by_broker is not None:  # SESSION_CLOSED: terminal, no retry
                closed = self._closed_by_broker
                await self._close_sockets("session ended",
                                          functools.partial(self._closed_error, closed))
                self._end(closed.reason, closed.by)
                return
            now = time.monotonic()
            silent = now - self._last_heard
            events_silent = 0.0 if self._events_heard is None or self._sub is None \
                else now - self._events_heard
            verdict = session.heartbeat_verdict(
                now, self._last_heard, timeout, can_reconnect=self._credentials is not None,
                session_gone=self._session_gone, going_away=self._going_away,
                lost=self._lost, events_silent_s=events_silent)
            if verdict == "reconnect":
                if events_silent > timeout and silent <= timeout:
                    log.warning("nothing on the event connection for %.0f s, not even a "
                                "TICK: the broker's PUB does not reach us (refused?); "
                                "reconnecting", events_silent)
                if not await self._reconnect(silent):
                    return  # SessionEnded
                continue
            if verdict == "lost":
                self._lost = True
                self.connected = False
                self._mode = "reconnecting"
                self._events.put_nowait(ConnectionLost(silent))
            sent_s = time.monotonic()
            try:
                # Bounded by the interval, so that silence is checked every interval even
                # while the broker is gone (ConnectionLost within timeout + interval).
                await self.ping(timeout_s=interval)
            except (ConnectionFailed, RequestFailed) as exc:
                log.debug("heartbeat failed: %s", exc)
                after = session.after_failed_ping(
                    time.monotonic(), self._last_heard, sent_s, timeout,
                    can_reconnect=self._credentials is not None)
                if after == "reconnect":  # nothing heard since the PING went: gone
                    if not await self._reconnect(time.monotonic() - self._last_heard):
                        return
                elif after == "check now":
                    self._wake.set()  # rather than after another interval

    async def _reconnect(self, silent_s: float) -> bool:
        """Emit ConnectionLost, then attempt with back-off until logged in again (True) or
        the credentials are refused (SessionEnded, False). Cancelled by close()."""
        self._restoring = True
        self._lost = True
        self.connected = False
        self._mode = "reconnecting"
        session_only = self._session_gone
        self._session_gone = False
        self._going_away = False
        self._events.put_nowait(ConnectionLost(silent_s, session_only=session_only))
        log.info("lost the broker at %s (silent %.1f s); reconnecting", self.server,
                    silent_s)
        await self._close_sockets("lost the broker; reconnecting")
        lost = self._endpoint
        for attempt in itertools.count(1):
            delay = backoff_delay(attempt, self.reconnect_max_s,
                                  self._rng.uniform(-RECONNECT_JITTER, RECONNECT_JITTER))
            self._events.put_nowait(Reconnecting(attempt, delay))
            await asyncio.sleep(delay)
            self._endpoint = session.reconnect_endpoint(lost, attempt, len(self.servers),
                                                        self._spread)
            token = _INTERNAL.set(True)
            try:
                await self._restore()
            except (_LoginRefused, trust.BrokerKeyChanged) as exc:
                await self._close_sockets("session ended")
                # The many-line warning is the event's reason, shown once by whoever
                # reads it; the log (stderr for the CLI) gets one line.
                self._end(str(exc), summary=f"the broker's key changed (pinned "
                          f"{fingerprint(exc.expected)}, offered "
                          f"{fingerprint(exc.actual)})"
                          if isinstance(exc, trust.BrokerKeyChanged) else None)
                return False
            except (ZchatError, zmq.ZMQError) as exc:
                log.info("reconnect attempt %d (%s) failed: %s", attempt, self.server, exc)
                await self._close_sockets("reconnect attempt failed")
                continue
            finally:
                _INTERNAL.reset(token)
            break
        self._restoring = False
        self._lost = False
        self.connected = True
        self._mode = "connected"
        self._last_heard = time.monotonic()
        # Found by the attempts (each once: a room is followed, or no longer, once), told
        # now that the application may ask about them.
        for found in self._elsewhere:
            self._events.put_nowait(found)
        self._elsewhere.clear()
        self._events.put_nowait(ConnectionRestored())
        log.info("reconnected to %s", self.server)
        return True

    async def _restore(self) -> None:
        """One reconnect attempt: new sockets, INFO, LOGIN with the kept credentials,
        resubscribe (done by _open and _follow), then fill every followed room from its
        feed's last delivered sequence number up to the room's last_seq (docs/PROTOCOL.md §7).
        Raises _LoginRefused when the credentials are refused."""
        await self._close_sockets("reconnecting")
        await self._open()
        assert self._credentials is not None
        name, password, token = self._credentials
        # Taken before the login: the PRESENCE event of our own login ("online", after a
        # broker restart) may be read before its reply.
        presence, away_text = self._presence
        reply: p.LoggedIn | None = None
        if self._state.session:
            try:  # the same session, no password, no presence flap (§6.27)
                reply = await self._patiently(p.Resume(session=self._state.session),
                                              LOGIN_RATE_LIMIT_TRIES)
            except RequestFailed as exc:
                if exc.status in (Status.UNAVAILABLE, Status.TOO_MANY_REQUESTS):
                    # The broker cannot say now (its database is away, a lock is busy):
                    # the session may well be there. This attempt fails and the next one
                    # RESUMEs again; a LOGIN now would replace a session the cluster
                    # still holds and publish a second online (a fifth tester's 364
                    # logins after a 40 s PostgreSQL outage).
                    raise
                # 401: evicted, logged out or expired
                log.info("could not resume the session (%s); logging in again", exc)
        if reply is None:
            try:
                reply = await self.request(p.Login(
                    name=name, password=password, token=token,
                    presence=p.UNSET if self._announces else False,
                    address=self._told_address))
            except RequestFailed as exc:
                if exc.status in (Status.UNAUTHORIZED, Status.FORBIDDEN, Status.NOT_FOUND):
                    raise _LoginRefused(f"the broker refused to log in {name} again: "
                                        f"{exc}") from None
                raise
        self._state.name = reply.name
        self._state.session = reply.session
        self._subscribe(p.TOPIC_PRESENCE_PREFIX)
        if presence == "away" and self._announces:
            # A restarted broker has forgotten it (presence lives in its memory, even
            # for a session resumed from its store, §6.27); for a live session it is
            # unchanged, and the broker publishes nothing (§8).
            await self.request(p.SetPresence(presence="away", text=away_text))
            self._presence = (presence, away_text)
        followed: list[str] = []
        for room in reply.rooms:
            key = name_key(room.room)
            feed = self._state.rooms.get(key)
            verdict = session.after_relogin(feed, room.last_seq)
            if verdict == "follow":  # joined elsewhere meanwhile
                self._follow(room.room, room.last_seq, room.topic)
                self._elsewhere.append(JoinedElsewhere(room.room, room.last_seq,
                                                       room.topic))
                continue
            assert feed is not None
            self._state.topics[key] = room.topic
            followed.append(key)
            if verdict == "verify":
                # Either the reply is older than what the new SUB has delivered meanwhile
                # (messages posted while it travelled: a chaos test saw duplicates from
                # trusting it), or the broker really lost messages (restored from an older
                # copy). Ask the broker whether it holds the last one seen here.
                seen = feed.delivered
                page = await self.history(room.room, after=seen - 1, limit=1)
                if not (page.messages and page.messages[0].seq == seen):
                    log.warning("room %s is at #%d on the broker, behind #%d seen here; "
                                "following it from there", room.room, room.last_seq, seen)
                    self._follow(room.room, room.last_seq, room.topic)
                    continue
            feed.known(room.last_seq)
        listed = {name_key(r.room) for r in reply.rooms}
        for key in session.rooms_left(self._state.rooms, listed):
            self._stop_following(key)  # parted elsewhere meanwhile, or removed
            self._elsewhere.append(LeftElsewhere(self._state.room_names.get(key, key)))
        await self._take_pending(reply.pending)
        for key in followed:
            await self._repair(key, wait=False)

    def _end(self, reason: str, by: str = "", summary: str | None = None) -> None:
        """Terminal: SessionEnded, then the end of the event stream. ``summary`` is logged
        instead of a long ``reason``."""
        log.warning("session ended%s: %s", f" by {by}" if by else "", summary or reason)
        self._ended = reason
        self._credentials = None
        self._restoring = False
        self._mode = "closed"
        self.connected = False
        self._events.put_nowait(SessionEnded(reason, by))
        self._events.put_nowait(None)
