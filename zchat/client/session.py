"""The client's session, pure: what a ``Client`` (zchat/client/client.py) decides, with
no I/O — no socket, no event loop, no clock (time comes in as ``now``, seconds of the
caller's monotonic clock), no randomness (a jitter comes in as a number). The Client reads
its sockets, calls these, and carries out the answer. Each part is tested with plain
values (tests/test_room_feed.py, tests/test_client_session.py, tests/test_dm_read_state.py).

- **One room's messages in order, once** (``RoomFeed``, docs/PROTOCOL.md §7, §14 G2).
- **What the account has not read** (``UnreadTracker``, ``Unread``, §6.3.1, §6.49).
- **Gaps and backfill**: which HISTORY page to fetch next (``RoomFeed.wanted``,
  ``next_repair``), when a catch-up PING is due after following a room
  (``CATCH_UP_PINGS_S``, ``catch_up_times``), what a reconnect's LOGIN/RESUME reply means
  for each followed room (``after_relogin``).
- **The account's rooms as a PONG lists them**: whether a PONG speaks for a room at all
  (``MembershipChanges``: a room is *settled* when this client has no JOIN, PART or
  DELETE_ROOM of it in flight and changed nothing of it since the PING went), whether the
  PONG shows the session lost (``pong_verdict``), which rooms were left or joined on
  another device (``rooms_left``, ``joined_elsewhere``).
- **Liveness and back-off**: when silence means the broker is lost (``heartbeat_verdict``,
  ``after_failed_ping``), how long to wait before a reconnect attempt
  (``backoff_delay``) and after a 429 (``rate_limit_wait_s``).

## One room's messages

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
waited for forever.

## What the account has not read

The broker's read state from the LOGIN or RESUME reply (docs/PROTOCOL.md §6.3.1),
carried forward by what the client hands to its application and by read markers
(MARK_READ replies, READ pushes, §6.49).

``UnreadTracker`` takes values and returns values; ``Client`` feeds it and exposes
``Client.unread``, an ``Unread`` snapshot.

Counting rules (the broker's, §6.3.1 and §6.49.2):

- A room's unread messages are those after its read marker: ``last - read_seq``, where
  ``last`` is the newest sequence number known here (LOGIN's ``last_seq``, or the newest
  message handed over since). A message from the account itself moves the marker to it
  (the broker does the same when it stores it). A message handed over that names the
  account (``zchat.names.mentions``) and lies after the marker counts as a mention.
- A direct conversation's unread DMs are counted: the broker's count at login, plus each
  DM from the peer handed over after the newest DM id known here; a DM from the account
  itself (a copy from another session, or one this client sent) reads the conversation.
- A read marker (MARK_READ's reply, a READ push) sets the marker, and takes the broker's
  ``unread`` and ``mentions`` for everything up to its ``last``: what was counted here up
  to it is not counted again, what comes after it is.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from zchat import wire as p
from zchat.names import mentions, name_key
from zchat.wire import MAX_HISTORY_LIMIT, MessagePosted

#: Messages a feed holds that the application has not been handed yet (waiting for a gap
#: before them to be filled, or for room in the event queue). Beyond it the newest are
#: dropped and fetched again later, so a flood to a paused client costs bounded memory.
MAX_HELD = 1_000


# -- one room's messages ------------------------------------------------------------------


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


# -- what the account has not read --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Unread:
    """A snapshot of the account's read state (``Client.unread``): ``rooms``, one
    RoomRead per room the client follows (``unread`` may be 0), and ``dms``, one DmRead
    per direct conversation known to have had unread DMs since the login."""

    rooms: tuple[p.RoomRead, ...] = ()
    dms: tuple[p.DmRead, ...] = ()

    def room(self, name: str) -> p.RoomRead | None:
        """The read state of room ``name`` (by key), or None when not followed."""
        key = name_key(name)
        return next((r for r in self.rooms if name_key(r.room) == key), None)

    def dm(self, name: str) -> p.DmRead | None:
        """The read state of the direct conversation with ``name`` (by key), or None."""
        key = name_key(name)
        return next((d for d in self.dms if name_key(d.peer) == key), None)

    @property
    def total(self) -> int:
        """Unread messages and DMs in all."""
        return sum(r.unread for r in self.rooms) + sum(d.unread for d in self.dms)


@dataclass(slots=True)
class _Room:
    name: str
    last: int        # newest seq known here
    read: int        # the read marker
    mentions: int    # unread mentions the broker counted (LOGIN, a read marker)
    #: Mentions counted here since, by seq: a MESSAGE on PUB may arrive before a READ
    #: push on the DEALER that was sent earlier, so the broker's count does not cover it.
    seen: list[int] = field(default_factory=list)

    def unread_mentions(self) -> int:
        return self.mentions + sum(1 for seq in self.seen if seq > self.read)


@dataclass(slots=True)
class _Dm:
    peer: str
    last_id: int     # newest DM id of the conversation known here
    read_id: int
    unread: int


class UnreadTracker:
    """Mutable read state of one client (see the module docstring). Names are matched by
    key; display names are kept as the broker sent them."""

    def __init__(self) -> None:
        self._rooms: dict[str, _Room] = {}
        self._dms: dict[str, _Dm] = {}

    def load(self, reply: p.LoggedIn) -> None:
        """Start over from a LOGIN or RESUME reply: its rooms with their ``room_reads``
        (a room without one, from a broker before read state, counts as read) and its
        ``dm_reads``."""
        reads = {name_key(r.room): r for r in reply.room_reads}
        self._rooms = {}
        for state in reply.rooms:
            key = name_key(state.room)
            read = reads.get(key)
            marker = state.last_seq if read is None else min(read.read_seq, state.last_seq)
            self._rooms[key] = _Room(state.room, state.last_seq, marker,
                                     0 if read is None else read.mentions)
        self._dms = {name_key(d.peer): _Dm(d.peer, d.last_id, d.read_id, d.unread)
                     for d in reply.dm_reads}

    def clear(self) -> None:
        """Forget everything (LOGOUT)."""
        self._rooms.clear()
        self._dms.clear()

    def joined(self, room: str, last_seq: int) -> None:
        """The account joined ``room``: nothing in it is unread (a newcomer's marker is
        the room's last message, §6.3.1). A room already followed stays as it is."""
        self._rooms.setdefault(name_key(room), _Room(room, last_seq, last_seq, 0))

    def followed(self, room: str, last_seq: int, read: p.ReadState | None) -> None:
        """The client follows ``room``, which the account joined elsewhere (another
        device), from ``last_seq``: ``read`` is the account's read state of it (MARK_READ
        of ``upto`` 0, which moves nothing); without it, nothing in it counts as unread."""
        last = last_seq if read is None else max(last_seq, read.last)
        marker = last if read is None else min(read.upto, last)
        self._rooms[name_key(room)] = _Room(room, last, marker,
                                            0 if read is None else read.mentions)

    def parted(self, room: str) -> None:
        self._rooms.pop(name_key(room), None)

    def handed(self, event: object, me: str | None) -> None:
        """Count ``event`` as handed to the application (see the module docstring):
        MESSAGE, DM and READ change the state, anything else nothing."""
        if isinstance(event, p.MessagePosted):
            self._message(event, me)
        elif isinstance(event, p.DirectMessage):
            self._dm(event, me)
        elif isinstance(event, p.ReadMarked):
            self.marked(event)

    def _message(self, msg: p.MessagePosted, me: str | None) -> None:
        key = name_key(msg.room)
        room = self._rooms.get(key)
        if room is None:  # followed without a JOIN here (a reconnect found it)
            room = self._rooms[key] = _Room(msg.room, msg.seq - 1, msg.seq - 1, 0)
        if msg.seq <= room.last:
            return  # counted already (a repaired gap, or in the login's state)
        room.last = msg.seq
        if me is not None and name_key(msg.sender) == name_key(me):
            room.read, room.mentions, room.seen = msg.seq, 0, []
        elif me is not None and msg.seq > room.read and not msg.deleted_by \
                and mentions(msg.text, me):
            room.seen.append(msg.seq)

    def _dm(self, dm: p.DirectMessage, me: str | None) -> None:
        own = me is not None and name_key(dm.sender) == name_key(me)
        peer = dm.to if own else dm.sender
        state = self._dms.setdefault(name_key(peer), _Dm(peer, 0, 0, 0))
        if dm.id <= state.last_id:
            return
        state.last_id = dm.id
        if own:
            state.read_id, state.unread = dm.id, 0
        elif dm.id > state.read_id:
            state.unread += 1

    def sent(self, room: str, seq: int) -> None:
        """This client posted message ``seq`` in ``room``: the room is read up to it (the
        broker moved the sender's marker, §6.3.1)."""
        state = self._rooms.get(name_key(room))
        if state is not None and seq > state.read:
            state.last = max(state.last, seq)
            state.read, state.mentions, state.seen = seq, 0, []

    def sent_dm(self, peer: str, dm_id: int) -> None:
        """This client sent DM ``dm_id`` to ``peer``: the conversation is read up to it
        (the broker moved the sender's marker, §6.3.1)."""
        state = self._dms.setdefault(name_key(peer), _Dm(peer, 0, 0, 0))
        state.last_id = max(state.last_id, dm_id)
        state.read_id, state.unread = max(state.read_id, dm_id), 0

    def marked(self, state: p.ReadState | p.ReadMarked) -> None:
        """A read marker moved (MARK_READ's reply, or a READ push from another session)."""
        if state.room:
            room = self._rooms.get(name_key(state.room))
            if room is None or state.upto < room.read:
                return
            room.read = state.upto
            room.mentions = state.mentions
            room.seen = [seq for seq in room.seen if seq > max(state.last, state.upto)]
            room.last = max(room.last, state.last, state.upto)
        elif state.peer:
            dm = self._dms.setdefault(name_key(state.peer), _Dm(state.peer, 0, 0, 0))
            if state.upto < dm.read_id:
                return
            dm.read_id = state.upto
            dm.last_id = max(dm.last_id, state.last, state.upto)
            dm.unread = state.unread

    def room_last(self, room: str) -> int | None:
        """The newest seq of ``room`` known here, or None when not followed."""
        state = self._rooms.get(name_key(room))
        return None if state is None else state.last

    def dm_last(self, peer: str) -> int | None:
        """The newest DM id of the conversation with ``peer`` known here, or None."""
        state = self._dms.get(name_key(peer))
        return None if state is None else state.last_id

    def snapshot(self) -> Unread:
        return Unread(
            rooms=tuple(p.RoomRead(room=r.name, read_seq=r.read,
                                   unread=max(0, r.last - r.read),
                                   mentions=r.unread_mentions())
                        for r in self._rooms.values()),
            dms=tuple(p.DmRead(peer=d.peer, last_id=d.last_id, read_id=d.read_id,
                               unread=d.unread)
                      for d in self._dms.values()))


# -- gaps and backfill ------------------------------------------------------------------------

#: Seconds after the client starts following a room (JOIN, LOGIN, RESUME) at which it
#: sends an extra heartbeat: a SUB subscription takes effect some time after it is made
#: (it travels to the PUB, after the connection's handshake), and a message published
#: meanwhile is found by the next PONG's ``last_seq`` (docs/PROTOCOL.md §14, G2). These
#: catch-up PINGs find it within about a second instead of a heartbeat interval (10 s by
#: default), the later one for slow links. Read at each use (tests shorten it).
CATCH_UP_PINGS_S = (0.5, 3.0)


def catch_up_times(now: float) -> tuple[float, ...]:
    """When the catch-up PINGs are due for a room followed at ``now``: ``now`` plus each
    of CATCH_UP_PINGS_S. They are timed from the latest room followed: the caller replaces
    the times of an earlier one (a LOGIN following many rooms sets them once, in effect)."""
    return tuple(now + delay for delay in CATCH_UP_PINGS_S)


#: What a room's repair does next (``next_repair``): stop (nothing missing, or no room
#: for it now and no waiting), wait for room in the event queue, or fetch a HISTORY page
#: ``(after, limit)``.
RepairStep = Literal["stop", "wait"] | tuple[int, int]


def next_repair(feed: RoomFeed | None, has_room: bool, wait: bool) -> RepairStep:
    """The next step of bringing ``feed`` up to date, once what it can hand on has been
    handed on (``take``) and ``has_room`` says whether the event queue is below its bound.
    A room not followed (None, or ``following`` False) stops. A feed with more to hand on
    or still behind, while the queue is full, waits for room with ``wait`` (the background
    repair) and stops without (a heartbeat or a reconnect: the next PONG shows the room
    still behind, and the repair goes on then). Otherwise the page ``feed.wanted()``
    names, or "stop" when nothing is missing."""
    if feed is None or not feed.following:
        return "stop"
    if not has_room and (feed.ready or feed.behind):
        return "wait" if wait else "stop"
    ask = feed.wanted()
    return "stop" if ask is None else ask


def repair_due(feed: RoomFeed) -> bool:
    """Whether a room's feed, after a live message and handing on what it could, needs
    its repair started: something held is ready but had no room in the event queue, or
    messages up to ``target`` are missing."""
    return feed.ready or feed.behind


#: What a LOGIN/RESUME reply after a reconnect means for one room it lists
#: (``after_relogin``).
Relogin = Literal["follow", "verify", "catch up"]


def after_relogin(feed: RoomFeed | None, last_seq: int) -> Relogin:
    """For a room the reconnect's LOGIN/RESUME reply lists with ``last_seq``: "follow"
    when this client does not follow it (joined elsewhere meanwhile: follow it from
    ``last_seq``, JoinedElsewhere); "verify" when the broker's ``last_seq`` is behind what
    this client has delivered — the reply is older than what the new SUB delivered while it
    travelled, or the broker really lost messages (restored from an older copy): ask the
    broker whether it holds the last message seen here, and follow it anew from
    ``last_seq`` when it does not; else "catch up" (``known(last_seq)``, then repair)."""
    if feed is None or not feed.following:
        return "follow"
    if last_seq < feed.delivered:
        return "verify"
    return "catch up"


# -- the account's rooms, as the broker lists them -------------------------------------------


class MembershipChanges:
    """This client's own changes of the account's membership, per room key: a count of
    those begun or ended (JOIN, PART, DELETE_ROOM; following a room or no longer), and the
    requests in flight. A PONG changes nothing for a room whose count moved since its PING
    went, or with a request in flight (``settled``): a PONG computed before the broker
    processed this client's own JOIN must not make it stop following the room it just
    joined."""

    def __init__(self) -> None:
        self._changes: dict[str, int] = {}
        self._requests: dict[str, int] = {}

    def changed(self, key: str) -> None:
        """Room ``key`` was followed, or no longer, by this client."""
        self._changes[key] = self._changes.get(key, 0) + 1

    def begin(self, key: str) -> None:
        """A request changing the membership of ``key`` goes out: a change, in flight."""
        self.changed(key)
        self._requests[key] = self._requests.get(key, 0) + 1

    def end(self, key: str) -> None:
        """That request was answered (or failed): no longer in flight, a change again."""
        left = self._requests.pop(key) - 1
        if left:
            self._requests[key] = left
        self.changed(key)

    def snapshot(self) -> dict[str, int]:
        """The counts now, taken when a PING goes (for ``settled``)."""
        return dict(self._changes)

    def settled(self, key: str, since: Mapping[str, int]) -> bool:
        """Whether a PONG whose PING went when the counts were ``since`` speaks for room
        ``key``: none of its membership requests in flight, and no change since."""
        return key not in self._requests and self._changes.get(key, 0) == since.get(key, 0)


#: What a PONG says (``pong_verdict``): the broker no longer knows the session; nothing
#: of the rooms (the reading budget is spent, §6.13); the rooms' last seqs and topics;
#: those and the account's membership.
PongVerdict = Literal["session lost", "no news", "rooms", "rooms and membership"]


def pong_verdict(sent_with: str | None, current: str | None, pong_session: str | None,
                 listed: bool) -> PongVerdict:
    """What to take from a PONG whose PING went with session ``sent_with`` (None before a
    login), now that the client's session is ``current``: the PONG names another session
    than the one it was sent with, still the current one — the broker forgot it ("session
    lost"); the broker listed no rooms (``listed`` False, "no news"); the membership only
    when the PING went and came back within one session ("rooms and membership"), else
    only the rooms' last seqs and topics ("rooms"). docs/PROTOCOL.md §6.13, §10."""
    same = sent_with is not None and sent_with == current
    if same and pong_session is not None and pong_session != sent_with:
        return "session lost"
    if not listed:
        return "no news"
    if same and pong_session in (None, sent_with):
        return "rooms and membership"
    return "rooms"


def rooms_left(feeds: Mapping[str, RoomFeed], listed: set[str],
               changes: MembershipChanges | None = None,
               since: Mapping[str, int] | None = None) -> list[str]:
    """The keys of followed rooms that the broker's list (``listed``, room keys) no longer
    holds: left on another device, or removed. With ``changes``, only rooms ``settled``
    since ``since``; without (a reconnect's reply), every one."""
    return [key for key, feed in feeds.items()
            if feed.following and key not in listed
            and (changes is None or changes.settled(key, since or {}))]


def following(feeds: Mapping[str, RoomFeed], key: str) -> bool:
    """Whether room ``key`` is followed."""
    feed = feeds.get(key)
    return feed is not None and feed.following


def joined_elsewhere(feeds: Mapping[str, RoomFeed], key: str, changes: MembershipChanges,
                     since: Mapping[str, int]) -> bool:
    """Whether room ``key``, which a PONG lists among the account's rooms, was joined on
    another device: this client does not follow it and has not been changing its
    membership since ``since`` (``settled``). Asked again after the round trip that
    fetches the room's read state: a JOIN here or a PART meanwhile makes it False."""
    return not following(feeds, key) and changes.settled(key, since)


# -- liveness and back-off ---------------------------------------------------------------------

#: First reconnect delay in seconds; each further attempt doubles it up to the ceiling.
RECONNECT_FIRST_S = 0.5
#: Each delay is scaled by a random factor within ±10 %, so that many clients cut off by
#: one broker restart do not all come back in the same instant.
RECONNECT_JITTER = 0.1
#: A 429's wait is stretched by a random factor of 1 to 1 + this, so that clients refused
#: together do not all retry together.
RATE_LIMIT_JITTER = 0.5
#: Bounds on one such wait, in seconds: a 429 without ``retry_after_ms`` still waits a
#: little, and a broker asking for an absurd wait cannot stall the client for long.
RATE_LIMIT_MIN_WAIT_S = 0.05
RATE_LIMIT_MAX_WAIT_S = 60.0


def backoff_delay(attempt: int, max_s: float, jitter: float = 0.0) -> float:
    """Seconds to wait before reconnect attempt ``attempt`` (1, 2, …): 0.5, 1, 2, 4, …
    capped at ``max_s``, scaled by ``1 + jitter`` (``jitter`` within ±RECONNECT_JITTER)
    and never above ``max_s``."""
    base = RECONNECT_FIRST_S * 2.0 ** min(max(attempt, 1) - 1, 40)
    return min(max_s, min(max_s, base) * (1.0 + jitter))


def reconnect_endpoint(lost: int, attempt: int, count: int, spread: int = 0) -> int:
    """Index, in the client's list of ``count`` broker endpoints, to try at reconnect
    attempt ``attempt`` (1, 2, …) after losing the one at index ``lost``: each round of
    ``count`` attempts tries every other endpoint once, then the lost one last (a
    cluster's other broker answers at once, while the lost one may be down for good).
    ``spread`` (any whole number, drawn once per client by the caller) rotates where in
    the others a round starts, so that the clients of a broker that died do not all land
    on the same next one (a benchmark saw 50 of 50 do so with a plain "next one"). With
    one endpoint, always it (docs/cluster.md, "How clients move")."""
    if count < 1 or not 0 <= lost < count:
        raise ValueError(f"endpoint {lost} is not one of {count}")
    step = (max(attempt, 1) - 1) % count
    if step == count - 1:
        return lost
    return (lost + 1 + (spread + step) % (count - 1)) % count


def rate_limit_wait_s(retry_after_ms: int, stretch: float) -> float:
    """Seconds to wait after a 429 that asked for ``retry_after_ms``: at least
    RATE_LIMIT_MIN_WAIT_S, times ``stretch`` (drawn from 1 to 1 + RATE_LIMIT_JITTER by the
    caller: every client refused together is told about the same wait, and would all come
    back at once to take one token between them — a tester's 45 logins from one address:
    6 gave up), at most RATE_LIMIT_MAX_WAIT_S."""
    return min(max(retry_after_ms / 1000, RATE_LIMIT_MIN_WAIT_S) * stretch,
               RATE_LIMIT_MAX_WAIT_S)


#: What a heartbeat does (``heartbeat_verdict``): reconnect now; say ConnectionLost (once)
#: and PING; or just PING.
Heartbeat = Literal["reconnect", "lost", "ping"]


def heartbeat_verdict(now: float, last_heard: float, timeout_s: float, *,
                      can_reconnect: bool, session_gone: bool, going_away: bool,
                      lost: bool, events_silent_s: float = 0.0) -> Heartbeat:
    """At a heartbeat (every interval, or when woken): with credentials kept
    (``can_reconnect``), silence longer than ``timeout_s`` since ``last_heard`` (the last
    message on the DEALER: a reply or a push; TICKs on the SUB do not count), a session
    the broker forgot (``session_gone``), a GOING_AWAY (``going_away``) or an event
    connection silent longer than ``timeout_s`` (``events_silent_s``: not even a TICK,
    which the broker publishes every interval; its PUB refused us, say, over
    max_connections_per_address, while the ROUTER took us) means reconnect; without,
    silence longer than the timeout is a ConnectionLost to tell once (``lost``
    says it was told), and the PING goes on (docs/PROTOCOL.md §10)."""
    silent = now - last_heard
    if can_reconnect and (silent > timeout_s or session_gone or going_away
                          or events_silent_s > timeout_s):
        return "reconnect"
    if silent > timeout_s and not lost:
        return "lost"
    return "ping"


#: What a failed heartbeat PING leads to (``after_failed_ping``).
FailedPing = Literal["reconnect", "check now", "wait"]


def after_failed_ping(now: float, last_heard: float, sent_at: float, timeout_s: float, *,
                      can_reconnect: bool) -> FailedPing:
    """After a heartbeat PING sent at ``sent_at`` failed (no answer within the interval,
    or refused): with credentials kept and nothing heard on the DEALER since it went, the
    broker (or the path to its ROUTER) is gone — reconnect without waiting out the
    timeout; otherwise, when the silence already passed ``timeout_s``, check again at once
    ("check now") rather than after another interval; else wait for the next heartbeat."""
    if can_reconnect and last_heard < sent_at:
        return "reconnect"
    if now - last_heard > timeout_s:
        return "check now"
    return "wait"
