"""The cluster's wake-ups on PostgreSQL: a connection of its own that LISTENs on the
channel the schema's triggers NOTIFY (zchat.store.pg_schema, CLUSTER_CHANNEL), read
without blocking beside the broker's zmq sockets (its descriptor goes into the loop's
``zmq.Poller``).

A notification is a wake-up and nothing more: it says which room, which recipient or
that the state changed, and the broker then reads the database, which is the truth
(docs/cluster.md). PostgreSQL keeps no notification for a connection that was not
listening, so a lost connection loses them: ``drain`` then reports ``lost`` and the
broker reads everything again once ``reconnect`` succeeds.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any, NamedTuple

import psycopg

from zchat.config import redact_text, redact_url
from zchat.store.pg_schema import CLUSTER_CHANNEL
from zchat.store.postgres import BoundedConnection

log = logging.getLogger("zchat.broker")

#: Seconds the listening connection may take to connect (the broker's loop waits that
#: long when the database cannot be reached: zchat.broker.cluster tries it every 5 s).
CONNECT_TIMEOUT_S = 2


class Notification(NamedTuple):
    """One wake-up: the backend process id of the connection whose commit sent it (a
    broker ignores its own store's) and the payload (``m<room key>``, ``d<account
    key>`` or ``s``)."""

    pid: int
    payload: str


class Listener:
    """A LISTEN connection to ``url``. ``fileno()`` is what to poll; ``drain()`` reads
    what arrived without blocking. Not thread-safe: the broker's loop owns it. Raises
    nothing: a failure to connect or read is logged and leaves ``connected`` False, and
    the broker goes on serving from its own writes and its periodic catch-up."""

    def __init__(self, url: str, application_name: str = "zchat-broker") -> None:
        self.url = url
        self.application_name = application_name
        self._db: psycopg.Connection[Any] | None = None
        #: Times the connection was (re)made; a test hook and the log's.
        self.connects = 0
        self.reconnect()

    @property
    def connected(self) -> bool:
        return self._db is not None and not self._db.closed

    def reconnect(self) -> bool:
        """(Re)open the connection and LISTEN; True if it is listening now. Whatever was
        notified while it was not is lost: the caller reads everything again."""
        self.close()
        try:
            # bounded waits (LISTEN itself) as the store's: a cut link must not hang it
            db = BoundedConnection.connect(self.url, autocommit=True,
                                           connect_timeout=CONNECT_TIMEOUT_S,
                                           application_name=self.application_name[:63])
        except (psycopg.Error, ValueError) as exc:
            log.warning("cannot listen for the other brokers on %s: %s",
                        redact_url(self.url),
                        redact_text(str(exc).splitlines()[0], self.url) if str(exc) else exc)
            return False
        try:
            db.execute(f"LISTEN {CLUSTER_CHANNEL}")
        except psycopg.Error as exc:
            db.close()
            log.warning("cannot LISTEN on %s: %s", redact_url(self.url),
                        redact_text(str(exc), self.url))
            return False
        self._db = db
        self.connects += 1
        return True

    def fileno(self) -> int:
        """The connection's socket, or -1 while there is none."""
        return self._db.pgconn.socket if self.connected and self._db is not None else -1

    def drain(self) -> list[Notification]:
        """Every notification that arrived, oldest first, without blocking. On a lost
        connection returns what it had and closes it (``connected`` is then False)."""
        if self._db is None or self._db.closed:
            return []
        pgconn = self._db.pgconn
        out: list[Notification] = []
        try:
            pgconn.consume_input()  # the socket is non-blocking (libpq's own)
            while (note := pgconn.notifies()) is not None:
                out.append(Notification(note.be_pid, note.extra.decode("utf-8",
                                                                       "replace")))
        except psycopg.Error as exc:
            log.warning("lost the connection listening for the other brokers: %s", exc)
            self.close()
        return out

    def close(self) -> None:
        if self._db is not None:
            db, self._db = self._db, None
            with contextlib.suppress(psycopg.Error):
                db.close()

