"""The broker's event loop: a ROUTER for requests, a PUB for events, one thread owning state.

The PUB (an XPUB) is sent on from a thread of its own, the publisher (zchat.broker.publisher):
the loop hands it each event, in order, and it judges what subscribers ask for.

This is the I/O adapter around zchat.core.BrokerCore. It is a plain ``zmq.Poller``
loop, not asyncio: pyzmq's asyncio integration costs about ten times as much per message
on this kind of machine (see the performance issue), and the pure core keeps the loop
swappable. Each wake-up drains up to ``BATCH`` requests before it looks at timers.

Group commit (docs/PROTOCOL.md §14): everything one wake-up handles (the requests drained,
the finished password jobs, the timers) runs in one store group — one SQLite transaction,
one fsync — and its replies and events are held until that commit returns, then sent. So a
message is on disk before anyone hears of it, as with one transaction per request, at one
fsync per batch instead of one per message. If the commit fails (disk full, I/O error),
nothing of the batch was stored and nothing of it was sent: every request in it is answered
503, and the broker rebuilds its in-memory state from the store, keeping the sessions whose
rows are stored (``BrokerCore.adopt_sessions``).

Socket options (docs/PROTOCOL.md §2):

- ROUTER_MANDATORY on the ROUTER, with every send non-blocking: a reply to a peer that has
  gone (EHOSTUNREACH) or whose queue is full (EAGAIN at the high-water mark) is dropped and
  logged; it never blocks or crashes the broker.
- Routing ids are the ROUTER's own random per-connection ids (clients set no identity), so
  a reconnecting client is a new peer and cannot take over another's queue.
- MAXMSGSIZE = wire.MAX_TRANSPORT_FRAME_BYTES (128 KiB) on the ROUTER: libzmq disconnects a peer
  that sends a larger frame before it reaches us (the frame count is not bounded: PROTOCOL §9).
- SNDHWM/RCVHWM from config (messages, per peer).
- LINGER at close: SHUTDOWN_LINGER_MS (0.5 s) after a graceful stop, so that GOING_AWAY
  and the last replies leave; 0 otherwise. A stopping broker never hangs on a dead peer.

Transport security (docs/PROTOCOL.md §16): with ``encryption = "curve"`` (the default)
every tcp socket is a CurveZMQ server with the broker's long-term key pair (created in the
data directory on first start, zchat.broker.keypair), and a ZAP handler (ZapHandler in zchat.broker.zap,
allowing any client key: accounts log in with passwords and tokens)
runs in this process for as long as the sockets do; if it cannot start, ``bind()`` raises
TransportSecurityError and nothing is bound. The key service (a plain STREAM socket
speaking just enough ZMTP, zchat.broker.zmtp) tells clients
the public key for trust on first use.

Password hashing runs on a small thread pool (``hash_workers``); finished jobs come back
through a queue and wake the poller through a pipe, so hashing never stalls the loop.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import heapq
import itertools
import logging
import os
import queue
import re
import signal
import sys
import threading
import time
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

import zmq

from zchat import keyformat as k
from zchat.broker import zmtp
from zchat.broker.connections import (
    LONG_MESSAGE_FRAMES,
    ConnectionGuard,
    close_monitored,
    effective_limits,
)
from zchat.broker.connections import _peer_address as connection_address
from zchat.broker.conntrack import (
    SEGMENT_COST,
    SUBSCRIBER_AGE_ALLOWANCE,
    SUBSCRIBER_ALLOWANCE,
    SUBSCRIBER_FREE_SEGMENTS,
    SUBSCRIBER_MAX_HELD,
    SUBSCRIBER_MAX_SEGMENTS,
    ByteLedger,
    ByteLimits,
    Sample,
    Verdict,
    peer_name,
    tcp_counters,
)
from zchat.broker.key_service import KeyService
from zchat.broker.keypair import BrokerKeys, load_or_create_broker_keys
from zchat.broker.publisher import Publisher
from zchat.broker.publisher import peer_address as _peer_address
from zchat.broker.subscriptions import SubscriptionJudge, SubscriptionLimits
from zchat.broker.zap import PUB_ZAP_DOMAIN, ZAP_DOMAIN, ZapHandler
from zchat.config import BrokerConfig, data_dir
from zchat.core import (
    MAX_SUBSCRIPTION_BYTES,
    READING_REQUESTS,
    Action,
    BrokerCore,
    Offload,
    ToPeer,
    ToTopic,
)
from zchat.errors import Status, StorageError, ZchatError
from zchat.ratelimit import ThrottledLog, address_key
from zchat.store import GroupStore, is_store_url
from zchat.wire import (
    DEFAULT_HISTORY_LIMIT,
    MAX_HISTORY_LIMIT,
    MAX_REQUEST_ID_BYTES,
    MAX_TRANSPORT_FRAME_BYTES,
    Error,
    encode_reply,
)

if TYPE_CHECKING:
    from zchat.broker.cluster import ClusterLink

log = logging.getLogger("zchat.broker")

#: Requests handled per wake-up before timers are looked at again.
BATCH = 256
#: A wake-up also ends, and its replies go out, once its requests took this long or
#: their replies charged to reading budgets reach BATCH_READ_BYTES (docs/PROTOCOL.md
#: §15.2): a batch of big requests (full HISTORY pages, ROOMS of thousands of rooms)
#: then cannot keep the small ones of other peers waiting; the ROUTER fair-queues
#: between peers, so the next wake-up starts with someone else's.
BATCH_BUDGET_S = 0.05
BATCH_READ_BYTES = 4 * 1024 * 1024
#: Frames of a request as the ROUTER delivers it: routing id + the 4 of docs/PROTOCOL.md §3.1.
REQUEST_PARTS = 5
#: Once a wake-up's replies reached BATCH_READ_BYTES, the loop goes on reading but puts
#: the reading requests (zchat.core.READING_REQUESTS, and PINGs whose PONG lists
#: many rooms: BrokerCore.costly_ping) aside, each peer's in its
#: own FIFO, and serves them in later wake-ups one request at a time, the connection
#: served the fewest bytes since the contention began first (so a client asking one
#: small page does not wait behind a round of others' full ones); every request a peer
#: sends after one put aside waits behind it, so that its replies keep their order. The
#: ROUTER fair-queues peers one *message* each: without this, 30 accounts that each
#: pipelined 9 full HISTORY pages held every other client's PING for 1.7 s, one PING per
#: round of 30 pages (docs/PROTOCOL.md §15.2). At most DEFERRED_PER_PEER requests of one
#: peer and DEFERRED_BYTES in all are put aside; one beyond either is answered 429 at
#: once (``retry_after_ms`` DEFERRED_RETRY_MS).
#: New requests read per wake-up even when the requests put aside took its time (half
#: of BATCH_BUDGET_S at most): the cheap are served, the costly put aside.
MIN_READ_PER_WAKE = 32
DEFERRED_PER_PEER = 64
#: The largest request put aside: a valid reading request is a few hundred bytes.
DEFER_MAX_REQUEST_BYTES = 4096
DEFERRED_BYTES = 16 * 1024 * 1024
DEFERRED_RETRY_MS = 250
#: LINGER at close after a graceful stop, in milliseconds: time for the GOING_AWAY event
#: and the last replies to leave (docs/PROTOCOL.md §6.29); well inside the 2 s a stopping
#: broker is given.
SHUTDOWN_LINGER_MS = 500
#: Request types the core is given the peer's address for (a getsockopt each): those that
#: are limited or logged per address (docs/PROTOCOL.md §15.1). SET_PASSWORD too: without
#: it each connection was keyed by its routing id, with a fresh login bucket each.
_ADDRESS_TYPES = (b"LOGIN", b"REGISTER", b"RESUME", b"SET_PASSWORD")
#: The type frames of the reading requests, which a wake-up past BATCH_READ_BYTES puts
#: aside (DEFERRED_PER_PEER).
_READING_TYPES = frozenset(request.TYPE.encode() for request in READING_REQUESTS)
#: Listen backlog of the broker's tcp sockets (ZMQ_BACKLOG; libzmq's default is 100): a
#: storm of connections (a few hundred at once) then waits in the kernel's accept queue
#: instead of having its handshakes dropped and retried seconds later (SYN-ACK back-off),
#: which also held honest clients back. Linux caps it at net.core.somaxconn (4096).
LISTEN_BACKLOG = 1024
#: Key service connections the broker tracks at once; beyond it the longest-known is
#: closed (an honest client's fetch is over in milliseconds).
KEY_SERVICE_MAX_PEERS = 4096
#: Reads (of up to 8 KiB each) libzmq queues per key service connection before it stops
#: reading that connection: the broker closes one at its first wrong byte anyway.
KEY_SERVICE_RCVHWM = 16
#: The kernel's send buffer of each PUB connection (SO_SNDBUF; Linux doubles it): chat
#: events are small, and a subscriber that does not read then holds at most this in the
#: kernel besides its ``pub_sndhwm`` events in libzmq. Left to autotuning, Linux grew
#: each to over 1 MiB: 1,200 such subscribers held 1.5 GB of kernel memory.
PUB_SNDBUF_BYTES = 256 * 1024
#: SUBSCRIBEs queued per subscriber before libzmq stops reading its connection (the
#: XPUB's receive high-water mark; 1,000 by default): 3,000 topics of 2 KB sent at once
#: grew a loaded broker by 225 MiB before the first was judged.
PUB_RCVHWM = 64
#: The kernel's receive buffer of each PUB connection: a subscriber sends nothing but its
#: SUBSCRIBEs, and libzmq still takes in what the kernel holds for a connection after
#: the broker shut it (Linux hands out data queued before shutdown(SHUT_RD)): with
#: buffers autotuned to megabytes, a subscriber cut at its first 2 KB topic still got
#: ~200 MiB of trie in.
PUB_RCVBUF_BYTES = 64 * 1024
#: The longest message a subscriber may send the PUB (MAXMSGSIZE, which libzmq applies
#: to every frame that arrives, the CURVE handshake's included: INITIATE with a SUB's
#: metadata is ~300 bytes, and 256 refused every handshake): a SUBSCRIBE of the longest
#: topic (MAX_SUBSCRIPTION_BYTES + 1, in CURVE's box of ~50 bytes) fits many times; a
#: longer message disconnects its sender in libzmq before it is read or added to the
#: trie (2 KB topics got ~2,600 into a loaded broker's trie, 267 MiB, before the
#: judge's cut took effect; a session's 1,000 MiB messages grew one to 6 GB).
PUB_MAX_MESSAGE_BYTES = 1024
#: Routing ids of peers a reply could not reach (EHOSTUNREACH: their connection is gone)
#: that the loop remembers, the most recent: their later requests, when they hold no
#: session, are dropped unserved (``_drain_router``). libzmq still hands the loop what such a
#: connection sent before it went, up to ``rcvhwm`` messages each; a tester's junk fuzzers
#: on short-lived connections left most of their requests queued after they had gone,
#: and reading them was a third of what the loop spent on each (profiled): the rest went
#: to counting it to a descriptor since reused (a getpeername each), serving it and a
#: reply libzmq refused.
#: Only the ids libzmq makes up (first byte 0; never reused): a peer that sets its own
#: (ZMQ_ROUTING_ID) may come back with it.
GONE_PEERS_KEPT = 16_384
#: Send flags as plain ints (every send is non-blocking).
_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST = int(zmq.NOBLOCK)


_LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "[::1]")


class TransportSecurityError(ZchatError):
    """CurveZMQ cannot be set up as configured: the ZAP handler did not start, or the
    key pair cannot be loaded. The broker then does not start."""


class BindError(ZchatError):
    """An endpoint of the broker cannot be bound (in use, a bad address): the message
    names which one (the ROUTER, the PUB or the key service), its endpoint and setting,
    and another of the broker's endpoints on the same port. ``errno`` is libzmq's."""

    def __init__(self, reason: str, errno: int) -> None:
        super().__init__(reason)
        self.errno = errno


def is_loopback(endpoint: str) -> bool:
    """Whether a tcp ``endpoint`` binds or connects to a loopback host only."""
    host = endpoint.partition("://")[2].rpartition(";")[2].rpartition(":")[0]
    return host in _LOOPBACK_HOSTS


#: The ``limit`` of a HISTORY or DM_HISTORY body, read without parsing it whole.
_LIMIT = re.compile(rb'"limit"\s*:\s*(\d{1,6})')
#: Bytes a history message is taken for, and any other reading reply, in ``_estimate``.
ESTIMATED_MESSAGE_BYTES = 4096
ESTIMATED_READING_BYTES = 64 * 1024


def _estimate(parts: list[zmq.Frame]) -> int:
    """Bytes the reply to one request put aside may have, for the order in which they
    are served (bytes served to its connection so far + this: the smallest first, so
    that a page of 50 asked when the contention begins does not wait behind a full page
    of every other connection): HISTORY and DM_HISTORY by their ``limit`` (taken at its
    largest, 4 KiB a message), anything else ESTIMATED_READING_BYTES."""
    if len(parts) == REQUEST_PARTS and parts[3].bytes in (b"HISTORY", b"DM_HISTORY"):
        found = _LIMIT.search(parts[4].bytes)
        limit = int(found[1]) if found else DEFAULT_HISTORY_LIMIT
        return min(limit, MAX_HISTORY_LIMIT) * ESTIMATED_MESSAGE_BYTES
    return ESTIMATED_READING_BYTES


def _transport_key(frame: zmq.Frame) -> str:
    """The sender's CURVE public key in hex, as the ZAP handler returned it for the
    connection (User-Id), or "" on a plain connection."""
    try:
        return str(frame.get("User-Id") or "")
    except zmq.ZMQError:
        return ""


#: Nice value of the password-hashing threads. Argon2id holds a core for ~20 ms per login
#: (scrypt ~35 ms; both release the GIL); on a 2-core machine a storm of logins would
#: otherwise take the CPU from the loop and stall room traffic. Linux schedules threads by their own nice
#: value, so the loop (nice 0) wins the CPU whenever both want it (docs/PERFORMANCE.md).
HASH_THREAD_NICE = 10


def lower_thread_priority() -> None:
    """Run the calling thread at HASH_THREAD_NICE (Linux only: elsewhere the nice value
    is per process, so nothing is changed)."""
    if sys.platform == "linux":
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_THREAD_NICE)


def wall_ms() -> int:
    """The broker's clock for timestamps on the wire: UTC milliseconds since the epoch."""
    return time.time_ns() // 1_000_000


class Broker:
    """A broker bound to ``router`` and ``pub`` endpoints, serving ``store``.

    Use as a context manager (binds on enter, closes on exit) and call ``run()`` in the
    thread that owns it; ``stop()`` may be called from any thread or a signal handler.
    ``router_endpoint``/``pub_endpoint`` are the bound endpoints (ports resolved when 0 or
    ``*`` was asked for).
    """

    def __init__(self, config: BrokerConfig, store: GroupStore,
                 context: zmq.Context[Any] | None = None,
                 keys: BrokerKeys | None = None) -> None:
        self.config = config
        self.store = store
        store.hold_broker_lock()  # `zchat admin` writes wait for no broker (docs/admin.md)
        self.context = context or zmq.Context.instance()
        self._log_dropped = ThrottledLog(logging.WARNING, "dropped a reply, its peer's "
                                         "queue is full (high-water mark)")
        self._log_long = ThrottledLog(logging.INFO, "refused a message of too many frames")
        self._log_key_junk = ThrottledLog(logging.INFO, "closed a key service connection")
        self._log_no_session = ThrottledLog(logging.INFO, "cut a connection that held no "
                                            "session after login_timeout_s")
        #: The key service's connections (STREAM ids) and their parsers, oldest first.
        self._key_peers: OrderedDict[bytes, zmtp.KeyPeer] = OrderedDict()
        #: Sends the events and judges the subscriptions, in a thread of its own
        #: (zchat.broker.publisher), once ``bind()`` made the XPUB.
        self.publisher: Publisher | None = None
        #: The PUB's index among the guard's watched sockets (ConnectionGuard.watch).
        self._pub_index = -1
        #: Requests put aside (DEFERRED_PER_PEER): per routing id its FIFO of (frames,
        #: their bytes), the peers in the order of their next turn; their bytes in all.
        self._deferred: dict[bytes, deque[tuple[list[zmq.Frame], int]]] = {}
        self._deferred_bytes = 0
        #: The connections with requests aside, smallest first: (bytes served to it since
        #: requests were first put aside + its next reply's ``_estimate``, arrival order,
        #: routing id); one entry each. ``_served`` is emptied when no request is aside.
        self._turns: list[tuple[int, int, bytes]] = []
        self._served: dict[bytes, int] = {}
        self._turn_order = itertools.count()
        self.router_endpoint = config.router
        self.pub_endpoint = config.pub
        self._router: zmq.Socket[Any] | None = None
        self._pub: zmq.Socket[Any] | None = None
        #: The long-term key pair (given, or loaded/created by ``bind()`` from the data
        #: directory when CURVE is on); None while every socket is plain.
        self.keys = keys
        self.keys_created = False
        #: The running ZAP handler while CURVE is on, else None.
        self.zap: ZapHandler | None = None
        #: The connection limits' monitor thread while any socket is on tcp or ipc.
        self.connections: ConnectionGuard | None = None
        #: Bytes read from and queued to each tcp connection of the ROUTER while they are
        #: checked (zchat.broker.conntrack: Linux, a tcp ROUTER, a limit on), else None.
        self.ledger: ByteLedger | None = None
        #: (core, its subscriber_version) last given to the ZAP handler.
        self._keys_published: tuple[BrokerCore | None, int] = (None, -1)
        self._key_service: zmq.Socket[Any] | None = None
        #: The bound key service endpoint ("" when there is none: plain, or no tcp).
        self.key_endpoint = ""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._done: queue.SimpleQueue[tuple[int, Any]] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=config.hash_workers,
                                        thread_name_prefix="zchat-hash",
                                        initializer=lower_thread_priority)
        self.core: BrokerCore | None = None
        self.ready = threading.Event()
        #: What the current wake-up's requests, jobs and timers asked for; carried out by
        #: ``_flush()`` after the group commit.
        self._pending: list[Action] = []
        #: Routing ids whose reply or push met a full queue in this wake-up.
        self._unread: set[bytes] = set()
        #: GONE_PEERS_KEPT routing ids whose replies met EHOSTUNREACH, oldest first
        #: (``_drain_router``).
        self._gone: dict[bytes, None] = {}
        #: Group commits that failed, each followed by a rebuild (read by tests and logs).
        self.failed_commits = 0
        self._linger_ms = 0  # SHUTDOWN_LINGER_MS once run() has said GOING_AWAY
        #: The link to the other brokers on the same PostgreSQL database
        #: (zchat.broker.cluster), made by ``bind()``; None on SQLite.
        self.cluster: ClusterLink | None = None

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> Broker:
        self.bind()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def encrypted(self) -> bool:
        """Whether the ROUTER is a CurveZMQ server (``encryption = "curve"`` on tcp)."""
        return self.config.encryption == "curve" and k.is_tcp(self.config.router)

    def _start_security(self) -> None:
        """Load the key pair and start the ZAP handler when any socket will use CURVE.
        Raises TransportSecurityError (nothing is bound then)."""
        cfg = self.config
        if cfg.encryption != "curve":
            for endpoint in (cfg.router, cfg.pub):
                if k.is_tcp(endpoint) and not is_loopback(endpoint):
                    log.warning("ENCRYPTION IS OFF on %s (encryption = \"none\"): "
                                "passwords, tokens and messages cross the network in "
                                "clear text", endpoint)
            return
        if not (k.is_tcp(cfg.router) or k.is_tcp(cfg.pub)):
            return  # inproc/ipc are always plain (docs/PROTOCOL.md §16.1)
        if self.keys is None:
            directory = data_dir(cfg)
            try:
                directory.mkdir(parents=True, exist_ok=True)
                self.keys, self.keys_created = load_or_create_broker_keys(directory)
            except (OSError, k.KeyFileError) as exc:
                raise TransportSecurityError(f"cannot set up encryption: {exc}") from None
        zap = ZapHandler(self.context)
        try:
            zap.start()
        except (zmq.ZMQError, RuntimeError) as exc:
            with contextlib.suppress(Exception):
                zap.stop()
            raise TransportSecurityError(
                f"the ZAP handler cannot start ({exc}); refusing to run CURVE without "
                f"one (another ZAP handler in this process's ZeroMQ context?)") from None
        if not zap.is_alive():
            zap.stop()
            raise TransportSecurityError("the ZAP handler is not running; refusing to run "
                                         "CURVE without one")
        self.zap = zap

    def _secure(self, sock: zmq.Socket[Any], endpoint: str, domain: bytes) -> None:
        """Make ``sock`` a CURVE server checked in ZAP ``domain`` before its bind, if
        CURVE applies to ``endpoint``."""
        if self.zap is None or self.keys is None or not k.is_tcp(endpoint):
            return
        sock.setsockopt(zmq.CURVE_SERVER, 1)
        sock.setsockopt(zmq.CURVE_SECRETKEY, self.keys.secret)
        sock.setsockopt(zmq.CURVE_PUBLICKEY, self.keys.public)
        sock.setsockopt(zmq.ZAP_DOMAIN, domain)

    def _start_guard(self) -> None:
        """Start counting connections (zchat.broker.connections) when any endpoint uses file
        descriptors (tcp, ipc): raises the soft ``ulimit -n`` as the limits need, or
        lowers the total to what it carries, with a WARNING."""
        cfg = self.config
        if not any(e.startswith(("tcp://", "ipc://")) for e in (cfg.router, cfg.pub)):
            return
        limits = effective_limits(cfg.max_connections, cfg.max_connections_per_address)
        self.connections = ConnectionGuard(self.context, limits)
        held = ByteLimits(cfg.max_incomplete_bytes, cfg.max_unread_bytes,
                          cfg.max_held_bytes)
        checked = held.incomplete or held.unread or held.total
        smallest = min(limit for limit in (held.incomplete, held.unread, held.total)
                       if limit) if checked else 0
        if checked and cfg.router.startswith("tcp://") \
                and self.connections.track_bytes(self._wake_loop, smallest):
            self.ledger = ByteLedger(held, peer_name)

    def _bind(self, sock: zmq.Socket[Any], endpoint: str, what: str) -> None:
        """Bind ``sock`` to ``endpoint``. Raises BindError naming ``what`` ("ROUTER",
        "PUB" or "key service"), its setting, libzmq's reason, and which other endpoint
        of this broker asks for the same port (router and pub both :5555; a pub on the
        router's port + 2, where the key service goes)."""
        try:
            sock.bind(endpoint)
        except zmq.ZMQError as exc:
            cfg = self.config
            how = {"ROUTER": "--router, [broker] router", "PUB": "--pub, [broker] pub",
                   "key service": "[broker] key_endpoint" if cfg.key_endpoint else
                                  "the ROUTER's port + 2 unless [broker] key_endpoint "
                                  "sets it"}[what]
            others = {"ROUTER": cfg.router, "PUB": cfg.pub}
            if what != "key service" and self.zap is not None and k.is_tcp(cfg.router):
                with contextlib.suppress(ValueError):
                    others["key service"] = cfg.key_endpoint or k.key_endpoint_for(
                        cfg.router)
            port = endpoint.rpartition(":")[2]
            same = [name for name, other in others.items() if name != what
                    and port not in ("", "*", "0") and other.rpartition(":")[2] == port]
            clash = f"; the {same[0]} endpoint uses it too" if same else ""
            noun = what if what == "key service" else f"{what} endpoint"
            # libzmq's reason alone: pyzmq's strerror repeats the endpoint named here
            # as "(addr='tcp://…')"
            reason = zmq.strerror(exc.errno) if exc.errno else exc.strerror
            raise BindError(f"cannot bind the {noun} {endpoint} ({how}): "
                            f"{reason}{clash}", exc.errno or 0) from None

    def bind(self) -> None:
        """Create and bind both sockets (and, with CURVE, start the ZAP handler and bind
        the key service). Raises BindError (e.g. address in use; it names the endpoint),
        ValueError (no key service port can be derived) or TransportSecurityError
        (nothing is bound then). After a failure, ``close()`` closes what was made."""
        self._start_security()
        self._start_guard()
        router = self.context.socket(zmq.ROUTER)
        # An XPUB, not a PUB: it hands the loop each topic subscribed for the first time,
        # which the loop checks (``_check_subscriptions``, docs/PROTOCOL.md §16.2).
        pub = self.context.socket(zmq.XPUB)
        self._router, self._pub = router, pub
        self._secure(router, self.config.router, ZAP_DOMAIN)
        self._secure(pub, self.config.pub, PUB_ZAP_DOMAIN)
        for sock in (router, pub):
            sock.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
            if self.connections is not None:
                # the PUB's too: a subscriber may send frames that never end a message
                index = self.connections.watch(sock, track_bytes=self.ledger is not None,
                                               subscribers=sock is pub)
                if sock is pub:
                    self._pub_index = index
        router.setsockopt(zmq.ROUTER_MANDATORY, 1)
        router.setsockopt(zmq.MAXMSGSIZE, MAX_TRANSPORT_FRAME_BYTES)
        router.setsockopt(zmq.SNDHWM, self.config.sndhwm)
        router.setsockopt(zmq.RCVHWM, self.config.rcvhwm)
        router.setsockopt(zmq.LINGER, 0)
        pub.setsockopt(zmq.SNDHWM, self.config.pub_sndhwm)
        pub.setsockopt(zmq.SNDBUF, PUB_SNDBUF_BYTES)
        # libzmq adds every SUBSCRIBE it reads to its trie before the loop sees the report
        # (it drains a subscriber's pipe whole at each activation): a small pipe bounds
        # how many a subscriber cut at its first bad topic got in first.
        pub.setsockopt(zmq.RCVHWM, PUB_RCVHWM)
        pub.setsockopt(zmq.RCVBUF, PUB_RCVBUF_BYTES)
        # A subscriber sends nothing but SUBSCRIBEs of at most MAX_SUBSCRIPTION_BYTES:
        # libzmq disconnects a peer whose message is longer (PUB_MAX_MESSAGE_BYTES).
        pub.setsockopt(zmq.MAXMSGSIZE, PUB_MAX_MESSAGE_BYTES)
        pub.setsockopt(zmq.LINGER, 0)
        self._bind(router, self.config.router, "ROUTER")
        self._bind(pub, self.config.pub, "PUB")
        self.router_endpoint = router.getsockopt_string(zmq.LAST_ENDPOINT)
        self.pub_endpoint = pub.getsockopt_string(zmq.LAST_ENDPOINT)
        if self.zap is not None and self.keys is not None and k.is_tcp(self.config.router):
            # A raw STREAM socket speaking just enough ZMTP (zchat.broker.zmtp), not a ROUTER:
            # libzmq would take a message of millions of frames whole before the broker
            # could look at it (docs/PROTOCOL.md §16.3).
            service = self.context.socket(zmq.STREAM)
            self._key_service = service
            #: The key service's logic, rate-limited per address (zchat.broker.key_service.KeyService).
            self.key_service = KeyService(self.keys.public, self.config.key_rate_per_s,
                                             self.config.key_burst)
            service.setsockopt(zmq.SNDHWM, 100)
            service.setsockopt(zmq.RCVHWM, KEY_SERVICE_RCVHWM)
            service.setsockopt(zmq.LINGER, 0)
            service.setsockopt(zmq.BACKLOG, LISTEN_BACKLOG)
            if self.connections is not None:
                self.connections.watch(service)
            self._bind(service, self.config.key_endpoint
                       or k.key_endpoint_for(self.config.router), "key service")
            self.key_endpoint = service.getsockopt_string(zmq.LAST_ENDPOINT)
            log.info("CurveZMQ on; public key: %s (%s)", self.keys.public.decode(),
                     k.fingerprint(self.keys.public))
        advertised = self.config.pub_advertised or self.pub_endpoint
        self.core = BrokerCore(self.store, self.config, advertised, wall_ms())
        if is_store_url(getattr(self.store, "url", "")):
            from zchat.broker.cluster import ClusterLink

            self.cluster = ClusterLink(self.config, self.store, self.core, time.monotonic())
        judge = SubscriptionJudge(SubscriptionLimits(MAX_SUBSCRIPTION_BYTES),
                                  self._topic_allowed)
        self.publisher = Publisher(self.context, pub, judge,
                                   self._cut_pub_address if self.connections else None,
                                   self._wake_loop)
        self._pub = None  # the publisher's thread owns it from here on
        self.publisher.start()
        if self.connections is not None:
            self.connections.start()

    def wake_on_signals(self) -> int:
        """Make every signal wake the loop (``signal.set_wakeup_fd`` on the loop's wake
        pipe); call from the main thread. Returns the previous wake-up fd."""
        return signal.set_wakeup_fd(self._wake_w)

    def _wake_loop(self) -> None:
        """Wake the loop (from another thread): samples of the connections wait."""
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"c")

    def stop(self) -> None:
        """Ask ``run()`` to return; safe from any thread and from signal handlers."""
        self._stopping.set()
        # A full or closed pipe is fine: the loop wakes anyway.
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"x")

    def close(self) -> None:
        """Close sockets, the worker pool, the wake pipe and the store. LINGER is 0, or
        SHUTDOWN_LINGER_MS after ``run()`` returned from ``stop()``, so that GOING_AWAY can
        still leave (a process must then term its context to wait for it: ``zchat
        broker`` does)."""
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self.publisher is not None:
            self.publisher.stop(self._linger_ms)
            self.publisher = None
        for sock in (self._router, self._pub, self._key_service):
            if sock is not None and not sock.closed:
                close_monitored(sock, self._linger_ms)  # the monitor first (see there)
        self._router = self._pub = self._key_service = None
        if self.cluster is not None:
            self.cluster.close()
        if self.connections is not None:
            self.connections.stop()
            self.connections = None
        if self.zap is not None:
            self.zap.stop()
            self.zap = None
        for fd in (self._wake_r, self._wake_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        self._wake_r = self._wake_w = -1
        self.store.close()

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> None:
        """Serve until ``stop()``; then stop taking requests, publish GOING_AWAY and end
        every session in memory (publishing offline presence; the sessions stay in the
        store for RESUME) (docs/PROTOCOL.md §6.29)."""
        assert self._router is not None and self.core is not None, "bind() first"
        router = self._router
        poller = zmq.Poller()
        poller.register(router, zmq.POLLIN)
        poller.register(self._wake_r, zmq.POLLIN)
        if self._key_service is not None:
            poller.register(self._key_service, zmq.POLLIN)
        cluster, listening = self.cluster, -1
        self.ready.set()
        self._execute(self.core.tick(time.monotonic(), wall_ms()))
        ticked = time.monotonic()  # the end of the last tick's work
        while not self._stopping.is_set():
            core = self.core
            deadline = core.next_deadline()
            if cluster is not None:
                deadline = cluster.next_due() if deadline is None \
                    else min(deadline, cluster.next_due())
                if cluster.fileno() != listening:  # (re)connected, or lost
                    if listening >= 0:
                        poller.unregister(listening)
                    listening = cluster.fileno()
                    if listening >= 0:
                        poller.register(listening, zmq.POLLIN)
            wait_s = self.config.heartbeat_interval_s if deadline is None else \
                max(0.0, deadline - time.monotonic())
            started = time.monotonic()
            now_due = self._deferred or (cluster is not None and cluster.due_now)
            events = dict(poller.poll(0 if now_due else int(wait_s * 1000) + 1))
            woke = time.monotonic()
            if now_due:
                wait_s = woke - started  # no wait was asked: none of it is a stall
            self.store.begin_group()
            try:
                if cluster is not None:
                    if listening in events:
                        cluster.hear()
                    self._pending += cluster.in_group(woke, wall_ms())
                if router in events or self._deferred:
                    self._drain_router(router, core)
                if self._wake_r in events:
                    self._drain_jobs(core)
                    self._end_subscribers(core)
                # The loop's own stalls (a message of millions of frames, the process
                # stopped, a slow disk, lock waits in the database) are not the clients'
                # silence: credit them before evicting. Counted from the last tick, so
                # that the work after it (the commit, a rebuild after a failed one, the
                # cluster's reads) is counted too (a tester's mass failover evicted idle
                # clients for the loop's own time there).
                now = time.monotonic()
                stall = max(0.0, woke - started - wait_s) + (now - woke) + \
                    max(0.0, started - ticked)
                if stall > self.config.heartbeat_interval_s:
                    core.credit_stall(stall, now)
                ticked = now  # the tick's own time is counted at the next wake-up
                self._pending += core.tick(now, wall_ms())
            except BaseException:
                self.store.abort_group()
                raise
            self._flush()
            if cluster is not None:
                self._execute(cluster.after(time.monotonic()))
            if self.ledger is not None and self._wake_r in events:
                self._check_bytes(self.ledger)
            if self._unread:
                self._end_unread()
            if self._key_service is not None and self._key_service in events:
                self._serve_keys(self._key_service)
        if cluster is not None:
            # the sessions are let go first, so that the cluster is counted without them
            # (offline only for accounts with no session on another broker), and the
            # events are relayed with the shutdown's commit
            cluster.release(wall_ms())
            self.store.begin_group()
            self._pending += self.core.shutdown(wall_ms())
            self._flush()
        else:
            self._execute(self.core.shutdown(wall_ms()))
        self._linger_ms = SHUTDOWN_LINGER_MS

    def _drain_router(self, router: zmq.Socket[Any], core: BrokerCore) -> None:
        """One wake-up's requests: first those put aside, least served connection first,
        while the wake-up's bytes and half its time last; then up to BATCH new ones (at
        least MIN_READ_PER_WAKE), serving each, or putting it aside (``_defer``) once the
        replies reached BATCH_READ_BYTES or its peer has some aside already."""
        started = time.monotonic()
        read_bytes = core.read_bytes + BATCH_READ_BYTES
        deferred, turns, served = self._deferred, self._turns, self._served
        while turns and core.read_bytes < read_bytes \
                and time.monotonic() - started <= BATCH_BUDGET_S / 2:
            _, _, routing_id = heapq.heappop(turns)  # the least served goes first
            waiting = deferred[routing_id]
            held, nbytes = waiting.popleft()
            self._deferred_bytes -= nbytes
            before = core.read_bytes
            self._serve(core, held)
            served[routing_id] = served.get(routing_id, 0) + nbytes + core.read_bytes \
                - before
            if waiting:
                heapq.heappush(turns, (served[routing_id] + _estimate(waiting[0][0]),
                                       next(self._turn_order), routing_id))
            else:
                del deferred[routing_id]
        if not deferred:
            served.clear()  # no one waits: the next contention starts even
        for count in range(BATCH):
            # at least MIN_READ_PER_WAKE new requests whatever the time: the work put
            # aside must not keep the next request of someone else unread
            if count >= MIN_READ_PER_WAKE and time.monotonic() - started > BATCH_BUDGET_S:
                return
            try:
                first = router.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            # Frame by frame, never more than REQUEST_PARTS kept: libzmq bounds the size
            # of a frame, not their number, and a message of millions of empty frames
            # must not become millions of Python objects (docs/PROTOCOL.md §9).
            parts = [first]
            while parts[-1].more:
                if len(parts) == REQUEST_PARTS:
                    self._refuse_long(router, parts)
                    break
                parts.append(router.recv(copy=False))
            else:
                if self._gone and parts[0].bytes in self._gone \
                        and parts[0].bytes not in core.sessions:
                    # sent before its connection went: no reply can reach it, and without
                    # a session it can change nothing that outlives the connection
                    continue
                if self.ledger is not None and self._consumed(parts, len(parts) - 1, 0):
                    continue  # a connection from a barred address: not served
                if parts[0].bytes in deferred or (
                        core.read_bytes >= read_bytes and self._costly(core, parts)):
                    self._defer(parts)
                else:
                    self._serve(core, parts)

    @staticmethod
    def _costly(core: BrokerCore, parts: list[zmq.Frame]) -> bool:
        """Whether a request may have a big reply, and so waits its turn past the
        wake-up's BATCH_READ_BYTES: a reading request (or a PING whose PONG lists many
        rooms) of a session, no bigger than DEFER_MAX_REQUEST_BYTES. Without a session it
        gets 401, and a bigger one is malformed (400): both cost next to nothing, and
        putting them aside would only let junk fill the room kept for others."""
        if len(parts) != REQUEST_PARTS or parts[0].bytes not in core.sessions:
            return False
        kind = parts[3].bytes
        if kind not in _READING_TYPES and not (
                kind == b"PING" and core.costly_ping(parts[0].bytes)):
            return False
        return sum(len(frame) for frame in parts[1:]) <= DEFER_MAX_REQUEST_BYTES

    def _defer(self, parts: list[zmq.Frame]) -> None:
        """Put one request aside for a later wake-up (DEFERRED_PER_PEER), or answer it
        429 when its peer has DEFERRED_PER_PEER aside already or DEFERRED_BYTES are."""
        routing_id = parts[0].bytes
        waiting = self._deferred.get(routing_id)
        nbytes = sum(len(frame) for frame in parts)
        if (waiting is not None and len(waiting) >= DEFERRED_PER_PEER) \
                or self._deferred_bytes + nbytes > DEFERRED_BYTES:
            request_id = parts[2].bytes[:MAX_REQUEST_ID_BYTES] if len(parts) > 2 else b""
            self._pending.append(ToPeer(routing_id, encode_reply(request_id or b"?", Error(
                status=int(Status.TOO_MANY_REQUESTS), retry_after_ms=DEFERRED_RETRY_MS,
                reason=f"the broker is still busy with {DEFERRED_PER_PEER} or more "
                       f"requests of this connection or others' big ones: wait "
                       f"{DEFERRED_RETRY_MS} ms"))))
            return
        if waiting is None:
            waiting = self._deferred[routing_id] = deque()
            heapq.heappush(self._turns, (self._served.get(routing_id, 0) + _estimate(parts),
                                         next(self._turn_order), routing_id))
        waiting.append((parts, nbytes))
        self._deferred_bytes += nbytes

    def _consumed(self, parts: list[zmq.Frame], frames: int, more_bytes: int) -> bool:
        """Count a complete message read from the ROUTER (``parts``: its routing id and
        first frames; ``frames`` in all, ``more_bytes`` in those not kept) to the tcp
        connection it came from (zchat.broker.conntrack). True when it is a connection's
        first message and its address is barred: the connection is cut, the message not
        served. (The guard refuses such a connection when libzmq reports it accepted, in
        its own thread: a CURVE handshake and a PING could be quicker, and a barred
        address was once answered.)"""
        assert self.ledger is not None
        try:
            fd = parts[0].get(zmq.SRCFD)
        except zmq.ZMQError:  # inproc: no descriptor
            return False
        if fd < 0:
            return False
        nbytes = more_bytes
        for frame in parts[1:]:
            nbytes += len(frame)
        peer = self.ledger.consumed(fd, parts[0].bytes, nbytes, frames)
        if not isinstance(peer, tuple) or self.connections is None:
            return False
        address = address_key(str(peer[0]), b"")
        now = time.monotonic()
        if not self.connections.table.barred(address, now):
            return False
        self.ledger.cut(fd)
        self.connections.cut(fd, address, now, bar=False, quiet=True)
        return True

    def _refuse_long(self, router: zmq.Socket[Any], parts: list[zmq.Frame]) -> None:
        """Discard the rest of a message with more frames than a request has (only the
        count is kept) and answer 400, echoing its request id."""
        count = len(parts)
        frame = parts[-1]
        skipped = 0
        while frame.more:
            frame = router.recv(copy=False)
            skipped += len(frame)
            count += 1
        if self.ledger is not None:
            self._consumed(parts, count - 1, skipped)
        request_id = parts[2].bytes[:MAX_REQUEST_ID_BYTES] or b"?"
        now = time.monotonic()
        self._log_long(f"{count - 1} frames from {parts[0].bytes.hex()}", now)
        if count - 1 > LONG_MESSAGE_FRAMES and self.connections is not None:
            # costly to read, and libzmq cannot refuse it: cut it, bar its address a while
            address = _peer_address(parts[0])
            try:
                fd = int(parts[0].get(zmq.SRCFD))
            except (zmq.ZMQError, TypeError, ValueError):
                fd = -1
            if fd >= 0 and address:
                self.connections.cut(fd, address_key(address, b""), now)
        self._pending.append(ToPeer(parts[0].bytes, encode_reply(request_id, Error(
            status=int(Status.BAD_REQUEST),
            reason=f"a request has 4 frames, got {count - 1}"))))

    def _serve(self, core: BrokerCore, parts: list[zmq.Frame]) -> None:
        """Hand one request (routing id + frames) to the core and carry out its actions.
        The outermost per-message boundary: whatever one request does, the loop logs it
        and goes on serving the others."""
        try:
            routing_id = parts[0].bytes
            frames = [f.bytes for f in parts[1:]]
            address = transport_key = ""
            if len(frames) > 2 and frames[2] in _ADDRESS_TYPES:
                address = _peer_address(parts[-1])
                if self.zap is not None:
                    transport_key = _transport_key(parts[-1])
            self._pending += core.handle(routing_id, frames, time.monotonic(), wall_ms(),
                                         address, transport_key)
        except Exception:
            log.exception("unexpected error serving one request; still serving")

    def _cut_pub_address(self, address: str, why: str) -> None:
        """From the publisher's thread: reset the PUB connections from ``address``,
        which makes libzmq drop their topics (docs/PROTOCOL.md §16.2)."""
        if self.connections is not None:
            self.connections.cut_address(self._pub_index, address_key(address, b""), why)

    def _topic_allowed(self, topic: bytes) -> bool:
        return self.core is not None and self.core.subscription_allowed(topic)

    def _serve_keys(self, service: zmq.Socket[Any]) -> None:
        """Read up to BATCH chunks of the key service's connections (docs/PROTOCOL.md
        §16.3), each at most 8 KiB: answer the KEY requests in them, and close a
        connection at its first byte that is not part of one (zchat.broker.zmtp.KeyPeer).
        Junk and requests over the per-address rate limit (``key_rate_per_s``,
        ``key_burst``) get no answer (zchat.broker.key_service.KeyService)."""
        peers = self._key_peers
        for _ in range(BATCH):
            try:
                conn = service.recv(zmq.NOBLOCK, copy=False)
                data = service.recv(copy=False)
            except zmq.Again:
                return
            cid = conn.bytes
            peer = peers.get(cid)
            if not data.bytes:  # a connection made (or, for one we know, gone)
                if peer is not None:
                    del peers[cid]
                elif self._send_raw(service, cid, zmtp.GREETING):
                    if len(peers) >= KEY_SERVICE_MAX_PEERS:  # the longest-known goes
                        self._send_raw(service, peers.popitem(last=False)[0], b"")
                    peers[cid] = zmtp.KeyPeer(k.KEY_SERVICE_MAX_FRAME_BYTES)
                continue
            if peer is None:  # bytes after we closed it: close again, keep nothing
                self._send_raw(service, cid, b"")
                continue
            requests, close = peer.receive(data.bytes)
            address = _peer_address(data) if requests else ""
            for request in requests:
                reply = self.key_service.reply([cid, request], address, time.monotonic())
                if reply is not None:
                    self._send_raw(service, cid, zmtp.encode_message(reply[1:]))
            if close:
                del peers[cid]
                self._log_key_junk(f"{close} from {_peer_address(data) or '?'}",
                                   time.monotonic())
                self._send_raw(service, cid, b"")

    @staticmethod
    def _send_raw(service: zmq.Socket[Any], cid: bytes, data: bytes) -> bool:
        """Send ``data`` on a STREAM connection (b"" closes it); False if it is gone or
        its queue is full."""
        try:
            service.send(cid, _MORE)
            service.send(data, _LAST)
        except zmq.ZMQError:
            return False
        return True

    def _check_bytes(self, ledger: ByteLedger) -> None:
        """Take the connection guard's news (ends of connections, samples of their byte
        counters, in order) and cut the connections over a byte limit (docs/PROTOCOL.md
        §15.2, §15.3): one that holds an unfinished message is cut and its address barred
        as for an over-long message; one that does not read has its session ended (in
        ``_end_unread``, "SendQ exceeded") and its connection cut."""
        assert self.connections is not None
        news = self.connections.samples
        # Samples queued while the loop was busy are judged once, each connection's
        # latest: judged one by one against the same counts of what the loop read, the
        # first took the credit for all of it and the later ones none (a tester's
        # connection sending only complete requests was cut so). A connection's end is
        # taken after the samples before it and before those after it.
        latest: dict[int, Sample] = {}
        while not news.empty():
            kind, value = news.get_nowait()
            if kind == "closed":
                if value in latest:
                    self._judge_samples(ledger, list(latest.values()))
                    latest.clear()
                # what a subscriber's connection was estimated to hold (counted high:
                # conntrack.subscriber_held), so that a trim follows once enough is freed
                if held := ledger.closed(value):
                    self.connections.freed(held)
                continue
            for sample in value:
                latest[sample.fd] = sample
        if latest:
            self._judge_samples(ledger, list(latest.values()))

    def _judge_samples(self, ledger: ByteLedger, samples: list[Sample]) -> None:
        """Cut the sampled connections the ledger finds over a limit, watch those near one
        closely, and cut those without a session past ``login_timeout_s``."""
        assert self.connections is not None
        for verdict in ledger.judge(samples):
            self._cut_held(ledger, verdict)
        self.connections.watch_closely(ledger.near)
        if self.config.login_timeout_s:
            self._cut_without_session(ledger, samples)

    def _cut_without_session(self, ledger: ByteLedger, samples: list[Sample]) -> None:
        """Cut the sampled connections older than ``login_timeout_s`` that hold no session
        (docs/PROTOCOL.md §15.3): idle ones, and ones that never logged in or whose session
        ended. No bar: a client's DEALER reconnects by itself and logs in on the new
        connection. One log line per LOG_EVERY_S (an attacker can cause them at will)."""
        assert self.connections is not None and self.core is not None
        limit, sessions, now = self.config.login_timeout_s, self.core.sessions, \
            time.monotonic()
        for sample in samples:
            if sample.age_s < limit or sample.subscriber or ledger.is_cut(sample.fd):
                continue
            routing_id = ledger.routing_id(sample.fd)
            if routing_id is not None and routing_id in sessions:
                continue
            ledger.cut(sample.fd)
            if self.connections.cut(sample.fd, sample.address, now, bar=False, quiet=True):
                self._log_no_session(f"from {sample.address}, {sample.age_s:.0f} s old",
                                     now)

    def _cut_held(self, ledger: ByteLedger, verdict: Verdict) -> None:
        """Carry out one verdict, after reading the connection's counters again: a
        descriptor reused since the sample (a new connection counts from 0) is left."""
        assert self.connections is not None
        sample = verdict.sample
        counters = tcp_counters(sample.fd)
        if counters is None or not verdict.still(counters[0], counters[1]):
            return
        if ledger.held(sample._replace(acked=counters[0], received=counters[1],
                                       data_segs=counters[2])) is None:
            return
        limits, mib = ledger.limits, 1024 * 1024
        ledger.cut(sample.fd)
        # libzmq frees the connection's buffers in its I/O thread once it has closed it:
        # the guard's thread trims a little later, off the loop (a subscriber's held is
        # already counted high: conntrack.subscriber_held).
        self.connections.freed(verdict.held)
        now = time.monotonic()
        if verdict.total:
            why = (f"the broker holds over max_held_bytes ({limits.total / mib:g} MiB) for "
                   f"its connections, and this one the most, {verdict.held / mib:.1f} "
                   f"MiB {'unread' if verdict.kind == 'unread' else 'of an unfinished message'}")
        elif verdict.kind == "segments":
            why = (f"its subscriber sent {sample.data_segs:,} TCP segments, more than "
                   f"SUBSCRIBEs take ({SUBSCRIBER_FREE_SEGMENTS} and "
                   f"{SUBSCRIBER_MAX_SEGMENTS} more; each may keep {SEGMENT_COST // 1024} "
                   "KiB in libzmq while a message is unfinished)")
        elif verdict.kind == "incomplete" and sample.subscriber:
            why = (f"its subscriber sent {sample.received // 1024:,} KiB, more than SUBSCRIBEs "
                   f"take (at most {SUBSCRIBER_MAX_HELD // 1024} KiB past "
                   f"{SUBSCRIBER_ALLOWANCE // 1024} KiB and {SUBSCRIBER_AGE_ALLOWANCE} "
                   "bytes a second)")
        elif verdict.kind == "incomplete":
            why = (f"{verdict.held / mib:.1f} MiB held for a message it has not finished "
                   f"(its bytes, or {SEGMENT_COST // 1024} KiB for each TCP segment that "
                   f"carried a part; max_incomplete_bytes {limits.incomplete / mib:g} MiB)")
        else:
            why = (f"{verdict.held / mib:.1f} MiB of replies unread (max_unread_bytes "
                   f"{limits.unread / mib:g} MiB); its session is ended")
        if verdict.kind == "unread" and verdict.routing_id is not None:
            self._unread.add(verdict.routing_id)
        # no bar for a subscriber: its new connection starts from 0 again, and a bar
        # would refuse its address (a NAT) the ROUTER too
        self.connections.cut(sample.fd, sample.address, now, why,
                             bar=verdict.kind == "incomplete" and not sample.subscriber)

    def _recheck_unread(self, ledger: ByteLedger, fd: int) -> None:
        """Replies queued to ``fd`` passed ``max_unread_bytes`` since its last known
        acknowledgement: read the kernel's count now and cut it if it is still over."""
        counters = tcp_counters(fd)
        verdict = ledger.recheck(fd, None if counters is None else counters[0])
        if verdict is None:
            return
        address = connection_address(fd)
        if address:
            self._cut_held(ledger, dataclasses.replace(
                verdict, sample=verdict.sample._replace(address=address)))

    def _end_unread(self) -> None:
        """End the sessions of the peers whose queue was full (docs/PROTOCOL.md §15.2,
        "SendQ exceeded"), in a group of their own."""
        assert self.core is not None
        unread, self._unread = self._unread, set()
        self.store.begin_group()
        try:
            for routing_id in unread:
                self._pending += self.core.end_unread(routing_id, wall_ms())
        except BaseException:
            self.store.abort_group()
            raise
        self._flush()
        self._unread.clear()  # the session is gone; its full queue drops what follows

    def _drain_jobs(self, core: BrokerCore) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        while True:
            try:
                job_id, result = self._done.get_nowait()
            except queue.Empty:
                return
            self._pending += core.complete(job_id, result, time.monotonic(), wall_ms())

    def _end_subscribers(self, core: BrokerCore) -> None:
        """End the sessions of the subscribers the publisher cut (SESSION_CLOSED; their
        key's new PUB connections are refused, docs/PROTOCOL.md §16.2)."""
        assert self.publisher is not None
        while True:
            try:
                cut = self.publisher.cuts.get_nowait()
            except queue.Empty:
                return
            self._pending += core.end_subscriber(cut.key, cut.topic, wall_ms(), cut.why)

    def _job_done(self, job_id: int, future: Future[Any]) -> None:
        """Runs in a worker thread: hand the result to the loop and wake it."""
        exc = future.exception() if not future.cancelled() else None
        self._done.put((job_id, exc if exc is not None else future.result()))
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._wake_w, b"j")

    def _flush(self) -> None:
        """Commit the wake-up's group, then carry out what it asked for. A failed commit
        sends none of it: see ``_recover``."""
        actions, self._pending = self._pending, []
        if self.cluster is not None:
            self.cluster.before_commit()
        try:
            self.store.commit_group()
        except StorageError as exc:
            if self.cluster is not None:
                self.cluster.commit_failed()
            actions = self._recover(actions, exc.reason)
        else:
            if self.cluster is not None:
                # the room messages of the batch, from the database, before its replies
                actions = self.cluster.after_commit() + actions
        self._publish_subscriber_keys()
        self._execute(actions)

    def _publish_subscriber_keys(self) -> None:
        """Give the ZAP handler a new snapshot of the client keys bound to live sessions
        when they changed: before the wake-up's replies leave, so that a client told
        "logged in" finds its key allowed on the PUB (docs/PROTOCOL.md §16.2)."""
        core = self.core
        if self.zap is None or core is None:
            return
        stamp = (core, core.subscriber_version)
        if stamp != self._keys_published:
            self.zap.subscriber_keys = frozenset(core.subscriber_keys)
            self._keys_published = stamp

    def _recover(self, actions: list[Action], reason: str) -> list[Action]:
        """The store could not commit a batch (docs/PROTOCOL.md §14): none of it is
        stored, so none of it may be told. Every reply in ``actions`` becomes 503 (same
        request id), every event and push is dropped, password jobs still running are
        answered 503, and the core, whose memory ran ahead of the store, is rebuilt from
        the store with the live sessions whose rows are stored. Returns the replies."""
        assert self.core is not None
        self.failed_commits += 1
        log.error("storage failed, a batch of %d actions was not committed (%s); every "
                  "request in it is answered 503 and the state is reloaded from the store",
                  len(actions), reason)
        text = f"not stored, retry: {reason}"
        replies: list[Action] = [
            ToPeer(a.routing_id, encode_reply(a.frames[1], Error(
                status=int(Status.UNAVAILABLE), reason=text)))
            for a in actions if isinstance(a, ToPeer) and len(a.frames) > 1 and a.frames[1]]
        old = self.core
        replies += old.abandon_jobs(text)
        try:
            core = BrokerCore(self.store, self.config, old.pub_endpoint, wall_ms())
        except StorageError as exc:  # the store cannot even be read: keep serving as was
            log.critical("cannot reload the state from the store (%s); the broker goes on "
                         "with its memory, which may be ahead of the store", exc.reason)
            return replies
        core.adopt(old, time.monotonic())
        self.core = core
        if self.cluster is not None:
            self.cluster.attach(core)
        return replies

    def _execute(self, actions: list[Action]) -> None:
        assert self._router is not None and self.publisher is not None
        publish, router = self.publisher.publish, self._router
        for action in actions:
            # Frame by frame with plain int flags: send_multipart builds an enum flag per
            # frame, a measurable cost per message (docs/PERFORMANCE.md).
            if isinstance(action, ToTopic):
                publish(action.frames)
            elif isinstance(action, ToPeer):
                try:
                    # ROUTER_MANDATORY: a peer gone or full fails on the routing id,
                    # before any frame of the message is queued.
                    router.send(action.routing_id, _MORE)
                    *head, last = action.frames
                    for frame in head:
                        router.send(frame, _MORE)
                    router.send(last, _LAST)
                    if self.ledger is not None:
                        fd = self.ledger.queued(action.routing_id,
                                                sum(map(len, action.frames)))
                        if fd is not None:
                            self._recheck_unread(self.ledger, fd)
                except zmq.Again:
                    self._log_dropped(f"to {action.routing_id.hex()}", time.monotonic())
                    self._unread.add(action.routing_id)
                except zmq.ZMQError as exc:
                    if exc.errno != zmq.EHOSTUNREACH:
                        raise
                    log.debug("dropped a reply to %s: peer gone", action.routing_id.hex())
                    self._remember_gone(action.routing_id)
            elif isinstance(action, Offload):
                future = self._pool.submit(action.work)
                future.add_done_callback(functools.partial(self._job_done, action.job_id))

    def _remember_gone(self, routing_id: bytes) -> None:
        """Remember a peer whose connection is gone (GONE_PEERS_KEPT, oldest forgotten
        first), when libzmq made up its routing id."""
        if routing_id[:1] != b"\x00" or routing_id in self._gone:
            return
        gone = self._gone
        gone[routing_id] = None
        if len(gone) > GONE_PEERS_KEPT:
            del gone[next(iter(gone))]


class BrokerThread:
    """Run a Broker in a background thread (tests, the in-process harness).

    ``with BrokerThread(config, store, context) as broker:`` binds, starts the loop, and on
    exit stops it and closes everything; raises if the loop does not stop within 5 s.
    """

    def __init__(self, config: BrokerConfig, store: GroupStore,
                 context: zmq.Context[Any] | None = None) -> None:
        self.broker = Broker(config, store, context)
        self._thread = threading.Thread(target=self._run, name="zchat-broker", daemon=True)
        self.error: BaseException | None = None

    def _run(self) -> None:
        try:
            self.broker.run()
        except BaseException as exc:  # reported to the test on exit
            self.error = exc
            log.exception("broker loop died")

    def __enter__(self) -> Broker:
        """Bind and start the loop's thread. A failed bind (BindError …) closes what was
        made — the ZAP handler's and the connection guard's threads included — before it
        propagates: ``__exit__`` does not run after a failed ``__enter__``."""
        try:
            self.broker.bind()
        except BaseException:
            self.broker.close()
            raise
        self._thread.start()
        if not self.broker.ready.wait(5):
            self.__exit__(None, None, None)
            raise RuntimeError("broker did not start within 5 s")
        return self.broker

    def __exit__(self, *exc: object) -> None:
        self.broker.stop()
        self._thread.join(5)
        alive = self._thread.is_alive()
        if not alive:
            self.broker.close()
        if alive:
            raise RuntimeError("broker loop did not stop within 5 s")
        if self.error is not None:
            raise RuntimeError("broker loop died") from self.error
