"""Events and pushes: what the broker publishes on PUB (docs/PROTOCOL.md §3.4) and pushes
to one session over the ROUTER (§3.3), with the registries by wire TYPE.

Past tense, named for what happened. A client ignores keys of these bodies it does not
know, so that a newer broker may add optional fields (§13).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from zchat.wire.values import Message, MessageKind, Presence, WireInt


class MessagePosted(Message, frozen=True):
    """A room message (§7). ``seq`` is the room's sequence number, ``time`` the broker's
    UTC clock in milliseconds when it committed the message."""

    TYPE: ClassVar[str] = "MESSAGE"
    room: str
    seq: WireInt
    time: WireInt
    sender: str
    text: str
    kind: MessageKind = "text"
    #: Who deleted the message ("" = not deleted); its ``text`` is then "" (§6.38).
    deleted_by: str = ""
    #: A notice (IRC's NOTICE): shown apart, never answered by a bot (§6.8). A field of
    #: its own beside ``kind`` "text", not a third kind: a client that does not know it
    #: shows the notice as text (§13), where an unknown ``kind`` value would make it
    #: refuse the whole event (and every HISTORY page holding it).
    notice: bool = False


class UserJoined(Message, frozen=True):
    """Notice on the room topic: ``name`` joined ``room``."""

    TYPE: ClassVar[str] = "JOINED"
    room: str
    name: str
    time: WireInt


class UserLeft(Message, frozen=True):
    """Notice on the room topic: ``name`` left ``room``; when ``by`` is set, ``by``
    removed them (KICK, or BAN with ``ban``) for ``reason`` (§6.30)."""

    TYPE: ClassVar[str] = "LEFT"
    room: str
    name: str
    time: WireInt
    by: str = ""
    reason: str = ""
    ban: bool = False
    #: With ``ban``: when the ban lapses (UTC ms); None for no expiry or a kick (§6.19).
    until: WireInt | None = None


class PresenceChanged(Message, frozen=True):
    """An account's presence changed (§8). One event per change, per account."""

    TYPE: ClassVar[str] = "PRESENCE"
    name: str
    presence: Presence
    time: WireInt
    text: str = ""


class TopicChanged(Message, frozen=True):
    """Event on the room topic: ``by`` set ``room``'s topic to ``topic`` ("" cleared it)
    at ``time`` (UTC ms) (§6.23)."""

    TYPE: ClassVar[str] = "TOPIC"
    room: str
    topic: str
    by: str
    time: WireInt


class SlowModeChanged(Message, frozen=True):
    """Event on the room topic: ``by`` set ``room``'s slow mode to ``seconds`` (0 turned
    it off) at ``time`` (UTC ms) (§6.28.1)."""

    TYPE: ClassVar[str] = "SLOW_MODE"
    room: str
    seconds: WireInt
    by: str
    time: WireInt


class MessageDeleted(Message, frozen=True):
    """Event on the room topic: ``by`` deleted message ``seq`` of ``room`` at ``time``
    (UTC ms); clients show it as deleted (§6.38.1)."""

    TYPE: ClassVar[str] = "MESSAGE_DELETED"
    room: str
    seq: WireInt
    by: str
    time: WireInt


class RoomModeChanged(Message, frozen=True):
    """Event on the room topic: ``by`` changed ``room``'s modes (§6.37.1)."""

    TYPE: ClassVar[str] = "ROOM_MODE"
    room: str
    private: bool
    locked: bool
    by: str
    time: WireInt


class RoleChanged(Message, frozen=True):
    """Event on the room topic: ``by`` gave ``name`` the ``role`` in ``room`` (§6.36.1)."""

    TYPE: ClassVar[str] = "ROLE"
    room: str
    name: str
    role: Literal["owner", "moderator", "member"]
    by: str
    time: WireInt


class RoomDeleted(Message, frozen=True):
    """Event on the room topic (a push to each member session for a private room):
    ``by`` deleted ``room`` at ``time`` (UTC ms), with its history and memberships;
    clients stop following it (§6.52.1). ``first_seq`` names which room of that name
    was deleted (as in the JOIN reply, §6.5): a client that already joined a new room
    of the name when a late ROOM_DELETED of the old one reaches it keeps following."""

    TYPE: ClassVar[str] = "ROOM_DELETED"
    room: str
    by: str
    time: WireInt
    reason: str = ""
    first_seq: WireInt = 1


class Invited(Message, frozen=True):
    """Push to each session of an invitee: ``by`` invited you to ``room`` (§6.35.1)."""

    TYPE: ClassVar[str] = "INVITED"
    room: str
    by: str
    time: WireInt


class MuteChanged(Message, frozen=True):
    """Push to each session of the account muted (``muted``) or unmuted in ``room`` (""
    = server-wide) by ``by`` at ``time`` (UTC ms); a mute lapses at ``until`` (UTC ms,
    None = until lifted) (§6.33.1)."""

    TYPE: ClassVar[str] = "MUTED"
    room: str
    muted: bool
    by: str
    time: WireInt
    reason: str = ""
    until: WireInt | None = None


class SessionClosed(Message, frozen=True):
    """Push to a session the broker is ending on someone's order (an admin's password
    reset, disable or server-wide ban; the account's own password change): ``by`` ended
    it at ``time`` (UTC ms) because ``reason``. Nothing follows on it (§6.47)."""

    TYPE: ClassVar[str] = "SESSION_CLOSED"
    reason: str
    by: str
    time: WireInt


class Tick(Message, frozen=True):
    """The broker's heartbeat on PUB, every heartbeat interval (§10)."""

    TYPE: ClassVar[str] = "TICK"
    time: WireInt


class GoingAway(Message, frozen=True):
    """Event on TOPIC_BROKER: the broker is shutting down at ``time`` (UTC ms); ``text``
    says why. Clients reconnect with back-off and resume their session (§6.29)."""

    TYPE: ClassVar[str] = "GOING_AWAY"
    text: str
    time: WireInt


class DirectMessage(Message, frozen=True):
    """A direct message, pushed over the ROUTER to each session of ``to`` (and to the
    sender's other sessions); never published on PUB (§6.7)."""

    TYPE: ClassVar[str] = "DM"
    id: WireInt
    time: WireInt
    sender: str
    to: str
    text: str
    #: A notice (IRC's NOTICE), as in MessagePosted (§6.7.1).
    notice: bool = False


class ReadMarked(Message, frozen=True):
    """Push to the account's other sessions: one of them moved a read marker (MARK_READ,
    §6.49.1), so that every device shows the same unread counts. Exactly one of ``room``
    and ``peer`` is set; ``upto`` is the marker now (a room's seq or a DM id), ``unread``
    and ``mentions`` what is left unread after it, up to ``last``."""

    TYPE: ClassVar[str] = "READ"
    room: str
    peer: str
    upto: WireInt
    unread: WireInt
    mentions: WireInt = 0
    #: The conversation's newest position when the marker moved (the room's last_seq, or
    #: the conversation's newest DM id), so that a receiver counts what arrives after it
    #: and not what it already counted; 0: not said.
    last: WireInt = 0



#: Events of a room, published on its topic, or pushed to each member session instead
#: when the room is private (§17.2).
ROOM_EVENT_TYPES: tuple[type[Message], ...] = (
    MessagePosted, UserJoined, UserLeft, TopicChanged, SlowModeChanged, MessageDeleted,
    RoomModeChanged, RoleChanged, RoomDeleted)
#: Wire TYPE -> class of every event a SUB may receive (§3.4).
EVENT_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (MessagePosted, UserJoined, UserLeft, PresenceChanged, Tick,
                              TopicChanged, GoingAway, SlowModeChanged, MessageDeleted,
                              RoomModeChanged, RoleChanged, RoomDeleted)
}
_PUSHED: tuple[type[Message], ...] = (DirectMessage, Invited, MuteChanged, SessionClosed,
                                      ReadMarked, *ROOM_EVENT_TYPES)
#: Wire TYPE -> class of every push a DEALER may receive (§3.3).
PUSH_TYPES: dict[str, type[Message]] = {cls.TYPE: cls for cls in _PUSHED}
