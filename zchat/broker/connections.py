"""Connection limits: per peer address and in total (docs/PROTOCOL.md §15.3).

Every tcp or ipc connection costs the broker a file descriptor and some libzmq memory
before it sends a byte, and libzmq has no limit of its own: a tester's 20,400 idle
connections from many loopback addresses took every descriptor (``ulimit -n``), after
which libzmq's listener spun on EMFILE (93 % CPU) and no new client got in.

Two parts:

- ``ConnectionTable`` (pure): which connections are held, from which address; decides
  whether a new one is admitted. Limits, in order: ``max_total`` in all;
  ``max_per_address`` from one address; and a **reserve**: the last ``reserve`` places
  of the total go only to addresses holding fewer than RESERVE_PER_ADDRESS connections
  (a client with its DEALER and SUB and a reconnect under way), so that a few addresses
  that filled their share cannot take the last places from newcomers.
- ``ConnectionGuard`` (I/O): a thread reading libzmq socket monitors
  (``zmq_socket_monitor``) of the broker's tcp/ipc sockets. ``ZMQ_EVENT_ACCEPTED``
  carries the new connection's descriptor, whose peer address ``getpeername`` gives;
  ``ZMQ_EVENT_DISCONNECTED`` the descriptor of one that ended, whichever side ended it
  (peer gone, handshake failed or timed out, ZAP refusal, our refusal). A connection
  over a limit is refused by ``shutdown(fd, SHUT_RDWR)``: libzmq then reads end-of-file,
  closes it and reports DISCONNECTED like any other. The descriptor stays libzmq's: we
  never close it.

The thread also samples the kernel's byte counters (TCP_INFO) of the ROUTER's tcp
connections for the broker's loop (every second, and every 10 ms those receiving fast,
new or near a limit: zchat.broker.conntrack.FAST_CHECK_EVERY_S), which bounds the bytes each connection
holds (zchat.broker.conntrack, docs/PROTOCOL.md §15.2): an unfinished message is cut here like
an over-long one (``cut`` with its address barred), a peer that does not read is reset.

Why a monitor and not the ZAP handler: ZAP sees a connection only once its peer has
spoken ZMTP and started a CURVE handshake; an idle TCP connection never does, nor does
any connection to a plain broker (``encryption = "none"``) or to the key service. The
monitor sees every accepted connection and every end of one, on plain and CURVE sockets
alike. inproc connections use no descriptor and report no such events: they are not
counted.

Known limits: a descriptor is a small integer that the kernel reuses as soon as libzmq
closes it. Events of one socket arrive in order (its DISCONNECTED before the reuse's
ACCEPTED), so the counts stay right; but when the monitor thread runs behind, the
``getpeername`` of an ACCEPTED may already see a later connection on a reused
descriptor, so that one may be counted to (and refused for) the wrong address. The
descriptor must be a socket (anything else is skipped), and libzmq holds it until its
own close, so no file of the broker can ever be shut by it. Between libzmq's accept and
our refusal a refused connection holds a descriptor for a moment: FD_HEADROOM covers it.
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import logging
import os
import queue
import resource
import socket
import struct
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from zchat.broker.conntrack import (
    CHECK_EVERY_S,
    FAST_CHECK_EVERY_S,
    MAX_WATCHED,
    MIN_SWEEP_S,
    RETAINED_TRIM_BYTES,
    RETAINED_TRIM_EVERY_S,
    RSS_CHECK_EVERY_S,
    TRIM_AFTER_BYTES,
    TRIM_DELAY_S,
    TRIM_EVERY_S,
    TRIM_LOG_BYTES,
    WATCH_FRACTION,
    Sample,
    can_trim,
    malloc_trim,
    peer_name,
    supported,
    tcp_counters,
)
from zchat.ratelimit import address_key

#: Numbers for this process's inproc endpoints: unique for its life (``id(self)`` is
#: reused once an object is freed, before libzmq has let go of its socket's endpoint:
#: "Address already in use" in a test that restarted a broker).
_ENDPOINT_NUMBERS = itertools.count()

log = logging.getLogger("zchat.broker")

#: Descriptors the broker needs beyond its connections: its database (3 files), lock,
#: log, pipes, libzmq's mailboxes and epoll (an idle broker holds about 30), and
#: connections accepted but not yet refused by the guard during a storm.
FD_HEADROOM = 128
#: Share of ``max_connections`` kept as the reserve (see ConnectionTable), in percent.
RESERVE_PERCENT = 10
#: An address holding fewer connections than this may still take a place in the
#: reserve: one client's DEALER and SUB, and the pair of a reconnect under way.
RESERVE_PER_ADDRESS = 4
#: Seconds between two log lines about refused connections (an attacker can cause them
#: at will; zchat.ratelimit.LOG_EVERY_S).
REFUSED_LOG_EVERY_S = 10.0

_EVENTS = zmq.EVENT_ACCEPTED | zmq.EVENT_DISCONNECTED
#: An address whose peer sent the ROUTER one message of more than LONG_MESSAGE_FRAMES
#: frames has that connection cut and no new one admitted for LONG_MESSAGE_BAR_S seconds
#: (docs/PROTOCOL.md §9, §15.3): libzmq takes such a message whole before the broker sees
#: it, and reading it costs the loop ~1 µs a frame, so it cannot be refused cheaply; it
#: can be kept from being repeated. No client of ours sends more than 4 frames.
LONG_MESSAGE_FRAMES = 1_000
LONG_MESSAGE_BAR_S = 60.0
#: Addresses barred at once, at most (the longest-barred is forgotten first beyond it).
MAX_BARRED = 65_536
_EVENT_HEAD = struct.Struct("=Hi")  # libzmq's monitor frame: event (uint16), value (int32)


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits a ConnectionTable applies; ``reserve`` < ``max_total``."""

    max_total: int
    max_per_address: int
    reserve: int

    @classmethod
    def from_settings(cls, max_connections: int, per_address: int) -> Limits:
        return cls(max_connections, per_address, max_connections * RESERVE_PERCENT // 100)


class ConnectionTable:
    """The connections held, by a key the caller chooses (a socket's index and the
    descriptor), each with its address key ("" when it has none: ipc; counted in the
    total only). Pure; one thread uses it."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._held: dict[Any, str] = {}
        self._per_address: dict[str, int] = {}
        #: Address key -> monotonic s until which it is refused (``bar``). Written by the
        #: broker's loop, read (``get`` only) by the guard's thread: safe under the GIL.
        self._barred: dict[str, float] = {}
        self.refused = 0

    def bar(self, address: str, until_s: float, now_s: float) -> None:
        """Admit no connection from ``address`` before ``until_s`` (monotonic s). At most
        MAX_BARRED addresses: lapsed bars go first, then the oldest."""
        barred = self._barred
        if len(barred) >= MAX_BARRED:
            for old in [a for a, until in barred.items() if until <= now_s]:
                del barred[old]
            while len(barred) >= MAX_BARRED:
                del barred[next(iter(barred))]
        barred.pop(address, None)
        barred[address] = until_s

    def barred(self, address: str, now_s: float) -> bool:
        until = self._barred.get(address)
        return until is not None and now_s < until

    @property
    def total(self) -> int:
        return len(self._held)

    def held_by(self, address: str) -> int:
        return self._per_address.get(address, 0)

    def admit(self, conn: Any, address: str, now_s: float = 0.0) -> str | None:
        """Record connection ``conn`` from ``address`` and return None, or return why it
        is refused (and record nothing). A ``conn`` already held (its end was missed) is
        counted again under its new address. ``now_s`` (monotonic) is for bars."""
        self.closed(conn)
        limits, total = self.limits, len(self._held)
        held = self._per_address.get(address, 0) if address else 0
        why = None
        if address and self.barred(address, now_s):
            why = (f"{address} sent a message of over {LONG_MESSAGE_FRAMES:,} frames or "
                   f"one it did not finish; refused for {LONG_MESSAGE_BAR_S:g} s")
        elif total >= limits.max_total:
            why = f"the broker holds {total} connections (max_connections)"
        elif address and held >= limits.max_per_address:
            why = f"{address} holds {held} connections (max_connections_per_address)"
        elif total >= limits.max_total - limits.reserve and held >= RESERVE_PER_ADDRESS:
            why = (f"{address or 'a local peer'} holds {held} connections and only the "
                   f"reserve of {limits.reserve} is left")
        if why is not None:
            self.refused += 1
            return why
        self._held[conn] = address
        if address:
            self._per_address[address] = held + 1
        return None

    def closed(self, conn: Any) -> None:
        """Connection ``conn`` ended (nothing happens for one not held)."""
        address = self._held.pop(conn, None)
        if address:
            left = self._per_address[address] - 1
            if left:
                self._per_address[address] = left
            else:
                del self._per_address[address]


#: Sockets closed by ``close_monitored``: ConnectionGuard.stop() logs an error for a
#: watched socket closed otherwise (the rule has been broken: see there).
_MONITOR_STOPPED: weakref.WeakSet[zmq.Socket[Any]] = weakref.WeakSet()


def close_monitored(sock: zmq.Socket[Any], linger_ms: int) -> None:
    """Stop ``sock``'s monitor (``zmq_socket_monitor(NULL)``), then close ``sock`` with
    ``linger_ms``. Every socket ConnectionGuard watches is closed through this, by the
    thread that owns it, before the guard stops.

    The order is the rule: libzmq sends monitor events from the context's I/O thread
    with a *blocking* send, and a socket lives on after ``close()`` (its listener may
    still accept, its lingering connections still end). Once the guard has closed its
    end of the event pipe, one more event blocks that I/O thread for ever, and every tcp
    connection of the context with it: a stopped in-process broker left its process
    unable to reach any broker (tests/test_broker_stop_leaves_context_working.py)."""
    with contextlib.suppress(zmq.ZMQError):
        sock.disable_monitor()
    _MONITOR_STOPPED.add(sock)
    sock.close(linger=linger_ms)


def raise_fd_limit(needed: int) -> int:
    """Raise the process's soft RLIMIT_NOFILE toward ``needed``, as far as the hard limit
    allows (never lowers it). Returns the soft limit now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        target = needed if hard == resource.RLIM_INFINITY else min(needed, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    return needed if soft == resource.RLIM_INFINITY else soft


def effective_limits(max_connections: int, per_address: int) -> Limits:
    """The limits to apply: the settings, with the total lowered to what the process's
    descriptors carry (``ulimit -n`` minus FD_HEADROOM), with a WARNING, when the hard
    limit is too low to raise the soft one that far."""
    needed = max_connections + FD_HEADROOM
    soft = raise_fd_limit(needed)
    total = max_connections
    if soft < needed:
        total = max(1, soft - FD_HEADROOM)
        log.warning("ulimit -n is %d, below the %d that max_connections = %d needs (it + "
                    "%d): the broker holds at most %d connections; raise the hard limit "
                    "(e.g. LimitNOFILE=%d in its systemd unit) or lower max_connections",
                    soft, needed, max_connections, FD_HEADROOM, total, needed)
    return Limits.from_settings(total, min(per_address, total))


def _peer_address(fd: int) -> str | None:
    """The address key (zchat.ratelimit.address_key) of the peer of descriptor ``fd``, ""
    for a socket without one (ipc), None when ``fd`` is no longer a connected socket.
    Borrows the descriptor: never closes it."""
    peer = peer_name(fd)
    if peer is None:
        return None
    if isinstance(peer, tuple):
        return address_key(str(peer[0]), b"")
    return ""


_LINGER_RESET = struct.pack("ii", 1, 0)
_PAGE_BYTES = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096


def _open_statm() -> int | None:
    """A descriptor of /proc/self/statm (the caller closes it), None where there is none."""
    try:
        return os.open("/proc/self/statm", os.O_RDONLY)
    except OSError:
        return None


def _resident(statm: int | None) -> int:
    """The process's resident size in bytes from descriptor ``statm`` (0 without one)."""
    if statm is None:
        return 0
    try:
        return int(os.pread(statm, 128, 0).split()[1]) * _PAGE_BYTES
    except (OSError, IndexError, ValueError):
        return 0


def _refuse(fd: int, reset: bool = False) -> None:
    """Make libzmq close connection ``fd``: shut both directions; libzmq reads
    end-of-file, closes the descriptor and reports DISCONNECTED. With ``reset``, that
    close resets the connection (SO_LINGER 0) and the kernel drops what it still holds
    for it at once: a peer that does not read would otherwise keep the bytes queued for
    it, and our end, in the kernel until it times out."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return
    try:
        if reset:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        sock.shutdown(socket.SHUT_RDWR)
    except OSError as exc:
        if exc.errno not in (errno.ENOTCONN, errno.EBADF, errno.ENOTSOCK):
            raise
    finally:
        sock.detach()


class ConnectionGuard:
    """A thread counting the connections of the broker's tcp/ipc sockets (libzmq socket
    monitors) and refusing those over ``limits`` (see the module docstring).

    ``watch(sock)`` before ``start()`` for each socket (in the thread that owns it);
    ``stop()`` once each is closed with ``close_monitored`` (never a plain ``close()``:
    see there), or before they are closed, from the thread that owns them.

    With ``watch(sock, track_bytes=True)`` (the ROUTER) and ``track_bytes(notify)``, the
    thread also samples the kernel's byte counters of each of that socket's tcp
    connections every CHECK_EVERY_S, the watched ones every FAST_CHECK_EVERY_S
    (zchat.broker.conntrack), and puts, in the order its monitor
    reported them, ``("closed", fd)`` for each end of such a connection and ``("sample",
    [Sample, ...])`` on ``samples``, calling ``notify()`` (from this thread) after each
    sample: the broker's loop judges them. It also calls malloc_trim when the loop asks
    (``freed``)."""

    def __init__(self, context: zmq.Context[Any], limits: Limits) -> None:
        self.context = context
        self.table = ConnectionTable(limits)
        self._watched: list[zmq.Socket[Any]] = []
        self._monitors: list[zmq.Socket[Any]] = []
        self._wake: tuple[zmq.Socket[Any], zmq.Socket[Any]] | None = None
        self._thread = threading.Thread(target=self._run, name="zchat-connections",
                                        daemon=True)
        self._next_log_s = 0.0
        self._unlogged = 0
        #: Indices (in watch order) of the sockets whose connections' bytes are tracked.
        self._tracked: set[int] = set()
        self._subscriber_socks: set[int] = set()
        #: When each tracked connection was accepted (monotonic s); this thread's alone.
        self._since: dict[tuple[int, int], float] = {}
        self._notify: Callable[[], None] | None = None
        #: ("closed", fd) and ("sample", [Sample, ...]) for the loop (see the class).
        self.samples: queue.SimpleQueue[tuple[str, Any]] = queue.SimpleQueue()
        #: Bytes a second received that make a connection watched (sampled every
        #: FAST_CHECK_EVERY_S), and the growth of the process's resident size that makes
        #: the guard sweep at once: the smallest limit / WATCH_FRACTION.
        self._watch_bytes = 0
        #: The watched connections; each tracked one's last sample (monotonic s, bytes
        #: received). This thread's alone.
        self._watched_conns: set[tuple[int, int]] = set()
        self._last: dict[tuple[int, int], tuple[float, int]] = {}
        #: Descriptors the loop judged near a limit (``watch_closely``), for this thread.
        self._near: queue.SimpleQueue[list[int]] = queue.SimpleQueue()
        #: Monotonic s after which this thread calls malloc_trim (``freed``; written by the
        #: loop, read here: floats and ints, safe under the GIL); 0: none asked. When it
        #: was first asked, and the bytes of the cuts since the last trim.
        self._trim_at = 0.0
        self._trim_asked = 0.0
        self._freed = 0
        self._trimmed_s = -TRIM_EVERY_S
        #: The lowest resident size (bytes) at start or after a trim: the resident size
        #: past it by RETAINED_TRIM_BYTES is trimmed every RETAINED_TRIM_EVERY_S
        #: (``_trim_retained``); 0 until this thread has read it.
        self._floor = 0

    def track_bytes(self, notify: Callable[[], None], smallest_limit: int) -> bool:
        """Sample the tracked sockets' connections (before ``start()``); False, with one
        INFO line, where the kernel does not count their bytes (not Linux >= 4.1).
        ``smallest_limit`` (bytes, > 0): the smallest byte limit the loop applies, which
        sets what is watched closely (zchat.broker.conntrack.FAST_CHECK_EVERY_S)."""
        why = supported()
        if why is not None:
            log.info("bytes per connection are not checked: %s (docs/PROTOCOL.md §15.2)",
                     why)
            return False
        self._notify = notify
        self._watch_bytes = max(1, smallest_limit // WATCH_FRACTION)
        return True

    def watch_closely(self, fds: list[int]) -> None:
        """From the loop: sample these tracked connections (descriptors) every
        FAST_CHECK_EVERY_S until a sample of theirs is judged again."""
        if fds:
            self._near.put(fds)

    def freed(self, nbytes: int) -> None:
        """From the loop: a connection holding ``nbytes`` was cut. Once the cuts since the
        last malloc_trim held TRIM_AFTER_BYTES, one is asked TRIM_DELAY_S after the latest
        cut (libzmq's I/O thread frees a connection's buffers once it has closed it), and
        each further cut before it postpones it so that a burst of cuts is trimmed once,
        after its last; never more than TRIM_EVERY_S after the first ask. (Asked at the
        first crossing only, the cuts that followed within a burst were never trimmed:
        a broker kept 53 MiB of them.)"""
        now = time.monotonic()
        self._freed += nbytes
        if not self._trim_at and self._freed < TRIM_AFTER_BYTES:
            return
        if not self._trim_at:
            self._trim_asked = now
        self._trim_at = min(now + TRIM_DELAY_S, self._trim_asked + TRIM_EVERY_S)

    def watch(self, sock: zmq.Socket[Any], track_bytes: bool = False,
              subscribers: bool = False) -> int:
        """Monitor ``sock``'s accepted and ended connections; with ``track_bytes``, sample
        their byte counters too (see the class), marked as ``subscribers`` (the PUB's:
        zchat.broker.conntrack.SUBSCRIBER_ALLOWANCE). Returns the socket's index (for
        ``cut_address``)."""
        if track_bytes:
            self._tracked.add(len(self._monitors))
        if subscribers:
            self._subscriber_socks.add(len(self._monitors))
        endpoint = f"inproc://zchat-connections-{next(_ENDPOINT_NUMBERS)}-{len(self._monitors)}"
        sock.monitor(endpoint, _EVENTS)
        monitor = self.context.socket(zmq.PAIR)
        # 0: no high-water mark on the event pipe. libzmq drops monitor events at a full
        # pipe, and a lost DISCONNECTED would hold a place for ever.
        monitor.setsockopt(zmq.RCVHWM, 0)
        monitor.setsockopt(zmq.LINGER, 0)
        monitor.connect(endpoint)
        self._watched.append(sock)
        self._monitors.append(monitor)
        return len(self._monitors) - 1

    def start(self) -> None:
        inbox, outbox = self.context.socket(zmq.PAIR), self.context.socket(zmq.PAIR)
        endpoint = f"inproc://zchat-connections-stop-{next(_ENDPOINT_NUMBERS)}"
        inbox.bind(endpoint)
        outbox.connect(endpoint)
        self._wake = (inbox, outbox)
        self._thread.start()

    def _run(self) -> None:
        assert self._wake is not None
        stop = self._wake[0]
        poller = zmq.Poller()
        poller.register(stop, zmq.POLLIN)
        for monitor in self._monitors:
            poller.register(monitor, zmq.POLLIN)
        index = {monitor: i for i, monitor in enumerate(self._monitors)}
        sampling = self._notify is not None and bool(self._tracked)
        statm = _open_statm() if sampling or can_trim() else None
        try:
            now = time.monotonic()
            rss_base = self._floor = _resident(statm)
            next_sweep_s, ticked_s, swept_s = now + CHECK_EVERY_S, now, now
            while True:
                timeout_ms = None
                if sampling:
                    # every FAST_CHECK_EVERY_S while any connection is watched, else
                    # every RSS_CHECK_EVERY_S (a wake-up costs ~0.1 ms of CPU)
                    next_tick_s = ticked_s + (FAST_CHECK_EVERY_S if self._watched_conns
                                              else RSS_CHECK_EVERY_S)
                    timeout_ms = max(0, int((next_tick_s - time.monotonic()) * 1000)) + 1
                elif statm is not None:
                    next_tick_s = ticked_s + RETAINED_TRIM_EVERY_S
                    timeout_ms = max(0, int((next_tick_s - time.monotonic()) * 1000)) + 1
                events = dict(poller.poll(timeout_ms))
                if stop in events:
                    return
                for monitor in events:
                    if monitor is not stop:
                        self._drain(index[monitor], monitor)
                now = time.monotonic()
                if not sampling:
                    if statm is not None and now >= ticked_s + RETAINED_TRIM_EVERY_S:
                        ticked_s = now
                        self._trim_retained(_resident(statm), now)
                    continue
                if now < ticked_s + (
                        FAST_CHECK_EVERY_S if self._watched_conns or not self._near.empty()
                        else RSS_CHECK_EVERY_S):
                    continue
                ticked_s = now
                rss = _resident(statm)
                rss_base = min(rss_base, rss)
                if now >= next_sweep_s or (rss - rss_base > self._watch_bytes
                                           and now - swept_s >= MIN_SWEEP_S):
                    self._sample(None, now)
                    next_sweep_s, swept_s, rss_base = now + CHECK_EVERY_S, now, rss
                else:
                    self._take_near()
                    if self._watched_conns:
                        self._sample(self._watched_conns, now)
                if self._trim_at and now >= self._trim_at:
                    self._trim(now)
                else:
                    self._trim_retained(rss, now)
        finally:
            if statm is not None:
                os.close(statm)

    def _take_near(self) -> None:
        tracked, held, watched = self._tracked, self.table._held, self._watched_conns
        while not self._near.empty():
            for fd in self._near.get_nowait():
                for which in tracked:
                    if (which, fd) in held and len(watched) < MAX_WATCHED:
                        watched.add((which, fd))

    def _sample(self, which_conns: set[tuple[int, int]] | None, now: float) -> None:
        """Read the kernel's counters of every tracked tcp connection (``which_conns``
        None: the sweep) or of the watched ones (~2 µs each) and hand them to the loop;
        watch those that received at 1 / WATCH_FRACTION of the smallest limit a second
        or more since their last sample, or are in their first CHECK_EVERY_S."""
        assert self._notify is not None
        tracked, since, last, held = self._tracked, self._since, self._last, self.table._held
        watched, rate = self._watched_conns, self._watch_bytes / CHECK_EVERY_S
        conns = list(held.items()) if which_conns is None else \
            [(key, held[key]) for key in list(which_conns) if key in held]
        samples = []
        for key, address in conns:
            if key[0] not in tracked or not address:
                continue
            counters = tcp_counters(key[1])
            if counters is None:
                watched.discard(key)
                continue
            age = now - since.get(key, now)
            before = last.get(key)
            if which_conns is None or before is None or counters[1] != before[1]:
                # a watched connection that received nothing since is judged as before
                samples.append(Sample(key[1], address, age, counters[0], counters[1],
                                      key[0] in self._subscriber_socks, counters[2]))
            last[key] = (now, counters[1])
            fast = age < CHECK_EVERY_S if before is None else \
                counters[1] - before[1] > rate * (now - before[0]) or age < CHECK_EVERY_S
            if not fast:
                watched.discard(key)
            elif len(watched) < MAX_WATCHED:
                watched.add(key)
        if samples or which_conns is None:
            self.samples.put(("sample", samples))
            self._notify()

    def _trim_retained(self, rss: int, now: float) -> None:
        """malloc_trim when the resident size ``rss`` (bytes) stands RETAINED_TRIM_BYTES
        above the lowest it has been after a trim, at most every RETAINED_TRIM_EVERY_S:
        memory freed without a cut (libzmq's queue of a flood's requests, read by the loop
        after their connections had gone; docs/security.md) goes back to the system within
        RETAINED_TRIM_EVERY_S of being freed, instead of staying resident for ever."""
        if rss - self._floor > RETAINED_TRIM_BYTES \
                and now - self._trimmed_s >= RETAINED_TRIM_EVERY_S:
            self._trim(now, retained=True)

    def _trim(self, now: float, retained: bool = False) -> None:
        """malloc_trim, at most every TRIM_EVERY_S after cuts (RETAINED_TRIM_EVERY_S for
        ``retained`` memory), with one INFO line of what it gave back (resident size before
        and after) and how long it took (for ``retained`` memory, only when it gave back
        TRIM_LOG_BYTES or more: such trims recur while the resident size stays high)."""
        if now - self._trimmed_s < (RETAINED_TRIM_EVERY_S if retained else TRIM_EVERY_S):
            return
        self._trimmed_s = now
        if not retained:
            self._trim_at, self._freed = 0.0, 0
        statm = _open_statm()
        try:
            before = _resident(statm)
            started = time.perf_counter()
            done = malloc_trim()
            took = time.perf_counter() - started
            after = _resident(statm)
        finally:
            if statm is not None:
                os.close(statm)
        self._floor = min(self._floor, after) if self._floor else after
        if done is not None and (not retained or before - after >= TRIM_LOG_BYTES):
            log.info("malloc_trim returned %.0f MiB to the system in %.1f ms (resident "
                     "%.0f MiB)", (before - after) / 2**20, took * 1000, after / 2**20)

    def _drain(self, which: int, monitor: zmq.Socket[Any]) -> None:
        table = self.table
        for _ in range(1024):
            try:
                head = monitor.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            while monitor.getsockopt(zmq.RCVMORE):
                monitor.recv()
            event, fd = _EVENT_HEAD.unpack_from(head)
            if event == zmq.EVENT_DISCONNECTED:
                table.closed((which, fd))
                if which in self._tracked:
                    self._since.pop((which, fd), None)
                    self._last.pop((which, fd), None)
                    self._watched_conns.discard((which, fd))
                    self.samples.put(("closed", fd))
            elif event == zmq.EVENT_ACCEPTED:
                address = _peer_address(fd)
                if address is None:  # gone already: its DISCONNECTED follows
                    continue
                now = time.monotonic()
                why = table.admit((which, fd), address, now)
                if why is not None:
                    _refuse(fd)
                    self._log_refused(why)
                elif which in self._tracked:
                    self._since[(which, fd)] = now
                    if len(self._watched_conns) < MAX_WATCHED:
                        self._watched_conns.add((which, fd))  # its first second

    def cut(self, fd: int, address: str, now_s: float, why: str = "",
            bar: bool = True, quiet: bool = False) -> bool:
        """Shut connection ``fd`` from ``address`` (an address key), if ``fd`` still is a
        connection from ``address`` (a descriptor is reused as soon as libzmq closes it),
        and log ``why`` (default: a message of over LONG_MESSAGE_FRAMES frames) unless
        ``quiet`` (the caller logs). With ``bar``, admit no new connection from the address
        for LONG_MESSAGE_BAR_S seconds. From the broker's loop. Returns whether it was
        shut."""
        if bar:
            self.table.bar(address, now_s + LONG_MESSAGE_BAR_S, now_s)
        shut = _peer_address(fd) == address
        if shut:
            _refuse(fd, reset=True)
        if quiet:
            return shut
        why = why or f"a message of over {LONG_MESSAGE_FRAMES:,} frames"
        barred = f"; no new connection from it for {LONG_MESSAGE_BAR_S:g} s" if bar else ""
        log.warning("cut a connection from %s: %s%s", address, why, barred)
        return shut

    def cut_address(self, which: int, address: str, why: str) -> int:
        """Reset every connection of watched socket ``which`` (its index) from ``address``
        (an address key) that still is one, and log ``why`` once; no bar. From the
        broker's loop (the table is copied whole first, under the GIL). Returns how many
        were shut."""
        shut = 0
        for (index, fd), held in list(self.table._held.items()):
            if index == which and held == address and _peer_address(fd) == address:
                _refuse(fd, reset=True)
                shut += 1
        log.warning("cut %d connection(s) from %s: %s", shut, address, why)
        return shut

    def _log_refused(self, why: str) -> None:
        now = time.monotonic()
        if now < self._next_log_s:
            self._unlogged += 1
            return
        more = f" (and {self._unlogged} more in the last {REFUSED_LOG_EVERY_S:g} s)" \
            if self._unlogged else ""
        log.warning("refused a connection: %s%s", why, more)
        self._unlogged = 0
        self._next_log_s = now + REFUSED_LOG_EVERY_S

    def stop(self) -> None:
        """Stop the thread (within 5 s), stop the monitors of sockets still open and close
        the guard's own sockets."""
        if self._wake is not None and self._thread.is_alive():
            self._wake[1].send(b"")
            self._thread.join(5)
        for sock in self._watched:
            if not sock.closed:
                with contextlib.suppress(zmq.ZMQError):
                    sock.disable_monitor()
            elif sock not in _MONITOR_STOPPED:
                log.error("a watched socket was closed with its monitor on: libzmq may block "
                          "its I/O thread on the next event (close it with close_monitored)")
        for sock in (*self._monitors, *(self._wake or ())):
            sock.close(linger=0)
        self._watched, self._monitors, self._wake = [], [], None
