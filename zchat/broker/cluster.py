"""The broker loop's side of a cluster (docs/cluster.md): the LISTEN connection polled
beside the zmq sockets, and when to ask the core's ``Fanout`` (zchat.core.cluster) for
what: the rooms and recipients named by notifications at once, every room's last seq
each ``cluster_check_s``, the whole state and every local session's pending DMs each
``cluster_refresh_s`` and after a lost LISTEN connection.

Made by ``Broker.bind`` when the store is PostgreSQL (several brokers may share it); a
broker on SQLite has none and runs exactly as before.

It also keeps the broker's lease (docs/cluster.md, "Leases and fencing"): taken at start
(``Store.register_broker``: a new epoch), renewed inside every wake-up's transaction that
writes (so that nothing is committed under a lost lease) and, busy or idle, every
``lease_renew_s``, when it also reaps the expired leases of the other brokers
(``Store.reap_brokers``). A broker that finds its lease lost — expired by its own clock
(it was stopped, or could not reach the database) and not renewable, or taken over — is
fenced: it drops its sessions (``BrokerCore.drop_sessions``), commits nothing more, and
takes a fresh lease (a new epoch) at the next renewal time.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from zchat.config import BrokerConfig, broker_id, broker_owner, lease_warning
from zchat.core import Action, BrokerCore
from zchat.core.cluster import SESSION_MOVED, Fanout
from zchat.core.ports import BrokerIdInUse
from zchat.errors import StorageError
from zchat.store.pg_listen import Listener

log = logging.getLogger("zchat.broker")

#: Seconds before a state reload that failed (the database unreachable) is tried again.
STATE_RETRY_S = 1.0
#: Seconds between attempts to listen again after the LISTEN connection was lost (the
#: first at the next periodic check): each may hold the loop for the connect timeout.
RELISTEN_INTERVAL_S = 5.0


class ClusterLink:
    """One broker's link to the others on the database ``store.url``.

    ``drop_notifications`` is a test hook: notifications are then read and thrown away
    (counted in ``dropped``), as if PostgreSQL had lost them, so that a test proves the
    periodic catch-up alone completes delivery."""

    def __init__(self, config: BrokerConfig, store: Any, core: BrokerCore,
                 now_s: float) -> None:
        self.config = config
        self.store = store
        self.id = broker_id(config)
        self.owner = broker_owner(config)
        # a session let go counts as held for the time its client may take to move
        # (Store.due_offline): lease_s, which must outlast a move (lease_warning)
        store.presence_grace_ms = int(config.lease_s * 1000)
        self.fanout = Fanout(core)
        self.listener = Listener(store.url, f"zchat-broker {self.id}")
        self.drop_notifications = False
        self.dropped = 0
        #: Notifications heard from other connections, and full state reloads (tests).
        self.heard = 0
        self.syncs = 0
        self._rooms_due: set[str] = set()
        #: Room events relayed by the other brokers, in the order heard.
        self._events: list[str] = []
        #: Accounts made and memberships changed elsewhere, in the order heard.
        self._changes: list[str] = []
        self._dm_notes: list[tuple[str, str, int]] = []
        #: Token hashes of sessions another broker resumed, in the order heard.
        self._moved: list[str] = []
        self._all_dms_due = False
        self._state_due = False
        self._next_check_s = now_s + config.cluster_check_s
        self._next_refresh_s = now_s + config.cluster_refresh_s
        self._next_listen_s = 0.0
        #: The lease: its epoch (0 while none is held), the monotonic time until which it
        #: surely holds (the start of its last committed renewal + lease_s: the
        #: database's clock set it later than that), when to renew it next, whether a
        #: renewal is in the open wake-up's transaction (and when it started).
        self.epoch = 0
        self.fenced = False
        self._lease_until_s = 0.0
        self._next_renew_s = now_s + config.lease_renew_s
        self._renewed_at: float | None = None
        self._released = False
        #: Brokers this one reaped, as (id, epoch) (tests), and fencings it went through.
        self.reaped: list[tuple[str, int]] = []
        self.fencings = 0
        #: Actions made outside a wake-up (the offline presence of the accounts whose
        #: sessions the last registration let go), carried out with the next one.
        self._held_back: list[Action] = []
        #: The store's backend pid at the last attempt to listen again
        self._listen_tried_pid = 0
        warning = lease_warning(config)
        if warning:
            log.warning("broker %s: %s (docs/cluster.md)", self.id, warning)
        self._register(now_s, _wall_ms(), at_start=True)
        self.fanout.load_presence()
        # said once the id is taken: a broker refused for another's id (BrokerIdInUse
        # above) said it listened, then that it was refused (a fourth tester's)
        log.info("broker %s: listening for the other brokers of the cluster on %s",
                 self.id, store.path)

    # -- the lease -----------------------------------------------------------------------

    def _register(self, now_s: float, now_ms: int, at_start: bool = False) -> bool:
        """Take a fresh lease (a new epoch); the sessions this broker's earlier epochs
        held become resumable here, and the accounts left with no session anywhere go
        offline. Outside a wake-up's group. False when the database cannot be reached, or
        (after a fencing) another broker took this id meanwhile: tried again at the next
        renewal time. At start, another live broker holding this id raises BrokerIdInUse
        (the broker does not start)."""
        try:
            epoch, released, alone = self.store.register_broker(
                self.id, self.config.lease_s, now_ms, self.owner)
        except BrokerIdInUse as exc:
            if at_start:
                raise
            log.error("broker %s: %s", self.id, exc.reason)
            return False
        except StorageError as exc:
            log.error("broker %s: cannot take a lease in the database: %s", self.id,
                      exc.reason)
            return False
        self.epoch, self.fenced = epoch, False
        self._lease_until_s = now_s + self.config.lease_s
        self._next_renew_s = now_s + self.config.lease_renew_s
        core = self.fanout.core
        core.restored.update({row.token_sha256: row for row in released
                              if row.account_key in core.accounts})
        self._held_back += self.fanout.presence_lost(alone, now_ms)
        log.info("broker %s: lease taken, epoch %d, %g s renewed every %g s%s", self.id,
                 epoch, self.config.lease_s, self.config.lease_renew_s,
                 f"; {len(released)} sessions of its earlier run resumable"
                 if released else "")
        return True

    def _fence(self, why: str) -> None:
        """The lease is lost: drop every session (their rows and presence belong to the
        broker that took them over, or are let go at this broker's next registration),
        and commit nothing until a fresh lease is taken."""
        core = self.fanout.core
        dropped = core.drop_sessions()
        self.fanout.seen.clear()
        self.fenced = True
        self.fencings += 1
        self.store.holder = ("", 0)
        self._state_due = True  # who is online elsewhere, from the database
        log.error("broker %s: fenced out of the cluster (%s): dropped %d sessions, "
                  "whose clients resume on another broker or here; nothing is committed "
                  "until a fresh lease is taken", self.id, why, dropped)

    def _renew(self, now_s: float, now_ms: int, reap: bool = True) -> list[Action]:
        """Renew the lease inside the open group (its row stays locked until the commit)
        and, with ``reap``, reap the other brokers' expired leases. Fences this broker
        when the lease is lost, or lapsed by its own clock and not renewable."""
        if self._renewed_at is not None or self.fenced or self._released:
            return []
        if reap:
            # only here: a broker whose writes renew its lease (``before_commit``, no
            # reaping) more often than every lease_renew_s would otherwise never reap
            # a dead broker (tests/test_cluster_failures.py caught a busy one so)
            self._next_renew_s = now_s + self.config.lease_renew_s
        try:
            renewed = self.store.renew_lease(self.config.lease_s)
        except StorageError as exc:
            if now_s >= self._lease_until_s:
                self._fence(f"lease lapsed, the database unreachable: {exc.reason}")
            else:
                log.error("broker %s: cannot renew its lease (%.1f s left): %s", self.id,
                          self._lease_until_s - now_s, exc.reason)
            return []
        if not renewed:
            self._fence("its lease expired or was taken over")
            return []
        self._renewed_at = now_s
        if not reap:
            return []
        try:
            dead, alone = self.store.reap_brokers(
                now_ms, int(self.config.resume_grace_s * 1000))
        except StorageError as exc:
            log.error("broker %s: cannot look for expired leases: %s", self.id, exc.reason)
            return []
        for broker, epoch in dead:
            log.warning("broker %s: took over the sessions of broker %s (epoch %d), whose "
                        "lease expired; %d accounts went offline", self.id, broker, epoch,
                        len(alone))
        self.reaped += dead
        try:
            alone += self.store.due_offline(now_ms)
        except StorageError as exc:
            log.error("broker %s: cannot look for accounts gone offline: %s", self.id,
                      exc.reason)
        return self.fanout.presence_lost(alone, now_ms)

    def release(self, now_ms: int) -> None:
        """A clean stop: let go of this broker's sessions (resumable on any broker) and
        end its lease. Call before the core's shutdown, which then counts the cluster
        without them."""
        if self.fenced or self._released:
            return
        try:
            self.store.release_lease(now_ms)
        except StorageError as exc:  # the others reap it when its lease expires
            log.error("broker %s: cannot let go of its lease: %s", self.id, exc.reason)
        self._released = True

    def attach(self, core: BrokerCore) -> None:
        """The loop rebuilt its core (a failed commit): carry on with it. While fenced it
        holds no session: the rebuilt core would carry over those a refused wake-up
        had just made (a RESUME answered 503 left a session in memory, whose eviction
        then published a second offline: a third tester's), so they are dropped. The
        accounts online through other brokers are read again (WHO, WHOIS), as at start."""
        self.fanout.attach(core)
        if self.fenced:
            core.drop_sessions()
            self.fanout.seen.clear()
        try:  # who is online elsewhere: the rebuilt core knows only its own sessions
            self.fanout.load_presence()
        except StorageError as exc:
            log.error("cannot read who is online in the cluster: %s", exc.reason)
            self._state_due = True

    def fileno(self) -> int:
        return self.listener.fileno()

    def next_due(self) -> float:
        """Monotonic time of the next periodic check or lease renewal."""
        return min(self._next_check_s, self._next_refresh_s, self._next_renew_s)

    def hear(self) -> None:
        """Read the notifications that arrived and note what they ask to read again.
        This broker's own commits are skipped (its store's backend pid): it published and
        applied them itself."""
        own = self.store.backend_pid
        for note in self.listener.drain():
            if self.drop_notifications:
                self.dropped += 1
                continue
            if note.pid == own:
                continue
            self.heard += 1
            kind, key = note.payload[:1], note.payload[1:]
            if kind == "m":
                self._rooms_due.add(key)
            elif kind == "d":
                recipient, sender, dm_id = key.split("\t")
                self._dm_notes.append((recipient, sender, int(dm_id)))
            elif kind in ("e", "f", "p", "o"):
                self._events.append(note.payload)
            elif kind == SESSION_MOVED:
                self._moved.append(key)
            elif kind in ("a", "j", "l"):
                self._changes.append(note.payload)
            else:
                self._state_due = True

    def in_group(self, now_s: float, now_ms: int) -> list[Action]:
        """Inside the wake-up's group: reload the state when a notification or the
        refresh interval asks (ending sessions writes, so it belongs to the group)."""
        actions: list[Action] = self._held_back
        self._held_back = []
        if now_s >= self._next_renew_s or now_s >= self._lease_until_s:
            # first: a broker back from a stop finds out before serving anything
            actions += self._renew(now_s, now_ms)
        if now_s >= self._next_refresh_s:
            self._next_refresh_s = now_s + self.config.cluster_refresh_s
            self._state_due = self._all_dms_due = True
        if self._changes and not self._state_due:
            changes, self._changes = self._changes, []
            try:
                for change in changes:
                    kind, key = change[:1], change[1:]
                    if kind == "a":
                        done = self.fanout.account_added(key)
                    else:
                        room_key, _, account_key = key.partition("\t")
                        done = self.fanout.member_changed(kind == "j", room_key,
                                                          account_key)
                    if not done:
                        self._state_due = True
                        break
            except StorageError as exc:
                log.error("cannot read an account made elsewhere: %s", exc.reason)
                self._state_due = True
        if self._state_due:
            self._state_due = False
            self._changes.clear()  # the reload brings them all
            self.syncs += 1
            try:
                actions += self.fanout.sync(now_ms)
            except StorageError as exc:
                # again at the refresh, STATE_RETRY_S from now at the latest: asking for
                # it at once (``due_now``) spun the loop while the database was away
                log.error("cannot reload the state from the database: %s", exc.reason)
                self._next_refresh_s = min(self._next_refresh_s, now_s + STATE_RETRY_S)
        if self._moved:  # in memory only: a moved session's row stays
            moved, self._moved = self._moved, []
            for token_sha256 in moved:
                actions += self.fanout.session_moved(token_sha256, now_ms)
        if self._events:  # after the state they change (members of a private room)
            events, self._events = self._events, []
            actions += self.fanout.relayed(events)
        return actions

    def before_commit(self) -> None:
        """Just before the wake-up's commit: hand the room events it made to the other
        brokers, in its transaction (sent at the commit, dropped if it fails)."""
        if self.store.group_writes and not self._released:
            # fencing: the group commits only if the lease is valid now; its row then
            # stays locked until the commit, so no broker reaps this one meanwhile
            if self._renewed_at is None and not self.fenced:
                self._renew(time.monotonic(), _wall_ms(), reap=False)
            if self._renewed_at is None:
                self.store.fail_group("storage unavailable: this broker lost its lease "
                                      "in the cluster; connect again (to another broker)")
                self.fanout.deliver.take_relay()
                return
        relay = self.fanout.deliver.take_relay()
        if relay:
            try:
                self.store.notify_cluster(relay)
            except StorageError as exc:  # the clients learn the state from PING
                log.error("could not relay %d room events to the other brokers: %s",
                          len(relay), exc.reason)

    def after_commit(self) -> list[Action]:
        """Right after the wake-up's commit, before its replies: publish the rooms this
        broker posted to, from the database (with any other broker's messages before
        its own)."""
        if self._renewed_at is not None:
            self._lease_until_s = self._renewed_at + self.config.lease_s
            self._renewed_at = None
        posted = self.fanout.deliver.take_posted()
        if not posted:
            return []
        try:
            return self.fanout.rooms(posted, own=posted)
        except StorageError as exc:  # the next check publishes them
            log.error("cannot read back the messages just stored: %s", exc.reason)
            self._next_check_s = 0.0
            return []

    def commit_failed(self) -> None:
        """Nothing of the wake-up was stored: forget the rooms it posted to and its
        events."""
        self.fanout.deliver.take_posted()
        self.fanout.deliver.take_relay()
        self._renewed_at = None

    def after(self, now_s: float) -> list[Action]:
        """After the wake-up: the rooms and recipients notifications named, and the
        periodic checks when due (a lost LISTEN connection is made again there, and
        everything is then read again)."""
        actions: list[Action] = []
        if self.fenced and now_s >= self._next_renew_s and not self._released:
            self._next_renew_s = now_s + self.config.lease_renew_s
            if self._register(now_s, _wall_ms()):
                self._state_due = self._all_dms_due = True
        self.hear()  # what arrived while the wake-up ran
        fanout = self.fanout
        try:
            if now_s >= self._next_check_s:
                self._next_check_s = now_s + self.config.cluster_check_s
                if not self.listener.connected and self._relisten_due(now_s) \
                        and self._relisten(now_s):
                    log.warning("broker %s: listening again; reading everything again",
                                self.id)
                    self._state_due = self._all_dms_due = True
                    self._next_refresh_s = now_s  # the state, at the next wake-up
                caught, unknown = fanout.check()
                actions += caught
                if unknown:
                    self._state_due = True
            if self._rooms_due:
                rooms, self._rooms_due = self._rooms_due, set()
                actions += fanout.rooms(rooms)
                if any(key not in fanout.core.rooms for key in rooms):
                    self._state_due = True  # a room made elsewhere: learn it first
            if self._dm_notes:
                notes, self._dm_notes = self._dm_notes, []
                for recipient, sender, dm_id in notes:
                    actions += fanout.dm_stored(recipient, sender, dm_id)
            if self._all_dms_due:
                self._all_dms_due = False
                actions += fanout.dms(fanout.local_accounts())
        except StorageError as exc:
            log.error("cannot read the other brokers' news from the database: %s",
                      exc.reason)
            self._next_check_s = min(self._next_check_s, now_s + 1.0)
        fanout.note_rooms()
        return actions

    def _relisten_due(self, now_s: float) -> bool:
        """Whether to try to listen again now: RELISTEN_INTERVAL_S after the last
        attempt, or as soon as the store's own connection was made again since then (the
        database just took a connection: a restart of PostgreSQL is over), so that
        wake-ups, DMs' above all, come back with the store and not up to 5 s later."""
        if now_s >= self._next_listen_s:
            return True
        pid = self.store.backend_pid
        return pid != 0 and pid != self._listen_tried_pid

    def _relisten(self, now_s: float) -> bool:
        """Try to listen again (``_relisten_due``): a connection attempt to an
        unreachable database holds the loop up to pg_listen.CONNECT_TIMEOUT_S."""
        self._next_listen_s = now_s + RELISTEN_INTERVAL_S
        self._listen_tried_pid = self.store.backend_pid
        return self.listener.reconnect()

    @property
    def due_now(self) -> bool:
        """Whether the next wake-up has work without waiting (a state reload asked, or
        relayed events to deliver)."""
        return self._state_due or bool(self._events) or bool(self._changes) or \
            bool(self._held_back) or bool(self._moved)

    def close(self) -> None:
        self.listener.close()


def _wall_ms() -> int:
    """UTC milliseconds now (as zchat.broker.loop.wall_ms)."""
    return time.time_ns() // 1_000_000
