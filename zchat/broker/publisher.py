"""The broker's PUB side in a thread of its own (docs/PROTOCOL.md §16.2).

libzmq does an XPUB's work in the thread that calls it: each send matches its topic
against the subscription trie; each subscriber that leaves makes it walk the whole trie to
drop that subscriber's topics; each SUBSCRIBE read from a connection is added to the trie
and queued as a report. In the request loop's thread, 2,000 subscribers leaving a broker
with 1,000 rooms of 134-byte names held every reply for 10.6 s, and 400 subscribers
churning topics, each within its own limit, held them for 13.5 s. Here that work delays
events at most: the loop answers requests meanwhile (clients fill any gap in a room's
sequence numbers from history, docs/PROTOCOL.md §7).

Shape:

- The loop calls ``publish(frames)``: the event crosses an inproc PAIR (at most
  FEED_HWM events waiting; past it an event is dropped, counted and logged, as the PUB
  drops an event for a subscriber past its high-water mark) to this thread, which sends
  it on the XPUB in the order published.
- This thread reads the XPUB's reports as they come and has the judge
  (zchat.broker.subscriptions.SubscriptionJudge) look at each. For a subscriber it names, it resets
  its PUB connections (``cut_address``, the connection guard's) and puts
  ``SubscriberCut`` on ``cuts`` and calls ``wake()``: the loop ends the sessions bound to
  its key (BrokerCore.end_subscriber).
- ``stop(linger_ms)``: everything published before it leaves first (GOING_AWAY on a
  graceful stop), then the XPUB is closed with that linger.

pyzmq releases the GIL in libzmq's calls, so a long trie walk here does not hold the loop.
"""

from __future__ import annotations

import itertools
import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import zmq

from zchat.broker.connections import close_monitored
from zchat.broker.subscriptions import SubscriptionJudge
from zchat.ratelimit import ThrottledLog

#: Numbers for this process's inproc endpoints: unique for its life (``id(self)`` is
#: reused once an object is freed, before libzmq has let go of its socket's endpoint:
#: "Address already in use" in a test that restarted a broker).
_ENDPOINT_NUMBERS = itertools.count()

log = logging.getLogger("zchat.broker")

#: Events waiting between the loop and this thread at most (half on each side of the
#: inproc pipe). At the benchmarks' top rate (~10,000 messages a second) that is 10 s
#: of this thread not sending; an event is ~0.5 KiB queued, so at most ~50 MiB.
FEED_HWM = 100_000
#: Events forwarded, and reports read, in one turn before the other side gets its turn.
TURN = 1024
#: Seconds after a subscriber was cut during which what it reported is not judged again
#: (its reports still queued would cut it again and again, logging each time).
RECENTLY_CUT_S = 10.0
#: Subscriber keys whose address (to cut them by) or recent cut is kept, at most.
MAX_SUBSCRIBERS_KEPT = 65_536
#: Seconds ``stop()`` waits for this thread to send what is queued and close the XPUB.
STOP_TIMEOUT_S = 5.0

_MORE = int(zmq.SNDMORE | zmq.NOBLOCK)
_LAST = int(zmq.NOBLOCK)


@dataclass(frozen=True, slots=True)
class SubscriberCut:
    """A subscriber the judge named: ``key`` its CURVE key (hex; "" on a plain broker),
    ``topic`` the topic it was cut at (b"" when cut for what all subscribers did), ``why``
    the judge's words."""

    key: str
    topic: bytes
    why: str


class Publisher:
    """Owns the broker's bound XPUB ``pub`` once ``start()`` ran; see the module docstring.

    ``cut_address(address, why)`` resets the PUB connections from an address (or is
    None); ``wake()`` wakes the loop after a ``SubscriberCut`` was put on ``cuts``. Both
    are called from this thread.
    """

    def __init__(self, context: zmq.Context[Any], pub: zmq.Socket[Any],
                 judge: SubscriptionJudge,
                 cut_address: Callable[[str, str], object] | None,
                 wake: Callable[[], None]) -> None:
        self.judge = judge
        self._pub = pub
        self._cut_address = cut_address
        self._wake = wake
        #: Subscribers named by the judge, for the loop to end their sessions.
        self.cuts: queue.SimpleQueue[SubscriberCut] = queue.SimpleQueue()
        #: Events dropped at FEED_HWM (read by tests and logs).
        self.dropped = 0
        self._log_dropped = ThrottledLog(logging.WARNING, "dropped an event for every "
                                         "subscriber: the publisher thread is "
                                         f"{FEED_HWM:,} events behind")
        endpoint = f"inproc://zchat-publisher-{next(_ENDPOINT_NUMBERS)}"
        self._inbox = context.socket(zmq.PAIR)
        self._inbox.setsockopt(zmq.RCVHWM, FEED_HWM // 2)
        self._inbox.setsockopt(zmq.LINGER, 0)
        self._inbox.bind(endpoint)
        self._outbox = context.socket(zmq.PAIR)
        self._outbox.setsockopt(zmq.SNDHWM, FEED_HWM // 2)
        self._outbox.setsockopt(zmq.LINGER, 0)
        self._outbox.connect(endpoint)
        #: The address each subscriber key last reported from (to cut its connections),
        #: and the subscribers cut, until when their reports are not judged (monotonic s).
        self._key_addresses: dict[str, str] = {}
        self._recently_cut: dict[str, float] = {}
        self._linger_ms = 0
        self._thread = threading.Thread(target=self._run, name="zchat-publisher",
                                        daemon=True)

    # -- from the loop's thread --------------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def publish(self, frames: list[bytes]) -> None:
        """Hand one event (its frames, topic first) to this thread; never blocks."""
        outbox = self._outbox
        try:
            # libzmq checks the high-water mark at a message's first frame only
            outbox.send(frames[0], _MORE if len(frames) > 1 else _LAST)
        except zmq.Again:
            self.dropped += 1
            self._log_dropped(f"topic {frames[0][:40]!r}", time.monotonic())
            return
        last = len(frames) - 1
        for i in range(1, last + 1):
            outbox.send(frames[i], _LAST if i == last else _MORE)

    def stop(self, linger_ms: int = 0) -> None:
        """Send what was published, then close the XPUB with ``linger_ms``; waits up to
        STOP_TIMEOUT_S for this thread. Closes the XPUB itself when ``start()`` never
        ran. Idempotent. A thread still inside libzmq after STOP_TIMEOUT_S (walking the
        trie for thousands of subscribers that just left) closes its sockets when it
        gets out; a process that terms its context waits for that."""
        if self._outbox.closed:
            return
        self._linger_ms = linger_ms
        if self._thread.is_alive():
            self._outbox.setsockopt(zmq.SNDTIMEO, int(STOP_TIMEOUT_S * 1000))
            try:
                self._outbox.send(b"")  # the end: one empty frame, never an event
            except zmq.Again:
                log.warning("the publisher thread is stuck; events still queued are lost")
            self._thread.join(STOP_TIMEOUT_S)
            if self._thread.is_alive():
                log.warning("the publisher thread did not stop within %g s",
                            STOP_TIMEOUT_S)
        elif not self._pub.closed:
            close_monitored(self._pub, linger_ms)
        self._outbox.close(linger=0)
        if self._thread.ident is None:  # never started: nothing else closes it
            self._inbox.close(linger=0)

    # -- this thread ---------------------------------------------------------------------

    def _run(self) -> None:
        inbox, pub = self._inbox, self._pub
        poller = zmq.Poller()
        poller.register(inbox, zmq.POLLIN)
        poller.register(pub, zmq.POLLIN)
        try:
            while True:
                try:
                    ready = dict(poller.poll())
                    if inbox in ready and not self._forward(inbox, pub):
                        return
                    if pub in ready:
                        self._read_reports(pub)
                except zmq.ContextTerminated:
                    return
                except Exception:
                    log.exception("unexpected error in the publisher thread; still "
                                  "publishing")
        finally:
            close_monitored(pub, self._linger_ms)
            inbox.close(linger=0)

    def _forward(self, inbox: zmq.Socket[Any], pub: zmq.Socket[Any]) -> bool:
        """Send up to TURN events on the XPUB; False at the end marker."""
        for _ in range(TURN):
            try:
                frame = inbox.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return True
            if not frame.more and not frame.buffer.nbytes:
                return False  # the end (stop): every event has a topic frame
            pub.send(frame, _MORE if frame.more else _LAST, copy=False)
            while frame.more:
                frame = inbox.recv(copy=False)  # the rest of a message is there at once
                pub.send(frame, _MORE if frame.more else _LAST, copy=False)
        return True

    def _read_reports(self, pub: zmq.Socket[Any]) -> None:
        """Judge up to TURN of the XPUB's reports — a topic subscribed for the first time
        by anyone, or dropped by its last subscriber — and cut whom the judge names."""
        judge = self.judge
        for _ in range(TURN):
            try:
                frame = pub.recv(zmq.NOBLOCK, copy=False)
            except zmq.Again:
                return
            buffer = frame.buffer
            kind = buffer[0] if buffer.nbytes else -1
            try:
                key = str(frame.get("User-Id") or "")
            except zmq.ZMQError:
                key = ""
            address = peer_address(frame)
            who = key or address
            now = time.monotonic()
            if self._recently_cut.get(who, 0.0) > now:
                continue  # the rest of what a subscriber cut just now had sent
            if kind not in (0, 1):  # a SUB sends nothing else: not copied, cut
                if who:
                    self._cut(who, key, address, b"", "it sent a message that is not a "
                              "SUBSCRIBE or UNSUBSCRIBE", now)
                continue
            topic = bytes(buffer[1:])
            why = judge.report(who, topic, kind == 1, now)
            if why is not None and who:
                self._cut(who, key, address, topic, why, now)
            culprit = judge.culprit()
            if culprit is not None:
                other, other_why = culprit
                other_key = other if other in self._key_addresses else ""
                self._cut(other, other_key, self._key_addresses.get(other, other), b"",
                          other_why, now)
            if key and address and why is None:
                self._key_addresses[key] = address
                if len(self._key_addresses) > MAX_SUBSCRIBERS_KEPT:
                    self._key_addresses.pop(next(iter(self._key_addresses)))

    def _cut(self, who: str, key: str, address: str, topic: bytes, why: str,
             now_s: float) -> None:
        """Reset the PUB connections from ``address`` and hand ``key`` to the loop (to
        end its sessions); the judge forgets ``who``, whose reports in the next
        RECENTLY_CUT_S are not judged again."""
        self.judge.forget(who)
        self._recently_cut[who] = now_s + RECENTLY_CUT_S
        if len(self._recently_cut) > MAX_SUBSCRIBERS_KEPT:
            self._recently_cut.pop(next(iter(self._recently_cut)))
        if address and self._cut_address is not None:
            self._cut_address(address, f"its subscriber: {why}")
        if key:
            self.cuts.put(SubscriberCut(key, topic, why))
            self._wake()
        elif not address:
            log.warning("a subscriber misused the PUB (%s) and could not be cut: it has "
                        "neither key nor address", why)


def peer_address(frame: zmq.Frame) -> str:
    """The sender's IP address from a received frame's metadata ("" on inproc/ipc)."""
    try:
        return str(frame.get("Peer-Address") or "")
    except zmq.ZMQError:
        return ""

