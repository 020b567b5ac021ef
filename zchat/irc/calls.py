"""What the IRC state machine asks of zchat (``Call``), and what it asks of the
connection (``Send``, ``Close``): values only. The adapter (zchat/irc/server.py) carries
each ``Call`` out on its ``zchat.client.Client`` and hands the answer back with
``IrcConnection.result`` or ``IrcConnection.failure``."""

from __future__ import annotations

from dataclasses import dataclass

from zchat.irc.codec import Message


@dataclass(frozen=True, slots=True)
class Login:
    name: str
    password: str


@dataclass(frozen=True, slots=True)
class LoginGuest:
    """Log in to the account ``name`` as a guest: the gateway creates it with a password
    of its own, or logs in with that password when it created it before (``[irc]
    guests``, docs/irc.md)."""

    name: str


@dataclass(frozen=True, slots=True)
class RegisterAccount:
    """Create the account ``name`` with ``password`` (REGISTER, docs/PROTOCOL.md §6.2)
    and log the connection in as it (LOGIN): the answer is LOGIN's ``LoggedIn``."""

    name: str
    password: str


@dataclass(frozen=True, slots=True)
class ClaimGuest:
    """The guest account this connection holds becomes an ordinary one: its password
    (the gateway's, kept in memory) is changed to ``password`` (SET_PASSWORD, §6.46) and
    the gateway no longer treats it as a guest's. The answer is None."""

    password: str


@dataclass(frozen=True, slots=True)
class Join:
    room: str


@dataclass(frozen=True, slots=True)
class Part:
    room: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Post:
    room: str
    text: str
    kind: str  # "text" or "action"
    notice: bool = False  # an IRC NOTICE (docs/PROTOCOL.md §6.8)


@dataclass(frozen=True, slots=True)
class DirectMessage:
    to: str
    text: str
    notice: bool = False  # an IRC NOTICE (docs/PROTOCOL.md §6.7)


@dataclass(frozen=True, slots=True)
class SetTopic:
    room: str
    topic: str


@dataclass(frozen=True, slots=True)
class Who:
    room: str | None


@dataclass(frozen=True, slots=True)
class Whois:
    name: str


@dataclass(frozen=True, slots=True)
class ListRooms:
    pass


@dataclass(frozen=True, slots=True)
class RoomInfo:
    room: str


@dataclass(frozen=True, slots=True)
class SetPresence:
    presence: str  # "online" or "away"
    text: str


@dataclass(frozen=True, slots=True)
class Kick:
    room: str
    name: str
    reason: str


@dataclass(frozen=True, slots=True)
class Invite:
    room: str
    name: str


@dataclass(frozen=True, slots=True)
class SetRole:
    room: str
    name: str
    role: str  # "moderator" or "member"


@dataclass(frozen=True, slots=True)
class SetRoom:
    room: str
    private: bool | None = None
    locked: bool | None = None


@dataclass(frozen=True, slots=True)
class Ban:
    """Ban the account ``name`` from ``room`` (BAN, docs/PROTOCOL.md §6.31) for
    ``duration_s`` seconds, 0 until lifted."""

    room: str
    name: str
    duration_s: int = 0


@dataclass(frozen=True, slots=True)
class Unban:
    """Lift the ban of ``name`` in ``room`` (UNBAN, §6.32)."""

    room: str
    name: str


@dataclass(frozen=True, slots=True)
class ListBans:
    """The bans and mutes in force in ``room`` (BANS, §6.40; its moderators only)."""

    room: str


@dataclass(frozen=True, slots=True)
class History:
    """The newest ``limit`` messages of ``room``."""

    room: str
    limit: int


@dataclass(frozen=True, slots=True)
class DmHistory:
    """The newest ``limit`` DMs of the conversation with ``peer``."""

    peer: str
    limit: int


@dataclass(frozen=True, slots=True)
class MarkRead:
    """Move the account's read marker of ``room`` to ``upto`` (a seq): the IRC client
    was given the room's messages up to it (docs/irc.md, "Playback")."""

    room: str
    upto: int


@dataclass(frozen=True, slots=True)
class Ping:
    """A round trip to the broker, and every event heard before its answer passed on
    (an IRC PING is answered after what came before it)."""


@dataclass(frozen=True, slots=True)
class Logout:
    text: str


Request = (Login | LoginGuest | RegisterAccount | ClaimGuest | Join | Part | Post | DirectMessage | SetTopic | Who | Whois
           | ListRooms | RoomInfo | SetPresence | Kick | Invite | SetRole | SetRoom | Ping
           | History | DmHistory | MarkRead | Ban | Unban | ListBans
           | Logout)


@dataclass(frozen=True, slots=True)
class Call:
    """Make ``request`` of zchat; answer with ``result(id, reply)`` or
    ``failure(id, status, reason)``."""

    id: int
    request: Request


@dataclass(frozen=True, slots=True)
class Send:
    """Write ``message`` to the IRC client."""

    message: Message


@dataclass(frozen=True, slots=True)
class Close:
    """Close the IRC connection (after writing what came before)."""

    reason: str


@dataclass(frozen=True, slots=True)
class RelayTagmsg:
    """Show a TAGMSG to the gateway's other IRC connections (zchat carries no tags:
    zchat/irc/relay.py): from ``nick`` to ``target`` (a channel or a nick) with the
    client-only ``tags`` and ``msgid``. The adapter hands it to every other connection's
    ``IrcConnection.relayed_tagmsg``, which shows it where the spec says."""

    nick: str
    target: str
    tags: dict[str, str]
    msgid: str


Action = Call | Send | Close | RelayTagmsg
