"""The core's ports: what it needs from a store, the rows a store hands back, and the
domain errors a store raises.

The core (zchat.core) depends on ``Store``, a typing.Protocol listing exactly the store
methods it calls; zchat.store.sqlite implements it on SQLite, and another engine (the
next issue's PostgreSQL) implements the same methods (the shape of Synapse's
``storage/engines`` and Ergo's ``history.Database``). A store raises the domain errors
below (``NameTaken``, ``NoSuchRoom`` ...) or StorageError (503, nothing changed); it never
words a refusal for a person nor decides a business rule: the core does both
(``zchat.core.facade`` maps each domain error to its wire status and wording).

Every write method is committed when it returns (or joins the loop's group transaction,
docs/PROTOCOL.md §14): "committed before published and before OK" holds by construction.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Protocol

from zchat.errors import StorageError, ZchatError

# -- domain errors ------------------------------------------------------------------------


class DomainError(ZchatError):
    """A store refused a write by a rule of the data (not a failure: StorageError is
    that). The core decides what the peer is told (``zchat.core.facade.domain_refusal``)."""


class NameTaken(DomainError):
    """An account (``what`` "account") or a room (``what`` "room") with this key or a
    look-alike skeleton exists already."""

    def __init__(self, what: str, name: str) -> None:
        super().__init__(f"{what} name {name!r} taken")
        self.what, self.name = what, name


class NoSuchRoom(DomainError):
    """The room named by its key does not exist (deleted meanwhile)."""

    def __init__(self, room_key: str) -> None:
        super().__init__(f"no room {room_key!r}")
        self.room_key = room_key


class NoSuchMessage(DomainError):
    """No message ``seq`` in the room."""

    def __init__(self, seq: int) -> None:
        super().__init__(f"no message #{seq}")
        self.seq = seq


class AlreadyDeleted(DomainError):
    """Message ``seq`` was deleted already, by ``by`` (a display name)."""

    def __init__(self, seq: int, by: str) -> None:
        super().__init__(f"message #{seq} deleted already by {by}")
        self.seq, self.by = seq, by


class PresenceBusy(StorageError):
    """An account's presence lock is held by another broker's open transaction, and
    this one may not wait for it (it could close a deadlock: docs/cluster.md,
    "Deadlocks between brokers"). Nothing was changed; the request may be retried at
    once (the other broker commits within milliseconds): the core answers 429 with a
    short ``retry_after_ms``."""


class BrokerIdInUse(DomainError):
    """Another live broker of the cluster holds this broker id: its lease has not expired
    and it is another process (another machine, boot or data directory). Two brokers
    with one id would take the lease from each other at every renewal and drop each
    other's sessions (docs/cluster.md, "Several brokers on one database")."""

    def __init__(self, broker_id: str, seconds_left: float) -> None:
        super().__init__(
            f"broker id {broker_id!r} is in use by another broker of the cluster (its "
            f"lease runs {seconds_left:.0f} s more): give each broker its own id ([broker] "
            f"id, --id); the default id is the host name and a hash of the data directory, "
            f"so machines cloned from one image with the same data directory collide")
        self.broker_id = broker_id


class CmidReused(DomainError):
    """A DM's client message id was used for a DM to another recipient."""

    def __init__(self) -> None:
        super().__init__("cmid used for a DM to another recipient")


# -- rows ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class AccountRow:
    key: str
    name: str
    password_hash: str
    bot: bool


@dataclass(frozen=True, slots=True)
class AccountInfoRow:
    """An account as operators see it (``zchat admin users``): ``created_ms`` UTC ms."""

    key: str
    name: str
    bot: bool
    disabled: bool
    created_ms: int


@dataclass(frozen=True, slots=True)
class TokenRow:
    id: int
    label: str
    created_ms: int


@dataclass(frozen=True, slots=True)
class RoomRow:
    key: str
    name: str
    topic: str
    last_seq: int
    members: int = 0


@dataclass(frozen=True, slots=True)
class MessageRow:
    room: str      # the room's display name
    seq: int
    time_ms: int
    sender: str
    kind: str
    text: str
    #: Who deleted the message ("" = not deleted); ``text`` is kept for the audit.
    deleted_by: str = ""


@dataclass(frozen=True, slots=True)
class BanRow:
    """A ban or mute (table ``bans``): ``room_key`` "" is server-wide; ``until_ms`` None
    never expires. ``by_key`` is the account key of the moderator who set it."""

    id: int
    kind: str          # "ban" or "mute"
    room_key: str
    account_key: str
    by_key: str
    reason: str
    created_ms: int
    until_ms: int | None

    def active(self, now_ms: int) -> bool:
        """Whether it is in force at ``now_ms`` (UTC ms): no expiry, or not reached yet."""
        return self.until_ms is None or self.until_ms > now_ms


@dataclass(frozen=True, slots=True)
class AuditRow:
    """One audit-log entry: ``actor``, ``room`` and ``target`` are display names ("" when
    not applicable), ``action`` a word such as ``kick`` (docs/PROTOCOL.md §17.4)."""

    id: int
    time_ms: int
    actor: str
    action: str
    room: str
    target: str
    detail: str


@dataclass(frozen=True, slots=True)
class DirectMessageRow:
    id: int
    time_ms: int
    sender: str
    recipient: str
    text: str
    #: "text" or "notice" (docs/PROTOCOL.md §6.7).
    kind: str = "text"


@dataclass(frozen=True, slots=True)
class RoomReadRow:
    """An account's read state in one of its rooms: messages up to ``read_seq`` are read;
    ``mentions`` counts the messages after it that name the account."""

    room_key: str
    read_seq: int
    mentions: int


@dataclass(frozen=True, slots=True)
class DmReadRow:
    """An account's read state of its direct conversation with ``peer_key`` (display name
    ``peer``): ``last_id`` the conversation's newest DM, DMs up to ``read_id`` read,
    ``unread`` the peer's DMs after it."""

    peer_key: str
    peer: str
    last_id: int
    read_id: int
    unread: int


def dm_pair(a_key: str, b_key: str) -> str:
    """The conversation of two accounts (``direct_messages.pair``): their keys, sorted,
    joined by "/" (which no name holds). The same for both, and for an account writing
    to itself, ``key/key``."""
    return f"{a_key}/{b_key}" if a_key <= b_key else f"{b_key}/{a_key}"


@dataclass(frozen=True, slots=True)
class PostedRow:
    """What ``post_message``/``post_dm`` stored: the room seq (or DM id) and time, and
    whether it was already there under the same client message id."""

    seq: int
    time_ms: int
    duplicate: bool


@dataclass(frozen=True, slots=True)
class SessionRow:
    """A session kept for RESUME across a broker restart (only the token's SHA-256)."""

    token_sha256: str
    account_key: str
    login_token_id: int | None
    address: str
    login_ms: int
    #: The id of the broker holding it in a cluster ('' when none holds it, and on a
    #: broker alone); only ``Store.session`` reads it.
    holder: str = ""
    #: In a cluster, when it was let go (UTC ms; 0: never): > 0 while its account's
    #: ``offline`` waits (the grace of PostgreSQL's ``Store.due_offline``), negated once
    #: that ``offline`` was decided.
    released_ms: int = 0
    #: False for a session that announces no presence (LOGIN ``presence``, §6.3).
    presence: bool = True


# -- the port -------------------------------------------------------------------------------


class Store(Protocol):
    """The store methods the broker core calls (zchat.store.sqlite.Store implements them).
    Keys are case-folded names (zchat.names.name_key), names display forms, times UTC
    milliseconds. Writes raise the domain errors above or StorageError (503, nothing
    changed); each is one transaction, or a savepoint of ``transaction()``'s."""

    def transaction(self) -> contextlib.AbstractContextManager[Any]:
        """Writes inside the block commit together or not at all."""
        ...

    def changes_elsewhere(self) -> int:
        """A number that moves whenever another writer (another broker on the database,
        `zchat admin` on the file) committed a change: as of the loop's group's start
        (docs/PROTOCOL.md §14), or now outside a group. The core reloads its copies of
        bans and mutes when it moved (zchat.core.context.Core.active_ban)."""
        ...

    # accounts
    def create_account(self, key: str, name: str, skeleton: str, password_hash: str,
                       now_ms: int, bot: bool = False,
                       rooms: tuple[str, ...] = ()) -> None:
        """Raises NameTaken("account", name)."""
        ...

    def get_account(self, key: str) -> AccountRow | None: ...
    def account_skeleton_taken(self, skeleton: str) -> bool: ...
    def account_names(self) -> dict[str, tuple[str, bool]]: ...
    def list_accounts(self) -> list[AccountInfoRow]: ...
    def set_password_hash(self, key: str, password_hash: str) -> bool: ...
    def replace_password_hash(self, key: str, old_hash: str, new_hash: str) -> bool: ...
    def set_disabled(self, key: str, disabled: bool) -> bool: ...
    def is_disabled(self, key: str) -> bool: ...
    def storage_used(self, room_key: str | None = None) -> dict[str, int]: ...
    def storage_quotas(self) -> dict[str, int]: ...
    def set_storage_quota(self, key: str, quota_bytes: int | None) -> bool: ...

    # account tokens and sessions kept for RESUME
    def create_token(self, account_key: str, label: str, token_sha256: str,
                     now_ms: int) -> int: ...
    def list_tokens(self, account_key: str) -> list[TokenRow]: ...
    def token_hashes(self, account_key: str) -> list[tuple[int, str]]: ...
    def revoke_token(self, account_key: str, token_id: int) -> bool: ...
    def add_session(self, token_sha256: str, account_key: str, login_token_id: int | None,
                    address: str, login_ms: int, presence: bool = True) -> None: ...
    def delete_sessions(self, token_sha256s: list[str]) -> int: ...
    def delete_released_sessions(self, token_sha256s: list[str]) -> int:
        """Forget these sessions unless a broker holds them again (resumed elsewhere)."""
        ...

    def sessions(self, held_elsewhere: bool = False) -> list[SessionRow]: ...
    def session(self, token_sha256: str) -> SessionRow | None: ...

    # rooms, memberships, roles, modes, invitations
    def join_room(self, room_key: str, room_name: str, skeleton: str, account_key: str,
                  now_ms: int, private: bool = False) -> tuple[RoomRow, bool, bool]:
        """(room, created, newly joined). Raises NameTaken("room", name)."""
        ...

    def ensure_room(self, room_key: str, room_name: str, skeleton: str,
                    now_ms: int) -> None: ...
    def leave_room(self, room_key: str, account_key: str) -> bool: ...

    def delete_room(self, room_key: str) -> tuple[int, int]:
        """(messages, members) deleted. Raises NoSuchRoom."""
        ...

    def set_topic(self, room_key: str, topic: str) -> None:
        """Raises NoSuchRoom."""
        ...

    def set_slow_mode(self, room_key: str, seconds: int) -> None:
        """Raises NoSuchRoom."""
        ...

    def set_room_flags(self, room_key: str, private: bool | None = None,
                       locked: bool | None = None) -> None:
        """Raises NoSuchRoom."""
        ...

    def list_rooms(self) -> list[RoomRow]: ...
    def get_room(self, key: str) -> RoomRow | None: ...
    def rooms_of(self, account_key: str) -> list[RoomRow]: ...
    def room_settings(self) -> dict[str, tuple[str, int]]: ...
    def room_floors(self) -> dict[str, int]: ...
    def room_seqs(self) -> dict[str, int]: ...
    def room_flags(self) -> dict[str, tuple[bool, bool]]: ...
    def memberships(self) -> dict[str, set[str]]: ...
    def roles(self) -> dict[str, dict[str, str]]: ...
    def set_role(self, room_key: str, account_key: str, role: str) -> None: ...
    def add_invite(self, room_key: str, account_key: str, by_key: str,
                   now_ms: int) -> None: ...
    def has_invite(self, room_key: str, account_key: str) -> bool: ...
    def take_invite(self, room_key: str, account_key: str) -> bool: ...

    # room messages and read state
    def post_message(self, room_key: str, sender: str, kind: str, text: str, cmid: str,
                     now_ms: int, sender_key: str = "",
                     mentions: tuple[str, ...] = ()) -> PostedRow:
        """Raises NoSuchRoom."""
        ...

    def message_by_cmid(self, room_key: str, sender: str, cmid: str) -> PostedRow | None: ...
    def history(self, room_key: str, before: int | None, after: int | None,
                limit: int) -> list[MessageRow]: ...
    def message(self, room_key: str, seq: int) -> MessageRow | None: ...

    def delete_message(self, room_key: str, seq: int, by: str) -> MessageRow:
        """Raises NoSuchMessage, AlreadyDeleted."""
        ...

    def room_reads(self, account_key: str) -> dict[str, RoomReadRow]: ...
    def room_read(self, room_key: str, account_key: str) -> RoomReadRow | None: ...
    def mark_room_read(self, room_key: str, account_key: str, upto: int) -> bool: ...

    # direct messages
    def post_dm(self, sender: str, recipient_key: str, recipient: str, text: str,
                cmid: str, now_ms: int, max_pending: int,
                sender_key: str = "", kind: str = "text") -> PostedRow:
        """Raises CmidReused."""
        ...

    def dm_by_cmid(self, sender: str, recipient_key: str, cmid: str) -> PostedRow | None:
        """Raises CmidReused."""
        ...

    def pending_dms(self, recipient_key: str,
                    limit: int | None = None) -> list[DirectMessageRow]: ...
    def ack_dms(self, recipient_key: str, ids: tuple[int, ...]) -> int: ...
    def dm_history(self, pair: str, before: int | None, after: int | None,
                   limit: int) -> list[DirectMessageRow]: ...
    def dm_read(self, account_key: str, peer_key: str) -> DmReadRow | None: ...
    def unread_dm_reads(self, account_key: str, limit: int) -> list[DmReadRow]: ...
    def mark_dm_read(self, account_key: str, peer_key: str,
                     upto: int) -> DmReadRow | None: ...

    # bans, mutes and the audit log
    def add_ban(self, kind: str, room_key: str, account_key: str, by_key: str, reason: str,
                now_ms: int, until_ms: int | None) -> BanRow: ...
    def lift_ban(self, kind: str, room_key: str, account_key: str) -> bool: ...

    def list_bans(self, now_ms: int, room_key: str | None = None,
                  kind: str | None = None) -> list[BanRow]:
        """In force at ``now_ms``, oldest first; all of them (``room_key`` None) is what
        the core loads into memory (zchat.core.state.State.refresh_bans)."""
        ...

    def purge_expired_bans(self, now_ms: int) -> list[BanRow]: ...
    def append_audit(self, time_ms: int, actor: str, action: str, room: str = "",
                     target: str = "", detail: str = "") -> int: ...
    def audit_log(self, *, room: str | None = None, actor: str | None = None,
                  target: str | None = None, action: str | None = None,
                  before_id: int | None = None, since_ms: int | None = None,
                  above_id: int = 0, limit: int = 100) -> list[AuditRow]: ...
    def audit_floor(self, room_key: str) -> int: ...


class GroupStore(Store, Protocol):
    """The Store port and the unit of work the broker's loop runs around the core: one
    group per wake-up (docs/PROTOCOL.md §14, group commit). Implemented by the SQLite
    store and the PostgreSQL store (zchat.store.open_store chooses by location)."""

    @property
    def in_group(self) -> bool: ...
    def begin_group(self) -> None: ...

    def commit_group(self) -> None:
        """Raises StorageError when nothing of the group was stored."""
        ...

    def abort_group(self) -> None: ...
    def close(self) -> None: ...

    def hold_broker_lock(self) -> None:
        """Mark the store as a running broker's, so that `zchat admin`'s writes that a
        broker holds in memory are refused while it runs (docs/admin.md); raises
        StorageError when such a write is in progress."""
        ...
