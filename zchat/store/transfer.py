"""Moving a single broker's SQLite database into PostgreSQL (``zchat admin migrate``,
docs/cluster.md "Moving from SQLite").

Table by table, column by column, with the two schemas' own column lists: the SQLite
file's (``PRAGMA table_info``, at ``migrations.SCHEMA_VERSION``) and the PostgreSQL
database's (``information_schema.columns``, at ``pg_schema.SCHEMA_VERSION``), which must
name the same tables and columns (pg_schema's version 5 is SQLite's version 8). Rows are
copied as they are — password hashes, deleted messages with their ``deleted_by``, pending
and read DMs, tombstones and audit floors — not through the store's business methods, so
nothing is re-hashed, re-numbered or re-decided. Three conversions only: SQLite's 0/1
flags become PostgreSQL's BOOLEAN, a client message id is escaped as the PostgreSQL store
stores it (``postgres._cmid``: PostgreSQL's text cannot hold NUL), and each identity
column (the ids SQLite gives with AUTOINCREMENT) is moved past the highest id SQLite
ever gave (``sqlite_sequence``), so that new rows never take an old id.

The SQLite file is opened read-only (``mode=ro``) in one read transaction: one consistent
snapshot, and the file is not written. Everything lands in PostgreSQL in one
transaction, with the target's tables locked; the counts per table, the rooms' last
sequence numbers and highest stored seqs, and the highest ids are compared on both sides
before it commits, so a copy that does not match is rolled back whole.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import psycopg
from psycopg import sql

from zchat.config import libpq_url, redact_text, redact_url
from zchat.errors import StorageError
from zchat.store import migrations, pg_schema
from zchat.store.postgres import Store as PostgresStore
from zchat.store.postgres import _cmid

#: The tables copied, in an order that keeps PostgreSQL's foreign keys satisfied at each
#: row (accounts and rooms before what refers to them). Every zchat table of both schemas
#: is here; the copy refuses a database holding one this list does not name.
TABLES: tuple[str, ...] = (
    "accounts", "rooms", "members", "room_roles", "invites", "messages", "mentions",
    "room_tombstones", "direct_messages", "dm_reads", "account_tokens", "sessions",
    "bans", "audit_log",
)
#: Tables with an identity column ``id`` in PostgreSQL (AUTOINCREMENT in SQLite).
IDENTITY_TABLES: tuple[str, ...] = ("direct_messages", "account_tokens", "bans",
                                    "audit_log")
#: Columns holding a client message id, escaped as the PostgreSQL store keeps them.
CMID_COLUMNS: frozenset[tuple[str, str]] = frozenset({("messages", "cmid"),
                                                      ("direct_messages", "cmid")})
#: PostgreSQL's own bookkeeping tables (the schema version; the bans' change counter),
#: made by the PostgreSQL store and not copied.
PG_ONLY_TABLES: frozenset[str] = frozenset({pg_schema.VERSION_TABLE, "zchat_changes",
                                           "brokers"})
#: Columns only PostgreSQL has (the holder of a session, pg_schema.LEASES): not copied,
#: their defaults say "held by no broker", so a copied session is resumable as after a
#: restart.
PG_ONLY_COLUMNS: frozenset[tuple[str, str]] = frozenset({
    ("sessions", "broker_id"), ("sessions", "broker_epoch"), ("sessions", "released_ms")})
#: The SQLite schema version whose tables pg_schema's version mirrors.
SQLITE_VERSION = 8
#: Rows read from SQLite and written to PostgreSQL at a time.
BATCH_ROWS = 5_000


class MigrationError(StorageError):
    """The copy was refused or failed; nothing was written to PostgreSQL (one line for
    the operator, exit code 1)."""


@dataclass
class Summary:
    """What was copied: rows per table (equal on both sides), rooms checked for their
    sequence numbers, and where each identity column now continues."""

    source: str
    target: str
    rows: dict[str, int] = field(default_factory=dict)
    rooms_checked: int = 0
    #: room key -> the highest seq among its stored messages (rooms with messages only)
    max_seq: dict[str, int] = field(default_factory=dict)
    next_ids: dict[str, int] = field(default_factory=dict)

    def lines(self) -> list[str]:
        """The summary for people: one line per table, then the checks."""
        width = max(len(t) for t in self.rows)
        out = [f"copied {self.source} into {self.target}:"]
        out += [f"  {table.ljust(width)}  {count:>10,}" for table, count in self.rows.items()]
        out.append(f"checked: the row count of each of the {len(self.rows)} tables, the "
                   f"last sequence number and highest stored message of {self.rooms_checked} "
                   "room" + ("" if self.rooms_checked == 1 else "s") + " (deleted ones' "
                   "tombstones included), the highest id of "
                   + ", ".join(IDENTITY_TABLES))
        out.append("new ids continue from: " + ", ".join(
            f"{t} {n:,}" for t, n in self.next_ids.items()))
        return out


# -- the source ----------------------------------------------------------------------------


def open_source(path: Path) -> sqlite3.Connection:
    """The SQLite database at ``path``, read-only (``mode=ro``: nothing is written to it;
    SQLite may leave its ``-wal``/``-shm`` companions beside a file that had none).
    Raises MigrationError when it is not a zchat database of exactly this zchat's schema
    version: an older one is upgraded by opening it once with this zchat (the broker, or
    any ``zchat admin`` command on it), which writes the file; that is left to the
    operator rather than done here."""
    uri = f"file:{quote(str(path))}?mode=ro"
    try:
        db = sqlite3.connect(uri, uri=True, isolation_level=None)
    except sqlite3.Error as exc:
        raise MigrationError(f"cannot open {path} read-only: {exc}") from None
    try:
        version = int(db.execute("PRAGMA user_version").fetchone()[0])
        tables = _sqlite_tables(db)
    except sqlite3.Error as exc:
        db.close()
        raise MigrationError(f"cannot read {path}: {exc}") from None
    problem = ""
    if version == 0:
        problem = (f"{path} is not a zchat database" if tables else f"{path} is empty")
    elif version > migrations.SCHEMA_VERSION:
        problem = (f"{path} has schema version {version}, newer than this zchat's "
                   f"{migrations.SCHEMA_VERSION}: migrate it with the zchat that wrote it")
    elif version < migrations.SCHEMA_VERSION:
        problem = (f"{path} has schema version {version}, older than this zchat's "
                   f"{migrations.SCHEMA_VERSION}: upgrade it first by opening it once with "
                   f"this zchat (start the broker on it and stop it, or run `zchat admin "
                   f"users --db {path}`), then migrate; this command does not write the file")
    elif migrations.SCHEMA_VERSION != SQLITE_VERSION:  # pragma: no cover - a release's bug
        problem = (f"this zchat's migrate knows SQLite schema version {SQLITE_VERSION}, "
                   f"not {migrations.SCHEMA_VERSION}")
    if problem:
        db.close()
        raise MigrationError(problem)
    return db


def _sqlite_tables(db: sqlite3.Connection) -> set[str]:
    return {str(name) for (name,) in db.execute(
        "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%'")}


def _sqlite_columns(db: sqlite3.Connection, table: str) -> list[str]:
    return [str(row[1]) for row in db.execute(
        f"SELECT * FROM pragma_table_info('{table}') ORDER BY cid")]


def _sqlite_sequence(db: sqlite3.Connection) -> dict[str, int]:
    """The highest id AUTOINCREMENT ever gave per table (ids of deleted rows included:
    a revoked token's or a lifted ban's id is never given again)."""
    if db.execute("SELECT 1 FROM sqlite_master WHERE name = 'sqlite_sequence'").fetchone() \
            is None:
        return {}
    return {str(name): int(seq) for name, seq in
            db.execute("SELECT name, seq FROM sqlite_sequence")}


# -- the target ----------------------------------------------------------------------------


def _pg_columns(db: psycopg.Connection[Any]) -> dict[str, list[tuple[str, str]]]:
    """(column, data type) of each table of the current schema, in column order."""
    tables: dict[str, list[tuple[str, str]]] = {}
    for table, column, data_type in db.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns "
            "WHERE table_schema = current_schema() ORDER BY table_name, ordinal_position"):
        tables.setdefault(str(table), []).append((str(column), str(data_type)))
    return tables


def _prepare_target(url: str) -> None:
    """Create zchat's schema in an empty database (the PostgreSQL store does it, and
    refuses a database of someone else's or of a newer zchat). Raises MigrationError."""
    try:
        PostgresStore(url).close()
    except StorageError as exc:
        raise MigrationError(str(exc)) from None


def _check_schemas(source: sqlite3.Connection,
                   target: dict[str, list[tuple[str, str]]]) -> dict[str, list[str]]:
    """The columns to copy per table, after checking that both databases hold exactly
    TABLES with the same columns. Raises MigrationError naming the difference."""
    source_tables = _sqlite_tables(source)
    target_tables = set(target) - PG_ONLY_TABLES
    for side, found in (("the SQLite file", source_tables), ("the PostgreSQL database",
                                                            target_tables)):
        if found != set(TABLES):
            extra = sorted(found - set(TABLES))
            missing = sorted(set(TABLES) - found)
            raise MigrationError(f"{side} does not hold zchat's tables as this zchat knows "
                                 f"them (unknown: {', '.join(extra) or '-'}; missing: "
                                 f"{', '.join(missing) or '-'})")
    columns: dict[str, list[str]] = {}
    for table in TABLES:
        mine = _sqlite_columns(source, table)
        theirs = [c for c, _t in target[table] if (table, c) not in PG_ONLY_COLUMNS]
        if sorted(mine) != sorted(theirs):
            raise MigrationError(f"table {table}: SQLite has columns {', '.join(mine)}, "
                                 f"PostgreSQL {', '.join(theirs)}")
        columns[table] = theirs
    return columns


# -- the copy ------------------------------------------------------------------------------


@contextmanager
def _read_snapshot(db: sqlite3.Connection) -> Iterator[None]:
    """One read transaction: every table is read as of the same moment."""
    db.execute("BEGIN")
    try:
        db.execute("SELECT 1 FROM accounts LIMIT 1").fetchall()  # the snapshot starts here
        yield
    finally:
        db.execute("ROLLBACK")


def _copy_table(source: sqlite3.Connection, target: psycopg.Connection[Any], table: str,
                columns: list[str], types: dict[str, str],
                copied_batch: Callable[[int], None] = lambda n: None) -> int:
    """COPY every row of ``table`` from SQLite to PostgreSQL; returns how many.
    ``copied_batch(n)`` is called after each batch of ``n`` rows (BATCH_ROWS at most)."""
    converters: list[Callable[[Any], Any]] = []
    for column in columns:
        if types[column] == "boolean":
            converters.append(lambda v: None if v is None else bool(v))
        elif (table, column) in CMID_COLUMNS:
            converters.append(lambda v: v if v is None else _cmid(str(v)))
        else:
            converters.append(lambda v: v)
    listed = ", ".join(f'"{c}"' for c in columns)
    copied = 0
    cursor = source.execute(f"SELECT {listed} FROM {table}")
    statement = sql.SQL("COPY {} ({}) FROM STDIN").format(
        sql.Identifier(table), sql.SQL(", ").join(map(sql.Identifier, columns)))
    with target.cursor().copy(statement) as copy:
        while rows := cursor.fetchmany(BATCH_ROWS):
            for row in rows:
                copy.write_row([f(v) for f, v in zip(converters, row, strict=True)])
            copied += len(rows)
            copied_batch(len(rows))
    return copied


def _counts(rows: Any) -> dict[Any, Any]:
    return {r[0]: tuple(r[1:]) for r in rows}


def _verify(source: sqlite3.Connection, target: psycopg.Connection[Any],
            summary: Summary) -> None:
    """Compare both sides inside the target's transaction. Raises MigrationError."""
    for table in TABLES:
        theirs = target.execute(
            sql.SQL("SELECT count(*) FROM {}").format(sql.Identifier(table))).fetchone()
        count = int(theirs[0]) if theirs else -1
        if count != summary.rows[table]:
            raise MigrationError(f"table {table}: {summary.rows[table]:,} rows read from "
                                 f"SQLite, {count:,} in PostgreSQL")
    checks = (
        ("rooms' last sequence numbers", "SELECT key, last_seq FROM rooms"),
        ("deleted rooms' tombstones", "SELECT key, last_seq FROM room_tombstones"),
        ("rooms' stored messages", "SELECT room_key, max(seq), count(*), "
                                   "sum(CASE WHEN deleted_by <> '' THEN 1 ELSE 0 END) "
                                   "FROM messages GROUP BY room_key"),
        ("pending DMs", "SELECT recipient_key, count(*), max(id) FROM direct_messages "
                        "WHERE NOT delivered GROUP BY recipient_key"),
        ("DM read markers", "SELECT account_key || '/' || peer_key, read_id, unread "
                            "FROM dm_reads"),
    )
    for what, query in checks:
        mine = _counts(source.execute(query.replace("NOT delivered", "delivered = 0")))
        theirs = _counts(target.execute(query))
        if mine != theirs:
            differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise MigrationError(f"{what} differ after the copy (first: {differ[0]!r})")
        if query.startswith("SELECT room_key, max(seq)"):
            summary.max_seq = {str(k): int(v[0]) for k, v in mine.items()}
    summary.rooms_checked = len(_counts(source.execute("SELECT key FROM rooms"))) + len(
        _counts(source.execute("SELECT key FROM room_tombstones")))
    for table in IDENTITY_TABLES:
        mine_max = source.execute(f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]
        row = target.execute(sql.SQL("SELECT coalesce(max(id), 0) FROM {}").format(
            sql.Identifier(table))).fetchone()
        if row is None or int(row[0]) != int(mine_max):
            raise MigrationError(f"table {table}: highest id {mine_max} in SQLite, "
                                 f"{row[0] if row else None} in PostgreSQL")


def _advance_identities(source: sqlite3.Connection, target: psycopg.Connection[Any],
                        summary: Summary) -> None:
    """Move each identity column's sequence past the highest id SQLite ever gave, so
    the next row PostgreSQL makes takes the next id."""
    given = _sqlite_sequence(source)
    for table in IDENTITY_TABLES:
        highest = max(given.get(table, 0), int(source.execute(
            f"SELECT coalesce(max(id), 0) FROM {table}").fetchone()[0]))
        row = target.execute("SELECT pg_get_serial_sequence(%s, 'id')", (table,)).fetchone()
        if row is None or row[0] is None:
            raise MigrationError(f"table {table} has no identity column id in PostgreSQL")
        # setval(seq, n, true): the next nextval() gives n + 1; an empty table starts at 1
        target.execute("SELECT setval(%s, %s, %s)", (row[0], max(highest, 1), highest > 0))
        summary.next_ids[table] = highest + 1


def _refuse_filled(target: psycopg.Connection[Any], url: str) -> None:
    """Refuse a target a broker runs on (it holds pg_schema.BROKER_LOCK shared; the copy
    holds it exclusively until its connection closes, so none starts meanwhile); lock
    every zchat table and refuse when any holds a row: the target must be a new or empty
    zchat database."""
    held = target.execute("SELECT pg_try_advisory_lock(%s)",
                          (pg_schema.BROKER_LOCK,)).fetchone()
    if not (held and held[0]):
        raise MigrationError(f"a zchat broker is running on {redact_url(url)}: stop every "
                             "broker on it, migrate, then start them (a running broker "
                             "would not see what was copied); nothing was changed")
    tables = sql.SQL(", ").join(sql.Identifier(t) for t in TABLES)
    target.execute(sql.SQL("LOCK TABLE {} IN ACCESS EXCLUSIVE MODE").format(tables))
    filled = []
    for table in TABLES:
        if target.execute(sql.SQL("SELECT 1 FROM {} LIMIT 1").format(
                sql.Identifier(table))).fetchone() is not None:
            filled.append(table)
    if filled:
        raise MigrationError(f"{redact_url(url)} already holds zchat data (rows in "
                             f"{', '.join(filled)}): migrate into a new database, or one "
                             "whose zchat tables are empty; nothing was changed")


def migrate(source_path: Path, url: str, *, progress: Callable[[int], None] | None = None,
            total: Callable[[int], None] | None = None) -> Summary:
    """Copy the SQLite database at ``source_path`` (left unchanged) into the PostgreSQL
    database at ``url`` in one transaction, checked before it commits (module
    docstring). The caller makes sure no broker runs on the file (its lock file).
    ``total``, when given, is told the number of rows to copy (all tables, counted in the
    read snapshot) before the copy; ``progress`` the number copied so far after each
    batch (zchat admin migrate's progress line). Raises
    MigrationError (nothing written to PostgreSQL; a new database may be left with
    zchat's empty tables, which a second try accepts)."""
    url = libpq_url(url)
    summary = Summary(str(source_path), redact_url(url))
    with closing(open_source(source_path)) as source:
        _prepare_target(url)
        try:
            target = psycopg.connect(url, autocommit=True)
        except (psycopg.Error, ValueError) as exc:
            raise MigrationError(f"cannot connect to the database {redact_url(url)}: "
                                 f"{redact_text(str(exc).strip().splitlines()[0], url)}"
                                 ) from None
        with target, _read_snapshot(source):
            try:
                with target.transaction():
                    _refuse_filled(target, url)
                    described = _pg_columns(target)
                    columns = _check_schemas(source, described)
                    if total is not None:
                        total(sum(int(source.execute(f"SELECT count(*) FROM {t}")
                                      .fetchone()[0]) for t in TABLES))
                    copied = 0

                    def copied_batch(n: int) -> None:
                        nonlocal copied
                        copied += n
                        if progress is not None:
                            progress(copied)

                    for table in TABLES:
                        types = dict(described[table])
                        summary.rows[table] = _copy_table(source, target, table,
                                                          columns[table], types,
                                                          copied_batch)
                    _advance_identities(source, target, summary)
                    _verify(source, target, summary)
            except psycopg.Error as exc:
                raise MigrationError(f"the copy into {redact_url(url)} failed and was "
                                     "rolled back: "
                                     f"{redact_text(str(exc).strip().splitlines()[0], url)}"
                                     ) from None
    return summary


def check_with_store(url: str, summary: Summary) -> None:
    """After the commit: open the database with the PostgreSQL store, as a broker will,
    and check what it reads against the summary (accounts, rooms with their last seq and
    newest message). Raises MigrationError."""
    try:
        store = PostgresStore(url)
    except StorageError as exc:
        raise MigrationError(f"the copy was committed, but the store cannot open it: "
                             f"{exc}") from None
    try:
        if len(store.list_accounts()) != summary.rows["accounts"]:
            raise MigrationError("the store reads another number of accounts than copied")
        rooms = store.list_rooms()
        if len(rooms) != summary.rows["rooms"]:
            raise MigrationError("the store reads another number of rooms than copied")
        for room in rooms:
            newest = store.history(room.key, None, None, 1)
            seq = newest[-1].seq if newest else None
            if seq != summary.max_seq.get(room.key) or (seq or 0) > room.last_seq:
                raise MigrationError(f"room {room.name}: the store reads {seq} as its "
                                     f"newest message (copied: "
                                     f"{summary.max_seq.get(room.key)}; last sequence "
                                     f"number {room.last_seq})")
    finally:
        store.close()
