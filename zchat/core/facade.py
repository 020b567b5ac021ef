"""The broker core's facade: the entry points the event loop (zchat.broker) calls.

Pure in the sans-I/O sense: no sockets, no clock. The loop feeds ``handle`` the frames
of each request with the time, and carries out the actions it returns
(zchat.core.actions); password work comes back through ``complete``; ``tick`` runs the
timers. A request goes through the table of zchat.core.requests (its preconditions
checked here, once) to its handler in the module of its domain.

Durable state goes through the Store port (zchat.core.ports), whose writes are
committed when they return; the core therefore commits a room message before it returns
the actions that publish it and OK it (docs/PROTOCOL.md §7).

Time comes in as two arguments: ``now_s`` (monotonic seconds, for heartbeats) and
``now_ms`` (UTC milliseconds, for timestamps on the wire).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from zchat import wire as p
from zchat.core.actions import Action, ToPeer
from zchat.core.context import Call, Core
from zchat.core.ports import (
    AlreadyDeleted,
    CmidReused,
    DomainError,
    NameTaken,
    NoSuchMessage,
    NoSuchRoom,
)
from zchat.core.requests import FINISHERS, REQUESTS
from zchat.errors import ProtocolError, Status, StorageError
from zchat.names import MAX_NAME_CHARS
from zchat.passwords import token_sha256

log = logging.getLogger("zchat.broker")

#: How often ``tick`` deletes lapsed bans and mutes from the store and the state, in
#: seconds: they stop applying at their expiry anyway (checked at use against ``now_ms``);
#: the purge only tidies the table and the memory.
BAN_PURGE_INTERVAL_S = 60.0
#: Topics anyone logged in may subscribe to besides the rooms' (zchat.client).
_FIXED_TOPICS = frozenset({p.TOPIC_TICK, p.TOPIC_BROKER, p.TOPIC_PRESENCE_PREFIX})
#: The longest room topic: ``room/`` + a room key of MAX_NAME_CHARS characters of up to
#: 4 UTF-8 bytes + ``/``.
MAX_SUBSCRIPTION_BYTES = len(p.TOPIC_ROOM_PREFIX) + 4 * MAX_NAME_CHARS + 1
#: Rooms past which a PING's PONG is a big reply (a room's state is up to ~1.3 KB with its
#: topic): such PINGs wait their turn behind others' big replies (BrokerCore.costly_ping).
COSTLY_PING_ROOMS = 16


def domain_refusal(exc: DomainError) -> ProtocolError:
    """What the peer is told when the store refused a write by a rule of the data: the
    status and the wording are the core's (zchat.core.ports)."""
    if isinstance(exc, NameTaken):
        if exc.what == "room":
            return ProtocolError(Status.CONFLICT, f"a room named like {exc.name!r} exists "
                                 "already")
        return ProtocolError(Status.CONFLICT, f"the name {exc.name!r} is taken (or too "
                             "like an existing name)")
    if isinstance(exc, NoSuchRoom):
        return ProtocolError(Status.NOT_FOUND, "no such room")
    if isinstance(exc, NoSuchMessage):
        return ProtocolError(Status.NOT_FOUND, f"no message #{exc.seq} in this room")
    if isinstance(exc, AlreadyDeleted):
        return ProtocolError(Status.CONFLICT, f"message #{exc.seq} was deleted already "
                             f"(by {exc.by})")
    if isinstance(exc, CmidReused):
        return ProtocolError(Status.CONFLICT, "this cmid was used for a DM to someone "
                             "else; use a new cmid per message")
    return ProtocolError(Status.INTERNAL, "internal error; the broker logged it")


class BrokerCore(Core):
    """All broker state; one event loop owns it. See the module docstring."""

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
                if cls is not None and REQUESTS[cls].session:
                    raise ProtocolError(Status.UNAUTHORIZED, f"log in before {cls.TYPE}")
            request_id, request = p.decode_request(frames)
            spec = REQUESTS[type(request)]
            session = self.sessions.get(routing_id)
            if session is not None:
                session.last_seen_s = now_s
                session.last_seen_ms = now_ms
            elif spec.session:
                raise ProtocolError(Status.UNAUTHORIZED, f"log in before {request.TYPE}")
            call = Call(routing_id, request_id, now_s, now_ms, address, transport_key)
            if not spec.reading or session is None:
                if spec.admin:
                    assert session is not None
                    self.require_admin(session, spec.admin)
                if spec.sends and self.sending_limited:
                    assert session is not None
                    self.limit_send(session, now_s)
                return spec.handler(self, call, session, request)
            budget = None
            if self.config.read_rate_bytes_per_s > 0:
                budget = self.check_read_budget(session, now_s)
            if spec.admin:
                self.require_admin(session, spec.admin)
            actions = spec.handler(self, call, session, request)
            # counted even with the budgets off: the loop bounds a wake-up by it
            cost = sum(len(f) for a in actions if isinstance(a, ToPeer) for f in a.frames)
            if budget is not None:
                budget.charge(cost, now_s)
            self.read_bytes += cost
            return actions
        except DomainError as exc:
            refusal = domain_refusal(exc)
            return [self.error(routing_id, request_id, refusal.status, refusal.reason)]
        except ProtocolError as exc:
            return [self.error(routing_id, exc.request_id or request_id, exc.status, exc.reason,
                                exc.retry_after_ms)]
        except StorageError as exc:
            log.error("storage error: %s", exc.reason)
            return [self.error(routing_id, request_id, Status.UNAVAILABLE, exc.reason)]
        except Exception:
            log.exception("internal error handling a request from %s", routing_id.hex())
            return [self.error(routing_id, request_id, Status.INTERNAL,
                                "internal error; the broker logged it")]

    def complete(self, job_id: int, result: Any, now_s: float, now_ms: int) -> list[Action]:
        """Finish an Offload job with its result (or the exception it raised)."""
        job = self._jobs.pop(job_id, None)
        if job is None:
            return []
        self.release(job)
        try:
            if isinstance(result, BaseException):
                raise result
            return FINISHERS[type(job)](self, job, result, now_s, now_ms)
        except DomainError as exc:
            refusal = domain_refusal(exc)
            return [self.error(job.routing_id, job.request_id, refusal.status,
                               refusal.reason)]
        except ProtocolError as exc:
            return [self.error(job.routing_id, job.request_id, exc.status, exc.reason,
                               exc.retry_after_ms)]
        except StorageError as exc:
            return [self.error(job.routing_id, job.request_id, Status.UNAVAILABLE, exc.reason)]
        except Exception:
            log.exception("internal error finishing a %s", type(job).__name__)
            return [self.error(job.routing_id, job.request_id, Status.INTERNAL,
                                "internal error; the broker logged it")]

    def tick(self, now_s: float, now_ms: int) -> list[Action]:
        """Evict sessions silent for ``heartbeat_timeout_s`` and publish a TICK every
        ``heartbeat_interval_s`` (docs/PROTOCOL.md §10). Call it at least that often."""
        actions: list[Action] = []
        self.expire_restored(now_s)
        if self._login_buckets is not None:
            self._login_buckets.prune(now_s)
        if self._next_purge_s is None or now_s >= self._next_purge_s:
            self._next_purge_s = now_s + BAN_PURGE_INTERVAL_S
            try:
                lapsed = self.store.purge_expired_bans(now_ms)
            except StorageError as exc:  # they no longer apply anyway; purged next time
                log.error("could not purge lapsed bans: %s", exc.reason)
            else:
                self.state.forget_lapsed(lapsed)
                for ban in lapsed:
                    log.info("%s of %s in %s lapsed", ban.kind, ban.account_key,
                             ban.room_key or "the server")
        timeout = self.config.heartbeat_timeout_s
        if now_s > self._evict_at:  # else no session can have timed out: no O(n) scan
            self._evict_at = math.inf
            for session in list(self.sessions.values()):  # snapshot: eviction mutates
                if now_s - session.last_seen_s > timeout:
                    try:  # in a cluster: busy elsewhere, evicted at the next wake-up
                        self.deliver.lock_presence(session.account_key)
                    except (StorageError, ProtocolError):
                        self._evict_at = min(self._evict_at, now_s)
                        continue
                    log.info("evicted %s (silent %.1f s) from %s", session.name,
                             now_s - session.last_seen_s, session.address or "?")
                    actions += self.end_session(session, now_ms)
                else:
                    self._evict_at = min(self._evict_at, session.last_seen_s + timeout)
        if self._next_tick_s is None or now_s >= self._next_tick_s:
            self._next_tick_s = now_s + self.config.heartbeat_interval_s
            actions.append(self.deliver.broadcast(p.TOPIC_TICK, p.Tick(time=now_ms)))
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
        # by account: a cluster's presence locks are then taken in their one order
        for session in sorted(self.sessions.values(), key=lambda s: s.account_key):
            actions += self.end_session(session, now_ms, forget=False)
        actions.append(self.deliver.broadcast(p.TOPIC_BROKER,
                                              p.GoingAway(text=text, time=now_ms)))
        return actions

    def abandon_jobs(self, reason: str) -> list[Action]:
        """Answer every LOGIN/REGISTER/operator request still hashing with 503
        ``reason`` and forget the jobs (their results, if they come, are ignored)."""
        actions: list[Action] = [
            self.error(job.routing_id, job.request_id, Status.UNAVAILABLE, reason)
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
            if self.restored.pop(token_hash, None) is None \
                    or session.account_key not in self.accounts:
                continue
            # no event, nor a count of the cluster: the account's presence is old's
            self.bind_session(session, session.last_seen_ms, announce=False)
        for key, account in self.accounts.items():
            before = old.accounts.get(key)
            if before is not None:
                account.read_budget = before.read_budget
            if account.present and before is not None:
                account.presence, account.away_text = before.presence, before.away_text
            if before is not None:
                account.password_bucket = before.password_bucket
                account.send_bucket = before.send_bucket
                account.presence_bucket = before.presence_bucket
                account.room_bucket = before.room_bucket
        self._login_buckets = old._login_buckets
        self.last_post = {k: v for k, v in old.last_post.items() if k in self.rooms}
        self._restored_until_s = old._restored_until_s
        self._next_tick_s = old._next_tick_s
        self._next_purge_s = old._next_purge_s
        log.info("reloaded from the store: %d of %d sessions carried over",
                 len(self.sessions), len(old.sessions))

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
        zchat.broker.subscriptions): end the sessions bound to that key, each told so
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
            actions += self.end_session(session, now_ms, "")
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
        return self.end_session(session, now_ms, "its replies were not read")

    def costly_ping(self, routing_id: bytes) -> bool:
        """Whether a PING from ``routing_id`` would be answered with a long room list:
        its session's account is in more than COSTLY_PING_ROOMS rooms. The loop puts such
        a PING aside like a reading request once a wake-up's big replies reached its
        bound (zchat.broker.loop.BATCH_READ_BYTES)."""
        session = self.sessions.get(routing_id)
        return session is not None and \
            len(self.rooms_of.get(session.account_key, ())) > COSTLY_PING_ROOMS
