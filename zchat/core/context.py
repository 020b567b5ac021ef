"""The core's shared services: what every handler module uses (``Core``), and the
request's context (``Call``).

``Core`` holds the store port, the configuration, the shared state (zchat.core.state;
its tables are read as ``core.members``, ``core.rooms`` ...), the delivery
(zchat.core.delivery, as ``core.deliver``) and the rules every domain shares: names to
keys, ranks and the checks on them, sessions' start and end, the audit log. Its rate
limits and password jobs are in zchat.core.protection. ``BrokerCore``
(zchat.core.facade) adds the entry points the loop calls.
"""

from __future__ import annotations

import logging
import math
import weakref
from dataclasses import dataclass

from zchat import wire as p
from zchat.config import BrokerConfig
from zchat.core import validation, wording
from zchat.core.actions import Action, ToPeer
from zchat.core.delivery import Delivery
from zchat.core.jobs import Job
from zchat.core.ports import BanRow, SessionRow, Store
from zchat.core.protection import Protection
from zchat.core.state import DEFAULT_ROOM, RANKS, Session, State
from zchat.errors import ProtocolError, Status, StorageError
from zchat.names import name_key, normalize_name, skeleton
from zchat.passwords import token_sha256
from zchat.ratelimit import MAX_ADDRESS_BUCKETS, BucketTable, proxy_networks

log = logging.getLogger("zchat.broker")
#: Admin names already warned about (no account), per store: once per broker.
_ADMINS_WARNED: weakref.WeakKeyDictionary[Store, set[str]] = weakref.WeakKeyDictionary()

#: Bound of Core's room-name cache (entries); emptied whole when full.
ROOM_KEY_CACHE_MAX = 4096


@dataclass(slots=True)  # not frozen: a frozen dataclass costs ~0.5 µs more to make
class Call:
    """One request as the loop handed it in: who sent it (``rid``, the ROUTER routing
    id; ``address``, the peer's IP address, "" unknown; ``transport_key``, its CURVE
    public key in hex, "" on a plain connection), its ``request_id``, and the time
    (``now_s`` monotonic seconds for heartbeats and limits, ``now_ms`` UTC milliseconds
    for timestamps on the wire). Handlers read it; none changes it."""

    rid: bytes
    request_id: bytes
    now_s: float
    now_ms: int
    address: str = ""
    transport_key: str = ""


class Core(Protection):
    """The shared services of the broker core (see the module docstring). One event
    loop owns it."""

    ok = staticmethod(Delivery.reply)
    error = staticmethod(Delivery.error)

    def __init__(self, store: Store, config: BrokerConfig, pub_endpoint: str,
                 now_ms: int = 0) -> None:
        self.store = store
        self.config = config
        self.pub_endpoint = pub_endpoint
        store.ensure_room(name_key(DEFAULT_ROOM), DEFAULT_ROOM, skeleton(DEFAULT_ROOM), now_ms)
        self.state = state = State()
        #: ``store.changes_elsewhere()`` when the bans and mutes were last loaded: read
        #: before loading, so that a write landing meanwhile brings another reload.
        self._bans_seen = store.changes_elsewhere()
        state.refresh(store, now_ms)
        self.deliver = Delivery(state)
        # Read-only views of the state's tables (State changes them in place).
        self.sessions = state.sessions
        self.accounts = state.accounts
        self.rooms, self.last_seq, self.topics = state.rooms, state.last_seq, state.topics
        self.first_seq, self.members, self.rooms_of = \
            state.first_seq, state.members, state.rooms_of
        self.roles, self.private, self.locked = state.roles, state.private, state.locked
        self.creators, self.rooms_created = state.creators, state.rooms_created
        self.slow_mode, self.last_post = state.slow_mode, state.last_post
        self.storage_quotas = state.storage_quotas
        self.admins = {name_key(n) for n in config.admins}
        #: Look-alike skeletons of the admin names: REGISTER and CREATE_ACCOUNTS of any
        #: of them is refused (docs/admin.md, "Who is an admin").
        self._admin_skeletons = {skeleton(n) for n in config.admins}
        for admin in config.admins:
            # once per broker (its store) and name: a core is built again after every
            # failed commit and state reload (a seventh tester counted five after an
            # outage)
            warned = _ADMINS_WARNED.setdefault(store, set())
            if name_key(admin) not in self.accounts and admin not in warned:
                warned.add(admin)
                log.warning("broker admin %r has no account: nobody can register it over "
                            "the wire; create it with `zchat admin create` on the database "
                            "(docs/admin.md)", admin)
        self._jobs: dict[int, Job] = {}
        self._next_job = 1
        #: Password jobs in flight per address key and per ``acct:<key>`` (at most
        #: MAX_JOBS_PER_PEER each); a key goes when its count is back to 0.
        self._jobs_held: dict[str, int] = {}
        #: No session can time out before this (monotonic s): a lower bound on the
        #: earliest last_seen_s + heartbeat_timeout_s, kept by bind_session and tick
        #: (last-seen times only move forward), so tick scans the sessions only when one
        #: may be due, not at every wake-up of the loop.
        self._evict_at = math.inf
        #: Room names as sent -> their keys (normalize_name is ~50 us, and every SEND
        #: names its room); valid names only, at most ROOM_KEY_CACHE_MAX.
        self._room_keys: dict[str, str] = {}
        # Protection (docs/PROTOCOL.md §15): per-address LOGIN/REGISTER buckets (None when
        # login_rate_per_s is 0).
        #: Whether SEND, DM, topic changes and JOINs of new rooms take sending tokens:
        #: ``send_rate_per_s`` 0 turns every sending limit off, the account's too (§15.1).
        self.sending_limited = config.send_rate_per_s > 0
        self.trusted_proxies = proxy_networks(config.trusted_proxies)
        self._login_buckets: BucketTable | None = (
            BucketTable(config.login_rate_per_s, config.login_burst, MAX_ADDRESS_BUCKETS)
            if config.login_rate_per_s > 0 else None)
        #: Account key -> bytes of message text it has stored (§6.53), counted with one
        #: query (a scan of every text, ~0.7 s a million messages) here when a quota is
        #: in force, else at the first USERS or ADMIN_SET_QUOTA (``stored``), then kept
        #: up to date by SEND, DM and DELETE_ROOM: never a query per message; a rebuilt
        #: core counts again. None while not counted: a broker without quotas pays
        #: nothing for them.
        self.storage_used: dict[str, int] | None = (
            store.storage_used() if config.storage_quota_bytes or any(
                self.storage_quotas.values()) else None)
        self._next_purge_s: float | None = None
        #: SHA-256 of each live session's token -> its routing id (RESUME, §6.27).
        self.by_token: dict[str, bytes] = {}
        #: Sessions kept in the store from before this start, resumable until
        #: ``_restored_until_s`` (set at the first tick: start + resume_grace_s).
        self.restored: dict[str, SessionRow] = {
            row.token_sha256: row for row in store.sessions() if row.account_key in self.accounts}
        self._restored_until_s: float | None = None
        self._next_tick_s: float | None = None
        #: CURVE client key (hex) -> live sessions bound to it: the keys that may
        #: subscribe to the PUB (docs/PROTOCOL.md §16.2). ``subscriber_version`` moves at
        #: each change, so that the broker gives its ZAP handler a new snapshot only then.
        self.subscriber_keys: dict[str, int] = {}
        self.subscriber_version = 0
        #: Bytes of the replies to reading requests (zchat.core.requests) so far, whether
        #: reading budgets are on or not, and of the LOGIN, RESUME and PONG replies charged
        #: to them: the loop reads it to bound a wake-up's big replies
        #: (zchat.broker.loop.BATCH_READ_BYTES).
        self.read_bytes = 0

    def expire_restored(self, now_s: float) -> None:
        """Start the resume grace period at the first call; once it is over, forget the
        sessions kept from before the start (in memory and in the store)."""
        if self._restored_until_s is None:
            self._restored_until_s = now_s + self.config.resume_grace_s
        if self.restored and now_s >= self._restored_until_s:
            expired = list(self.restored)
            self.restored.clear()
            try:  # those resumed through another broker meanwhile stay
                self.store.delete_released_sessions(expired)
            except StorageError as exc:  # purged again at the next start's expiry
                log.error("could not purge %d expired sessions: %s", len(expired), exc.reason)
            log.info("%d sessions from before the restart expired unresumed", len(expired))

    def room_key(self, raw: str, session: Session | None = None) -> str:
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
                                     and not self.knows_room(key, session.account_key)):
            raise ProtocolError(Status.NOT_FOUND, f"no room named {raw!r}")
        return key

    def knows_room(self, key: str, account_key: str) -> bool:
        """Whether the account may learn that the private room ``key`` exists: a
        member, a broker admin, one holding a role in it (its owner, a moderator who
        left) or one with an invitation to it (docs/PROTOCOL.md §17.2)."""
        return account_key in self.members.get(key, ()) or account_key in self.admins \
            or account_key in self.roles.get(key, {}) or self.store.has_invite(key, account_key)

    def account_key(self, raw: str) -> str:
        """Key of an existing account. An account this broker does not hold in memory is
        looked up in the store, and kept when found: it was made since the state was
        loaded, through another broker of a cluster (whose notification has not arrived
        yet, docs/cluster.md) or by `zchat admin` on the database. Raises ProtocolError
        404."""
        try:
            key = name_key(normalize_name(raw))
        except ProtocolError:
            raise ProtocolError(Status.NOT_FOUND, f"no account named {raw!r}") from None
        if key not in self.accounts:
            row = self.store.get_account(key)
            if row is None:
                raise ProtocolError(Status.NOT_FOUND, f"no account named {raw!r}")
            self.state.add_account(key, row.name, row.bot)
        return key

    def bind_key(self, session: Session) -> None:
        """``session``'s transport key may subscribe (docs/PROTOCOL.md §16.2)."""
        if session.transport_key:
            keys = self.subscriber_keys
            keys[session.transport_key] = keys.get(session.transport_key, 0) + 1
            self.subscriber_version += 1

    def unbind_key(self, session: Session) -> None:
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

    def end_session(self, session: Session, now_ms: int, quit_text: str = "",
                     forget: bool = True) -> list[Action]:
        """Forget ``session``; when it was the account's last, publish offline (carrying
        ``quit_text``, LOGOUT's quit message) (docs/PROTOCOL.md §8). With ``forget`` its
        stored row goes too, so it cannot be resumed (§6.27); shutdown keeps it.
        In a cluster the account's presence lock comes first, before its row is
        deleted (docs/cluster.md, "Deadlocks between brokers"); when it cannot be taken
        the wake-up fails whole (``Delivery.count_failed``), never a guessed offline.
        Callers that can wait (eviction, LOGOUT) take it first themselves."""
        try:
            self.deliver.lock_presence(session.account_key)
        except (StorageError, ProtocolError) as exc:
            log.error("cannot take the presence lock of %s: %s", session.account_key,
                      exc.reason)
            self.deliver.count_failed(exc.reason)
        del self.sessions[session.routing_id]
        self.unbind_key(session)
        token_hash = token_sha256(session.token)
        self.by_token.pop(token_hash, None)
        if forget:
            try:
                self.store.delete_sessions([token_hash])
            except StorageError as exc:  # the row expires after the next start's grace
                log.error("could not forget the session of %s: %s", session.name, exc.reason)
        account = self.accounts[session.account_key]
        account.sessions.discard(session.routing_id)
        account.present.discard(session.routing_id)
        if account.present or not session.presence:
            return []  # another session keeps it online, or this one never announced
        if self._held_elsewhere(session.account_key, 0):
            return []  # the account's session on another broker keeps it online
        account.presence = "offline"
        account.away_text = ""
        return [self.deliver.presence(account, session.account_key, now_ms, quit_text)]

    def check_password(self, password: str) -> None:
        """A password to log in with (LOGIN, §6.3): not empty, not too long; no minimum
        length, so that accounts made before ``min_password_chars`` still log in."""
        validation.check_password(password)  # shared with `zchat admin` (zchat.admin)

    def check_new_password(self, password: str) -> None:
        """A new password (REGISTER, SET_PASSWORD, ADMIN_SET_PASSWORD, §6.2): also at
        least ``min_password_chars`` characters (422)."""
        validation.check_new_password(password, self.config.min_password_chars)

    def check_not_admin_name(self, key: str, skel: str, name: str) -> None:
        """REGISTER and CREATE_ACCOUNTS (§6.2, §6.43): raise ProtocolError 403 when the
        name, or a look-alike of it (same skeleton, §12), is listed in ``admins``.
        Whoever took that name would be a broker admin; only the operator creates those
        accounts, with `zchat admin create` on the database (docs/admin.md)."""
        if key in self.admins or skel in self._admin_skeletons:
            raise ProtocolError(Status.FORBIDDEN, f"the name {name!r} is reserved for a "
                                "broker admin; the operator creates that account with "
                                "`zchat admin create` on the database")

    def bind_session(self, session: Session, now_ms: int, announce: bool = True
                     ) -> list[Action]:
        """Register ``session`` under its routing id; an offline account goes online (one
        PRESENCE event, returned). With ``announce`` False — a session that moved here
        from another broker that held it until now: the account was online in the
        cluster all along — it goes online here with no event."""
        self.sessions[session.routing_id] = session
        self.bind_key(session)
        self._evict_at = min(self._evict_at,
                             session.last_seen_s + self.config.heartbeat_timeout_s)
        self.by_token[token_sha256(session.token)] = session.routing_id
        account = self.accounts[session.account_key]
        account.sessions.add(session.routing_id)
        if not session.presence:  # announces nothing, changes no presence (§6.3)
            return []
        account.present.add(session.routing_id)
        if not announce:  # no count: nothing is published whatever it says
            if account.presence == "offline":
                account.presence = "online"
            return []
        if len(account.present) == 1 and \
                self._held_elsewhere(session.account_key, 1):
            if account.presence == "offline":  # online through another broker
                account.presence = "online"
            return []
        if account.presence == "offline" or len(account.present) == 1:
            account.presence = "online"
            return [self.deliver.presence(account, session.account_key, now_ms)]
        return []

    def _held_elsewhere(self, account_key: str, here: int) -> bool:
        """Whether the cluster holds more sessions of the account than ``here`` (this
        broker's, counted in the store too): another broker keeps it online, so starting
        or ending a session here changes no presence. False on a broker alone, and when
        the count cannot be read: a cluster's wake-up then fails whole
        (``Delivery.count_failed``: 503, its events dropped), since a decision without
        the count could publish a wrong presence (a tester's blink: an offline, then an
        online, of an account online all along)."""
        try:
            held = self.deliver.sessions_held(account_key)
        except StorageError as exc:
            log.error("cannot count the sessions of %s in the cluster: %s", account_key,
                      exc.reason)
            self.deliver.count_failed(exc.reason)
            return False
        return held is not None and held > here

    @staticmethod
    def check_page(req: p.FetchHistory | p.FetchDmHistory, unit: str) -> None:
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

    def room_state(self, key: str) -> p.RoomState:
        """The room's RoomState, as PONG and the LOGIN reply list it."""
        return p.RoomState(self.rooms[key], self.last_seq[key], self.topics[key],
                           self.slow_mode.get(key, 0), key in self.private, key in self.locked)

    def rank(self, key: str, account_key: str) -> int:
        """The account's rank in room ``key`` (RANKS): admin, owner, moderator, member."""
        if account_key in self.admins:
            return RANKS["admin"]
        return RANKS.get(self.roles.get(key, {}).get(account_key, "member"), 0)

    def is_mod(self, key: str, account_key: str) -> bool:
        """A moderator, the owner, or a broker admin (who moderates every room)."""
        return self.rank(key, account_key) >= RANKS["moderator"]

    def role_name(self, key: str, account_key: str) -> str:
        if account_key in self.admins:
            return "a broker admin"
        role = self.roles.get(key, {}).get(account_key, "member")
        return f"the room's {role}" if role == "owner" else f"a {role}"

    def require_mod(self, key: str, session: Session, what: str) -> None:
        """Raise ProtocolError 403 unless the session's account moderates room ``key``."""
        if not self.is_mod(key, session.account_key):
            raise ProtocolError(Status.FORBIDDEN, f"only moderators of #{self.rooms[key]} "
                                f"may {what}")

    def require_admin(self, session: Session, what: str) -> None:
        if session.account_key not in self.admins:
            raise ProtocolError(Status.FORBIDDEN, f"only broker admins may {what}")

    def require_inside(self, key: str, session: Session, what: str) -> None:
        """Raise ProtocolError 403 unless the session's account is a member of room
        ``key`` or a broker admin: a room is moderated from inside it (docs/PROTOCOL.md
        §17.1), so a moderator or owner who was kicked (or left) cannot act on it from
        outside — no self-invitation into a private room, no lock, delete or mode change
        — as an IRC operator who is not on the channel cannot."""
        me = session.account_key
        if me not in self.members.get(key, ()) and me not in self.admins:
            raise ProtocolError(Status.FORBIDDEN, f"you are not in #{self.rooms[key]}: "
                                f"JOIN it to {what}")

    def catch_up_bans(self, now_ms: int) -> None:
        """Reload the bans and mutes from the store when another writer committed to it
        since they were loaded (``Store.changes_elsewhere``): so `zchat admin unban` on
        the database applies at once (docs/admin.md). No store read otherwise."""
        seen = self.store.changes_elsewhere()
        if seen != self._bans_seen:
            self._bans_seen = seen
            self.state.refresh_bans(self.store, now_ms)

    def active_ban(self, kind: str, room_key: str, account_key: str,
                   now_ms: int) -> BanRow | None:
        """The ban or mute (``kind``) of the account in the room (``room_key`` ""
        server-wide) in force at ``now_ms``, or None: from memory (State.active_ban),
        caught up with changes made elsewhere first (``catch_up_bans``)."""
        self.catch_up_bans(now_ms)
        return self.state.active_ban(kind, room_key, account_key, now_ms)

    def bans_in_force(self, now_ms: int, room_key: str | None) -> list[BanRow]:
        """Bans and mutes in force at ``now_ms``, oldest first: of one room, the
        server-wide ones (``room_key`` "") or all (None); from memory, caught up."""
        self.catch_up_bans(now_ms)
        return self.state.bans_in_force(now_ms, room_key)

    def check_not_muted(self, key: str, session: Session, now_ms: int) -> None:
        """SEND and SET_TOPIC (§6.22): raise 403 when the account is muted in room ``key``
        or server-wide (a muted member may read, not speak; a topic is speech too)."""
        self.catch_up_bans(now_ms)
        for room_key in (key, ""):
            mute = self.state.active_ban("mute", room_key, session.account_key, now_ms)
            if mute is not None:
                where = f"in #{self.rooms[key]}" if room_key else "on this server"
                raise ProtocolError(Status.FORBIDDEN, f"you are muted {where} "
                                    f"{wording.until(mute.until_ms)}")

    def check_outranks(self, key: str, session: Session, target_key: str,
                        what: str) -> None:
        """Raise 403 unless the actor's rank in the room is above the target's (nobody
        acts on themselves, a moderator on another moderator, or anyone on an admin)."""
        if target_key == session.account_key:
            raise ProtocolError(Status.FORBIDDEN, f"you cannot {what} yourself")
        if self.rank(key, target_key) >= self.rank(key, session.account_key):
            raise ProtocolError(Status.FORBIDDEN, f"you cannot {what} "
                                f"{self.accounts[target_key].name}: they are "
                                f"{self.role_name(key, target_key)}")

    def check_not_banned(self, key: str, account_key: str, now_ms: int) -> None:
        ban = self.active_ban("ban", key, account_key, now_ms)
        if ban is not None:
            raise ProtocolError(Status.FORBIDDEN, f"you are banned from #{self.rooms[key]} "
                                f"{wording.until(ban.until_ms)}"
                                + (f": {ban.reason}" if ban.reason else ""))

    def check_may_log_in(self, account_key: str, now_ms: int) -> None:
        """LOGIN and RESUME (§17.3): raise 403 for a disabled account or a server-wide
        ban in force."""
        if self.store.is_disabled(account_key):
            raise ProtocolError(Status.FORBIDDEN, "account disabled; ask a broker admin")
        ban = self.active_ban("ban", "", account_key, now_ms)
        if ban is not None:
            raise ProtocolError(Status.FORBIDDEN, f"you are banned from this server "
                                f"{wording.until(ban.until_ms)}"
                                + (f": {ban.reason}" if ban.reason else ""))

    def check_may_post(self, key: str, session: Session, now_ms: int) -> None:
        """SEND (§17.1): raise 403 when the account is muted in the room or server-wide,
        or the room is locked and the account does not moderate it."""
        self.check_not_muted(key, session, now_ms)
        if key in self.locked and not self.is_mod(key, session.account_key):
            raise ProtocolError(Status.FORBIDDEN, f"#{self.rooms[key]} is locked: only its "
                                "moderators may post")

    def check_may_read(self, key: str, session: Session) -> None:
        """HISTORY and WHO of a private room: members and admins only (403)."""
        if key in self.private and session.account_key not in self.members.get(key, ()) \
                and session.account_key not in self.admins:
            raise ProtocolError(Status.FORBIDDEN, f"#{self.rooms[key]} is private: only its "
                                "members may read it")

    def audit(self, now_ms: int, session: Session, action: str, key: str = "",
               target: str = "", detail: str = "") -> None:
        """Append an audit-log entry (§17.4) with the actor's and the room's names."""
        self.store.append_audit(now_ms, session.name, action,
                                self.rooms[key] if key else "", target, detail)

    def place(self, raw: str, session: Session) -> str:
        """Room key of a BAN/MUTE/UNBAN/UNMUTE ``room``: "" (server-wide) stays ""."""
        return self.room_key(raw, session) if raw else ""

    def duration(self, seconds: int, now_ms: int) -> int | None:
        """``until_ms`` of a ban or mute of ``seconds`` (0: None, no expiry). 400 outside
        0..MAX_BAN_S."""
        if not 0 <= seconds <= p.MAX_BAN_S:
            raise ProtocolError(Status.BAD_REQUEST, f"duration_s must be 0 to {p.MAX_BAN_S}")
        return now_ms + seconds * 1000 if seconds else None

    def remove_member(self, key: str, account_key: str, by: Session, reason: str,
                       ban: bool, now_ms: int, until: int | None = None) -> list[Action]:
        """Take ``account_key`` out of room ``key`` (its membership is already deleted in
        the store): LEFT with ``by``, ``reason`` (and a ban's ``until``, UTC ms) goes to
        the room and to them."""
        left = p.UserLeft(room=self.rooms[key], name=self.accounts[account_key].name,
                          time=now_ms, by=by.name, reason=reason, ban=ban, until=until)
        actions = self.deliver.room_event(key, left, (account_key,))
        self.state.forget_member(key, account_key)
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
                actions += self.end_session(other, now_ms)
        kept = [h for h, row in self.restored.items() if row.account_key == account_key]
        for token_hash in kept:
            del self.restored[token_hash]
        self.store.delete_sessions(kept)
        return actions

    def drop_sessions(self) -> int:
        """Forget every session in memory, live and kept for RESUME, with no event and no
        write: a broker fenced out of its cluster (docs/cluster.md, "Leases and fencing")
        whose sessions another broker took over; their rows and their presence are that
        broker's now. Every account here goes offline in memory (the next state reload
        reads who is online elsewhere). Returns how many live sessions were dropped."""
        dropped = len(self.sessions)
        for session in list(self.sessions.values()):
            self.unbind_key(session)
        self.sessions.clear()
        self.by_token.clear()
        self.restored.clear()
        for account in self.accounts.values():
            account.sessions.clear()
            account.present.clear()
            account.presence = "offline"
            account.away_text = ""
        self._evict_at = math.inf
        return dropped

    def live_sessions(self, account_key: str) -> set[bytes]:
        account = self.accounts.get(account_key)
        return account.sessions if account is not None else set()

    def name_taken(self, key: str, skel: str) -> bool:
        return key in self.accounts or self.store.account_skeleton_taken(skel)
