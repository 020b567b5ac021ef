"""What a ``Client`` hands its application besides the broker's own events: the
client-side events (the connection lost and restored, the session ended, rooms joined or
left on another device of the account), and ``Event``, the union of everything
``Client.events()`` yields. Values only: frozen dataclasses, no I/O."""

from __future__ import annotations

from dataclasses import dataclass

from zchat import wire as p


@dataclass(frozen=True, slots=True)
class ConnectionLost:
    """Client-side event: nothing heard from the broker for ``silent_s`` seconds (more than
    its heartbeat timeout; with ``reconnect=True`` also a failed heartbeat PING, or a
    broker that no longer knows this client's session: then ``session_only`` is True, the
    broker answers but has evicted or forgotten the session)."""

    silent_s: float
    session_only: bool = False


@dataclass(frozen=True, slots=True)
class Reconnecting:
    """Client-side event: reconnect attempt ``attempt`` (1, 2, …) starts in ``delay_s``
    seconds."""

    attempt: int
    delay_s: float


@dataclass(frozen=True, slots=True)
class ConnectionRestored:
    """Client-side event: the broker is heard again after a ConnectionLost (with
    ``reconnect=True``: logged in again, resubscribed, and every followed room's missed
    messages delivered before this event)."""


@dataclass(frozen=True, slots=True)
class SessionEnded:
    """Client-side event, terminal: the client cannot log in again (``reason``, e.g. the
    password changed), or ``by`` (an admin, or the account itself) had the broker end
    the session (SESSION_CLOSED, docs/PROTOCOL.md §6.47). No events follow; requests
    raise ConnectionFailed, or after SESSION_CLOSED RequestFailed 401 with who and why."""

    reason: str
    by: str = ""


@dataclass(frozen=True, slots=True)
class JoinedElsewhere:
    """Client-side event: the broker lists ``room`` among the account's rooms (a PONG, or
    the LOGIN/RESUME reply of a reconnect), and this client did not join it — another
    device or a script of the account did (``zchat say --room``). The client follows it
    from ``last_seq`` (its newest message then) and ``unread`` has the account's read
    state of it. Not a broker event: no JOINED reaches a client for a room it does not
    follow, and the room's members saw JOINED already."""

    room: str
    last_seq: int
    topic: str = ""


@dataclass(frozen=True, slots=True)
class LeftElsewhere:
    """Client-side event: the broker no longer lists ``room``, which this client
    followed, among the account's rooms: most likely another device of the account left
    it (else a removal or a deletion whose LEFT or ROOM_DELETED event was missed, or,
    seen at a reconnect, one done while disconnected). The client no longer follows it."""

    room: str


Event = (p.MessagePosted | p.UserJoined | p.UserLeft | p.PresenceChanged | p.TopicChanged
         | p.SlowModeChanged | p.DirectMessage | p.GoingAway | ConnectionLost | Reconnecting
         | ConnectionRestored | SessionEnded | p.MessageDeleted | p.RoomModeChanged
         | p.RoleChanged | p.Invited | p.MuteChanged | p.ReadMarked | p.RoomDeleted
         | JoinedElsewhere | LeftElsewhere)
