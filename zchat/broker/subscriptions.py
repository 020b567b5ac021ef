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
  all froze the broker for 68 s);
- or, while all subscribers together report faster than ``total_reports_per_s`` after
  ``total_report_burst``, is the one that has reported the most lately: its reports
  counted with a half-life of ``report_half_life_s`` (not in the last second: an honest
  client subscribing to its rooms at login makes a dozen reports at once, more than each
  of 600 sessions churning at 2 a second, and a tester's run cut it instead of them; and
  not since it was first seen, or a client that joined 500 rooms over a week would
  outrank them) (400
  sessions each churning topics within its own limit made 1.6 million reports, which
  libzmq queued at ~400 bytes each: 630 MB, and a 13.5 s stall). An honest broker makes
  about one report per room at its start and one per room made or emptied later:
  65,536 at once covers a restart of a broker with that many rooms in use.

Subscribers are told apart by ``who``: the CURVE key of their session (or the address on
a plain broker). ``allowed(topic)`` says whether a topic is one of a room that exists (or
a fixed one). Pure; the publisher's thread owns it (zchat.broker.publisher).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable
from dataclasses import dataclass

from zchat.ratelimit import TokenBucket

#: At most this many subscribers' state is kept (the oldest forgotten first).
MAX_SUBSCRIBERS = 65_536
#: While all subscribers report too fast, the RANKED that reported the most are cut
#: first, ranked again every RANK_EVERY_S seconds at most.
RANKED = 64
RANK_EVERY_S = 0.1


@dataclass(frozen=True, slots=True)
class SubscriptionLimits:
    """Bounds of ``SubscriptionJudge`` (see the module docstring)."""

    max_topic_bytes: int
    per_subscriber: int = 4
    max_junk: int = 1_000
    reports_per_s: float = 64.0
    report_burst: int = 4_096
    total_reports_per_s: float = 1_024.0
    total_report_burst: int = 65_536
    report_half_life_s: float = 60.0


class SubscriptionJudge:
    """The topics of no room each subscriber holds, and its rate of reports."""

    def __init__(self, limits: SubscriptionLimits, allowed: Callable[[bytes], bool]) -> None:
        self.limits = limits
        self.allowed = allowed
        self._junk: dict[str, set[bytes]] = {}
        self._holders: dict[bytes, set[str]] = {}
        self._reports: dict[str, TokenBucket] = {}
        self.junk_total = 0
        #: Reports of all subscribers (made at the first report), and each subscriber's
        #: reports lately ([count as of stamp, stamp]: halved every report_half_life_s);
        #: the ones that reported the most, to be cut first while all report too fast
        #: (ranked at most every RANK_EVERY_S).
        self._all: TokenBucket | None = None
        self._counts: dict[str, list[float]] = {}
        self._ranking: list[str] = []
        self._ranked_s = -RANK_EVERY_S
        self._over_total = False
        self._now_s = 0.0

    def report(self, who: str, topic: bytes, subscribe: bool, now_s: float) -> str | None:
        """One report of the XPUB (``subscribe`` False: the topic's last subscriber
        dropped it; ``who`` "" when the report carries no subscriber) at ``now_s``
        (monotonic). Returns why ``who`` must be cut, or None."""
        limits = self.limits
        if who:
            self._count(who, now_s)
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

    def _count(self, who: str, now_s: float) -> None:
        """One report of ``who`` against the limit of all subscribers together."""
        counts = self._counts
        lately = counts.get(who)
        if lately is not None:
            lately[0] = self._decayed(lately, now_s) + 1.0
            lately[1] = now_s
        else:
            if len(counts) >= MAX_SUBSCRIBERS:
                counts.pop(next(iter(counts)))
            counts[who] = [1.0, now_s]
        if self._all is None:
            self._all = TokenBucket(self.limits.total_reports_per_s,
                                    self.limits.total_report_burst, now_s)
        self._over_total = self._all.take(now_s) > 0
        self._now_s = now_s

    def culprit(self) -> tuple[str, str] | None:
        """(who, why) of the subscriber to cut for what all subscribers do together, else
        None: the one holding the most topics of no room while all hold more than
        ``max_junk``, or the one that has reported the most since it was first seen while
        all report faster than ``total_reports_per_s`` (cut it, then ``forget`` it). Call
        after each ``report``."""
        limits = self.limits
        if self._over_total:
            who = self._busiest()
            if who is not None:
                made = self._decayed(self._counts[who], self._now_s)
                return who, (f"subscribers report faster than "
                             f"{limits.total_reports_per_s:g} topics a second after "
                             f"{limits.total_report_burst:,}, and it the most lately "
                             f"({made:,.0f} reports, halved every "
                             f"{limits.report_half_life_s:g} s)")
        if self.junk_total <= limits.max_junk:
            return None
        self._prune()
        if self.junk_total <= limits.max_junk or not self._junk:
            return None
        who = max(self._junk, key=lambda w: len(self._junk[w]))
        return who, (f"subscribers hold over {limits.max_junk:,} topics of no room, and it "
                     "the most")

    def _busiest(self) -> str | None:
        """The subscriber with the most reports still counted, from a ranking of the
        RANKED busiest made at most every RANK_EVERY_S (a ranking per report would cost
        a pass over every subscriber per report)."""
        counts = self._counts
        if not self._ranking or self._now_s - self._ranked_s >= RANK_EVERY_S:
            now_s = self._now_s
            self._ranking = heapq.nlargest(
                RANKED, counts, key=lambda who: self._decayed(counts[who], now_s))
            self._ranking.reverse()  # the busiest last, popped first
            self._ranked_s = self._now_s
        while self._ranking:
            who = self._ranking.pop()
            if who in counts:
                return who
        return None

    def _decayed(self, lately: list[float], now_s: float) -> float:
        """A subscriber's count of reports lately, as of ``now_s``."""
        elapsed = max(0.0, now_s - lately[1])
        return lately[0] * 0.5 ** (elapsed / self.limits.report_half_life_s)

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
        self._counts.pop(who, None)

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
