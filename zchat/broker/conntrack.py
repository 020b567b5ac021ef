"""Bytes held per connection of the ROUTER, from the kernel's TCP counters
(docs/PROTOCOL.md §15.2, §15.3; docs/design.md "Bytes per connection").

libzmq bounds what it buffers per peer in **messages** (its high-water marks), never in
bytes, and tells the broker nothing about either direction of a connection:

- **Inbound**, it holds a multipart message until its last frame arrives, with no bound on
  the frame count: a peer that sends 3,400 frames of 120,000 bytes and never the last one
  holds 370 MiB in the broker, which the loop never sees (a tester's 12 connections held
  4.5 GB).
- **Outbound**, it queues up to ``sndhwm`` replies for a peer that does not read, whatever
  their size: 10,000 full HISTORY pages are ~20 GB (a tester's 30 accounts that asked and
  never read grew the broker by 32 MB a second).

The kernel counts both for every TCP connection (``struct tcp_info``, Linux ≥ 4.1):
``tcpi_bytes_received``, the payload bytes that arrived, and ``tcpi_bytes_acked``, the
bytes of ours the peer acknowledged. The loop counts, per descriptor (``ZMQ_SRCFD`` of the
requests it reads), the bytes of complete messages it consumed and the payload bytes of
the replies and pushes it queued. So, per connection:

- **incomplete** ≈ received − consumed − FRAME_ALLOWANCE × frames consumed −
  FIXED_ALLOWANCE − AGE_ALLOWANCE × seconds connected: bytes libzmq holds in messages not
  yet complete (or not yet read by the loop). The allowances cover ZMTP framing, CURVE
  boxes, the handshake and ZMTP heartbeats, so this **under-estimates**.
- **unread** ≈ queued − acked: bytes we queued that the peer has not taken. ``acked``
  counts wire bytes (framing, CURVE boxes, the handshake), at least the payload they
  carry, so this **under-estimates** too, never accusing a peer that reads.

``ByteLedger`` is the pure part (the counts and the verdicts); ``tcp_counters`` reads the
kernel's; ``zchat.broker.connections.ConnectionGuard`` samples every tracked connection once per
CHECK_EVERY_S, and the watched ones every FAST_CHECK_EVERY_S, in its own thread and hands
the samples to the loop, which judges them and acts (zchat.broker); ``malloc_trim`` gives
what cut connections held back to the system.

**Descriptor reuse.** The kernel reuses a descriptor number as soon as libzmq closes it,
so counts kept by descriptor must not pass from one connection to the next. The guard
forwards every end of a tracked connection (``closed``) and its samples through one queue,
in the order its monitor reported them, so the loop forgets a connection's counts before
it judges any sample of a later connection on that descriptor. A connection is also known
by its routing id (one per ROUTER connection, never reused): a request on a known
descriptor with another routing id starts new counts, and requests still read with the
routing id of an ended connection count for nothing. What remains, when the guard's thread
runs behind the loop: a new connection's first requests may be counted and then forgotten
with the old connection's end (its incomplete bytes are then over-estimated by those few
requests, far below any limit; its unread bytes under-estimated).

Not Linux, or a kernel without those fields (``tcp_info`` shorter than 136 bytes): logged
once, nothing is checked.
"""

from __future__ import annotations

import ctypes
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple, cast

#: Offsets in Linux's struct tcp_info: tcpi_bytes_acked (u64) at 120, tcpi_bytes_received
#: (u64) at 128 (both since Linux 4.1); the struct is then at least 136 bytes.
#: tcpi_data_segs_in (u32) at 152 (since Linux 4.6; the struct is then at least 160
#: bytes): the segments that carried data (``segs_in`` counts bare ACKs too).
_ACKED_RECEIVED = struct.Struct("=QQ")
_ACKED_OFFSET = 120
TCP_INFO_MIN_BYTES = 136
_DATA_SEGS_IN = struct.Struct("=I")
_DATA_SEGS_IN_OFFSET = 152
TCP_INFO_SEGS_BYTES = 160
_TCP_INFO = getattr(socket, "TCP_INFO", None)

#: Seconds between two samples of every tracked connection (the sweep).
CHECK_EVERY_S = 1.0
#: Seconds between two samples of a **watched** connection: one in its first
#: CHECK_EVERY_S, one whose last sample showed it receiving at WATCH_FRACTION of the
#: smallest limit a second or more, one the loop judged over WATCH_FRACTION of a limit.
#: On loopback one connection sends hundreds of MB a second: sampled once a second, one
#: got 225 MiB into an 8 MiB limit; sampled every 50 ms, it gets the limit plus ~50 ms of
#: its traffic (plus one sweep's worth for one idle until then; see ``RSS_SWEEP_BYTES``).
FAST_CHECK_EVERY_S = 0.01
WATCH_FRACTION = 4
#: Watched connections sampled at most per fast sample (~2 µs each: 2 ms): what one check
#: costs is bounded; the sweep still reads every connection.
MAX_WATCHED = 1024
#: The process's resident size, read every RSS_CHECK_EVERY_S (FAST_CHECK_EVERY_S while
#: a connection is watched; one pread of /proc/self/statm, ~1.5 µs): grown by more than
#: the smallest limit / WATCH_FRACTION since the last sweep, the guard sweeps at once, at
#: most every MIN_SWEEP_S; so a connection idle at the last sweep that then sends fast is
#: sampled within RSS_CHECK_EVERY_S (or MIN_SWEEP_S after the last sweep) too.
RSS_CHECK_EVERY_S = 0.05
MIN_SWEEP_S = 0.2
#: After the loop cut connections that held this much in all, glibc is asked to give the
#: freed memory back to the system (``malloc_trim``): without it the broker keeps its
#: peak resident size for ever (a tester saw 1.2 GB kept while idle). Not before
#: TRIM_DELAY_S after the cut (libzmq's I/O thread frees a connection's buffers once it
#: has closed it), at most every TRIM_EVERY_S, in the guard's thread (it takes
#: milliseconds: docs/design.md "Bytes per connection").
TRIM_AFTER_BYTES = 64 * 1024 * 1024
TRIM_DELAY_S = 0.3
TRIM_EVERY_S = 5.0
#: Memory freed without a cut is given back too: once the resident size stands more than
#: RETAINED_TRIM_BYTES above the lowest it has been after a trim (or at start), the
#: guard's thread calls malloc_trim every RETAINED_TRIM_EVERY_S for as long as it does.
#: A tester's fuzzers (random junk from thousands of short-lived CURVE connections)
#: grew a broker from 45 MB to 565 MB: libzmq's queue of their requests, read and
#: freed by the loop seconds later, all of which glibc then kept (malloc_trim gave 408
#: of a broker's 452 MB back; docs/security.md "Junk from short-lived connections"). A
#: trim that finds nothing to give back takes 0.2-1.3 ms (measured with 190 MB in use).
RETAINED_TRIM_BYTES = 16 * 1024 * 1024
RETAINED_TRIM_EVERY_S = 2.0
#: A trim is logged (INFO) when it gave back at least this much.
TRIM_LOG_BYTES = 8 * 1024 * 1024
#: Bytes of framing allowed per frame consumed: a ZMTP frame header (up to 9) and, over
#: CURVE, the MESSAGE command around it (its name, flags, nonce and box: ~33 more).
FRAME_ALLOWANCE = 64
#: Bytes allowed per connection whatever it sent: the ZMTP greeting and handshake (CURVE's
#: is under 1 KiB), and a request or two in flight.
FIXED_ALLOWANCE = 64 * 1024
#: Bytes allowed per second connected: ZMTP heartbeats of a peer that sets them (a PING
#: command, under 64 bytes over CURVE, once a second at most).
AGE_ALLOWANCE = 64
#: Bytes a subscriber's PUB connection may send besides AGE_ALLOWANCE a second: it sends
#: only SUBSCRIBEs, which libzmq takes in itself (the broker sees no count of them), so
#: all it sent counts as held past this: an account's 1,000 rooms are ~170 KB of
#: SUBSCRIBEs over CURVE. Past it by SUBSCRIBER_MAX_HELD the connection is cut (when
#: ``max_incomplete_bytes`` is on), and what it holds past it counts in the broker-wide
#: ``max_held_bytes``. A tester's raw CURVE subscriber sent frames that never end and
#: grew a broker to 6 GB; 40 connections staying each under 8 MiB of empty frames (~35
#: bytes each over CURVE, ~150 in libzmq) held 1.5 GB.
SUBSCRIBER_ALLOWANCE = 256 * 1024
SUBSCRIBER_MAX_HELD = 64 * 1024
#: Bytes a second a subscriber's connection may send on top, for as long as it lasts: a
#: JOIN and PART of a room of the longest name are ~350 bytes of SUBSCRIBE and
#: UNSUBSCRIBE over CURVE, so a client may make one every 1.4 s for ever (at 64 bytes a
#: second, a tester's honest client churning rooms would have been cut after hours).
SUBSCRIBER_AGE_ALLOWANCE = 256
#: What libzmq keeps per TCP segment that carried a frame of a message not yet finished:
#: its receive buffer (8 KiB, ``ZMQ_IN_BATCH_SIZE``, a draft option pyzmq's libzmq does
#: not let us set) stays allocated while a frame read into it is held. A tester's 40
#: CURVE subscribers sending one empty frame per segment, 210 bytes a second (under
#: SUBSCRIBER_AGE_ALLOWANCE), grew a broker from 62 to 177 MB in 60 s, without end.
SEGMENT_COST = 8 * 1024
#: Data-carrying segments a subscriber's connection may send for nothing: the ZMTP
#: greeting (libzmq sends it in two parts), the CURVE HELLO and INITIATE (or NULL's
#: READY), and the SUBSCRIBEs of a login (queued while the handshake runs: one segment,
#: a few for an account in a thousand rooms). Past it, every segment counts SEGMENT_COST
#: in ``max_held_bytes``: an honest SUB never leaves a message unfinished, so it costs
#: nothing, but the broker cannot tell.
SUBSCRIBER_FREE_SEGMENTS = 16
#: Segments past SUBSCRIBER_FREE_SEGMENTS after which a subscriber's connection is reset
#: (when ``max_incomplete_bytes`` is on), so that it holds at most ~2 MiB. No age
#: allowance: any allowance a second lets a slow drip grow without end. An honest client
#: sends one segment per JOIN or PART made after its login; one that makes hundreds has
#: its SUB reset, which libzmq reconnects at once (the client repairs the gap from
#: history: docs/PROTOCOL.md §14).
SUBSCRIBER_MAX_SEGMENTS = 256
#: A subscriber's wire bytes past SUBSCRIBER_FREE_BYTES count this many times in
#: ``max_held_bytes``: libzmq keeps an empty frame of an unfinished message (2 to 35
#: bytes on the wire) in ~150 bytes; a tester's 400 CURVE connections, each just under
#: its own bound, held 580 MB.
SUBSCRIBER_BYTE_COST = 5
SUBSCRIBER_FREE_BYTES = 16 * 1024
#: A ROUTER connection's segments are explained by what the loop consumed: a frame, or
#: SEGMENT_BYTES of a large one (a segment carries at least this much of a large frame
#: on any link with an MSS over 1,400 bytes). Segments that arrive while no message is
#: finished count SEGMENT_COST each in the connection's unfinished bytes (checked against
#: ``max_incomplete_bytes``, and in ``max_held_bytes``), past ROUTER_FREE_SEGMENTS (the
#: handshake; ZMTP heartbeats). A tester's one CURVE connection, with no account, sending
#: empty frames of a message it never finished, one per segment (7.8 MiB on the wire),
#: grew a broker from 44 MB to 1.4 GB in 12 s; twelve took it past 3 GB in 18 s.
SEGMENT_BYTES = 1400
ROUTER_FREE_SEGMENTS = 16
#: A ROUTER connection's wire bytes not finished as messages count this many times in
#: what it holds: libzmq keeps an empty frame of an unfinished message (35 bytes over
#: CURVE) in ~150 bytes; a tester's connection held 270 MB for 62 MiB on the wire. A
#: large frame costs about its size, so its bytes count high: ``max_incomplete_bytes``
#: (8 MiB) is then ~1.6 MiB on the wire, still over twice the largest request.
UNFINISHED_BYTE_COST = 5


def tcp_counters(fd: int) -> tuple[int, int, int] | None:
    """(bytes acked by the peer, bytes received, data-carrying segments received) of TCP
    connection ``fd`` (a descriptor libzmq owns: borrowed, never closed), or None when
    ``fd`` is not a TCP socket any more or the kernel does not report the bytes (see
    ``supported``); the segments are 0 on a kernel older than 4.6."""
    if _TCP_INFO is None:
        return None
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 512)
    except OSError:
        return None
    finally:
        sock.detach()
    if len(info) < TCP_INFO_MIN_BYTES:
        return None
    acked, received = _ACKED_RECEIVED.unpack_from(info, _ACKED_OFFSET)
    segments = _DATA_SEGS_IN.unpack_from(info, _DATA_SEGS_IN_OFFSET)[0] \
        if len(info) >= TCP_INFO_SEGS_BYTES else 0
    return acked, received, segments


def peer_name(fd: int) -> object:
    """The peer's address of the TCP connection on ``fd`` now ((host, port); a
    descriptor libzmq owns: borrowed, never closed), or None when it is none."""
    try:
        sock = socket.socket(fileno=fd)
    except OSError:
        return None
    try:
        return sock.getpeername()
    except OSError:
        return None
    finally:
        sock.detach()


def _load_malloc_trim() -> Callable[[int], int] | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        trim = libc.malloc_trim
    except (OSError, AttributeError):  # not glibc
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return cast("Callable[[int], int]", trim)


_MALLOC_TRIM = _load_malloc_trim()


def can_trim() -> bool:
    """Whether ``malloc_trim`` does anything here (glibc)."""
    return _MALLOC_TRIM is not None


def malloc_trim() -> bool | None:
    """Ask glibc to return the free memory of all its arenas to the system
    (``malloc_trim(0)``); None where the C library has no such call (not glibc), else
    whether any was returned."""
    if _MALLOC_TRIM is None:
        return None
    return bool(_MALLOC_TRIM(0))


def supported() -> str | None:
    """None when this kernel reports the counters, else why not (for the one log line)."""
    if _TCP_INFO is None:
        return "the platform has no TCP_INFO (Linux only)"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            info = probe.getsockopt(socket.IPPROTO_TCP, _TCP_INFO, 512)
    except OSError as exc:
        return f"TCP_INFO failed ({exc})"
    if len(info) < TCP_INFO_MIN_BYTES:
        return (f"the kernel's tcp_info has {len(info)} bytes, without tcpi_bytes_received "
                f"(Linux >= 4.1)")
    return None


class Sample(NamedTuple):
    """One tracked connection as the guard's thread saw it: its descriptor, its peer's
    address key, seconds since it was accepted, the kernel's counters, whether it is
    a subscriber's connection to the PUB (``subscriber``: see SUBSCRIBER_ALLOWANCE), and
    the data-carrying segments it sent (``data_segs``, 0 where the kernel does not say)."""

    fd: int
    address: str
    age_s: float
    acked: int
    received: int
    subscriber: bool = False
    data_segs: int = 0


@dataclass(frozen=True, slots=True)
class ByteLimits:
    """``incomplete`` and ``unread`` per connection, ``total`` of both over all
    connections; bytes, 0 for no limit (docs/PROTOCOL.md §9)."""

    incomplete: int
    unread: int
    total: int


@dataclass(frozen=True, slots=True)
class Verdict:
    """A connection to cut: ``kind`` is "incomplete" (bar its address too, unless a
    subscriber), "segments" (a subscriber past SUBSCRIBER_MAX_SEGMENTS) or "unread" (end
    its session); ``held`` the bytes estimated; ``sample`` what it was judged on;
    ``total`` True when it was cut for the broker-wide bound (the largest first), not its
    own."""

    kind: str
    sample: Sample
    routing_id: bytes | None
    held: int
    total: bool = False

    def still(self, acked: int, received: int) -> bool:
        """Whether counters read later can be the same connection's: the kernel's only
        grow, and a new connection on a reused descriptor starts from 0."""
        return acked >= self.sample.acked and received >= self.sample.received


#: States of a descriptor's counts: its connection's (LIVE); its connection ENDED (the
#: next one on the descriptor is judged from 0, requests still read with the old routing
#: id count for nothing); its connection being CUT (not judged again until it ends).
LIVE, ENDED, CUT = 0, 1, 2


class _Conn:
    """The loop's counts for one connection (one descriptor, one routing id)."""

    __slots__ = ("routing_id", "consumed", "frames", "queued", "acked", "state", "peer")

    def __init__(self, routing_id: bytes, peer: object = None) -> None:
        self.routing_id = routing_id
        #: The TCP peer (host, port) when its first message was read (or None).
        self.peer = peer
        self.consumed = 0
        self.frames = 0
        self.queued = 0
        #: The kernel's tcpi_bytes_acked when last read: the peer took at least this.
        self.acked = 0
        self.state = LIVE


class _Pending:
    """A ROUTER connection as last sampled: the kernel's counts (segments, bytes), what
    the loop had consumed by then (frames, bytes), and what has arrived since a message
    was last finished (``segments``, ``received``): libzmq holds that for the message
    not yet finished (or for complete requests the loop has not read yet)."""

    __slots__ = ("seen_segments", "seen_received", "frames", "consumed", "segments",
                 "received")

    def __init__(self) -> None:
        self.seen_segments = self.seen_received = self.frames = self.consumed = 0
        self.segments = self.received = 0


class ByteLedger:
    """What the loop read from and queued to each tracked connection, and the verdicts on
    the guard's samples. Pure, one thread (the loop's)."""

    def __init__(self, limits: ByteLimits,
                 peer_of: Callable[[int], object] = lambda fd: None) -> None:
        """``peer_of(fd)``: the peer's (host, port) of the TCP connection on ``fd`` now,
        or None (``peer_name``): it tells a connection's own end from an earlier one's on
        the same descriptor, seen late (``closed``)."""
        self.limits = limits
        self._peer_of = peer_of
        self._by_fd: dict[int, _Conn] = {}
        self._fd_of: dict[bytes, int] = {}
        #: Bytes each subscriber connection had sent at its last sample, when over
        #: FIXED_ALLOWANCE (``closed``).
        self._subscriber_held: dict[int, int] = {}
        #: What arrived on each ROUTER connection since its last finished message
        #: (``observe``), by descriptor.
        self._pending: dict[int, _Pending] = {}
        #: Set by ``judge``.
        self.near: list[int] = []

    def consumed(self, fd: int, routing_id: bytes, nbytes: int, frames: int) -> object:
        """The loop read a complete message of ``frames`` frames (``nbytes`` in all, the
        routing id not counted) from ``routing_id`` on descriptor ``fd``. Returns the
        connection's peer (``peer_of``) when it is the first message read from it (the
        loop then checks its address's bar), else None."""
        conn = self._by_fd.get(fd)
        first = False
        if conn is None or conn.routing_id != routing_id:
            first = True
            if conn is not None and self._fd_of.get(conn.routing_id) == fd:
                del self._fd_of[conn.routing_id]
            conn = self._by_fd[fd] = _Conn(routing_id, self._peer_of(fd))
            self._fd_of[routing_id] = fd
        if conn.state == LIVE:
            conn.consumed += nbytes
            conn.frames += frames
        return conn.peer if first else None

    def queued(self, routing_id: bytes, nbytes: int) -> int | None:
        """The loop queued a reply or push of ``nbytes`` to ``routing_id``. Returns its
        descriptor when the bytes queued since the last known acknowledgement pass the
        ``unread`` limit: the loop then reads the kernel's counter at once (``recheck``)
        instead of waiting up to CHECK_EVERY_S, while the replies of a peer that does not
        read pile up at the loop's pace (hundreds of MB a second for HISTORY pages)."""
        fd = self._fd_of.get(routing_id)
        if fd is None:
            return None
        conn = self._by_fd[fd]
        conn.queued += nbytes
        limit = self.limits.unread
        if limit and conn.queued - conn.acked > limit and conn.state == LIVE:
            return fd
        return None

    def recheck(self, fd: int, acked: int | None) -> Verdict | None:
        """The kernel's acked count read now for ``fd`` (None: no longer a tcp socket):
        a verdict "unread" when the connection is still over the limit with it."""
        conn = self._by_fd.get(fd)
        if conn is None or conn.state != LIVE or acked is None or acked < conn.acked:
            return None  # gone, or a new connection on the descriptor (counts from 0)
        conn.acked = acked
        unread = conn.queued - acked
        if unread <= self.limits.unread:
            return None
        return Verdict("unread", Sample(fd, "", 0.0, acked, 0), conn.routing_id, unread)

    def closed(self, fd: int) -> int:
        """Connection ``fd`` ended: forget its counts (keep its routing id, so that its
        requests still read count for nothing). Returns what a subscriber's connection
        was last estimated to hold (bytes, ``subscriber_held``; 0 for others): libzmq
        frees it now, and the broker asks for a trim when that adds up (a tester's 400
        CURVE subscribers just under the bound left 580 MB resident after they closed)."""
        held = self._subscriber_held.pop(fd, 0)
        conn = self._by_fd.get(fd)
        if conn is not None and conn.state == LIVE and conn.peer is not None \
                and self._peer_of(fd) == conn.peer:
            # the connection the loop reads on this descriptor is still there: this is
            # the end of an earlier one, seen after the new one's first message (left
            # as it was, its requests would count for nothing and its segments for all)
            return held
        self._pending.pop(fd, None)
        if conn is not None:
            conn.state = ENDED
            conn.consumed = conn.frames = conn.queued = 0
            if self._fd_of.get(conn.routing_id) == fd:
                del self._fd_of[conn.routing_id]
        return held

    def routing_id(self, fd: int) -> bytes | None:
        """The routing id of the live connection on ``fd`` that the loop read requests
        from, or None (none read yet, ended, or being cut)."""
        conn = self._by_fd.get(fd)
        return conn.routing_id if conn is not None and conn.state == LIVE else None

    def is_cut(self, fd: int) -> bool:
        """Whether the connection on ``fd`` is being cut."""
        conn = self._by_fd.get(fd)
        return conn is not None and conn.state == CUT

    def cut(self, fd: int) -> None:
        """Connection ``fd`` is being cut: judge it no more."""
        conn = self._by_fd.get(fd)
        if conn is None:
            conn = self._by_fd[fd] = _Conn(b"")
        conn.state = CUT

    def held(self, sample: Sample) -> tuple[int, int, bytes | None] | None:
        """(incomplete, unread, routing id) estimated for ``sample``, or None for a
        connection being cut."""
        conn = self._by_fd.get(sample.fd)
        if conn is not None and conn.state == CUT:
            return None
        if sample.subscriber:
            estimate = subscriber_held(sample)
            if estimate:
                self._subscriber_held[sample.fd] = estimate
            return estimate, 0, None
        consumed = frames = queued = 0
        routing_id = None
        if conn is not None and conn.state == LIVE:
            consumed, frames, queued = conn.consumed, conn.frames, conn.queued
            routing_id = conn.routing_id
            conn.acked = max(conn.acked, sample.acked)
        pending = self._pending.get(sample.fd)
        if pending is None:  # not observed yet: all it sent, less what was consumed
            wire = (sample.received - consumed - FRAME_ALLOWANCE * frames
                    - FIXED_ALLOWANCE - int(AGE_ALLOWANCE * sample.age_s))
            segments = 0
        else:
            wire = pending.received - FIXED_ALLOWANCE
            segments = pending.segments
        # what libzmq may hold for it: small frames cost it several times their wire
        # bytes, and each segment that carried a frame its receive buffer
        incomplete = (max(0, wire) * UNFINISHED_BYTE_COST
                      + max(0, segments - ROUTER_FREE_SEGMENTS) * SEGMENT_COST)
        return incomplete, max(0, queued - sample.acked), routing_id

    def observe(self, sample: Sample) -> None:
        """Take a ROUTER connection's counters (``judge`` calls it for each sample). When
        the loop finished a message on it since its last sample, what arrived since then
        less what the loop consumed (each frame with FRAME_ALLOWANCE of framing, and a
        segment for each frame and each SEGMENT_BYTES) is pending: a message's end frees
        what libzmq held for it, and nothing consumed earlier counts (no credit carries
        over: a tester banked 62 MiB of it with messages of 1,000 empty frames). When
        none was finished, all that arrived since adds to what is pending."""
        if sample.subscriber:
            return
        pending = self._pending.get(sample.fd)
        if pending is None:
            pending = self._pending[sample.fd] = _Pending()
        conn = self._by_fd.get(sample.fd)
        frames = consumed = 0
        if conn is not None and conn.state == LIVE:
            frames, consumed = conn.frames, conn.consumed
        if sample.received < pending.seen_received or frames < pending.frames:
            # a new connection on the descriptor (the kernel's counts went down), or
            # the loop's counts started again: from nothing finished
            pending.frames = pending.consumed = pending.seen_segments = 0
            pending.seen_received = pending.segments = pending.received = 0
        new_segments = max(0, sample.data_segs - pending.seen_segments)
        new_bytes = sample.received - pending.seen_received
        if frames > pending.frames:
            done_frames = frames - pending.frames
            done_bytes = consumed - pending.consumed
            pending.received = max(0, new_bytes - done_bytes - FRAME_ALLOWANCE * done_frames)
            pending.segments = max(0, new_segments - done_frames
                                   - done_bytes // SEGMENT_BYTES)
        else:
            pending.received += new_bytes
            pending.segments += new_segments
        pending.seen_segments, pending.seen_received = sample.data_segs, sample.received
        pending.frames, pending.consumed = frames, consumed

    def judge(self, samples: list[Sample]) -> list[Verdict]:
        """The connections to cut: each over its own limit, then, while the bytes held by
        all together pass ``total``, the largest holders first (each charged for the more
        of its two directions: what it is cut for). ``samples`` may be some connections
        only (the guard's fast samples): the bytes held by those pass ``total`` no sooner
        than those held by all.

        Sets ``near``: the descriptors of the connections holding over 1 / WATCH_FRACTION
        of a limit, for the guard to sample often."""
        limits = self.limits
        verdicts: list[Verdict] = []
        rest: list[tuple[int, Verdict]] = []
        held_all = 0
        near_incomplete = limits.incomplete // WATCH_FRACTION or -1
        near_unread = limits.unread // WATCH_FRACTION or -1
        self.near = near = []
        for sample in samples:
            if not self.is_cut(sample.fd):
                self.observe(sample)
            held = self.held(sample)
            if held is None:
                continue
            incomplete, unread, routing_id = held
            if sample.subscriber:
                past_bytes, past_segments = subscriber_excess(sample)
                if (past_bytes + SUBSCRIBER_MAX_HELD > SUBSCRIBER_MAX_HELD // WATCH_FRACTION
                        or past_segments + SUBSCRIBER_MAX_SEGMENTS
                        > SUBSCRIBER_MAX_SEGMENTS // WATCH_FRACTION):
                    near.append(sample.fd)
                if limits.incomplete and past_bytes > 0:
                    verdicts.append(Verdict("incomplete", sample, None, incomplete))
                elif limits.incomplete and past_segments > 0:
                    verdicts.append(Verdict("segments", sample, None, incomplete))
                elif incomplete:
                    held_all += incomplete
                    rest.append((incomplete, Verdict("incomplete", sample, None, incomplete,
                                                     total=True)))
                continue
            if 0 < near_incomplete < incomplete or 0 < near_unread < unread:
                near.append(sample.fd)
            if limits.incomplete and incomplete > limits.incomplete:
                verdicts.append(Verdict("incomplete", sample,
                                        routing_id, incomplete))
            elif limits.unread and unread > limits.unread and routing_id is not None:
                verdicts.append(Verdict("unread", sample, routing_id,
                                        unread))
            elif incomplete or unread:
                held_all += incomplete + unread
                kind = "incomplete" if incomplete >= unread else "unread"
                rest.append((incomplete + unread, Verdict(
                    kind, sample, routing_id, max(incomplete, unread),
                    total=True)))
        if limits.total and held_all > limits.total:
            rest.sort(key=lambda r: r[0], reverse=True)
            for both, verdict in rest:
                if held_all <= limits.total:
                    break
                if verdict.kind == "unread" and verdict.routing_id is None:
                    continue
                verdicts.append(verdict)
                held_all -= both
        return verdicts


def subscriber_excess(sample: Sample) -> tuple[int, int]:
    """How far a subscriber's connection is past its own bounds (cut when either is over
    0): wire bytes past SUBSCRIBER_MAX_HELD beyond SUBSCRIBER_ALLOWANCE and
    SUBSCRIBER_AGE_ALLOWANCE a second, and data segments past SUBSCRIBER_MAX_SEGMENTS
    beyond SUBSCRIBER_FREE_SEGMENTS."""
    past_bytes = (sample.received - SUBSCRIBER_ALLOWANCE
                  - int(SUBSCRIBER_AGE_ALLOWANCE * sample.age_s) - SUBSCRIBER_MAX_HELD)
    past_segments = sample.data_segs - SUBSCRIBER_FREE_SEGMENTS - SUBSCRIBER_MAX_SEGMENTS
    return past_bytes, past_segments


def subscriber_held(sample: Sample) -> int:
    """The bytes libzmq may hold for a subscriber's connection, if all it sent past what
    is free were frames of a message it never finishes (an honest SUB's cost nothing):
    SEGMENT_COST per data segment past SUBSCRIBER_FREE_SEGMENTS, plus
    SUBSCRIBER_BYTE_COST per wire byte past SUBSCRIBER_FREE_BYTES. It counts in
    ``max_held_bytes``."""
    return (max(0, sample.data_segs - SUBSCRIBER_FREE_SEGMENTS) * SEGMENT_COST
            + max(0, sample.received - SUBSCRIBER_FREE_BYTES) * SUBSCRIBER_BYTE_COST)
