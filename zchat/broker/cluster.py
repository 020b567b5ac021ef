"""The broker loop's side of a cluster (docs/cluster.md): the LISTEN connection polled
beside the zmq sockets, and when to ask the core's ``Fanout`` (zchat.core.cluster) for
what: the rooms and recipients named by notifications at once, every room's last seq
each ``cluster_check_s``, the whole state and every local session's pending DMs each
``cluster_refresh_s`` and after a lost LISTEN connection.

Made by ``Broker.bind`` when the store is PostgreSQL (several brokers may share it); a
broker on SQLite has none and runs exactly as before.
"""

from __future__ import annotations

import logging
from typing import Any

from zchat.config import BrokerConfig, broker_id
from zchat.core import Action, BrokerCore
from zchat.core.cluster import Fanout
from zchat.errors import StorageError
from zchat.store.pg_listen import Listener

log = logging.getLogger("zchat.broker")

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
        self._all_dms_due = False
        self._state_due = False
        self._next_check_s = now_s + config.cluster_check_s
        self._next_refresh_s = now_s + config.cluster_refresh_s
        self._next_listen_s = 0.0
        #: The store's backend pid at the last attempt to listen again
        self._listen_tried_pid = 0
        log.info("broker %s: listening for the other brokers of the cluster on %s",
                 self.id, store.path)

    def attach(self, core: BrokerCore) -> None:
        """The loop rebuilt its core (a failed commit): carry on with it."""
        self.fanout.attach(core)

    def fileno(self) -> int:
        return self.listener.fileno()

    def next_due(self) -> float:
        """Monotonic time of the next periodic check."""
        return min(self._next_check_s, self._next_refresh_s)

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
            elif kind in ("e", "f", "p"):
                self._events.append(note.payload)
            elif kind in ("a", "j", "l"):
                self._changes.append(note.payload)
            else:
                self._state_due = True

    def in_group(self, now_s: float, now_ms: int) -> list[Action]:
        """Inside the wake-up's group: reload the state when a notification or the
        refresh interval asks (ending sessions writes, so it belongs to the group)."""
        if now_s >= self._next_refresh_s:
            self._next_refresh_s = now_s + self.config.cluster_refresh_s
            self._state_due = self._all_dms_due = True
        actions: list[Action] = []
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
                log.error("cannot reload the state from the database: %s", exc.reason)
                self._state_due = True
        if self._events:  # after the state they change (members of a private room)
            events, self._events = self._events, []
            actions += self.fanout.relayed(events)
        return actions

    def before_commit(self) -> None:
        """Just before the wake-up's commit: hand the room events it made to the other
        brokers, in its transaction (sent at the commit, dropped if it fails)."""
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

    def after(self, now_s: float) -> list[Action]:
        """After the wake-up: the rooms and recipients notifications named, and the
        periodic checks when due (a lost LISTEN connection is made again there, and
        everything is then read again)."""
        actions: list[Action] = []
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
        return self._state_due or bool(self._events) or bool(self._changes)

    def close(self) -> None:
        self.listener.close()
