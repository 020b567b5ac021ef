"""The PostgreSQL store: the Store port (zchat.core.ports) on PostgreSQL, with psycopg 3.

The same semantics as zchat.store.sqlite, method by method: the same rows, the same domain
errors (``NameTaken``, ``NoSuchRoom`` …), the same ordering and paging, the same unit of
work. Every write is one transaction, rolled back whole on failure with StorageError(503);
the broker's loop groups the writes of one wake-up into one transaction
(``begin_group``/``commit_group``: one commit, so one WAL flush, per batch;
docs/PROTOCOL.md §14 "Group commit"), each top-level write a SAVEPOINT in it. Unlike
SQLite, PostgreSQL aborts the whole transaction on any failed statement, so every write
in a group takes its savepoint (SQLite spares a room message's one INSERT that).

Durable before acknowledged: ``commit_group`` returns once PostgreSQL has committed,
which with ``synchronous_commit`` on (the store turns it on for its own connection if the
server's default is off) means the commit is flushed to the server's WAL. A server
running with ``fsync = off`` cannot keep that promise; the store logs a warning at open.

Per-room sequence numbers stay gap-free and unique with several writers on one database
(several brokers): a message takes ``last_seq + 1`` from its room's row with
``UPDATE rooms … RETURNING`` in the message's own statement, which locks the row until
the transaction ends (zchat.store.pg_schema says why not a SEQUENCE).

The database's clock is never used: times are the caller's ``now_ms``, as in SQLite.
The connection is opened in autocommit mode and transactions are begun explicitly, as the
SQLite store does with ``isolation_level=None``; reads outside a write are single
statements. A connection lost outside a transaction is opened again at the next use (at
most once a second; meanwhile StorageError, 503). The schema lives in
zchat.store.pg_schema.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any, NoReturn

import psycopg
from psycopg import pq

from zchat.config import libpq_url, redact_text, redact_url
from zchat.core.ports import (
    AccountInfoRow,
    AccountRow,
    AlreadyDeleted,
    AuditRow,
    BanRow,
    BrokerIdInUse,
    CmidReused,
    DirectMessageRow,
    DmReadRow,
    MessageRow,
    NameTaken,
    NoSuchMessage,
    NoSuchRoom,
    PostedRow,
    PresenceBusy,
    RoomReadRow,
    RoomRow,
    SessionRow,
    TokenRow,
    dm_pair,
)
from zchat.errors import StorageError
from zchat.names import name_key
from zchat.store import pg_schema
from zchat.store.sql import page

log = logging.getLogger("zchat.store")

#: Seconds a connection attempt may take (at open and when reconnecting).
CONNECT_TIMEOUT_S = 5
#: Most seconds between two attempts to open a lost connection again; meanwhile every
#: call fails at once with StorageError (503) rather than stalling the broker's loop.
RECONNECT_INTERVAL_S = 1.0
#: Seconds between the first two attempts, doubled after each failed one up to
#: RECONNECT_INTERVAL_S: a restarted PostgreSQL is used again within this of accepting
#: connections (measured in docs/cluster.md), while a database that stays away is tried
#: once a second (an attempt to an unreachable host holds the loop CONNECT_TIMEOUT_S).
RECONNECT_FIRST_S = 0.1
#: Milliseconds a statement may wait for a lock another connection holds (a room's row,
#: a DM conversation, a cmid) before it fails with StorageError (503): normally a wait
#: lasts one wake-up of the other broker (milliseconds), and a deadlock is found after
#: PostgreSQL's ``deadlock_timeout`` (1 s by default); past this bound the other one is
#: stuck, and the broker answers 503 rather than hanging. Set on the store's connection.
LOCK_TIMEOUT_MS = 2_000
#: Milliseconds a transaction of the store may sit idle between two statements before
#: PostgreSQL ends its session (``idle_in_transaction_session_timeout``): a broker
#: stopped (SIGSTOP, a frozen VM) in the middle of a batch would otherwise hold its rooms'
#: rows and conversations' locks, and so every other broker's writes to them, until it
#: runs again. Its batch is then lost (503 to its clients: nothing was acknowledged) and
#: its store reconnects when it runs again. A live broker's batch runs its statements
#: back to back (milliseconds apart).
IDLE_IN_TRANSACTION_TIMEOUT_MS = 5_000
#: Seconds the store waits for the database to answer one statement (a COMMIT
#: included; the schema's upgrade at start excepted, which may rightly take long). A link
#: cut without a reset (a network partition, a firewall dropping packets, a frozen server
#: or proxy) sends no error: with no bound the broker's loop waited for TCP to give up
#: (minutes, or never when something in between keeps the connection open), serving
#: nobody and unable to find out that its lease had lapsed (tests/
#: test_cluster_failures.py found it so). Past this bound the connection is closed, the
#: call fails with StorageError (503, "the database did not answer within 5 s"), and the
#: store connects again as after any lost connection (RECONNECT_FIRST_S …), each attempt
#: bounded by CONNECT_TIMEOUT_S. Above LOCK_TIMEOUT_MS plus PostgreSQL's
#: ``deadlock_timeout`` (1 s), so that a statement waiting for a lock is ended by the
#: server's own bound first; a COMMIT cut off by it is ambiguous, as any COMMIT whose
#: connection is lost (docs/cluster.md, "Limits found while building it").
ANSWER_TIMEOUT_S = 5.0
#: What a request is told when an account's presence lock is held by another broker's
#: open transaction and waiting for it could close a cycle (``Store.lock_presence``).
PRESENCE_BUSY = "storage busy: another broker is starting or ending a session of this " \
    "account; retry"
#: Bound of Store.active_ban's cache (entries); emptied whole when full.
BAN_CACHE_MAX = 65_536

_IDLE = pq.TransactionStatus.IDLE
_INTRANS = pq.TransactionStatus.INTRANS


def _first_line(exc: BaseException, url: str = "") -> str:
    """The first line of a psycopg error (libpq's messages run to several lines), its
    passwords hidden (zchat.config.redact_text; with ``url``, the store URL's wherever
    the message quotes them: libpq quotes pieces of a malformed URL)."""
    text = str(exc).strip()
    return redact_text(text.splitlines()[0], url) if text else type(exc).__name__


#: A session row that counts as held for presence: a broker holds it, or it was let go
#: within the grace (``Store.presence_grace_ms``; the parameter is the cutoff, UTC ms).
#: A row that counts for its account's presence: held, or let go within the grace; never
#: a session that announces no presence (LOGIN ``presence`` false, docs/PROTOCOL.md §6.3).
_HELD = "(presence AND (broker_id <> '' OR released_ms > %s))"


def _write_error(exc: BaseException) -> BaseException:
    """What a failed write raises: IntegrityError and the domain errors as they are (the
    callers map them), any other psycopg error as StorageError(503), anything else as
    it is."""
    if isinstance(exc, psycopg.Error) and not isinstance(exc, psycopg.IntegrityError):
        return StorageError(f"storage failed, nothing was changed: {_first_line(exc)}")
    return exc


def _raise_write_error(exc: BaseException) -> NoReturn:
    error = _write_error(exc)
    if error is exc:
        raise exc
    raise error from exc


def _cmid(cmid: str) -> str:
    """A client message id as stored: PostgreSQL's text cannot hold NUL, which a cmid
    may (the wire bounds its length only), so ``\\`` and NUL are escaped (``\\\\``,
    ``\\0``). Injective, and a cmid is only ever compared, never read back."""
    if "\\" not in cmid and "\0" not in cmid:
        return cmid
    return cmid.replace("\\", "\\\\").replace("\0", "\\0")


def _pair_lock_key(pair: str) -> int:
    """The second key of a DM conversation's advisory lock (pg_schema.DM_PAIR_LOCK): the
    first 4 bytes of the SHA-256 of ``pair`` as a signed int4, the same in every broker
    and release. Two conversations that share a key only wait for each other."""
    return int.from_bytes(hashlib.sha256(pair.encode("utf-8")).digest()[:4], "big",
                          signed=True)


class BoundedConnection(psycopg.Connection[Any]):
    """A psycopg connection whose every wait for the server (a statement's answer, a
    COMMIT's) lasts at most ``answer_timeout_s`` seconds (None: no bound), then closes
    the connection (the exchange is cut midway: it cannot be used again) and raises
    psycopg.OperationalError("the database did not answer within N s …"). The store's
    connection and the cluster's LISTEN connection (zchat.store.pg_listen) are such."""

    answer_timeout_s: float | None = ANSWER_TIMEOUT_S

    def wait(self, gen: Any, interval: float = 0.1, timeout: float | None = None) -> Any:
        bound = self.answer_timeout_s if timeout is None else timeout
        try:
            return super().wait(gen, interval=interval, timeout=bound)
        except psycopg.errors._WaitTimeout as exc:  # psycopg >= 3.3: the wait's bound
            self.pgconn.finish()
            raise psycopg.OperationalError(
                f"the database did not answer within {bound:g} s; the connection was "
                "closed") from exc


class Store:
    """All persistent state of a broker, in one PostgreSQL database.

    ``url`` is a libpq URL (``postgresql://USER@HOST:PORT/DB``; a Unix socket directory
    as ``?host=/run/postgresql``). Not thread-safe: one event loop owns it. Raises
    StorageError(503) from any write that could not be committed.
    """

    def __init__(self, url: str) -> None:
        """Connect to ``url`` and create or upgrade the schema (zchat.store.pg_schema).

        Raises StorageError naming the URL (without its password) when the database
        cannot be reached, holds tables that are not a zchat schema (nothing is changed
        in it), or has a newer schema.
        """
        self.url = url = libpq_url(url)
        self.path = redact_url(url)  # what messages name, as the SQLite store's path
        self._write_depth = 0
        self._group = False
        self._group_open = False  # the group's transaction was begun
        #: (room key, account key) -> the highest seq the account posted in the room in
        #: this group: its read marker moves there at the commit (``append_message``)
        self._own_reads: dict[tuple[str, str], int] = {}
        self._group_failed = ""
        self._ban_cache: dict[tuple[str, str, str], BanRow | None] = {}
        self._bans_version = -1
        self._next_connect = 0.0  # monotonic s before which no reconnection is tried
        self._reconnect_pause_s = RECONNECT_FIRST_S  # after the next failed attempt
        self._broker_lock = False  # hold pg_schema.BROKER_LOCK shared (hold_broker_lock)
        #: The broker lease this store's session rows are written under (broker id,
        #: epoch; ``register_broker``), ("", 0) before one is taken: rows held by no one.
        self.holder: tuple[str, int] = ("", 0)
        #: Milliseconds a session row let go (``released_ms`` > 0) still counts as held
        #: for presence: the time its client may take to RESUME on any broker (the
        #: cluster's ``lease_s``: ClusterLink sets it). Its account's ``offline`` waits
        #: that long (``due_offline``), so a client that moves, or a broker restarted at
        #: once, makes no blink (docs/cluster.md, "Leases and fencing"). 0: no grace.
        self.presence_grace_ms = 0
        #: Accounts whose presence lock the open transaction holds, or may still hold
        #: (a savepoint rolled back may or may not have released one: counted as held),
        #: and the highest of their keys: ``lock_presence`` waits only for a key above
        #: it, so that no two transactions wait for each other's presence locks.
        self._presence_locks: set[str] = set()
        #: Whether the open transaction wrote rows (or took locks) that another
        #: broker's transaction may wait for: it then never waits for a presence lock
        #: (``lock_presence``), only takes one that is free.
        self._rows_locked = False
        self._db = self._connect(f"cannot connect to the database {self.path}")
        try:
            self._migrate()
        except (psycopg.Error, StorageError) as exc:
            self._db.close()
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot open the database {self.path}: "
                               f"{_first_line(exc, self.url)}") from exc

    # -- plumbing ---------------------------------------------------------------------

    def _connect(self, failure: str) -> psycopg.Connection[Any]:
        """A new autocommit connection with ``synchronous_commit`` on, READ COMMITTED
        transactions, whatever the database's defaults say, and the bounds
        LOCK_TIMEOUT_MS, IDLE_IN_TRANSACTION_TIMEOUT_MS and ANSWER_TIMEOUT_S. Raises
        StorageError(``failure``: the reason)."""
        try:
            db = BoundedConnection.connect(self.url, autocommit=True,
                                            connect_timeout=CONNECT_TIMEOUT_S)
        except (psycopg.Error, ValueError) as exc:
            raise StorageError(f"{failure}: {_first_line(exc, self.url)}") from exc
        try:
            sync = db.execute("SHOW synchronous_commit").fetchone()
            if sync is not None and sync[0] == "off":
                # an OK means committed and flushed (docs/PROTOCOL.md §14, G1)
                db.execute("SET synchronous_commit = on")
            db.execute(f"SET lock_timeout = {int(LOCK_TIMEOUT_MS)}")
            db.execute("SET idle_in_transaction_session_timeout = "
                       f"{int(IDLE_IN_TRANSACTION_TIMEOUT_MS)}")
            isolation = db.execute("SHOW default_transaction_isolation").fetchone()
            if isolation is not None and isolation[0] != "read committed":
                # a write reads what other brokers committed while it waited for a lock
                # (a room's row, a cmid, a DM conversation): READ COMMITTED's new
                # snapshot per statement; REPEATABLE READ or SERIALIZABLE would fail
                # those writes with serialization errors instead (503 each)
                db.execute("SET default_transaction_isolation = 'read committed'")
            fsync = db.execute("SHOW fsync").fetchone()
        except psycopg.Error as exc:
            db.close()
            raise StorageError(f"{failure}: {_first_line(exc, self.url)}") from exc
        if fsync is not None and fsync[0] == "off":
            log.warning("the database %s runs with fsync = off: a crash of its server "
                        "can lose acknowledged messages", self.path)
        return db

    def _ensure_connected(self) -> None:
        """Open the connection again if it was lost (outside a transaction only; a lost
        transaction is the group's loss). Raises StorageError(503) when it cannot be, or
        when the last attempt was too recent: the pause after a failed attempt starts at
        RECONNECT_FIRST_S and doubles up to RECONNECT_INTERVAL_S."""
        if not self._db.closed:
            return
        now = time.monotonic()
        if now < self._next_connect:
            # the reason reaches clients: it names no host, port, user or URL
            raise StorageError("storage unavailable: the database connection was lost")
        try:
            self._db = self._connect(f"cannot reconnect to the database {self.path}")
        except StorageError as exc:
            log.warning("%s", exc)  # the operator's detail, in the broker's log only
            self._next_connect = time.monotonic() + self._reconnect_pause_s
            self._reconnect_pause_s = min(RECONNECT_INTERVAL_S, 2 * self._reconnect_pause_s)
            raise StorageError("storage unavailable: cannot reconnect to the "
                               "database") from exc
        self._reconnect_pause_s = RECONNECT_FIRST_S
        if self._broker_lock:
            self._take_broker_lock("storage unavailable: ")
        self._ban_cache.clear()
        self._bans_version = -1
        log.warning("reconnected to the database %s", self.path)

    def hold_broker_lock(self) -> None:
        """Mark this connection as a running broker's for as long as it lives, and again
        on each new connection after one was lost: it holds pg_schema.BROKER_LOCK shared,
        which `zchat admin`'s writes on the database take exclusively (docs/admin.md).
        Raises StorageError when such a write holds it now (the connection is closed)."""
        self._broker_lock = True
        self._take_broker_lock("")

    def _take_broker_lock(self, prefix: str) -> None:
        try:
            row = self._db.execute("SELECT pg_try_advisory_lock_shared(%s)",
                                   (pg_schema.BROKER_LOCK,)).fetchone()
        except psycopg.Error as exc:
            self._db.close()
            raise StorageError(f"{prefix}cannot reach the database {self.path}: "
                               f"{_first_line(exc, self.url)}") from exc
        if row is None or not row[0]:
            self._db.close()
            raise StorageError(f"{prefix}a zchat admin command is writing the database "
                               f"{self.path}; start the broker when it is done")

    @property
    def _status(self) -> pq.TransactionStatus:
        return self._db.info.transaction_status

    @property
    def in_transaction(self) -> bool:
        """Whether a transaction is open on the connection (fine or failed)."""
        return not self._db.closed and self._status != _IDLE

    @property
    def backend_pid(self) -> int:
        """The process id of this store's connection on the server (0 while it is lost):
        the ``pid`` of the notifications its commits send, which a broker listening for
        the other brokers' (zchat.store.pg_listen) skips as its own."""
        return 0 if self._db.closed else int(self._db.info.backend_pid)

    @property
    def schema_version(self) -> int:
        row = self._db.execute(f"SELECT version FROM {pg_schema.VERSION_TABLE}").fetchone()
        return int(row[0]) if row else 0

    def _migrate(self) -> None:
        """Check and upgrade the schema in one transaction, under an advisory lock (two
        brokers starting at once on a new database do not both create it)."""
        db = self._db
        if isinstance(db, BoundedConnection):  # an upgrade may take long: no bound
            db.answer_timeout_s = None
        db.execute("BEGIN")
        try:
            # another broker's upgrade of a large database may take long: wait for it
            db.execute("SET LOCAL lock_timeout = 0")
            db.execute("SELECT pg_advisory_xact_lock(%s)", (pg_schema.MIGRATION_LOCK,))
            tables = {str(name) for (name,) in db.execute(
                "SELECT table_name FROM information_schema.tables "
                "WHERE table_schema = current_schema()")}
            if pg_schema.VERSION_TABLE not in tables:
                if tables:
                    raise StorageError(f"{self.path} is not a zchat database: it holds "
                                       "tables but no zchat schema version; nothing was "
                                       "changed")
                db.execute(f"CREATE TABLE {pg_schema.VERSION_TABLE} "
                           "(version INTEGER NOT NULL)")
                db.execute(f"INSERT INTO {pg_schema.VERSION_TABLE}(version) VALUES (0)")
            current = self.schema_version
            if current > pg_schema.SCHEMA_VERSION:
                raise StorageError(f"database {self.path} has schema version {current}, "
                                   f"newer than this zchat's {pg_schema.SCHEMA_VERSION}; "
                                   "upgrade zchat")
            for version in range(current, pg_schema.SCHEMA_VERSION):
                db.execute(pg_schema.MIGRATIONS[version])  # a script: no parameters
                db.execute(f"UPDATE {pg_schema.VERSION_TABLE} SET version = %s",
                           (version + 1,))
            db.execute("COMMIT")
        except BaseException:
            with contextlib.suppress(psycopg.Error):
                db.execute("ROLLBACK")
            raise
        finally:
            if isinstance(db, BoundedConnection):
                db.answer_timeout_s = ANSWER_TIMEOUT_S

    def _rows(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Every row of a reading statement. Raises StorageError(503) when the database
        fails it (a read failing inside a group loses the group's transaction)."""
        if not self._write_depth and not self.in_transaction:
            self._ensure_connected()
        try:
            return self._db.execute(sql, params).fetchall()
        except psycopg.Error as exc:
            if self._group and not self._write_depth and self.in_transaction \
                    and self._status != _INTRANS:
                self._group_failed = f"storage failed, the batch was lost: {_first_line(exc)}"
            if self._write_depth:
                raise  # the enclosing write rolls back and maps it
            raise StorageError(f"storage failed: {_first_line(exc)}") from exc

    def _row(self, sql: str, params: Sequence[Any] = ()) -> tuple[Any, ...] | None:
        rows = self._rows(sql, params)
        return rows[0] if rows else None

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> psycopg.Cursor[Any]:
        """Run a statement inside a ``_write()`` block (its errors go to the block)."""
        assert self._write_depth, "a write outside _write()"
        return self._db.execute(sql, params)

    @contextmanager
    def _write(self, locks_rows: bool = True) -> Iterator[Store]:
        """One transaction; rolled back whole on any error. A ``_write()`` inside another
        joins it (commits with it, rolls back with it). Inside a group, a SAVEPOINT of the
        group's transaction (``_group_write``); with ``locks_rows`` (the default) the
        group is then marked as holding locks others may wait for (``lock_presence``)."""
        if self._write_depth:
            self._write_depth += 1
            try:
                yield self
            finally:
                self._write_depth -= 1
            return
        if self._group:
            yield from self._group_write(locks_rows)
            return
        self._ensure_connected()
        try:
            self._db.execute("BEGIN")
        except psycopg.Error as exc:
            raise StorageError(f"storage unavailable: {_first_line(exc)}") from exc
        self._write_depth = 1
        try:
            yield self
            self._write_depth = 0
            self._commit()
        except BaseException as exc:
            self._write_depth = 0
            self._ban_cache.clear()
            with contextlib.suppress(psycopg.Error):
                if self.in_transaction:
                    self._db.execute("ROLLBACK")
            _raise_write_error(exc)
        finally:
            self._presence_locks.clear()
            self._rows_locked = False

    def _commit(self) -> None:
        """COMMIT, making sure it committed: PostgreSQL answers COMMIT of a failed
        transaction with a ROLLBACK and no error. Raises StorageError then."""
        if self._status != _INTRANS:
            raise StorageError("storage failed: the transaction was aborted")
        cur = self._db.execute("COMMIT")
        if cur.statusmessage != "COMMIT":
            raise StorageError(f"storage failed: COMMIT answered {cur.statusmessage}")

    def _group_write(self, locks_rows: bool) -> Iterator[Store]:
        """A top-level write inside a group: one SAVEPOINT in the group's transaction
        (begun by the group's first write), released on success and rolled back alone on
        error, so one request's failed write leaves the others' in the group."""
        self._begin_group_transaction()
        try:
            self._db.execute("SAVEPOINT request")
        except psycopg.Error as exc:
            self._group_failed = f"storage failed, the batch was lost: {_first_line(exc)}"
            raise StorageError(f"storage unavailable: {_first_line(exc)}") from exc
        own_reads = dict(self._own_reads)  # what the group had before this write
        self._write_depth = 1
        try:
            yield self
            self._write_depth = 0
            self._db.execute("RELEASE request")
            self._rows_locked = self._rows_locked or locks_rows
        except BaseException as exc:
            self._write_depth = 0
            self._ban_cache.clear()
            self._own_reads = own_reads
            try:
                if self.in_transaction:
                    self._db.execute("ROLLBACK TO request")
                    self._db.execute("RELEASE request")
                else:
                    self._group_failed = "storage failed, the batch was lost: " \
                                         f"{_first_line(exc)}"
            except psycopg.Error as undo:
                self._group_failed = f"storage failed, the batch was lost: {_first_line(undo)}"
            _raise_write_error(exc)

    def _begin_group_transaction(self) -> None:
        """Inside a group: refuse at once if the group is lost, else open its transaction
        if no write has yet. Raises StorageError(503)."""
        if self._group_failed:
            raise StorageError(self._group_failed)
        if self._group_open:
            if not self.in_transaction:  # the connection went, and the transaction with it
                self._group_failed = "storage failed, the batch was lost: the connection " \
                                     "to the database was lost"
                raise StorageError(self._group_failed)
            return
        self._ensure_connected()
        try:
            self._db.execute("BEGIN")
        except psycopg.Error as exc:
            raise StorageError(f"storage unavailable: {_first_line(exc)}") from exc
        self._group_open = True

    def _check_other_writers(self) -> None:
        """Empty the ban cache when any connection (another broker, ``zchat admin
        unban``) wrote to ``bans`` since the last check: ``zchat_changes.bans_version``
        moves exactly then (trigger ``bans_changed``). A failure to read it empties the
        cache (the next reads go to the database and fail there, as 503)."""
        try:
            row = self._row("SELECT bans_version FROM zchat_changes")
        except StorageError:
            self._ban_cache.clear()
            self._bans_version = -1
            return
        version = int(row[0]) if row else -1
        if version != self._bans_version:
            self._bans_version = version
            self._ban_cache.clear()

    def notify_cluster(self, payloads: list[str]) -> None:
        """Send ``payloads`` to the brokers listening on the cluster's channel
        (pg_schema.CLUSTER_CHANNEL, zchat.store.pg_listen): inside a group, with its
        commit (never if it rolls back), else at once. Each under 8,000 bytes. Raises
        StorageError(503) when they cannot be sent (nothing else of a group is lost)."""
        if not payloads:
            return
        with self._write():
            for payload in payloads:
                self._exec("SELECT pg_notify(%s, %s)", (pg_schema.CLUSTER_CHANNEL, payload))

    def changes_elsewhere(self) -> int:
        """A number that moves whenever a write to bans or mutes was committed, by any
        connection (another broker, ``zchat admin``; this one's own too):
        ``zchat_changes.bans_version``, as of ``begin_group`` inside a group (one query
        per wake-up of the loop), else read now; -1 while the database cannot be read.
        What the core reloads its copy of bans and mutes on (SQLite's counterpart moves
        with any other connection's commit)."""
        if not self._group:
            self._check_other_writers()
        return self._bans_version

    def begin_group(self) -> None:
        """Start a group commit: every write until ``commit_group()`` goes into one
        transaction, committed once at the end. Each top-level write in the group is a
        SAVEPOINT, so a write that fails (StorageError, a domain error, IntegrityError
        as outside a group) undoes only itself. A group of reads only begins no
        transaction. Never raises StorageError: a database that cannot be reached fails
        the group's requests one by one (503)."""
        if self._group:
            raise RuntimeError("begin_group() inside a group")
        self._group = True
        self._group_failed = ""
        self._check_other_writers()

    def commit_group(self) -> None:
        """End the group: commit its transaction, if a write began one. Raises
        StorageError (with everything in the group rolled back) when the commit fails, or
        when a failed statement inside the group lost the whole transaction."""
        if not self._group:
            raise RuntimeError("commit_group() without begin_group()")
        self._group = False
        failed, self._group_failed = self._group_failed, ""
        opened, self._group_open = self._group_open, False
        self._presence_locks.clear()  # released by the COMMIT or ROLLBACK below
        self._rows_locked = False
        if not opened:
            self._own_reads.clear()
            if failed:
                raise StorageError(failed)
            return
        try:
            if failed:
                raise StorageError(failed)
            if not self.in_transaction:
                raise StorageError("storage failed, the batch was lost: the connection to "
                                   "the database was lost")
            self._flush_own_reads()
            self._commit()
        except (psycopg.Error, StorageError) as exc:
            self._own_reads.clear()
            self._ban_cache.clear()
            with contextlib.suppress(psycopg.Error):
                if self.in_transaction:
                    self._db.execute("ROLLBACK")
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"storage failed, the batch was not committed: "
                               f"{_first_line(exc)}") from exc

    def abort_group(self) -> None:
        """End the group rolling back everything written in it (an unexpected error in
        the loop)."""
        self._group = False
        self._group_open = False
        self._group_failed = ""
        self._presence_locks.clear()
        self._rows_locked = False
        self._own_reads.clear()
        self._ban_cache.clear()
        with contextlib.suppress(psycopg.Error):
            if self.in_transaction:
                self._db.execute("ROLLBACK")

    def fail_group(self, reason: str) -> None:
        """Make the open group's commit fail with StorageError(``reason``), rolling back
        everything in it (a broker fenced out must not commit: docs/cluster.md)."""
        if self._group and not self._group_failed:
            self._group_failed = reason

    @property
    def group_writes(self) -> bool:
        """Whether the open group has begun a transaction (some write in it)."""
        return self._group and self._group_open

    @property
    def in_group(self) -> bool:
        """Whether a group commit is open (``begin_group()`` without its commit)."""
        return self._group

    def transaction(self) -> contextlib.AbstractContextManager[Store]:
        """Group several Store writes into one transaction: ``with store.transaction():``
        commits them together or rolls them all back (a moderation action and its audit
        entry, docs/PROTOCOL.md §17.4). Raises StorageError(503) when it is not
        committed."""
        return self._write()

    def close(self) -> None:
        self._db.close()

    # -- accounts ---------------------------------------------------------------------

    def create_account(self, key: str, name: str, skeleton: str, password_hash: str,
                       now_ms: int, bot: bool = False, rooms: tuple[str, ...] = ()) -> None:
        """Create an account that is a member of ``rooms`` (keys of existing rooms), in one
        transaction. Raises NameTaken when the key or a look-alike skeleton exists."""
        try:
            with self._write():
                self._exec("INSERT INTO accounts(key, name, skeleton, password_hash, bot, "
                           "created_ms) VALUES (%s, %s, %s, %s, %s, %s)",
                           (key, name, skeleton, password_hash, bot, now_ms))
                for room_key in rooms:
                    self._exec(self._JOIN_SQL, (room_key, key, now_ms, room_key))
        except psycopg.IntegrityError:  # as SQLite's: the key, the skeleton (or no room)
            raise NameTaken("account", name) from None

    def get_account(self, key: str) -> AccountRow | None:
        row = self._row("SELECT key, name, password_hash, bot FROM accounts WHERE key = %s",
                        (key,))
        return AccountRow(row[0], row[1], row[2], bool(row[3])) if row else None

    def account_skeleton_taken(self, skeleton: str) -> bool:
        return self._row("SELECT 1 FROM accounts WHERE skeleton = %s",
                         (skeleton,)) is not None

    def account_names(self) -> dict[str, tuple[str, bool]]:
        """Every account: key -> (display name, bot)."""
        return {k: (n, bool(b)) for k, n, b in
                self._rows("SELECT key, name, bot FROM accounts")}

    def list_accounts(self) -> list[AccountInfoRow]:
        """Every account, by key (``zchat admin users``, USERS §6.42)."""
        return [AccountInfoRow(str(k), str(n), bool(b), bool(d), int(c)) for k, n, b, d, c in
                self._rows("SELECT key, name, bot, disabled, created_ms FROM accounts "
                           "ORDER BY key")]

    # -- storage quotas (docs/PROTOCOL.md §6.53) ------------------------------------------

    def storage_used(self, room_key: str | None = None) -> dict[str, int]:
        """Bytes of message text (UTF-8) each account has stored: account key -> bytes,
        as zchat.store.sqlite's (room messages, deleted ones included, and DMs; with
        ``room_key`` only its messages in that room)."""
        used: dict[str, int] = {}
        sql = ("SELECT sender_key, sender, SUM(octet_length(text)) FROM messages "
               + ("WHERE room_key = %s " if room_key is not None else "")
               + "GROUP BY sender_key, sender")
        queries: list[tuple[str, tuple[Any, ...]]] = [
            (sql, (room_key,) if room_key is not None else ())]
        if room_key is None:
            queries.append(("SELECT sender_key, sender, SUM(octet_length(text)) "
                            "FROM direct_messages GROUP BY sender_key, sender", ()))
        for query, params in queries:
            for key, sender, size in self._rows(query, params):
                key = key or name_key(sender)
                used[key] = used.get(key, 0) + int(size or 0)
        return used

    def storage_quotas(self) -> dict[str, int]:
        """The accounts with a quota of their own: account key -> bytes (0: no quota)."""
        return {str(k): int(q) for k, q in self._rows(
            "SELECT key, storage_quota_bytes FROM accounts "
            "WHERE storage_quota_bytes IS NOT NULL")}

    def set_storage_quota(self, key: str, quota_bytes: int | None) -> bool:
        """Give the account a quota of its own (bytes; 0 no quota) or, with None, make it
        follow the broker's default again, and commit; False when there is no such
        account."""
        with self._write():
            cur = self._exec("UPDATE accounts SET storage_quota_bytes = %s WHERE key = %s",
                             (quota_bytes, key))
            return cur.rowcount == 1

    def set_password_hash(self, key: str, password_hash: str) -> bool:
        """Replace the account's password hash and commit; False when there is no such
        account."""
        with self._write():
            cur = self._exec("UPDATE accounts SET password_hash = %s WHERE key = %s",
                             (password_hash, key))
            return cur.rowcount == 1

    def replace_password_hash(self, key: str, old_hash: str, new_hash: str) -> bool:
        """Store ``new_hash`` as the account's password hash only if ``old_hash`` is
        still its hash, and commit; False when the account is gone or its hash changed
        meanwhile. One UPDATE, so two brokers upgrading one account at once cannot both
        succeed: the second's WHERE no longer matches once the first commits (READ
        COMMITTED re-checks it on the updated row)."""
        with self._write():
            cur = self._exec("UPDATE accounts SET password_hash = %s WHERE key = %s "
                             "AND password_hash = %s", (new_hash, key, old_hash))
            return cur.rowcount == 1

    # -- account tokens ------------------------------------------------------------------

    def create_token(self, account_key: str, label: str, token_sha256: str,
                     now_ms: int) -> int:
        """Store a token's SHA-256 (hex) for ``account_key``; returns the token's id."""
        with self._write():
            row = self._exec("INSERT INTO account_tokens(account_key, label, token_sha256, "
                             "created_ms) VALUES (%s, %s, %s, %s) RETURNING id",
                             (account_key, label, token_sha256, now_ms)).fetchone()
            return int(row[0]) if row else 0

    def list_tokens(self, account_key: str) -> list[TokenRow]:
        """The account's live tokens, oldest first (never their hashes)."""
        return [TokenRow(int(i), str(lb), int(c)) for i, lb, c in self._rows(
            "SELECT id, label, created_ms FROM account_tokens WHERE account_key = %s "
            "ORDER BY id", (account_key,))]

    def token_hashes(self, account_key: str) -> list[tuple[int, str]]:
        """(id, SHA-256 hex) of each of the account's live tokens, for LOGIN to compare."""
        return [(int(i), str(h)) for i, h in self._rows(
            "SELECT id, token_sha256 FROM account_tokens WHERE account_key = %s ORDER BY id",
            (account_key,))]

    def revoke_token(self, account_key: str, token_id: int) -> bool:
        """Delete the account's token ``token_id``; False when it has no such token."""
        with self._write():
            cur = self._exec("DELETE FROM account_tokens WHERE id = %s AND account_key = %s",
                             (token_id, account_key))
            return cur.rowcount == 1

    # -- rooms and membership ----------------------------------------------------------

    #: A new membership: its read marker starts at the room's last message. Parameters:
    #: room, account, joined_ms, room again.
    _JOIN_SQL = ("INSERT INTO members(room_key, account_key, joined_ms, read_seq) "
                 "VALUES (%s, %s, %s, COALESCE((SELECT last_seq FROM rooms WHERE key = %s), "
                 "0)) ON CONFLICT DO NOTHING")

    def get_room(self, key: str) -> RoomRow | None:
        row = self._row("SELECT key, name, topic, last_seq FROM rooms WHERE key = %s", (key,))
        return RoomRow(row[0], row[1], row[2], int(row[3])) if row else None

    def room_skeleton_taken(self, skeleton: str) -> bool:
        return self._row("SELECT 1 FROM rooms WHERE skeleton = %s", (skeleton,)) is not None

    #: A new room: its sequence numbers go on from a deleted room of the same key (its
    #: tombstone), and the audit entries so far are not its own (``audit_floor``).
    #: ``ON CONFLICT (key)``: a room another writer made meanwhile is joined, not refused;
    #: a look-alike skeleton still is (UniqueViolation).
    _CREATE_ROOM_SQL = (
        "INSERT INTO rooms(key, name, skeleton, creator, created_ms, private, "
        "last_seq, audit_floor) VALUES (%s, %s, %s, %s, %s, %s, "
        "COALESCE((SELECT last_seq FROM room_tombstones WHERE key = %s), 0), "
        "COALESCE((SELECT MAX(id) FROM audit_log), 0)) ON CONFLICT (key) DO NOTHING")

    def join_room(self, room_key: str, room_name: str, skeleton: str, account_key: str,
                  now_ms: int, private: bool = False) -> tuple[RoomRow, bool, bool]:
        """Make ``account_key`` a member, creating the room when it does not exist: the
        creator becomes its ``owner`` and ``private`` applies only then.

        Returns (room, created, newly_joined). Raises NameTaken("room", …) when creating a
        room whose name looks like an existing room's.
        """
        try:
            with self._write():
                created = False
                if self.get_room(room_key) is None:
                    cur = self._exec(self._CREATE_ROOM_SQL,
                                     (room_key, room_name, skeleton, account_key, now_ms,
                                      private, room_key))
                    if cur.rowcount == 1:
                        self._exec("INSERT INTO room_roles(room_key, account_key, role) "
                                   "VALUES (%s, %s, 'owner') ON CONFLICT (room_key, "
                                   "account_key) DO UPDATE SET role = EXCLUDED.role",
                                   (room_key, account_key))
                        created = True
                cur = self._exec(self._JOIN_SQL, (room_key, account_key, now_ms, room_key))
                joined = cur.rowcount == 1
                room = self.get_room(room_key)
        except psycopg.IntegrityError:
            raise NameTaken("room", room_name) from None
        assert room is not None
        return room, created, joined

    def ensure_room(self, room_key: str, room_name: str, skeleton: str, now_ms: int) -> None:
        """Create a room with no members (the default ``lobby``) if it does not exist (nor
        a look-alike: then nothing, as SQLite's INSERT OR IGNORE)."""
        with self._write():
            self._exec(self._CREATE_ROOM_SQL.replace("ON CONFLICT (key) DO NOTHING",
                                                     "ON CONFLICT DO NOTHING"),
                       (room_key, room_name, skeleton, None, now_ms, False, room_key))

    def leave_room(self, room_key: str, account_key: str) -> bool:
        """Remove a membership (its read marker and unread mentions go with it); returns
        whether there was one."""
        with self._write():
            cur = self._exec("DELETE FROM members WHERE room_key = %s AND account_key = %s",
                             (room_key, account_key))
            self._exec("DELETE FROM mentions WHERE account_key = %s AND room_key = %s",
                       (account_key, room_key))
            return cur.rowcount == 1

    def delete_room(self, room_key: str) -> tuple[int, int]:
        """Delete the room and everything that belongs to it, as zchat.store.sqlite's
        (messages, memberships with read markers and mentions, roles, invitations, the
        bans placed in it; a tombstone keeps its last_seq; the audit keeps its entries
        but the message text its "delete" entries quote). Returns (messages, members)
        deleted. Raises NoSuchRoom, StorageError(503)."""
        self._ban_cache.clear()
        with self._write():
            # the room's row first, locked: a message posted meanwhile through another
            # connection waits, then finds no room (404) rather than a room without rows
            locked = self._exec("SELECT last_seq FROM rooms WHERE key = %s FOR UPDATE",
                                (room_key,)).fetchone()
            if locked is None:
                raise NoSuchRoom(room_key)
            row = self._exec("SELECT COUNT(*) FROM messages WHERE room_key = %s",
                             (room_key,)).fetchone()
            messages = int(row[0]) if row else 0
            members = self._exec("DELETE FROM members WHERE room_key = %s",
                                 (room_key,)).rowcount
            for table in ("messages", "room_roles", "invites", "bans", "mentions"):
                self._exec(f"DELETE FROM {table} WHERE room_key = %s", (room_key,))
            self._exec(
                "UPDATE audit_log SET detail = CASE WHEN strpos(detail, ': ') > 0 "
                "THEN substr(detail, 1, strpos(detail, ': ') - 1) ELSE detail END "
                "|| ' (text deleted with the room)' WHERE action = 'delete' "
                "AND room = (SELECT name FROM rooms WHERE key = %s) "
                "AND id > (SELECT audit_floor FROM rooms WHERE key = %s)",
                (room_key, room_key))
            self._exec("INSERT INTO room_tombstones(key, last_seq) SELECT key, last_seq "
                       "FROM rooms WHERE key = %s ON CONFLICT (key) DO UPDATE SET "
                       "last_seq = EXCLUDED.last_seq", (room_key,))
            self._exec("DELETE FROM rooms WHERE key = %s", (room_key,))
        return messages, int(members)

    def audit_floor(self, room_key: str) -> int:
        """The id of the last audit entry older than the room (0: none), or 0 for no
        such room."""
        row = self._row("SELECT audit_floor FROM rooms WHERE key = %s", (room_key,))
        return int(row[0]) if row else 0

    def set_topic(self, room_key: str, topic: str) -> None:
        """Set a room's topic ("" clears it) and commit. Raises NoSuchRoom."""
        with self._write():
            cur = self._exec("UPDATE rooms SET topic = %s WHERE key = %s", (topic, room_key))
            if cur.rowcount != 1:
                raise NoSuchRoom(room_key)

    def set_slow_mode(self, room_key: str, seconds: int) -> None:
        """Set a room's slow mode in seconds (0 turns it off) and commit. Raises
        NoSuchRoom."""
        with self._write():
            cur = self._exec("UPDATE rooms SET slow_mode_s = %s WHERE key = %s",
                             (seconds, room_key))
            if cur.rowcount != 1:
                raise NoSuchRoom(room_key)

    def room_settings(self) -> dict[str, tuple[str, int]]:
        """Every room key -> (creator's account key or "", slow mode in seconds)."""
        return {k: (c or "", int(s)) for k, c, s in
                self._rows("SELECT key, creator, slow_mode_s FROM rooms")}

    def list_rooms(self) -> list[RoomRow]:
        return [RoomRow(k, n, t, int(s), int(m)) for k, n, t, s, m in self._rows(
            "SELECT r.key, r.name, r.topic, r.last_seq, COUNT(m.account_key) FROM rooms r "
            "LEFT JOIN members m ON m.room_key = r.key GROUP BY r.key ORDER BY r.key")]

    def room_seqs(self) -> dict[str, int]:
        """Room key -> its last sequence number, for every room: what a broker of a
        cluster compares with what it published (zchat.core.cluster, ``check``), so one
        plain scan of ``rooms`` and nothing else."""
        return {k: int(s) for k, s in self._rows("SELECT key, last_seq FROM rooms")}

    def room_floors(self) -> dict[str, int]:
        """Room key -> the last seq of the deleted room it was made after, for the rooms
        made under a deleted room's name only."""
        return {str(k): int(s) for k, s in self._rows(
            "SELECT r.key, t.last_seq FROM rooms r JOIN room_tombstones t ON t.key = r.key")}

    def memberships(self) -> dict[str, set[str]]:
        """Every room key -> the set of its members' account keys (rooms without members
        included)."""
        out: dict[str, set[str]] = {k: set() for (k,) in self._rows("SELECT key FROM rooms")}
        for room_key, account_key in self._rows("SELECT room_key, account_key FROM members"):
            out.setdefault(room_key, set()).add(account_key)
        return out

    def rooms_of(self, account_key: str) -> list[RoomRow]:
        return [RoomRow(k, n, t, int(s)) for k, n, t, s in self._rows(
            "SELECT r.key, r.name, r.topic, r.last_seq FROM rooms r JOIN members m "
            "ON m.room_key = r.key WHERE m.account_key = %s ORDER BY m.joined_ms, r.key",
            (account_key,))]

    # -- room messages ------------------------------------------------------------------

    #: One statement: the room's counter moves (its row locked until the transaction
    #: ends) and the message takes the new number. No row: no such room.
    _APPEND_SQL = (
        "WITH r AS (UPDATE rooms SET last_seq = last_seq + 1 WHERE key = %s "
        "RETURNING key, last_seq) "
        "INSERT INTO messages(room_key, seq, time_ms, sender, kind, text, cmid, sender_key) "
        "SELECT key, last_seq, %s, %s, %s, %s, %s, %s FROM r RETURNING seq")

    def append_message(self, room_key: str, sender: str, kind: str, text: str, cmid: str,
                       now_ms: int, sender_key: str = "") -> int:
        """Store a room message under the room's next sequence number and commit; returns
        it (1, 2, 3, … per room, no gaps, unique with any number of writers). With
        ``sender_key`` the sender's read marker of the room moves to it in the same
        transaction (inside a group once per group, at its commit). Raises NoSuchRoom
        (nothing written), StorageError(503)."""
        with self._write():
            row = self._exec(self._APPEND_SQL, (room_key, now_ms, sender, kind, text,
                                                _cmid(cmid), sender_key)).fetchone()
            if row is None:
                raise NoSuchRoom(room_key)
            seq = int(row[0])
            if sender_key:
                if self._group:  # undone with the write's savepoint (``_group_write``)
                    key = (room_key, sender_key)
                    self._own_reads[key] = max(seq, self._own_reads.get(key, 0))
                else:
                    self._exec(self._OWN_READ_SQL, (seq, room_key, sender_key, seq))
        return seq

    #: One statement for all of a group's markers. Not ``executemany``: psycopg runs it in
    #: pipeline mode, after which PostgreSQL no longer ends the transaction when it sits
    #: idle (``idle_in_transaction_session_timeout`` never fired in tests/
    #: test_cluster_failures.py: a broker cut from the database then held its lease's
    #: row, and so its sessions, from every reaper until the link healed).
    _OWN_READS_SQL = ("UPDATE members AS m SET read_seq = v.seq FROM unnest(%s::text[], "
                      "%s::text[], %s::bigint[]) AS v(room, account, seq) WHERE "
                      "m.room_key = v.room COLLATE \"C\" AND "
                      "m.account_key = v.account COLLATE \"C\" AND m.read_seq < v.seq")
    #: One marker (a post outside a group).
    _OWN_READ_SQL = ("UPDATE members SET read_seq = %s WHERE room_key = %s AND "
                     "account_key = %s AND read_seq < %s")

    def _flush_own_reads(self) -> None:
        """Move the read markers that the group's posts moved, in the group's
        transaction. Called before anything reads or writes a marker, and before the
        group commits."""
        if not self._own_reads:
            return
        pending, self._own_reads = self._own_reads, {}
        try:
            self._db.execute(self._OWN_READS_SQL, (
                [room for room, _ in pending], [account for _, account in pending],
                list(pending.values())))
        except psycopg.Error as exc:
            if self._group and not self._write_depth:
                self._group_failed = f"storage failed, the batch was lost: {_first_line(exc)}"
            if self._write_depth:
                raise
            _raise_write_error(exc)

    def post_message(self, room_key: str, sender: str, kind: str, text: str, cmid: str,
                     now_ms: int, sender_key: str = "",
                     mentions: tuple[str, ...] = ()) -> PostedRow:
        """Store a room message once per client message id (docs/PROTOCOL.md §6.8), as
        zchat.store.sqlite's: a message already stored in the room by ``sender`` with a
        non-empty ``cmid`` comes back (``duplicate=True``) and nothing is written;
        ``mentions`` are stored with it. Raises NoSuchRoom, StorageError(503)."""
        with self._write():
            if cmid:
                # the room's row first: a broker posting the same cmid now (a retry that
                # reached two brokers) holds it to its commit, and the look-up after the
                # wait then sees its message (READ COMMITTED: a new snapshot per
                # statement); the unique index messages_by_cmid backs this up
                self._exec("SELECT 1 FROM rooms WHERE key = %s FOR NO KEY UPDATE",
                           (room_key,))
                found = self.message_by_cmid(room_key, sender, cmid)
                if found is not None:
                    return found
            seq = self.append_message(room_key, sender, kind, text, cmid, now_ms, sender_key)
            if mentions:
                # one statement, not executemany (its pipeline: _OWN_READS_SQL says why)
                self._exec("INSERT INTO mentions(account_key, room_key, seq) SELECT k, %s, "
                           "%s FROM unnest(%s::text[]) AS k ON CONFLICT DO NOTHING",
                           (room_key, seq, list(mentions)))
            return PostedRow(seq, now_ms, False)

    def message_by_cmid(self, room_key: str, sender: str, cmid: str) -> PostedRow | None:
        """The message ``sender`` stored in the room with the non-empty ``cmid``
        (``duplicate=True``), or None (docs/PROTOCOL.md §6.8)."""
        row = self._row("SELECT seq, time_ms FROM messages WHERE room_key = %s AND "
                        "sender = %s AND cmid = %s AND cmid <> '' ORDER BY seq LIMIT 1",
                        (room_key, sender, _cmid(cmid)))
        return PostedRow(int(row[0]), int(row[1]), True) if row is not None else None

    _MESSAGE_COLUMNS = ("SELECT r.name, m.seq, m.time_ms, m.sender, m.kind, m.text, "
                        "m.deleted_by FROM messages m JOIN rooms r ON r.key = m.room_key ")

    @staticmethod
    def _message(row: tuple[Any, ...]) -> MessageRow:
        return MessageRow(row[0], int(row[1]), int(row[2]), row[3], row[4], row[5], row[6])

    def history(self, room_key: str, before: int | None, after: int | None,
                limit: int) -> list[MessageRow]:
        """Up to ``limit`` messages in ascending seq order (docs/PROTOCOL.md §6.9): the
        oldest above ``after``, else the newest below ``before`` (or the newest of all)."""
        base = self._MESSAGE_COLUMNS + "WHERE m.room_key = %s"
        sql, args, newest_first = page(base, "m.seq", "%s", room_key, before, after, limit)
        rows = self._rows(sql, args)
        if newest_first:
            rows.reverse()
        return [self._message(row) for row in rows]

    def message(self, room_key: str, seq: int) -> MessageRow | None:
        """One stored message (deleted ones too, with their text), or None."""
        row = self._row(self._MESSAGE_COLUMNS + "WHERE m.room_key = %s AND m.seq = %s",
                        (room_key, seq))
        return self._message(row) if row else None

    def delete_message(self, room_key: str, seq: int, by: str) -> MessageRow:
        """Mark message ``seq`` of the room deleted by ``by`` and commit; the row and its
        text stay. Returns the row as it was. Raises NoSuchMessage, AlreadyDeleted."""
        with self._write():
            row = self._exec(self._MESSAGE_COLUMNS + "WHERE m.room_key = %s AND m.seq = %s "
                             "FOR UPDATE OF m", (room_key, seq)).fetchone()
            if row is None:
                raise NoSuchMessage(seq)
            message = self._message(row)
            if message.deleted_by:
                raise AlreadyDeleted(seq, message.deleted_by)
            self._exec("UPDATE messages SET deleted_by = %s WHERE room_key = %s AND "
                       "seq = %s", (by, room_key, seq))
            self._exec("DELETE FROM mentions WHERE room_key = %s AND seq = %s",
                       (room_key, seq))
        return message

    # -- roles, private and locked rooms, invitations (docs/PROTOCOL.md §17) ---------------

    def roles(self) -> dict[str, dict[str, str]]:
        """Every room key -> {account key: "owner" | "moderator"}."""
        out: dict[str, dict[str, str]] = {}
        for room_key, account_key, role in self._rows(
                "SELECT room_key, account_key, role FROM room_roles"):
            out.setdefault(room_key, {})[account_key] = role
        return out

    def room_role(self, room_key: str, account_key: str) -> str:
        """The account's role in the room: "owner", "moderator" or ""."""
        row = self._row("SELECT role FROM room_roles WHERE room_key = %s AND "
                        "account_key = %s", (room_key, account_key))
        return str(row[0]) if row else ""

    def set_role(self, room_key: str, account_key: str, role: str) -> None:
        """Set the account's role in the room ("owner", "moderator", or "" to remove it)
        and commit. Raises ValueError for another role."""
        if role not in ("owner", "moderator", ""):
            raise ValueError(f"unknown role {role!r}")
        with self._write():
            if role:
                self._exec("INSERT INTO room_roles(room_key, account_key, role) VALUES "
                           "(%s, %s, %s) ON CONFLICT (room_key, account_key) DO UPDATE "
                           "SET role = EXCLUDED.role", (room_key, account_key, role))
            else:
                self._exec("DELETE FROM room_roles WHERE room_key = %s AND "
                           "account_key = %s", (room_key, account_key))

    # -- read state of rooms (docs/PROTOCOL.md §6.3.1, §6.49) ------------------------------

    _ROOM_READ_SQL = (
        "SELECT m.room_key, m.read_seq, (SELECT COUNT(*) FROM mentions x WHERE "
        "x.account_key = m.account_key AND x.room_key = m.room_key AND x.seq > m.read_seq) "
        "FROM members m WHERE m.account_key = %s")

    def room_reads(self, account_key: str) -> dict[str, RoomReadRow]:
        """The account's read state in each of its rooms, by room key."""
        self._flush_own_reads()
        return {str(k): RoomReadRow(str(k), int(r), int(n)) for k, r, n in
                self._rows(self._ROOM_READ_SQL, (account_key,))}

    def room_read(self, room_key: str, account_key: str) -> RoomReadRow | None:
        """The account's read state in one room; None when it is not a member."""
        self._flush_own_reads()
        row = self._row(self._ROOM_READ_SQL + " AND m.room_key = %s", (account_key, room_key))
        return RoomReadRow(str(row[0]), int(row[1]), int(row[2])) if row else None

    def mark_room_read(self, room_key: str, account_key: str, upto: int) -> bool:
        """Move the member's read marker forward to ``upto`` (never back) and drop the
        mentions it passed; commit. Returns whether it moved."""
        with self._write():
            self._flush_own_reads()
            cur = self._exec("UPDATE members SET read_seq = %s WHERE room_key = %s AND "
                             "account_key = %s AND read_seq < %s",
                             (upto, room_key, account_key, upto))
            if cur.rowcount != 1:
                return False
            self._exec("DELETE FROM mentions WHERE account_key = %s AND room_key = %s AND "
                       "seq <= %s", (account_key, room_key, upto))
            return True

    def room_flags(self) -> dict[str, tuple[bool, bool]]:
        """Every room key -> (private, locked)."""
        return {k: (bool(p), bool(lk)) for k, p, lk in
                self._rows("SELECT key, private, locked FROM rooms")}

    def set_room_flags(self, room_key: str, private: bool | None = None,
                       locked: bool | None = None) -> None:
        """Set a room's private and/or locked flag (None leaves it) and commit. Raises
        NoSuchRoom."""
        with self._write():
            for column, value in (("private", private), ("locked", locked)):
                if value is None:
                    continue
                cur = self._exec(f"UPDATE rooms SET {column} = %s WHERE key = %s",
                                 (value, room_key))
                if cur.rowcount != 1:
                    raise NoSuchRoom(room_key)

    def add_invite(self, room_key: str, account_key: str, by_key: str, now_ms: int) -> None:
        """Invite the account to the room (replacing an earlier invitation) and commit."""
        with self._write():
            self._exec("INSERT INTO invites(room_key, account_key, by_key, time_ms) VALUES "
                       "(%s, %s, %s, %s) ON CONFLICT (room_key, account_key) DO UPDATE SET "
                       "by_key = EXCLUDED.by_key, time_ms = EXCLUDED.time_ms",
                       (room_key, account_key, by_key, now_ms))

    def has_invite(self, room_key: str, account_key: str) -> bool:
        return self._row("SELECT 1 FROM invites WHERE room_key = %s AND account_key = %s",
                         (room_key, account_key)) is not None

    def take_invite(self, room_key: str, account_key: str) -> bool:
        """Use up the account's invitation to the room; returns whether there was one."""
        with self._write():
            cur = self._exec("DELETE FROM invites WHERE room_key = %s AND account_key = %s",
                             (room_key, account_key))
            return cur.rowcount == 1

    def invites_of(self, account_key: str) -> list[str]:
        """Keys of the rooms the account is invited to, oldest invitation first."""
        return [str(k) for (k,) in self._rows(
            "SELECT room_key FROM invites WHERE account_key = %s ORDER BY time_ms, room_key",
            (account_key,))]

    # -- bans and mutes (docs/PROTOCOL.md §17) --------------------------------------------

    _BAN_COLUMNS = "id, kind, room_key, account_key, by_key, reason, created_ms, until_ms"

    @staticmethod
    def _ban(row: tuple[Any, ...]) -> BanRow:
        return BanRow(int(row[0]), row[1], row[2], row[3], row[4], row[5], int(row[6]),
                      None if row[7] is None else int(row[7]))

    def add_ban(self, kind: str, room_key: str, account_key: str, by_key: str, reason: str,
                now_ms: int, until_ms: int | None) -> BanRow:
        """Ban or mute the account in the room (``room_key`` "" = server-wide) until
        ``until_ms`` (None = no expiry), replacing an earlier one of the same kind and
        place; commit and return it. Raises ValueError for another kind."""
        if kind not in ("ban", "mute"):
            raise ValueError(f"unknown kind {kind!r}")
        self._ban_cache.clear()
        with self._write():
            self._exec("DELETE FROM bans WHERE kind = %s AND room_key = %s AND "
                       "account_key = %s", (kind, room_key, account_key))
            row = self._exec("INSERT INTO bans(kind, room_key, account_key, by_key, reason, "
                             "created_ms, until_ms) VALUES (%s, %s, %s, %s, %s, %s, %s) "
                             "RETURNING id", (kind, room_key, account_key, by_key, reason,
                                              now_ms, until_ms)).fetchone()
            ban_id = int(row[0]) if row else 0
        return BanRow(ban_id, kind, room_key, account_key, by_key, reason, now_ms, until_ms)

    def lift_ban(self, kind: str, room_key: str, account_key: str) -> bool:
        """Remove the account's ban or mute of that kind and place; returns whether there
        was one (expired ones count)."""
        self._ban_cache.clear()
        with self._write():
            cur = self._exec("DELETE FROM bans WHERE kind = %s AND room_key = %s AND "
                             "account_key = %s", (kind, room_key, account_key))
            return cur.rowcount == 1

    def active_ban(self, kind: str, room_key: str, account_key: str,
                   now_ms: int) -> BanRow | None:
        """The ban or mute of that kind and place in force at ``now_ms``, or None.
        Answered from memory after the first read; the cache is emptied by every write to
        bans through this Store, every rollback, and whenever any connection wrote to
        bans (checked at each group's start, else at each call)."""
        if not self._group:
            self._check_other_writers()
        target = (kind, room_key, account_key)
        try:
            ban = self._ban_cache[target]
        except KeyError:
            row = self._row(f"SELECT {self._BAN_COLUMNS} FROM bans WHERE kind = %s AND "
                            "room_key = %s AND account_key = %s", target)
            ban = self._ban(row) if row else None
            if len(self._ban_cache) >= BAN_CACHE_MAX:
                self._ban_cache.clear()
            self._ban_cache[target] = ban
        if ban is None or (ban.until_ms is not None and ban.until_ms <= now_ms):
            return None
        return ban

    def list_bans(self, now_ms: int, room_key: str | None = None,
                  kind: str | None = None) -> list[BanRow]:
        """Bans and mutes in force at ``now_ms``, oldest first: of one room (``room_key``,
        "" = the server-wide ones) or all (None), of one ``kind`` or both."""
        sql = f"SELECT {self._BAN_COLUMNS} FROM bans WHERE (until_ms IS NULL OR until_ms > %s)"
        args: list[object] = [now_ms]
        if room_key is not None:
            sql += " AND room_key = %s"
            args.append(room_key)
        if kind is not None:
            sql += " AND kind = %s"
            args.append(kind)
        return [self._ban(row) for row in self._rows(sql + " ORDER BY id", args)]

    def purge_expired_bans(self, now_ms: int) -> list[BanRow]:
        """Delete the bans and mutes whose ``until_ms`` has passed; return them."""
        self._ban_cache.clear()
        with self._write():
            rows = [self._ban(row) for row in self._exec(
                f"DELETE FROM bans WHERE until_ms IS NOT NULL AND until_ms <= %s "
                f"RETURNING {self._BAN_COLUMNS}", (now_ms,)).fetchall()]
        return sorted(rows, key=lambda ban: ban.id)

    # -- disabled accounts ----------------------------------------------------------------

    def set_disabled(self, key: str, disabled: bool) -> bool:
        """Disable (or enable again) an account and commit; False when there is no such
        account."""
        with self._write():
            cur = self._exec("UPDATE accounts SET disabled = %s WHERE key = %s",
                             (disabled, key))
            return cur.rowcount == 1

    def is_disabled(self, key: str) -> bool:
        row = self._row("SELECT disabled FROM accounts WHERE key = %s", (key,))
        return bool(row and row[0])

    # -- audit log (append-only) ----------------------------------------------------------

    def append_audit(self, time_ms: int, actor: str, action: str, room: str = "",
                     target: str = "", detail: str = "") -> int:
        """Append one entry to the audit log and commit; returns its id."""
        with self._write():
            row = self._exec("INSERT INTO audit_log(time_ms, actor, action, room, target, "
                             "detail) VALUES (%s, %s, %s, %s, %s, %s) RETURNING id",
                             (time_ms, actor, action, room, target, detail)).fetchone()
            return int(row[0]) if row else 0

    def audit_log(self, *, room: str | None = None, actor: str | None = None,
                  target: str | None = None, action: str | None = None,
                  before_id: int | None = None, since_ms: int | None = None,
                  above_id: int = 0, limit: int = 100) -> list[AuditRow]:
        """Audit entries, newest first, at most ``limit``, filtered as
        zchat.store.sqlite's (names compared case-insensitively, ASCII only)."""
        sql = "SELECT id, time_ms, actor, action, room, target, detail FROM audit_log WHERE TRUE"
        args: list[object] = []
        if above_id:
            sql += " AND id > %s"
            args.append(above_id)
        for column, value in (("room", room), ("actor", actor), ("target", target)):
            if value is not None:
                sql += f" AND lower({column}) = lower(%s COLLATE \"C\")"
                args.append(value)
        if action is not None:
            sql += " AND action = %s"
            args.append(action)
        if before_id is not None:
            sql += " AND id < %s"
            args.append(before_id)
        if since_ms is not None:
            sql += " AND time_ms >= %s"
            args.append(since_ms)
        sql += " ORDER BY id DESC LIMIT %s"
        args.append(limit)
        return [AuditRow(int(i), int(t), *rest) for i, t, *rest in self._rows(sql, args)]

    # -- direct messages ----------------------------------------------------------------

    def store_dm(self, sender: str, recipient_key: str, recipient: str, text: str,
                 now_ms: int, max_pending: int, cmid: str = "", sender_key: str = "",
                 kind: str = "text") -> int:
        """Store a direct message, pending for the recipient, in its conversation's
        history, with both parties' read state, and commit; returns its id. As
        zchat.store.sqlite's (beyond ``max_pending`` pending DMs the oldest stop being
        pending, never dropped). Raises CmidReused when ``sender`` already stored a DM
        with that non-empty ``cmid`` (``post_dm`` looks it up first),
        StorageError(503)."""
        dm_id = self._insert_dm(sender, recipient_key, recipient, text, now_ms, max_pending,
                                cmid, sender_key, kind)
        if dm_id is None:  # only the cmid's unique index refuses an insert
            raise CmidReused()
        return dm_id

    def _insert_dm(self, sender: str, recipient_key: str, recipient: str, text: str,
                   now_ms: int, max_pending: int, cmid: str,
                   sender_key: str, kind: str = "text") -> int | None:
        """``store_dm``'s work; None (nothing written) when ``sender`` already stored a
        DM with the non-empty ``cmid``, committed, or in this transaction.

        The conversation's advisory lock (pg_schema.DM_PAIR_LOCK) comes first and is held
        to the commit, so the conversation's ids are in commit order: a DM that takes an
        id waits until every lower id of the conversation is committed or rolled back.
        ``ON CONFLICT DO NOTHING`` on the unique index ``dms_by_cmid`` waits for a
        transaction storing the same cmid (another broker) and then stores nothing if it
        committed."""
        sender_key = sender_key or name_key(sender)
        pair = dm_pair(sender_key, recipient_key)
        with self._write():
            self._exec("SELECT pg_advisory_xact_lock(%s, %s)",
                       (pg_schema.DM_PAIR_LOCK, _pair_lock_key(pair)))
            row = self._exec("INSERT INTO direct_messages(time_ms, sender, sender_key, "
                             "recipient_key, recipient, pair, text, delivered, cmid, kind) "
                             "VALUES (%s, %s, %s, %s, %s, %s, %s, FALSE, %s, %s) "
                             "ON CONFLICT (sender, cmid) WHERE cmid <> '' DO NOTHING "
                             "RETURNING id",
                             (now_ms, sender, sender_key, recipient_key, recipient, pair,
                              text, _cmid(cmid), kind)).fetchone()
            if row is None:
                return None
            dm_id = int(row[0])
            self._exec("UPDATE direct_messages SET delivered = TRUE WHERE id IN (SELECT id "
                       "FROM direct_messages WHERE recipient_key = %s AND NOT delivered "
                       "ORDER BY id DESC OFFSET %s)", (recipient_key, max_pending))
            if recipient_key != sender_key:
                self._exec("INSERT INTO dm_reads(account_key, peer_key, peer, last_id, "
                           "read_id, unread) VALUES (%s, %s, %s, %s, 0, 1) ON CONFLICT "
                           "(account_key, peer_key) DO UPDATE SET peer = EXCLUDED.peer, "
                           "last_id = EXCLUDED.last_id, unread = dm_reads.unread + 1",
                           (recipient_key, sender_key, sender, dm_id))
            self._exec("INSERT INTO dm_reads(account_key, peer_key, peer, last_id, read_id, "
                       "unread) VALUES (%s, %s, %s, %s, %s, 0) ON CONFLICT (account_key, "
                       "peer_key) DO UPDATE SET peer = EXCLUDED.peer, last_id = "
                       "EXCLUDED.last_id, read_id = EXCLUDED.read_id, unread = 0",
                       (sender_key, recipient_key, recipient, dm_id, dm_id))
        return dm_id

    def post_dm(self, sender: str, recipient_key: str, recipient: str, text: str, cmid: str,
                now_ms: int, max_pending: int, sender_key: str = "",
                kind: str = "text") -> PostedRow:
        """Store a direct message once per client message id (docs/PROTOCOL.md §6.7), as
        zchat.store.sqlite's, whichever brokers handle it at once: the unique index
        ``dms_by_cmid`` stores the first and hands the others its id (``duplicate=True``,
        ``seq`` the id). Raises CmidReused, StorageError(503)."""
        with self._write():
            if cmid:
                found = self.dm_by_cmid(sender, recipient_key, cmid)
                if found is not None:
                    return found
            dm_id = self._insert_dm(sender, recipient_key, recipient, text, now_ms,
                                    max_pending, cmid, sender_key, kind)
            if dm_id is None:  # stored meanwhile through another connection
                again = self.dm_by_cmid(sender, recipient_key, cmid)
                if again is None:
                    raise StorageError("storage failed: a DM's cmid conflicted with no row")
                return again
        return PostedRow(dm_id, now_ms, False)

    def dm_by_cmid(self, sender: str, recipient_key: str, cmid: str) -> PostedRow | None:
        """The DM ``sender`` stored with the non-empty ``cmid`` (``duplicate=True``,
        ``seq`` its id), or None. Raises CmidReused when that cmid was used for a DM to
        another recipient."""
        row = self._row("SELECT id, time_ms, recipient_key FROM direct_messages WHERE "
                        "sender = %s AND cmid = %s AND cmid <> '' ORDER BY id LIMIT 1",
                        (sender, _cmid(cmid)))
        if row is None:
            return None
        if row[2] != recipient_key:
            raise CmidReused()
        return PostedRow(int(row[0]), int(row[1]), True)

    _DM_COLUMNS = "SELECT id, time_ms, sender, recipient, text, kind FROM direct_messages "

    @staticmethod
    def _dm(row: tuple[Any, ...]) -> DirectMessageRow:
        return DirectMessageRow(int(row[0]), int(row[1]), row[2], row[3], row[4], row[5])

    def pending_dms(self, recipient_key: str,
                    limit: int | None = None) -> list[DirectMessageRow]:
        """The recipient's direct messages not yet acknowledged, oldest first; with
        ``limit``, only the newest ``limit`` of them. Reading them changes nothing."""
        rows = self._rows(self._DM_COLUMNS + "WHERE recipient_key = %s AND NOT delivered "
                          "ORDER BY id DESC LIMIT %s", (recipient_key, limit))
        return [self._dm(row) for row in reversed(rows)]

    def ack_dms(self, recipient_key: str, ids: tuple[int, ...]) -> int:
        """Mark the recipient's messages ``ids`` delivered (others' ids are ignored);
        returns how many changed."""
        if not ids:
            return 0
        with self._write():
            cur = self._exec("UPDATE direct_messages SET delivered = TRUE WHERE "
                             "recipient_key = %s AND NOT delivered AND id = ANY(%s)",
                             (recipient_key, list(ids)))
            return cur.rowcount

    def dm_history(self, pair: str, before: int | None, after: int | None,
                   limit: int) -> list[DirectMessageRow]:
        """Up to ``limit`` DMs of the conversation ``pair``, ascending by id
        (docs/PROTOCOL.md §6.48): the oldest above ``after``, else the newest below
        ``before`` (or the newest of all)."""
        base = self._DM_COLUMNS + "WHERE pair = %s"
        sql, args, newest_first = page(base, "id", "%s", pair, before, after, limit)
        rows = self._rows(sql, args)
        if newest_first:
            rows.reverse()
        return [self._dm(row) for row in rows]

    @staticmethod
    def _dm_read(row: tuple[Any, ...]) -> DmReadRow:
        return DmReadRow(str(row[0]), str(row[1]), int(row[2]), int(row[3]), int(row[4]))

    def dm_read(self, account_key: str, peer_key: str) -> DmReadRow | None:
        """The account's read state of its conversation with ``peer_key``; None when the
        two never wrote to each other."""
        row = self._row("SELECT peer_key, peer, last_id, read_id, unread FROM dm_reads "
                        "WHERE account_key = %s AND peer_key = %s", (account_key, peer_key))
        return self._dm_read(row) if row else None

    def unread_dm_reads(self, account_key: str, limit: int) -> list[DmReadRow]:
        """The account's conversations with unread DMs, newest first, at most ``limit``."""
        return [self._dm_read(row) for row in self._rows(
            "SELECT peer_key, peer, last_id, read_id, unread FROM dm_reads WHERE "
            "account_key = %s AND unread > 0 ORDER BY last_id DESC LIMIT %s",
            (account_key, limit))]

    def mark_dm_read(self, account_key: str, peer_key: str, upto: int) -> DmReadRow | None:
        """Move the account's read marker of its conversation with ``peer_key`` forward to
        ``upto`` (never back), recount what is unread after it, and mark the DMs to the
        account up to it delivered; commit. Returns the state after it, or None when
        there is no such conversation."""
        with self._write():
            row = self._exec("SELECT peer_key, peer, last_id, read_id, unread FROM dm_reads "
                             "WHERE account_key = %s AND peer_key = %s FOR UPDATE",
                             (account_key, peer_key)).fetchone()
            state = self._dm_read(row) if row else None
            if state is None or upto <= state.read_id:
                return state
            pair = dm_pair(account_key, peer_key)
            count = self._exec("SELECT COUNT(*) FROM direct_messages WHERE pair = %s AND "
                               "recipient_key = %s AND id > %s",
                               (pair, account_key, upto)).fetchone()
            unread = int(count[0]) if count else 0
            self._exec("UPDATE dm_reads SET read_id = %s, unread = %s WHERE account_key = %s "
                       "AND peer_key = %s", (upto, unread, account_key, peer_key))
            self._exec("UPDATE direct_messages SET delivered = TRUE WHERE pair = %s AND "
                       "recipient_key = %s AND id <= %s AND NOT delivered",
                       (pair, account_key, upto))
            return DmReadRow(state.peer_key, state.peer, state.last_id, upto, unread)

    # -- sessions kept for RESUME (docs/PROTOCOL.md §6.27) ---------------------------------

    def add_session(self, token_sha256: str, account_key: str, login_token_id: int | None,
                    address: str, login_ms: int, presence: bool = True) -> None:
        """Keep a new session (its token's SHA-256, never the token) and commit. The row
        is held by this store's ``holder`` (the broker's lease); writing an existing row
        again (a RESUME of a session kept from before) takes it over."""
        broker, epoch = self.holder
        with self._write():
            self._exec("INSERT INTO sessions(token_sha256, account_key, login_token_id, "
                       "address, login_ms, broker_id, broker_epoch, released_ms, presence) "
                       "VALUES (%s, %s, %s, %s, %s, %s, %s, 0, %s) ON CONFLICT "
                       "(token_sha256) DO UPDATE SET account_key = EXCLUDED.account_key, "
                       "login_token_id = EXCLUDED.login_token_id, address = "
                       "EXCLUDED.address, login_ms = EXCLUDED.login_ms, broker_id = "
                       "EXCLUDED.broker_id, broker_epoch = EXCLUDED.broker_epoch, "
                       "released_ms = 0, presence = EXCLUDED.presence",
                       (token_sha256, account_key, login_token_id, address, login_ms,
                        broker, epoch, presence))

    def delete_sessions(self, token_sha256s: list[str]) -> int:
        """Forget these sessions; returns how many rows went. A store with a ``holder``
        (a broker of a cluster) deletes only the rows it holds or that no broker holds:
        a row another broker holds is that broker's (a session that moved there, whose
        ``r`` notification this broker missed, must not lose its row when this broker
        evicts its stale copy). Without one (``zchat admin`` on the database) every row
        given goes."""
        if not token_sha256s:
            return 0
        broker = self.holder[0]
        with self._write():
            if not broker:
                return self._exec("DELETE FROM sessions WHERE token_sha256 = ANY(%s)",
                                  (list(token_sha256s),)).rowcount
            return self._exec("DELETE FROM sessions WHERE token_sha256 = ANY(%s) AND "
                              "broker_id IN (%s, '')",
                              (list(token_sha256s), broker)).rowcount

    def sessions(self, held_elsewhere: bool = False) -> list[SessionRow]:
        """Every kept session no live broker holds (let go at a stop, or reaped from an
        expired lease), and those this store's ``holder`` holds (a core rebuilt after a
        failed commit carries them over), oldest login first: the ones this broker may
        offer for RESUME. Sessions other brokers hold are theirs; with ``held_elsewhere``
        they are listed too (``zchat admin users/sessions`` on the database: every
        session of the cluster)."""
        broker, epoch = self.holder
        return [SessionRow(str(h), str(k), None if t is None else int(t), str(a), int(ms),
                           released_ms=int(released), presence=bool(pr))
                for h, k, t, a, ms, released, pr in self._rows(
                    "SELECT token_sha256, account_key, login_token_id, address, login_ms, "
                    "released_ms, presence FROM sessions WHERE %s OR broker_id = '' OR (broker_id = %s AND "
                    "broker_epoch = %s AND %s <> '') ORDER BY login_ms, token_sha256",
                    (held_elsewhere, broker, epoch, broker))]

    def delete_released_sessions(self, token_sha256s: list[str]) -> int:
        """Forget these sessions if no broker holds them (one resumed elsewhere stays);
        returns how many rows went."""
        if not token_sha256s:
            return 0
        with self._write():
            return self._exec("DELETE FROM sessions WHERE token_sha256 = ANY(%s) AND "
                              "broker_id = ''", (list(token_sha256s),)).rowcount

    # -- leases of a cluster's brokers (pg_schema.LEASES, docs/cluster.md) -----------------

    def register_broker(self, broker_id: str, lease_s: float, now_ms: int,
                        owner: str = "") -> tuple[int, list[SessionRow], list[str]]:
        """Take a fresh lease for ``broker_id`` for ``lease_s`` seconds of the database's
        clock, in one transaction: its epoch grows by one (1 for a new id), the session
        rows its earlier epochs held are let go (resumable from ``now_ms``, UTC ms), and
        the accounts of those rows that now have no session held anywhere are counted
        under their presence locks. Sets ``holder``. Returns (the epoch, the rows let
        go, the accounts left with no session: each gets one offline event). Raises
        BrokerIdInUse when another ``owner`` (config.broker_owner) holds the id under a
        lease that has not expired nor been reaped (nothing is changed then), and
        StorageError(503)."""
        with self._write():
            row = self._exec(
                "INSERT INTO brokers(id, epoch, lease_until, owner) VALUES "
                "(%s, 1, clock_timestamp() + make_interval(secs => %s), %s) ON CONFLICT (id) "
                "DO UPDATE SET epoch = brokers.epoch + 1, lease_until = "
                "EXCLUDED.lease_until, reaped = FALSE, started = clock_timestamp(), "
                "owner = EXCLUDED.owner WHERE brokers.owner = EXCLUDED.owner OR "
                "brokers.reaped OR brokers.lease_until < clock_timestamp() "
                "RETURNING epoch", (broker_id, lease_s, owner)).fetchone()
            if row is None:
                left = self._exec("SELECT extract(epoch FROM lease_until - clock_timestamp()) "
                                  "FROM brokers WHERE id = %s", (broker_id,)).fetchone()
                raise BrokerIdInUse(broker_id, float(left[0]) if left else 0.0)
            epoch = int(row[0])
            released = [SessionRow(str(h), str(k), None if t is None else int(t), str(a),
                                   int(ms), released_ms=now_ms, presence=bool(pr))
                        for h, k, t, a, ms, pr in self._exec(
                "UPDATE sessions SET broker_id = '', broker_epoch = 0, released_ms = %s "
                "WHERE broker_id = %s AND broker_epoch < %s RETURNING token_sha256, "
                "account_key, login_token_id, address, login_ms, presence",
                (now_ms, broker_id, epoch)).fetchall()]
            # rows let go now count as held for the grace: nobody is alone yet (their
            # offline, if due, comes from due_offline); without a grace count at once
            alone = [] if self.presence_grace_ms > 0 else \
                self._accounts_alone({r.account_key for r in released})
        self.holder = (broker_id, epoch)
        return epoch, released, alone

    def renew_lease(self, lease_s: float) -> bool:
        """Move this broker's lease (``holder``) to ``lease_s`` seconds from now on the
        database's clock, if it is still valid: not expired, not reaped, its epoch
        current. Inside a group it is a write of the group's transaction, so the row
        stays locked until the commit and no broker reaps this one meanwhile: every
        write the group commits was made under a valid lease (fencing). False when the
        lease is lost (fenced out). Raises StorageError(503)."""
        broker, epoch = self.holder
        if not broker:
            return False
        with self._write(locks_rows=False):  # its own row: nobody waits for it
            return self._exec(
                "UPDATE brokers SET lease_until = clock_timestamp() + "
                "make_interval(secs => %s) WHERE id = %s AND epoch = %s AND NOT reaped "
                "AND lease_until > clock_timestamp()", (lease_s, broker, epoch)).rowcount == 1

    def reap_brokers(self, now_ms: int, grace_ms: int) -> tuple[list[tuple[str, int]],
                                                                list[str]]:
        """Take over the sessions of every other broker whose lease expired, once: its
        row is marked ``reaped`` by a conditional UPDATE (``FOR UPDATE SKIP LOCKED``: a
        broker in the middle of a commit is never waited for, nor reaped), and the
        session rows of every lease that is over (reaped, or of an earlier epoch) are
        let go (resumable for ``grace_ms`` from ``now_ms``, UTC ms). Two reapers never
        both take a broker: the second finds it reaped. The rows are taken ``SKIP
        LOCKED`` too: a row another broker's open transaction is taking over (a RESUME
        there) is not waited for — the reaper waiting on it while that transaction
        waited on a row the reaper had just taken was a deadlock (a tester's mass
        failover) — and if that transaction rolls back, the row is let go at a later
        renewal. Also forgets the rows let go more than ``grace_ms`` ago. Returns (the
        brokers reaped as (id, epoch), the accounts left with no session held anywhere:
        none while ``presence_grace_ms`` is above 0, since the rows let go count as held
        for it; else counted under their presence locks). Never waits for a lock: raises
        StorageError(503) only when the database fails."""
        with self._write(locks_rows=False):
            dead = [(str(i), int(e)) for i, e in self._exec(
                "UPDATE brokers SET reaped = TRUE WHERE id IN (SELECT id FROM brokers "
                "WHERE id <> %s AND NOT reaped AND lease_until < clock_timestamp() "
                "FOR UPDATE SKIP LOCKED) RETURNING id, epoch", (self.holder[0],)).fetchall()]
            accounts = {str(k) for (k,) in self._exec(
                "UPDATE sessions SET broker_id = '', broker_epoch = 0, released_ms = %s "
                "WHERE token_sha256 IN (SELECT s.token_sha256 FROM sessions s JOIN "
                "brokers b ON b.id = s.broker_id WHERE (b.reaped AND s.broker_epoch <= "
                "b.epoch) OR s.broker_epoch < b.epoch FOR UPDATE OF s SKIP LOCKED) "
                "RETURNING account_key", (now_ms,)).fetchall()}
            if self._exec("DELETE FROM sessions WHERE token_sha256 IN (SELECT token_sha256 "
                          "FROM sessions WHERE broker_id = '' AND released_ms <> 0 AND "
                          "abs(released_ms) < %s FOR UPDATE SKIP LOCKED)",
                          (now_ms - grace_ms,)).rowcount or accounts or dead:
                self._rows_locked = True
            alone = [] if self.presence_grace_ms > 0 else self._accounts_alone(accounts)
        return dead, alone

    def release_lease(self, now_ms: int) -> None:
        """A clean stop: let go of every session row this broker holds (resumable from
        ``now_ms``, UTC ms, on any broker) and end its lease (marked reaped: nothing
        left to take over). Raises StorageError(503)."""
        broker, epoch = self.holder
        if not broker:
            return
        with self._write():
            self._exec("UPDATE sessions SET broker_id = '', broker_epoch = 0, released_ms "
                       "= %s WHERE broker_id = %s AND broker_epoch = %s",
                       (now_ms, broker, epoch))
            self._exec("UPDATE brokers SET lease_until = clock_timestamp(), reaped = TRUE "
                       "WHERE id = %s AND epoch = %s", (broker, epoch))
        self.holder = ("", 0)

    def lock_presence(self, account_key: str) -> None:
        """Take the account's presence lock (pg_schema.PRESENCE_LOCK) until the end of
        the transaction (the group's): whoever starts or ends one of its sessions takes
        it before writing the session's row, so that brokers decide its presence one
        after the other. A group takes such locks in its requests' order and holds them
        to its commit, so two brokers' groups could each hold one the other wants (a
        deadlock: PostgreSQL ends one after ``deadlock_timeout``, 1 s in which both
        loops stand still; a tester's mass failover met it again and again). So it
        waits only for an account whose key is above every presence lock the
        transaction holds — waits in one global order, which can close no cycle — and
        otherwise only takes the lock if it is free; so too once the transaction wrote
        rows another one may wait for (a session's row: that one may hold this presence
        lock, waiting for the row). Raises PresenceBusy (StorageError) when it is not
        free: nothing was changed, the request may be retried (the other broker's group
        commits within milliseconds). Re-entrant."""
        if account_key in self._presence_locks:
            return
        with self._write(locks_rows=False):
            if not self._rows_locked and (not self._presence_locks
                                          or account_key > max(self._presence_locks)):
                self._exec("SELECT pg_advisory_xact_lock(%s, hashtext(%s))",
                           (pg_schema.PRESENCE_LOCK, account_key))
            else:
                row = self._exec("SELECT pg_try_advisory_xact_lock(%s, hashtext(%s))",
                                 (pg_schema.PRESENCE_LOCK, account_key)).fetchone()
                if not (row and row[0]):
                    raise PresenceBusy(PRESENCE_BUSY)
            # kept even if the caller's savepoint rolls back: it may still be held
            self._presence_locks.add(account_key)

    def sessions_held(self, account_key: str) -> int:
        """How many sessions of the account brokers hold, whether their lease is live or
        expired and not yet reaped, this broker's included, after taking the account's
        presence lock (``lock_presence``) until the end of the transaction (the
        group's): the count a presence decision is made on (online at the first, offline
        at the last). Raises StorageError(503; PresenceBusy as ``lock_presence``)."""
        with self._write(locks_rows=False):
            self.lock_presence(account_key)
            row = self._exec("SELECT count(*) FROM sessions WHERE account_key = %s AND "
                             f"{_HELD}", (account_key, self._grace_cutoff())).fetchone()
        return int(row[0]) if row else 0

    def accounts_held(self) -> set[str]:
        """The accounts with a session some broker holds (online in the cluster)."""
        return {str(k) for (k,) in self._rows(
            f"SELECT DISTINCT account_key FROM sessions WHERE {_HELD}",
            (self._grace_cutoff(),))}

    def _accounts_alone(self, accounts: set[str]) -> list[str]:
        """Of ``accounts``, those with no session held anywhere, each counted under its
        presence lock (in the caller's transaction), in key order (the locks' order)."""
        alone = []
        for key in sorted(accounts):
            self.lock_presence(key)
            row = self._exec("SELECT count(*) FROM sessions WHERE account_key = %s AND "
                             f"{_HELD}", (key, self._grace_cutoff())).fetchone()
            if row is None or not row[0]:
                alone.append(key)
        return alone

    def _grace_cutoff(self) -> int:
        """UTC ms before which a let-go row no longer counts as held (``_HELD``)."""
        return time.time_ns() // 1_000_000 - self.presence_grace_ms

    def due_offline(self, now_ms: int) -> list[str]:
        """The accounts whose let-go rows' grace (``presence_grace_ms``) passed by
        ``now_ms`` (UTC ms) with no session held since: each gets its one ``offline``
        now. Per account, under its presence lock, the due rows are marked done
        (``released_ms`` negated, still resumable) in the caller's transaction, so two
        brokers looking at once publish it once: the second finds nothing due. Raises
        StorageError(503)."""
        cutoff = now_ms - self.presence_grace_ms
        accounts = {str(k) for (k,) in self._rows(
            "SELECT DISTINCT account_key FROM sessions WHERE broker_id = '' AND presence "
            "AND released_ms > 0 AND released_ms <= %s", (cutoff,))}
        if not accounts:
            return []
        due: set[str] = set()
        with self._write(locks_rows=False):
            for key in sorted(accounts):
                try:
                    self.lock_presence(key)
                except StorageError:  # busy elsewhere: looked at again next time
                    continue
                # a row another broker is taking over (a RESUME) is skipped, not waited
                # for: it is held once that commits, and looked at again if it does not
                if self._exec("UPDATE sessions SET released_ms = -released_ms WHERE "
                              "token_sha256 IN (SELECT token_sha256 FROM sessions WHERE "
                              "account_key = %s AND broker_id = '' AND presence AND "
                              "released_ms > 0 "
                              "AND released_ms <= %s FOR UPDATE SKIP LOCKED)",
                              (key, cutoff)).rowcount:
                    due.add(key)
                    self._rows_locked = True
            return self._accounts_alone(due)

    def session(self, token_sha256: str) -> SessionRow | None:
        """The kept session with this token hash, or None: a RESUME of a session another
        broker of the cluster made or holds (docs/cluster.md, "How clients move"). Its
        ``holder`` is the id of the broker holding it ('' when none: let go, reaped)."""
        rows = self._rows("SELECT token_sha256, account_key, login_token_id, address, "
                          "login_ms, broker_id, released_ms, presence FROM sessions WHERE "
                          "token_sha256 = %s", (token_sha256,))
        return next((SessionRow(str(h), str(k), None if t is None else int(t), str(a),
                                int(ms), str(holder), int(released), bool(pr))
                     for h, k, t, a, ms, holder, released, pr in rows), None)
