"""A broker of a cluster: several brokers on one database (docs/cluster.md).

Pure like the rest of the core: no socket, no clock, no notification channel. The
broker's loop tells ``Fanout`` what it heard (a room, a DM, "the state") and when
its periodic checks are due; ``Fanout`` reads the database through the Store port and
returns the actions that carry the news to this broker's own sessions and subscribers.
The database is the truth, a notification only a wake-up (STYLE.md §9).

- **Room messages.** A message is published from the database, never from memory: the
  SEND handler stores it and ``ClusterDelivery`` keeps its event back; after the commit
  the loop asks ``rooms()`` for the rooms posted to, and ``Fanout`` publishes every row
  above what this broker published of the room (``published``), in seq order, with the
  same topic and frames as a single broker, whichever broker stored it. So a room's
  messages leave each broker's PUB once each and in seq order, with the other brokers'
  messages between its own ones where they belong. ``check()`` compares every room's
  ``last_seq`` in the database with ``published`` and catches up what a lost
  notification left behind.
- **Direct messages.** A DM stored elsewhere is read by its id and pushed to this
  broker's sessions of its recipient and sender (``dm_stored``); ``dms()`` pushes the
  pending ones after lost notifications. Each session is pushed each DM once (``seen``:
  what its LOGIN or RESUME reply listed and what was pushed to it since); pending until
  acknowledged, as on one broker.
- **State.** Accounts made and memberships changed elsewhere are applied one by one
  (``account_added``, ``member_changed``); ``sync()`` reloads the rest from the store
  (State.refresh) and ends this broker's sessions of accounts disabled or banned
  server-wide elsewhere, and those that logged in with a token revoked elsewhere.
- **Events.** A room's events and the pushes to accounts (JOINED, TOPIC, MUTE, READ …)
  that this broker sends its own clients are handed to the other brokers too
  (``relay_payload``, sent with the commit), which deliver them (``relayed``).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable

from zchat import wire as p
from zchat.core.actions import Action, ToPeer, ToTopic
from zchat.core.context import Core
from zchat.core.delivery import Delivery, dm_of, message_of
from zchat.core.ports import PresenceBusy, dm_pair
from zchat.core.state import Account, State
from zchat.errors import RateLimited, ZchatError

log = logging.getLogger("zchat.broker")

#: Notification kind: a session was resumed on the broker that sent it (payload: the
#: token's SHA-256 in hex); the broker holding it drops it without an offline event.
SESSION_MOVED = "r"
#: Messages read from the database per query while catching a room up (a HISTORY page).
CATCH_UP_PAGE = 500
#: Milliseconds after which a request refused because another broker's open transaction
#: held its account's presence lock (PresenceBusy) may be tried again: that transaction
#: is one wake-up of the other broker, normally a few milliseconds.
PRESENCE_RETRY_MS = 50
#: The longest relayed event, in UTF-8 bytes: PostgreSQL refuses a notification payload
#: of 8,000 bytes or more (and the whole transaction with it).
RELAY_MAX_BYTES = 7_900


class ClusterDelivery(Delivery):
    """Delivery for a broker of a cluster: a room message's event is not sent by the
    handler that stored it (``posted`` notes its room; ``Fanout.rooms`` publishes it from
    the database after the commit), and DMs pushed to a session are noted in ``seen``."""

    shares_sessions = True

    def __init__(self, state: State, seen: dict[bytes, set[int]],
                 census: Callable[[str], int] | None = None,
                 locker: Callable[[str], None] | None = None,
                 fail: Callable[[str], None] | None = None) -> None:
        super().__init__(state)
        #: Counts an account's sessions held in the whole cluster (Store.sessions_held).
        self.census = census
        #: Takes an account's presence lock (Store.lock_presence), and fails the open
        #: group (Store.fail_group).
        self.locker = locker
        self.fail = fail
        #: Rooms posted to since the loop last took them (``take_posted``) -> the events
        #: held back, in seq order.
        self.posted: dict[str, list[p.MessagePosted]] = {}
        #: Routing id -> ids of the DMs its session was handed (Fanout's, shared).
        self.seen = seen
        #: The room events (JOINED, LEFT, TOPIC …) of this wake-up for the other brokers
        #: (``relay_payload``), sent with its commit (``take_relay``).
        self.relay: list[str] = []
        self._in_room_event = False

    def room_event(self, key: str, event: p.Message, also: Iterable[str] = ()) -> list[Action]:
        if isinstance(event, p.MessagePosted):
            self.posted.setdefault(key, []).append(event)
            return []
        also = tuple(also)
        # "f" for a private room: pushed to its members on every broker, never published
        payload = relay_payload("f" if key in self.state.private else "e", key, event, also)
        if payload is not None:
            self.relay.append(payload)
        self._in_room_event = True  # a private room's pushes are relayed as its event
        try:
            return super().room_event(key, event, also)
        finally:
            self._in_room_event = False

    def to_accounts(self, account_keys: Iterable[str], push: p.Message,
                    exclude: bytes = b"") -> list[Action]:
        account_keys = tuple(account_keys)
        actions = super().to_accounts(account_keys, push, exclude)
        if isinstance(push, p.DirectMessage):  # other brokers read the pending ones
            for action in actions:
                if isinstance(action, ToPeer):
                    self.seen.setdefault(action.routing_id, set()).add(push.id)
        elif not self._in_room_event:  # INVITED, MUTE, READ …: for the sessions elsewhere
            payload = relay_payload("p", "", push, account_keys)
            if payload is not None:
                self.relay.append(payload)
        return actions

    def sessions_held(self, account_key: str) -> int | None:
        return None if self.census is None else self.census(account_key)

    def lock_presence(self, account_key: str) -> None:
        """Raises RateLimited (429, retry after PRESENCE_RETRY_MS) when another broker's
        open transaction holds the lock and this one may not wait for it
        (Store.lock_presence), StorageError (503) when the database fails."""
        if self.locker is None:
            return
        try:
            self.locker(account_key)
        except PresenceBusy as exc:
            raise RateLimited(exc.reason, PRESENCE_RETRY_MS) from exc

    def count_failed(self, reason: str) -> None:
        if self.fail is not None:
            self.fail(f"storage failed, the batch was lost: {reason}")

    def presence(self, account: Account, key: str, now_ms: int,  # type: ignore[override]
                 text: str | None = None) -> ToTopic:
        """The account's presence on this broker's PUB, and relayed (``o``) to the other
        brokers, which publish it on theirs and keep it in memory (WHO, WHOIS)."""
        action = Delivery.presence(account, key, now_ms, text)
        event = p.PresenceChanged(name=account.name, presence=account.presence, time=now_ms,
                                  text=account.away_text if text is None else text)
        payload = relay_payload("o", key, event, ())
        if payload is not None:
            self.relay.append(payload)
        return action

    def session_moved(self, token_sha256: str) -> None:
        """``r<token_sha256>`` for the other brokers, sent with the commit: whichever
        holds the session drops it, with no offline event (``Fanout.session_moved``)."""
        self.relay.append(SESSION_MOVED + token_sha256)

    def pending_handed(self, routing_id: bytes,
                       pending: Iterable[p.DirectMessage]) -> None:
        self.seen[routing_id] = {dm.id for dm in pending}

    def take_posted(self) -> dict[str, list[p.MessagePosted]]:
        posted, self.posted = self.posted, {}
        return posted

    def take_relay(self) -> list[str]:
        relay, self.relay = self.relay, []
        return relay


def relay_payload(kind: str, key: str, event: p.Message,
                  accounts: tuple[str, ...]) -> str | None:
    """An event as a notification payload for the other brokers, which deliver it to
    their own sessions (``Fanout.relayed``): ``kind`` and a JSON array of the room key,
    the event's TYPE, its body as on the wire, and accounts. Kind ``e`` is a room event
    (JOINED, LEFT, TOPIC, SLOW_MODE, MESSAGE_DELETED, ROOM_MODE, ROLE, ROOM_DELETED),
    ``f`` one of a private room (pushed to its members and the accounts given, never
    published), ``p`` a push to the
    accounts' sessions (INVITED, MUTE, READ …). None when it would not fit a
    notification (RELAY_MAX_BYTES): such events are not guaranteed anyway
    (docs/PROTOCOL.md §14), and clients learn the state from PING, JOIN and LOGIN."""
    body = p.encode_body(event).decode("utf-8")
    payload = kind + json.dumps([key, event.TYPE, body, list(accounts)],
                                ensure_ascii=False)
    return payload if len(payload.encode("utf-8")) <= RELAY_MAX_BYTES else None


def _decode(kind: str, body: str) -> p.Message:
    """A relayed event or push from its TYPE and body. Raises ZchatError (an unknown
    type: a newer broker's) or ValueError."""
    frames = [p.VERSION, b"", kind.encode(), body.encode()]
    try:
        return p.decode_from_broker(frames, {})[1]  # the pushes
    except ZchatError:
        return p.decode_event([b"", *frames[:1], *frames[2:]])  # the events


class Fanout:
    """What one broker of a cluster publishes and pushes of what any broker stored.
    ``core`` is the broker's core (``attach`` gives a rebuilt one); ``published`` starts
    at every room's ``last_seq`` in the store: what was stored before this broker started
    its clients fetch from HISTORY, as after any restart."""

    def __init__(self, core: Core) -> None:
        self.published: dict[str, int] = {}
        self.seen: dict[bytes, set[int]] = {}
        self.core = core
        self.published.update(core.store.room_seqs())
        self._known_rooms = len(core.rooms)
        self.attach(core)

    def attach(self, core: Core) -> ClusterDelivery:
        """Use ``core`` (new, or rebuilt after a failed commit), giving it a
        ClusterDelivery; returns it."""
        self.core = core
        # the census is PostgreSQL's (several brokers); a store without one (the SQLite
        # file of the core's tests) counts this broker's sessions alone
        deliver = ClusterDelivery(core.state, self.seen,
                                  getattr(core.store, "sessions_held", None),
                                  getattr(core.store, "lock_presence", None),
                                  getattr(core.store, "fail_group", None))
        core.deliver = deliver
        return deliver

    @property
    def deliver(self) -> ClusterDelivery:
        assert isinstance(self.core.deliver, ClusterDelivery)
        return self.core.deliver

    # -- room messages ------------------------------------------------------------------

    def rooms(self, keys: Iterable[str],
              own: dict[str, list[p.MessagePosted]] | None = None) -> list[Action]:
        """Publish every message of the rooms ``keys`` stored above what this broker
        published, in seq order. ``own`` holds the events of the messages this broker
        just stored, by room: when they follow what it published with no other broker's
        message between, they go out as they are (no read: a lone broker's cost); else
        the room is read from the database. A room this broker does not know yet is
        skipped (``check`` comes back to it after the next ``sync``); a seq not yet
        committed stops its room there, never skipped. Raises StorageError when the
        store cannot be read (the next check catches up)."""
        actions: list[Action] = []
        core = self.core
        own = own or {}
        for key in sorted(keys):
            if key not in core.rooms:
                continue
            held = own.get(key, [])
            after = self.published.get(key)
            if after is None:
                after = held[0].seq - 1 if held else core.last_seq.get(key, 0)
            if held and all(event.seq == after + 1 + i for i, event in enumerate(held)):
                for event in held:
                    actions += Delivery.room_event(self.deliver, key, event)
                self.published[key] = held[-1].seq
                continue
            while True:
                rows = core.store.history(key, None, after, CATCH_UP_PAGE)
                for row in rows:
                    if row.seq != after + 1:
                        break
                    after = row.seq
                    if row.seq > core.last_seq.get(key, 0):
                        core.state.posted(key, row.seq)
                    event = message_of(row)
                    actions += Delivery.room_event(self.deliver, key, event)
                if len(rows) < CATCH_UP_PAGE or after != rows[-1].seq:
                    break
            self.published[key] = after
        return actions

    def note_rooms(self) -> None:
        """Start the pointer of each room this broker learnt of since the last call at
        its ``last_seq`` as learnt (its subscribers, if any, subscribed after that and
        fetch older messages from HISTORY). Call after each wake-up: a room made or
        joined in one is then caught up from where this broker first saw it. Cheap: it
        looks at the rooms only when their number changed."""
        rooms = self.core.rooms
        if len(rooms) == self._known_rooms:
            return
        self._known_rooms = len(rooms)
        last_seq = self.core.last_seq
        for key in rooms:
            if key not in self.published:
                self.published[key] = last_seq.get(key, 0)

    def check(self) -> tuple[list[Action], bool]:
        """The periodic catch-up: every room whose ``last_seq`` in the store is above
        what this broker published gets its messages published (``rooms``). Returns the
        actions and whether the store holds a room this broker does not know (then a
        ``sync`` is due)."""
        behind, unknown = [], False
        core = self.core
        for key, last_seq in core.store.room_seqs().items():
            if key not in core.rooms:
                unknown = True
            elif last_seq > self.published.get(key, 0):
                behind.append(key)
        if behind:
            # a lost notification may have been a room made private: never publish a
            # private room's messages on the PUB because this broker's copy lags
            flags = core.store.room_flags()
            for key in behind:
                private, locked = flags.get(key, (key in core.private, key in core.locked))
                core.state.set_flags(key, private, locked)
        return self.rooms(behind), unknown

    def relayed(self, payloads: Iterable[str]) -> list[Action]:
        """Deliver room events another broker relayed (``relay_payload``) to this broker's
        subscribers and sessions, as that broker did to its own; one that cannot be read
        (a newer broker's event type) is logged and skipped. Call after ``sync`` for the
        same wake-up, so that a private room's members are current."""
        actions: list[Action] = []
        for payload in payloads:
            try:
                key, kind, body, accounts = json.loads(payload[1:])
                event = _decode(kind, body)
            except (ValueError, TypeError, ZchatError) as exc:
                log.warning("skipped an event relayed by another broker: %s", exc)
                continue
            if payload.startswith("o"):  # presence: kept, and published here too
                account = self.core.accounts.get(key)
                if account is not None and isinstance(event, p.PresenceChanged):
                    if account.present and event.presence == "offline":
                        continue  # this broker's sessions keep it online (a race)
                    account.presence = event.presence
                    account.away_text = event.text if event.presence == "away" else ""
                actions.append(ToTopic(p.encode_event(p.presence_topic(key), event)))
            elif payload.startswith("e"):
                actions.append(ToTopic(p.encode_event(p.room_topic(key), event)))
            else:  # a push, or a private room's event: to the members here, whatever
                # this broker's copy of the room says
                members = self.core.members.get(key, set()) if payload.startswith("f") \
                    else set()
                actions += Delivery.to_accounts(self.deliver, members | set(accounts), event)
        return actions

    # -- direct messages ----------------------------------------------------------------

    def dm_stored(self, recipient_key: str, sender_key: str, dm_id: int) -> list[Action]:
        """A DM was stored through another broker: push it to this broker's sessions of
        the recipient and of the sender (its echo to the sender's other sessions), each
        session once. Read by its id, not among the pending ones: another session of the
        recipient may have acknowledged it already, and this broker's sessions must get
        it all the same, as on one broker."""
        core = self.core
        if not any(core.accounts[k].sessions for k in (recipient_key, sender_key)
                   if k in core.accounts):
            return []  # nobody here to push it to: no read
        rows = core.store.dm_history(dm_pair(sender_key, recipient_key), None, dm_id - 1, 1)
        if not rows or rows[0].id != dm_id:
            return []
        row = rows[0]
        frames = p.encode_push(dm_of(row))
        actions: list[Action] = []
        for key in sorted({recipient_key, sender_key}):
            account = core.accounts.get(key)
            for routing_id in sorted(account.sessions) if account is not None else ():
                seen = self.seen.setdefault(routing_id, set())
                if dm_id not in seen:
                    seen.add(dm_id)
                    actions.append(ToPeer(routing_id, frames))
        return actions

    def dms(self, account_keys: Iterable[str]) -> list[Action]:
        """Push to this broker's sessions of each account the pending DMs it was not
        handed yet (by its LOGIN or RESUME reply or an earlier push), oldest first: the
        catch-up after lost notifications (``dm_stored`` is the live path). A DM another
        session acknowledged meanwhile is not pending any more and is not pushed: it is
        in the conversation's history (DM_HISTORY) and counted unread."""
        actions: list[Action] = []
        core = self.core
        for key in sorted(set(account_keys)):
            account = core.accounts.get(key)
            if account is None or not account.sessions:
                continue
            rows = core.store.pending_dms(key, core.config.max_stored_dms)
            ids = {row.id for row in rows}
            for routing_id in sorted(account.sessions):
                seen = self.seen.setdefault(routing_id, set())
                seen &= ids  # acknowledged ones are never pending again
                for row in rows:
                    if row.id in seen:
                        continue
                    seen.add(row.id)
                    actions.append(ToPeer(routing_id, p.encode_push(dm_of(row))))
        return actions

    def local_accounts(self) -> list[str]:
        """The accounts with a session on this broker; forgets the DM notes of sessions
        that ended."""
        sessions = self.core.sessions
        for routing_id in [r for r in self.seen if r not in sessions]:
            del self.seen[routing_id]
        return sorted({s.account_key for s in sessions.values()})

    # -- state --------------------------------------------------------------------------

    def sync(self, now_ms: int) -> list[Action]:
        """Reload the state from the store (State.refresh: accounts, rooms, topics, modes,
        members, roles, bans, mutes, quotas) and end this broker's sessions that another
        broker's change ended: of accounts disabled or banned server-wide, and those that
        logged in with a token since revoked. Each is told SESSION_CLOSED first, as on the
        broker where the change was made. Call inside the loop's group (ending a session
        writes)."""
        core = self.core
        core.state.refresh(core.store, now_ms)
        self.note_rooms()
        self.load_presence()
        actions: list[Action] = []
        local = self.local_accounts()
        if not local:
            return actions
        disabled = {row.key for row in core.store.list_accounts() if row.disabled}
        for key in local:
            if key in disabled:
                actions += core.end_account_sessions(
                    key, now_ms, why="your account was disabled; ask a broker admin to "
                    "enable it")
            elif (ban := core.state.active_ban("ban", "", key, now_ms)) is not None:
                actions += core.end_account_sessions(
                    key, now_ms, by=core.accounts[ban.by_key].name
                    if ban.by_key in core.accounts else "",
                    why="you were banned from this server")
            else:
                actions += self._end_revoked(key, now_ms)
        return actions

    def load_presence(self) -> None:
        """Who is online in the cluster, from the session rows the brokers hold: an
        account with none here goes online in memory when another broker holds one (its
        away text comes with its next PRESENCE), offline when none does. At start and at
        each state reload: the repair for a lost presence notification."""
        accounts_held = getattr(self.core.store, "accounts_held", None)
        if accounts_held is None:  # a store of one broker: its memory is the truth
            return
        held = accounts_held()
        for key, account in self.core.accounts.items():
            if account.present:
                continue
            if key in held:
                if account.presence == "offline":
                    account.presence = "online"
            else:
                account.presence, account.away_text = "offline", ""

    def presence_lost(self, account_keys: Iterable[str], now_ms: int) -> list[Action]:
        """The accounts left with no session anywhere after a dead broker's sessions were
        taken over (counted by the store under their presence locks): each goes offline,
        one PRESENCE event on this broker's PUB and, relayed, on every other broker's. An
        account with a session here (a count that raced a login) is left online."""
        actions: list[Action] = []
        for key in account_keys:
            account = self.core.accounts.get(key)
            if account is None or account.present:
                continue
            account.presence, account.away_text = "offline", ""
            actions.append(self.deliver.presence(account, key, now_ms))
        return actions

    def account_added(self, key: str) -> bool:
        """An account was made elsewhere (REGISTER, CREATE_ACCOUNTS, ``zchat admin``):
        add it to the state. False when it cannot be read (a ``sync`` is then due)."""
        if key in self.core.accounts:
            return True
        row = self.core.store.get_account(key)
        if row is None:
            return False
        self.core.state.add_account(key, row.name, row.bot)
        return True

    def member_changed(self, joined: bool, room_key: str, account_key: str) -> bool:
        """A membership was added (``joined``) or removed elsewhere: apply it to the
        state. False when this broker does not know the room or the account (a ``sync``
        is then due: the room was made, or the account registered, in the same
        transaction)."""
        core = self.core
        if room_key not in core.rooms or account_key not in core.accounts:
            return False
        if joined:
            core.state.add_member(room_key, account_key)
        else:
            core.state.forget_member(room_key, account_key)
        return True

    def session_moved(self, token_sha256: str, now_ms: int) -> list[Action]:
        """Another broker resumed the session with this token hash: drop this broker's
        copy of it — live (its connection is told SESSION_CLOSED, as a displaced
        connection is on one broker, docs/PROTOCOL.md §6.27) or kept from before this
        broker's start — keeping its stored row (the other broker's now) and publishing no
        PRESENCE: the session moved, it did not end, and the account stays online in the
        cluster (docs/cluster.md)."""
        core = self.core
        core.restored.pop(token_sha256, None)
        routing_id = core.by_token.pop(token_sha256, None)
        if routing_id is None:
            return []
        session = core.sessions.pop(routing_id)
        core.unbind_key(session)
        self.seen.pop(routing_id, None)
        account = core.accounts.get(session.account_key)
        if account is not None:
            account.sessions.discard(routing_id)
            account.present.discard(routing_id)
        log.info("session of %s moved to another broker", session.name)
        return [self.deliver.to_session(routing_id, p.SessionClosed(
            reason="your session was resumed on another broker", by=session.name,
            time=now_ms))]

    def _end_revoked(self, account_key: str, now_ms: int) -> list[Action]:
        core = self.core
        account = core.accounts.get(account_key)
        if account is None:
            return []
        with_token = [core.sessions[r] for r in sorted(account.sessions)
                      if core.sessions[r].login_token_id is not None]
        if not with_token:
            return []
        live = {token_id for token_id, _ in core.store.token_hashes(account_key)}
        actions: list[Action] = []
        notice = p.encode_push(p.SessionClosed(
            reason="the account token this session logged in with was revoked",
            by="", time=now_ms))
        for session in with_token:
            if session.login_token_id not in live:
                log.info("ended a session of %s: its token was revoked through another "
                         "broker", session.name)
                actions.append(ToPeer(session.routing_id, notice))
                actions += core.end_session(session, now_ms)
        return actions
