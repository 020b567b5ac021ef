"""``zchat admin migrate --to URL`` (issue 16, docs/cluster.md "Moving from SQLite"): a real
SQLite file written by a real broker with every kind of data is copied by the real
command line (a subprocess) into a database of the session's real PostgreSQL server,
then served by a real broker on that database — old passwords and tokens log in, history
pages and deleted messages are as they were, pending DMs and read state come back, seqs
and ids go on, bans hold. And the refusals: a filled target, a running broker on the
file, a file of another schema version; the file is never written."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg
import pytest
from admin_cli_helpers import failed, zchat
from cli_helpers import ok
from conftest import run, start_broker, stop_broker
from postgres_server import PostgresServer

from zchat.errors import RequestFailed
from zchat.passwords import hash_password_scrypt
from zchat.store import migrations, transfer
from zchat.testing import DEFAULT_PASSWORD, Harness, running_broker


@dataclass
class Source:
    """The SQLite file a real broker wrote, and what the test needs to know of it."""

    path: Path
    token: str  # ada's account token
    last_dm_id: int
    revoked_token_id: int  # above every token id still stored


async def _fill(harness: Harness) -> Source:
    """Every kind of data, made through the broker: accounts (a bot, a disabled one, one
    with a quota), rooms (topic, slow mode, private, locked, a moderator), history with a
    deleted message and a mention, a deleted room (its tombstone), read markers, DMs
    (read, and pending for an offline account), tokens (one revoked), bans and mutes,
    invitations, and the audit log of it all."""
    async with harness.client("root") as root, harness.client("ada") as ada, \
            harness.client("bob") as bob:
        for name in ("carol", "eve", "frank", "dave"):
            async with harness.client(name):
                pass
        quiz = harness.new_client()
        await quiz.connect()
        await quiz.register("quizbot", DEFAULT_PASSWORD, bot=True)
        await quiz.close()
        await ada.join("dev")
        await bob.join("dev")
        await ada.set_topic("dev", "the dev room")
        await ada.set_role("dev", "bob", "moderator")
        for i in range(1, 6):
            await ada.send("dev", f"message {i}" + (" for @bob" if i == 4 else ""))
        await ada.delete_message("dev", 2)
        await bob.mark_read(room="dev", upto=3)
        await ada.join("old")
        for i in range(3):
            await ada.send("old", f"old {i}")
        await ada.delete_room("old", "done with it")
        await ada.join("secret", private=True)
        await ada.invite("secret", "bob")
        await ada.join("quiet")
        await ada.set_room("quiet", locked=True)
        await ada.set_slow_mode("dev", 2)
        one = await ada.dm("bob", "hello bob")
        await bob.mark_read(dm="ada", upto=one.id)
        await ada.dm("carol", "carol, are you there?")  # carol is offline: pending
        last = await ada.dm("carol", "second one")
        token = (await ada.create_token("ci")).token
        spare = await ada.create_token("spare")
        await ada.revoke_token(spare.id)
        await ada.ban("eve", "dev", reason="spam")
        await root.ban("frank", "", reason="abuse")
        await root.mute("dave", "", reason="shouting")
        await root.set_quota("dave", 5_000_000)
        await root.set_disabled("quizbot", True)
        await root.set_disabled("quizbot", False)
        await root.set_disabled("carol", False)  # nothing changes: no audit entry
    return Source(Path(harness.db_path), token, last.id, spare.id)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Source]:
    """A data directory whose zchat.db a real broker wrote (and closed)."""
    data = tmp_path_factory.mktemp("data")
    with running_broker(data / "zchat.db", admins=["root"]) as harness:
        made = run(_fill(harness))
    yield made


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _copy(source: Source, tmp_path: Path) -> Path:
    """A data directory of the test's own holding a copy of the source file."""
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(source.path, data / "zchat.db")
    return data / "zchat.db"


def _sqlite_count(path: Path, table: str) -> int:
    with sqlite3.connect(f"file:{path}?mode=ro", uri=True) as db:
        return int(db.execute(f"SELECT count(*) FROM {table}").fetchone()[0])


def test_migrate_copies_everything_and_a_broker_on_postgresql_carries_on(
        source: Source, tmp_path: Path, pg_url: str) -> None:
    db = _copy(source, tmp_path)
    before = _digest(db)
    result = ok(zchat(tmp_path, "admin", "migrate", "--db", str(db), "--to", pg_url))
    assert _digest(db) == before  # read only
    assert "admin migrate:" not in result.stderr  # no progress line off a terminal
    lines = result.stdout.splitlines()
    assert lines[0] == f"copied {db} into {pg_url}:"
    counts = {line.split()[0]: int(line.split()[1].replace(",", "")) for line in lines[1:]
              if line.startswith("  ")}
    assert list(counts) == list(transfer.TABLES)
    for table in transfer.TABLES:
        assert counts[table] == _sqlite_count(db, table), table
    assert counts["accounts"] == 8 and counts["room_tombstones"] == 1
    assert counts["direct_messages"] == 3 and counts["invites"] == 1
    assert counts["bans"] == 3 and counts["mentions"] == 1
    assert "new ids continue from: direct_messages 4, account_tokens " \
           f"{source.revoked_token_id + 1}" in result.stdout

    async def carry_on(harness: Harness) -> None:
        async with harness.client("ada", register=False) as ada:
            page = await ada.history("dev", limit=10)
            assert [(m.seq, m.text, m.deleted_by) for m in page.messages] == [
                (1, "message 1", ""), (2, "", "ada"), (3, "message 3", ""),
                (4, "message 4 for @bob", ""), (5, "message 5", "")]
            info = await ada.room_info("dev")
            assert (info.topic, info.slow_mode_s, info.last_seq) == ("the dev room", 2, 5)
            assert (await ada.send("dev", "after the move")).seq == 6
            reopened = await ada.join("old")  # numbering goes on past the deleted room
            assert reopened.created and reopened.first_seq == 4
            assert (await ada.send("old", "new old")).seq == 4
            dm = await ada.dm("bob", "on postgresql now")
            assert dm.id == source.last_dm_id + 1
        carol = harness.new_client()
        await carol.connect()
        try:
            reply = await carol.login("carol", DEFAULT_PASSWORD)
            assert [m.text for m in reply.pending] == ["carol, are you there?",
                                                       "second one"]
            assert [(d.peer, d.unread, d.last_id) for d in reply.dm_reads] == [
                ("ada", 2, source.last_dm_id)]
            history = await carol.dm_history("ada")
            assert [m.text for m in history.messages] == ["carol, are you there?",
                                                          "second one"]
        finally:
            await carol.close()
        bob = harness.new_client()
        await bob.connect()
        try:
            reply = await bob.login("bob", DEFAULT_PASSWORD)
            reads = {r.room: r for r in reply.room_reads}
            assert reads["dev"].read_seq == 3 and reads["dev"].mentions == 1
            assert not reply.dm_reads or all(d.peer != "ada" or d.unread == 1
                                             for d in reply.dm_reads)
        finally:
            await bob.close()
        by_token = harness.new_client()
        await by_token.connect()
        try:
            assert (await by_token.login("ada", token=source.token)).name == "ada"
        finally:
            await by_token.close()
        async with harness.client("eve", register=False) as eve:
            with pytest.raises(RequestFailed) as banned:
                await eve.join("dev")
            assert banned.value.status == 403
        frank = harness.new_client()
        await frank.connect()
        try:
            with pytest.raises(RequestFailed) as refused:
                await frank.login("frank", DEFAULT_PASSWORD)
            assert refused.value.status == 403
        finally:
            await frank.close()
        async with harness.client("root", register=False) as root:
            users = {u.name: u for u in (await root.users()).users}
            assert users["dave"].quota_bytes == 5_000_000 and users["quizbot"].bot
            kinds = {(b.kind, b.room, b.name) for b in (await root.bans()).bans}
            assert kinds == {("ban", "dev", "eve"), ("ban", "", "frank"),
                             ("mute", "", "dave")}
            audit = (await root.audit(limit=100)).entries
            assert {"delete_room", "quota", "disable", "enable", "ban", "mute",
                    "delete"} <= {e.action for e in audit}
            copied = _sqlite_count(db, "audit_log")
            assert sorted(e.id for e in audit) == list(range(1, copied + 1))  # their ids
            await root.set_quota("dave", None)  # a new entry takes the next id
            assert (await root.audit(limit=1)).entries[0].id == copied + 1

    with running_broker(pg_url, admins=["root"]) as harness:
        run(carry_on(harness))


def test_migrate_reports_its_progress_in_rows(source: Source, tmp_path: Path,
                                              pg_url: str) -> None:
    """zchat admin migrate's progress line: the total (every table's rows, read in the
    snapshot) first, then the rows copied after each batch, ending at the total."""
    db = _copy(source, tmp_path)
    totals: list[int] = []
    copied: list[int] = []
    summary = transfer.migrate(db, pg_url, progress=copied.append, total=totals.append)
    expected = sum(_sqlite_count(db, table) for table in transfer.TABLES)
    assert totals == [expected] and expected == sum(summary.rows.values())
    assert copied == sorted(copied) and copied[-1] == expected


def test_migrate_keeps_scrypt_and_argon2id_hashes_as_they_are(
        source: Source, tmp_path: Path, pg_url: str) -> None:
    """A file of an older zchat holds scrypt hashes beside Argon2id ones (issue 18): the
    copy carries each byte for byte, and on PostgreSQL the scrypt one still logs in and
    is only then replaced by an Argon2id hash (tests/test_password_argon2.py)."""
    db = _copy(source, tmp_path)
    old = hash_password_scrypt(DEFAULT_PASSWORD, 1024)
    with contextlib.closing(sqlite3.connect(db, isolation_level=None)) as conn:
        conn.execute("UPDATE accounts SET password_hash = ? WHERE key = 'carol'", (old,))
        hashes = dict(conn.execute("SELECT key, password_hash FROM accounts").fetchall())
    assert hashes["carol"] == old and hashes["bob"].startswith("$argon2id$v=19$")
    ok(zchat(tmp_path, "admin", "migrate", "--db", str(db), "--to", pg_url))
    with psycopg.connect(pg_url) as conn:
        assert dict(conn.execute("SELECT key, password_hash FROM accounts").fetchall()) \
            == hashes

    async def log_in_carol(harness: Harness) -> None:
        carol = harness.new_client()
        await carol.connect()
        try:
            assert (await carol.login("carol", DEFAULT_PASSWORD)).name == "carol"
        finally:
            await carol.close()

    with running_broker(pg_url, admins=["root"]) as harness:
        run(log_in_carol(harness))
    with psycopg.connect(pg_url) as conn:
        now = dict(conn.execute("SELECT key, password_hash FROM accounts").fetchall())
    assert now["carol"].startswith("$argon2id$v=19$m=1024,t=1,p=1$")
    assert {k: v for k, v in now.items() if k != "carol"} == \
        {k: v for k, v in hashes.items() if k != "carol"}


def test_migrate_refuses_a_filled_target_and_changes_nothing(
        source: Source, tmp_path: Path, pg_url: str) -> None:
    db = _copy(source, tmp_path)
    ok(zchat(tmp_path, "admin", "migrate", "--db", str(db), "--to", pg_url))
    with psycopg.connect(pg_url) as conn:
        before = conn.execute("SELECT count(*), max(seq) FROM messages").fetchone()
    err = failed(zchat(tmp_path, "admin", "migrate", "--db", str(db), "--to", pg_url))
    assert "already holds zchat data (rows in accounts, rooms" in err
    assert "nothing was changed" in err
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*), max(seq) FROM messages").fetchone() == before


def test_migrate_into_a_new_database_makes_the_schema(
        source: Source, tmp_path: Path, postgres_server: PostgresServer) -> None:
    db = _copy(source, tmp_path)
    with postgres_server.database(empty=True) as url:
        result = ok(zchat(tmp_path, "admin", "migrate", "--data-dir", str(db.parent),
                          "--to", url))
        assert f"copied {db} into {url}:" in result.stdout
        with psycopg.connect(url) as conn:
            assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (8,)
            # the identity columns go on past every id SQLite gave
            conn.execute("INSERT INTO audit_log(time_ms, actor, action) VALUES (1, 'x', 'y')")
            new_id = conn.execute("SELECT max(id) FROM audit_log").fetchone()
            assert new_id == (_sqlite_count(db, "audit_log") + 1,)
            conn.rollback()


def test_migrate_refuses_a_file_a_running_broker_holds(
        source: Source, tmp_path: Path, pg_url: str) -> None:
    broker, _lines = start_broker(tmp_path)
    try:
        db = broker.data_dir / "zchat.db"
        err = failed(zchat(tmp_path, "admin", "migrate", "--db", str(db), "--to", pg_url))
        assert f"a zchat broker is running on {broker.data_dir.resolve()}: stop it first" \
            in err
    finally:
        stop_broker(broker)
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (0,)


def test_migrate_refuses_an_older_schema_and_leaves_the_file(
        tmp_path: Path, pg_url: str) -> None:
    db = tmp_path / "old.db"
    with sqlite3.connect(db, isolation_level=None) as conn:
        for version in range(6):
            for statement in migrations.sql_statements(migrations.MIGRATIONS[version]):
                conn.execute(statement)
        conn.execute("PRAGMA user_version = 6")
    conn.close()
    before = _digest(db)
    err = failed(zchat(tmp_path, "admin", "migrate", "--db", str(db), "--to", pg_url))
    assert ("has schema version 6, older than this zchat's "
            f"{migrations.SCHEMA_VERSION}: upgrade it first") in err
    assert _digest(db) == before
    with sqlite3.connect(db, isolation_level=None) as conn:
        conn.execute(f"PRAGMA user_version = {migrations.SCHEMA_VERSION + 1}")
    conn.close()
    err = failed(zchat(tmp_path, "admin", "migrate", "--db", str(db), "--to", pg_url))
    assert f"newer than this zchat's {migrations.SCHEMA_VERSION}" in err


def test_migrate_wants_a_postgresql_url(source: Source, tmp_path: Path) -> None:
    db = _copy(source, tmp_path)
    err = failed(zchat(tmp_path, "admin", "migrate", "--db", str(db), "--to",
                       str(tmp_path / "other.db")))
    assert "--to must be a PostgreSQL URL" in err


def test_the_copy_lists_every_table_of_both_schemas(
        source: Source, pg_url: str) -> None:
    """transfer.TABLES names every zchat table of the SQLite schema and of the PostgreSQL
    schema, with the same columns: a new table or column in one schema and not the
    other fails here before it fails a migration."""
    with sqlite3.connect(f"file:{source.path}?mode=ro", uri=True) as src:
        assert transfer._sqlite_tables(src) == set(transfer.TABLES)
        with psycopg.connect(pg_url) as conn:
            columns = transfer._check_schemas(src, transfer._pg_columns(conn))
    assert set(columns) == set(transfer.TABLES)


def test_migrate_refuses_a_target_a_broker_runs_on(
        source: Source, tmp_path: Path, pg_url: str) -> None:
    db = _copy(source, tmp_path)
    with running_broker(pg_url):
        err = failed(zchat(tmp_path, "admin", "migrate", "--db", str(db), "--to", pg_url))
    assert f"a zchat broker is running on {pg_url}: stop every broker on it" in err
    with psycopg.connect(pg_url) as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (0,)
