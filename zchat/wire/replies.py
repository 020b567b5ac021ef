"""Replies (docs/PROTOCOL.md §3.2): the bodies of OK, one class per request that answers
with fields, and the ERROR body.

A client ignores keys of these bodies it does not know, so that a newer broker may add
optional fields (§13).
"""

from __future__ import annotations

from typing import ClassVar

from zchat.wire.events import DirectMessage, MessagePosted
from zchat.wire.values import (
    AccountInfo,
    AuditEntry,
    BanInfo,
    Delivery,
    DmRead,
    Message,
    Presence,
    RoomInfo,
    RoomRead,
    RoomState,
    SessionInfo,
    TokenInfo,
    UserPresence,
    WireInt,
    repr_without,
)


class Reply(Message, frozen=True):
    """Base of the bodies of an OK reply."""

    TYPE: ClassVar[str] = "OK"


class Ok(Reply, frozen=True):
    """An OK with no fields (LOGOUT, PART, SET_PRESENCE, SET_TOPIC)."""


class InfoReply(Reply, frozen=True):
    version: WireInt
    pub: str
    time: WireInt
    heartbeat_interval_ms: WireInt
    heartbeat_timeout_ms: WireInt
    max_text_bytes: WireInt
    #: Most lines of a message text (docs/PROTOCOL.md §6.1, §12); 0 from a broker that
    #: does not say (older than the field): no bound known.
    max_text_lines: WireInt = 0
    #: The shortest new password the broker accepts, in characters (§6.2); 0 from an
    #: older broker that does not say (it checks only that a password is not empty).
    min_password_chars: WireInt = 0


class Registered(Reply, frozen=True):
    name: str


class LoggedIn(Reply, frozen=True):
    name: str
    session: str
    rooms: tuple[RoomState, ...]
    pending: tuple[DirectMessage, ...] = ()
    #: Read state (§6.3.1): one RoomRead per room of ``rooms``, and the DM conversations
    #: with unread messages, newest first (at most MAX_DM_READS).
    room_reads: tuple[RoomRead, ...] = ()
    dm_reads: tuple[DmRead, ...] = ()


class RoomJoined(Reply, frozen=True):
    room: str
    last_seq: WireInt
    created: bool
    topic: str = ""
    slow_mode_s: WireInt = 0
    private: bool = False
    locked: bool = False
    #: The seq of this room's first message: 1, or one past a deleted room of the same
    #: name (§6.52), which tells this room from that one.
    first_seq: WireInt = 1


class RoomList(Reply, frozen=True):
    rooms: tuple[RoomInfo, ...]


class RoomDetails(Reply, frozen=True):
    """ROOM_INFO's reply: one room as a row of ROOMS shows it (§6.51)."""

    room: str
    members: WireInt
    last_seq: WireInt
    joined: bool
    topic: str = ""
    slow_mode_s: WireInt = 0
    private: bool = False
    locked: bool = False


class Sent(Reply, frozen=True):
    room: str
    seq: WireInt
    time: WireInt


class DmSent(Reply, frozen=True):
    id: WireInt
    time: WireInt
    delivered: Delivery
    #: The recipient's name as registered ("" from a broker before this field).
    to: str = ""


class HistoryPage(Reply, frozen=True):
    room: str
    messages: tuple[MessagePosted, ...]


class DmHistoryPage(Reply, frozen=True):
    """DM_HISTORY's reply (§6.48): the conversation with ``peer``, ascending by id."""

    peer: str
    messages: tuple[DirectMessage, ...]


class ReadState(Reply, frozen=True):
    """MARK_READ's reply (§6.49): the marker after the request, as the READ push says it
    to the account's other sessions."""

    room: str
    peer: str
    upto: WireInt
    unread: WireInt
    mentions: WireInt = 0
    last: WireInt = 0


class WhoList(Reply, frozen=True):
    users: tuple[UserPresence, ...]


class UserFound(Reply, frozen=True):
    """WHOIS's reply (§6.50): the account's name as registered, presence, away message
    and bot flag, as a row of WHO."""

    name: str
    presence: Presence
    text: str = ""
    bot: bool = False


class Pong(Reply, frozen=True):
    """PING's reply: the broker's time and, for a logged-in session, the last sequence
    number of every room the account is in, so that a client notices within one heartbeat
    a room message it never received (§10)."""

    time: WireInt
    rooms: tuple[RoomState, ...] = ()
    #: The asking connection's session id (LOGIN's ``session``), "" without a session, so
    #: that a client notices its session is gone (broker restarted, session evicted) even
    #: when the transport reconnected by itself. None: the broker did not say (§6.13).
    session: str | None = None
    #: False when ``rooms`` was left out (the account's reading budget is spent, §15.1):
    #: then ``rooms`` says nothing of the account's rooms (§6.13).
    listed: bool = True


class SessionList(Reply, frozen=True):
    sessions: tuple[SessionInfo, ...]


class TokenCreated(Reply, frozen=True):
    """TOKEN_CREATE's reply: ``token`` is the secret, sent this once and never again (the
    broker keeps only its SHA-256) (§6.24)."""

    token: str
    id: WireInt
    label: str

    __repr__ = repr_without("token")


class TokenList(Reply, frozen=True):
    tokens: tuple[TokenInfo, ...]


class BanList(Reply, frozen=True):
    bans: tuple[BanInfo, ...]


class AuditList(Reply, frozen=True):
    entries: tuple[AuditEntry, ...]


class UserList(Reply, frozen=True):
    users: tuple[AccountInfo, ...]


class AccountsCreated(Reply, frozen=True):
    """CREATE_ACCOUNTS' reply: the display names created, in the request's order."""

    names: tuple[str, ...]


class QuotaSet(Reply, frozen=True):
    """ADMIN_SET_QUOTA's reply (§6.53): the account's display name, the quota now in force
    (bytes of message text; 0 none), whether it is the broker's default
    (``storage_quota_bytes``) rather than its own, and the bytes it has stored."""

    name: str
    quota_bytes: WireInt
    default: bool
    stored_bytes: WireInt


class Error(Message, frozen=True):
    """An ERROR reply: a 3-digit status (§11) and a human-readable reason."""

    TYPE: ClassVar[str] = "ERROR"
    status: WireInt
    reason: str
    retry_after_ms: WireInt = 0
