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

import logging
import math
import secrets
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zchat import protocol as p
from zchat.config import BrokerConfig
from zchat.errors import ProtocolError, RateLimited, Status, StorageError
from zchat.names import BIDI_CONTROLS, name_key, normalize_name, skeleton, validate_text
from zchat.passwords import hash_password, match_token, token_sha256, verify_password
from zchat.ratelimit import MAX_ADDRESS_BUCKETS, BucketTable, TokenBucket, address_key
from zchat.store import SessionRow, Store

log = logging.getLogger("zchat.broker")

DEFAULT_ROOM = "lobby"
#: Password jobs in flight at once (docs/PROTOCOL.md §9); beyond it LOGIN/REGISTER get 503
#: so that a flood of logins cannot queue unbounded work.
MAX_PENDING_JOBS = 1024


def _seconds(ms: int) -> str:
    """A wait for a person, rounded up: ``0.3 s`` under ten seconds, else ``12 s``."""
    return f"{math.ceil(ms / 100) / 10:.1f} s" if ms < 10_000 else f"{math.ceil(ms / 1000)} s"


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


@dataclass(slots=True)
class Account:
    """In-memory view of one account: its display name and live presence."""

    name: str
    bot: bool
    sessions: set[bytes] = field(default_factory=set)
    presence: p.Presence = "offline"
    away_text: str = ""


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
        lobby_key = name_key(DEFAULT_ROOM)
        store.ensure_room(lobby_key, DEFAULT_ROOM, skeleton(DEFAULT_ROOM), now_ms)
        listed = store.list_rooms()
        self.rooms: dict[str, str] = {r.key: r.name for r in listed}
        self.last_seq: dict[str, int] = {r.key: r.last_seq for r in listed}
        self.topics: dict[str, str] = {r.key: r.topic for r in listed}
        self.members: dict[str, set[str]] = store.memberships()
        self.rooms_of: dict[str, set[str]] = {}
        for room_key, account_keys in self.members.items():
            for account_key in account_keys:
                self.rooms_of.setdefault(account_key, set()).add(room_key)
        self._jobs: dict[int, _Job] = {}
        self._next_job = 1
        # Protection (docs/PROTOCOL.md §15): per-address LOGIN/REGISTER buckets (None when
        # login_rate_per_s is 0), and each room's creator and slow mode with, per room in
        # slow mode, each member's last post (monotonic s); bounded by the memberships.
        self._login_buckets: BucketTable | None = (
            BucketTable(config.login_rate_per_s, config.login_burst, MAX_ADDRESS_BUCKETS)
            if config.login_rate_per_s > 0 else None)
        settings = store.room_settings()
        self.creators: dict[str, str] = {k: c for k, (c, _s) in settings.items()}
        self.slow_mode: dict[str, int] = {k: s for k, (_c, s) in settings.items()}
        self._last_post: dict[str, dict[str, float]] = {}
        #: SHA-256 of each live session's token -> its routing id (RESUME, §6.27).
        self._by_token: dict[str, bytes] = {}
        #: Sessions kept in the store from before this start, resumable until
        #: ``_restored_until_s`` (set at the first tick: start + resume_grace_s).
        self._restored: dict[str, SessionRow] = {
            row.token_sha256: row for row in store.sessions() if row.account_key in self.accounts}
        self._restored_until_s: float | None = None
        self._next_tick_s: float | None = None
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
        }

    # -- entry points ---------------------------------------------------------------------

    def handle(self, routing_id: bytes, frames: list[bytes], now_s: float, now_ms: int,
               address: str = "") -> list[Action]:
        """Handle one request (the frames after the routing id). Never raises: any error
        becomes an ERROR reply; an unexpected one is logged with its traceback and answered
        with 500, and the broker keeps serving."""
        request_id = frames[1][:p.MAX_REQUEST_ID_BYTES] if len(frames) > 1 else b""
        try:
            request_id, request = p.decode_request(frames)
            session = self.sessions.get(routing_id)
            if session is not None:
                session.last_seen_s = now_s
                session.last_seen_ms = now_ms
            elif request.NEEDS_SESSION:
                raise ProtocolError(Status.UNAUTHORIZED, f"log in before {request.TYPE}")
            return self._handlers[type(request)](routing_id, request_id, request, session,
                                                 now_s, now_ms, address)
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
        try:
            if isinstance(result, BaseException):
                raise result
            if job.kind == "register":
                return self._finish_register(job, str(result), now_ms)
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
        timeout = self.config.heartbeat_timeout_s
        for session in list(self.sessions.values()):  # snapshot: eviction mutates
            if now_s - session.last_seen_s > timeout:
                log.info("evicted %s (silent %.1f s) from %s", session.name,
                         now_s - session.last_seen_s, session.address or "?")
                actions += self._end_session(session, now_ms)
        if self._next_tick_s is None or now_s >= self._next_tick_s:
            self._next_tick_s = now_s + self.config.heartbeat_interval_s
            actions.append(ToTopic(p.encode_event(p.TOPIC_TICK, p.Tick(time=now_ms))))
        return actions

    def next_deadline(self) -> float | None:
        """Monotonic time at which ``tick`` next has work (the next TICK)."""
        return self._next_tick_s

    def shutdown(self, now_ms: int, text: str = "broker shutting down") -> list[Action]:
        """The broker is stopping (docs/PROTOCOL.md §6.29): publish GOING_AWAY on
        TOPIC_BROKER first, answer every LOGIN/REGISTER still hashing with 503, then end
        every session in memory, publishing offline presence for each account that had one
        (after a restart nobody is online until they RESUME or LOGIN, so observers keep a
        true picture). The sessions stay in the store, resumable for ``resume_grace_s``
        after the next start."""
        actions: list[Action] = [ToTopic(p.encode_event(
            p.TOPIC_BROKER, p.GoingAway(text=text, time=now_ms)))]
        for job in list(self._jobs.values()):
            actions.append(self._error(job.routing_id, job.request_id, Status.UNAVAILABLE,
                                       "the broker is shutting down; retry when it is back"))
        self._jobs.clear()
        for session in list(self.sessions.values()):
            actions += self._end_session(session, now_ms, forget=False)
        return actions

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
        return ToPeer(routing_id, p.encode_reply(request_id or b"?", p.Error(
            status=int(status), reason=reason, retry_after_ms=retry_after_ms)))

    @staticmethod
    def _ok(routing_id: bytes, request_id: bytes, reply: p.Reply) -> ToPeer:
        return ToPeer(routing_id, p.encode_reply(request_id, reply))

    def _room_key(self, raw: str) -> str:
        """Key of an existing room. Raises ProtocolError 422 (invalid name) or 404."""
        key = name_key(normalize_name(raw, "room name"))
        if key not in self.rooms:
            raise ProtocolError(Status.NOT_FOUND, f"no room named {raw!r}")
        return key

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

    def _presence_event(self, account: Account, key: str, now_ms: int,
                        text: str | None = None) -> ToTopic:
        event = p.PresenceChanged(name=account.name, presence=account.presence, time=now_ms,
                                  text=account.away_text if text is None else text)
        return ToTopic(p.encode_event(p.presence_topic(key), event))

    def _end_session(self, session: Session, now_ms: int, quit_text: str = "",
                     forget: bool = True) -> list[Action]:
        """Forget ``session``; when it was the account's last, publish offline (carrying
        ``quit_text``, LOGOUT's quit message) (docs/PROTOCOL.md §8). With ``forget`` its
        stored row goes too, so it cannot be resumed (§6.27); shutdown keeps it."""
        del self.sessions[session.routing_id]
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
        if len(self._jobs) >= MAX_PENDING_JOBS:
            raise ProtocolError(Status.UNAVAILABLE, "too many logins in progress; retry soon")
        job_id = self._next_job
        self._next_job += 1
        self._jobs[job_id] = job
        return [Offload(job_id, work)]

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

    def _check_capacity(self) -> None:
        """Raise ProtocolError 503 when the broker holds ``max_sessions`` sessions."""
        if len(self.sessions) >= self.config.max_sessions:
            raise ProtocolError(Status.UNAVAILABLE, f"the broker is full ("
                                f"{self.config.max_sessions} sessions, its max_sessions); "
                                "retry later")

    def _limit_send(self, session: Session, now_s: float) -> None:
        """Take a token from the session's SEND/DM bucket. Raises RateLimited (429)."""
        bucket = session.send_bucket
        if bucket is None:
            bucket = session.send_bucket = TokenBucket(
                self.config.send_rate_per_s, self.config.send_burst, now_s)
        wait_ms = bucket.take(now_s)
        if wait_ms:
            raise RateLimited(f"sending too fast: wait {_seconds(wait_ms)} (at most "
                              f"{bucket.burst} at once, then {bucket.rate_per_s:g} a "
                              "second)", wait_ms)

    def _check_slow_mode(self, key: str, session: Session, now_s: float) -> None:
        """Room ``key`` is in slow mode: raise RateLimited (429) when the account posted
        there less than ``slow_mode[key]`` seconds ago. Broker admins and the room's
        creator are exempt (docs/PROTOCOL.md §6.28)."""
        account = session.account_key
        if account in self.admins or account == self.creators.get(key):
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
            max_text_bytes=cfg.max_text_bytes))]

    def _check_password(self, password: str) -> None:
        if not password:
            raise ProtocolError(Status.INVALID, "password must not be empty")
        if len(password) > p.MAX_PASSWORD_CHARS:
            raise ProtocolError(Status.TOO_LARGE,
                                f"password longer than {p.MAX_PASSWORD_CHARS} characters")

    def _register(self, rid: bytes, req_id: bytes, req: p.Register, session: Session | None,
                  now_s: float, now_ms: int, address: str) -> list[Action]:
        self._limit_login(rid, address, now_s, "registrations")
        name = normalize_name(req.name)
        self._check_password(req.password)
        key = name_key(name)
        if key in self.accounts or self.store.account_skeleton_taken(skeleton(name)):
            raise ProtocolError(Status.CONFLICT, f"the name {name!r} is taken "
                                "(or too like an existing name)")
        cfg = self.config
        password = req.password
        return self._start_job(
            _Job("register", rid, req_id, key, name, address, bot=req.bot),
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
                ToTopic(p.encode_event(p.room_topic(lobby), joined))]

    def _login(self, rid: bytes, req_id: bytes, req: p.Login, session: Session | None,
               now_s: float, now_ms: int, address: str) -> list[Action]:
        self._limit_login(rid, address, now_s, "login attempts")
        if session is not None:
            raise ProtocolError(Status.CONFLICT, f"this connection is logged in as "
                                f"{session.name}; LOGOUT first")
        self._check_capacity()
        if bool(req.password) == bool(req.token):
            raise ProtocolError(Status.BAD_REQUEST, "give exactly one of password and token")
        if req.token:
            return self._login_by_token(rid, req_id, req, now_s, now_ms, address)
        self._check_password(req.password)
        key = self._account_key(req.name)
        row = self.store.get_account(key)
        if row is None:  # the in-memory index and the store disagree: not the peer's fault
            raise ProtocolError(Status.NOT_FOUND, f"no account named {req.name!r}")
        password, stored = req.password, row.password_hash
        return self._start_job(_Job("login", rid, req_id, key, row.name, address),
                               lambda: verify_password(password, stored))

    def _login_by_token(self, rid: bytes, req_id: bytes, req: p.Login, now_s: float,
                        now_ms: int, address: str) -> list[Action]:
        """LOGIN with an account token (docs/PROTOCOL.md §6.3): one SHA-256 and at most
        MAX_TOKENS_PER_ACCOUNT constant-time comparisons, cheap enough for the loop, so no
        Offload. 401 for a wrong or revoked token."""
        if len(req.token) > p.MAX_PASSWORD_CHARS:
            raise ProtocolError(Status.TOO_LARGE,
                                f"token longer than {p.MAX_PASSWORD_CHARS} characters")
        key = self._account_key(req.name)
        token_id = match_token(req.token, self.store.token_hashes(key))
        job = _Job("login", rid, req_id, key, self.accounts[key].name, address)
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
        self._check_capacity()  # again: sessions may have filled up while hashing
        # Store first: if it fails (503) the connection must not be left half logged in.
        rooms, pending = self._login_state(job.key)
        token = secrets.token_urlsafe(24)
        self.store.add_session(token_sha256(token), job.key, token_id, job.address, now_ms)
        account = self.accounts[job.key]
        session = Session(job.routing_id, token, job.key, account.name,
                          job.address, now_ms, now_s, now_ms, login_token_id=token_id)
        actions = self._bind_session(session, now_ms)
        log.info("login %s from %s (%d sessions, %d stored DMs)%s", account.name,
                 job.address or "?", len(account.sessions), len(pending),
                 "" if token_id is None else f" with token {token_id}")
        actions.insert(0, self._ok(job.routing_id, job.request_id, p.LoggedIn(
            name=account.name, session=session.token, rooms=rooms, pending=pending)))
        return actions

    def _login_state(self, key: str) -> tuple[tuple[p.RoomState, ...],
                                              tuple[p.DirectMessage, ...]]:
        """The LOGIN/RESUME reply's rooms (with last_seq and topic) and pending DMs."""
        rooms = tuple(p.RoomState(room=r.name, last_seq=r.last_seq, topic=r.topic,
                                  slow_mode_s=self.slow_mode.get(r.key, 0))
                      for r in self.store.rooms_of(key))
        pending = tuple(p.DirectMessage(id=d.id, time=d.time_ms, sender=d.sender,
                                        to=d.recipient, text=d.text)
                        for d in self.store.pending_dms(key))
        return rooms, pending

    def _bind_session(self, session: Session, now_ms: int) -> list[Action]:
        """Register ``session`` under its routing id; an offline account goes online (one
        PRESENCE event, returned)."""
        self.sessions[session.routing_id] = session
        self._by_token[token_sha256(session.token)] = session.routing_id
        account = self.accounts[session.account_key]
        account.sessions.add(session.routing_id)
        if account.presence == "offline":
            account.presence = "online"
            return [self._presence_event(account, session.account_key, now_ms)]
        return []

    def _resume(self, rid: bytes, req_id: bytes, req: p.Resume, session: Session | None,
                now_s: float, now_ms: int, address: str) -> list[Action]:
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
            rooms, pending = self._login_state(live.account_key)
            del self.sessions[old_rid]
            account = self.accounts[live.account_key]
            account.sessions.discard(old_rid)
            live.routing_id = rid
            live.last_seen_s, live.last_seen_ms = now_s, now_ms
            if address:
                live.address = address
            self.sessions[rid] = live
            self._by_token[token_hash] = rid
            account.sessions.add(rid)
            log.info("resumed %s on a new connection from %s", live.name, address or "?")
            return [self._ok(rid, req_id, p.LoggedIn(name=live.name, session=live.token,
                                                     rooms=rooms, pending=pending))]
        self._expire_restored(now_s)
        row = self._restored.get(token_hash)
        if row is None:
            raise ProtocolError(Status.UNAUTHORIZED, "unknown or expired session; LOGIN "
                                "again")
        rooms, pending = self._login_state(row.account_key)
        del self._restored[token_hash]
        account = self.accounts[row.account_key]
        resumed = Session(rid, req.session, row.account_key, account.name,
                          address or row.address, row.login_ms, now_s, now_ms,
                          login_token_id=row.login_token_id)
        actions = self._bind_session(resumed, now_ms)
        log.info("resumed %s after the broker restart, from %s", account.name,
                 address or row.address or "?")
        return [self._ok(rid, req_id, p.LoggedIn(name=account.name, session=req.session,
                                                 rooms=rooms, pending=pending)), *actions]

    def _logout(self, rid: bytes, req_id: bytes, req: p.Logout, session: Session,
                now_s: float, now_ms: int, address: str) -> list[Action]:
        text = self._check_away_text(req.text, "quit message")
        log.info("logout %s", session.name)
        return [self._ok(rid, req_id, p.Ok()), *self._end_session(session, now_ms, text)]

    def _join(self, rid: bytes, req_id: bytes, req: p.Join, session: Session,
              now_s: float, now_ms: int, address: str) -> list[Action]:
        name = normalize_name(req.room, "room name")
        key = name_key(name)
        room, created, joined = self.store.join_room(key, name, skeleton(name),
                                                     session.account_key, now_ms)
        self.rooms[key] = room.name
        self.last_seq.setdefault(key, room.last_seq)
        self.topics.setdefault(key, room.topic)
        if created:
            self.creators[key] = session.account_key
        self._add_member(key, session.account_key)
        actions: list[Action] = [self._ok(rid, req_id, p.RoomJoined(
            room=room.name, last_seq=room.last_seq, created=created, topic=room.topic,
            slow_mode_s=self.slow_mode.get(key, 0)))]
        if joined:
            actions.append(ToTopic(p.encode_event(p.room_topic(key), p.UserJoined(
                room=room.name, name=session.name, time=now_ms))))
        return actions

    def _part(self, rid: bytes, req_id: bytes, req: p.Part, session: Session,
              now_s: float, now_ms: int, address: str) -> list[Action]:
        key = self._room_key(req.room)
        if not self.store.leave_room(key, session.account_key):
            raise ProtocolError(Status.FORBIDDEN, f"you are not in {self.rooms[key]!r}")
        self.members[key].discard(session.account_key)
        self.rooms_of.get(session.account_key, set()).discard(key)
        self._last_post.get(key, {}).pop(session.account_key, None)
        return [self._ok(rid, req_id, p.Ok()),
                ToTopic(p.encode_event(p.room_topic(key), p.UserLeft(
                    room=self.rooms[key], name=session.name, time=now_ms)))]

    def _list_rooms(self, rid: bytes, req_id: bytes, req: p.ListRooms, session: Session,
                    now_s: float, now_ms: int, address: str) -> list[Action]:
        rooms = tuple(p.RoomInfo(room=r.name, members=r.members, last_seq=r.last_seq,
                                 joined=session.account_key in self.members.get(r.key, ()),
                                 topic=r.topic, slow_mode_s=self.slow_mode.get(r.key, 0))
                      for r in self.store.list_rooms())
        return [self._ok(rid, req_id, p.RoomList(rooms=rooms))]

    def _send(self, rid: bytes, req_id: bytes, req: p.Send, session: Session,
              now_s: float, now_ms: int, address: str) -> list[Action]:
        if self.config.send_rate_per_s > 0:
            self._limit_send(session, now_s)
        key = self._room_key(req.room)
        if session.account_key not in self.members[key]:
            raise ProtocolError(Status.FORBIDDEN,
                                f"you are not in {self.rooms[key]!r}; JOIN it first")
        if len(req.cmid) > p.MAX_CMID_CHARS:
            raise ProtocolError(Status.BAD_REQUEST,
                                f"cmid longer than {p.MAX_CMID_CHARS} characters")
        text = validate_text(req.text, self.config.max_text_bytes)
        if self.slow_mode.get(key):
            self._check_slow_mode(key, session, now_s)
        posted = self.store.post_message(key, session.name, req.kind, text, req.cmid, now_ms)
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
        return [ToTopic(p.encode_event(p.room_topic(key), event)),
                self._ok(rid, req_id, p.Sent(room=self.rooms[key], seq=seq, time=now_ms))]

    def _dm(self, rid: bytes, req_id: bytes, req: p.SendDirect, session: Session,
            now_s: float, now_ms: int, address: str) -> list[Action]:
        if self.config.send_rate_per_s > 0:
            self._limit_send(session, now_s)
        to_key = self._account_key(req.to)
        text = validate_text(req.text, self.config.max_text_bytes)
        recipient = self.accounts[to_key]
        live = bool(recipient.sessions - {rid})  # a DM to oneself is not live to oneself
        if len(req.cmid) > p.MAX_CMID_CHARS:
            raise ProtocolError(Status.BAD_REQUEST,
                                f"cmid longer than {p.MAX_CMID_CHARS} characters")
        posted = self.store.post_dm(session.name, to_key, recipient.name, text, req.cmid,
                                    now_ms, max_pending=self.config.max_stored_dms)
        dm_id = posted.seq
        if posted.duplicate:  # a retry (§6.7): pushed already, or pending for next login
            return [self._ok(rid, req_id, p.DmSent(
                id=dm_id, time=posted.time_ms, delivered="live" if live else "stored"))]
        if log.isEnabledFor(logging.DEBUG):
            log.debug("dm %d %s -> %s: %r", dm_id, session.name, recipient.name, text)
        push = p.encode_push(p.DirectMessage(id=dm_id, time=now_ms, sender=session.name,
                                             to=recipient.name, text=text))
        targets = set(recipient.sessions) | self.accounts[session.account_key].sessions
        targets.discard(rid)
        actions: list[Action] = [ToPeer(t, push) for t in sorted(targets)]
        actions.append(self._ok(rid, req_id, p.DmSent(
            id=dm_id, time=now_ms, delivered="live" if live else "stored")))
        return actions

    def _ack_dm(self, rid: bytes, req_id: bytes, req: p.AckDirect, session: Session,
                now_s: float, now_ms: int, address: str) -> list[Action]:
        if not 1 <= len(req.ids) <= p.MAX_ACK_IDS:
            raise ProtocolError(Status.BAD_REQUEST, f"ids must hold 1 to {p.MAX_ACK_IDS} ids")
        self.store.ack_dms(session.account_key, req.ids)
        return [self._ok(rid, req_id, p.Ok())]

    def _history(self, rid: bytes, req_id: bytes, req: p.FetchHistory, session: Session,
                 now_s: float, now_ms: int, address: str) -> list[Action]:
        if req.before is not None and req.after is not None:
            raise ProtocolError(Status.BAD_REQUEST, "give at most one of before and after")
        if not 1 <= req.limit <= p.MAX_HISTORY_LIMIT:
            raise ProtocolError(Status.BAD_REQUEST,
                                f"limit must be 1 to {p.MAX_HISTORY_LIMIT}")
        for bound in (req.before, req.after):
            if bound is not None and bound < 0:
                raise ProtocolError(Status.BAD_REQUEST, "sequence bounds must be >= 0")
        key = self._room_key(req.room)
        rows = self.store.history(key, req.before, req.after, req.limit)
        messages = tuple(p.MessagePosted(room=r.room, seq=r.seq, time=r.time_ms,
                                         sender=r.sender, text=r.text,
                                         kind="action" if r.kind == "action" else "text")
                         for r in rows)
        return [self._ok(rid, req_id, p.HistoryPage(room=self.rooms[key], messages=messages))]

    def _who(self, rid: bytes, req_id: bytes, req: p.Who, session: Session,
             now_s: float, now_ms: int, address: str) -> list[Action]:
        if req.room is not None:
            keys = sorted(self.members[self._room_key(req.room)])
        else:
            keys = sorted(k for k, a in self.accounts.items() if a.presence != "offline")
        users = tuple(p.UserPresence(name=self.accounts[k].name,
                                     presence=self.accounts[k].presence,
                                     text=self.accounts[k].away_text,
                                     bot=self.accounts[k].bot) for k in keys)
        return [self._ok(rid, req_id, p.WhoList(users=users))]

    def _set_presence(self, rid: bytes, req_id: bytes, req: p.SetPresence, session: Session,
                      now_s: float, now_ms: int, address: str) -> list[Action]:
        text = self._check_away_text(req.text if req.presence == "away" else "", "away text")
        account = self.accounts[session.account_key]
        actions: list[Action] = [self._ok(rid, req_id, p.Ok())]
        if (account.presence, account.away_text) != (req.presence, text):
            account.presence = req.presence
            account.away_text = text
            actions.append(self._presence_event(account, session.account_key, now_ms))
        return actions

    def _ping(self, rid: bytes, req_id: bytes, req: p.Ping, session: Session | None,
              now_s: float, now_ms: int, address: str) -> list[Action]:
        if session is None:
            return [self._ok(rid, req_id, p.Pong(time=now_ms, session=""))]
        rooms = tuple(p.RoomState(room=self.rooms[k], last_seq=self.last_seq[k],
                                  topic=self.topics[k], slow_mode_s=self.slow_mode.get(k, 0))
                      for k in sorted(self.rooms_of.get(session.account_key, ())))
        return [self._ok(rid, req_id, p.Pong(time=now_ms, rooms=rooms,
                                             session=session.token))]

    def _set_topic(self, rid: bytes, req_id: bytes, req: p.SetTopic, session: Session,
                   now_s: float, now_ms: int, address: str) -> list[Action]:
        """SET_TOPIC (docs/PROTOCOL.md §6.22): any member may set it (moderation later).
        Committed, then published on the room topic (only when it changed), then OK."""
        key = self._room_key(req.room)
        if session.account_key not in self.members[key]:
            raise ProtocolError(Status.FORBIDDEN,
                                f"you are not in {self.rooms[key]!r}; JOIN it first")
        topic = self._check_topic(req.topic)
        ok = self._ok(rid, req_id, p.Ok())
        if self.topics.get(key) == topic:
            return [ok]
        self.store.set_topic(key, topic)
        self.topics[key] = topic
        log.info("topic of %s set by %s", self.rooms[key], session.name)
        event = p.TopicChanged(room=self.rooms[key], topic=topic, by=session.name, time=now_ms)
        return [ToTopic(p.encode_event(p.room_topic(key), event)), ok]

    def _set_slow_mode(self, rid: bytes, req_id: bytes, req: p.SetSlowMode, session: Session,
                       now_s: float, now_ms: int, address: str) -> list[Action]:
        """SET_SLOW_MODE (docs/PROTOCOL.md §6.28): the room's creator or a broker admin,
        being a member, sets how many seconds each member must wait between two messages
        in the room (0 turns it off). Committed, then SLOW_MODE published on the room
        topic (only when it changed), then OK. Raises ProtocolError 404/422 (room), 403
        (not a member, or neither creator nor admin), 400 (seconds outside
        0..MAX_SLOW_MODE_S)."""
        key = self._room_key(req.room)
        if session.account_key not in self.members[key]:
            raise ProtocolError(Status.FORBIDDEN,
                                f"you are not in {self.rooms[key]!r}; JOIN it first")
        if not 0 <= req.seconds <= p.MAX_SLOW_MODE_S:
            raise ProtocolError(Status.BAD_REQUEST,
                                f"seconds must be 0 to {p.MAX_SLOW_MODE_S}")
        if session.account_key not in self.admins and \
                session.account_key != self.creators.get(key):
            raise ProtocolError(Status.FORBIDDEN, "only the room's creator or a broker admin "
                                f"may set the slow mode of {self.rooms[key]!r}")
        ok = self._ok(rid, req_id, p.Ok())
        if self.slow_mode.get(key, 0) == req.seconds:
            return [ok]
        self.store.set_slow_mode(key, req.seconds)
        self.slow_mode[key] = req.seconds
        self._last_post.pop(key, None)  # a new setting starts everyone afresh
        log.info("slow mode of %s set to %d s by %s", self.rooms[key], req.seconds,
                 session.name)
        event = p.SlowModeChanged(room=self.rooms[key], seconds=req.seconds, by=session.name,
                                  time=now_ms)
        return [ToTopic(p.encode_event(p.room_topic(key), event)), ok]

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
        session that logged in with it, as eviction does: nothing is sent to them, and
        their next request gets 401 (docs/PROTOCOL.md §6.26)."""
        if not self.store.revoke_token(session.account_key, req.id):
            raise ProtocolError(Status.NOT_FOUND, f"you have no token with id {req.id}")
        log.info("token %d of %s revoked", req.id, session.name)
        actions: list[Action] = [self._ok(rid, req_id, p.Ok())]
        for other in list(self.sessions.values()):  # snapshot: _end_session mutates
            if other.account_key == session.account_key and other.login_token_id == req.id:
                actions += self._end_session(other, now_ms)
        kept = [h for h, row in self._restored.items()  # not resumable with it either
                if row.account_key == session.account_key and row.login_token_id == req.id]
        for token_hash in kept:
            del self._restored[token_hash]
        self.store.delete_sessions(kept)
        return actions
