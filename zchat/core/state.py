"""The broker's shared in-memory state, and the one place its rooms change.

Sessions and accounts' presence live only here (after a restart everyone is offline).
Rooms, their members, roles, modes, creators, settings, bans and mutes are copies of the
store's, kept in memory because every SEND, PING, JOIN and LOGIN reads them: every change
to them goes through a method of ``State`` (``add_member``, ``forget_member``,
``room_joined``, ``set_topic``, ``set_role``, ``set_flags``, ``add_ban``, ``lift_ban``,
``forget_lapsed``, ``drop_room`` ...) after the store committed it, and
``refresh(store, now_ms)`` reloads them all from the store, for changes made elsewhere
(another broker on the same database, `zchat admin` on the file; ``refresh_bans`` reloads
the bans and mutes alone). A ban or mute lapses at its ``until_ms``, judged against the
``now_ms`` each check is given, whether or not the store's purge has removed it yet.

Handlers read the tables directly (``core.members[key]``); they never assign to them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

from zchat import wire as p
from zchat.core.ports import BanRow, Store
from zchat.names import name_key, skeleton
from zchat.ratelimit import ByteBudget, TokenBucket
from zchat.wire.limits import DEFAULT_ROOM as DEFAULT_ROOM  # defined once, on the wire

#: Ranks for moderation (docs/PROTOCOL.md §17.1): an actor may act only on someone of a
#: lower rank in the room.
RANKS = {"member": 0, "moderator": 1, "owner": 2, "admin": 3}


@dataclass(slots=True)
class Session:
    """One logged-in connection, known by the ROUTER's routing id."""

    routing_id: bytes
    token: str
    account_key: str
    name: str
    address: str
    login_ms: int
    last_seen_s: float
    last_seen_ms: int
    #: Id of the account token this session logged in with; None for a password login.
    #: Revoking that token ends the session (docs/PROTOCOL.md §6.26).
    login_token_id: int | None = None
    #: SEND/DM token bucket (send_rate_per_s, send_burst), made at the session's first
    #: SEND or DM; it lives and dies with the session (docs/PROTOCOL.md §15).
    send_bucket: TokenBucket | None = None
    #: The client's CURVE public key (hex) on the connection that logged in or resumed,
    #: "" on a plain one: while the session lives, that key may subscribe to the PUB
    #: (docs/PROTOCOL.md §16.2).
    transport_key: str = ""
    #: False for a session that announces no presence (LOGIN ``presence``, §6.3): it
    #: never makes its account online or offline (one-shot commands, scripts).
    presence: bool = True


@dataclass(slots=True)
class Account:
    """In-memory view of one account: its display name and live presence."""

    name: str
    bot: bool
    sessions: set[bytes] = field(default_factory=set)
    #: Those of ``sessions`` that announce presence (``Session.presence``): the account
    #: is online on this broker while one is left (docs/PROTOCOL.md §8).
    present: set[bytes] = field(default_factory=set)
    presence: p.Presence = "offline"
    away_text: str = ""
    #: Bytes of reading replies this account may still ask for (``read_rate_bytes_per_s``,
    #: ``read_burst_bytes``), made at its first reading request: per account, so that a
    #: new LOGIN does not bring a new budget (docs/PROTOCOL.md §15.1).
    read_budget: ByteBudget | None = None
    #: RESUME bucket of the account (RESUME_RATE_PER_S, RESUME_BURST), made at first use.
    resume_bucket: TokenBucket | None = None
    #: SET_PASSWORD bucket of the account (login_rate_per_s, login_burst), shared by all
    #: its sessions and kept while the broker runs, so that a stolen session token
    #: RESUMEd on fresh connections gets no fresh bucket (docs/PROTOCOL.md §15.1).
    password_bucket: TokenBucket | None = None
    #: The account's buckets for sending (account_send_*), presence changes (presence_*)
    #: and room creation (room_create_*), shared by its sessions and kept while the broker
    #: runs (made at first use): more LOGINs bring no more of any (§15.1).
    send_bucket: TokenBucket | None = None
    presence_bucket: TokenBucket | None = None
    room_bucket: TokenBucket | None = None


class State:
    """The tables. ``sessions`` (routing id -> Session) and ``accounts`` (key -> Account)
    are the live process's; the room tables below mirror the store (``refresh``)."""

    def __init__(self) -> None:
        self.sessions: dict[bytes, Session] = {}
        self.accounts: dict[str, Account] = {}
        #: Room key -> display name, last sequence number, topic.
        self.rooms: dict[str, str] = {}
        self.last_seq: dict[str, int] = {}
        self.topics: dict[str, str] = {}
        #: Room key -> the seq of its first message, for rooms made under a deleted
        #: room's name (one past its tombstone, §6.52); 1 for the others.
        self.first_seq: dict[str, int] = {}
        self.members: dict[str, set[str]] = {}
        self.rooms_of: dict[str, set[str]] = {}
        #: Room key -> a search for any member's name (rooms.mentioned); dropped when the
        #: room's members change.
        self.mention_scans: dict[str, re.Pattern[str]] = {}
        #: Room roles ("owner"/"moderator"; members have none), private and locked rooms
        #: (docs/PROTOCOL.md §17).
        self.roles: dict[str, dict[str, str]] = {}
        self.private: set[str] = set()
        self.locked: set[str] = set()
        self.creators: dict[str, str] = {}
        #: Account key -> rooms it created that still exist (max_rooms_created).
        self.rooms_created: dict[str, int] = {}
        self.slow_mode: dict[str, int] = {}
        #: Per room in slow mode, each member's last post (monotonic s).
        self.last_post: dict[str, dict[str, float]] = {}
        #: Storage quotas (docs/PROTOCOL.md §6.53): the accounts with a quota of their own
        #: (bytes, 0 none; the others have ``storage_quota_bytes``).
        self.storage_quotas: dict[str, int] = {}
        #: Bans and mutes (docs/PROTOCOL.md §17): room key ("" server-wide) -> account key
        #: -> the row, in force or lapsed but not yet purged (``active_ban`` tells them
        #: apart); a room without any has no entry.
        self.bans: dict[str, dict[str, BanRow]] = {}
        self.mutes: dict[str, dict[str, BanRow]] = {}

    # -- loading ------------------------------------------------------------------------

    def refresh(self, store: Store, now_ms: int) -> None:
        """(Re)load accounts, rooms, members, roles, modes, creators, slow modes, quotas
        and the bans and mutes in force at ``now_ms`` (UTC ms) from ``store``, in place
        (every reader keeps its reference). Live sessions and presence stay; an account
        the store no longer has keeps its entry while it has sessions. Derived caches are
        dropped."""
        names = store.account_names()
        for key, (name, bot) in names.items():
            account = self.accounts.get(key)
            if account is None:
                self.accounts[key] = Account(name, bot)
            else:
                account.name, account.bot = name, bot
        for key in [k for k, a in self.accounts.items() if k not in names and not a.sessions]:
            del self.accounts[key]
        listed = store.list_rooms()
        _replace(self.rooms, {r.key: r.name for r in listed})
        _replace(self.last_seq, {r.key: r.last_seq for r in listed})
        _replace(self.topics, {r.key: r.topic for r in listed})
        _replace(self.first_seq, {k: v + 1 for k, v in store.room_floors().items()})
        _replace(self.members, store.memberships())
        rooms_of: dict[str, set[str]] = {}
        for room_key, account_keys in self.members.items():
            for account_key in account_keys:
                rooms_of.setdefault(account_key, set()).add(room_key)
        _replace(self.rooms_of, rooms_of)
        _replace(self.roles, store.roles())
        flags = store.room_flags()
        self.private.clear()
        self.private.update(k for k, (priv, _lk) in flags.items() if priv)
        self.locked.clear()
        self.locked.update(k for k, (_priv, lk) in flags.items() if lk)
        settings = store.room_settings()
        _replace(self.creators, {k: c for k, (c, _s) in settings.items()})
        created: dict[str, int] = {}
        for creator in self.creators.values():
            if creator:
                created[creator] = created.get(creator, 0) + 1
        _replace(self.rooms_created, created)
        _replace(self.slow_mode, {k: s for k, (_c, s) in settings.items()})
        for key in [k for k in self.last_post if k not in self.rooms]:
            del self.last_post[key]
        _replace(self.storage_quotas, store.storage_quotas())
        self.mention_scans.clear()
        self.refresh_bans(store, now_ms)

    def refresh_bans(self, store: Store, now_ms: int) -> None:
        """(Re)load the bans and mutes in force at ``now_ms`` from ``store``, in place:
        those lifted elsewhere go, those placed elsewhere come."""
        tables: dict[str, dict[str, dict[str, BanRow]]] = {"ban": {}, "mute": {}}
        for row in store.list_bans(now_ms):
            if row.kind in tables:
                tables[row.kind].setdefault(row.room_key, {})[row.account_key] = row
        _replace(self.bans, tables["ban"])
        _replace(self.mutes, tables["mute"])

    # -- reading ------------------------------------------------------------------------

    def active_ban(self, kind: str, room_key: str, account_key: str,
                   now_ms: int) -> BanRow | None:
        """The ban or mute (``kind`` "ban" | "mute") of the account in the room
        (``room_key`` "" server-wide) in force at ``now_ms`` (UTC ms), or None: one whose
        ``until_ms`` has come lapses by itself, before the purge removes it."""
        placed = (self.mutes if kind == "mute" else self.bans).get(room_key)
        row = placed.get(account_key) if placed else None
        return row if row is not None and row.active(now_ms) else None

    def bans_in_force(self, now_ms: int, room_key: str | None = None) -> list[BanRow]:
        """Bans and mutes in force at ``now_ms``, oldest placed first (by id, as the
        store lists them): of one room (``room_key``, "" the server-wide ones) or all
        (None)."""
        rows = [row for table in (self.bans, self.mutes)
                for key, placed in table.items() if room_key is None or key == room_key
                for row in placed.values() if row.active(now_ms)]
        rows.sort(key=lambda row: row.id)
        return rows

    # -- changes (each after the store committed it) --------------------------------------

    def add_account(self, key: str, name: str, bot: bool) -> None:
        self.accounts[key] = Account(name, bot=bot)

    def add_member(self, room_key: str, account_key: str) -> None:
        self.members.setdefault(room_key, set()).add(account_key)
        self.rooms_of.setdefault(account_key, set()).add(room_key)
        self.mention_scans.pop(room_key, None)

    def forget_member(self, room_key: str, account_key: str) -> None:
        """Forget a membership (the store's row is gone already)."""
        self.members.get(room_key, set()).discard(account_key)
        self.rooms_of.get(account_key, set()).discard(room_key)
        self.last_post.get(room_key, {}).pop(account_key, None)
        self.mention_scans.pop(room_key, None)

    def room_joined(self, key: str, name: str, last_seq: int, topic: str,
                    account_key: str, created: bool, private: bool) -> None:
        """A JOIN committed: ``account_key`` is a member of the room, which it made (its
        owner; ``private`` applies) when ``created``."""
        self.rooms[key] = name
        self.last_seq.setdefault(key, last_seq)
        self.topics.setdefault(key, topic)
        if created:
            self.creators[key] = account_key
            self.rooms_created[account_key] = self.rooms_created.get(account_key, 0) + 1
            self.roles[key] = {account_key: "owner"}
            if last_seq:  # made under a deleted room's name: numbered on from it
                self.first_seq[key] = last_seq + 1
            if private:
                self.private.add(key)
        self.add_member(key, account_key)

    def posted(self, key: str, seq: int) -> None:
        self.last_seq[key] = seq

    def note_post(self, key: str, account_key: str, now_s: float) -> None:
        """A post in room ``key``, which is in slow mode, at ``now_s`` (monotonic s)."""
        self.last_post.setdefault(key, {})[account_key] = now_s

    def set_topic(self, key: str, topic: str) -> None:
        self.topics[key] = topic

    def set_slow_mode(self, key: str, seconds: int) -> None:
        self.slow_mode[key] = seconds
        self.last_post.pop(key, None)  # a new setting starts everyone afresh

    def set_role(self, key: str, account_key: str, role: str) -> None:
        """``role`` "moderator", or "" for a plain member again."""
        if role:
            self.roles.setdefault(key, {})[account_key] = role
        else:
            self.roles.get(key, {}).pop(account_key, None)

    def set_flags(self, key: str, private: bool, locked: bool) -> None:
        for flags, on in ((self.private, private), (self.locked, locked)):
            if on:
                flags.add(key)
            else:
                flags.discard(key)

    def drop_room(self, key: str) -> None:
        """A deleted room: forget it and everything of it."""
        for account_key in list(self.members.get(key, ())):
            self.forget_member(key, account_key)
        self.members.pop(key, None)
        creator = self.creators.get(key)
        if creator and self.rooms_created.get(creator, 0) > 1:
            self.rooms_created[creator] -= 1
        elif creator:
            self.rooms_created.pop(creator, None)
        tables: tuple[dict[str, Any], ...] = (
            self.rooms, self.last_seq, self.first_seq, self.topics, self.creators,
            self.slow_mode, self.last_post, self.roles)
        for table in tables:
            table.pop(key, None)
        self.private.discard(key)
        self.locked.discard(key)
        self.bans.pop(key, None)  # the store deleted the room's bans and mutes with it
        self.mutes.pop(key, None)

    def add_ban(self, row: BanRow) -> None:
        """A ban or mute the store placed (``Store.add_ban``'s row), replacing any
        earlier one of the same kind, place and account."""
        table = self.mutes if row.kind == "mute" else self.bans
        table.setdefault(row.room_key, {})[row.account_key] = row

    def lift_ban(self, kind: str, room_key: str, account_key: str) -> None:
        """A ban or mute the store lifted (``Store.lift_ban``), lapsed or not."""
        table = self.mutes if kind == "mute" else self.bans
        placed = table.get(room_key)
        if placed is not None:
            placed.pop(account_key, None)
            if not placed:
                del table[room_key]

    def forget_lapsed(self, rows: list[BanRow]) -> None:
        """The store purged these lapsed bans and mutes (``purge_expired_bans``). One
        placed again since (another id) stays."""
        for row in rows:
            placed = (self.mutes if row.kind == "mute" else self.bans).get(row.room_key)
            if placed is not None and row.account_key in placed and \
                    placed[row.account_key].id == row.id:
                self.lift_ban(row.kind, row.room_key, row.account_key)

    def set_quota(self, key: str, quota: int | None) -> None:
        if quota is None:
            self.storage_quotas.pop(key, None)
        else:
            self.storage_quotas[key] = quota


def _replace(table: dict[Any, Any], new: dict[Any, Any]) -> None:
    table.clear()
    table.update(new)


def lobby_key() -> str:
    return name_key(DEFAULT_ROOM)


def lobby_skeleton() -> str:
    return skeleton(DEFAULT_ROOM)
