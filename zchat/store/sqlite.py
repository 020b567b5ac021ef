"""The SQLite store: accounts, rooms, memberships, room history, direct messages (their
delivery and their history by conversation) and read state.

An adapter around the standard library's sqlite3 (docs/PROTOCOL.md §7 for what is stored
when). The database runs in WAL mode with ``synchronous=FULL``: a write is on disk when its
method returns, so a message the broker acknowledged survives the broker being killed right
after. Every write is one transaction; if it fails (disk full, I/O error) it is rolled back
whole and StorageError(503) is raised, so nothing is half-changed. The broker's loop groups
the writes of one wake-up into one transaction (``begin_group``/``commit_group``: one fsync
per batch, each write a SAVEPOINT in it; docs/PROTOCOL.md §14 "Group commit").

The schema is versioned with ``PRAGMA user_version`` and upgraded by the ordered
``MIGRATIONS`` at open (zchat.store.migrations).

Names: ``key`` is the case-folded identity of a name (names.name_key), ``name`` its display
form as registered/created. Times are UTC milliseconds.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

from zchat.core.ports import (
    AccountInfoRow,
    AccountRow,
    AlreadyDeleted,
    AuditRow,
    BanRow,
    CmidReused,
    DirectMessageRow,
    DmReadRow,
    MessageRow,
    NameTaken,
    NoSuchMessage,
    NoSuchRoom,
    PostedRow,
    RoomReadRow,
    RoomRow,
    SessionRow,
    TokenRow,
    dm_pair,
)
from zchat.errors import StorageError
from zchat.names import name_key
from zchat.store import migrations
from zchat.store.sql import page


def _write_error(exc: BaseException) -> BaseException:
    """What a failed write raises: IntegrityError and the domain errors (zchat.core.ports) as they are (the
    callers map them), any other sqlite3 error as StorageError(503), anything else as it
    is."""
    if isinstance(exc, sqlite3.Error) and not isinstance(exc, sqlite3.IntegrityError):
        return StorageError(f"storage failed, nothing was changed: {exc}")
    return exc


def _raise_write_error(exc: BaseException) -> NoReturn:
    """Raise what a failed write raises (``_write_error``), chained to ``exc``; called
    from the ``except`` block that caught ``exc``."""
    error = _write_error(exc)
    if error is exc:
        raise exc
    raise error from exc


class Store:
    """All persistent state of one broker, in one SQLite file.

    ``path`` may be ``":memory:"`` for tests. Not thread-safe: one event loop owns it.
    Raises StorageError(503) from any write that could not be committed.
    """

    def __init__(self, path: str | Path) -> None:
        """Open (creating if need be) and migrate the database at ``path``.

        Raises StorageError naming the path when it cannot be opened: not a database,
        not a zchat database (tables but ``user_version`` 0: nothing is changed in it),
        unreadable, locked, or of a newer schema. An empty or new file is initialised.
        """
        self.path = str(path)
        try:
            self._write_depth = 0  # nested _write() blocks join the outer transaction
            self._group = False  # inside begin_group() .. commit_group()
            #: (room key, account key) -> the highest seq the account posted in the room in
            #: this group: its read marker moves there at the commit (``append_message``)
            self._own_reads: dict[tuple[str, str], int] = {}
            self._group_failed = ""  # why the group's transaction was lost, if it was
            #: PRAGMA data_version at the last check (``changes_elsewhere``)
            self._data_version = -1
            self._db = sqlite3.connect(self.path, isolation_level=None,
                                       check_same_thread=False)
        except sqlite3.Error as exc:
            raise StorageError(f"cannot open the database {self.path}: {exc}") from exc
        try:
            # Before anything is changed (WAL mode, tables): a database with tables but no
            # zchat schema version is someone else's (``--db other.db``); refuse it.
            if self.schema_version == 0 and self._db.execute(
                    "SELECT 1 FROM sqlite_master LIMIT 1").fetchone() is not None:
                raise StorageError(f"{self.path} is not a zchat database: it holds tables "
                                   "but no zchat schema version; nothing was changed")
            self._db.execute("PRAGMA foreign_keys = ON")
            if self.path != ":memory:":
                mode = self._db.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                if mode.lower() != "wal":
                    raise StorageError(f"cannot put {self.path} in WAL mode (got {mode})")
            self._db.execute("PRAGMA synchronous = FULL")
            self._db.execute("PRAGMA busy_timeout = 5000")
            self._migrate()
        except (sqlite3.DatabaseError, StorageError) as exc:
            self._db.close()
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"cannot open the database {self.path}: {exc}") from exc

    # -- plumbing ---------------------------------------------------------------------

    @property
    def schema_version(self) -> int:
        return int(self._db.execute("PRAGMA user_version").fetchone()[0])

    def _migrate(self) -> None:
        current = self.schema_version
        if current > migrations.SCHEMA_VERSION:
            raise StorageError(f"database {self.path} has schema version {current}, newer "
                               f"than this zchat's {migrations.SCHEMA_VERSION}; upgrade zchat")
        for version in range(current, migrations.SCHEMA_VERSION):
            with self._write():
                for statement in migrations.sql_statements(migrations.MIGRATIONS[version]):
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {version + 1}")

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One IMMEDIATE transaction; rolled back whole on any error. A ``_write()``
        inside another joins it (commits with it, rolls back with it)."""
        if self._write_depth:
            self._write_depth += 1
            try:
                yield self._db
            finally:
                self._write_depth -= 1
            return
        if self._group:
            yield from self._group_write()
            return
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.Error as exc:
            raise StorageError(f"storage unavailable: {exc}") from exc
        self._write_depth = 1
        try:
            yield self._db
            self._write_depth = 0
            self._db.execute("COMMIT")
        except BaseException as exc:
            self._write_depth = 0
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")
            _raise_write_error(exc)

    def _group_write(self) -> Iterator[sqlite3.Connection]:
        """A top-level write inside a group: one SAVEPOINT in the group's transaction
        (begun by the group's first write), released on success and rolled back alone on
        error, so one request's failed write leaves the others' in the group."""
        self._begin_group_transaction()
        try:
            self._db.execute("SAVEPOINT request")
        except sqlite3.Error as exc:
            raise StorageError(f"storage unavailable: {exc}") from exc
        self._write_depth = 1
        try:
            yield self._db
            self._write_depth = 0
            self._db.execute("RELEASE request")
        except BaseException as exc:
            self._write_depth = 0
            # SQLite may roll the whole transaction back by itself on SQLITE_FULL, IOERR,
            # BUSY or NOMEM (https://sqlite.org/lang_transaction.html, "Response To Errors
            # Within A Transaction"): then the group's earlier writes are gone too.
            try:
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK TO request")
                    self._db.execute("RELEASE request")
                else:
                    self._group_failed = f"storage failed, the batch was lost: {exc}"
            except sqlite3.Error as undo:
                self._group_failed = f"storage failed, the batch was lost: {undo}"
            _raise_write_error(exc)

    def _begin_group_transaction(self) -> None:
        """Inside a group: refuse at once if the group is lost, else open its transaction
        if no write has yet. Raises StorageError(503)."""
        if self._group_failed:
            raise StorageError(self._group_failed)
        if not self._db.in_transaction:
            try:
                self._db.execute("BEGIN IMMEDIATE")
            except sqlite3.Error as exc:
                raise StorageError(f"storage unavailable: {exc}") from exc

    def _write_one(self, sql: str, params: tuple[Any, ...]) -> Any:
        """Run one writing statement; its first row (of a RETURNING clause), or None.

        One statement is atomic in SQLite (its triggers included: the statement journal
        undoes it whole), so inside a group it needs no SAVEPOINT of its own: if it fails,
        SQLite undoes that statement alone, or rolls the whole transaction back (SQLITE_FULL,
        IOERR, …), and then the group is lost as in ``_group_write``. Outside a group, or
        inside another write, as ``_write()``. Raises StorageError(503) or a domain error as
        ``_write()`` does.
        """
        if not self._group or self._write_depth:
            with self._write() as db:
                return db.execute(sql, params).fetchone()
        self._begin_group_transaction()
        try:
            return self._db.execute(sql, params).fetchone()
        except BaseException as exc:
            if not self._db.in_transaction:
                self._group_failed = f"storage failed, the batch was lost: {exc}"
            _raise_write_error(exc)

    def _check_other_writers(self) -> None:
        """Note whether another connection (another broker, ``zchat admin unban`` on the
        database) committed since the last check: PRAGMA data_version changes exactly then
        (https://sqlite.org/pragma.html#pragma_data_version)."""
        self._data_version = int(self._db.execute("PRAGMA data_version").fetchone()[0])

    def hold_broker_lock(self) -> None:
        """Nothing to do: a broker on an SQLite file holds the data directory's
        ``broker.lock`` (zchat.cli), which `zchat admin`'s writes look for."""

    def changes_elsewhere(self) -> int:
        """A number that moves whenever another connection committed a change (PRAGMA
        data_version): as of ``begin_group`` inside a group (one query per wake-up of the
        loop, not per request), else read now. The core reloads its bans and mutes when
        it moved (the port's docstring)."""
        if not self._group:
            self._check_other_writers()
        return self._data_version

    def begin_group(self) -> None:
        """Start a group commit: every write until ``commit_group()`` goes into one
        transaction, committed (and synced to disk: one fsync) once at the end. Each
        top-level write in the group is a SAVEPOINT, so a write that fails (StorageError,
        a domain error, IntegrityError as outside a group) undoes only itself. A group of
        reads only begins no transaction and syncs nothing. The broker's loop runs one
        group per wake-up (docs/PROTOCOL.md §14, group commit)."""
        if self._group:
            raise RuntimeError("begin_group() inside a group")
        self._group = True
        self._group_failed = ""
        self._check_other_writers()

    def commit_group(self) -> None:
        """End the group: commit its transaction, if a write began one. Raises
        StorageError (with everything in the group rolled back) when the commit fails, or
        when a failed write inside the group lost the whole transaction."""
        if not self._group:
            raise RuntimeError("commit_group() without begin_group()")
        self._group = False
        failed, self._group_failed = self._group_failed, ""
        if not self._db.in_transaction:
            self._own_reads.clear()
            if failed:
                raise StorageError(failed)
            return
        try:
            if failed:
                raise StorageError(failed)
            self._flush_own_reads()
            self._db.execute("COMMIT")
        except (sqlite3.Error, StorageError) as exc:
            self._own_reads.clear()
            with contextlib.suppress(sqlite3.Error):
                if self._db.in_transaction:
                    self._db.execute("ROLLBACK")
            if isinstance(exc, StorageError):
                raise
            raise StorageError(f"storage failed, the batch was not committed: {exc}") from exc

    def abort_group(self) -> None:
        """End the group rolling back everything written in it (an unexpected error in
        the loop)."""
        self._group = False
        self._group_failed = ""
        self._own_reads.clear()
        with contextlib.suppress(sqlite3.Error):
            if self._db.in_transaction:
                self._db.execute("ROLLBACK")

    @property
    def in_group(self) -> bool:
        """Whether a group commit is open (``begin_group()`` without its commit)."""
        return self._group

    def transaction(self) -> contextlib.AbstractContextManager[sqlite3.Connection]:
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
            with self._write() as db:
                db.execute("INSERT INTO accounts(key, name, skeleton, password_hash, bot, "
                           "created_ms) VALUES (?, ?, ?, ?, ?, ?)",
                           (key, name, skeleton, password_hash, int(bot), now_ms))
                for room_key in rooms:
                    db.execute(self._JOIN_SQL, (room_key, key, now_ms, room_key))
        except sqlite3.IntegrityError:
            raise NameTaken("account", name) from None

    def get_account(self, key: str) -> AccountRow | None:
        row = self._db.execute("SELECT key, name, password_hash, bot FROM accounts "
                               "WHERE key = ?", (key,)).fetchone()
        return AccountRow(row[0], row[1], row[2], bool(row[3])) if row else None

    def account_skeleton_taken(self, skeleton: str) -> bool:
        return self._db.execute("SELECT 1 FROM accounts WHERE skeleton = ?",
                                (skeleton,)).fetchone() is not None

    def account_names(self) -> dict[str, tuple[str, bool]]:
        """Every account: key -> (display name, bot)."""
        return {k: (n, bool(b)) for k, n, b in
                self._db.execute("SELECT key, name, bot FROM accounts")}

    def list_accounts(self) -> list[AccountInfoRow]:
        """Every account, by key (``zchat admin users``, USERS §6.42)."""
        return [AccountInfoRow(str(k), str(n), bool(b), bool(d), int(c)) for k, n, b, d, c in
                self._db.execute("SELECT key, name, bot, disabled, created_ms FROM accounts "
                                 "ORDER BY key")]

    # -- storage quotas (docs/PROTOCOL.md §6.53) ------------------------------------------

    def storage_used(self, room_key: str | None = None) -> dict[str, int]:
        """Bytes of message text (UTF-8) each account has stored: account key -> bytes.
        Its room messages, deleted ones included (their text stays, for the audit), and
        its DMs; with ``room_key``, only its messages in that room (what DELETE_ROOM
        frees). One GROUP BY per table, a scan of the text: the broker runs it at start
        and keeps the sums in memory. Messages stored before their sender's key was
        (schema 6) are counted by the key of their sender's name."""
        used: dict[str, int] = {}
        sql = ("SELECT sender_key, sender, SUM(length(CAST(text AS BLOB))) FROM messages "
               + ("WHERE room_key = ? " if room_key is not None else "")
               + "GROUP BY sender_key, sender")
        queries = [(sql, (room_key,) if room_key is not None else ())]
        if room_key is None:
            queries.append(("SELECT sender_key, sender, SUM(length(CAST(text AS BLOB))) "
                            "FROM direct_messages GROUP BY sender_key, sender", ()))
        for query, params in queries:
            for key, sender, size in self._db.execute(query, params):
                key = key or name_key(sender)
                used[key] = used.get(key, 0) + int(size or 0)
        return used

    def storage_quotas(self) -> dict[str, int]:
        """The accounts with a quota of their own: account key -> bytes (0: no quota);
        the others follow the broker's ``storage_quota_bytes``."""
        return {str(k): int(q) for k, q in self._db.execute(
            "SELECT key, storage_quota_bytes FROM accounts "
            "WHERE storage_quota_bytes IS NOT NULL")}

    def set_storage_quota(self, key: str, quota_bytes: int | None) -> bool:
        """Give the account a quota of its own (bytes; 0 no quota) or, with None, make it
        follow the broker's default again, and commit; False when there is no such
        account."""
        with self._write() as db:
            cur = db.execute("UPDATE accounts SET storage_quota_bytes = ? WHERE key = ?",
                             (quota_bytes, key))
            return cur.rowcount == 1

    def set_password_hash(self, key: str, password_hash: str) -> bool:
        """Replace the account's password hash and commit; returns False when there is no
        such account (ADMIN_SET_PASSWORD §6.44, SET_PASSWORD §6.46)."""
        with self._write() as db:
            cur = db.execute("UPDATE accounts SET password_hash = ? WHERE key = ?",
                             (password_hash, key))
            return cur.rowcount == 1

    def replace_password_hash(self, key: str, old_hash: str, new_hash: str) -> bool:
        """Store ``new_hash`` as the account's password hash only if ``old_hash`` is
        still its hash (a compare-and-set: the upgrade at login, zchat.passwords), and
        commit; False when the account is gone or its hash changed meanwhile."""
        with self._write() as db:
            cur = db.execute("UPDATE accounts SET password_hash = ? WHERE key = ? "
                             "AND password_hash = ?", (new_hash, key, old_hash))
            return cur.rowcount == 1

    # -- account tokens ------------------------------------------------------------------

    def create_token(self, account_key: str, label: str, token_sha256: str,
                     now_ms: int) -> int:
        """Store a token's SHA-256 (hex) for ``account_key``; returns the token's id. How
        many an account may hold is the core's rule (zchat.core.tokens)."""
        with self._write() as db:
            cur = db.execute("INSERT INTO account_tokens(account_key, label, token_sha256, "
                             "created_ms) VALUES (?, ?, ?, ?)",
                             (account_key, label, token_sha256, now_ms))
            return int(cur.lastrowid or 0)

    def list_tokens(self, account_key: str) -> list[TokenRow]:
        """The account's live tokens, oldest first (never their hashes)."""
        rows = self._db.execute("SELECT id, label, created_ms FROM account_tokens "
                                "WHERE account_key = ? ORDER BY id", (account_key,))
        return [TokenRow(*row) for row in rows]

    def token_hashes(self, account_key: str) -> list[tuple[int, str]]:
        """(id, SHA-256 hex) of each of the account's live tokens, for LOGIN to compare."""
        return [(int(i), str(h)) for i, h in self._db.execute(
            "SELECT id, token_sha256 FROM account_tokens WHERE account_key = ? ORDER BY id",
            (account_key,))]

    def revoke_token(self, account_key: str, token_id: int) -> bool:
        """Delete the account's token ``token_id``; False when it has no such token (another
        account's token is never touched)."""
        with self._write() as db:
            cur = db.execute("DELETE FROM account_tokens WHERE id = ? AND account_key = ?",
                             (token_id, account_key))
            return cur.rowcount == 1

    # -- rooms and membership ----------------------------------------------------------

    #: A new membership: its read marker starts at the room's last message (a newcomer
    #: has nothing unread; docs/PROTOCOL.md §6.3.1). Parameters: room, account, joined_ms,
    #: room again.
    _JOIN_SQL = ("INSERT OR IGNORE INTO members(room_key, account_key, joined_ms, read_seq) "
                 "VALUES (?, ?, ?, COALESCE((SELECT last_seq FROM rooms WHERE key = ?), 0))")

    def get_room(self, key: str) -> RoomRow | None:
        row = self._db.execute("SELECT key, name, topic, last_seq FROM rooms WHERE key = ?",
                               (key,)).fetchone()
        return RoomRow(*row) if row else None

    def room_skeleton_taken(self, skeleton: str) -> bool:
        return self._db.execute("SELECT 1 FROM rooms WHERE skeleton = ?",
                                (skeleton,)).fetchone() is not None

    def join_room(self, room_key: str, room_name: str, skeleton: str, account_key: str,
                  now_ms: int, private: bool = False) -> tuple[RoomRow, bool, bool]:
        """Make ``account_key`` a member, creating the room when it does not exist: the
        creator becomes its ``owner`` (room_roles) and ``private`` applies only then.

        Returns (room, created, newly_joined). Raises NameTaken("room", …) when creating a
        room whose name looks like an existing room's.
        """
        try:
            with self._write() as db:
                created = False
                if self.get_room(room_key) is None:
                    db.execute(self._CREATE_ROOM_SQL, (room_key, room_name, skeleton,
                                                       account_key, now_ms, int(private),
                                                       room_key))
                    db.execute("INSERT OR REPLACE INTO room_roles(room_key, account_key, "
                               "role) VALUES (?, ?, 'owner')", (room_key, account_key))
                    created = True
                cur = db.execute(self._JOIN_SQL, (room_key, account_key, now_ms, room_key))
                joined = cur.rowcount == 1
        except sqlite3.IntegrityError:
            raise NameTaken("room", room_name) from None
        room = self.get_room(room_key)
        assert room is not None
        return room, created, joined

    #: A new room: its sequence numbers go on from a deleted room of the same key (its
    #: tombstone), and the audit entries so far are not its own (``audit_floor``).
    _CREATE_ROOM_SQL = (
        "INSERT INTO rooms(key, name, skeleton, creator, created_ms, private, "
        "last_seq, audit_floor) VALUES (?, ?, ?, ?, ?, ?, "
        "COALESCE((SELECT last_seq FROM room_tombstones WHERE key = ?), 0), "
        "COALESCE((SELECT MAX(id) FROM audit_log), 0))")

    def ensure_room(self, room_key: str, room_name: str, skeleton: str, now_ms: int) -> None:
        """Create a room with no members (the default ``lobby``) if it does not exist."""
        with self._write() as db:
            db.execute(self._CREATE_ROOM_SQL.replace("INSERT", "INSERT OR IGNORE", 1),
                       (room_key, room_name, skeleton, None, now_ms, 0, room_key))

    def leave_room(self, room_key: str, account_key: str) -> bool:
        """Remove a membership (its read marker and unread mentions go with it); returns
        whether there was one."""
        with self._write() as db:
            cur = db.execute("DELETE FROM members WHERE room_key = ? AND account_key = ?",
                             (room_key, account_key))
            db.execute("DELETE FROM mentions WHERE account_key = ? AND room_key = ?",
                       (account_key, room_key))
            return cur.rowcount == 1

    def delete_room(self, room_key: str) -> tuple[int, int]:
        """Delete the room and everything that belongs to it — its messages (history
        is gone: docs/PROTOCOL.md §6.52), memberships with their read markers and unread
        mentions, roles, invitations and the bans and mutes placed in it — in one
        transaction, and commit. A tombstone keeps its last_seq, from which a room made
        again under its name goes on numbering. The audit log keeps its entries (a new
        room of that name does not see them, ``audit_floor``), but the message text its
        "delete" entries quote goes with the history.
        Returns (messages, members) deleted. Raises
        NoSuchRoom when there is no such room, StorageError(503) when it is not
        committed (nothing is deleted then)."""
        with self._write() as db:
            (messages,) = db.execute("SELECT COUNT(*) FROM messages WHERE room_key = ?",
                                     (room_key,)).fetchone()
            members = db.execute("DELETE FROM members WHERE room_key = ?",
                                 (room_key,)).rowcount
            for table in ("messages", "room_roles", "invites", "bans", "mentions"):
                db.execute(f"DELETE FROM {table} WHERE room_key = ?", (room_key,))
            # The room's history is gone, also where a moderator's "delete" entry quoted
            # a message (docs/PROTOCOL.md §6.52): the entry stays, its text goes.
            db.execute(
                "UPDATE audit_log SET detail = CASE WHEN instr(detail, ': ') > 0 "
                "THEN substr(detail, 1, instr(detail, ': ') - 1) ELSE detail END "
                "|| ' (text deleted with the room)' WHERE action = 'delete' "
                "AND room = (SELECT name FROM rooms WHERE key = ?) "
                "AND id > (SELECT audit_floor FROM rooms WHERE key = ?)",
                (room_key, room_key))
            db.execute("INSERT OR REPLACE INTO room_tombstones(key, last_seq) "
                       "SELECT key, last_seq FROM rooms WHERE key = ?", (room_key,))
            if db.execute("DELETE FROM rooms WHERE key = ?", (room_key,)).rowcount != 1:
                raise NoSuchRoom(room_key)
        return int(messages), int(members)

    def audit_floor(self, room_key: str) -> int:
        """The id of the last audit entry older than the room (0: none; a deleted room of
        the same name wrote the others), or 0 for no such room."""
        row = self._db.execute("SELECT audit_floor FROM rooms WHERE key = ?",
                               (room_key,)).fetchone()
        return int(row[0]) if row else 0

    def set_topic(self, room_key: str, topic: str) -> None:
        """Set a room's topic ("" clears it) and commit. Raises NoSuchRoom when
        the room does not exist, StorageError(503) when the write is not committed."""
        with self._write() as db:
            cur = db.execute("UPDATE rooms SET topic = ? WHERE key = ?", (topic, room_key))
            if cur.rowcount != 1:
                raise NoSuchRoom(room_key)

    def set_slow_mode(self, room_key: str, seconds: int) -> None:
        """Set a room's slow mode in seconds (0 turns it off) and commit
        (docs/PROTOCOL.md §6.28). Raises NoSuchRoom when the room does not exist,
        StorageError(503) when the write is not committed."""
        with self._write() as db:
            cur = db.execute("UPDATE rooms SET slow_mode_s = ? WHERE key = ?",
                             (seconds, room_key))
            if cur.rowcount != 1:
                raise NoSuchRoom(room_key)

    def room_settings(self) -> dict[str, tuple[str, int]]:
        """Every room key -> (creator's account key, or "" for a room made by the broker
        such as ``lobby``; slow mode in seconds)."""
        return {k: (c or "", int(s)) for k, c, s in
                self._db.execute("SELECT key, creator, slow_mode_s FROM rooms")}

    def list_rooms(self) -> list[RoomRow]:
        rows = self._db.execute(
            "SELECT r.key, r.name, r.topic, r.last_seq, COUNT(m.account_key) FROM rooms r "
            "LEFT JOIN members m ON m.room_key = r.key GROUP BY r.key ORDER BY r.key")
        return [RoomRow(*row) for row in rows]

    def room_seqs(self) -> dict[str, int]:
        """Room key -> its last sequence number, for every room (the cluster's periodic
        check, zchat.core.cluster; as zchat.store.postgres's)."""
        return dict(self._db.execute("SELECT key, last_seq FROM rooms"))

    def room_floors(self) -> dict[str, int]:
        """Room key -> the last seq of the deleted room it was made after (its tombstone,
        docs/PROTOCOL.md §6.52), for the rooms made under a deleted room's name only."""
        return dict(self._db.execute(
            "SELECT r.key, t.last_seq FROM rooms r JOIN room_tombstones t ON t.key = r.key"))

    def memberships(self) -> dict[str, set[str]]:
        """Every room key -> the set of its members' account keys (rooms without members
        included)."""
        out: dict[str, set[str]] = {k: set() for (k,) in self._db.execute("SELECT key FROM rooms")}
        for room_key, account_key in self._db.execute("SELECT room_key, account_key FROM members"):
            out[room_key].add(account_key)
        return out

    def rooms_of(self, account_key: str) -> list[RoomRow]:
        rows = self._db.execute(
            "SELECT r.key, r.name, r.topic, r.last_seq FROM rooms r JOIN members m "
            "ON m.room_key = r.key WHERE m.account_key = ? ORDER BY m.joined_ms, r.key",
            (account_key,))
        return [RoomRow(*row) for row in rows]

    # -- room messages ------------------------------------------------------------------

    def append_message(self, room_key: str, sender: str, kind: str, text: str, cmid: str,
                       now_ms: int, sender_key: str = "") -> int:
        """Store a room message under the room's next sequence number and commit.

        Returns the sequence number (1, 2, 3, … per room, no gaps: one INSERT takes
        ``last_seq + 1`` and the trigger ``messages_last_seq`` moves the counter in the
        same statement). With ``sender_key`` (the sender's account key) the sender's read
        marker of the room moves to it (docs/PROTOCOL.md §6.3.1) in the same transaction:
        inside a group commit once for the group, at its commit, as the highest seq the
        sender posted there (one UPDATE per sender and room instead of one per message,
        ``_flush_own_reads``); outside, at once. Raises NoSuchRoom for an unknown
        room (nothing written), StorageError(503) if not committed.
        """
        row = self._write_one(
            "INSERT INTO messages(room_key, seq, time_ms, sender, kind, text, cmid, "
            "sender_key) SELECT key, last_seq + 1, ?, ?, ?, ?, ?, ? FROM rooms WHERE key = ? "
            "RETURNING seq",
            (now_ms, sender, kind, text, cmid, sender_key, room_key))
        if row is None:
            raise NoSuchRoom(room_key)
        seq = int(row[0])
        if sender_key:
            if self._group and not self._write_depth:
                key = (room_key, sender_key)
                self._own_reads[key] = max(seq, self._own_reads.get(key, 0))
            else:
                self._db.execute(self._OWN_READ_SQL, (seq, room_key, sender_key, seq))
        return seq

    _OWN_READ_SQL = ("UPDATE members SET read_seq = ? WHERE room_key = ? AND account_key = ? "
                     "AND read_seq < ?")

    def _flush_own_reads(self) -> None:
        """Move the read markers that the group's posts moved (``append_message``), in the
        group's transaction. Called before anything reads or writes a marker, and before
        the group commits."""
        if not self._own_reads:
            return
        pending, self._own_reads = self._own_reads, {}
        try:
            self._db.executemany(self._OWN_READ_SQL, [(seq, room, account, seq) for
                                                      (room, account), seq in pending.items()])
        except sqlite3.Error as exc:
            if self._group and not self._db.in_transaction:
                self._group_failed = f"storage failed, the batch was lost: {exc}"
            _raise_write_error(exc)

    def post_message(self, room_key: str, sender: str, kind: str, text: str, cmid: str,
                     now_ms: int, sender_key: str = "",
                     mentions: tuple[str, ...] = ()) -> PostedRow:
        """Store a room message once per client message id (docs/PROTOCOL.md §6.8).

        With a non-empty ``cmid``, a message already stored in the room by ``sender`` with
        that cmid is looked up in the same transaction as the insert (index
        ``messages_by_cmid``): when found, nothing is written and the original's seq and
        time come back with ``duplicate=True``. Otherwise as ``append_message``
        (``sender_key`` moves the sender's read marker). ``mentions``: the account keys
        the message mentions (docs/PROTOCOL.md §6.49.2), stored with it in the same
        transaction for their unread-mention counts. Inside a group the lookup and the one
        INSERT need no SAVEPOINT (see ``_write_one``); a message with mentions, rare, takes
        one. Raises NoSuchRoom for an unknown room, StorageError(503) if not
        committed.
        """
        if self._group and not self._write_depth and not mentions:
            self._begin_group_transaction()
            try:
                return self._post_message(room_key, sender, kind, text, cmid, now_ms,
                                          sender_key)
            except sqlite3.Error as exc:  # the lookup (the INSERT maps its own errors)
                _raise_write_error(exc)
        with self._write() as db:
            posted = self._post_message(room_key, sender, kind, text, cmid, now_ms,
                                        sender_key)
            if mentions and not posted.duplicate:
                db.executemany("INSERT OR IGNORE INTO mentions(account_key, room_key, seq) "
                               "VALUES (?, ?, ?)", [(k, room_key, posted.seq) for k in mentions])
            return posted

    def _post_message(self, room_key: str, sender: str, kind: str, text: str, cmid: str,
                      now_ms: int, sender_key: str = "") -> PostedRow:
        if cmid:
            found = self.message_by_cmid(room_key, sender, cmid)
            if found is not None:
                return found
        seq = self.append_message(room_key, sender, kind, text, cmid, now_ms, sender_key)
        return PostedRow(seq, now_ms, False)

    def message_by_cmid(self, room_key: str, sender: str, cmid: str) -> PostedRow | None:
        """The message ``sender`` (display name) stored in the room with the non-empty
        ``cmid`` (``duplicate=True``), or None (docs/PROTOCOL.md §6.8)."""
        # INDEXED BY: without it the planner walks the room by primary key (the partial
        # index's "cmid <> ''" cannot be proved of a bound parameter), a scan of the
        # whole room per SEND.
        row = self._db.execute("SELECT seq, time_ms FROM messages INDEXED BY "
                               "messages_by_cmid WHERE room_key = ? AND sender = ? AND "
                               "cmid = ? AND cmid <> '' ORDER BY seq LIMIT 1",
                               (room_key, sender, cmid)).fetchone()
        return PostedRow(int(row[0]), int(row[1]), True) if row is not None else None

    def history(self, room_key: str, before: int | None, after: int | None,
                limit: int) -> list[MessageRow]:
        """Up to ``limit`` messages in ascending seq order (docs/PROTOCOL.md §6.9): the
        oldest above ``after``, else the newest below ``before`` (or the newest of all)."""
        base = ("SELECT r.name, m.seq, m.time_ms, m.sender, m.kind, m.text, m.deleted_by "
                "FROM messages m "
                "JOIN rooms r ON r.key = m.room_key WHERE m.room_key = ?")
        sql, args, newest_first = page(base, "m.seq", "?", room_key, before, after, limit)
        rows = self._db.execute(sql, args).fetchall()
        if newest_first:
            rows.reverse()
        return [MessageRow(*row) for row in rows]

    def message(self, room_key: str, seq: int) -> MessageRow | None:
        """One stored message (deleted ones too, with their text), or None."""
        row = self._db.execute(
            "SELECT r.name, m.seq, m.time_ms, m.sender, m.kind, m.text, m.deleted_by FROM "
            "messages m JOIN rooms r ON r.key = m.room_key WHERE m.room_key = ? AND m.seq = ?",
            (room_key, seq)).fetchone()
        return MessageRow(*row) if row else None

    def delete_message(self, room_key: str, seq: int, by: str) -> MessageRow:
        """Mark message ``seq`` of the room deleted by ``by`` (a display name) and commit.
        The row and its text stay (for the audit; HISTORY shows it with text "", seq kept
        so that no gap appears, docs/PROTOCOL.md §17.3). Returns the row as it was.
        Raises NoSuchMessage, AlreadyDeleted."""
        with self._write() as db:
            row = self.message(room_key, seq)
            if row is None:
                raise NoSuchMessage(seq)
            if row.deleted_by:
                raise AlreadyDeleted(seq, row.deleted_by)
            db.execute("UPDATE messages SET deleted_by = ? WHERE room_key = ? AND seq = ?",
                       (by, room_key, seq))
            # a deleted message no longer counts as anyone's unread mention
            db.execute("DELETE FROM mentions WHERE room_key = ? AND seq = ?", (room_key, seq))
        return row

    # -- roles, private and locked rooms, invitations (docs/PROTOCOL.md §17) ---------------

    def roles(self) -> dict[str, dict[str, str]]:
        """Every room key -> {account key: "owner" | "moderator"} (members have no row)."""
        out: dict[str, dict[str, str]] = {}
        for room_key, account_key, role in self._db.execute(
                "SELECT room_key, account_key, role FROM room_roles"):
            out.setdefault(room_key, {})[account_key] = role
        return out

    def room_role(self, room_key: str, account_key: str) -> str:
        """The account's role in the room: "owner", "moderator" or "" (a plain member or
        none)."""
        row = self._db.execute("SELECT role FROM room_roles WHERE room_key = ? AND "
                               "account_key = ?", (room_key, account_key)).fetchone()
        return str(row[0]) if row else ""

    def set_role(self, room_key: str, account_key: str, role: str) -> None:
        """Set the account's role in the room: "owner", "moderator", or "" to remove it,
        and commit. Raises ValueError for another role."""
        if role not in ("owner", "moderator", ""):
            raise ValueError(f"unknown role {role!r}")
        with self._write() as db:
            if role:
                db.execute("INSERT OR REPLACE INTO room_roles(room_key, account_key, role) "
                           "VALUES (?, ?, ?)", (room_key, account_key, role))
            else:
                db.execute("DELETE FROM room_roles WHERE room_key = ? AND account_key = ?",
                           (room_key, account_key))

    # -- read state of rooms (docs/PROTOCOL.md §6.3.1, §6.49) ------------------------------

    def room_reads(self, account_key: str) -> dict[str, RoomReadRow]:
        """The account's read state in each of its rooms, by room key: the marker and the
        unread mentions after it (index ``mentions``' primary key)."""
        self._flush_own_reads()
        rows = self._db.execute(
            "SELECT m.room_key, m.read_seq, (SELECT COUNT(*) FROM mentions x WHERE "
            "x.account_key = m.account_key AND x.room_key = m.room_key AND x.seq > m.read_seq) "
            "FROM members m WHERE m.account_key = ?", (account_key,))
        return {str(k): RoomReadRow(str(k), int(r), int(n)) for k, r, n in rows}

    def room_read(self, room_key: str, account_key: str) -> RoomReadRow | None:
        """The account's read state in one room; None when it is not a member."""
        self._flush_own_reads()
        row = self._db.execute(
            "SELECT m.room_key, m.read_seq, (SELECT COUNT(*) FROM mentions x WHERE "
            "x.account_key = m.account_key AND x.room_key = m.room_key AND x.seq > m.read_seq) "
            "FROM members m WHERE m.room_key = ? AND m.account_key = ?",
            (room_key, account_key)).fetchone()
        return RoomReadRow(str(row[0]), int(row[1]), int(row[2])) if row else None

    def mark_room_read(self, room_key: str, account_key: str, upto: int) -> bool:
        """Move the member's read marker of the room forward to ``upto`` (never back) and
        drop the mentions it passed; commit. Returns whether it moved (False: already
        there or beyond, or not a member; then nothing is written)."""
        with self._write() as db:
            self._flush_own_reads()
            cur = db.execute("UPDATE members SET read_seq = ? WHERE room_key = ? AND "
                             "account_key = ? AND read_seq < ?",
                             (upto, room_key, account_key, upto))
            if cur.rowcount != 1:
                return False
            db.execute("DELETE FROM mentions WHERE account_key = ? AND room_key = ? AND "
                       "seq <= ?", (account_key, room_key, upto))
            return True

    def room_flags(self) -> dict[str, tuple[bool, bool]]:
        """Every room key -> (private, locked)."""
        return {k: (bool(p), bool(lk)) for k, p, lk in
                self._db.execute("SELECT key, private, locked FROM rooms")}

    def set_room_flags(self, room_key: str, private: bool | None = None,
                       locked: bool | None = None) -> None:
        """Set a room's private and/or locked flag (None leaves it) and commit. Raises
        NoSuchRoom when the room does not exist."""
        with self._write() as db:
            for column, value in (("private", private), ("locked", locked)):
                if value is None:
                    continue
                cur = db.execute(f"UPDATE rooms SET {column} = ? WHERE key = ?",
                                 (int(value), room_key))
                if cur.rowcount != 1:
                    raise NoSuchRoom(room_key)

    def add_invite(self, room_key: str, account_key: str, by_key: str, now_ms: int) -> None:
        """Invite the account to the room (replacing an earlier invitation) and commit."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO invites(room_key, account_key, by_key, time_ms) "
                       "VALUES (?, ?, ?, ?)", (room_key, account_key, by_key, now_ms))

    def has_invite(self, room_key: str, account_key: str) -> bool:
        return self._db.execute("SELECT 1 FROM invites WHERE room_key = ? AND account_key = ?",
                                (room_key, account_key)).fetchone() is not None

    def take_invite(self, room_key: str, account_key: str) -> bool:
        """Use up the account's invitation to the room; returns whether there was one."""
        with self._write() as db:
            cur = db.execute("DELETE FROM invites WHERE room_key = ? AND account_key = ?",
                             (room_key, account_key))
            return cur.rowcount == 1

    def invites_of(self, account_key: str) -> list[str]:
        """Keys of the rooms the account is invited to, oldest invitation first."""
        return [str(k) for (k,) in self._db.execute(
            "SELECT room_key FROM invites WHERE account_key = ? ORDER BY time_ms, room_key",
            (account_key,))]

    # -- bans and mutes (docs/PROTOCOL.md §17) --------------------------------------------

    _BAN_COLUMNS = ("id, kind, room_key, account_key, by_key, reason, created_ms, until_ms")

    def add_ban(self, kind: str, room_key: str, account_key: str, by_key: str, reason: str,
                now_ms: int, until_ms: int | None) -> BanRow:
        """Ban or mute (``kind`` "ban" | "mute") the account in the room (``room_key`` ""
        = server-wide) until ``until_ms`` (UTC ms; None = no expiry), replacing an
        earlier one of the same kind and place; commit and return it. Raises ValueError
        for another kind."""
        if kind not in ("ban", "mute"):
            raise ValueError(f"unknown kind {kind!r}")
        with self._write() as db:
            db.execute("DELETE FROM bans WHERE kind = ? AND room_key = ? AND account_key = ?",
                       (kind, room_key, account_key))
            cur = db.execute("INSERT INTO bans(kind, room_key, account_key, by_key, reason, "
                             "created_ms, until_ms) VALUES (?, ?, ?, ?, ?, ?, ?)",
                             (kind, room_key, account_key, by_key, reason, now_ms, until_ms))
            ban_id = int(cur.lastrowid or 0)
        return BanRow(ban_id, kind, room_key, account_key, by_key, reason, now_ms, until_ms)

    def lift_ban(self, kind: str, room_key: str, account_key: str) -> bool:
        """Remove the account's ban or mute of that kind and place; returns whether there
        was one (expired ones count: lifting one is harmless)."""
        with self._write() as db:
            cur = db.execute("DELETE FROM bans WHERE kind = ? AND room_key = ? AND "
                             "account_key = ?", (kind, room_key, account_key))
            return cur.rowcount == 1

    def active_ban(self, kind: str, room_key: str, account_key: str,
                   now_ms: int) -> BanRow | None:
        """The ban or mute of that kind and place in force at ``now_ms``, or None (an
        expired one lapses by itself, even before ``purge_expired_bans`` removes it).
        Read from the database each time: the broker core asks its in-memory copy
        (zchat.core.state), not this."""
        row = self._db.execute(f"SELECT {self._BAN_COLUMNS} FROM bans WHERE kind = ? AND "
                               "room_key = ? AND account_key = ?",
                               (kind, room_key, account_key)).fetchone()
        ban = BanRow(*row) if row else None
        return ban if ban is not None and ban.active(now_ms) else None

    def list_bans(self, now_ms: int, room_key: str | None = None,
                  kind: str | None = None) -> list[BanRow]:
        """Bans and mutes in force at ``now_ms``, oldest first: of one room (``room_key``,
        "" = the server-wide ones) or all (None), of one ``kind`` or both."""
        sql = (f"SELECT {self._BAN_COLUMNS} FROM bans WHERE (until_ms IS NULL OR "
               "until_ms > ?)")
        args: list[object] = [now_ms]
        if room_key is not None:
            sql += " AND room_key = ?"
            args.append(room_key)
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        return [BanRow(*row) for row in self._db.execute(sql + " ORDER BY id", args)]

    def purge_expired_bans(self, now_ms: int) -> list[BanRow]:
        """Delete the bans and mutes whose ``until_ms`` has passed; return them."""
        with self._write() as db:
            rows = [BanRow(*row) for row in db.execute(
                f"SELECT {self._BAN_COLUMNS} FROM bans WHERE until_ms IS NOT NULL AND "
                "until_ms <= ? ORDER BY id", (now_ms,))]
            if rows:
                db.execute("DELETE FROM bans WHERE until_ms IS NOT NULL AND until_ms <= ?",
                           (now_ms,))
        return rows

    # -- disabled accounts ----------------------------------------------------------------

    def set_disabled(self, key: str, disabled: bool) -> bool:
        """Disable (or enable again) an account and commit; returns False when there is
        no such account. A disabled account cannot LOGIN or RESUME (403)."""
        with self._write() as db:
            cur = db.execute("UPDATE accounts SET disabled = ? WHERE key = ?",
                             (int(disabled), key))
            return cur.rowcount == 1

    def is_disabled(self, key: str) -> bool:
        row = self._db.execute("SELECT disabled FROM accounts WHERE key = ?", (key,)).fetchone()
        return bool(row and row[0])

    # -- audit log (append-only) ----------------------------------------------------------

    def append_audit(self, time_ms: int, actor: str, action: str, room: str = "",
                     target: str = "", detail: str = "") -> int:
        """Append one entry to the audit log and commit; returns its id. There is no
        method to change or remove an entry: the log is append-only (but for the message
        text a "delete" entry quotes, removed with its room: ``delete_room``)."""
        with self._write() as db:
            cur = db.execute("INSERT INTO audit_log(time_ms, actor, action, room, target, "
                             "detail) VALUES (?, ?, ?, ?, ?, ?)",
                             (time_ms, actor, action, room, target, detail))
            return int(cur.lastrowid or 0)

    def audit_log(self, *, room: str | None = None, actor: str | None = None,
                  target: str | None = None, action: str | None = None,
                  before_id: int | None = None, since_ms: int | None = None,
                  above_id: int = 0, limit: int = 100) -> list[AuditRow]:
        """Audit entries, newest first, at most ``limit``: filtered by exact ``room``,
        ``actor``, ``target`` (display names, compared case-insensitively) and
        ``action``, entries with id below ``before_id`` (paging) and above ``above_id``
        (a room's ``audit_floor``), and at or after ``since_ms`` (UTC ms)."""
        sql = "SELECT id, time_ms, actor, action, room, target, detail FROM audit_log WHERE 1"
        args: list[object] = []
        if above_id:
            sql += " AND id > ?"
            args.append(above_id)
        for column, value in (("room", room), ("actor", actor), ("target", target)):
            if value is not None:
                sql += f" AND lower({column}) = lower(?)"
                args.append(value)
        if action is not None:
            sql += " AND action = ?"
            args.append(action)
        if before_id is not None:
            sql += " AND id < ?"
            args.append(before_id)
        if since_ms is not None:
            sql += " AND time_ms >= ?"
            args.append(since_ms)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        return [AuditRow(*row) for row in self._db.execute(sql, args)]

    # -- direct messages ----------------------------------------------------------------

    def store_dm(self, sender: str, recipient_key: str, recipient: str, text: str,
                 now_ms: int, max_pending: int, cmid: str = "", sender_key: str = "",
                 kind: str = "text") -> int:
        """Store a direct message, unacknowledged (pending for the recipient's sessions),
        in the history of its conversation, and commit; returns its id. ``sender_key`` is
        the sender's account key (default: the key of ``sender``, a display name).

        Read state (docs/PROTOCOL.md §6.3.1) in the same transaction: the DM is unread
        for the recipient, and the sender has read the conversation up to it. When the
        recipient then has more than ``max_pending`` pending DMs, the oldest stop being
        pending (they are no longer offered at login) but stay in the history, unread
        until read: no DM is ever dropped. ``cmid`` is stored as given (``post_dm`` looks
        it up first). ``kind`` is "text" or "notice"."""
        sender_key = sender_key or name_key(sender)
        with self._write() as db:
            cur = db.execute("INSERT INTO direct_messages(time_ms, sender, sender_key, "
                             "recipient_key, recipient, pair, text, delivered, cmid, kind) "
                             "VALUES (?, ?, ?, ?, ?, ?, ?, 0, ?, ?)",
                             (now_ms, sender, sender_key, recipient_key, recipient,
                              dm_pair(sender_key, recipient_key), text, cmid, kind))
            dm_id = int(cur.lastrowid or 0)
            db.execute("UPDATE direct_messages SET delivered = 1 WHERE id IN (SELECT id FROM "
                       "direct_messages WHERE recipient_key = ? AND delivered = 0 "
                       "ORDER BY id DESC LIMIT -1 OFFSET ?)", (recipient_key, max_pending))
            if recipient_key != sender_key:
                db.execute("INSERT INTO dm_reads(account_key, peer_key, peer, last_id, read_id, "
                           "unread) VALUES (?, ?, ?, ?, 0, 1) ON CONFLICT(account_key, "
                           "peer_key) DO UPDATE SET peer = excluded.peer, last_id = "
                           "excluded.last_id, unread = unread + 1",
                           (recipient_key, sender_key, sender, dm_id))
            db.execute("INSERT INTO dm_reads(account_key, peer_key, peer, last_id, read_id, "
                       "unread) VALUES (?, ?, ?, ?, ?, 0) ON CONFLICT(account_key, peer_key) "
                       "DO UPDATE SET peer = excluded.peer, last_id = excluded.last_id, "
                       "read_id = excluded.read_id, unread = 0",
                       (sender_key, recipient_key, recipient, dm_id, dm_id))
        return dm_id

    def post_dm(self, sender: str, recipient_key: str, recipient: str, text: str, cmid: str,
                now_ms: int, max_pending: int, sender_key: str = "",
                kind: str = "text") -> PostedRow:
        """Store a direct message once per client message id (docs/PROTOCOL.md §6.7).

        With a non-empty ``cmid``, a DM already stored from ``sender`` with that cmid
        (index ``dms_by_cmid``) is looked up in the same transaction as the insert: when
        found, nothing is written and its id and time come back with ``duplicate=True``
        (``seq`` holds the DM id). Raises CmidReused when that cmid was used for a
        DM to another recipient, StorageError(503) if not committed. Otherwise as
        ``store_dm`` (the recipient keeps at most ``max_pending`` unacknowledged DMs).
        """
        with self._write():
            if cmid:
                found = self.dm_by_cmid(sender, recipient_key, cmid)
                if found is not None:
                    return found
            dm_id = self.store_dm(sender, recipient_key, recipient, text, now_ms, max_pending,
                                  cmid=cmid, sender_key=sender_key, kind=kind)
        return PostedRow(dm_id, now_ms, False)

    def dm_by_cmid(self, sender: str, recipient_key: str, cmid: str) -> PostedRow | None:
        """The DM ``sender`` (display name) stored with the non-empty ``cmid``
        (``duplicate=True``, ``seq`` its id), or None (docs/PROTOCOL.md §6.7). Raises
        CmidReused when that cmid was used for a DM to another recipient."""
        row = self._db.execute("SELECT id, time_ms, recipient_key FROM direct_messages "
                               "INDEXED BY dms_by_cmid WHERE sender = ? AND cmid = ? AND "
                               "cmid <> '' ORDER BY id LIMIT 1", (sender, cmid)).fetchone()
        if row is None:
            return None
        if row[2] != recipient_key:
            raise CmidReused()
        return PostedRow(int(row[0]), int(row[1]), True)

    def pending_dms(self, recipient_key: str,
                    limit: int | None = None) -> list[DirectMessageRow]:
        """The recipient's direct messages not yet acknowledged (``delivered = 0``), oldest
        first; with ``limit``, only the newest ``limit`` of them (a database from before
        the bound, or a bound lowered since, may hold more: the rest stay in the DM
        history, unread). Reading them changes nothing: only ``ack_dms`` does."""
        rows = self._db.execute("SELECT id, time_ms, sender, recipient, text, kind FROM "
                                "direct_messages WHERE recipient_key = ? AND delivered = 0 "
                                "ORDER BY id DESC LIMIT ?",
                                (recipient_key, -1 if limit is None else limit)).fetchall()
        return [DirectMessageRow(*row) for row in reversed(rows)]

    def ack_dms(self, recipient_key: str, ids: tuple[int, ...]) -> int:
        """Mark the recipient's messages ``ids`` delivered (ids of other recipients are
        ignored); returns how many changed."""
        if not ids:
            return 0
        marks = ",".join("?" * len(ids))
        with self._write() as db:
            cur = db.execute(f"UPDATE direct_messages SET delivered = 1 WHERE recipient_key = ? "
                             f"AND delivered = 0 AND id IN ({marks})", (recipient_key, *ids))
            return cur.rowcount

    def dm_history(self, pair: str, before: int | None, after: int | None,
                   limit: int) -> list[DirectMessageRow]:
        """Up to ``limit`` DMs of the conversation ``pair`` (``dm_pair``), ascending by id
        (docs/PROTOCOL.md §6.48): the oldest above ``after``, else the newest below
        ``before`` (or the newest of all). Index ``dms_by_pair``."""
        base = ("SELECT id, time_ms, sender, recipient, text, kind FROM direct_messages "
                "WHERE pair = ?")
        sql, args, newest_first = page(base, "id", "?", pair, before, after, limit)
        rows = self._db.execute(sql, args).fetchall()
        if newest_first:
            rows.reverse()
        return [DirectMessageRow(*row) for row in rows]

    def dm_read(self, account_key: str, peer_key: str) -> DmReadRow | None:
        """The account's read state of its conversation with ``peer_key``; None when the
        two never wrote to each other."""
        row = self._db.execute("SELECT peer_key, peer, last_id, read_id, unread FROM dm_reads "
                               "WHERE account_key = ? AND peer_key = ?",
                               (account_key, peer_key)).fetchone()
        return DmReadRow(str(row[0]), str(row[1]), int(row[2]), int(row[3]), int(row[4])) \
            if row else None

    def unread_dm_reads(self, account_key: str, limit: int) -> list[DmReadRow]:
        """The account's conversations with unread DMs, newest first, at most ``limit``
        (index ``dm_reads_unread``)."""
        rows = self._db.execute("SELECT peer_key, peer, last_id, read_id, unread FROM dm_reads "
                                "WHERE account_key = ? AND unread > 0 ORDER BY last_id DESC "
                                "LIMIT ?", (account_key, limit))
        return [DmReadRow(str(k), str(n), int(a), int(b), int(c)) for k, n, a, b, c in rows]

    def mark_dm_read(self, account_key: str, peer_key: str, upto: int) -> DmReadRow | None:
        """Move the account's read marker of its conversation with ``peer_key`` forward to
        ``upto`` (never back), recount what is unread after it, and mark the DMs to the
        account up to it delivered (a DM read on one device needs no delivery to the
        others: it is no longer offered at login); commit. Returns the state after it, or
        None when there is no such conversation. ``upto`` beyond the conversation's
        newest DM is the caller's to refuse."""
        with self._write() as db:
            state = self.dm_read(account_key, peer_key)
            if state is None or upto <= state.read_id:
                return state
            pair = dm_pair(account_key, peer_key)
            (unread,) = db.execute("SELECT COUNT(*) FROM direct_messages WHERE pair = ? AND "
                                   "recipient_key = ? AND id > ?",
                                   (pair, account_key, upto)).fetchone()
            db.execute("UPDATE dm_reads SET read_id = ?, unread = ? WHERE account_key = ? AND "
                       "peer_key = ?", (upto, unread, account_key, peer_key))
            db.execute("UPDATE direct_messages SET delivered = 1 WHERE pair = ? AND "
                       "recipient_key = ? AND id <= ? AND delivered = 0",
                       (pair, account_key, upto))
            return DmReadRow(state.peer_key, state.peer, state.last_id, upto, int(unread))

    # -- sessions kept for RESUME (docs/PROTOCOL.md §6.27) ---------------------------------

    def add_session(self, token_sha256: str, account_key: str, login_token_id: int | None,
                    address: str, login_ms: int, presence: bool = True) -> None:
        """Keep a new session (its token's SHA-256, never the token) and commit;
        ``presence`` False for one that announces no presence (§6.3)."""
        with self._write() as db:
            db.execute("INSERT OR REPLACE INTO sessions(token_sha256, account_key, "
                       "login_token_id, address, login_ms, presence) VALUES (?, ?, ?, ?, ?, ?)",
                       (token_sha256, account_key, login_token_id, address, login_ms,
                        int(presence)))

    def delete_released_sessions(self, token_sha256s: list[str]) -> int:
        """Forget these sessions kept from before the start and not resumed: on one broker
        no other can hold them, so ``delete_sessions``."""
        return self.delete_sessions(token_sha256s)

    def delete_sessions(self, token_sha256s: list[str]) -> int:
        """Forget these sessions (LOGOUT, eviction, revocation, expiry); returns how many
        rows went."""
        if not token_sha256s:
            return 0
        marks = ",".join("?" * len(token_sha256s))
        with self._write() as db:
            cur = db.execute(f"DELETE FROM sessions WHERE token_sha256 IN ({marks})",
                             token_sha256s)
            return cur.rowcount

    def sessions(self, held_elsewhere: bool = False) -> list[SessionRow]:
        """Every kept session, oldest login first (read once at broker start). One broker
        holds them all: ``held_elsewhere`` changes nothing."""
        rows = self._db.execute("SELECT token_sha256, account_key, login_token_id, address, "
                                "login_ms, presence FROM sessions ORDER BY login_ms, "
                                "token_sha256")
        return [SessionRow(str(h), str(k), None if t is None else int(t), str(a), int(ms),
                           presence=bool(pr))
                for h, k, t, a, ms, pr in rows]

    def session(self, token_sha256: str) -> SessionRow | None:
        """The kept session with this token hash, or None (the port's; a single broker
        never asks: it loads every row at start)."""
        row = self._db.execute("SELECT token_sha256, account_key, login_token_id, address, "
                               "login_ms, presence FROM sessions WHERE token_sha256 = ?",
                               (token_sha256,)).fetchone()
        if row is None:
            return None
        h, k, t, a, ms, pr = row
        return SessionRow(str(h), str(k), None if t is None else int(t), str(a), int(ms),
                          presence=bool(pr))
