"""What an account has not read, as a client knows it: the broker's read state from the
LOGIN or RESUME reply (docs/PROTOCOL.md §6.3.1), carried forward by what the client hands
to its application and by read markers (MARK_READ replies, READ pushes, §6.49).

Pure: ``UnreadTracker`` takes values and returns values; ``zchat.client.Client`` feeds it
and exposes ``Client.unread``, an ``Unread`` snapshot.

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

from dataclasses import dataclass, field

from zchat import wire as p
from zchat.names import mentions, name_key


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
