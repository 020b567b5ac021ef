"""The stores: the port's behaviour (accounts, rooms, sequence numbers, history, DMs,
read markers, all-or-nothing writes) on SQLite and on PostgreSQL alike (``store_db``,
tests/conftest.py), and what is SQLite's own on a real file (WAL, its migrations, a full
disk, a corrupt file). PostgreSQL's own: tests/test_store_postgres.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from conftest import StoreDb

from zchat.core.facade import domain_refusal
from zchat.core.ports import NameTaken, NoSuchRoom
from zchat.errors import Status, StorageError
from zchat.store import MIGRATIONS, SCHEMA_VERSION, Store
from zchat.store import migrations as store_module


@pytest.fixture
def store(store_db: StoreDb) -> Store:
    """A store on each engine with the accounts alice and bob and the room dev."""
    s = store_db.open()
    s.create_account("alice", "Alice", "a1ice", "hash", now_ms=1)
    s.create_account("bob", "bob", "bob", "hash", now_ms=1)
    s.ensure_room("dev", "dev", "dev", now_ms=1)
    return s


#: The store's own tests on SQLite only (what SQLite does: its pages, its locks).
sqlite_only = pytest.mark.parametrize("store_db", ["sqlite"], indirect=True)


def count(s: Store, table: str) -> int:
    return int(s._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])


# -- opening and migrations ------------------------------------------------------------------


def test_file_store_is_wal_with_full_sync(tmp_path: Path) -> None:
    s = Store(tmp_path / "a.db")
    assert s._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert s._db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
    assert s._db.execute("PRAGMA foreign_keys").fetchone()[0] == 1


def test_schema_version_is_number_of_migrations(tmp_path: Path) -> None:
    s = Store(tmp_path / "a.db")
    assert s.schema_version == len(MIGRATIONS) == SCHEMA_VERSION
    raw = sqlite3.connect(tmp_path / "a.db")
    assert raw.execute("PRAGMA user_version").fetchone()[0] == len(MIGRATIONS)
    raw.close()


def test_reopening_keeps_data_and_does_not_rerun_migrations(store: Store,
                                                            store_db: StoreDb) -> None:
    store.append_message("dev", "Alice", "text", "hi", "", 5)
    store.close()
    # Rerunning migration 0 would fail on CREATE TABLE of an existing table.
    again = store_db.open()
    if store_db.engine == "postgresql":
        from zchat.store import pg_schema
        assert again.schema_version == pg_schema.SCHEMA_VERSION
        return _still_there(again)
    assert again.schema_version == SCHEMA_VERSION
    _still_there(again)


def _still_there(again: Store) -> None:
    assert again.get_account("alice") is not None
    assert again.get_room("dev").last_seq == 1


def test_new_migration_upgrades_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "a.db"
    s = Store(path)
    s.create_account("alice", "Alice", "a1ice", "hash", now_ms=1)
    s.close()
    extra = "CREATE TABLE upgraded (x INTEGER); INSERT INTO upgraded VALUES (7)"
    monkeypatch.setattr(store_module, "MIGRATIONS", (*MIGRATIONS, extra))
    monkeypatch.setattr(store_module, "SCHEMA_VERSION", SCHEMA_VERSION + 1)
    up = Store(path)
    assert up.schema_version == SCHEMA_VERSION + 1
    up.close()
    up = Store(path)  # the new migration must not run twice (the table exists)
    assert up._db.execute("SELECT x FROM upgraded").fetchall() == [(7,)]
    assert up.get_account("alice") is not None


def test_newer_database_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "a.db"
    Store(path).close()
    raw = sqlite3.connect(path)
    raw.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    raw.close()
    with pytest.raises(StorageError) as info:
        Store(path)
    assert info.value.status == Status.UNAVAILABLE
    assert "newer" in info.value.reason


# -- accounts ---------------------------------------------------------------------------------


def test_account_key_and_skeleton_are_unique(store: Store) -> None:
    with pytest.raises(NameTaken) as info:
        store.create_account("alice", "ALICE", "other", "h", now_ms=2)
    assert domain_refusal(info.value).status == Status.CONFLICT
    with pytest.raises(NameTaken) as info:
        store.create_account("a1ice", "a1ice", "a1ice", "h", now_ms=2)
    assert domain_refusal(info.value).status == Status.CONFLICT
    assert count(store, "accounts") == 2
    assert store.account_skeleton_taken("a1ice")
    assert not store.account_skeleton_taken("carol")
    assert store.account_names() == {"alice": ("Alice", False), "bob": ("bob", False)}


def test_create_account_joins_rooms_in_the_same_commit(store: Store) -> None:
    store.create_account("carol", "carol", "caro1", "h", now_ms=2, rooms=("dev",))
    assert store.memberships()["dev"] == {"carol"}
    assert [r.key for r in store.rooms_of("carol")] == ["dev"]


def fail_inserts(store_db: StoreDb, s: Store, table: str) -> None:
    """Make every INSERT into ``table`` fail with an error of the database's own (not a
    constraint): a temporary trigger calling a failing function on SQLite, a trigger
    raising an exception on PostgreSQL."""
    if store_db.engine == "sqlite":
        s._db.create_function("boom", 0, lambda: 1 / 0)
        s._db.execute(f"CREATE TEMP TRIGGER fail_{table} BEFORE INSERT ON {table} "
                      "BEGIN SELECT boom(); END")
        return
    s._db.execute("CREATE FUNCTION boom() RETURNS trigger LANGUAGE plpgsql AS "
                  "$$ BEGIN RAISE EXCEPTION 'boom'; END; $$")
    s._db.execute(f"CREATE TRIGGER fail_{table} BEFORE INSERT ON {table} "
                  "FOR EACH ROW EXECUTE FUNCTION boom()")


def test_create_account_with_a_failing_membership_leaves_no_account(
        store: Store, store_db: StoreDb) -> None:
    fail_inserts(store_db, store, "members")
    with pytest.raises(StorageError):
        store.create_account("carol", "carol", "caro1", "h", now_ms=2, rooms=("dev",))
    assert store.get_account("carol") is None
    assert count(store, "accounts") == 2


# -- rooms ------------------------------------------------------------------------------------


def test_join_room_created_and_joined_flags(store: Store) -> None:
    room, created, joined = store.join_room("ops", "Ops", "ops", "alice", now_ms=3)
    assert (room.name, room.last_seq, created, joined) == ("Ops", 0, True, True)
    room, created, joined = store.join_room("ops", "Ops", "ops", "bob", now_ms=4)
    assert (created, joined) == (False, True)
    room, created, joined = store.join_room("ops", "ops", "ops", "bob", now_ms=5)
    assert (room.name, created, joined) == ("Ops", False, False)
    assert store.memberships()["ops"] == {"alice", "bob"}
    assert [r.key for r in store.rooms_of("bob")] == ["ops"]


def test_room_skeleton_conflict_is_409_and_leaves_nothing(store: Store) -> None:
    store.join_room("dev1", "dev1", "dev1", "alice", now_ms=3)
    rooms, members = count(store, "rooms"), count(store, "members")
    with pytest.raises(NameTaken) as info:
        store.join_room("devl", "devl", "dev1", "bob", now_ms=4)
    assert domain_refusal(info.value).status == Status.CONFLICT
    assert store.get_room("devl") is None
    assert (count(store, "rooms"), count(store, "members")) == (rooms, members)


def test_leave_room_and_list_rooms(store: Store) -> None:
    store.join_room("dev", "dev", "dev", "alice", now_ms=3)
    store.join_room("dev", "dev", "dev", "bob", now_ms=3)
    assert [(r.key, r.members) for r in store.list_rooms()] == [("dev", 2)]
    assert store.leave_room("dev", "bob") is True
    assert store.leave_room("dev", "bob") is False
    assert [(r.key, r.members) for r in store.list_rooms()] == [("dev", 1)]
    assert store.memberships() == {"dev": {"alice"}}


# -- messages ---------------------------------------------------------------------------------


def test_append_message_gapless_per_room(store: Store) -> None:
    store.ensure_room("ops", "ops", "ops", now_ms=1)
    got = [store.append_message("dev" if i % 3 else "ops", "Alice", "text", f"m{i}", "", i)
           for i in range(300)]
    dev = [s for i, s in enumerate(got) if i % 3]
    ops = [s for i, s in enumerate(got) if not i % 3]
    assert dev == list(range(1, 201))
    assert ops == list(range(1, 101))
    assert store.get_room("dev").last_seq == 200
    rows = store.history("dev", None, None, 500)
    assert [r.seq for r in rows] == list(range(1, 201))


def test_append_to_unknown_room_is_404_and_leaves_nothing(store: Store) -> None:
    with pytest.raises(NoSuchRoom) as info:
        store.append_message("nowhere", "Alice", "text", "x", "", 1)
    assert domain_refusal(info.value).status == Status.NOT_FOUND
    assert count(store, "messages") == 0


def test_history_bounds(store: Store) -> None:
    for i in range(1, 8):
        store.append_message("dev", "Alice", "text", f"m{i}", "", 100 + i)

    def page(before: int | None, after: int | None, limit: int) -> list[int]:
        return [r.seq for r in store.history("dev", before, after, limit)]

    assert page(None, None, 50) == [1, 2, 3, 4, 5, 6, 7]
    assert page(None, None, 3) == [5, 6, 7]
    assert page(5, None, 2) == [3, 4]
    assert page(2, None, 10) == [1]
    assert page(1, None, 10) == []
    assert page(None, 2, 3) == [3, 4, 5]
    assert page(None, 6, 10) == [7]
    assert page(None, 7, 10) == []
    [row] = store.history("dev", None, 0, 1)
    assert (row.room, row.seq, row.time_ms, row.sender, row.kind, row.text) == (
        "dev", 1, 101, "Alice", "text", "m1")
    assert store.history("other", None, None, 10) == []


# -- direct messages --------------------------------------------------------------------------


def test_pending_dms_until_acknowledged(store: Store) -> None:
    a = store.store_dm("Alice", "bob", "bob", "one", 10, max_pending=10)
    b = store.store_dm("Alice", "bob", "bob", "two", 12, max_pending=10)
    store.store_dm("bob", "alice", "Alice", "for alice", 13, max_pending=10)
    rows = store.pending_dms("bob")
    assert [(r.id, r.text, r.sender, r.recipient, r.time_ms) for r in rows] == [
        (a, "one", "Alice", "bob", 10), (b, "two", "Alice", "bob", 12)]
    assert [r.id for r in store.pending_dms("bob")] == [a, b]  # reading changes nothing
    assert store.ack_dms("alice", (a,)) == 0                    # not alice's to acknowledge
    assert store.ack_dms("bob", (a, 12345)) == 1
    assert [r.id for r in store.pending_dms("bob")] == [b]
    assert store.ack_dms("bob", ()) == 0
    assert [r.text for r in store.pending_dms("alice")] == ["for alice"]


def test_store_dm_bound_keeps_newest(store: Store) -> None:
    for i in range(6):
        store.store_dm("Alice", "bob", "bob", f"d{i}", i, max_pending=4)
    store.store_dm("bob", "alice", "Alice", "other", 9, max_pending=4)
    assert [r.text for r in store.pending_dms("bob")] == ["d2", "d3", "d4", "d5"]
    assert [r.text for r in store.pending_dms("alice")] == ["other"]


# -- failed writes ----------------------------------------------------------------------------


def fill_disk(s: Store) -> None:
    """Simulate a full disk: the database may not grow beyond its current pages."""
    pages = s._db.execute("PRAGMA page_count").fetchone()[0]
    s._db.execute(f"PRAGMA max_page_count = {pages}")


@sqlite_only
def test_failed_append_leaves_seq_and_rows_unchanged(store: Store) -> None:
    assert store.append_message("dev", "Alice", "text", "kept", "", 1) == 1
    fill_disk(store)
    with pytest.raises(StorageError) as info:
        store.append_message("dev", "Alice", "text", "x" * 50_000, "", 2)
    assert info.value.status == Status.UNAVAILABLE
    assert not store._db.in_transaction
    assert store.get_room("dev").last_seq == 1
    assert [r.text for r in store.history("dev", None, None, 10)] == ["kept"]
    store._db.execute("PRAGMA max_page_count = 1073741823")
    assert store.append_message("dev", "Alice", "text", "next", "", 3) == 2


@sqlite_only
def test_failed_dm_store_leaves_nothing(store: Store) -> None:
    fill_disk(store)
    with pytest.raises(StorageError):
        store.store_dm("Alice", "bob", "bob", "x" * 50_000, 1, max_pending=5)
    assert count(store, "direct_messages") == 0


@sqlite_only
def test_write_while_another_connection_holds_the_lock(store: Store) -> None:
    store._db.execute("PRAGMA busy_timeout = 10")
    other = sqlite3.connect(store.path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StorageError):
            store.append_message("dev", "Alice", "text", "blocked", "", 1)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert store.get_room("dev").last_seq == 0
    assert store.append_message("dev", "Alice", "text", "ok", "", 2) == 1


def test_set_topic_and_unknown_room(store: Store) -> None:
    store.set_topic("dev", "ünïcode topic")
    assert store.get_room("dev").topic == "ünïcode topic"  # type: ignore[union-attr]
    assert [r.topic for r in store.list_rooms()] == ["ünïcode topic"]
    store.set_topic("dev", "")
    assert store.get_room("dev").topic == ""  # type: ignore[union-attr]
    with pytest.raises(NoSuchRoom) as info:
        store.set_topic("nowhere", "x")
    assert domain_refusal(info.value).status == Status.NOT_FOUND


@pytest.mark.parametrize("content", [b"not sqlite\n", b"SQLite format 3\x00" + b"\xff" * 200])
def test_corrupt_file_is_storage_error_naming_the_path(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "zchat.db"
    path.write_bytes(content)
    with pytest.raises(StorageError) as info:
        Store(path)
    assert info.value.reason.startswith(f"cannot open the database {path}: ")
    assert path.read_bytes() == content  # nothing was written over it


def test_corrupt_file_reason_is_sqlites(tmp_path: Path) -> None:
    path = tmp_path / "zchat.db"
    path.write_text("not sqlite\n", encoding="utf-8")
    with pytest.raises(StorageError, match=r"^cannot open the database .*: file is not a "
                                           r"database$"):
        Store(path)


def test_directory_in_place_of_the_file_is_storage_error(tmp_path: Path) -> None:
    with pytest.raises(StorageError, match="cannot open the database"):
        Store(tmp_path)


def test_migration_statements_keep_a_trigger_body_whole() -> None:
    script = """
    CREATE TABLE t (x INTEGER);
    CREATE TRIGGER t_seen AFTER INSERT ON t BEGIN
        UPDATE t SET x = x + 1 WHERE x = NEW.x;
        SELECT 1;
    END;
    ;
    """
    got = list(store_module.sql_statements(script))
    assert got == ["CREATE TABLE t (x INTEGER);",
                   "CREATE TRIGGER t_seen AFTER INSERT ON t BEGIN\n"
                   "        UPDATE t SET x = x + 1 WHERE x = NEW.x;\n"
                   "        SELECT 1;\n    END;"]
    with pytest.raises(ValueError, match="incomplete"):
        list(store_module.sql_statements("CREATE TRIGGER x AFTER INSERT ON t BEGIN SELECT 1;"))


def test_a_version_4_database_upgrades_and_its_rooms_go_on_counting(tmp_path: Path) -> None:
    """The 4 -> 5 migration adds the last_seq trigger; messages stored before it keep
    their numbers and the next message takes the next one."""
    path = tmp_path / "old.db"
    raw = sqlite3.connect(path)
    for script in MIGRATIONS[:4]:
        for statement in store_module.sql_statements(script):
            raw.execute(statement)
    raw.execute("INSERT INTO rooms(key, name, skeleton, last_seq, created_ms) "
                "VALUES ('dev', 'dev', 'dev', 2, 0)")
    raw.executemany("INSERT INTO messages(room_key, seq, time_ms, sender, kind, text) "
                    "VALUES ('dev', ?, 0, 'alice', 'text', ?)", [(1, "one"), (2, "two")])
    raw.execute("PRAGMA user_version = 4")
    raw.commit()
    raw.close()
    store = Store(path)
    assert store.schema_version == SCHEMA_VERSION
    assert store.append_message("dev", "alice", "text", "three", "", 3) == 3
    assert [m.text for m in store.history("dev", None, None, 10)] == ["one", "two", "three"]
    room = store.get_room("dev")
    assert room is not None and room.last_seq == 3
    with pytest.raises(NoSuchRoom) as err:
        store.append_message("nowhere", "alice", "text", "x", "", 4)
    assert domain_refusal(err.value).status == Status.NOT_FOUND


# -- read markers moved by posting (docs/PROTOCOL.md §6.3.1) ---------------------------------


def test_posting_moves_the_senders_marker_once_per_group_and_only_if_committed(
        store: Store) -> None:
    """In a group commit the sender's marker moves once, to the last seq it posted, in the
    group's transaction: visible to a read inside the group, kept by the commit, gone with
    an aborted group; outside a group at once."""
    for account in ("alice", "bob"):
        store.join_room("dev", "dev", "dev", account, now_ms=1)
    store.append_message("dev", "Alice", "text", "one", "", 1, sender_key="alice")
    assert store.room_read("dev", "alice").read_seq == 1  # type: ignore[union-attr]
    store.begin_group()
    for i in range(3):
        store.post_message("dev", "Alice", "text", f"m{i}", f"c{i}", 2, sender_key="alice")
    store.post_message("dev", "bob", "text", "hi", "b1", 2, sender_key="bob")
    assert store.room_read("dev", "alice").read_seq == 4  # type: ignore[union-attr]
    store.post_message("dev", "Alice", "text", "later", "c9", 2, sender_key="alice")
    store.commit_group()
    assert {k: r.read_seq for k, r in store.room_reads("alice").items()} == {"dev": 6}
    assert store.room_read("dev", "bob").read_seq == 5  # type: ignore[union-attr]
    store.begin_group()
    store.post_message("dev", "bob", "text", "lost", "b2", 3, sender_key="bob")
    store.abort_group()
    assert store.room_read("dev", "bob").read_seq == 5  # type: ignore[union-attr]
    store.begin_group()
    store.commit_group()  # a group of nothing moves nothing that was aborted
    assert store.room_read("dev", "bob").read_seq == 5  # type: ignore[union-attr]
