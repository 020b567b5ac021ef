"""Requests (docs/PROTOCOL.md §3.1, §6): what a client asks of the broker, one class per
wire TYPE, with the registry by TYPE.

Imperative, named for what they ask. ``REPLY`` is the class of the OK body, and
``NEEDS_SESSION`` whether the broker refuses the request with 401 before LOGIN. The broker
refuses a request body holding a key its class does not know (400), so that typos never
pass silently (§13).
"""

from __future__ import annotations

from typing import ClassVar, Literal

from zchat.wire.limits import DEFAULT_AUDIT_LIMIT, DEFAULT_HISTORY_LIMIT
from zchat.wire.replies import (
    AccountsCreated,
    AuditList,
    BanList,
    DmHistoryPage,
    DmSent,
    HistoryPage,
    InfoReply,
    LoggedIn,
    Ok,
    Pong,
    QuotaSet,
    ReadState,
    Registered,
    Reply,
    RoomDetails,
    RoomJoined,
    RoomList,
    Sent,
    SessionList,
    TokenCreated,
    TokenList,
    UserFound,
    UserList,
    WhoList,
)
from zchat.wire.values import (
    UNSET,
    Added,
    Message,
    MessageKind,
    NewAccount,
    WireInt,
    repr_without,
)


class Request(Message, frozen=True, forbid_unknown_fields=True):
    """Base of requests. ``REPLY`` is the OK body type; ``NEEDS_SESSION`` whether the
    request is refused with 401 before LOGIN. A key the class does not know is refused
    (400 "unknown field x")."""

    REPLY: ClassVar[type[Reply]] = Ok
    NEEDS_SESSION: ClassVar[bool] = True


class Info(Request, frozen=True):
    TYPE: ClassVar[str] = "INFO"
    REPLY: ClassVar[type[Reply]] = InfoReply
    NEEDS_SESSION: ClassVar[bool] = False


class Register(Request, frozen=True):
    TYPE: ClassVar[str] = "REGISTER"
    REPLY: ClassVar[type[Reply]] = Registered
    NEEDS_SESSION: ClassVar[bool] = False
    name: str
    password: str
    #: The account is a bot (shown in WHO's ``bot``); declared by the registrant (§6.2).
    bot: bool = False
    #: The address of the user a trusted proxy registers for (§6.2, §15.1): only from a
    #: peer in the broker's ``trusted_proxies`` (else 403). Added later (``Added``, §13).
    address: Added[str] = UNSET

    __repr__ = repr_without("password")


class Login(Request, frozen=True):
    """Log in with exactly one of ``password`` and ``token`` (an account token, §6.24);
    both or neither is 400 (§6.3)."""

    TYPE: ClassVar[str] = "LOGIN"
    REPLY: ClassVar[type[Reply]] = LoggedIn
    NEEDS_SESSION: ClassVar[bool] = False
    name: str
    password: str = ""
    token: str = ""
    #: False: a session that announces no presence — it never makes the account online
    #: or offline (one-shot commands, scripts; §6.3). Added later: left out of the body
    #: unless given (``Added``, §13); absent means true.
    presence: Added[bool] = UNSET
    #: The IP address of the user a trusted proxy (the IRC gateway) logs in for: the
    #: broker counts the attempt in that address's login buckets instead of the proxy's
    #: (§6.3, §15.1). Only from a peer in the broker's ``trusted_proxies`` (else 403);
    #: not one IP address, 400. Added later: left out of the body unless given (§13).
    address: Added[str] = UNSET

    __repr__ = repr_without("password", "token")


class Logout(Request, frozen=True):
    """End this connection's session; ``text`` is a quit message, carried by the offline
    PRESENCE event when this was the account's last session (§6.4)."""

    TYPE: ClassVar[str] = "LOGOUT"
    text: str = ""


class Join(Request, frozen=True):
    TYPE: ClassVar[str] = "JOIN"
    REPLY: ClassVar[type[Reply]] = RoomJoined
    room: str
    #: Create the room invite-only (§17.2); ignored when the room exists.
    private: bool = False


class Part(Request, frozen=True):
    """Leave ``room``; ``reason`` (<= MAX_AWAY_TEXT_CHARS characters, one line) is
    carried by the LEFT event, so the other members see why (§6.6)."""

    TYPE: ClassVar[str] = "PART"
    room: str
    #: Added later: left out of the body unless given (``Added``, §13).
    reason: Added[str] = UNSET


class ListRooms(Request, frozen=True):
    TYPE: ClassVar[str] = "ROOMS"
    REPLY: ClassVar[type[Reply]] = RoomList


class FetchRoom(Request, frozen=True):
    """Read one room's state (topic, modes, members, last seq) without joining it:
    public rooms for any session, private ones for members and admins (§6.51)."""

    TYPE: ClassVar[str] = "ROOM_INFO"
    REPLY: ClassVar[type[Reply]] = RoomDetails
    room: str


class Send(Request, frozen=True):
    TYPE: ClassVar[str] = "SEND"
    REPLY: ClassVar[type[Reply]] = Sent
    room: str
    text: str
    kind: MessageKind = "text"
    cmid: str = ""
    #: A notice (IRC's NOTICE; kind "text" only): bots do not answer it (§6.8). Added
    #: later: left out of the body unless given (``Added``, §13).
    notice: Added[bool] = UNSET


class SendDirect(Request, frozen=True):
    TYPE: ClassVar[str] = "DM"
    REPLY: ClassVar[type[Reply]] = DmSent
    to: str
    text: str
    #: Client message id: a retry with the same cmid is stored at most once (§6.7).
    cmid: str = ""
    #: A notice (IRC's NOTICE): bots do not answer it (§6.7). Added later (§13).
    notice: Added[bool] = UNSET


class FetchHistory(Request, frozen=True):
    TYPE: ClassVar[str] = "HISTORY"
    REPLY: ClassVar[type[Reply]] = HistoryPage
    room: str
    before: WireInt | None = None
    after: WireInt | None = None
    limit: WireInt = DEFAULT_HISTORY_LIMIT


class FetchDmHistory(Request, frozen=True):
    """A page of the logged-in account's direct conversation with ``peer`` (§6.48):
    bounds are DM ids, exclusive; at most one of them."""

    TYPE: ClassVar[str] = "DM_HISTORY"
    REPLY: ClassVar[type[Reply]] = DmHistoryPage
    peer: str
    before: WireInt | None = None
    after: WireInt | None = None
    limit: WireInt = DEFAULT_HISTORY_LIMIT


class MarkRead(Request, frozen=True):
    """Move the account's read marker of ``room`` (a seq) or of the direct conversation
    with ``peer`` (a DM id) forward to ``upto`` (§6.49); exactly one of ``room`` and
    ``peer``."""

    TYPE: ClassVar[str] = "MARK_READ"
    REPLY: ClassVar[type[Reply]] = ReadState
    upto: WireInt
    room: str = ""
    peer: str = ""


class Who(Request, frozen=True):
    TYPE: ClassVar[str] = "WHO"
    REPLY: ClassVar[type[Reply]] = WhoList
    room: str | None = None


class Whois(Request, frozen=True):
    """Look one account up by name, offline ones too (§6.50)."""

    TYPE: ClassVar[str] = "WHOIS"
    REPLY: ClassVar[type[Reply]] = UserFound
    name: str


class SetPresence(Request, frozen=True):
    TYPE: ClassVar[str] = "SET_PRESENCE"
    presence: Literal["online", "away"]
    text: str = ""


class SetTopic(Request, frozen=True):
    """Set a room's topic, members only; "" clears it (§6.22)."""

    TYPE: ClassVar[str] = "SET_TOPIC"
    room: str
    topic: str


class Ping(Request, frozen=True):
    TYPE: ClassVar[str] = "PING"
    REPLY: ClassVar[type[Reply]] = Pong
    NEEDS_SESSION: ClassVar[bool] = False


class ListSessions(Request, frozen=True):
    TYPE: ClassVar[str] = "SESSIONS"
    REPLY: ClassVar[type[Reply]] = SessionList


class AckDirect(Request, frozen=True):
    """The recipient's client has handed these direct messages to its application: the
    broker stops keeping them for the next login (§6.7)."""

    TYPE: ClassVar[str] = "DM_ACK"
    ids: tuple[WireInt, ...]


class CreateToken(Request, frozen=True):
    """Create an account token for the logged-in account (§6.24)."""

    TYPE: ClassVar[str] = "TOKEN_CREATE"
    REPLY: ClassVar[type[Reply]] = TokenCreated
    label: str


class ListTokens(Request, frozen=True):
    """List the logged-in account's live tokens (§6.25)."""

    TYPE: ClassVar[str] = "TOKEN_LIST"
    REPLY: ClassVar[type[Reply]] = TokenList


class RevokeToken(Request, frozen=True):
    """Revoke one of the logged-in account's tokens by id (§6.26)."""

    TYPE: ClassVar[str] = "TOKEN_REVOKE"
    id: WireInt


class Resume(Request, frozen=True):
    """Take over a live (or, after a broker restart, a stored) session by its ``session``
    token from LOGIN, on a new connection, without a password and without presence
    events (§6.27)."""

    TYPE: ClassVar[str] = "RESUME"
    REPLY: ClassVar[type[Reply]] = LoggedIn
    NEEDS_SESSION: ClassVar[bool] = False
    session: str

    __repr__ = repr_without("session")


class SetSlowMode(Request, frozen=True):
    """Set a room's slow mode: each member may post at most one message per ``seconds``
    (0 turns it off) (§6.28)."""

    TYPE: ClassVar[str] = "SET_SLOW_MODE"
    room: str
    seconds: WireInt


# -- moderation (§17) ---------------------------------------------------------------------


class Kick(Request, frozen=True):
    """Remove ``name`` from ``room``; they may JOIN again unless banned (§6.30)."""

    TYPE: ClassVar[str] = "KICK"
    room: str
    name: str
    reason: str = ""


class Ban(Request, frozen=True):
    """Ban ``name`` from ``room`` ("" = the whole server) for ``duration_s`` (0 = until
    lifted) (§6.31)."""

    TYPE: ClassVar[str] = "BAN"
    name: str
    room: str = ""
    reason: str = ""
    duration_s: WireInt = 0


class Unban(Request, frozen=True):
    """Lift the ban of ``name`` in ``room`` ("" = server-wide) (§6.32)."""

    TYPE: ClassVar[str] = "UNBAN"
    name: str
    room: str = ""


class Mute(Request, frozen=True):
    """Forbid ``name`` to post in ``room`` ("" = everywhere) for ``duration_s`` (0 = until
    lifted) (§6.33)."""

    TYPE: ClassVar[str] = "MUTE"
    name: str
    room: str = ""
    reason: str = ""
    duration_s: WireInt = 0


class Unmute(Request, frozen=True):
    """Lift the mute of ``name`` in ``room`` ("" = server-wide) (§6.34)."""

    TYPE: ClassVar[str] = "UNMUTE"
    name: str
    room: str = ""


class Invite(Request, frozen=True):
    """Invite ``name`` to ``room``, so that they may JOIN it while it is private (§6.35)."""

    TYPE: ClassVar[str] = "INVITE"
    room: str
    name: str


class SetRole(Request, frozen=True):
    """Make ``name`` a moderator of ``room`` or a plain member again (§6.36)."""

    TYPE: ClassVar[str] = "SET_ROLE"
    room: str
    name: str
    role: Literal["moderator", "member"]


class SetRoom(Request, frozen=True):
    """Change ``room``'s modes: ``private`` (invite-only), ``locked`` (only moderators
    post); None leaves a mode as it is (§6.37)."""

    TYPE: ClassVar[str] = "SET_ROOM"
    room: str
    private: bool | None = None
    locked: bool | None = None


class DeleteMessage(Request, frozen=True):
    """Delete message ``seq`` of ``room`` (§6.38)."""

    TYPE: ClassVar[str] = "DELETE_MESSAGE"
    room: str
    seq: WireInt


class DeleteRoom(Request, frozen=True):
    """Delete ``room`` with its history, members, roles, invitations and bans: its owner
    (from inside) or a broker admin; never ``lobby`` (§6.52). ``reason`` is shown to
    the members."""

    TYPE: ClassVar[str] = "DELETE_ROOM"
    room: str
    reason: str = ""


class ListBans(Request, frozen=True):
    """The bans and mutes in force: of ``room`` ("" = server-wide ones), or all (None)
    (§6.40)."""

    TYPE: ClassVar[str] = "BANS"
    REPLY: ClassVar[type[Reply]] = BanList
    room: str | None = None


class ReadAudit(Request, frozen=True):
    """Read the audit log, newest first, filtered (§6.41)."""

    TYPE: ClassVar[str] = "AUDIT"
    REPLY: ClassVar[type[Reply]] = AuditList
    room: str | None = None
    actor: str = ""
    target: str = ""
    action: str = ""
    before: WireInt | None = None
    limit: WireInt = DEFAULT_AUDIT_LIMIT


# -- operator tools (§6.42-§6.46) ------------------------------------------------------------


class ListUsers(Request, frozen=True):
    """Every account with its state (admins only, §6.42)."""

    TYPE: ClassVar[str] = "USERS"
    REPLY: ClassVar[type[Reply]] = UserList


class CreateAccounts(Request, frozen=True):
    """Create several accounts at once, all or none (admins only, §6.43)."""

    TYPE: ClassVar[str] = "CREATE_ACCOUNTS"
    REPLY: ClassVar[type[Reply]] = AccountsCreated
    accounts: tuple[NewAccount, ...]


class AdminSetPassword(Request, frozen=True):
    """Give ``name`` a new password and end its sessions (admins only, §6.44)."""

    TYPE: ClassVar[str] = "ADMIN_SET_PASSWORD"
    name: str
    password: str

    __repr__ = repr_without("password")


class SetDisabled(Request, frozen=True):
    """Disable (``disabled`` true, ending its sessions) or enable again the account
    ``name`` (admins only, §6.45)."""

    TYPE: ClassVar[str] = "ADMIN_DISABLE"
    name: str
    disabled: bool = True


class SetQuota(Request, frozen=True):
    """Give the account ``name`` a storage quota of its own, ``quota_bytes`` of message
    text (0: no quota), or with None make it follow the broker's default again (admins
    only, §6.53)."""

    TYPE: ClassVar[str] = "ADMIN_SET_QUOTA"
    REPLY: ClassVar[type[Reply]] = QuotaSet
    name: str
    quota_bytes: WireInt | None


class SetPassword(Request, frozen=True):
    """Change the logged-in account's own password from ``old`` to ``new`` (§6.46)."""

    TYPE: ClassVar[str] = "SET_PASSWORD"
    old: str
    new: str

    __repr__ = repr_without("old", "new")


REQUEST_TYPES: dict[str, type[Request]] = {
    cls.TYPE: cls
    for cls in (Info, Register, Login, Logout, Join, Part, ListRooms, Send, SendDirect,
                FetchHistory, Who, SetPresence, Ping, ListSessions, SetTopic, AckDirect,
                CreateToken, ListTokens, RevokeToken, Resume, SetSlowMode, Kick, Ban, Unban,
                Mute, Unmute, Invite, SetRole, SetRoom, DeleteMessage, ListBans, ReadAudit,
                ListUsers, CreateAccounts, AdminSetPassword, SetDisabled, SetPassword,
                FetchDmHistory, MarkRead, Whois, FetchRoom, DeleteRoom, SetQuota)
}
