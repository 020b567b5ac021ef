"""One room's messages in sequence order, exactly once: the client's delivery decisions, pure.

A room's messages reach a client two ways: live, on the SUB (or as pushes, for a private
room), where ZeroMQ may drop any of them (a subscription not yet in place, a high-water
mark, a process paused with SIGSTOP); and in pages of HISTORY over the DEALER, which hold
every stored message. Sequence numbers are gap-free per room (docs/PROTOCOL.md §7), so a
``RoomFeed`` can tell exactly what is missing, and it hands messages on strictly in order:

* ``live(msg)`` and ``page(messages, after)`` put what arrived into the feed. Nothing is
  handed on by them: a message waits in the feed until every message before it is there.
* ``take(n)`` hands on up to ``n`` messages, the next ones in ``seq`` order without a gap
  (the caller passes the room left in its event queue, so the queue's bound holds).
* ``known(last_seq)``: the room's newest ``seq`` as the broker said it (a PONG, JOIN,
  LOGIN/RESUME reply) or as a live message showed it; the feed then wants everything up to
  it. ``wanted()`` is the HISTORY page to ask for next (``after``, ``limit``), or None.

So a backfilled message can never be handed on after a newer live one, and a live message
that arrives during a backfill simply waits for the gap before it to be filled. The feed
holds at most ``MAX_HELD`` messages; beyond that the newest are let go (HISTORY has them).

The only way past a missing message is the broker's own history: a page that starts past
the ``after`` it was asked for, or an empty page while later messages are known to exist,
means the broker no longer has those messages (e.g. it was restored from an older copy).
Those sequence numbers are then given up, counted in ``skipped`` (normally 0), instead of
waited for forever. This module does no I/O; zchat/client.py runs it (docs/PROTOCOL.md §14,
G2).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from zchat.wire import MAX_HISTORY_LIMIT, MessagePosted

#: Messages a feed holds that the application has not been handed yet (waiting for a gap
#: before them to be filled, or for room in the event queue). Beyond it the newest are
#: dropped and fetched again later, so a flood to a paused client costs bounded memory.
MAX_HELD = 1_000


@dataclass(slots=True)
class RoomFeed:
    """Delivery state of one room.

    ``delivered`` is the highest ``seq`` handed on (at first the room's ``last_seq`` when
    the client started following it: older messages are history, not news); ``target`` the
    highest known to exist; ``held`` maps ``seq`` to a message not handed on yet, or to None
    for a ``seq`` the broker's history does not have (skipped when its turn comes).
    ``following`` turns False when the client stops following the room (PART, kicked).
    ``first_seq`` is the seq of the room's first message as the JOIN reply gave it (None
    when followed from a login or heartbeat list): it tells this room from a deleted one
    of the same name (docs/PROTOCOL.md §6.52)."""

    delivered: int
    target: int = 0
    held: dict[int, MessagePosted | None] = field(default_factory=dict)
    skipped: int = 0
    following: bool = True
    first_seq: int | None = None

    def __post_init__(self) -> None:
        self.target = max(self.target, self.delivered)

    # -- what arrived ------------------------------------------------------------------------

    def known(self, last_seq: int) -> None:
        """The broker says the room's newest message is ``last_seq``."""
        self.target = max(self.target, last_seq)

    def live(self, msg: MessagePosted) -> None:
        """A message heard live (SUB or push), in whatever order and with whatever gaps."""
        self.target = max(self.target, msg.seq)
        self._hold(msg.seq, msg)
        self._trim()

    def page(self, messages: Iterable[MessagePosted], after: int) -> None:
        """A HISTORY page that was asked for with ``after`` (ascending ``seq``, as the
        broker answers). Messages already handed on or held are ignored, so a page that
        crossed live traffic does no harm. Where the page shows the broker's history lacks
        messages (it starts past ``after + 1``, has a hole, or is empty though later
        messages are known), those ``seq`` are marked to be skipped."""
        expected = after + 1
        for msg in messages:
            if msg.seq < expected:
                continue
            for missing in range(expected, msg.seq):  # history has a hole here
                self._hold(missing, None)
            self._hold(msg.seq, msg)
            self.target = max(self.target, msg.seq)
            expected = msg.seq + 1
        if expected == after + 1:  # nothing stored after ``after``: none will ever come
            end = self._next_held_after(after) - 1
            for missing in range(after + 1, end + 1):
                self._hold(missing, None)
        self._trim()

    # -- what to do --------------------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """True when ``take`` would hand something on (or skip a lost ``seq``)."""
        return self.delivered + 1 in self.held

    @property
    def behind(self) -> bool:
        """True while messages up to ``target`` are still to be handed on."""
        return self.target > self.delivered

    def take(self, n: int) -> list[MessagePosted]:
        """Up to ``n`` messages to hand on now, in ``seq`` order, each exactly once."""
        out: list[MessagePosted] = []
        while len(out) < n and self.delivered + 1 in self.held:
            self.delivered += 1
            msg = self.held.pop(self.delivered)
            if msg is None:
                self.skipped += 1
            else:
                out.append(msg)
        return out

    def wanted(self) -> tuple[int, int] | None:
        """The HISTORY page to fetch next, as ``(after, limit)``: the first gap after what
        is held without a break, up to the next held message (or ``target``). None when
        nothing is missing, or when the feed already holds ``MAX_HELD`` messages ready to
        hand on (the application is behind; fetching more would only be dropped)."""
        start = self.delivered
        while start + 1 in self.held:
            start += 1
        if start >= self.target or start - self.delivered >= MAX_HELD:
            return None
        end = self._next_held_after(start) - 1
        return start, max(1, min(end - start, MAX_HISTORY_LIMIT))

    # -- inside ------------------------------------------------------------------------------

    def _hold(self, seq: int, msg: MessagePosted | None) -> None:
        if seq > self.delivered and (seq not in self.held or self.held[seq] is None):
            self.held[seq] = msg

    def _next_held_after(self, seq: int) -> int:
        """The lowest held ``seq`` above ``seq``, else ``target + 1``."""
        return min((s for s in self.held if s > seq), default=self.target + 1)

    def _trim(self) -> None:
        """Keep at most MAX_HELD: drop the newest, which HISTORY gives back later."""
        while len(self.held) > MAX_HELD:
            del self.held[max(self.held)]
