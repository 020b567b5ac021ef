"""The base of every wire value, the types their fields use, and the values that travel
only inside other messages (RoomState, BanInfo, ...).

Every value is a frozen msgspec Struct: its field names are the JSON keys of its body, in
declaration order, and its annotations are what the codec (zchat/wire/codec.py) checks
when it reads one. Integers are ``WireInt`` (signed 64 bits, docs/PROTOCOL.md §9); a
field with a default may be left out of a body and then takes it (§3). Nothing here
touches a socket, a clock or a database.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, ClassVar, Literal, TypeVar, Union

import msgspec

from zchat.wire.limits import MAX_WIRE_INT, MIN_WIRE_INT

T = TypeVar("T")

#: The type of every integer field: a JSON integer within signed 64 bits (MIN_WIRE_INT ..
#: MAX_WIRE_INT, §9). To a type checker and to ``typing.get_type_hints`` it is ``int``;
#: the codec refuses any other number with 400 "field X is out of range", and ``true``,
#: ``1.0`` or ``5e1`` with 400 "field X must be an integer".
WireInt = Annotated[int, msgspec.Meta(ge=MIN_WIRE_INT, le=MAX_WIRE_INT)]

#: The type of a request field added after the first release (docs/PROTOCOL.md §13):
#: ``Added[bool] = UNSET``. Left unset (the default) it is left out of the body, so a
#: client that does not use the feature sends the request an older broker knows (which
#: refuses unknown fields with 400); a broker reads a missing one as UNSET, which is
#: falsy: ``bool(req.notice)``, ``req.reason or ""``.
Added = Union[T, msgspec.UnsetType]  # noqa: UP007 (a generic alias)
UNSET = msgspec.UNSET


def given(value: T | msgspec.UnsetType, default: T) -> T:
    """An ``Added`` field's value, ``default`` when it was left out of the body."""
    return default if isinstance(value, msgspec.UnsetType) else value

Presence = Literal["online", "away", "offline"]
MessageKind = Literal["text", "action"]
Delivery = Literal["live", "stored"]


class Value(msgspec.Struct, frozen=True, gc=False):
    """Base of every value the wire carries, messages and the values nested in them.

    Frozen (hashable, compared field by field) and untracked by the garbage collector
    (``gc=False``): a value holds only str, int, bool, None and tuples of values, so it
    can never be part of a reference cycle. A body ignores keys it does not know unless
    its class says ``forbid_unknown_fields`` (requests do, docs/PROTOCOL.md §13).

    Subclasses inherit both at run time; each also says ``frozen=True``, because type
    checkers (PEP 681) do not inherit it.
    """


class Message(Value, frozen=True):
    """Base of every message value. ``TYPE`` is its wire name (the TYPE frame, §3)."""

    TYPE: ClassVar[str] = ""


def repr_without(*secrets: str) -> Callable[[Any], str]:
    """A ``__repr__`` that leaves the fields named in ``secrets`` out (passwords, tokens,
    session tokens), so that they never reach a log line or a traceback."""

    def __repr__(self: Any) -> str:
        shown = ", ".join(f"{name}={getattr(self, name)!r}"
                          for name in self.__struct_fields__ if name not in secrets)
        return f"{type(self).__name__}({shown})"

    return __repr__


# -- nested values (only inside other messages) -------------------------------------


class RoomState(Value, frozen=True):
    """A room the account belongs to, in the LOGIN reply."""

    room: str
    last_seq: WireInt
    topic: str = ""
    #: The room's slow mode in seconds, 0 when off (SET_SLOW_MODE, §6.28).
    slow_mode_s: WireInt = 0
    #: Invite-only room (§17.2); only moderators post in a locked room (§17.1).
    private: bool = False
    locked: bool = False


class RoomRead(Value, frozen=True):
    """The account's read state in one of its rooms, in the LOGIN and RESUME reply
    (§6.3.1): every message with ``seq <= read_seq`` is read; ``unread`` is the room's
    ``last_seq - read_seq``; ``mentions`` counts the unread messages that name the account
    (§6.49.2)."""

    room: str
    read_seq: WireInt
    unread: WireInt = 0
    mentions: WireInt = 0


class DmRead(Value, frozen=True):
    """The account's read state of one direct conversation, in the LOGIN and RESUME reply
    (§6.3.1): ``peer`` is the other account; DMs with ``id <= read_id`` are read;
    ``last_id`` is the conversation's newest DM (either way); ``unread`` counts the DMs
    from ``peer`` after ``read_id``."""

    peer: str
    last_id: WireInt
    read_id: WireInt
    unread: WireInt


class RoomInfo(Value, frozen=True):
    """One row of the ROOMS reply."""

    room: str
    members: WireInt
    last_seq: WireInt
    joined: bool
    topic: str = ""
    slow_mode_s: WireInt = 0
    private: bool = False
    locked: bool = False


class UserPresence(Value, frozen=True):
    """One row of the WHO reply. ``role`` is the account's role in the room asked
    about (``"owner"``, ``"moderator"`` or ``"member"``, §17.1), ``""`` for WHO without
    a room; added without a version bump (§13): an older broker leaves it out."""

    name: str
    presence: Presence
    text: str = ""
    bot: bool = False
    role: str = ""


class TokenInfo(Value, frozen=True):
    """One row of the TOKEN_LIST reply: never the token itself. ``created`` is UTC ms."""

    id: WireInt
    label: str
    created: WireInt


class BanInfo(Value, frozen=True):
    """One row of the BANS reply: a ban or mute in force. ``room`` "" is server-wide;
    ``created`` and ``until`` are UTC ms, ``until`` None for no expiry (§6.40)."""

    kind: Literal["ban", "mute"]
    room: str
    name: str
    by: str
    reason: str
    created: WireInt
    until: WireInt | None = None


class AuditEntry(Value, frozen=True):
    """One row of the AUDIT reply (§6.41): ``time`` UTC ms; names as displayed."""

    id: WireInt
    time: WireInt
    actor: str
    action: str
    room: str
    target: str
    detail: str


class SessionInfo(Value, frozen=True):
    """One row of the SESSIONS reply (admins only). Times are UTC milliseconds."""

    name: str
    address: str
    login_time: WireInt
    last_seen: WireInt


class AccountInfo(Value, frozen=True):
    """One row of the USERS reply (admins only, §6.42): ``created`` is UTC ms; ``online``
    whether the account has a live session, ``sessions`` how many."""

    name: str
    bot: bool
    disabled: bool
    created: WireInt
    online: bool
    sessions: WireInt = 0
    #: Bytes of message text the account has stored, and its storage quota in force
    #: (0: none) (§6.53).
    stored_bytes: WireInt = 0
    quota_bytes: WireInt = 0


class NewAccount(Value, frozen=True, forbid_unknown_fields=True):
    """One account of a CREATE_ACCOUNTS request (§6.43); like a request, refused with 400
    when it holds a key it does not know."""

    name: str
    password: str
    bot: bool = False

    __repr__ = repr_without("password")
