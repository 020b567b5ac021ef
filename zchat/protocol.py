"""The zchat wire protocol: message values, frames, the codec, status codes and limits.

This module is pure: it never touches a socket, a clock or a database. Everything here
follows docs/PROTOCOL.md; section numbers in comments refer to that document.

Frames (docs/PROTOCOL.md §3), every message has a fixed frame count:

- request, DEALER -> ROUTER:  [VERSION, request_id, TYPE, body]
- reply,   ROUTER -> DEALER:  [VERSION, request_id, b"OK" | b"ERROR", body]
- push,    ROUTER -> DEALER:  [VERSION, b"", TYPE, body]        (direct messages)
- event,   PUB -> SUB:        [topic, VERSION, TYPE, body]

``body`` is one JSON object in UTF-8. Message values are frozen dataclasses; dicts exist
only inside this codec.
"""

from __future__ import annotations

import dataclasses
import json
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal, Union

from zchat.errors import ProtocolError, Status

#: Protocol signature and version, the first frame of every request/reply/push and the
#: second of every event (§3). A peer speaking another version gets 426.
VERSION = b"ZC1"
VERSION_NUMBER = 1

#: Request ids are opaque to the broker; 32 bytes fit a UUID in hex (§3.1).
MAX_REQUEST_ID_BYTES = 32
#: Largest body the codec accepts in a request (§9). A 4,000-byte message escaped as JSON
#: stays far below it; anything larger is refused with 413 without being parsed.
MAX_BODY_BYTES = 64 * 1024
#: Transport limit set as ZMQ_MAXMSGSIZE on the broker's ROUTER (§9): a peer sending a
#: larger frame is disconnected by libzmq before the broker sees it. Twice MAX_BODY_BYTES,
#: so that a body somewhat over its limit still gets a 413 rather than a silent drop.
#: libzmq buffers a whole multipart message before delivering it and bounds only the size
#: of each frame, not their number: see §9 for what that leaves open.
MAX_TRANSPORT_FRAME_BYTES = 2 * MAX_BODY_BYTES
#: Largest reply body a client accepts (a 500-message history page of long texts).
MAX_REPLY_BYTES = 64 * 1024 * 1024
#: Every JSON integer on the wire is a signed 64-bit value (§9): SQLite and most JSON
#: libraries hold no more, so a larger one is refused with 400 before it reaches them.
MIN_WIRE_INT = -(2**63)
MAX_WIRE_INT = 2**63 - 1
#: Default and largest page of history (§6.9).
DEFAULT_HISTORY_LIMIT = 50
MAX_HISTORY_LIMIT = 500
#: Client message ids (idempotent send, §6.8) are short opaque strings.
MAX_CMID_CHARS = 64
#: Direct-message ids acknowledged in one DM_ACK (§6.7).
MAX_ACK_IDS = 1000
#: DM conversations with unread messages listed in a LOGIN or RESUME reply (``dm_reads``,
#: §6.3), newest first: it bounds that reply (a thousand accounts each writing once), and
#: more unread conversations than that are not read through one by one anyway; the rest
#: stay unread and appear as the listed ones are read.
MAX_DM_READS = 1000
#: Passwords are bytes to scrypt; 1,024 characters is more than any pass-phrase.
MAX_PASSWORD_CHARS = 1024
#: Away message (SET_PRESENCE) and quit message (LOGOUT), in characters (§6.12, §6.4).
MAX_AWAY_TEXT_CHARS = 200
#: A room's topic (its one-line subject, SET_TOPIC §6.22), in characters: long enough for
#: a sentence and a link, short enough for one status line.
MAX_TOPIC_CHARS = 300
#: An account token's label (TOKEN_CREATE §6.24), in characters: a short note such as
#: "deploy bot on ci-3", one line.
MAX_TOKEN_LABEL_CHARS = 100
#: Live account tokens one account may hold (§6.24): plenty for a fleet of bots, and it
#: bounds the constant-time comparison a token LOGIN makes against each of them.
MAX_TOKENS_PER_ACCOUNT = 100
#: Rooms one account may be in (JOIN §6.5, §15): far more than a person follows, and it
#: bounds what every PONG and LOGIN reply lists (a tester's 120,000 joins made each of
#: that account's PINGs cost the broker 2 s).
MAX_ROOMS_PER_ACCOUNT = 1000
#: Longest slow mode of a room (SET_SLOW_MODE §6.28), in seconds: one day, as Discord's
#: longest "slowmode" is six hours and Twitch's two minutes; anything longer is a
#: read-only room, which is another feature.
MAX_SLOW_MODE_S = 86_400
#: A moderation reason (KICK, BAN, MUTE §17), in characters: one line, like a quit message.
MAX_REASON_CHARS = 200
#: Longest timed ban or mute (BAN, MUTE §17), in seconds: ten years; 0 means no expiry.
MAX_BAN_S = 10 * 366 * 86_400
#: Default and largest page of the audit log (AUDIT §6.41).
DEFAULT_AUDIT_LIMIT = 100
MAX_AUDIT_LIMIT = 500
#: Accounts one CREATE_ACCOUNTS may create (§6.42): a class or a team; with passwords of a
#: few dozen characters the request stays far below MAX_BODY_BYTES, and hashing them all
#: (scrypt, one after the other off the loop) takes seconds, not minutes.
MAX_CREATE_ACCOUNTS = 200
#: Largest storage quota (ADMIN_SET_QUOTA §6.53, ``storage_quota_bytes`` §9), in bytes of
#: message text: 1 PiB, more than any disk a broker stores on; a larger one is a typo.
MAX_STORAGE_QUOTA_BYTES = 2**50

Presence = Literal["online", "away", "offline"]
MessageKind = Literal["text", "action"]
Delivery = Literal["live", "stored"]


# ---------------------------------------------------------------------------
# Topics (§5). Names never contain "/", so the trailing "/" terminates the topic:
# subscribing to b"room/dev/" cannot match b"room/devops/".

TOPIC_ROOM_PREFIX = b"room/"
TOPIC_PRESENCE_PREFIX = b"presence/"
TOPIC_TICK = b"tick/"
#: Broker-wide notices (GOING_AWAY, §6.29); every client subscribes to it.
TOPIC_BROKER = b"broker/"


def room_topic(room_key: str) -> bytes:
    """PUB topic of a room's messages, join/leave notices and topic changes; ``room_key``
    is the folded name."""
    return TOPIC_ROOM_PREFIX + room_key.encode() + b"/"


def presence_topic(name_key: str) -> bytes:
    """PUB topic of one account's presence events; ``name_key`` is the folded name."""
    return TOPIC_PRESENCE_PREFIX + name_key.encode() + b"/"


# ---------------------------------------------------------------------------
# Message values. ``TYPE`` is the wire name (frame TYPE); field names are the JSON keys.


@dataclass(frozen=True, slots=True)
class Message:
    """Base of every message value."""

    TYPE: ClassVar[str] = ""


# -- nested values (only inside other messages) -------------------------------------


@dataclass(frozen=True, slots=True)
class RoomState:
    """A room the account belongs to, in the LOGIN reply."""

    room: str
    last_seq: int
    topic: str = ""
    #: The room's slow mode in seconds, 0 when off (SET_SLOW_MODE, §6.28).
    slow_mode_s: int = 0
    #: Invite-only room (§17.2); only moderators post in a locked room (§17.1).
    private: bool = False
    locked: bool = False


@dataclass(frozen=True, slots=True)
class RoomRead:
    """The account's read state in one of its rooms, in the LOGIN and RESUME reply
    (§6.3.1): every message with ``seq <= read_seq`` is read; ``unread`` is the room's
    ``last_seq - read_seq``; ``mentions`` counts the unread messages that name the account
    (§6.49.2)."""

    room: str
    read_seq: int
    unread: int = 0
    mentions: int = 0


@dataclass(frozen=True, slots=True)
class DmRead:
    """The account's read state of one direct conversation, in the LOGIN and RESUME reply
    (§6.3.1): ``peer`` is the other account; DMs with ``id <= read_id`` are read;
    ``last_id`` is the conversation's newest DM (either way); ``unread`` counts the DMs
    from ``peer`` after ``read_id``."""

    peer: str
    last_id: int
    read_id: int
    unread: int


@dataclass(frozen=True, slots=True)
class RoomInfo:
    """One row of the ROOMS reply."""

    room: str
    members: int
    last_seq: int
    joined: bool
    topic: str = ""
    slow_mode_s: int = 0
    private: bool = False
    locked: bool = False


@dataclass(frozen=True, slots=True)
class UserPresence:
    """One row of the WHO reply."""

    name: str
    presence: Presence
    text: str = ""
    bot: bool = False


@dataclass(frozen=True, slots=True)
class TokenInfo:
    """One row of the TOKEN_LIST reply: never the token itself. ``created`` is UTC ms."""

    id: int
    label: str
    created: int


@dataclass(frozen=True, slots=True)
class BanInfo:
    """One row of the BANS reply: a ban or mute in force. ``room`` "" is server-wide;
    ``created`` and ``until`` are UTC ms, ``until`` None for no expiry (§6.40)."""

    kind: Literal["ban", "mute"]
    room: str
    name: str
    by: str
    reason: str
    created: int
    until: int | None = None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One row of the AUDIT reply (§6.41): ``time`` UTC ms; names as displayed."""

    id: int
    time: int
    actor: str
    action: str
    room: str
    target: str
    detail: str


@dataclass(frozen=True, slots=True)
class SessionInfo:
    """One row of the SESSIONS reply (admins only). Times are UTC milliseconds."""

    name: str
    address: str
    login_time: int
    last_seen: int


@dataclass(frozen=True, slots=True)
class AccountInfo:
    """One row of the USERS reply (admins only, §6.42): ``created`` is UTC ms; ``online``
    whether the account has a live session, ``sessions`` how many."""

    name: str
    bot: bool
    disabled: bool
    created: int
    online: bool
    sessions: int = 0
    #: Bytes of message text the account has stored, and its storage quota in force
    #: (0: none) (§6.53).
    stored_bytes: int = 0
    quota_bytes: int = 0


@dataclass(frozen=True, slots=True)
class NewAccount:
    """One account of a CREATE_ACCOUNTS request (§6.43)."""

    name: str
    password: str = field(repr=False)
    bot: bool = False


# -- events and pushes ------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class MessagePosted(Message):
    """A room message (§7). ``seq`` is the room's sequence number, ``time`` the broker's
    UTC clock in milliseconds when it committed the message."""

    TYPE: ClassVar[str] = "MESSAGE"
    room: str
    seq: int
    time: int
    sender: str
    text: str
    kind: MessageKind = "text"
    #: Who deleted the message ("" = not deleted); its ``text`` is then "" (§6.38).
    deleted_by: str = ""


@dataclass(frozen=True, slots=True)
class UserJoined(Message):
    """Notice on the room topic: ``name`` joined ``room``."""

    TYPE: ClassVar[str] = "JOINED"
    room: str
    name: str
    time: int


@dataclass(frozen=True, slots=True)
class UserLeft(Message):
    """Notice on the room topic: ``name`` left ``room``; when ``by`` is set, ``by``
    removed them (KICK, or BAN with ``ban``) for ``reason`` (§6.30)."""

    TYPE: ClassVar[str] = "LEFT"
    room: str
    name: str
    time: int
    by: str = ""
    reason: str = ""
    ban: bool = False
    #: With ``ban``: when the ban lapses (UTC ms); None for no expiry or a kick (§6.19).
    until: int | None = None


@dataclass(frozen=True, slots=True)
class PresenceChanged(Message):
    """An account's presence changed (§8). One event per change, per account."""

    TYPE: ClassVar[str] = "PRESENCE"
    name: str
    presence: Presence
    time: int
    text: str = ""


@dataclass(frozen=True, slots=True)
class TopicChanged(Message):
    """Event on the room topic: ``by`` set ``room``'s topic to ``topic`` ("" cleared it)
    at ``time`` (UTC ms) (§6.23)."""

    TYPE: ClassVar[str] = "TOPIC"
    room: str
    topic: str
    by: str
    time: int


@dataclass(frozen=True, slots=True)
class SlowModeChanged(Message):
    """Event on the room topic: ``by`` set ``room``'s slow mode to ``seconds`` (0 turned
    it off) at ``time`` (UTC ms) (§6.28.1)."""

    TYPE: ClassVar[str] = "SLOW_MODE"
    room: str
    seconds: int
    by: str
    time: int


@dataclass(frozen=True, slots=True)
class MessageDeleted(Message):
    """Event on the room topic: ``by`` deleted message ``seq`` of ``room`` at ``time``
    (UTC ms); clients show it as deleted (§6.38.1)."""

    TYPE: ClassVar[str] = "MESSAGE_DELETED"
    room: str
    seq: int
    by: str
    time: int


@dataclass(frozen=True, slots=True)
class RoomModeChanged(Message):
    """Event on the room topic: ``by`` changed ``room``'s modes (§6.37.1)."""

    TYPE: ClassVar[str] = "ROOM_MODE"
    room: str
    private: bool
    locked: bool
    by: str
    time: int


@dataclass(frozen=True, slots=True)
class RoleChanged(Message):
    """Event on the room topic: ``by`` gave ``name`` the ``role`` in ``room`` (§6.36.1)."""

    TYPE: ClassVar[str] = "ROLE"
    room: str
    name: str
    role: Literal["owner", "moderator", "member"]
    by: str
    time: int


@dataclass(frozen=True, slots=True)
class RoomDeleted(Message):
    """Event on the room topic (a push to each member session for a private room):
    ``by`` deleted ``room`` at ``time`` (UTC ms), with its history and memberships;
    clients stop following it (§6.52.1). ``first_seq`` names which room of that name
    was deleted (as in the JOIN reply, §6.5): a client that already joined a new room
    of the name when a late ROOM_DELETED of the old one reaches it keeps following."""

    TYPE: ClassVar[str] = "ROOM_DELETED"
    room: str
    by: str
    time: int
    reason: str = ""
    first_seq: int = 1


@dataclass(frozen=True, slots=True)
class Invited(Message):
    """Push to each session of an invitee: ``by`` invited you to ``room`` (§6.35.1)."""

    TYPE: ClassVar[str] = "INVITED"
    room: str
    by: str
    time: int


@dataclass(frozen=True, slots=True)
class MuteChanged(Message):
    """Push to each session of the account muted (``muted``) or unmuted in ``room`` (""
    = server-wide) by ``by`` at ``time`` (UTC ms); a mute lapses at ``until`` (UTC ms,
    None = until lifted) (§6.33.1)."""

    TYPE: ClassVar[str] = "MUTED"
    room: str
    muted: bool
    by: str
    time: int
    reason: str = ""
    until: int | None = None


@dataclass(frozen=True, slots=True)
class SessionClosed(Message):
    """Push to a session the broker is ending on someone's order (an admin's password
    reset, disable or server-wide ban; the account's own password change): ``by`` ended
    it at ``time`` (UTC ms) because ``reason``. Nothing follows on it (§6.47)."""

    TYPE: ClassVar[str] = "SESSION_CLOSED"
    reason: str
    by: str
    time: int


@dataclass(frozen=True, slots=True)
class Tick(Message):
    """The broker's heartbeat on PUB, every heartbeat interval (§10)."""

    TYPE: ClassVar[str] = "TICK"
    time: int


@dataclass(frozen=True, slots=True)
class GoingAway(Message):
    """Event on TOPIC_BROKER: the broker is shutting down at ``time`` (UTC ms); ``text``
    says why. Clients reconnect with back-off and resume their session (§6.29)."""

    TYPE: ClassVar[str] = "GOING_AWAY"
    text: str
    time: int


@dataclass(frozen=True, slots=True)
class DirectMessage(Message):
    """A direct message, pushed over the ROUTER to each session of ``to`` (and to the
    sender's other sessions); never published on PUB (§6.7)."""

    TYPE: ClassVar[str] = "DM"
    id: int
    time: int
    sender: str
    to: str
    text: str


@dataclass(frozen=True, slots=True)
class ReadMarked(Message):
    """Push to the account's other sessions: one of them moved a read marker (MARK_READ,
    §6.49.1), so that every device shows the same unread counts. Exactly one of ``room``
    and ``peer`` is set; ``upto`` is the marker now (a room's seq or a DM id), ``unread``
    and ``mentions`` what is left unread after it, up to ``last``."""

    TYPE: ClassVar[str] = "READ"
    room: str
    peer: str
    upto: int
    unread: int
    mentions: int = 0
    #: The conversation's newest position when the marker moved (the room's last_seq, or
    #: the conversation's newest DM id), so that a receiver counts what arrives after it
    #: and not what it already counted; 0: not said.
    last: int = 0


# -- replies ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Reply(Message):
    """Base of the bodies of an OK reply."""

    TYPE: ClassVar[str] = "OK"


@dataclass(frozen=True, slots=True)
class Ok(Reply):
    """An OK with no fields (LOGOUT, PART, SET_PRESENCE, SET_TOPIC)."""


@dataclass(frozen=True, slots=True)
class InfoReply(Reply):
    version: int
    pub: str
    time: int
    heartbeat_interval_ms: int
    heartbeat_timeout_ms: int
    max_text_bytes: int
    #: Most lines of a message text (docs/PROTOCOL.md §6.1, §12); 0 from a broker that
    #: does not say (older than the field): no bound known.
    max_text_lines: int = 0
    #: The shortest new password the broker accepts, in characters (§6.2); 0 from an
    #: older broker that does not say (it checks only that a password is not empty).
    min_password_chars: int = 0


@dataclass(frozen=True, slots=True)
class Registered(Reply):
    name: str


@dataclass(frozen=True, slots=True)
class LoggedIn(Reply):
    name: str
    session: str
    rooms: tuple[RoomState, ...]
    pending: tuple[DirectMessage, ...] = ()
    #: Read state (§6.3.1): one RoomRead per room of ``rooms``, and the DM conversations
    #: with unread messages, newest first (at most MAX_DM_READS).
    room_reads: tuple[RoomRead, ...] = ()
    dm_reads: tuple[DmRead, ...] = ()


@dataclass(frozen=True, slots=True)
class RoomJoined(Reply):
    room: str
    last_seq: int
    created: bool
    topic: str = ""
    slow_mode_s: int = 0
    private: bool = False
    locked: bool = False
    #: The seq of this room's first message: 1, or one past a deleted room of the same
    #: name (§6.52), which tells this room from that one.
    first_seq: int = 1


@dataclass(frozen=True, slots=True)
class RoomList(Reply):
    rooms: tuple[RoomInfo, ...]


@dataclass(frozen=True, slots=True)
class RoomDetails(Reply):
    """ROOM_INFO's reply: one room as a row of ROOMS shows it (§6.51)."""

    room: str
    members: int
    last_seq: int
    joined: bool
    topic: str = ""
    slow_mode_s: int = 0
    private: bool = False
    locked: bool = False


@dataclass(frozen=True, slots=True)
class Sent(Reply):
    room: str
    seq: int
    time: int


@dataclass(frozen=True, slots=True)
class DmSent(Reply):
    id: int
    time: int
    delivered: Delivery
    #: The recipient's name as registered ("" from a broker before this field).
    to: str = ""


@dataclass(frozen=True, slots=True)
class HistoryPage(Reply):
    room: str
    messages: tuple[MessagePosted, ...]


@dataclass(frozen=True, slots=True)
class DmHistoryPage(Reply):
    """DM_HISTORY's reply (§6.48): the conversation with ``peer``, ascending by id."""

    peer: str
    messages: tuple[DirectMessage, ...]


@dataclass(frozen=True, slots=True)
class ReadState(Reply):
    """MARK_READ's reply (§6.49): the marker after the request, as the READ push says it
    to the account's other sessions."""

    room: str
    peer: str
    upto: int
    unread: int
    mentions: int = 0
    last: int = 0


@dataclass(frozen=True, slots=True)
class WhoList(Reply):
    users: tuple[UserPresence, ...]


@dataclass(frozen=True, slots=True)
class UserFound(Reply):
    """WHOIS's reply (§6.50): the account's name as registered, presence, away message
    and bot flag, as a row of WHO."""

    name: str
    presence: Presence
    text: str = ""
    bot: bool = False


@dataclass(frozen=True, slots=True)
class Pong(Reply):
    """PING's reply: the broker's time and, for a logged-in session, the last sequence
    number of every room the account is in, so that a client notices within one heartbeat
    a room message it never received (§10)."""

    time: int
    rooms: tuple[RoomState, ...] = ()
    #: The asking connection's session id (LOGIN's ``session``), "" without a session, so
    #: that a client notices its session is gone (broker restarted, session evicted) even
    #: when the transport reconnected by itself. None: the broker did not say (§6.13).
    session: str | None = None
    #: False when ``rooms`` was left out (the account's reading budget is spent, §15.1):
    #: then ``rooms`` says nothing of the account's rooms (§6.13).
    listed: bool = True


@dataclass(frozen=True, slots=True)
class SessionList(Reply):
    sessions: tuple[SessionInfo, ...]


@dataclass(frozen=True, slots=True)
class TokenCreated(Reply):
    """TOKEN_CREATE's reply: ``token`` is the secret, sent this once and never again (the
    broker keeps only its SHA-256) (§6.24)."""

    token: str = field(repr=False)
    id: int
    label: str


@dataclass(frozen=True, slots=True)
class TokenList(Reply):
    tokens: tuple[TokenInfo, ...]


@dataclass(frozen=True, slots=True)
class BanList(Reply):
    bans: tuple[BanInfo, ...]


@dataclass(frozen=True, slots=True)
class AuditList(Reply):
    entries: tuple[AuditEntry, ...]


@dataclass(frozen=True, slots=True)
class UserList(Reply):
    users: tuple[AccountInfo, ...]


@dataclass(frozen=True, slots=True)
class AccountsCreated(Reply):
    """CREATE_ACCOUNTS' reply: the display names created, in the request's order."""

    names: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class QuotaSet(Reply):
    """ADMIN_SET_QUOTA's reply (§6.53): the account's display name, the quota now in force
    (bytes of message text; 0 none), whether it is the broker's default
    (``storage_quota_bytes``) rather than its own, and the bytes it has stored."""

    name: str
    quota_bytes: int
    default: bool
    stored_bytes: int


@dataclass(frozen=True, slots=True)
class Error(Message):
    """An ERROR reply: a 3-digit status (§11) and a human-readable reason."""

    TYPE: ClassVar[str] = "ERROR"
    status: int
    reason: str
    retry_after_ms: int = 0


# -- requests ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Request(Message):
    """Base of requests. ``REPLY`` is the OK body type; ``NEEDS_SESSION`` whether the
    request is refused with 401 before LOGIN."""

    REPLY: ClassVar[type[Reply]] = Ok
    NEEDS_SESSION: ClassVar[bool] = True


@dataclass(frozen=True, slots=True)
class Info(Request):
    TYPE: ClassVar[str] = "INFO"
    REPLY: ClassVar[type[Reply]] = InfoReply
    NEEDS_SESSION: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class Register(Request):
    TYPE: ClassVar[str] = "REGISTER"
    REPLY: ClassVar[type[Reply]] = Registered
    NEEDS_SESSION: ClassVar[bool] = False
    name: str
    password: str = field(repr=False)
    #: The account is a bot (shown in WHO's ``bot``); declared by the registrant (§6.2).
    bot: bool = False


@dataclass(frozen=True, slots=True)
class Login(Request):
    """Log in with exactly one of ``password`` and ``token`` (an account token, §6.24);
    both or neither is 400 (§6.3)."""

    TYPE: ClassVar[str] = "LOGIN"
    REPLY: ClassVar[type[Reply]] = LoggedIn
    NEEDS_SESSION: ClassVar[bool] = False
    name: str
    password: str = field(default="", repr=False)
    token: str = field(default="", repr=False)


@dataclass(frozen=True, slots=True)
class Logout(Request):
    """End this connection's session; ``text`` is a quit message, carried by the offline
    PRESENCE event when this was the account's last session (§6.4)."""

    TYPE: ClassVar[str] = "LOGOUT"
    text: str = ""


@dataclass(frozen=True, slots=True)
class Join(Request):
    TYPE: ClassVar[str] = "JOIN"
    REPLY: ClassVar[type[Reply]] = RoomJoined
    room: str
    #: Create the room invite-only (§17.2); ignored when the room exists.
    private: bool = False


@dataclass(frozen=True, slots=True)
class Part(Request):
    TYPE: ClassVar[str] = "PART"
    room: str


@dataclass(frozen=True, slots=True)
class ListRooms(Request):
    TYPE: ClassVar[str] = "ROOMS"
    REPLY: ClassVar[type[Reply]] = RoomList


@dataclass(frozen=True, slots=True)
class FetchRoom(Request):
    """Read one room's state (topic, modes, members, last seq) without joining it:
    public rooms for any session, private ones for members and admins (§6.51)."""

    TYPE: ClassVar[str] = "ROOM_INFO"
    REPLY: ClassVar[type[Reply]] = RoomDetails
    room: str


@dataclass(frozen=True, slots=True)
class Send(Request):
    TYPE: ClassVar[str] = "SEND"
    REPLY: ClassVar[type[Reply]] = Sent
    room: str
    text: str
    kind: MessageKind = "text"
    cmid: str = ""


@dataclass(frozen=True, slots=True)
class SendDirect(Request):
    TYPE: ClassVar[str] = "DM"
    REPLY: ClassVar[type[Reply]] = DmSent
    to: str
    text: str
    #: Client message id: a retry with the same cmid is stored at most once (§6.7).
    cmid: str = ""


@dataclass(frozen=True, slots=True)
class FetchHistory(Request):
    TYPE: ClassVar[str] = "HISTORY"
    REPLY: ClassVar[type[Reply]] = HistoryPage
    room: str
    before: int | None = None
    after: int | None = None
    limit: int = DEFAULT_HISTORY_LIMIT


@dataclass(frozen=True, slots=True)
class FetchDmHistory(Request):
    """A page of the logged-in account's direct conversation with ``peer`` (§6.48):
    bounds are DM ids, exclusive; at most one of them."""

    TYPE: ClassVar[str] = "DM_HISTORY"
    REPLY: ClassVar[type[Reply]] = DmHistoryPage
    peer: str
    before: int | None = None
    after: int | None = None
    limit: int = DEFAULT_HISTORY_LIMIT


@dataclass(frozen=True, slots=True)
class MarkRead(Request):
    """Move the account's read marker of ``room`` (a seq) or of the direct conversation
    with ``peer`` (a DM id) forward to ``upto`` (§6.49); exactly one of ``room`` and
    ``peer``."""

    TYPE: ClassVar[str] = "MARK_READ"
    REPLY: ClassVar[type[Reply]] = ReadState
    upto: int
    room: str = ""
    peer: str = ""


@dataclass(frozen=True, slots=True)
class Who(Request):
    TYPE: ClassVar[str] = "WHO"
    REPLY: ClassVar[type[Reply]] = WhoList
    room: str | None = None


@dataclass(frozen=True, slots=True)
class Whois(Request):
    """Look one account up by name, offline ones too (§6.50)."""

    TYPE: ClassVar[str] = "WHOIS"
    REPLY: ClassVar[type[Reply]] = UserFound
    name: str


@dataclass(frozen=True, slots=True)
class SetPresence(Request):
    TYPE: ClassVar[str] = "SET_PRESENCE"
    presence: Literal["online", "away"]
    text: str = ""


@dataclass(frozen=True, slots=True)
class SetTopic(Request):
    """Set a room's topic, members only; "" clears it (§6.22)."""

    TYPE: ClassVar[str] = "SET_TOPIC"
    room: str
    topic: str


@dataclass(frozen=True, slots=True)
class Ping(Request):
    TYPE: ClassVar[str] = "PING"
    REPLY: ClassVar[type[Reply]] = Pong
    NEEDS_SESSION: ClassVar[bool] = False


@dataclass(frozen=True, slots=True)
class ListSessions(Request):
    TYPE: ClassVar[str] = "SESSIONS"
    REPLY: ClassVar[type[Reply]] = SessionList


@dataclass(frozen=True, slots=True)
class AckDirect(Request):
    """The recipient's client has handed these direct messages to its application: the
    broker stops keeping them for the next login (§6.7)."""

    TYPE: ClassVar[str] = "DM_ACK"
    ids: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class CreateToken(Request):
    """Create an account token for the logged-in account (§6.24)."""

    TYPE: ClassVar[str] = "TOKEN_CREATE"
    REPLY: ClassVar[type[Reply]] = TokenCreated
    label: str


@dataclass(frozen=True, slots=True)
class ListTokens(Request):
    """List the logged-in account's live tokens (§6.25)."""

    TYPE: ClassVar[str] = "TOKEN_LIST"
    REPLY: ClassVar[type[Reply]] = TokenList


@dataclass(frozen=True, slots=True)
class RevokeToken(Request):
    """Revoke one of the logged-in account's tokens by id (§6.26)."""

    TYPE: ClassVar[str] = "TOKEN_REVOKE"
    id: int


@dataclass(frozen=True, slots=True)
class Resume(Request):
    """Take over a live (or, after a broker restart, a stored) session by its ``session``
    token from LOGIN, on a new connection, without a password and without presence
    events (§6.27)."""

    TYPE: ClassVar[str] = "RESUME"
    REPLY: ClassVar[type[Reply]] = LoggedIn
    NEEDS_SESSION: ClassVar[bool] = False
    session: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class SetSlowMode(Request):
    """Set a room's slow mode: each member may post at most one message per ``seconds``
    (0 turns it off) (§6.28)."""

    TYPE: ClassVar[str] = "SET_SLOW_MODE"
    room: str
    seconds: int


# -- moderation (§17) ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Kick(Request):
    """Remove ``name`` from ``room``; they may JOIN again unless banned (§6.30)."""

    TYPE: ClassVar[str] = "KICK"
    room: str
    name: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class Ban(Request):
    """Ban ``name`` from ``room`` ("" = the whole server) for ``duration_s`` (0 = until
    lifted) (§6.31)."""

    TYPE: ClassVar[str] = "BAN"
    name: str
    room: str = ""
    reason: str = ""
    duration_s: int = 0


@dataclass(frozen=True, slots=True)
class Unban(Request):
    """Lift the ban of ``name`` in ``room`` ("" = server-wide) (§6.32)."""

    TYPE: ClassVar[str] = "UNBAN"
    name: str
    room: str = ""


@dataclass(frozen=True, slots=True)
class Mute(Request):
    """Forbid ``name`` to post in ``room`` ("" = everywhere) for ``duration_s`` (0 = until
    lifted) (§6.33)."""

    TYPE: ClassVar[str] = "MUTE"
    name: str
    room: str = ""
    reason: str = ""
    duration_s: int = 0


@dataclass(frozen=True, slots=True)
class Unmute(Request):
    """Lift the mute of ``name`` in ``room`` ("" = server-wide) (§6.34)."""

    TYPE: ClassVar[str] = "UNMUTE"
    name: str
    room: str = ""


@dataclass(frozen=True, slots=True)
class Invite(Request):
    """Invite ``name`` to ``room``, so that they may JOIN it while it is private (§6.35)."""

    TYPE: ClassVar[str] = "INVITE"
    room: str
    name: str


@dataclass(frozen=True, slots=True)
class SetRole(Request):
    """Make ``name`` a moderator of ``room`` or a plain member again (§6.36)."""

    TYPE: ClassVar[str] = "SET_ROLE"
    room: str
    name: str
    role: Literal["moderator", "member"]


@dataclass(frozen=True, slots=True)
class SetRoom(Request):
    """Change ``room``'s modes: ``private`` (invite-only), ``locked`` (only moderators
    post); None leaves a mode as it is (§6.37)."""

    TYPE: ClassVar[str] = "SET_ROOM"
    room: str
    private: bool | None = None
    locked: bool | None = None


@dataclass(frozen=True, slots=True)
class DeleteMessage(Request):
    """Delete message ``seq`` of ``room`` (§6.38)."""

    TYPE: ClassVar[str] = "DELETE_MESSAGE"
    room: str
    seq: int


@dataclass(frozen=True, slots=True)
class DeleteRoom(Request):
    """Delete ``room`` with its history, members, roles, invitations and bans: its owner
    (from inside) or a broker admin; never ``lobby`` (§6.52). ``reason`` is shown to
    the members."""

    TYPE: ClassVar[str] = "DELETE_ROOM"
    room: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class ListBans(Request):
    """The bans and mutes in force: of ``room`` ("" = server-wide ones), or all (None)
    (§6.40)."""

    TYPE: ClassVar[str] = "BANS"
    REPLY: ClassVar[type[Reply]] = BanList
    room: str | None = None


@dataclass(frozen=True, slots=True)
class ReadAudit(Request):
    """Read the audit log, newest first, filtered (§6.41)."""

    TYPE: ClassVar[str] = "AUDIT"
    REPLY: ClassVar[type[Reply]] = AuditList
    room: str | None = None
    actor: str = ""
    target: str = ""
    action: str = ""
    before: int | None = None
    limit: int = DEFAULT_AUDIT_LIMIT


# -- operator tools (§6.42-§6.46) ------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ListUsers(Request):
    """Every account with its state (admins only, §6.42)."""

    TYPE: ClassVar[str] = "USERS"
    REPLY: ClassVar[type[Reply]] = UserList


@dataclass(frozen=True, slots=True)
class CreateAccounts(Request):
    """Create several accounts at once, all or none (admins only, §6.43)."""

    TYPE: ClassVar[str] = "CREATE_ACCOUNTS"
    REPLY: ClassVar[type[Reply]] = AccountsCreated
    accounts: tuple[NewAccount, ...]


@dataclass(frozen=True, slots=True)
class AdminSetPassword(Request):
    """Give ``name`` a new password and end its sessions (admins only, §6.44)."""

    TYPE: ClassVar[str] = "ADMIN_SET_PASSWORD"
    name: str
    password: str = field(repr=False)


@dataclass(frozen=True, slots=True)
class SetDisabled(Request):
    """Disable (``disabled`` true, ending its sessions) or enable again the account
    ``name`` (admins only, §6.45)."""

    TYPE: ClassVar[str] = "ADMIN_DISABLE"
    name: str
    disabled: bool = True


@dataclass(frozen=True, slots=True)
class SetQuota(Request):
    """Give the account ``name`` a storage quota of its own, ``quota_bytes`` of message
    text (0: no quota), or with None make it follow the broker's default again (admins
    only, §6.53)."""

    TYPE: ClassVar[str] = "ADMIN_SET_QUOTA"
    REPLY: ClassVar[type[Reply]] = QuotaSet
    name: str
    quota_bytes: int | None


@dataclass(frozen=True, slots=True)
class SetPassword(Request):
    """Change the logged-in account's own password from ``old`` to ``new`` (§6.46)."""

    TYPE: ClassVar[str] = "SET_PASSWORD"
    old: str = field(repr=False)
    new: str = field(repr=False)


REQUEST_TYPES: dict[str, type[Request]] = {
    cls.TYPE: cls
    for cls in (Info, Register, Login, Logout, Join, Part, ListRooms, Send, SendDirect,
                FetchHistory, Who, SetPresence, Ping, ListSessions, SetTopic, AckDirect,
                CreateToken, ListTokens, RevokeToken, Resume, SetSlowMode, Kick, Ban, Unban,
                Mute, Unmute, Invite, SetRole, SetRoom, DeleteMessage, ListBans, ReadAudit,
                ListUsers, CreateAccounts, AdminSetPassword, SetDisabled, SetPassword,
                FetchDmHistory, MarkRead, Whois, FetchRoom, DeleteRoom, SetQuota)
}
#: Events of a room, published on its topic, or pushed to each member session instead
#: when the room is private (§17.2).
ROOM_EVENT_TYPES: tuple[type[Message], ...] = (
    MessagePosted, UserJoined, UserLeft, TopicChanged, SlowModeChanged, MessageDeleted,
    RoomModeChanged, RoleChanged, RoomDeleted)
EVENT_TYPES: dict[str, type[Message]] = {
    cls.TYPE: cls for cls in (MessagePosted, UserJoined, UserLeft, PresenceChanged, Tick,
                              TopicChanged, GoingAway, SlowModeChanged, MessageDeleted,
                              RoomModeChanged, RoleChanged, RoomDeleted)
}
_PUSHED: tuple[type[Message], ...] = (DirectMessage, Invited, MuteChanged, SessionClosed,
                                      ReadMarked, *ROOM_EVENT_TYPES)
PUSH_TYPES: dict[str, type[Message]] = {cls.TYPE: cls for cls in _PUSHED}


# ---------------------------------------------------------------------------
# Codec: message value <-> JSON body. Field types are checked against the annotations.

#: A compiled field check: (value, where, strict) -> the value, or ProtocolError(400).
_Checker = Callable[[Any, str, bool], Any]
#: Per message class, compiled once from its annotations: the fields as (name, check,
#: required), and the encoding plan as (name, how): 0 as is, 1 a tuple of message
#: values, 2 a message value or None.
_FIELDS: dict[type, list[tuple[str, _Checker, bool]]] = {}
_PLANS: dict[type, list[tuple[str, int]]] = {}
_NAMES: dict[type, frozenset[str]] = {}


def _is_message_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _fields(cls: type) -> list[tuple[str, _Checker, bool]]:
    fields = _FIELDS.get(cls)
    if fields is None:
        hints = typing.get_type_hints(cls)
        fields = [
            (f.name, _checker(hints[f.name]),
             f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
        ]
        _FIELDS[cls] = fields
        _NAMES[cls] = frozenset(name for name, _c, _r in fields)
    return fields


def _plan(cls: type) -> list[tuple[str, int]]:
    plan = _PLANS.get(cls)
    if plan is None:
        hints = typing.get_type_hints(cls)
        plan = []
        for f in dataclasses.fields(cls):
            tp = hints[f.name]
            args = typing.get_args(tp)
            if typing.get_origin(tp) is tuple and any(_is_message_type(a) for a in args):
                plan.append((f.name, 1))
            elif _is_message_type(tp) or any(_is_message_type(a) for a in args):
                plan.append((f.name, 2))
            else:
                plan.append((f.name, 0))
        _PLANS[cls] = plan
    return plan


def to_dict(value: Any) -> dict[str, Any]:
    """A message value as the JSON-ready dict the wire carries (nested values included;
    a tuple of plain values stays a tuple, which JSON writes as an array)."""
    out: dict[str, Any] = {}
    for name, how in _plan(type(value)):
        v = getattr(value, name)
        if how == 1:
            v = [to_dict(x) if dataclasses.is_dataclass(x) else x for x in v]
        elif how == 2 and v is not None:
            v = to_dict(v)
        out[name] = v
    return out


def _checker(tp: Any) -> _Checker:
    """Compile the check of one annotated type (once per field, not per message).
    Raises TypeError for a type the codec cannot carry (our own bug, not the peer's)."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return lambda value, where, strict: value
    if origin is Union or origin is types.UnionType:
        nullable = type(None) in typing.get_args(tp)
        alts = [_checker(alt) for alt in typing.get_args(tp) if alt is not type(None)]

        def check_union(value: Any, where: str, strict: bool) -> Any:
            if nullable and value is None:
                return None
            for alt in alts:
                try:
                    return alt(value, where, strict)
                except ProtocolError as exc:
                    if len(alts) == 1:  # an optional field: the one type's own reason
                        raise ProtocolError(Status.BAD_REQUEST,
                                            exc.reason.replace(" must be ", " must be null or ")
                                            if "must be" in exc.reason else exc.reason) from None
            raise ProtocolError(Status.BAD_REQUEST, f"field {where} has the wrong type")
        return check_union
    if origin is Literal:
        allowed_values = typing.get_args(tp)
        allowed = ", ".join(repr(a) for a in allowed_values)

        def check_literal(value: Any, where: str, strict: bool) -> Any:
            if isinstance(value, str) and value in allowed_values:
                return value
            raise ProtocolError(Status.BAD_REQUEST, f"field {where} must be one of {allowed}")
        return check_literal
    if origin is tuple:
        item = _checker(typing.get_args(tp)[0])

        def check_tuple(value: Any, where: str, strict: bool) -> Any:
            if not isinstance(value, list):
                raise ProtocolError(Status.BAD_REQUEST, f"field {where} must be a list")
            return tuple(item(v, f"{where}[{i}]", strict) for i, v in enumerate(value))
        return check_tuple
    if tp is bool:
        def check_bool(value: Any, where: str, strict: bool) -> Any:
            if isinstance(value, bool):
                return value
            raise ProtocolError(Status.BAD_REQUEST, f"field {where} must be a boolean")
        return check_bool
    if tp is int:
        def check_int(value: Any, where: str, strict: bool) -> Any:
            if isinstance(value, int) and not isinstance(value, bool):
                if not MIN_WIRE_INT <= value <= MAX_WIRE_INT:
                    raise ProtocolError(Status.BAD_REQUEST, f"field {where} is out of range")
                return value
            raise ProtocolError(Status.BAD_REQUEST, f"field {where} must be an integer")
        return check_int
    if tp is str:
        def check_str(value: Any, where: str, strict: bool) -> Any:
            return _checked_str(value, where)
        return check_str
    if _is_message_type(tp):
        def check_message(value: Any, where: str, strict: bool) -> Any:
            if not isinstance(value, dict):
                raise ProtocolError(Status.BAD_REQUEST, f"field {where} must be an object")
            return from_dict(tp, value, where + ".", strict)
        return check_message
    raise TypeError(f"codec cannot check type {tp!r}")  # our own bug, not the peer's


def from_dict(cls: type[Any], data: dict[str, Any], prefix: str = "",
              strict: bool = True) -> Any:
    """Build ``cls`` from a decoded JSON object.

    Raises ProtocolError(400) on a missing required field or a field of the wrong type,
    and, when ``strict`` (the broker reading requests), on an unknown field, so that typos
    never pass silently. Clients read replies and events with ``strict=False`` and ignore
    unknown fields, so a broker may add fields to them without breaking clients (§13).
    The first fault found is reported: an unknown field (in the object's key order), then
    the fields in declaration order, each either missing or of the wrong type or range.
    """
    fast = _FAST_FROM_DICT.get(cls)
    if fast is not None:
        return fast(data, prefix, strict)
    return _from_dict_generic(cls, data, prefix, strict)


def _from_dict_generic(cls: type[Any], data: dict[str, Any], prefix: str = "",
                       strict: bool = True) -> Any:
    """``from_dict`` for any message class, driven by its compiled field checks; the fast
    paths of _FAST_FROM_DICT must agree with it exactly (tests/test_fast_paths.py)."""
    kwargs: dict[str, Any] = {}
    fields = _fields(cls)
    if strict:
        known = _NAMES[cls]
        for key in data:
            if key not in known:
                raise ProtocolError(Status.BAD_REQUEST, f"unknown field {prefix}{key}")
    for name, check, required in fields:
        if name in data:
            kwargs[name] = check(data[name], prefix + name, strict)
        elif required:
            raise ProtocolError(Status.BAD_REQUEST, f"missing field {prefix}{name}")
    return cls(**kwargs)


def encode_body(value: Message) -> bytes:
    """The JSON body of a message value, UTF-8, no insignificant whitespace.

    Raises ProtocolError(400) when a string in it is not valid Unicode (a lone surrogate,
    e.g. a command-line argument that was not UTF-8, decoded with ``surrogateescape``).
    The two bodies every SEND writes (MessagePosted, Sent) and the HISTORY reply take a
    fast path of _FAST_JSON that writes the very same bytes (tests/test_fast_paths.py).
    """
    fast = _FAST_JSON.get(type(value))
    text = None if fast is None else fast(value)
    return _utf8_body(value, _ENCODER.encode(to_dict(value)) if text is None else text)


def _generic_encode_body(value: Message) -> bytes:
    """``encode_body`` without the fast paths: the reference they must match."""
    return _utf8_body(value, _ENCODER.encode(to_dict(value)))


def _utf8_body(value: Message, text: str) -> bytes:
    """``text`` (the JSON of ``value``) in UTF-8; ProtocolError(400) for a lone surrogate."""
    try:
        return text.encode()
    except UnicodeEncodeError:
        raise ProtocolError(Status.BAD_REQUEST,
                            f"{value.TYPE} holds text that is not valid Unicode") from None


# -- fast paths of SEND (issue 7) ---------------------------------------------------------
# A SEND decodes one Send and encodes one MessagePosted and one Sent; through the generic
# codec that was about a quarter of the broker core's CPU per SEND (docs/PERFORMANCE.md).
# These write and read the same bytes, values and errors as the generic path, which
# tests/test_fast_paths.py checks over thousands of random and adversarial values. A field
# added to one of these classes makes those tests fail until its fast path learns it.

#: What _ENCODER writes for a str (ensure_ascii=False: '"', '\\' and control characters
#: escaped, the rest as is); its C encoder calls this same function for each str in a dict.
_encode_str = json.encoder.encode_basestring


def _message_posted_json(value: MessagePosted) -> str | None:
    """``_ENCODER.encode(to_dict(value))``, written directly; None when a field is not of
    its annotated type (a bool or float in an int field...): the generic path writes it."""
    seq = value.seq
    time = value.time
    if type(seq) is not int or type(time) is not int:
        return None
    try:
        return (f'{{"room":{_encode_str(value.room)},"seq":{seq},"time":{time},'
                f'"sender":{_encode_str(value.sender)},"text":{_encode_str(value.text)},'
                f'"kind":{_encode_str(value.kind)},'
                f'"deleted_by":{_encode_str(value.deleted_by)}}}')
    except TypeError:  # a str field holding something else
        return None


def _sent_json(value: Sent) -> str | None:
    """``_ENCODER.encode(to_dict(value))`` of SEND's reply, as _message_posted_json."""
    seq = value.seq
    time = value.time
    if type(seq) is not int or type(time) is not int:
        return None
    try:
        return f'{{"room":{_encode_str(value.room)},"seq":{seq},"time":{time}}}'
    except TypeError:
        return None


def _history_page_json(value: HistoryPage) -> str | None:
    """The HISTORY reply (up to 500 MessagePosted), as _message_posted_json: the page's
    encoding was half of a HISTORY's CPU in the broker core (docs/PERFORMANCE.md)."""
    messages = value.messages
    if type(messages) is not tuple:
        return None
    try:
        room = _encode_str(value.room)  # first, as the generic path meets it first
    except TypeError:
        return None
    parts = []
    for message in messages:
        if type(message) is not MessagePosted:
            return None
        part = _message_posted_json(message)
        if part is None:
            return None
        parts.append(part)
    return f'{{"room":{room},"messages":[{",".join(parts)}]}}'


#: Message class -> its body's JSON text, or None to take the generic path.
_FAST_JSON: dict[type, Callable[[Any], str | None]] = {
    MessagePosted: _message_posted_json,
    Sent: _sent_json,
    HistoryPage: _history_page_json,
}

_SEND_FIELDS = frozenset(("room", "text", "kind", "cmid"))
_MESSAGE_KINDS: tuple[str, ...] = typing.get_args(MessageKind)
_KIND_CHOICES = ", ".join(repr(k) for k in _MESSAGE_KINDS)
_ABSENT: Any = object()


def _checked_str(value: Any, where: str) -> str:
    """The str check (of ``_checker`` and the fast paths): ``value`` when it is a str of
    valid Unicode, else ProtocolError(400) naming the field ``where``."""
    if isinstance(value, str):
        if not value.isascii():
            try:
                value.encode("utf-8")  # JSON's "\ud800" escape: a lone surrogate
            except UnicodeEncodeError:
                raise ProtocolError(Status.BAD_REQUEST,
                                    f"field {where} is not valid Unicode") from None
        return value
    raise ProtocolError(Status.BAD_REQUEST, f"field {where} must be a string")


def _send_from_dict(data: dict[str, Any], prefix: str, strict: bool) -> Send:
    """``_from_dict_generic(Send, data, prefix, strict)`` by hand: the same value, or the
    same ProtocolError(400) found in the same order (unknown field in key order, then
    room, text, kind, cmid)."""
    if strict and not _SEND_FIELDS.issuperset(data):
        for key in data:
            if key not in _SEND_FIELDS:
                raise ProtocolError(Status.BAD_REQUEST, f"unknown field {prefix}{key}")
    room = data.get("room", _ABSENT)
    if type(room) is not str or not room.isascii():
        if room is _ABSENT:
            raise ProtocolError(Status.BAD_REQUEST, f"missing field {prefix}room")
        room = _checked_str(room, prefix + "room")
    text = data.get("text", _ABSENT)
    if type(text) is not str or not text.isascii():
        if text is _ABSENT:
            raise ProtocolError(Status.BAD_REQUEST, f"missing field {prefix}text")
        text = _checked_str(text, prefix + "text")
    kind = data.get("kind", "text")
    if not (isinstance(kind, str) and kind in _MESSAGE_KINDS):
        raise ProtocolError(Status.BAD_REQUEST,
                            f"field {prefix}kind must be one of {_KIND_CHOICES}")
    cmid = data.get("cmid", "")
    if type(cmid) is not str or not cmid.isascii():
        cmid = _checked_str(cmid, prefix + "cmid")
    return Send(room, text, typing.cast(MessageKind, kind), cmid)


#: Message class -> its from_dict by hand, taken by ``from_dict`` instead of the generic.
_FAST_FROM_DICT: dict[type, Callable[[dict[str, Any], str, bool], Any]] = {
    Send: _send_from_dict,
}


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a repeated key are refused (§3: senders MUST NOT repeat keys):
    which value wins would otherwise depend on the parser."""
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("repeated key")
    return out


def _no_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity are not JSON (RFC 8259); Python's parser accepts them."""
    raise ValueError(f"{name} is not JSON")


#: One encoder and one decoder for every body (json.dumps/loads with options build a new
#: one per call).
_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))
_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicate_keys, parse_constant=_no_constant)
#: _DECODER's scanner: (text, index) -> (value, end index) of the JSON value at index;
#: StopIteration when none starts there, ValueError when it is malformed.
_SCAN_JSON = typing.cast(Callable[[str, int], tuple[Any, int]], vars(_DECODER)["scan_once"])


def decode_body(cls: type[Any], body: bytes, limit: int = MAX_BODY_BYTES,
                strict: bool = True) -> Any:
    """Parse a JSON body into ``cls`` (``strict`` as in from_dict).

    Raises ProtocolError 413 when ``body`` exceeds ``limit`` bytes, 400 when it is not
    UTF-8, not a JSON object, or its fields do not match ``cls``.
    """
    if len(body) > limit:
        raise ProtocolError(Status.TOO_LARGE, f"body of {len(body)} bytes exceeds {limit}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(Status.BAD_REQUEST, "body is not valid UTF-8") from None
    try:
        if text[:1] == "{":
            # What _DECODER.decode does, without its two whitespace scans, for the body
            # every client writes: one object, nothing around it. After it decode allows
            # JSON's whitespace only (its WHITESPACE is [ \t\n\r]*), and so do we.
            data, end = _SCAN_JSON(text, 0)
            if end != len(text) and text[end:].strip(" \t\n\r"):
                raise ValueError("extra data after the body's object")
        else:
            data = _DECODER.decode(text) if text else {}
    except (ValueError, RecursionError, StopIteration):
        # JSONDecodeError, an int over 4,300 digits, or scan_once's "expecting a value"
        raise ProtocolError(Status.BAD_REQUEST, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(Status.BAD_REQUEST, "body must be a JSON object")
    return from_dict(cls, data, strict=strict)


# -- frames -------------------------------------------------------------------------------


def encode_request(request_id: bytes, request: Request) -> list[bytes]:
    """Frames a client sends on its DEALER (§3.1)."""
    return [VERSION, request_id, request.TYPE.encode(), encode_body(request)]


def decode_request(frames: list[bytes]) -> tuple[bytes, Request]:
    """Parse the frames after the routing id into (request_id, request).

    Raises ProtocolError with the request id when it could be read (``.request_id``), so
    that the ERROR reply can still echo it: 400 wrong frame count, bad request id or body;
    426 wrong version; 405 unknown type; 413 oversized body.
    """
    if len(frames) != 4:
        raise ProtocolError(Status.BAD_REQUEST,
                            f"a request has 4 frames, got {len(frames)}",
                            request_id=frames[1][:MAX_REQUEST_ID_BYTES] if len(frames) > 1 else b"")
    version, request_id, type_frame, body = frames
    if not 1 <= len(request_id) <= MAX_REQUEST_ID_BYTES:
        raise ProtocolError(Status.BAD_REQUEST,
                            f"request id must be 1 to {MAX_REQUEST_ID_BYTES} bytes",
                            request_id=request_id[:MAX_REQUEST_ID_BYTES])
    if version != VERSION:
        raise ProtocolError(Status.VERSION_NOT_SUPPORTED,
                            f"protocol version {version[:16]!r} not supported; "
                            f"this broker speaks {VERSION.decode()}",
                            request_id=request_id)
    cls = REQUEST_TYPES.get(type_frame.decode("ascii", "replace"))
    if cls is None:
        raise ProtocolError(Status.UNKNOWN_COMMAND,
                            f"unknown request type {type_frame[:32]!r}", request_id=request_id)
    try:
        return request_id, decode_body(cls, body)
    except ProtocolError as exc:
        exc.request_id = request_id
        raise


def encode_reply(request_id: bytes, reply: Reply | Error) -> list[bytes]:
    """Frames of an OK or ERROR reply (§3.2), routing id not included."""
    kind = b"ERROR" if isinstance(reply, Error) else b"OK"
    return [VERSION, request_id, kind, encode_body(reply)]


def room_state_json(state: RoomState) -> str:
    """One RoomState's JSON exactly as ``encode_body`` writes it inside a reply, for the
    broker to keep per room between heartbeats (see ``encode_pong``)."""
    return str(_ENCODER.encode(to_dict(state)))


def encode_pong(request_id: bytes, time: int, rooms_json: list[str],
                session: str | None, listed: bool = True) -> list[bytes]:
    """Frames of the OK reply to PING, built from RoomState JSON made by
    ``room_state_json``: byte for byte ``encode_reply(request_id, Pong(time, rooms,
    session))`` (tests/test_fast_paths.py), without encoding every room at every
    heartbeat — the broker answers one PING per session every heartbeat_interval_s."""
    body = f'{{"time":{int(time)},"rooms":[{",".join(rooms_json)}],' \
           f'"session":{_ENCODER.encode(session)},"listed":{"true" if listed else "false"}}}'
    return [VERSION, request_id, b"OK", body.encode()]


def encode_push(push: Message) -> list[bytes]:
    """Frames of an unsolicited message to one session over the ROUTER (§3.3)."""
    return [VERSION, b"", push.TYPE.encode(), encode_body(push)]


def decode_from_broker(frames: list[bytes], pending: dict[bytes, type[Reply]]
                       ) -> tuple[bytes, Message]:
    """Parse frames a client's DEALER received: a reply or a push.

    ``pending`` maps request ids to the reply type expected. Returns (request_id, value)
    where request_id is b"" for pushes. Raises ProtocolError(400) on anything malformed
    (a misbehaving broker is the peer's fault).
    """
    if len(frames) != 4 or frames[0] != VERSION:
        raise ProtocolError(Status.BAD_REQUEST, "malformed frames from broker")
    _v, request_id, type_frame, body = frames
    limit = MAX_REPLY_BYTES  # replies (history pages) may be large
    if request_id == b"":
        cls_push = PUSH_TYPES.get(type_frame.decode("ascii", "replace"))
        if cls_push is None:
            raise ProtocolError(Status.UNKNOWN_COMMAND, f"unknown push {type_frame!r}")
        return b"", decode_body(cls_push, body, limit, strict=False)
    if type_frame == b"ERROR":
        return request_id, decode_body(Error, body, limit, strict=False)
    if type_frame != b"OK":
        raise ProtocolError(Status.BAD_REQUEST, f"unknown reply type {type_frame!r}")
    reply_cls = pending.get(request_id, Ok)
    return request_id, decode_body(reply_cls, body, limit, strict=False)


def encode_event(topic: bytes, event: Message) -> list[bytes]:
    """Frames of a PUB event (§3.4)."""
    return [topic, VERSION, event.TYPE.encode(), encode_body(event)]


def decode_event(frames: list[bytes]) -> Message:
    """Parse frames received on a SUB socket. Raises ProtocolError(400/405)."""
    if len(frames) != 4 or frames[1] != VERSION:
        raise ProtocolError(Status.BAD_REQUEST, "malformed event frames")
    cls = EVENT_TYPES.get(frames[2].decode("ascii", "replace"))
    if cls is None:
        raise ProtocolError(Status.UNKNOWN_COMMAND, f"unknown event {frames[2]!r}")
    return decode_body(cls, frames[3], MAX_TRANSPORT_FRAME_BYTES, strict=False)
