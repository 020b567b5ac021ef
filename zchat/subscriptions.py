"""Which PUB subscribers to cut (docs/PROTOCOL.md §16.2): a pure judge of the topics the
broker's XPUB reports.

libzmq keeps every topic any subscriber asks for in a trie, at ~50 bytes of memory a byte
of topic, and walks the whole trie each time a subscriber leaves; the XPUB reports a
topic the first time anyone subscribes to it and when its last subscriber drops it, and
queues the reports until the broker reads them. So a subscriber is cut when it

- asks for a topic longer than any room's (``max_topic_bytes``);
- holds more than ``per_subscriber`` topics of no room at once (an honest client holds one
  for a moment: it subscribes to a room's topic before the JOIN that creates the room);
- makes reports faster than ``reports_per_s`` after ``report_burst`` (subscribe/unsubscribe
  churn: a tester's session made 1.25 million a second and the queue of reports grew the
  broker by 30 MB a second);
- or, while all subscribers together hold more than ``max_junk`` topics of no room, is the
  one holding the most (many keys each under ``per_subscriber``: 1,000 sessions with 16
  topics of 134 bytes made each disconnect walk 2 million trie nodes, and closing them
  all froze the broker for 68 s).

Subscribers are told apart by ``who``: the CURVE key of their session (or the address on
a plain broker). ``allowed(topic)`` says whether a topic is one of a room that exists (or
a fixed one). Pure; the broker's loop owns it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from zchat.ratelimit import TokenBucket

#: At most this many subscribers' state is kept (the oldest forgotten first).
MAX_SUBSCRIBERS = 65_536


@dataclass(frozen=True, slots=True)
class SubscriptionLimits:
    """Bounds of ``SubscriptionJudge`` (see the module docstring)."""

    max_topic_bytes: int
    per_subscriber: int = 4
    max_junk: int = 1_000
    reports_per_s: float = 64.0
    report_burst: int = 4_096


class SubscriptionJudge:
    """The topics of no room each subscriber holds, and its rate of reports."""

    def __init__(self, limits: SubscriptionLimits, allowed: Callable[[bytes], bool]) -> None:
        self.limits = limits
        self.allowed = allowed
        self._junk: dict[str, set[bytes]] = {}
        self._holders: dict[bytes, set[str]] = {}
        self._reports: dict[str, TokenBucket] = {}
        self.junk_total = 0

    def report(self, who: str, topic: bytes, subscribe: bool, now_s: float) -> str | None:
        """One report of the XPUB (``subscribe`` False: the topic's last subscriber
        dropped it; ``who`` "" when the report carries no subscriber) at ``now_s``
        (monotonic). Returns why ``who`` must be cut, or None."""
        limits = self.limits
        if who:
            bucket = self._reports.get(who)
            if bucket is None:
                if len(self._reports) >= MAX_SUBSCRIBERS:
                    self._reports.pop(next(iter(self._reports)))
                bucket = self._reports[who] = TokenBucket(limits.reports_per_s,
                                                          limits.report_burst, now_s)
            if bucket.take(now_s):
                return (f"it subscribed and unsubscribed faster than "
                        f"{limits.reports_per_s:g} topics a second after "
                        f"{limits.report_burst:,}")
        if not subscribe:
            for holder in self._holders.pop(topic, ()):
                self._drop(holder, topic)
            return None
        if self.allowed(topic):
            return None
        if len(topic) > limits.max_topic_bytes:
            return f"it asked for a topic of {len(topic)} bytes, longer than any room's"
        if not who:
            return None
        held = self._junk.get(who)
        if held is None:
            if len(self._junk) >= MAX_SUBSCRIBERS:
                self.forget(next(iter(self._junk)))
            held = self._junk[who] = set()
        for made in [t for t in held if self.allowed(t)]:  # a room made since
            self._drop(who, made)
        if topic not in held:
            held.add(topic)
            self._holders.setdefault(topic, set()).add(who)
            self.junk_total += 1
        if len(held) > limits.per_subscriber:
            return (f"it holds {len(held)} topics of no room (at most "
                    f"{limits.per_subscriber})")
        return None

    def most_junk(self) -> str | None:
        """The subscriber holding the most topics of no room while all together hold
        more than ``max_junk`` (to be cut, then ``forget``), else None. Call after each
        ``report``."""
        if self.junk_total <= self.limits.max_junk:
            return None
        self._prune()
        if self.junk_total <= self.limits.max_junk or not self._junk:
            return None
        return max(self._junk, key=lambda w: len(self._junk[w]))

    def forget(self, who: str) -> None:
        """``who`` was cut (its topics go with its connections) or is gone."""
        for topic in self._junk.pop(who, set()):
            holders = self._holders.get(topic)
            if holders is not None:
                holders.discard(who)
                if not holders:
                    del self._holders[topic]
            self.junk_total -= 1
        self._reports.pop(who, None)

    def _drop(self, who: str, topic: bytes) -> None:
        held = self._junk.get(who)
        if held is not None and topic in held:
            held.discard(topic)
            self.junk_total -= 1
            holders = self._holders.get(topic)
            if holders is not None:
                holders.discard(who)
                if not holders:
                    del self._holders[topic]

    def _prune(self) -> None:
        """Forget every held topic whose room exists by now."""
        for topic in [t for t in self._holders if self.allowed(t)]:
            for holder in self._holders.pop(topic, ()):
                held = self._junk.get(holder)
                if held is not None and topic in held:
                    held.discard(topic)
                    self.junk_total -= 1
