"""The broker's state machine: sessions, presence, rooms, messages and direct messages.

Pure in the sans-I/O sense: no sockets, no clock. The event loop (zchat.broker) feeds it
frames from the ROUTER with the time, and carries out the actions it returns:

- ``ToPeer(routing_id, frames)``: send on the ROUTER (a reply or a push);
- ``ToTopic(frames)``: send on the PUB socket;
- ``Offload(job_id, work)``: run ``work()`` off the loop (password hashing) and hand the
  result back through ``complete(job_id, result, ...)``.

Durable state goes through the Store, whose writes are committed when they return; the core
therefore commits a room message before it returns the actions that publish it and OK it
(docs/PROTOCOL.md §7). The Store is real SQLite (``":memory:"`` in unit tests).

Time comes in as two arguments: ``now_s`` (monotonic seconds, for heartbeats) and
``now_ms`` (UTC milliseconds, for timestamps on the wire).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import re
import secrets
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from zchat import wire as p
from zchat.admin import (
    CheckedAccount,
    NewAccountRow,
    check_batch,
    check_new_password,
    check_password,
)
from zchat.config import BrokerConfig
from zchat.errors import ProtocolError, RateLimited, Status, StorageError
from zchat.names import (
    BIDI_CONTROLS,
    MAX_NAME_CHARS,
    mention_words,
    name_key,
    normalize_name,
    normalize_new_name,
    skeleton,
    validate_text,
)
from zchat.passwords import hash_password, match_token, token_sha256, verify_password
from zchat.ratelimit import (
    MAX_ADDRESS_BUCKETS,
    BucketTable,
    ByteBudget,
    TokenBucket,
    address_key,
)
from zchat.store import BanRow, SessionRow, Store, dm_pair

log = logging.getLogger("zchat.broker")

DEFAULT_ROOM = "lobby"
#: Password jobs in flight at once (docs/PROTOCOL.md §9); beyond it LOGIN/REGISTER get 503
#: so that a flood of logins cannot queue unbounded work.
MAX_PENDING_JOBS = 1024
#: RESUMEs of one account (docs/PROTOCOL.md §15.1): a burst of RESUME_BURST, then
#: RESUME_RATE_PER_S a second. Every device of an account resumes once after a broker
#: restart; a tester's two connections taking one session from each other 9,000 times
#: (each reply carrying up to 1,000 pending DMs) held a core and grew memory by GBs.
RESUME_RATE_PER_S = 1.0
RESUME_BURST = 30
#: Password jobs one peer address, or one account, may have in flight at once (docs/
#: PROTOCOL.md §15.1). The pool runs jobs in arrival order, so without it one address could
#: keep it hundreds of jobs deep (a tester's SET_PASSWORD flood left six honest LOGINs from
#: other addresses unanswered for over 8 s); with it an honest LOGIN waits behind at most
#: this many jobs of each other address. 4 lets a family or a small office behind one NAT
#: log in together; a classroom of 30 waits a few half-seconds (the client retries a 429).
MAX_JOBS_PER_PEER = 4
#: ``retry_after_ms`` of a request refused for MAX_JOBS_PER_PEER: a few hashes' time.
JOB_BUSY_RETRY_MS = 500
#: How often ``tick`` deletes lapsed bans and mutes from the store, in seconds: they stop
#: applying at their expiry anyway (checked at use); the purge only tidies the table.
BAN_PURGE_INTERVAL_S = 60.0
#: Ranks for moderation (docs/PROTOCOL.md §17.1): an actor may act only on someone of a
#: lower rank in the room.
RANKS = {"member": 0, "moderator": 1, "owner": 2, "admin": 3}


def _until(until_ms: int | None) -> str:
    """When a ban or mute ends, for people: ``until lifted`` or ``until 2024-06-01
    12:01:30 UTC``, to the second (rounded up, so that the time shown is never early; a
    90 s ban must not read as a minute, docs/PROTOCOL.md §6.31)."""
    if until_ms is None:
        return "until lifted"
    when = dt.datetime.fromtimestamp(math.ceil(until_ms / 1000), dt.UTC)
    return f"until {when:%Y-%m-%d %H:%M:%S} UTC"


def _rate(per_s: float) -> str:
    """A rate for people: ``0.5 a second`` down to a tenth, else ``one every 20 s``."""
    return f"{per_s:g} a second" if per_s >= 0.1 else f"one every {1 / per_s:g} s"


def size_text(n: int) -> str:
    """A number of bytes for people, in decimal units: ``512 bytes``, ``1.0 MB``."""
    if n < 1000:
        return f"{n} byte{'' if n == 1 else 's'}"
    value = float(n)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 999.95:
            return f"{value:.1f} {unit}"
    return f"{value / 1000:.1f} PB"


def quota_text(quota: int | None, default: int) -> str:
    """A storage quota as the audit log and the operator see it (docs/PROTOCOL.md §6.53):
    ``1,000,000 bytes``, ``none``, or ``default (…)`` for None, the broker's own."""
    if quota is None:
        return f"default ({quota_text(default, 0)})"
    return f"{quota:,} bytes" if quota else "none"


def _seconds(ms: int) -> str:
    """A wait for a person, rounded up: ``0.3 s`` under ten seconds, else ``12 s``."""
    return f"{math.ceil(ms / 100) / 10:.1f} s" if ms < 10_000 else f"{math.ceil(ms / 1000)} s"


#: Up to this many members, SEND first searches the folded text for any member's name with
#: one regular expression per room (rebuilt when the members change; ~0.1 µs for 50
#: members, where testing each name as a substring took ~5 µs) before it cuts the text into
#: words for mentions (docs/PROTOCOL.md §6.49.2); beyond it, the words are cut at once
#: (~2.5 µs, whatever the room's size).
MENTION_SCAN_MEMBERS = 64

#: Requests whose replies are charged to the account's reading budget (docs/PROTOCOL.md
#: §15.1): the ones whose reply grows with what the broker holds (a page of history,
#: every room, every member). PING is not among them: it is the heartbeat, and its
#: PONG lists at most MAX_ROOMS_PER_ACCOUNT rooms.
READING_REQUESTS: frozenset[type[p.Request]] = frozenset({
    p.FetchHistory, p.FetchDmHistory, p.ListRooms, p.Who, p.Whois, p.ListUsers,
    p.ReadAudit, p.ListBans, p.ListSessions, p.ListTokens, p.FetchRoom})

#: Topics anyone logged in may subscribe to besides the rooms' (zchat.client).
_FIXED_TOPICS = frozenset({p.TOPIC_TICK, p.TOPIC_BROKER, p.TOPIC_PRESENCE_PREFIX})
#: The longest room topic: ``room/`` + a room key of MAX_NAME_CHARS characters of up to
#: 4 UTF-8 bytes + ``/``.
MAX_SUBSCRIPTION_BYTES = len(p.TOPIC_ROOM_PREFIX) + 4 * MAX_NAME_CHARS + 1

#: Rooms past which a PING's PONG is a big reply (a room's state is up to ~1.3 KB with its
#: topic): such PINGs wait their turn behind others' big replies (BrokerCore.costly_ping).
COSTLY_PING_ROOMS = 16

#: Bound of BrokerCore's room-name cache (entries); emptied whole when full.
ROOM_KEY_CACHE_MAX = 4096


@dataclass(frozen=True, slots=True)
class ToPeer:
    routing_id: bytes
    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class ToTopic:
    frames: list[bytes]


@dataclass(frozen=True, slots=True)
class Offload:
    job_id: int
    work: Callable[[], Any]


Action = ToPeer | ToTopic | Offload


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


@dataclass(slots=True)
class Account:
    """In-memory view of one account: its display name and live presence."""

    name: str
    bot: bool
    sessions: set[bytes] = field(default_factory=set)
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


@dataclass(frozen=True, slots=True)
class _Job:
    kind: str                    # "register" or "login"
    routing_id: bytes
    request_id: bytes
    key: str
    name: str
    address: str
    password_hash: str = ""      # register: filled by the job's result
    bot: bool = False            # register: the account is a bot
    #: The admin (display name) who started a create_accounts or admin_password job.
    actor: str = ""
    #: create_accounts: the checked accounts (zchat.admin.CheckedAccount), in order.
    batch: tuple[Any, ...] = ()
    #: login: the connection's CURVE key (hex), bound to the session it makes.
    transport_key: str = ""
    #: The in-flight counters this job holds (``BrokerCore._job_holds``): its peer's
    #: address key and, for an account's password, ``acct:<key>``.
    holds: tuple[str, ...] = ()


class BrokerCore:
    """All broker state; one event loop owns it. See the module docstring."""

    def __init__(self, store: Store, config: BrokerConfig, pub_endpoint: str,
                 now_ms: int = 0) -> None:
        self.store = store
        self.config = config
        self.pub_endpoint = pub_endpoint
        self.sessions: dict[bytes, Session] = {}
        self.accounts: dict[str, Account] = {
            key: Account(name, bot) for key, (name, bot) in store.account_names().items()}
        self.admins = {name_key(n) for n in config.admins}
        #: Look-alike skeletons of the admin names: REGISTER and CREATE_ACCOUNTS of any
        #: of them is refused (docs/admin.md, "Who is an admin").
        self._admin_skeletons = {skeleton(n) for n in config.admins}
        for admin in config.admins:
            if name_key(admin) not in self.accounts:
                log.warning("broker admin %r has no account: nobody can register it over "
                            "the wire; create it with `zchat admin create` on the database "
                            "(docs/admin.md)", admin)
        lobby_key = name_key(DEFAULT_ROOM)
        store.ensure_room(lobby_key, DEFAULT_ROOM, skeleton(DEFAULT_ROOM), now_ms)
        listed = store.list_rooms()
        self.rooms: dict[str, str] = {r.key: r.name for r in listed}
        self.last_seq: dict[str, int] = {r.key: r.last_seq for r in listed}
        self.topics: dict[str, str] = {r.key: r.topic for r in listed}
        #: Room key -> the seq of its first message, for rooms made under a deleted
        #: room's name (one past its tombstone, §6.52); 1 for the others.
        self.first_seq: dict[str, int] = {k: v + 1 for k, v in store.room_floors().items()}
        self.members: dict[str, set[str]] = store.memberships()
        #: Room key -> a search for any member's name (``_mentioned``); dropped when the
        #: room's members change.
        self._mention_scans: dict[str, re.Pattern[str]] = {}
        self.rooms_of: dict[str, set[str]] = {}
        for room_key, account_keys in self.members.items():
            for account_key in account_keys:
                self.rooms_of.setdefault(account_key, set()).add(room_key)
        self._jobs: dict[int, _Job] = {}
        self._next_job = 1
        #: Password jobs in flight per address key and per ``acct:<key>`` (at most
        #: MAX_JOBS_PER_PEER each); a key goes when its count is back to 0.
        self._jobs_held: dict[str, int] = {}
        #: No session can time out before this (monotonic s): a lower bound on the
        #: earliest last_seen_s + heartbeat_timeout_s, kept by _bind_session and tick
        #: (last-seen times only move forward), so tick scans the sessions only when one
        #: may be due, not at every wake-up of the loop.
        self._evict_at = math.inf
        #: Room names as sent -> their keys (normalize_name is ~50 us, and every SEND
        #: names its room); valid names only, at most ROOM_KEY_CACHE_MAX.
        self._room_keys: dict[str, str] = {}
        # Protection (docs/PROTOCOL.md §15): per-address LOGIN/REGISTER buckets (None when
        # login_rate_per_s is 0), and each room's creator and slow mode with, per room in
        # slow mode, each member's last post (monotonic s); bounded by the memberships.
        #: Whether SEND, DM, topic changes and JOINs of new rooms take sending tokens:
        #: ``send_rate_per_s`` 0 turns every sending limit off, the account's too (§15.1).
        self._sending_limited = config.send_rate_per_s > 0
        self._login_buckets: BucketTable | None = (
            BucketTable(config.login_rate_per_s, config.login_burst, MAX_ADDRESS_BUCKETS)
            if config.login_rate_per_s > 0 else None)
        settings = store.room_settings()
        self.creators: dict[str, str] = {k: c for k, (c, _s) in settings.items()}
        #: Account key -> rooms it created that still exist (max_rooms_created).
        self.rooms_created: dict[str, int] = {}
        for creator in self.creators.values():
            if creator:
                self.rooms_created[creator] = self.rooms_created.get(creator, 0) + 1
        #: Storage quotas (docs/PROTOCOL.md §6.53): the accounts with a quota of their own
        #: (bytes, 0 none; the others have ``storage_quota_bytes``), and account key ->
        #: bytes of message text it has stored, counted with one query (a scan of every
        #: text, ~0.7 s a million messages) here when a quota is in force, else at the
        #: first USERS or ADMIN_SET_QUOTA (``stored``), then kept up to date by SEND, DM
        #: and DELETE_ROOM: never a query per message; a rebuilt core counts again. None
        #: while not counted: a broker without quotas pays nothing for them.
        self.storage_quotas: dict[str, int] = store.storage_quotas()
        self.storage_used: dict[str, int] | None = (
            store.storage_used() if config.storage_quota_bytes or any(
                self.storage_quotas.values()) else None)
        self.slow_mode: dict[str, int] = {k: s for k, (_c, s) in settings.items()}
        self._last_post: dict[str, dict[str, float]] = {}
        # Moderation (docs/PROTOCOL.md §17): room roles ("owner"/"moderator"; members have
        # none) and the private and locked rooms. Bans and mutes are read from the store
        # at use, so that `zchat admin` lifting one in the database takes effect at once.
        self.roles: dict[str, dict[str, str]] = store.roles()
        flags = store.room_flags()
        self.private: set[str] = {k for k, (priv, _lk) in flags.items() if priv}
        self.locked: set[str] = {k for k, (_priv, lk) in flags.items() if lk}
        self._next_purge_s: float | None = None
        #: SHA-256 of each live session's token -> its routing id (RESUME, §6.27).
        self._by_token: dict[str, bytes] = {}
        #: Sessions kept in the store from before this start, resumable until
        #: ``_restored_until_s`` (set at the first tick: start + resume_grace_s).
        self._restored: dict[str, SessionRow] = {
            row.token_sha256: row for row in store.sessions() if row.account_key in self.accounts}
        self._restored_until_s: float | None = None
        self._next_tick_s: float | None = None
        #: CURVE client key (hex) -> live sessions bound to it: the keys that may
        #: subscribe to the PUB (docs/PROTOCOL.md §16.2). ``subscriber_version`` moves at
        #: each change, so that the broker gives its ZAP handler a new snapshot only then.
        self.subscriber_keys: dict[str, int] = {}
        self.subscriber_version = 0
        #: Bytes of the replies to reading requests (READING_REQUESTS) so far, whether
        #: reading budgets are on or not, and of the LOGIN, RESUME and PONG replies charged
        #: to them: the loop reads it to bound a wake-up's big replies
        #: (zchat.broker.BATCH_READ_BYTES).
        self.read_bytes = 0
        self._handlers: dict[type[p.Request], Callable[..., list[Action]]] = {
            p.Info: self._info, p.Register: self._register, p.Login: self._login,
            p.Logout: self._logout, p.Join: self._join, p.Part: self._part,
            p.ListRooms: self._list_rooms, p.Send: self._send, p.SendDirect: self._dm,
            p.FetchHistory: self._history, p.Who: self._who,
            p.SetPresence: self._set_presence, p.Ping: self._ping,
            p.ListSessions: self._list_sessions, p.SetTopic: self._set_topic,
            p.AckDirect: self._ack_dm, p.CreateToken: self._create_token,
            p.ListTokens: self._list_tokens, p.RevokeToken: self._revoke_token,
            p.Resume: self._resume, p.SetSlowMode: self._set_slow_mode,
            p.Kick: self._kick, p.Ban: self._ban, p.Unban: self._unban, p.Mute: self._mute,
            p.Unmute: self._unmute, p.Invite: self._invite, p.SetRole: self._set_role,
            p.SetRoom: self._set_room, p.DeleteMessage: self._delete_message,
            p.ListBans: self._list_bans, p.ReadAudit: self._read_audit,
            p.ListUsers: self._list_users, p.CreateAccounts: self._create_accounts,
            p.AdminSetPassword: self._admin_set_password, p.SetDisabled: self._set_disabled,
            p.SetPassword: self._set_password, p.FetchDmHistory: self._dm_history,
            p.MarkRead: self._mark_read, p.Whois: self._whois, p.FetchRoom: self._room_info,
            p.DeleteRoom: self._delete_room, p.SetQuota: self._set_quota,
        }

    # -- entry points ---------------------------------------------------------------------

    def handle(self, routing_id: bytes, frames: list[bytes], now_s: float, now_ms: int,
               address: str = "", transport_key: str = "") -> list[Action]:
        """Handle one request (the frames after the routing id). ``address`` is the peer's
        IP address, ``transport_key`` its CURVE public key in hex ("" when plain); both
        are read for LOGIN, REGISTER and RESUME only. Never raises: any error becomes an
        ERROR reply; an unexpected one is logged with its traceback and answered with
        500, and the broker keeps serving."""
        request_id = frames[1][:p.MAX_REQUEST_ID_BYTES] if len(frames) > 1 else b""
        try:
            if routing_id not in self.sessions and len(frames) == 4 \
                    and frames[0] == p.VERSION and 1 <= len(frames[1]) <= p.MAX_REQUEST_ID_BYTES:
                # A request that needs a session, from a peer without one, is answered 401
                # before its body is parsed: such junk costs a lookup, not a JSON parse of
                # up to MAX_BODY_BYTES (a tester's 8 connections sent 60 KB ones).
                cls = p.REQUEST_TYPES.get(frames[2].decode("ascii", "replace"))
                if cls is not None and cls.NEEDS_SESSION:
                    raise ProtocolError(Status.UNAUTHORIZED, f"log in before {cls.TYPE}")
            request_id, request = p.decode_request(frames)
            session = self.sessions.get(routing_id)
            if session is not None:
                session.last_seen_s = now_s
                session.last_seen_ms = now_ms
            elif request.NEEDS_SESSION:
                raise ProtocolError(Status.UNAUTHORIZED, f"log in before {request.TYPE}")
            if isinstance(request, p.Login | p.Resume):  # they bind the transport key
                return self._handlers[type(request)](routing_id, request_id, request,
                                                     session, now_s, now_ms, address,
                                                     transport_key)
            reading = session is not None and type(request) in READING_REQUESTS
            budget = None
            if reading and self.config.read_rate_bytes_per_s > 0:
                assert session is not None
                budget = self._check_read_budget(session, now_s)
            actions = self._handlers[type(request)](routing_id, request_id, request,
                                                    session, now_s, now_ms, address)
            if reading:
                # counted even with the budgets off: the loop bounds a wake-up by it
                cost = sum(len(f) for a in actions if isinstance(a, ToPeer) for f in a.frames)
                if budget is not None:
                    budget.charge(cost, now_s)
                self.read_bytes += cost
            return actions
        except ProtocolError as exc:
            return [self._error(routing_id, exc.request_id or request_id, exc.status, exc.reason,
                                exc.retry_after_ms)]
        except StorageError as exc:
            log.error("storage error: %s", exc.reason)
            return [self._error(routing_id, request_id, Status.UNAVAILABLE, exc.reason)]
        except Exception:
            log.exception("internal error handling a request from %s", routing_id.hex())
            return [self._error(routing_id, request_id, Status.INTERNAL,
                                "internal error; the broker logged it")]

    def complete(self, job_id: int, result: Any, now_s: float, now_ms: int) -> list[Action]:
        """Finish an Offload job with its result (or the exception it raised)."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return []
        self._release(job)
        try:
            if isinstance(result, BaseException):
                raise result
            if job.kind == "register":
                return self._finish_register(job, str(result), now_ms)
            if job.kind in ("create_accounts", "admin_password", "set_password"):
                return self._finish_operator_job(job, result, now_ms)
            return self._finish_login(job, bool(result), now_s, now_ms)
        except ProtocolError as exc:
            return [self._error(job.routing_id, job.request_id, exc.status, exc.reason)]
        except StorageError as exc:
            return [self._error(job.routing_id, job.request_id, Status.UNAVAILABLE, exc.reason)]
        except Exception:
            log.exception("internal error finishing a %s", job.kind)
            return [self._error(job.routing_id, job.request_id, Status.INTERNAL,
                                "internal error; the broker logged it")]

    def tick(self, now_s: float, now_ms: int) -> list[Action]:
        """Evict sessions silent for ``heartbeat_timeout_s`` and publish a TICK every
        ``heartbeat_interval_s`` (docs/PROTOCOL.md §10). Call it at least that often."""
        actions: list[Action] = []
        self._expire_restored(now_s)
        if self._login_buckets is not None:
            self._login_buckets.prune(now_s)
        if self._next_purge_s is None or now_s >= self._next_purge_s:
            self._next_purge_s = now_s + BAN_PURGE_INTERVAL_S
            try:
                for ban in self.store.purge_expired_bans(now_ms):
                    log.info("%s of %s in %s lapsed", ban.kind, ban.account_key,
                             ban.room_key or "the server")
            except StorageError as exc:  # they no longer apply anyway; purged next time
                log.error("could not purge lapsed bans: %s", exc.reason)
        timeout = self.config.heartbeat_timeout_s
        if now_s > self._evict_at:  # else no session can have timed out: no O(n) scan
            self._evict_at = math.inf
            for session in list(self.sessions.values()):  # snapshot: eviction mutates
                if now_s - session.last_seen_s > timeout:
                    log.info("evicted %s (silent %.1f s) from %s", session.name,
                             now_s - session.last_seen_s, session.address or "?")
                    actions += self._end_session(session, now_ms)
                else:
                    self._evict_at = min(self._evict_at, session.last_seen_s + timeout)
        if self._next_tick_s is None or now_s >= self._next_tick_s:
            self._next_tick_s = now_s + self.config.heartbeat_interval_s
            actions.append(ToTopic(p.encode_event(p.TOPIC_TICK, p.Tick(time=now_ms))))
        return actions

    def credit_stall(self, seconds: float, now_s: float) -> None:
        """The event loop could not read requests for ``seconds`` (it was busy or stopped):
        move every session's last-seen time forward by that much, so that ``tick`` does not
        evict sessions whose heartbeats were waiting in the socket meanwhile (docs/
        PROTOCOL.md §10). Never later than ``now_s``."""
        log.warning("the broker's loop stalled for %.1f s; not counted as the clients' "
                    "silence", seconds)
        for session in self.sessions.values():
            session.last_seen_s = min(now_s, session.last_seen_s + seconds)

    def next_deadline(self) -> float | None:
        """Monotonic time at which ``tick`` next has work (the next TICK)."""
        return self._next_tick_s

    def shutdown(self, now_ms: int, text: str = "broker shutting down") -> list[Action]:
        """The broker is stopping (docs/PROTOCOL.md §6.29): answer every LOGIN/REGISTER
        still hashing with 503, end every session in memory, publishing offline presence
        for each account that had one (after a restart nobody is online until they RESUME
        or LOGIN, so observers keep a true picture), and publish GOING_AWAY on TOPIC_BROKER
        last: a client closes its sockets when it hears GOING_AWAY, so the presence
        events must go before it. The sessions stay in the store, resumable for
        ``resume_grace_s`` after the next start."""
        actions = self.abandon_jobs("the broker is shutting down; retry when it is back")
        for session in list(self.sessions.values()):
            actions += self._end_session(session, now_ms, forget=False)
        actions.append(ToTopic(p.encode_event(p.TOPIC_BROKER,
                                              p.GoingAway(text=text, time=now_ms))))
        return actions

    def abandon_jobs(self, reason: str) -> list[Action]:
        """Answer every LOGIN/REGISTER/operator request still hashing with 503
        ``reason`` and forget the jobs (their results, if they come, are ignored)."""
        actions: list[Action] = [
            self._error(job.routing_id, job.request_id, Status.UNAVAILABLE, reason)
            for job in self._jobs.values()]
        self._jobs.clear()
        self._jobs_held.clear()
        return actions

    def adopt(self, old: BrokerCore, now_s: float) -> None:
        """Take over from ``old``, a core of the same store whose memory ran ahead of a
        batch the store could not commit (zchat.broker, group commit); this core was just
        built from the store. Each of ``old``'s live sessions whose row is stored goes on
        as it was (routing id, token, presence, away text, send bucket) with no event:
        for everyone else nothing changed. Sessions whose LOGIN was in the lost batch are
        dropped (that LOGIN was answered 503). The login rate limits, slow-mode timers,
        the resume grace period and the TICK schedule carry over."""
        for session in old.sessions.values():
            token_hash = token_sha256(session.token)
            if self._restored.pop(token_hash, None) is None \
                    or session.account_key not in self.accounts:
                continue
            self._bind_session(session, session.last_seen_ms)  # its event is not sent
        for key, account in self.accounts.items():
            before = old.accounts.get(key)
            if before is not None:
                account.read_budget = before.read_budget
            if account.sessions and before is not None:
                account.presence, account.away_text = before.presence, before.away_text
            if before is not None:
                account.password_bucket = before.password_bucket
                account.send_bucket = before.send_bucket
                account.presence_bucket = before.presence_bucket
                account.room_bucket = before.room_bucket
        self._login_buckets = old._login_buckets
        self._last_post = {k: v for k, v in old._last_post.items() if k in self.rooms}
        self._restored_until_s = old._restored_until_s
        self._next_tick_s = old._next_tick_s
        self._next_purge_s = old._next_purge_s
        log.info("reloaded from the store: %d of %d sessions carried over",
                 len(self.sessions), len(old.sessions))

    def _expire_restored(self, now_s: float) -> None:
        """Start the resume grace period at the first call; once it is over, forget the
        sessions kept from before the start (in memory and in the store)."""
        if self._restored_until_s is None:
            self._restored_until_s = now_s + self.config.resume_grace_s
        if self._restored and now_s >= self._restored_until_s:
            expired = list(self._restored)
            self._restored.clear()
            try:
                self.store.delete_sessions(expired)
            except StorageError as exc:  # purged again at the next start's expiry
                log.error("could not purge %d expired sessions: %s", len(expired), exc.reason)
            log.info("%d sessions from before the restart expired unresumed", len(expired))

    # -- helpers ---------------------------------------------------------------------------

    @staticmethod
    def _error(routing_id: bytes, request_id: bytes, status: int, reason: str,
               retry_after_ms: int = 0) -> ToPeer:
        # A reason may quote the peer's input, lone surrogates included (an unknown field
        # named "\ud800"), which UTF-8 cannot carry: they are written as \ud800 escapes.
        reason = reason.encode("utf-8", "backslashreplace").decode("utf-8")
        return ToPeer(routing_id, p.encode_reply(request_id or b"?", p.Error(
            status=int(status), reason=reason, retry_after_ms=retry_after_ms)))

    @staticmethod
    def _ok(routing_id: bytes, request_id: bytes, reply: p.Reply) -> ToPeer:
        return ToPeer(routing_id, p.encode_reply(request_id, reply))

    def _room_key(self, raw: str, session: Session | None = None) -> str:
        """Key of an existing room. Raises ProtocolError 422 (invalid name) or 404 —
        also, with ``session``, for a private room the session's account does not know
        of (``_knows_room``): to an outsider a private room does not exist, and the
        answer is the very one a name without a room gets (docs/PROTOCOL.md §17.2)."""
        key = self._room_keys.get(raw)
        if key is None:
            key = name_key(normalize_name(raw, "room name"))
            if len(self._room_keys) >= ROOM_KEY_CACHE_MAX:
                self._room_keys.clear()
            self._room_keys[raw] = key
        if key not in self.rooms or (session is not None and key in self.private
                                     and not self._knows_room(key, session.account_key)):
            raise ProtocolError(Status.NOT_FOUND, f"no room named {raw!r}")
        return key

    def _knows_room(self, key: str, account_key: str) -> bool:
        """Whether the account may learn that the private room ``key`` exists: a
        member, a broker admin, one holding a role in it (its owner, a moderator who
        left) or one with an invitation to it (docs/PROTOCOL.md §17.2)."""
        return account_key in self.members.get(key, ()) or account_key in self.admins \
            or account_key in self.roles.get(key, {}) or self.store.has_invite(key, account_key)

    def _account_key(self, raw: str) -> str:
        """Key of an existing account. Raises ProtocolError 404."""
        try:
            key = name_key(normalize_name(raw))
        except ProtocolError:
            raise ProtocolError(Status.NOT_FOUND, f"no account named {raw!r}") from None
        if key not in self.accounts:
            raise ProtocolError(Status.NOT_FOUND, f"no account named {raw!r}")
        return key

    def _add_member(self, room_key: str, account_key: str) -> None:
        self.members.setdefault(room_key, set()).add(account_key)
        self.rooms_of.setdefault(account_key, set()).add(room_key)
        self._mention_scans.pop(room_key, None)

    def _forget_member(self, room_key: str, account_key: str) -> None:
        """Forget a membership in memory (the store's row is gone already)."""
        self.members.get(room_key, set()).discard(account_key)
        self.rooms_of.get(account_key, set()).discard(room_key)
        self._last_post.get(room_key, {}).pop(account_key, None)
        self._mention_scans.pop(room_key, None)

    def _presence_event(self, account: Account, key: str, now_ms: int,
                        text: str | None = None) -> ToTopic:
        event = p.PresenceChanged(name=account.name, presence=account.presence, time=now_ms,
                                  text=account.away_text if text is None else text)
        return ToTopic(p.encode_event(p.presence_topic(key), event))

    def _bind_key(self, session: Session) -> None:
        """``session``'s transport key may subscribe (docs/PROTOCOL.md §16.2)."""
        if session.transport_key:
            keys = self.subscriber_keys
            keys[session.transport_key] = keys.get(session.transport_key, 0) + 1
            self.subscriber_version += 1

    def _unbind_key(self, session: Session) -> None:
        """``session`` ends or moves to another connection: its transport key may no
        longer subscribe, unless another live session holds it too."""
        key = session.transport_key
        if key and key in self.subscriber_keys:
            left = self.subscriber_keys[key] - 1
            if left:
                self.subscriber_keys[key] = left
            else:
                del self.subscriber_keys[key]
            self.subscriber_version += 1

    def _end_session(self, session: Session, now_ms: int, quit_text: str = "",
                     forget: bool = True) -> list[Action]:
        """Forget ``session``; when it was the account's last, publish offline (carrying
        ``quit_text``, LOGOUT's quit message) (docs/PROTOCOL.md §8). With ``forget`` its
        stored row goes too, so it cannot be resumed (§6.27); shutdown keeps it."""
        del self.sessions[session.routing_id]
        self._unbind_key(session)
        token_hash = token_sha256(session.token)
        self._by_token.pop(token_hash, None)
        if forget:
            try:
                self.store.delete_sessions([token_hash])
            except StorageError as exc:  # the row expires after the next start's grace
                log.error("could not forget the session of %s: %s", session.name, exc.reason)
        account = self.accounts[session.account_key]
        account.sessions.discard(session.routing_id)
        if account.sessions:
            return []
        account.presence = "offline"
        account.away_text = ""
        return [self._presence_event(account, session.account_key, now_ms, quit_text)]

    @staticmethod
    def _check_away_text(text: str, what: str) -> str:
        """An away or quit message: at most MAX_AWAY_TEXT_CHARS characters (413) and, when
        not empty, the message text rules (422), on one line: no newline, tab or line
        separator, since clients print it inside one line (docs/PROTOCOL.md §12)."""
        if len(text) > p.MAX_AWAY_TEXT_CHARS:
            raise ProtocolError(Status.TOO_LARGE,
                                f"{what} longer than {p.MAX_AWAY_TEXT_CHARS} characters")
        if text:
            validate_text(text, p.MAX_AWAY_TEXT_CHARS * 4)
            if any(ch in "\n\t\u2028\u2029" for ch in text):
                raise ProtocolError(Status.INVALID, f"the {what} must be one line: no line "
                                    "breaks or tabs")
        return text

    @staticmethod
    def _check_topic(topic: str) -> str:
        """A room topic: at most MAX_TOPIC_CHARS characters (413); may be empty; one line
        with no control character at all, not even newline or tab (422)."""
        if len(topic) > p.MAX_TOPIC_CHARS:
            raise ProtocolError(Status.TOO_LARGE,
                                f"topic longer than {p.MAX_TOPIC_CHARS} characters")
        for ch in topic:
            cat = unicodedata.category(ch)
            if ch in "\r\n\u2028\u2029":
                raise ProtocolError(Status.INVALID, "a topic is one line: no line breaks")
            if cat == "Cc":
                raise ProtocolError(Status.INVALID, "topic contains a control character "
                                    f"(U+{ord(ch):04X})")
            if ch in BIDI_CONTROLS:
                raise ProtocolError(Status.INVALID, "topic contains a bidirectional "
                                    f"control character (U+{ord(ch):04X})")
            if cat == "Cs":
                raise ProtocolError(Status.INVALID, "topic is not valid Unicode")
        return topic

    def _start_job(self, job: _Job, work: Callable[[], Any]) -> list[Action]:
        """Offload ``work`` for ``job``, which holds a place of each of its ``holds``
        (checked before by ``_check_jobs``) until ``complete`` or ``abandon_jobs``."""
        if len(self._jobs) >= MAX_PENDING_JOBS:
            raise ProtocolError(Status.UNAVAILABLE, "too many logins in progress; retry soon")
        self._check_jobs(job.holds)  # again: cheap, and a handler may have skipped it
        job_id = self._next_job
        self._next_job += 1
        self._jobs[job_id] = job
        for key in job.holds:
            self._jobs_held[key] = self._jobs_held.get(key, 0) + 1
        return [Offload(job_id, work)]

    @staticmethod
    def _job_holds(rid: bytes, address: str, account_key: str = "") -> tuple[str, ...]:
        """The in-flight counters of a password job: the peer's address key (ratelimit.
        address_key) and, when the job checks or sets an account's password, the
        account's."""
        peer = address_key(address, rid)
        return (peer, "acct:" + account_key) if account_key else (peer,)

    def _check_jobs(self, holds: tuple[str, ...]) -> None:
        """Raise RateLimited (429) when the address or the account of a new password
        job has MAX_JOBS_PER_PEER in flight already (docs/PROTOCOL.md §15.1). Off with
        the login limit (``login_rate_per_s`` 0: benchmarks, the chaos harness)."""
        if self._login_buckets is None:
            return
        for key in holds:
            if self._jobs_held.get(key, 0) >= MAX_JOBS_PER_PEER:
                whose = "for this account" if key.startswith("acct:") else \
                    "from your address"
                raise RateLimited(f"too many password checks in progress {whose}: wait "
                                  f"{_seconds(JOB_BUSY_RETRY_MS)} (at most "
                                  f"{MAX_JOBS_PER_PEER} at once)", JOB_BUSY_RETRY_MS)

    def _release(self, job: _Job) -> None:
        for key in job.holds:
            left = self._jobs_held.get(key, 0) - 1
            if left > 0:
                self._jobs_held[key] = left
            else:
                self._jobs_held.pop(key, None)

    # -- protection (docs/PROTOCOL.md §15) ---------------------------------------------------

    def _limit_login(self, rid: bytes, address: str, now_s: float, what: str) -> None:
        """Take a token from the peer's login bucket (by address, by routing id without
        one: ratelimit.address_key), before any other work. Raises RateLimited (429)."""
        table = self._login_buckets
        if table is None:
            return
        wait_ms = table.take(address_key(address, rid), now_s)
        if wait_ms:
            cfg = self.config
            raise RateLimited(f"too many {what} from your address: wait "
                              f"{_seconds(wait_ms)} (at most {cfg.login_burst} at once, then "
                              f"{cfg.login_rate_per_s:g} a second)", wait_ms)

    def _limit_password_change(self, rid: bytes, address: str, session: Session,
                               now_s: float) -> None:
        """SET_PASSWORD (§6.46): a token from the address's login bucket and one from
        the account's own bucket of the same size, both or neither (429 naming the one
        that refused). The account's bucket is shared by its sessions, so a stolen
        session token resumed on fresh connections or addresses guesses no faster."""
        table = self._login_buckets
        if table is None:
            return
        cfg = self.config
        account = self.accounts[session.account_key]
        bucket = account.password_bucket
        if bucket is None:
            bucket = account.password_bucket = TokenBucket(cfg.login_rate_per_s,
                                                           cfg.login_burst, now_s)
        key = address_key(address, rid)
        limits = f"(at most {cfg.login_burst} at once, then {cfg.login_rate_per_s:g} a second)"
        wait_ms = table.wait_ms(key, now_s)
        if wait_ms:
            raise RateLimited(f"too many password changes from your address: wait "
                              f"{_seconds(wait_ms)} {limits}", wait_ms)
        wait_ms = bucket.wait_ms(now_s)
        if wait_ms:
            raise RateLimited(f"too many password changes for this account: wait "
                              f"{_seconds(wait_ms)} {limits}", wait_ms)
        table.take(key, now_s)
        bucket.take(now_s)

    def _check_capacity(self) -> None:
        """Raise ProtocolError 503 when the broker holds ``max_sessions`` sessions."""
        if len(self.sessions) >= self.config.max_sessions:
            raise ProtocolError(Status.UNAVAILABLE, f"the broker is full ("
                                f"{self.config.max_sessions} sessions, its max_sessions); "
                                "retry later")

    def _limit_send(self, session: Session, now_s: float) -> None:
        """Take a token from the session's SEND/DM bucket and from its account's (when
        account_send_rate_per_s is not 0), both or neither. Raises RateLimited (429)."""
        bucket = session.send_bucket
        if bucket is None and self.config.send_rate_per_s > 0:
            bucket = session.send_bucket = TokenBucket(
                self.config.send_rate_per_s, self.config.send_burst, now_s)
        shared = None
        if self.config.account_send_rate_per_s > 0:
            account = self.accounts[session.account_key]
            shared = account.send_bucket
            if shared is None:
                shared = account.send_bucket = TokenBucket(
                    self.config.account_send_rate_per_s, self.config.account_send_burst,
                    now_s)
        wait_ms = 0 if bucket is None else bucket.wait_ms(now_s)
        if wait_ms:
            assert bucket is not None
            raise RateLimited(f"sending too fast: wait {_seconds(wait_ms)} (at most "
                              f"{bucket.burst} at once, then {bucket.rate_per_s:g} a "
                              "second)", wait_ms)
        if shared is not None:
            wait_ms = shared.take(now_s)
            if wait_ms:
                raise RateLimited(f"sending too fast: wait {_seconds(wait_ms)} (at most "
                                  f"{shared.burst} at once, then {shared.rate_per_s:g} a "
                                  "second, for all your sessions together)", wait_ms)
        if bucket is not None:
            bucket.take(now_s)

    def _limit_account(self, session: Session, kind: str, now_s: float) -> None:
        """Take a token from the account's ``kind`` bucket ("presence" or "room"),
        unless that limit is off. Raises RateLimited (429)."""
        cfg = self.config
        account = self.accounts[session.account_key]
        if kind == "presence":
            rate, burst, what = cfg.presence_rate_per_s, cfg.presence_burst, \
                "changing presence"
            bucket = account.presence_bucket
        else:
            rate, burst, what = cfg.room_create_rate_per_s, cfg.room_create_burst, \
                "creating rooms"
            bucket = account.room_bucket
        if rate <= 0:
            return
        if bucket is None:
            bucket = TokenBucket(rate, burst, now_s)
            if kind == "presence":
                account.presence_bucket = bucket
            else:
                account.room_bucket = bucket
        wait_ms = bucket.take(now_s)
        if wait_ms:
            raise RateLimited(f"{what} too fast: wait {_seconds(wait_ms)} (at most "
                              f"{burst} at once, then {_rate(rate)})", wait_ms)

    def _check_read_budget(self, session: Session, now_s: float) -> ByteBudget:
        """The account's reading budget (made full at first use), or RateLimited (429)
        while it is spent (docs/PROTOCOL.md §15.1). Checked before the work; the caller
        charges the reply's real size after it."""
        return self._check_reading(session.account_key, now_s)

    def _read_budget(self, account_key: str, now_s: float) -> ByteBudget:
        """The account's reading budget, made full at first use."""
        account = self.accounts[account_key]
        budget = account.read_budget
        if budget is None:
            cfg = self.config
            budget = account.read_budget = ByteBudget(cfg.read_rate_bytes_per_s,
                                                      cfg.read_burst_bytes, now_s)
        return budget

    def _check_reading(self, account_key: str, now_s: float) -> ByteBudget:
        """``_check_read_budget`` by account key."""
        budget = self._read_budget(account_key, now_s)
        wait_ms = budget.wait_ms(now_s)
        if wait_ms:
            raise RateLimited(f"reading too fast: wait {_seconds(wait_ms)} (at most "
                              f"{budget.burst / 1048576:g} MiB of replies at once, then "
                              f"{budget.rate_per_s / 1048576:g} MiB a second)", wait_ms)
        return budget

    def _charge_reply(self, account_key: str, reply: ToPeer, now_s: float) -> ToPeer:
        """Charge a LOGIN or RESUME reply (its rooms, read state and up to
        ``max_stored_dms`` pending DMs: megabytes at worst) to the account's reading
        budget, as the replies of reading requests are (docs/PROTOCOL.md §15.1)."""
        if self.config.read_rate_bytes_per_s > 0:
            cost = sum(len(f) for f in reply.frames)
            self._read_budget(account_key, now_s).charge(cost, now_s)
            self.read_bytes += cost
        return reply

    def _limit_resume(self, account_key: str, now_s: float) -> None:
        """Take a token of the account's RESUME bucket and check its reading budget
        (a RESUME reply is charged to it), before anything else is done. Raises
        RateLimited (429)."""
        account = self.accounts[account_key]
        bucket = account.resume_bucket
        if bucket is None:
            bucket = account.resume_bucket = TokenBucket(RESUME_RATE_PER_S, RESUME_BURST,
                                                         now_s)
        wait_ms = bucket.take(now_s)
        if wait_ms:
            raise RateLimited(f"too many RESUMEs of this account: wait {_seconds(wait_ms)} "
                              f"(at most {RESUME_BURST} at once, then "
                              f"{RESUME_RATE_PER_S:g} a second)", wait_ms)
        if self.config.read_rate_bytes_per_s > 0:
            self._check_reading(account_key, now_s)

    def subscription_allowed(self, topic: bytes) -> bool:
        """Whether a subscriber may subscribe to ``topic`` (docs/PROTOCOL.md §16.2): the
        tick, broker and presence prefixes, or ``room/<key>/`` of a room that exists. The
        PUB keeps every topic any subscriber asked for in a trie at ~50 bytes a byte of
        topic, so topics of nothing are refused (zchat.broker)."""
        if topic in _FIXED_TOPICS:
            return True
        prefix = p.TOPIC_ROOM_PREFIX
        if not (topic.startswith(prefix) and topic.endswith(b"/")
                and len(topic) <= MAX_SUBSCRIPTION_BYTES):
            return False
        try:
            return topic[len(prefix):-1].decode("utf-8") in self.rooms
        except UnicodeDecodeError:
            return False

    def end_subscriber(self, transport_key: str, topic: bytes, now_ms: int,
                       why: str = "") -> list[Action]:
        """A subscriber with ``transport_key`` (hex) misused the PUB (``why``,
        zchat.subscriptions): end the sessions bound to that key, each told so
        (SESSION_CLOSED), so that the key's new PUB connections are refused (§16.2)."""
        ended = [s for s in self.sessions.values() if s.transport_key == transport_key]
        actions: list[Action] = []
        reason = "your client misused its subscriptions; log in again"
        for session in ended:
            log.warning("ended the session of %s from %s: its subscriber misused the PUB "
                        "(%s; e.g. topic %r)", session.name, session.address or "?", why,
                        topic[:40])
            actions.append(ToPeer(session.routing_id, p.encode_push(p.SessionClosed(
                reason=reason, by="", time=now_ms))))
            actions += self._end_session(session, now_ms, "")
        return actions

    def end_unread(self, routing_id: bytes, now_ms: int) -> list[Action]:
        """A reply or push to ``routing_id`` was dropped at its queue's high-water mark:
        the peer does not read (IRC's "SendQ exceeded"). End its session, if it has one
        (docs/PROTOCOL.md §15.2): the connection keeps its full queue, and every further
        reply to it is dropped until it reads; it must LOGIN again."""
        session = self.sessions.get(routing_id)
        if session is None:
            return []
        log.warning("ended the session of %s from %s: it does not read its replies (its "
                    "queue is full)", session.name, session.address or "?")
        return self._end_session(session, now_ms, "its replies were not read")

    def _check_slow_mode(self, key: str, session: Session, now_s: float) -> None:
        """Room ``key`` is in slow mode: raise RateLimited (429) when the account posted
        there less than ``slow_mode[key]`` seconds ago. Broker admins and the room's
        creator are exempt (docs/PROTOCOL.md §6.28)."""
        account = session.account_key
        if self._is_mod(key, account):
            return
        last = self._last_post.get(key, {}).get(account)
        if last is None:
            return
        wait_s = last + self.slow_mode[key] - now_s
        if wait_s > 0:
            wait_ms = math.ceil(wait_s * 1000)
            raise RateLimited(f"slow mode in #{self.rooms[key]}: wait "
                              f"{_seconds(wait_ms)} (one message per {self.slow_mode[key]} "
                              "s)", wait_ms)

    # -- requests ---------------------------------------------------------------------------

    def _info(self, rid: bytes, req_id: bytes, req: p.Info, session: Session | None,
              now_s: float, now_ms: int, address: str) -> list[Action]:
        cfg = self.config
        return [self._ok(rid, req_id, p.InfoReply(
            version=p.VERSION_NUMBER, pub=self.pub_endpoint, time=now_ms,
            heartbeat_interval_ms=int(cfg.heartbeat_interval_s * 1000),
            heartbeat_timeout_ms=int(cfg.heartbeat_timeout_s * 1000),
            max_text_bytes=cfg.max_text_bytes, max_text_lines=cfg.max_text_lines,
            min_password_chars=cfg.min_password_chars))]

    def _check_password(self, password: str) -> None:
        """A password to log in with (LOGIN, §6.3): not empty, not too long; no minimum
        length, so that accounts made before ``min_password_chars`` still log in."""
        check_password(password)  # shared with `zchat admin` (zchat.admin)

    def _check_new_password(self, password: str) -> None:
        """A new password (REGISTER, SET_PASSWORD, ADMIN_SET_PASSWORD, §6.2): also at
        least ``min_password_chars`` characters (422)."""
        check_new_password(password, self.config.min_password_chars)

    def _check_not_admin_name(self, key: str, skel: str, name: str) -> None:
        """REGISTER and CREATE_ACCOUNTS (§6.2, §6.43): raise ProtocolError 403 when the
        name, or a look-alike of it (same skeleton, §12), is listed in ``admins``.
        Whoever took that name would be a broker admin; only the operator creates those
        accounts, with `zchat admin create` on the database (docs/admin.md)."""
        if key in self.admins or skel in self._admin_skeletons:
            raise ProtocolError(Status.FORBIDDEN, f"the name {name!r} is reserved for a "
                                "broker admin; the operator creates that account with "
                                "`zchat admin create` on the database")

    def _register(self, rid: bytes, req_id: bytes, req: p.Register, session: Session | None,
                  now_s: float, now_ms: int, address: str) -> list[Action]:
        holds = self._job_holds(rid, address)
        self._check_jobs(holds)
        self._limit_login(rid, address, now_s, "registrations")
        name = normalize_new_name(req.name)
        self._check_new_password(req.password)
        key = name_key(name)
        self._check_not_admin_name(key, skeleton(name), name)
        if key in self.accounts or self.store.account_skeleton_taken(skeleton(name)):
            raise ProtocolError(Status.CONFLICT, f"the name {name!r} is taken "
                                "(or too like an existing name)")
        cfg = self.config
        password = req.password
        return self._start_job(
            _Job("register", rid, req_id, key, name, address, bot=req.bot, holds=holds),
            lambda: hash_password(password, cfg.scrypt_n, cfg.scrypt_r, cfg.scrypt_p))

    def _finish_register(self, job: _Job, password_hash: str, now_ms: int) -> list[Action]:
        if job.key in self.accounts:
            raise ProtocolError(Status.CONFLICT, f"the name {job.name!r} is taken")
        lobby = name_key(DEFAULT_ROOM)
        # one commit: a 503 must leave no account behind (docs/PROTOCOL.md §11)
        self.store.create_account(job.key, job.name, skeleton(job.name), password_hash, now_ms,
                                  bot=job.bot, rooms=(lobby,))
        self.accounts[job.key] = Account(job.name, bot=job.bot)
        self._add_member(lobby, job.key)
        log.info("registered %s%s from %s", job.name, " (bot)" if job.bot else "",
                 job.address or "?")
        joined = p.UserJoined(room=self.rooms[lobby], name=job.name, time=now_ms)
        return [self._ok(job.routing_id, job.request_id, p.Registered(name=job.name)),
                *self._room_event(lobby, joined)]

    def _login(self, rid: bytes, req_id: bytes, req: p.Login, session: Session | None,
               now_s: float, now_ms: int, address: str,
               transport_key: str = "") -> list[Action]:
        holds = self._job_holds(rid, address, self._known_account(req.name))
        self._check_jobs(holds)
        self._limit_login(rid, address, now_s, "login attempts")
        if session is not None:
            raise ProtocolError(Status.CONFLICT, f"this connection is logged in as "
                                f"{session.name}; LOGOUT first")
        self._check_capacity()
        if bool(req.password) == bool(req.token):
            raise ProtocolError(Status.BAD_REQUEST, "give exactly one of password and token")
        if req.token:
            return self._login_by_token(rid, req_id, req, now_s, now_ms, address,
                                        transport_key)
        self._check_password(req.password)
        key = self._account_key(req.name)
        row = self.store.get_account(key)
        if row is None:  # the in-memory index and the store disagree: not the peer's fault
            raise ProtocolError(Status.NOT_FOUND, f"no account named {req.name!r}")
        password, stored = req.password, row.password_hash
        return self._start_job(_Job("login", rid, req_id, key, row.name, address,
                                    transport_key=transport_key,
                                    holds=self._job_holds(rid, address, key)),
                               lambda: verify_password(password, stored))

    def _known_account(self, raw: str) -> str:
        """The key of the account named ``raw``, or "" when there is none (never
        raises: for the checks made before a request's name is validated)."""
        try:
            key = name_key(normalize_name(raw))
        except ProtocolError:
            return ""
        return key if key in self.accounts else ""

    def _login_by_token(self, rid: bytes, req_id: bytes, req: p.Login, now_s: float,
                        now_ms: int, address: str, transport_key: str) -> list[Action]:
        """LOGIN with an account token (docs/PROTOCOL.md §6.3): one SHA-256 and at most
        MAX_TOKENS_PER_ACCOUNT constant-time comparisons, cheap enough for the loop, so no
        Offload. 401 for a wrong or revoked token."""
        if len(req.token) > p.MAX_PASSWORD_CHARS:
            raise ProtocolError(Status.TOO_LARGE,
                                f"token longer than {p.MAX_PASSWORD_CHARS} characters")
        key = self._account_key(req.name)
        token_id = match_token(req.token, self.store.token_hashes(key))
        job = _Job("login", rid, req_id, key, self.accounts[key].name, address,
                   transport_key=transport_key)
        if token_id is None:
            log.info("failed token login for %s from %s", job.name, address or "?")
            raise ProtocolError(Status.UNAUTHORIZED, "wrong name or token (or it was revoked)")
        return self._finish_login(job, True, now_s, now_ms, token_id=token_id)

    def _finish_login(self, job: _Job, matched: bool, now_s: float, now_ms: int,
                      token_id: int | None = None) -> list[Action]:
        if not matched:
            log.info("failed login for %s from %s", job.name, job.address or "?")
            raise ProtocolError(Status.UNAUTHORIZED, "wrong name or password")
        existing = self.sessions.get(job.routing_id)
        if existing is not None:
            raise ProtocolError(Status.CONFLICT, f"this connection is logged in as "
                                f"{existing.name}; LOGOUT first")
        self._check_may_log_in(job.key, now_ms)  # after the password: no account probing
        self._check_capacity()  # again: sessions may have filled up while hashing
        # Store first: if it fails (503) the connection must not be left half logged in.
        account = self.accounts[job.key]
        token = secrets.token_urlsafe(24)
        reply = self._logged_in(job.key, account.name, token)
        self.store.add_session(token_sha256(token), job.key, token_id, job.address, now_ms)
        session = Session(job.routing_id, token, job.key, account.name,
                          job.address, now_ms, now_s, now_ms, login_token_id=token_id,
                          transport_key=job.transport_key)
        actions = self._bind_session(session, now_ms)
        log.info("login %s from %s (%d sessions, %d stored DMs)%s", account.name,
                 job.address or "?", len(account.sessions), len(reply.pending),
                 "" if token_id is None else f" with token {token_id}")
        actions.insert(0, self._charge_reply(job.key, self._ok(job.routing_id, job.request_id,
                                                               reply), now_s))
        return actions

    def _logged_in(self, key: str, name: str, token: str) -> p.LoggedIn:
        """The LOGIN/RESUME reply (docs/PROTOCOL.md §6.3): the account's rooms (with
        last_seq and topic), its pending DMs, and its read state (§6.3.1): per room the
        read marker, what is unread after it and the unread mentions; the DM
        conversations with unread DMs, newest first, at most MAX_DM_READS."""
        room_rows = self.store.rooms_of(key)
        rooms = tuple(p.RoomState(room=r.name, last_seq=r.last_seq, topic=r.topic,
                                  slow_mode_s=self.slow_mode.get(r.key, 0),
                                  private=r.key in self.private, locked=r.key in self.locked)
                      for r in room_rows)
        pending = tuple(p.DirectMessage(id=d.id, time=d.time_ms, sender=d.sender,
                                        to=d.recipient, text=d.text)
                        for d in self.store.pending_dms(key, self.config.max_stored_dms))
        reads = self.store.room_reads(key)
        room_reads = []
        for r in room_rows:
            read = reads.get(r.key)
            read_seq = r.last_seq if read is None else min(read.read_seq, r.last_seq)
            room_reads.append(p.RoomRead(room=r.name, read_seq=read_seq,
                                         unread=r.last_seq - read_seq,
                                         mentions=0 if read is None else read.mentions))
        dm_reads = tuple(p.DmRead(peer=d.peer, last_id=d.last_id, read_id=d.read_id,
                                  unread=d.unread)
                         for d in self.store.unread_dm_reads(key, p.MAX_DM_READS))
        return p.LoggedIn(name=name, session=token, rooms=rooms, pending=pending,
                          room_reads=tuple(room_reads), dm_reads=dm_reads)

    def _bind_session(self, session: Session, now_ms: int) -> list[Action]:
        """Register ``session`` under its routing id; an offline account goes online (one
        PRESENCE event, returned)."""
        self.sessions[session.routing_id] = session
        self._bind_key(session)
        self._evict_at = min(self._evict_at,
                             session.last_seen_s + self.config.heartbeat_timeout_s)
        self._by_token[token_sha256(session.token)] = session.routing_id
        account = self.accounts[session.account_key]
        account.sessions.add(session.routing_id)
        if account.presence == "offline":
            account.presence = "online"
            return [self._presence_event(account, session.account_key, now_ms)]
        return []

    def _resume(self, rid: bytes, req_id: bytes, req: p.Resume, session: Session | None,
                now_s: float, now_ms: int, address: str,
                transport_key: str = "") -> list[Action]:
        """RESUME (docs/PROTOCOL.md §6.27): take over a session by its token on this new
        connection. A live session (not evicted: silent less than heartbeat_timeout_s) is
        rebound to this routing id, the old one forgotten, and no PRESENCE is published.
        A session kept from before a broker restart is resumable for resume_grace_s after
        the start; it comes back like a LOGIN (online PRESENCE if the account was
        offline). Raises ProtocolError 409 on a connection already logged in, 400 for an
        empty token, 401 for an unknown, ended or expired one. Not rate-limited as a
        login: the 256-bit token cannot be guessed."""
        if session is not None:
            raise ProtocolError(Status.CONFLICT, f"this connection is logged in as "
                                f"{session.name}; LOGOUT first")
        if not req.session:
            raise ProtocolError(Status.BAD_REQUEST, "session must not be empty")
        if len(req.session) > p.MAX_PASSWORD_CHARS:
            raise ProtocolError(Status.UNAUTHORIZED, "unknown or expired session")
        token_hash = token_sha256(req.session)
        old_rid = self._by_token.get(token_hash)
        if old_rid is not None:
            live = self.sessions[old_rid]
            self._limit_resume(live.account_key, now_s)
            self._check_may_log_in(live.account_key, now_ms)
            reply = self._logged_in(live.account_key, live.name, live.token)
            del self.sessions[old_rid]
            account = self.accounts[live.account_key]
            account.sessions.discard(old_rid)
            live.routing_id = rid
            live.last_seen_s, live.last_seen_ms = now_s, now_ms
            if address:
                live.address = address
            self._unbind_key(live)  # the old connection's key may no longer subscribe
            live.transport_key = transport_key
            self._bind_key(live)
            self.sessions[rid] = live
            self._by_token[token_hash] = rid
            account.sessions.add(rid)
            log.info("resumed %s on a new connection from %s", live.name, address or "?")
            # §6.27: the last RESUME wins; the connection it displaces is told, so that
            # two connections never both believe they hold the session
            closed = p.encode_push(p.SessionClosed(
                reason="your session was resumed on another connection", by=live.name,
                time=now_ms))
            return [self._charge_reply(live.account_key, self._ok(rid, req_id, reply), now_s),
                    ToPeer(old_rid, closed)]
        self._expire_restored(now_s)
        row = self._restored.get(token_hash)
        if row is None:
            raise ProtocolError(Status.UNAUTHORIZED, "unknown or expired session; LOGIN "
                                "again")
        self._limit_resume(row.account_key, now_s)
        self._check_may_log_in(row.account_key, now_ms)
        account = self.accounts[row.account_key]
        reply = self._logged_in(row.account_key, account.name, req.session)
        del self._restored[token_hash]
        resumed = Session(rid, req.session, row.account_key, account.name,
                          address or row.address, row.login_ms, now_s, now_ms,
                          login_token_id=row.login_token_id, transport_key=transport_key)
        actions = self._bind_session(resumed, now_ms)
        log.info("resumed %s after the broker restart, from %s", account.name,
                 address or row.address or "?")
        return [self._charge_reply(row.account_key, self._ok(rid, req_id, reply), now_s),
                *actions]

    def _logout(self, rid: bytes, req_id: bytes, req: p.Logout, session: Session,
                now_s: float, now_ms: int, address: str) -> list[Action]:
        text = self._check_away_text(req.text, "quit message")
        if text and self.store.active_ban("mute", "", session.account_key, now_ms):
            text = ""  # §6.4: a quit message is speech; the LOGOUT itself goes through
        log.info("logout %s", session.name)
        return [self._ok(rid, req_id, p.Ok()), *self._end_session(session, now_ms, text)]

    def _join(self, rid: bytes, req_id: bytes, req: p.Join, session: Session,
              now_s: float, now_ms: int, address: str) -> list[Action]:
        name = normalize_name(req.room, "room name")
        key = name_key(name)
        me = session.account_key
        # §17.2: to an outsider a private room does not exist; its name is taken, though,
        # so JOIN answers as for a name too like an existing room's (the store's 409)
        hidden = key in self.private and not self._knows_room(key, me)
        if key not in self.rooms or hidden:  # creating it: a new name's rules too (§12)
            normalize_new_name(name, "room name")
        invited = False
        if me not in self.members.get(key, ()):
            # docs/PROTOCOL.md §15: joining costs a token of the sending bucket, and an
            # account is in at most MAX_ROOMS_PER_ACCOUNT rooms, so that a JOIN flood
            # cannot grow the rooms (and every PONG, which lists them) without bound.
            if self._sending_limited:
                self._limit_send(session, now_s)
            if len(self.rooms_of.get(me, ())) >= p.MAX_ROOMS_PER_ACCOUNT:
                raise ProtocolError(Status.FORBIDDEN, f"you are in {p.MAX_ROOMS_PER_ACCOUNT}"
                                    " rooms, the most an account may be in; PART one first")
        if hidden:
            raise ProtocolError(Status.CONFLICT, f"a room named like {name!r} exists already")
        if key not in self.rooms and me not in self.admins:
            # §15: creating rooms is limited per account, in rate and in number
            made = self.rooms_created.get(me, 0)
            if 0 < self.config.max_rooms_created <= made:
                raise ProtocolError(Status.FORBIDDEN, f"you have created {made} rooms, the "
                                    "most an account may; DELETE_ROOM one of them first")
            self._limit_account(session, "room", now_s)
        if key in self.rooms and me not in self.members.get(key, ()):
            # docs/PROTOCOL.md §17: a ban keeps out; a private room needs an invitation
            # (but for admins and its owner, §17.2); any JOIN uses the invitation up,
            # public room or not, so that it cannot serve again once the room is private
            self._check_not_banned(key, me, now_ms)
            invited = self.store.has_invite(key, me)
            if key in self.private and not invited and me not in self.admins \
                    and self.roles.get(key, {}).get(me) != "owner":
                raise ProtocolError(Status.FORBIDDEN, f"#{self.rooms[key]} is "
                                    "invite-only: ask one of its moderators to invite you")
        with self.store.transaction():
            room, created, joined = self.store.join_room(key, name, skeleton(name), me,
                                                         now_ms, private=req.private)
            if invited:
                self.store.take_invite(key, me)
        self.rooms[key] = room.name
        self.last_seq.setdefault(key, room.last_seq)
        self.topics.setdefault(key, room.topic)
        if created:
            self.creators[key] = me
            self.rooms_created[me] = self.rooms_created.get(me, 0) + 1
            self.roles[key] = {me: "owner"}
            if room.last_seq:  # made under a deleted room's name: numbered on from it
                self.first_seq[key] = room.last_seq + 1
            if req.private:
                self.private.add(key)
        self._add_member(key, me)
        actions: list[Action] = [self._ok(rid, req_id, p.RoomJoined(
            room=room.name, last_seq=room.last_seq, created=created, topic=room.topic,
            slow_mode_s=self.slow_mode.get(key, 0), private=key in self.private,
            locked=key in self.locked, first_seq=self.first_seq.get(key, 1)))]
        if joined:
            actions += self._room_event(key, p.UserJoined(room=room.name, name=session.name,
                                                          time=now_ms))
        return actions

    def _part(self, rid: bytes, req_id: bytes, req: p.Part, session: Session,
              now_s: float, now_ms: int, address: str) -> list[Action]:
        key = self._room_key(req.room, session)
        if not self.store.leave_room(key, session.account_key):
            raise ProtocolError(Status.FORBIDDEN, f"you are not in {self.rooms[key]!r}")
        if self.store.has_invite(key, session.account_key):  # §6.6: none outlives a stay
            self.store.take_invite(key, session.account_key)
        left = p.UserLeft(room=self.rooms[key], name=session.name, time=now_ms)
        actions: list[Action] = [self._ok(rid, req_id, p.Ok()),
                                 *self._room_event(key, left, (session.account_key,))]
        self._forget_member(key, session.account_key)
        return actions

    def _list_rooms(self, rid: bytes, req_id: bytes, req: p.ListRooms, session: Session,
                    now_s: float, now_ms: int, address: str) -> list[Action]:
        me = session.account_key
        rooms = tuple(p.RoomInfo(room=r.name, members=r.members, last_seq=r.last_seq,
                                 joined=me in self.members.get(r.key, ()),
                                 topic=r.topic, slow_mode_s=self.slow_mode.get(r.key, 0),
                                 private=r.key in self.private, locked=r.key in self.locked)
                      for r in self.store.list_rooms()
                      if r.key not in self.private or me in self.admins
                      or me in self.members.get(r.key, ()))
        return [self._ok(rid, req_id, p.RoomList(rooms=rooms))]

    def _room_info(self, rid: bytes, req_id: bytes, req: p.FetchRoom, session: Session,
                   now_s: float, now_ms: int, address: str) -> list[Action]:
        """ROOM_INFO (docs/PROTOCOL.md §6.51): one room's state, read without joining
        it, so that reading a room (its topic, as HISTORY its messages and WHO its
        members) changes nothing and announces nobody. 404 no such room (none is
        created), 422 a bad name, 403 a private room the account is not in (admins may
        read it, §17.2)."""
        key = self._room_key(req.room, session)
        self._check_may_read(key, session)
        return [self._ok(rid, req_id, p.RoomDetails(
            room=self.rooms[key], members=len(self.members.get(key, ())),
            last_seq=self.last_seq[key], joined=session.account_key in self.members.get(key, ()),
            topic=self.topics[key], slow_mode_s=self.slow_mode.get(key, 0),
            private=key in self.private, locked=key in self.locked))]

    def _send(self, rid: bytes, req_id: bytes, req: p.Send, session: Session,
              now_s: float, now_ms: int, address: str) -> list[Action]:
        if self._sending_limited:
            self._limit_send(session, now_s)
        key = self._room_key(req.room, session)
        if session.account_key not in self.members[key]:
            raise ProtocolError(Status.FORBIDDEN,
                                f"you are not in {self.rooms[key]!r}; JOIN it first")
        if len(req.cmid) > p.MAX_CMID_CHARS:
            raise ProtocolError(Status.BAD_REQUEST,
                                f"cmid longer than {p.MAX_CMID_CHARS} characters")
        text = validate_text(req.text, self.config.max_text_bytes,
                             self.config.max_text_lines)
        self._check_may_post(key, session, now_ms)
        if self.slow_mode.get(key):
            self._check_slow_mode(key, session, now_s)
        me = session.account_key
        used = self.storage_used
        size = (len(text) if text.isascii() else len(text.encode())) if used is not None else 0
        posted = None
        if used is not None and self._over_quota(me, used, size):
            # a retry of a message stored before the quota filled is still answered
            posted = self.store.message_by_cmid(key, session.name, req.cmid) \
                if req.cmid else None
            if posted is None:
                raise self._quota_full(me, used, size)
        if posted is None:
            posted = self.store.post_message(key, session.name, req.kind, text, req.cmid,
                                             now_ms, me, self._mentioned(key, text, me))
            if used is not None and not posted.duplicate:
                used[me] = used.get(me, 0) + size
        seq = posted.seq
        if posted.duplicate:  # a retry (§6.8): the original was published already
            log.debug("SEND retry %r in %s: message #%d", req.cmid, self.rooms[key], seq)
            return [self._ok(rid, req_id, p.Sent(room=self.rooms[key], seq=seq,
                                                 time=posted.time_ms))]
        self.last_seq[key] = seq
        if self.slow_mode.get(key):
            self._last_post.setdefault(key, {})[session.account_key] = now_s
        if log.isEnabledFor(logging.DEBUG):
            log.debug("message %s#%d from %s: %r", self.rooms[key], seq, session.name, text)
        event = p.MessagePosted(room=self.rooms[key], seq=seq, time=now_ms,
                                sender=session.name, text=text, kind=req.kind)
        return [*self._room_event(key, event),
                self._ok(rid, req_id, p.Sent(room=self.rooms[key], seq=seq, time=now_ms))]

    def quota_of(self, account_key: str) -> int:
        """The account's storage quota in force, bytes (0: none): its own, else the
        broker's ``storage_quota_bytes`` (docs/PROTOCOL.md §6.53)."""
        return self.storage_quotas.get(account_key, self.config.storage_quota_bytes)

    def _over_quota(self, account_key: str, used: dict[str, int], size: int) -> bool:
        """Whether ``size`` more bytes take the account past its quota (reaching it is
        allowed)."""
        quota = self.quota_of(account_key)
        return bool(quota) and used.get(account_key, 0) + size > quota

    def _quota_full(self, account_key: str, used: dict[str, int], size: int) -> ProtocolError:
        """The 403 of a SEND or DM of ``size`` bytes that would take the account past its
        storage quota (docs/PROTOCOL.md §6.53). Deleting messages frees nothing (their
        text is kept for the audit), so the way out is an admin."""
        return ProtocolError(Status.FORBIDDEN, f"your account's storage quota is full "
                             f"({size_text(used.get(account_key, 0))} of "
                             f"{size_text(self.quota_of(account_key))}; this message is "
                             f"{size_text(size)}): ask a broker admin to raise it")

    def stored(self) -> dict[str, int]:
        """Account key -> bytes of message text stored (§6.53), counted now if they were
        not yet (``storage_used``)."""
        if self.storage_used is None:
            self.storage_used = self.store.storage_used()
        return self.storage_used

    def _mentioned(self, key: str, text: str, sender_key: str) -> tuple[str, ...]:
        """The members of room ``key`` other than the sender that ``text`` mentions
        (docs/PROTOCOL.md §6.49.2), sorted; () in a room with nobody else in it."""
        members = self.members.get(key, ())
        if len(members) < 2:
            return ()
        if len(members) <= MENTION_SCAN_MEMBERS:
            # Most messages name nobody: one search for any member's name in the folded
            # text rules that out at a twentieth of the cost of cutting it into words.
            scan = self._mention_scans.get(key)
            if scan is None:
                scan = self._mention_scans[key] = re.compile("|".join(
                    re.escape(k) for k in sorted(members, key=len, reverse=True)))
            if scan.search(name_key(text)) is None:
                return ()
        mentioned = mention_words(text).intersection(members)
        mentioned.discard(sender_key)
        return tuple(sorted(mentioned))

    def _dm(self, rid: bytes, req_id: bytes, req: p.SendDirect, session: Session,
            now_s: float, now_ms: int, address: str) -> list[Action]:
        if self._sending_limited:
            self._limit_send(session, now_s)
        to_key = self._account_key(req.to)
        text = validate_text(req.text, self.config.max_text_bytes,
                             self.config.max_text_lines)
        muted = self.store.active_ban("mute", "", session.account_key, now_ms)
        if muted is not None:
            raise ProtocolError(Status.FORBIDDEN, "you are muted on this server "
                                f"{_until(muted.until_ms)}")
        recipient = self.accounts[to_key]
        live = bool(recipient.sessions - {rid})  # a DM to oneself is not live to oneself
        if len(req.cmid) > p.MAX_CMID_CHARS:
            raise ProtocolError(Status.BAD_REQUEST,
                                f"cmid longer than {p.MAX_CMID_CHARS} characters")
        me = session.account_key
        used = self.storage_used
        size = (len(text) if text.isascii() else len(text.encode())) if used is not None else 0
        posted = None
        if used is not None and self._over_quota(me, used, size):
            # a retry of a DM stored before the quota filled is still answered
            posted = self.store.dm_by_cmid(session.name, to_key, req.cmid) \
                if req.cmid else None
            if posted is None:
                raise self._quota_full(me, used, size)
        if posted is None:
            posted = self.store.post_dm(session.name, to_key, recipient.name, text, req.cmid,
                                        now_ms, max_pending=self.config.max_stored_dms,
                                        sender_key=me)
            if used is not None and not posted.duplicate:
                used[me] = used.get(me, 0) + size
        dm_id = posted.seq
        if posted.duplicate:  # a retry (§6.7): pushed already, or pending for next login
            return [self._ok(rid, req_id, p.DmSent(
                id=dm_id, time=posted.time_ms, delivered="live" if live else "stored",
                to=recipient.name))]
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dm %d %s -> %s: %r", dm_id, session.name, recipient.name, text)
        push = p.encode_push(p.DirectMessage(id=dm_id, time=now_ms, sender=session.name,
                                             to=recipient.name, text=text))
        targets = set(recipient.sessions) | self.accounts[session.account_key].sessions
        targets.discard(rid)
        actions: list[Action] = [ToPeer(t, push) for t in sorted(targets)]
        actions.append(self._ok(rid, req_id, p.DmSent(
            id=dm_id, time=now_ms, delivered="live" if live else "stored",
            to=recipient.name)))
        return actions

    def _ack_dm(self, rid: bytes, req_id: bytes, req: p.AckDirect, session: Session,
                now_s: float, now_ms: int, address: str) -> list[Action]:
        if not 1 <= len(req.ids) <= p.MAX_ACK_IDS:
            raise ProtocolError(Status.BAD_REQUEST, f"ids must hold 1 to {p.MAX_ACK_IDS} ids")
        self.store.ack_dms(session.account_key, req.ids)
        return [self._ok(rid, req_id, p.Ok())]

    @staticmethod
    def _check_page(req: p.FetchHistory | p.FetchDmHistory, unit: str) -> None:
        """HISTORY and DM_HISTORY (§6.9, §6.48): at most one of ``before`` and ``after``,
        neither below 0, ``limit`` 1..MAX_HISTORY_LIMIT; else ProtocolError(400)."""
        if req.before is not None and req.after is not None:
            raise ProtocolError(Status.BAD_REQUEST, "give at most one of before and after")
        if not 1 <= req.limit <= p.MAX_HISTORY_LIMIT:
            raise ProtocolError(Status.BAD_REQUEST,
                                f"limit must be 1 to {p.MAX_HISTORY_LIMIT}")
        for bound in (req.before, req.after):
            if bound is not None and bound < 0:
                raise ProtocolError(Status.BAD_REQUEST, f"{unit} bounds must be >= 0")

    def _history(self, rid: bytes, req_id: bytes, req: p.FetchHistory, session: Session,
                 now_s: float, now_ms: int, address: str) -> list[Action]:
        self._check_page(req, "sequence")
        key = self._room_key(req.room, session)
        self._check_may_read(key, session)
        rows = self.store.history(key, req.before, req.after, req.limit)
        messages = tuple(p.MessagePosted(room=r.room, seq=r.seq, time=r.time_ms,
                                         sender=r.sender, text="" if r.deleted_by else r.text,
                                         kind="action" if r.kind == "action" else "text",
                                         deleted_by=r.deleted_by)
                         for r in rows)
        return [self._ok(rid, req_id, p.HistoryPage(room=self.rooms[key], messages=messages))]

    def _dm_history(self, rid: bytes, req_id: bytes, req: p.FetchDmHistory,
                    session: Session, now_s: float, now_ms: int,
                    address: str) -> list[Action]:
        """DM_HISTORY (docs/PROTOCOL.md §6.48): a page of the session's own account's
        conversation with ``peer``, ascending by DM id. The conversation is named by the
        asking account and the peer, so no one can read another pair's DMs. Raises
        ProtocolError 400 (bounds, limit), 404 (no such account)."""
        self._check_page(req, "id")
        peer_key = self._account_key(req.peer)
        rows = self.store.dm_history(dm_pair(session.account_key, peer_key), req.before,
                                     req.after, req.limit)
        messages = tuple(p.DirectMessage(id=d.id, time=d.time_ms, sender=d.sender,
                                         to=d.recipient, text=d.text) for d in rows)
        return [self._ok(rid, req_id, p.DmHistoryPage(peer=self.accounts[peer_key].name,
                                                      messages=messages))]

    def _mark_read(self, rid: bytes, req_id: bytes, req: p.MarkRead, session: Session,
                   now_s: float, now_ms: int, address: str) -> list[Action]:
        """MARK_READ (docs/PROTOCOL.md §6.49): move the account's read marker of a room
        (to a seq) or of a direct conversation (to a DM id) forward to ``upto``. A marker
        at or beyond ``upto`` stays (idempotent, nothing written); the reply says the
        marker and what is unread after it. When it moved, the account's other sessions
        get READ (§6.49.1). Raises ProtocolError 400 (not exactly one of room and peer,
        ``upto`` below 0 or beyond the newest message of the conversation), 404 (no such
        room, account or conversation), 403 (not a member of the room)."""
        if bool(req.room) == bool(req.peer):
            raise ProtocolError(Status.BAD_REQUEST, "give exactly one of room and peer")
        if req.upto < 0:
            raise ProtocolError(Status.BAD_REQUEST, "upto must be >= 0")
        me = session.account_key
        if req.room:
            key = self._room_key(req.room, session)
            if me not in self.members.get(key, ()):
                raise ProtocolError(Status.FORBIDDEN, f"you are not in #{self.rooms[key]}")
            last = self.last_seq[key]
            if req.upto > last:
                raise ProtocolError(Status.BAD_REQUEST, f"upto {req.upto} is beyond the "
                                    f"last message of #{self.rooms[key]} (#{last})")
            moved = self.store.mark_room_read(key, me, req.upto)
            read = self.store.room_read(key, me)
            read_seq = last if read is None else min(read.read_seq, last)
            state = p.ReadState(room=self.rooms[key], peer="", upto=read_seq,
                                unread=last - read_seq,
                                mentions=0 if read is None else read.mentions, last=last)
        else:
            peer_key = self._account_key(req.peer)
            peer = self.accounts[peer_key].name
            before = self.store.dm_read(me, peer_key)
            if before is None:
                raise ProtocolError(Status.NOT_FOUND, f"no conversation with {peer}")
            if req.upto > before.last_id:
                raise ProtocolError(Status.BAD_REQUEST, f"upto {req.upto} is beyond the "
                                    f"last direct message with {peer} ({before.last_id})")
            after = self.store.mark_dm_read(me, peer_key, req.upto) or before
            moved = after.read_id > before.read_id
            state = p.ReadState(room="", peer=peer, upto=after.read_id, unread=after.unread,
                                last=after.last_id)
        actions: list[Action] = [self._ok(rid, req_id, state)]
        if moved:
            push = p.encode_push(p.ReadMarked(room=state.room, peer=state.peer,
                                              upto=state.upto, unread=state.unread,
                                              mentions=state.mentions, last=state.last))
            others = self.accounts[me].sessions - {rid}
            actions += [ToPeer(t, push) for t in sorted(others)]
        return actions

    def _who(self, rid: bytes, req_id: bytes, req: p.Who, session: Session,
             now_s: float, now_ms: int, address: str) -> list[Action]:
        if req.room is not None:
            room_key = self._room_key(req.room, session)
            self._check_may_read(room_key, session)
            keys = sorted(self.members[room_key])
        else:
            keys = sorted(k for k, a in self.accounts.items() if a.presence != "offline")
        users = tuple(p.UserPresence(name=self.accounts[k].name,
                                     presence=self.accounts[k].presence,
                                     text=self.accounts[k].away_text,
                                     bot=self.accounts[k].bot) for k in keys)
        return [self._ok(rid, req_id, p.WhoList(users=users))]

    def _whois(self, rid: bytes, req_id: bytes, req: p.Whois, session: Session,
               now_s: float, now_ms: int, address: str) -> list[Action]:
        """WHOIS name (§6.50): one account, offline too; 404 when there is none."""
        account = self.accounts[self._account_key(req.name)]
        return [self._ok(rid, req_id, p.UserFound(name=account.name, presence=account.presence,
                                                  text=account.away_text, bot=account.bot))]

    def _set_presence(self, rid: bytes, req_id: bytes, req: p.SetPresence, session: Session,
                      now_s: float, now_ms: int, address: str) -> list[Action]:
        text = self._check_away_text(req.text if req.presence == "away" else "", "away text")
        account = self.accounts[session.account_key]
        actions: list[Action] = [self._ok(rid, req_id, p.Ok())]
        if (account.presence, account.away_text) != (req.presence, text):
            # §15.1: every change reaches every client, so changes are limited per
            # account; an away text is speech, so a server-wide mute forbids it (§6.12)
            self._limit_account(session, "presence", now_s)
            if text:
                mute = self.store.active_ban("mute", "", session.account_key, now_ms)
                if mute is not None:
                    raise ProtocolError(Status.FORBIDDEN, "you are muted on this server "
                                        f"{_until(mute.until_ms)}: no away text")
            account.presence = req.presence
            account.away_text = text
            actions.append(self._presence_event(account, session.account_key, now_ms))
        return actions

    def _ping(self, rid: bytes, req_id: bytes, req: p.Ping, session: Session | None,
              now_s: float, now_ms: int, address: str) -> list[Action]:
        if session is None:
            return [self._ok(rid, req_id, p.Pong(time=now_ms, session=""))]
        budget = None
        if self.config.read_rate_bytes_per_s > 0:
            # §15.1: a PONG lists every room of the account with its topic (up to ~1.3 MB
            # for 1,000 rooms); it is charged as reading, and while the budget is spent
            # PING is still answered, without the list (``listed`` false)
            budget = self._read_budget(session.account_key, now_s)
            if budget.wait_ms(now_s):
                return [self._ok(rid, req_id, p.Pong(time=now_ms, session=session.token,
                                                     listed=False))]
        rooms = tuple(self._room_state(k)
                      for k in sorted(self.rooms_of.get(session.account_key, ())))
        reply = self._ok(rid, req_id, p.Pong(time=now_ms, rooms=rooms, session=session.token))
        if rooms:
            cost = sum(len(f) for f in reply.frames)
            if budget is not None:
                budget.charge(cost, now_s)
            self.read_bytes += cost
        return [reply]

    def costly_ping(self, routing_id: bytes) -> bool:
        """Whether a PING from ``routing_id`` would be answered with a long room list:
        its session's account is in more than COSTLY_PING_ROOMS rooms. The loop puts such
        a PING aside like a reading request once a wake-up's big replies reached its
        bound (zchat.broker.BATCH_READ_BYTES)."""
        session = self.sessions.get(routing_id)
        return session is not None and \
            len(self.rooms_of.get(session.account_key, ())) > COSTLY_PING_ROOMS

    def _room_state(self, key: str) -> p.RoomState:
        """The room's RoomState, as PONG and the LOGIN reply list it."""
        return p.RoomState(self.rooms[key], self.last_seq[key], self.topics[key],
                           self.slow_mode.get(key, 0), key in self.private, key in self.locked)

    def _set_topic(self, rid: bytes, req_id: bytes, req: p.SetTopic, session: Session,
                   now_s: float, now_ms: int, address: str) -> list[Action]:
        """SET_TOPIC (docs/PROTOCOL.md §6.22, §17.1): any member may set it, except in a
        locked room, where only its moderators (and admins) may. A change is drawn in every
        member's pane like a message, so it takes a token from the session's SEND bucket
        and counts as a post in slow mode (429 otherwise, nothing changed; §15).
        Committed with an audit entry, then published on the room topic (only when it
        changed), then OK."""
        key = self._room_key(req.room, session)
        if session.account_key not in self.members[key]:
            raise ProtocolError(Status.FORBIDDEN,
                                f"you are not in {self.rooms[key]!r}; JOIN it first")
        if key in self.locked:
            self._require_mod(key, session, "set the topic while it is locked")
        self._check_not_muted(key, session, now_ms)
        topic = self._check_topic(req.topic)
        ok = self._ok(rid, req_id, p.Ok())
        if self.topics.get(key) == topic:
            return [ok]
        if self.slow_mode.get(key):
            self._check_slow_mode(key, session, now_s)
        if self._sending_limited:
            self._limit_send(session, now_s)
        with self.store.transaction():
            self.store.set_topic(key, topic)
            self._audit(now_ms, session, "topic", key, detail=topic)
        self.topics[key] = topic
        if self.slow_mode.get(key):
            self._last_post.setdefault(key, {})[session.account_key] = now_s
        log.info("topic of %s set by %s", self.rooms[key], session.name)
        event = p.TopicChanged(room=self.rooms[key], topic=topic, by=session.name, time=now_ms)
        return [*self._room_event(key, event), ok]

    def _set_slow_mode(self, rid: bytes, req_id: bytes, req: p.SetSlowMode, session: Session,
                       now_s: float, now_ms: int, address: str) -> list[Action]:
        """SET_SLOW_MODE (docs/PROTOCOL.md §6.28): the room's creator or a broker admin,
        being a member, sets how many seconds each member must wait between two messages
        in the room (0 turns it off). Committed, then SLOW_MODE published on the room
        topic (only when it changed), then OK. Raises ProtocolError 404/422 (room), 403
        (not a member, or neither creator nor admin), 400 (seconds outside
        0..MAX_SLOW_MODE_S)."""
        key = self._room_key(req.room, session)
        if session.account_key not in self.members[key]:
            raise ProtocolError(Status.FORBIDDEN,
                                f"you are not in {self.rooms[key]!r}; JOIN it first")
        if not 0 <= req.seconds <= p.MAX_SLOW_MODE_S:
            raise ProtocolError(Status.BAD_REQUEST,
                                f"seconds must be 0 to {p.MAX_SLOW_MODE_S}")
        if not self._is_mod(key, session.account_key):
            raise ProtocolError(Status.FORBIDDEN, "only the room's moderators, its creator "
                                f"or a broker admin may set the slow mode of "
                                f"{self.rooms[key]!r}")
        ok = self._ok(rid, req_id, p.Ok())
        if self.slow_mode.get(key, 0) == req.seconds:
            return [ok]
        with self.store.transaction():
            self.store.set_slow_mode(key, req.seconds)
            self._audit(now_ms, session, "slow_mode", key, detail=f"{req.seconds} s")
        self.slow_mode[key] = req.seconds
        self._last_post.pop(key, None)  # a new setting starts everyone afresh
        log.info("slow mode of %s set to %d s by %s", self.rooms[key], req.seconds,
                 session.name)
        event = p.SlowModeChanged(room=self.rooms[key], seconds=req.seconds, by=session.name,
                                  time=now_ms)
        return [*self._room_event(key, event), ok]

    def _list_sessions(self, rid: bytes, req_id: bytes, req: p.ListSessions, session: Session,
                       now_s: float, now_ms: int, address: str) -> list[Action]:
        if session.account_key not in self.admins:
            raise ProtocolError(Status.FORBIDDEN, "only broker admins may list sessions")
        rows = tuple(p.SessionInfo(name=s.name, address=s.address, login_time=s.login_ms,
                                   last_seen=s.last_seen_ms)
                     for s in sorted(self.sessions.values(), key=lambda s: (s.name, s.login_ms)))
        return [self._ok(rid, req_id, p.SessionList(sessions=rows))]

    # -- account tokens (docs/PROTOCOL.md §6.24-§6.26) -------------------------------------

    def _create_token(self, rid: bytes, req_id: bytes, req: p.CreateToken, session: Session,
                      now_s: float, now_ms: int, address: str) -> list[Action]:
        """A new token for the session's account: 256 random bits, sent once; only its
        SHA-256 is stored. A session that logged in with a token may not mint more (403),
        so that revoking a leaked token really ends what it can do."""
        if session.login_token_id is not None:
            raise ProtocolError(Status.FORBIDDEN, "log in with the password to create tokens")
        if len(req.label) > p.MAX_TOKEN_LABEL_CHARS:
            raise ProtocolError(Status.TOO_LARGE,
                                f"token label longer than {p.MAX_TOKEN_LABEL_CHARS} characters")
        label = self._check_away_text(req.label, "token label")  # one line, no controls
        token = secrets.token_urlsafe(32)
        token_id = self.store.create_token(session.account_key, label, token_sha256(token),
                                           now_ms, p.MAX_TOKENS_PER_ACCOUNT)
        log.info("token %d (%r) created for %s", token_id, label, session.name)
        return [self._ok(rid, req_id, p.TokenCreated(token=token, id=token_id, label=label))]

    def _list_tokens(self, rid: bytes, req_id: bytes, req: p.ListTokens, session: Session,
                     now_s: float, now_ms: int, address: str) -> list[Action]:
        tokens = tuple(p.TokenInfo(id=t.id, label=t.label, created=t.created_ms)
                       for t in self.store.list_tokens(session.account_key))
        return [self._ok(rid, req_id, p.TokenList(tokens=tokens))]

    def _revoke_token(self, rid: bytes, req_id: bytes, req: p.RevokeToken, session: Session,
                      now_s: float, now_ms: int, address: str) -> list[Action]:
        """Delete one of the account's tokens (404 if it has none of that id) and end every
        session that logged in with it: SESSION_CLOSED first, then their next request gets
        401 (docs/PROTOCOL.md §6.26, §6.47)."""
        if not self.store.revoke_token(session.account_key, req.id):
            raise ProtocolError(Status.NOT_FOUND, f"you have no token with id {req.id}")
        log.info("token %d of %s revoked", req.id, session.name)
        actions: list[Action] = [self._ok(rid, req_id, p.Ok())]
        notice = p.encode_push(p.SessionClosed(
            reason="the account token this session logged in with was revoked",
            by=session.name, time=now_ms))
        for other in list(self.sessions.values()):  # snapshot: _end_session mutates
            if other.account_key == session.account_key and other.login_token_id == req.id:
                actions.append(ToPeer(other.routing_id, notice))
                actions += self._end_session(other, now_ms)
        kept = [h for h, row in self._restored.items()  # not resumable with it either
                if row.account_key == session.account_key and row.login_token_id == req.id]
        for token_hash in kept:
            del self._restored[token_hash]
        self.store.delete_sessions(kept)
        return actions

    # -- roles and moderation (docs/PROTOCOL.md §17, §6.30-§6.41) ------------------------

    def _room_event(self, key: str, event: p.Message,
                    also: Iterable[str] = ()) -> list[Action]:
        """Carry a room event: published on ``room/<key>/`` for a public room; for a
        private room pushed over the ROUTER to every session of every member (and of the
        accounts in ``also``, e.g. one being removed), never on PUB (§17.2)."""
        if key not in self.private:
            return [ToTopic(p.encode_event(p.room_topic(key), event))]
        push = p.encode_push(event)
        targets: set[bytes] = set()
        for account_key in self.members.get(key, set()) | set(also):
            account = self.accounts.get(account_key)
            if account is not None:
                targets |= account.sessions
        return [ToPeer(t, push) for t in sorted(targets)]

    def _rank(self, key: str, account_key: str) -> int:
        """The account's rank in room ``key`` (RANKS): admin, owner, moderator, member."""
        if account_key in self.admins:
            return RANKS["admin"]
        return RANKS.get(self.roles.get(key, {}).get(account_key, "member"), 0)

    def _is_mod(self, key: str, account_key: str) -> bool:
        """A moderator, the owner, or a broker admin (who moderates every room)."""
        return self._rank(key, account_key) >= RANKS["moderator"]

    def _role_name(self, key: str, account_key: str) -> str:
        if account_key in self.admins:
            return "a broker admin"
        role = self.roles.get(key, {}).get(account_key, "member")
        return f"the room's {role}" if role == "owner" else f"a {role}"

    def _require_mod(self, key: str, session: Session, what: str) -> None:
        """Raise ProtocolError 403 unless the session's account moderates room ``key``."""
        if not self._is_mod(key, session.account_key):
            raise ProtocolError(Status.FORBIDDEN, f"only moderators of #{self.rooms[key]} "
                                f"may {what}")

    def _require_admin(self, session: Session, what: str) -> None:
        if session.account_key not in self.admins:
            raise ProtocolError(Status.FORBIDDEN, f"only broker admins may {what}")

    def _require_inside(self, key: str, session: Session, what: str) -> None:
        """Raise ProtocolError 403 unless the session's account is a member of room
        ``key`` or a broker admin: a room is moderated from inside it (docs/PROTOCOL.md
        §17.1), so a moderator or owner who was kicked (or left) cannot act on it from
        outside — no self-invitation into a private room, no lock, delete or mode change
        — as an IRC operator who is not on the channel cannot."""
        me = session.account_key
        if me not in self.members.get(key, ()) and me not in self.admins:
            raise ProtocolError(Status.FORBIDDEN, f"you are not in #{self.rooms[key]}: "
                                f"JOIN it to {what}")

    def _check_not_muted(self, key: str, session: Session, now_ms: int) -> None:
        """SEND and SET_TOPIC (§6.22): raise 403 when the account is muted in room ``key``
        or server-wide (a muted member may read, not speak; a topic is speech too)."""
        for room_key in (key, ""):
            mute = self.store.active_ban("mute", room_key, session.account_key, now_ms)
            if mute is not None:
                where = f"in #{self.rooms[key]}" if room_key else "on this server"
                raise ProtocolError(Status.FORBIDDEN, f"you are muted {where} "
                                    f"{_until(mute.until_ms)}")

    def _check_outranks(self, key: str, session: Session, target_key: str,
                        what: str) -> None:
        """Raise 403 unless the actor's rank in the room is above the target's (nobody
        acts on themselves, a moderator on another moderator, or anyone on an admin)."""
        if target_key == session.account_key:
            raise ProtocolError(Status.FORBIDDEN, f"you cannot {what} yourself")
        if self._rank(key, target_key) >= self._rank(key, session.account_key):
            raise ProtocolError(Status.FORBIDDEN, f"you cannot {what} "
                                f"{self.accounts[target_key].name}: they are "
                                f"{self._role_name(key, target_key)}")

    def _check_not_banned(self, key: str, account_key: str, now_ms: int) -> None:
        ban = self.store.active_ban("ban", key, account_key, now_ms)
        if ban is not None:
            raise ProtocolError(Status.FORBIDDEN, f"you are banned from #{self.rooms[key]} "
                                f"{_until(ban.until_ms)}"
                                + (f": {ban.reason}" if ban.reason else ""))

    def _check_may_log_in(self, account_key: str, now_ms: int) -> None:
        """LOGIN and RESUME (§17.3): raise 403 for a disabled account or a server-wide
        ban in force."""
        if self.store.is_disabled(account_key):
            raise ProtocolError(Status.FORBIDDEN, "account disabled; ask a broker admin")
        ban = self.store.active_ban("ban", "", account_key, now_ms)
        if ban is not None:
            raise ProtocolError(Status.FORBIDDEN, f"you are banned from this server "
                                f"{_until(ban.until_ms)}"
                                + (f": {ban.reason}" if ban.reason else ""))

    def _check_may_post(self, key: str, session: Session, now_ms: int) -> None:
        """SEND (§17.1): raise 403 when the account is muted in the room or server-wide,
        or the room is locked and the account does not moderate it."""
        self._check_not_muted(key, session, now_ms)
        if key in self.locked and not self._is_mod(key, session.account_key):
            raise ProtocolError(Status.FORBIDDEN, f"#{self.rooms[key]} is locked: only its "
                                "moderators may post")

    def _check_may_read(self, key: str, session: Session) -> None:
        """HISTORY and WHO of a private room: members and admins only (403)."""
        if key in self.private and session.account_key not in self.members.get(key, ()) \
                and session.account_key not in self.admins:
            raise ProtocolError(Status.FORBIDDEN, f"#{self.rooms[key]} is private: only its "
                                "members may read it")

    def _audit(self, now_ms: int, session: Session, action: str, key: str = "",
               target: str = "", detail: str = "") -> None:
        """Append an audit-log entry (§17.4) with the actor's and the room's names."""
        self.store.append_audit(now_ms, session.name, action,
                                self.rooms[key] if key else "", target, detail)

    def _place(self, raw: str, session: Session) -> str:
        """Room key of a BAN/MUTE/UNBAN/UNMUTE ``room``: "" (server-wide) stays ""."""
        return self._room_key(raw, session) if raw else ""

    def _duration(self, seconds: int, now_ms: int) -> int | None:
        """``until_ms`` of a ban or mute of ``seconds`` (0: None, no expiry). 400 outside
        0..MAX_BAN_S."""
        if not 0 <= seconds <= p.MAX_BAN_S:
            raise ProtocolError(Status.BAD_REQUEST, f"duration_s must be 0 to {p.MAX_BAN_S}")
        return now_ms + seconds * 1000 if seconds else None

    def _remove_member(self, key: str, account_key: str, by: Session, reason: str,
                       ban: bool, now_ms: int, until: int | None = None) -> list[Action]:
        """Take ``account_key`` out of room ``key`` (its membership is already deleted in
        the store): LEFT with ``by``, ``reason`` (and a ban's ``until``, UTC ms) goes to
        the room and to them."""
        left = p.UserLeft(room=self.rooms[key], name=self.accounts[account_key].name,
                          time=now_ms, by=by.name, reason=reason, ban=ban, until=until)
        actions = self._room_event(key, left, (account_key,))
        self._forget_member(key, account_key)
        return actions

    def end_account_sessions(self, account_key: str, now_ms: int, *, by: str = "",
                             why: str = "", keep: bytes = b"") -> list[Action]:
        """End every session of the account (but ``keep``, a routing id), live or kept
        for RESUME: each live one first gets SESSION_CLOSED (``by``, ``why``; §6.47) so
        that its client says why instead of "connection lost", then ends as eviction
        does (its next request gets 401; a new LOGIN is refused while banned or
        disabled). For a server-wide ban, an admin's password reset or disable, and the
        account's own password change."""
        actions: list[Action] = []
        notice = p.encode_push(p.SessionClosed(reason=why, by=by, time=now_ms))
        for other in list(self.sessions.values()):  # snapshot: _end_session mutates
            if other.account_key == account_key and other.routing_id != keep:
                actions.append(ToPeer(other.routing_id, notice))
                actions += self._end_session(other, now_ms)
        kept = [h for h, row in self._restored.items() if row.account_key == account_key]
        for token_hash in kept:
            del self._restored[token_hash]
        self.store.delete_sessions(kept)
        return actions

    def _kick(self, rid: bytes, req_id: bytes, req: p.Kick, session: Session,
              now_s: float, now_ms: int, address: str) -> list[Action]:
        """KICK (§6.30): a moderator removes a member of lower rank; LEFT with ``by`` and
        ``reason``. 404 room/account/not a member, 403 not allowed, 413/422 reason."""
        key = self._room_key(req.room, session)
        self._require_mod(key, session, "kick")
        self._require_inside(key, session, "kick")
        target = self._account_key(req.name)
        reason = self._check_away_text(req.reason, "reason")
        if target not in self.members[key]:
            raise ProtocolError(Status.NOT_FOUND,
                                f"{self.accounts[target].name} is not in #{self.rooms[key]}")
        self._check_outranks(key, session, target, "kick")
        # §6.30: a kicked moderator loses the role, as a banned one does (an owner keeps
        # the ownership but must be back inside to act), and no invitation survives.
        demoted = self.roles.get(key, {}).get(target) == "moderator"
        with self.store.transaction():
            self.store.leave_room(key, target)
            if demoted:
                self.store.set_role(key, target, "")
            self.store.take_invite(key, target)
            self._audit(now_ms, session, "kick", key, self.accounts[target].name, reason)
        if demoted:
            self.roles[key].pop(target, None)
        log.info("%s kicked %s from %s", session.name, self.accounts[target].name,
                 self.rooms[key])
        return [self._ok(rid, req_id, p.Ok()),
                *self._remove_member(key, target, session, reason, False, now_ms)]

    def _sanction(self, req: p.Ban | p.Mute, session: Session, now_ms: int, what: str,
                  server_wide: str) -> tuple[str, str, str, str, int | None]:
        """The checks BAN and MUTE share (§6.31, §6.33): in a room the actor moderates it
        from inside, server-wide (``room`` "") is for admins (``server_wide`` names the
        refused action); the reason and duration are valid and the actor outranks the
        target. Returns (room key or "", target key, target's name, reason, until_ms)."""
        key = self._place(req.room, session)
        if key:
            self._require_mod(key, session, what)
            self._require_inside(key, session, what)
        else:
            self._require_admin(session, server_wide)
        target = self._account_key(req.name)
        reason = self._check_away_text(req.reason, "reason")
        until = self._duration(req.duration_s, now_ms)
        self._check_outranks(key, session, target, what)
        return key, target, self.accounts[target].name, reason, until

    def _ban(self, rid: bytes, req_id: bytes, req: p.Ban, session: Session,
             now_s: float, now_ms: int, address: str) -> list[Action]:
        """BAN (§6.31): in a room (moderators; the member is removed, LEFT with ``ban``)
        or server-wide (``room`` "", admins; every session of theirs ends)."""
        key, target, name, reason, until = self._sanction(
            req, session, now_ms, "ban", "ban from the whole server")
        member = bool(key) and target in self.members[key]
        demoted = bool(key) and self.roles.get(key, {}).get(target) == "moderator"
        with self.store.transaction():
            self.store.add_ban("ban", key, target, session.account_key, reason, now_ms, until)
            if demoted:  # a banned moderator keeps no powers in the room (§17.1)
                self.store.set_role(key, target, "")
            if member:
                self.store.leave_room(key, target)
            if key:
                self.store.take_invite(key, target)
            self._audit(now_ms, session, "ban", key, name,
                        _until(until) + (f"; {reason}" if reason else ""))
        if demoted:
            self.roles[key].pop(target, None)
        log.info("%s banned %s from %s %s", session.name, name,
                 self.rooms[key] if key else "the server", _until(until))
        actions: list[Action] = [self._ok(rid, req_id, p.Ok())]
        if member:
            actions += self._remove_member(key, target, session, reason, True, now_ms,
                                           until)
        if not key:
            actions += self.end_account_sessions(
                target, now_ms, by=session.name, why=f"you are banned from this server "
                f"{_until(until)}" + (f": {reason}" if reason else ""))
        return actions

    def _lift(self, kind: str, raw_room: str, raw_name: str, session: Session,
              now_ms: int) -> list[Action]:
        """Lift a ban or mute (UNBAN, UNMUTE). Returns the MUTED push (``muted`` false,
        §6.33.1) for the account's live sessions when a mute was lifted, else nothing."""
        key = self._place(raw_room, session)
        verb = "unban" if kind == "ban" else "unmute"
        if key:
            self._require_mod(key, session, verb)
            self._require_inside(key, session, verb)
        else:
            self._require_admin(session, f"{verb} server-wide")
        target = self._account_key(raw_name)
        name = self.accounts[target].name
        # As for BAN and MUTE (§17.1): only someone who outranks the target, and who
        # ranks at least as high as whoever placed it, may lift a ban or mute — never
        # oneself (a tester's moderators lifted their own bans and the owner's).
        self._check_outranks(key, session, target, verb)
        placed = self.store.active_ban(kind, key, target, now_ms)
        if placed is not None and placed.by_key in self.accounts and \
                self._rank(key, placed.by_key) > self._rank(key, session.account_key):
            raise ProtocolError(Status.FORBIDDEN, f"you cannot {verb} {name}: "
                                f"{self.accounts[placed.by_key].name}, "
                                f"{self._role_name(key, placed.by_key)}, placed it")
        with self.store.transaction():
            if not self.store.lift_ban(kind, key, target):
                where = f"in #{self.rooms[key]}" if key else "server-wide"
                raise ProtocolError(Status.NOT_FOUND, f"{name} is not "
                                    f"{'banned' if kind == 'ban' else 'muted'} {where}")
            self._audit(now_ms, session, verb, key, name)
        if kind != "mute":
            return []
        return self._tell_muted(target, p.MuteChanged(
            room=self.rooms[key] if key else "", muted=False, by=session.name, time=now_ms))

    def _tell_muted(self, account_key: str, notice: p.MuteChanged) -> list[Action]:
        """MUTED (§6.33.1) to every live session of the account: a muted person is told
        who muted them, where, why and until when, and when it is lifted (as IRC's +q
        and Matrix's power-level change are visible to the one concerned)."""
        push = p.encode_push(notice)
        return [ToPeer(rid, push) for rid in sorted(self._live_sessions(account_key))]

    def _unban(self, rid: bytes, req_id: bytes, req: p.Unban, session: Session,
               now_s: float, now_ms: int, address: str) -> list[Action]:
        """UNBAN (§6.32): lift a ban (moderators of the room; admins server-wide)."""
        self._lift("ban", req.room, req.name, session, now_ms)
        return [self._ok(rid, req_id, p.Ok())]

    def _mute(self, rid: bytes, req_id: bytes, req: p.Mute, session: Session,
              now_s: float, now_ms: int, address: str) -> list[Action]:
        """MUTE (§6.33): forbid posting in a room (moderators) or anywhere, DMs included
        (``room`` "", admins)."""
        key, target, name, reason, until = self._sanction(
            req, session, now_ms, "mute", "mute server-wide")
        with self.store.transaction():
            self.store.add_ban("mute", key, target, session.account_key, reason, now_ms,
                               until)
            self._audit(now_ms, session, "mute", key, name,
                        _until(until) + (f"; {reason}" if reason else ""))
        actions: list[Action] = [self._ok(rid, req_id, p.Ok()), *self._tell_muted(
            target, p.MuteChanged(room=self.rooms[key] if key else "", muted=True,
                                  by=session.name, time=now_ms, reason=reason, until=until))]
        account = self.accounts[target]
        if not key and account.away_text:  # §6.33: a server-wide mute silences it too
            account.away_text = ""
            actions.append(self._presence_event(account, target, now_ms))
        return actions

    def _unmute(self, rid: bytes, req_id: bytes, req: p.Unmute, session: Session,
                now_s: float, now_ms: int, address: str) -> list[Action]:
        """UNMUTE (§6.34); MUTED with ``muted`` false goes to the account's sessions."""
        return [self._ok(rid, req_id, p.Ok()),
                *self._lift("mute", req.room, req.name, session, now_ms)]

    def _invite(self, rid: bytes, req_id: bytes, req: p.Invite, session: Session,
                now_s: float, now_ms: int, address: str) -> list[Action]:
        """INVITE (§6.35): a moderator lets an account JOIN a private room once; INVITED
        is pushed to the invitee's sessions. 409 already a member, 403 banned there."""
        key = self._room_key(req.room, session)
        self._require_mod(key, session, "invite")
        self._require_inside(key, session, "invite")
        target = self._account_key(req.name)
        name = self.accounts[target].name
        if target in self.members[key]:
            raise ProtocolError(Status.CONFLICT, f"{name} is in #{self.rooms[key]} already")
        if target == session.account_key:  # §17.1: no one acts on themselves
            raise ProtocolError(Status.FORBIDDEN, "you cannot invite yourself")
        if self.store.active_ban("ban", key, target, now_ms) is not None:
            raise ProtocolError(Status.FORBIDDEN, f"{name} is banned from "
                                f"#{self.rooms[key]}; UNBAN first")
        with self.store.transaction():
            self.store.add_invite(key, target, session.account_key, now_ms)
            self._audit(now_ms, session, "invite", key, name)
        push = p.encode_push(p.Invited(room=self.rooms[key], by=session.name, time=now_ms))
        return [self._ok(rid, req_id, p.Ok()),
                *(ToPeer(t, push) for t in sorted(self.accounts[target].sessions))]

    def _set_role(self, rid: bytes, req_id: bytes, req: p.SetRole, session: Session,
                  now_s: float, now_ms: int, address: str) -> list[Action]:
        """SET_ROLE (§6.36): the owner or an admin makes a member a moderator or a plain
        member again; ROLE event when it changed. 403 not allowed or the owner's role."""
        key = self._room_key(req.room, session)
        if self._rank(key, session.account_key) < RANKS["owner"]:
            raise ProtocolError(Status.FORBIDDEN, f"only the owner of #{self.rooms[key]} "
                                "or a broker admin may appoint moderators")
        self._require_inside(key, session, "change roles")
        target = self._account_key(req.name)
        name = self.accounts[target].name
        current = self.roles.get(key, {}).get(target, "member")
        # a moderator who left keeps the role until demoted, which works from outside
        if target not in self.members[key] and not (req.role == "member"
                                                    and current == "moderator"):
            raise ProtocolError(Status.NOT_FOUND, f"{name} is not in #{self.rooms[key]}")
        if current == "owner":
            raise ProtocolError(Status.FORBIDDEN, f"{name} owns #{self.rooms[key]}; the "
                                "owner's role cannot be changed")
        ok = self._ok(rid, req_id, p.Ok())
        if current == req.role:
            return [ok]
        with self.store.transaction():
            self.store.set_role(key, target, "moderator" if req.role == "moderator" else "")
            self._audit(now_ms, session, "role", key, name, req.role)
        if req.role == "moderator":
            self.roles.setdefault(key, {})[target] = "moderator"
        else:
            self.roles.get(key, {}).pop(target, None)
        event = p.RoleChanged(room=self.rooms[key], name=name, role=req.role, by=session.name,
                              time=now_ms)
        return [ok, *self._room_event(key, event)]

    def _set_room(self, rid: bytes, req_id: bytes, req: p.SetRoom, session: Session,
                  now_s: float, now_ms: int, address: str) -> list[Action]:
        """SET_ROOM (§6.37): ``locked`` by moderators, ``private`` by the owner or an
        admin; ROOM_MODE event when a mode changed (carried by the new mode: a room made
        private is announced to its members only). 400 neither given."""
        key = self._room_key(req.room, session)
        if req.private is None and req.locked is None:
            raise ProtocolError(Status.BAD_REQUEST, "give private or locked (or both)")
        if req.locked is not None:
            self._require_mod(key, session, "lock or unlock it")
        if req.private is not None and self._rank(key, session.account_key) < RANKS["owner"]:
            raise ProtocolError(Status.FORBIDDEN, f"only the owner of #{self.rooms[key]} or "
                                "a broker admin may make it private or public")
        self._require_inside(key, session, "change its modes")
        private = key in self.private if req.private is None else req.private
        locked = key in self.locked if req.locked is None else req.locked
        ok = self._ok(rid, req_id, p.Ok())
        if (private, locked) == (key in self.private, key in self.locked):
            return [ok]
        changes = []
        if private != (key in self.private):
            changes.append(f"private {'on' if private else 'off'}")
        if locked != (key in self.locked):
            changes.append(f"locked {'on' if locked else 'off'}")
        with self.store.transaction():
            self.store.set_room_flags(key, private=private, locked=locked)
            self._audit(now_ms, session, "room_mode", key, detail=", ".join(changes))
        for flag, on in ((self.private, private), (self.locked, locked)):
            if on:
                flag.add(key)
            else:
                flag.discard(key)
        log.info("%s set %s of %s", session.name, ", ".join(changes), self.rooms[key])
        event = p.RoomModeChanged(room=self.rooms[key], private=private, locked=locked,
                                  by=session.name, time=now_ms)
        return [ok, *self._room_event(key, event)]

    def _delete_message(self, rid: bytes, req_id: bytes, req: p.DeleteMessage,
                        session: Session, now_s: float, now_ms: int,
                        address: str) -> list[Action]:
        """DELETE_MESSAGE (§6.38): a moderator, or the sender (being a member), deletes a
        message; its row keeps the text for the audit, HISTORY shows it with text "" and
        ``deleted_by``, MESSAGE_DELETED is carried to the room. 404 no such message, 409
        deleted already, 403 not allowed."""
        key = self._room_key(req.room, session)
        # the right to act first, then the lookup: an outsider must not learn from 404
        # against 403 how many messages a private room holds
        self._require_inside(key, session, "delete messages")
        row = self.store.message(key, req.seq)
        if row is None:
            raise ProtocolError(Status.NOT_FOUND, f"no message #{req.seq} in "
                                f"#{self.rooms[key]}")
        own = name_key(row.sender) == session.account_key and \
            session.account_key in self.members[key]
        if not own:
            self._require_mod(key, session, "delete other people's messages")
            # §17.1: an action on a person, so a rank above the sender's, as for KICK
            sender_key = name_key(row.sender)
            if self._rank(key, sender_key) >= self._rank(key, session.account_key):
                raise ProtocolError(Status.FORBIDDEN, f"you cannot delete the messages of "
                                    f"{row.sender}: they are "
                                    f"{self._role_name(key, sender_key)}")
        with self.store.transaction():
            self.store.delete_message(key, req.seq, session.name)
            self._audit(now_ms, session, "delete", key, row.sender,
                        f"#{req.seq}: {row.text}")
        event = p.MessageDeleted(room=self.rooms[key], seq=req.seq, by=session.name,
                                 time=now_ms)
        return [self._ok(rid, req_id, p.Ok()), *self._room_event(key, event)]

    def _delete_room(self, rid: bytes, req_id: bytes, req: p.DeleteRoom, session: Session,
                     now_s: float, now_ms: int, address: str) -> list[Action]:
        """DELETE_ROOM (§6.52): the room's owner (from inside it) or a broker admin
        deletes a room with its history, memberships, roles, invitations and room bans,
        in one transaction with a ``delete_room`` audit entry. ROOM_DELETED goes to the
        room as its events do (pushed to the members of a private one), and the members'
        clients stop following it. The name is free again: a later JOIN makes a new,
        empty room. 404 no such room, 403 not the owner or an admin (or an owner who is
        not in it), or ``lobby``; 413/422 a bad ``reason``."""
        key = self._room_key(req.room, session)
        if key == name_key(DEFAULT_ROOM):
            raise ProtocolError(Status.FORBIDDEN, f"#{self.rooms[key]} cannot be deleted: "
                                "every account is in it")
        if self._rank(key, session.account_key) < RANKS["owner"]:
            raise ProtocolError(Status.FORBIDDEN, f"only the owner of #{self.rooms[key]} "
                                "or a broker admin may delete it")
        self._require_inside(key, session, "delete it")
        reason = self._check_away_text(req.reason, "reason")
        name = self.rooms[key]
        used = self.storage_used
        with self.store.transaction():
            # the room's text, by sender (§6.53)
            freed = self.store.storage_used(key) if used is not None else {}
            messages, members = self.store.delete_room(key)
            self._audit(now_ms, session, "delete_room", key,
                        detail=f"{messages} messages, {members} members"
                        + (f"; {reason}" if reason else ""))
        for account_key, size in freed.items():
            assert used is not None
            left = used.get(account_key, 0) - size
            if left > 0:
                used[account_key] = left
            else:
                used.pop(account_key, None)
        # carried as the room's events are, to the members it had (pushed if private)
        actions: list[Action] = [self._ok(rid, req_id, p.Ok()), *self._room_event(
            key, p.RoomDeleted(room=name, by=session.name, time=now_ms, reason=reason,
                               first_seq=self.first_seq.get(key, 1)))]
        for account_key in list(self.members.get(key, ())):
            self._forget_member(key, account_key)
        self.members.pop(key, None)
        creator = self.creators.get(key)
        if creator and self.rooms_created.get(creator, 0) > 1:
            self.rooms_created[creator] -= 1
        elif creator:
            self.rooms_created.pop(creator, None)
        for table in (self.rooms, self.last_seq, self.first_seq, self.topics, self.creators,
                      self.slow_mode, self._last_post, self.roles):
            table.pop(key, None)
        self.private.discard(key)
        self.locked.discard(key)
        log.info("%s deleted the room %s (%d messages, %d members)", session.name, name,
                 messages, members)
        return actions

    def _ban_info(self, ban: BanRow) -> p.BanInfo:
        by = self.accounts.get(ban.by_key)
        return p.BanInfo(kind="mute" if ban.kind == "mute" else "ban",
                         room=self.rooms.get(ban.room_key, ban.room_key),
                         name=self.accounts[ban.account_key].name
                         if ban.account_key in self.accounts else ban.account_key,
                         by=by.name if by else ban.by_key, reason=ban.reason,
                         created=ban.created_ms, until=ban.until_ms)

    def _list_bans(self, rid: bytes, req_id: bytes, req: p.ListBans, session: Session,
                   now_s: float, now_ms: int, address: str) -> list[Action]:
        """BANS (§6.40): a room's bans and mutes in force (its moderators), or the
        server-wide ones (``room`` "") or all (None) (admins)."""
        if req.room:
            key: str | None = self._room_key(req.room, session)
            assert key is not None
            self._require_mod(key, session, "list its bans")
        else:
            self._require_admin(session, "list server-wide bans" if req.room == ""
                                else "list every room's bans")
            key = None if req.room is None else ""
        bans = tuple(self._ban_info(b) for b in self.store.list_bans(now_ms, key))
        return [self._ok(rid, req_id, p.BanList(bans=bans))]

    def _read_audit(self, rid: bytes, req_id: bytes, req: p.ReadAudit, session: Session,
                    now_s: float, now_ms: int, address: str) -> list[Action]:
        """AUDIT (§6.41): the audit log, newest first; admins read all of it, a room's
        owner that room's entries. 400 limit outside 1..MAX_AUDIT_LIMIT."""
        if not 1 <= req.limit <= p.MAX_AUDIT_LIMIT:
            raise ProtocolError(Status.BAD_REQUEST, f"limit must be 1 to {p.MAX_AUDIT_LIMIT}")
        room = None
        floor = 0
        admin = session.account_key in self.admins
        if req.room is not None and admin and \
                name_key(normalize_name(req.room, "room name")) not in self.rooms:
            # a deleted room's entries stay in the log (§6.52): admins read them by name
            room = normalize_name(req.room, "room name")
        elif req.room is not None:
            key = self._room_key(req.room, session)
            if self._rank(key, session.account_key) < RANKS["owner"]:
                raise ProtocolError(Status.FORBIDDEN, f"only the owner of #{self.rooms[key]}"
                                    " or a broker admin may read its audit log")
            room = self.rooms[key]
            if not admin:  # an owner reads this room's entries, not a deleted namesake's
                floor = self.store.audit_floor(key)
        else:
            self._require_admin(session, "read the whole audit log")
        rows = self.store.audit_log(room=room, actor=req.actor or None,
                                    target=req.target or None, action=req.action or None,
                                    before_id=req.before, above_id=floor, limit=req.limit)
        entries = tuple(p.AuditEntry(id=r.id, time=r.time_ms, actor=r.actor, action=r.action,
                                     room=r.room, target=r.target, detail=r.detail)
                        for r in rows)
        return [self._ok(rid, req_id, p.AuditList(entries=entries))]

    # -- operator tools (docs/PROTOCOL.md §6.42-§6.46, docs/admin.md) -----------------------

    def _list_users(self, rid: bytes, req_id: bytes, req: p.ListUsers, session: Session,
                    now_s: float, now_ms: int, address: str) -> list[Action]:
        """USERS (§6.42): every account with bot, disabled, created and live sessions.
        Admins only (403)."""
        self._require_admin(session, "list accounts")
        stored = self.stored()
        users = tuple(p.AccountInfo(name=a.name, bot=a.bot, disabled=a.disabled,
                                    created=a.created_ms,
                                    online=bool(self._live_sessions(a.key)),
                                    sessions=len(self._live_sessions(a.key)),
                                    stored_bytes=stored.get(a.key, 0),
                                    quota_bytes=self.quota_of(a.key))
                      for a in self.store.list_accounts())
        return [self._ok(rid, req_id, p.UserList(users=users))]

    def _live_sessions(self, account_key: str) -> set[bytes]:
        account = self.accounts.get(account_key)
        return account.sessions if account is not None else set()

    def _create_accounts(self, rid: bytes, req_id: bytes, req: p.CreateAccounts,
                         session: Session, now_s: float, now_ms: int,
                         address: str) -> list[Action]:
        """CREATE_ACCOUNTS (§6.43): an admin creates 1..MAX_CREATE_ACCOUNTS accounts, all
        or none, by REGISTER's rules (zchat.admin.check_batch): every bad account is
        named in one 422 (409 when they are all taken names) and nothing is created. The
        passwords are hashed off the loop in one Offload job; not rate-limited as logins
        (the admin's session is authenticated already)."""
        self._require_admin(session, "create accounts")
        if not 1 <= len(req.accounts) <= p.MAX_CREATE_ACCOUNTS:
            raise ProtocolError(Status.BAD_REQUEST, f"accounts must hold 1 to "
                                f"{p.MAX_CREATE_ACCOUNTS} accounts")
        rows = [NewAccountRow(i, a.name, a.password, a.bot)
                for i, a in enumerate(req.accounts)]
        good, bad = check_batch(rows, self._name_taken, self.config.min_password_chars)
        if bad:
            status = Status.CONFLICT if all("taken" in b.problem for b in bad) \
                else Status.INVALID
            raise ProtocolError(status, f"{len(bad)} of {len(rows)} accounts refused, none "
                                "created: " + "; ".join(f"accounts[{b.line}] {b.problem}"
                                                       for b in bad))
        for account in good:  # as REGISTER: admins' accounts come from the operator only
            self._check_not_admin_name(account.key, account.skeleton, account.name)
        cfg = self.config
        passwords = [a.password for a in good]
        return self._start_job(
            _Job("create_accounts", rid, req_id, "", "", address, actor=session.name,
                 batch=tuple(good), holds=self._job_holds(rid, address or session.address,
                                                          session.account_key)),
            lambda: tuple(hash_password(pw, cfg.scrypt_n, cfg.scrypt_r, cfg.scrypt_p)
                          for pw in passwords))

    def _name_taken(self, key: str, skel: str) -> bool:
        return key in self.accounts or self.store.account_skeleton_taken(skel)

    def _admin_set_password(self, rid: bytes, req_id: bytes, req: p.AdminSetPassword,
                            session: Session, now_s: float, now_ms: int,
                            address: str) -> list[Action]:
        """ADMIN_SET_PASSWORD (§6.44): an admin gives an account a new password (hashed off
        the loop); every session of the account, live or kept for RESUME, then ends.
        403 not an admin, or the account is a broker admin's (one admin must not take
        over another; only the operator resets theirs, on the database; one's own goes
        through SET_PASSWORD, which asks for the old one); 404 no such account, 422/413
        password."""
        self._require_admin(session, "reset passwords")
        key = self._account_key(req.name)
        if key in self.admins:
            raise ProtocolError(Status.FORBIDDEN, f"{self.accounts[key].name} is a broker "
                                "admin: only the operator resets an admin's password, with "
                                "`zchat admin reset-password` on the database"
                                + ("; change your own with `zchat passwd`"
                                   if key == session.account_key else ""))
        self._check_new_password(req.password)
        cfg = self.config
        password = req.password
        return self._start_job(
            _Job("admin_password", rid, req_id, key, self.accounts[key].name, address,
                 actor=session.name, holds=self._job_holds(rid, address or session.address,
                                                           session.account_key)),
            lambda: hash_password(password, cfg.scrypt_n, cfg.scrypt_r, cfg.scrypt_p))

    def _set_disabled(self, rid: bytes, req_id: bytes, req: p.SetDisabled,
                      session: Session, now_s: float, now_ms: int,
                      address: str) -> list[Action]:
        """ADMIN_DISABLE (§6.45): an admin disables an account (LOGIN and RESUME then get
        403; every session of it ends at once) or enables it again. Audited when it
        changed; the same state again is an OK that changes nothing. 403 not an admin,
        or disabling oneself or another admin; 404 no such account."""
        self._require_admin(session, "disable or enable accounts")
        key = self._account_key(req.name)
        name = self.accounts[key].name
        if req.disabled and key == session.account_key:
            raise ProtocolError(Status.FORBIDDEN, "you cannot disable yourself")
        if key in self.admins and key != session.account_key:
            # enabling too: an admin the operator disabled on the database stays so
            raise ProtocolError(Status.FORBIDDEN, f"{name} is a broker admin: only the "
                                "operator disables or enables an admin, on the database "
                                "(or takes them out of [broker] admins)")
        ok = self._ok(rid, req_id, p.Ok())
        if self.store.is_disabled(key) == req.disabled:
            return [ok]
        with self.store.transaction():
            self.store.set_disabled(key, req.disabled)
            self._audit(now_ms, session, "disable" if req.disabled else "enable",
                        target=name)
        log.info("%s %s the account %s", session.name,
                 "disabled" if req.disabled else "enabled", name)
        if not req.disabled:
            return [ok]
        return [ok, *self.end_account_sessions(
            key, now_ms, by=session.name,
            why="your account was disabled; ask a broker admin to enable it")]

    def _set_quota(self, rid: bytes, req_id: bytes, req: p.SetQuota, session: Session,
                   now_s: float, now_ms: int, address: str) -> list[Action]:
        """ADMIN_SET_QUOTA (§6.53): an admin gives an account a storage quota of its own
        (bytes of message text; 0 no quota) or, with None, the broker's default again.
        It bounds what the account stores from now on; nothing stored is removed.
        Audited when it changed. 403 not an admin, or the account is another broker
        admin's (the operator's, on the database); 404 no such account; 400 outside
        0..MAX_STORAGE_QUOTA_BYTES."""
        self._require_admin(session, "set storage quotas")
        key = self._account_key(req.name)
        name = self.accounts[key].name
        if key in self.admins and key != session.account_key:
            raise ProtocolError(Status.FORBIDDEN, f"{name} is a broker admin: only the "
                                "operator sets another admin's quota, with `zchat admin "
                                "quota` on the database")
        quota = req.quota_bytes
        if quota is not None and not 0 <= quota <= p.MAX_STORAGE_QUOTA_BYTES:
            raise ProtocolError(Status.BAD_REQUEST, f"quota_bytes must be 0 (no quota) to "
                                f"{p.MAX_STORAGE_QUOTA_BYTES:,}, or null (the broker's "
                                f"default), got {quota}")
        if self.storage_quotas.get(key) != quota:
            with self.store.transaction():
                self.store.set_storage_quota(key, quota)
                self._audit(now_ms, session, "quota", target=name, detail=quota_text(
                    quota, self.config.storage_quota_bytes))
            if quota is None:
                self.storage_quotas.pop(key, None)
            else:
                self.storage_quotas[key] = quota
            log.info("%s set the storage quota of %s to %s", session.name, name,
                     quota_text(quota, self.config.storage_quota_bytes))
        return [self._ok(rid, req_id, p.QuotaSet(
            name=name, quota_bytes=self.quota_of(key), default=key not in self.storage_quotas,
            stored_bytes=self.stored().get(key, 0)))]

    def _set_password(self, rid: bytes, req_id: bytes, req: p.SetPassword, session: Session,
                      now_s: float, now_ms: int, address: str) -> list[Action]:
        """SET_PASSWORD (§6.46): the session's account changes its own password. Every
        attempt takes a token from the address's login bucket (429), like LOGIN, so that
        a stolen session cannot guess the password quickly; the old password is checked
        and the new one hashed off the loop. On success the account's other sessions and
        its sessions kept for RESUME end; this one goes on. 401 wrong old password,
        422/413 new password; 403 from a session that logged in with a token (as
        CREATE_TOKEN: a leaked token must not become the password)."""
        if session.login_token_id is not None:
            raise ProtocolError(Status.FORBIDDEN, "log in with the password to change it")
        address = address or session.address
        holds = self._job_holds(rid, address, session.account_key)
        self._check_jobs(holds)
        self._limit_password_change(rid, address, session, now_s)
        if not req.old or len(req.old) > p.MAX_PASSWORD_CHARS:
            raise ProtocolError(Status.UNAUTHORIZED, "wrong password; nothing changed")
        self._check_new_password(req.new)
        row = self.store.get_account(session.account_key)
        if row is None:  # the in-memory index and the store disagree: not the peer's fault
            raise ProtocolError(Status.NOT_FOUND, f"no account named {session.name!r}")
        cfg = self.config
        old, new, stored = req.old, req.new, row.password_hash

        def work() -> str | None:
            if not verify_password(old, stored):
                return None
            return hash_password(new, cfg.scrypt_n, cfg.scrypt_r, cfg.scrypt_p)

        return self._start_job(_Job("set_password", rid, req_id, session.account_key,
                                    session.name, address, actor=session.name,
                                    holds=holds), work)

    def _finish_operator_job(self, job: _Job, result: Any, now_ms: int) -> list[Action]:
        """Complete CREATE_ACCOUNTS, ADMIN_SET_PASSWORD or SET_PASSWORD with the hashes."""
        if job.kind == "create_accounts":
            return self._finish_create_accounts(job, tuple(result), now_ms)
        ok = self._ok(job.routing_id, job.request_id, p.Ok())
        if job.kind == "admin_password":
            if job.key not in self.accounts:
                raise ProtocolError(Status.NOT_FOUND, f"no account named {job.name!r}")
            with self.store.transaction():
                self.store.set_password_hash(job.key, str(result))
                self.store.append_audit(now_ms, job.actor, "reset_password", "", job.name)
            log.info("%s reset the password of %s", job.actor, job.name)
            return [ok, *self.end_account_sessions(
                job.key, now_ms, by=job.actor,
                why="your password was reset; log in with the new one")]
        if result is None:
            log.info("failed password change for %s from %s", job.name, job.address or "?")
            raise ProtocolError(Status.UNAUTHORIZED, "wrong password; nothing changed")
        session = self.sessions.get(job.routing_id)
        if session is None or session.account_key != job.key:
            raise ProtocolError(Status.UNAUTHORIZED, "your session ended meanwhile; "
                                "nothing changed")
        with self.store.transaction():
            self.store.set_password_hash(job.key, str(result))
            self.store.append_audit(now_ms, job.name, "passwd", "", job.name)
        log.info("%s changed their password", job.name)
        return [ok, *self.end_account_sessions(
            job.key, now_ms, by=job.name, keep=job.routing_id,
            why="your password was changed from another session; log in with the new one")]

    def _finish_create_accounts(self, job: _Job, hashes: tuple[str, ...],
                                now_ms: int) -> list[Action]:
        accounts: tuple[CheckedAccount, ...] = job.batch
        taken = [a.name for a in accounts if self._name_taken(a.key, a.skeleton)]
        if taken:  # registered while hashing
            raise ProtocolError(Status.CONFLICT, "taken meanwhile, none created: "
                                + ", ".join(taken))
        lobby = name_key(DEFAULT_ROOM)
        with self.store.transaction():  # all or none (docs/PROTOCOL.md §6.43)
            for account, password_hash in zip(accounts, hashes, strict=True):
                self.store.create_account(account.key, account.name, account.skeleton,
                                          password_hash, now_ms, bot=account.bot,
                                          rooms=(lobby,))
                self.store.append_audit(now_ms, job.actor, "create_account", "",
                                        account.name, "bot" if account.bot else "")
        actions: list[Action] = [self._ok(job.routing_id, job.request_id, p.AccountsCreated(
            names=tuple(a.name for a in accounts)))]
        for account in accounts:
            self.accounts[account.key] = Account(account.name, bot=account.bot)
            self._add_member(lobby, account.key)
            actions += self._room_event(lobby, p.UserJoined(room=self.rooms[lobby],
                                                            name=account.name, time=now_ms))
        log.info("%s created %d accounts", job.actor, len(accounts))
        return actions
