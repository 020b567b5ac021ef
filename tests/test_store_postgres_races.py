"""Two brokers' stores writing one PostgreSQL database at once, where the order of their
commits matters (issue 16, docs/cluster.md "What differs from SQLite"): a DM
conversation's ids in commit order, one row per client message id whichever broker takes
it, and deadlocks and isolation levels that end in a clear 503 or nothing at all, never
a wrong seq or id.

Each race is made deterministic: one store's transaction is held open (a group not yet
committed) while the other store's write runs in a thread, and the test waits until
PostgreSQL shows that write waiting on a lock (``pg_stat_activity``) before it lets the
first commit."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
import pytest

from zchat.core.ports import CmidReused, PostedRow, PresenceBusy, dm_pair
from zchat.errors import StorageError
from zchat.store import postgres
from zchat.store.postgres import Store

#: DMs each writer stores in the concurrent paging test.
PER_WRITER = 60
#: Seconds a write may take to show up waiting on a lock, or a blocked write to end.
WAIT_S = 15.0


class Racing:
    """``job`` (a write through ``store``) run in a thread of its own, and what
    PostgreSQL says it waits on."""

    def __init__(self, url: str, store: Store, job: Callable[[], Any]) -> None:
        self.url = url
        self.pid = store.backend_pid
        self.done = threading.Event()
        self.value: Any = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(job,), daemon=True)
        self.thread.start()

    def _run(self, job: Callable[[], Any]) -> None:
        try:
            self.value = job()
        except BaseException as exc:
            self.error = exc
        finally:
            self.done.set()

    def blocked(self, timeout_s: float = WAIT_S) -> bool:
        """True once the write waits on a lock (``wait_event_type = 'Lock'``); False when
        it ended without waiting. Fails the test when neither happens in time."""
        with psycopg.connect(self.url, autocommit=True) as watch:
            deadline = time.monotonic() + timeout_s
            while time.monotonic() < deadline:
                row = watch.execute("SELECT wait_event_type FROM pg_stat_activity "
                                    "WHERE pid = %s", (self.pid,)).fetchone()
                if row is not None and row[0] == "Lock":
                    return True
                if self.done.wait(0.005):
                    return False
        raise AssertionError(f"the write neither waited on a lock nor ended in {timeout_s} s")

    def outcome(self, timeout_s: float = WAIT_S) -> Any:
        """The write's return value; re-raises its error. Fails when it hangs."""
        assert self.done.wait(timeout_s), "the racing write hung"
        self.thread.join(timeout_s)
        if self.error is not None:
            raise self.error
        return self.value


def _count(url: str, sql: str, params: tuple[Any, ...] = ()) -> int:
    with psycopg.connect(url, autocommit=True) as raw:
        row = raw.execute(sql, params).fetchone()
        return int(row[0]) if row else 0


# -- DM ids in commit order, per conversation ------------------------------------------------


def test_a_dm_waits_for_an_uncommitted_lower_id_of_its_conversation(pg_url: str,
                                                                    opened: Any) -> None:
    """Broker A's DM took an id and is not committed; broker B's DM in the same
    conversation waits for A's commit before it takes its id, so a reader paging with
    ``after`` (DM_HISTORY) never sees the higher id before the lower one."""
    a, b, reader = opened(pg_url), opened(pg_url), opened(pg_url)
    pair = dm_pair("alice", "bob")
    a.begin_group()
    first = a.post_dm("alice", "bob", "bob", "first", "", 1, 100)
    second = Racing(pg_url, b, lambda: b.post_dm("bob", "alice", "alice", "second", "",
                                                 2, 100))
    assert second.blocked(), "B's DM did not wait for A's conversation lock"
    with psycopg.connect(pg_url, autocommit=True) as raw:
        waits = raw.execute("SELECT locktype FROM pg_locks WHERE pid = %s AND NOT granted",
                            (second.pid,)).fetchall()
        last_id = raw.execute("SELECT last_value FROM direct_messages_id_seq").fetchone()
    assert waits == [("advisory",)]
    assert last_id == (first.seq,)  # B waits before it takes an id, not after
    seen = [m.id for m in reader.dm_history(pair, None, 0, 100)]
    assert seen == []  # nothing of the conversation is committed yet
    a.commit_group()
    posted = second.outcome()
    assert posted.seq > first.seq
    seen += [m.id for m in reader.dm_history(pair, None, max(seen, default=0), 100)]
    assert seen == [first.seq, posted.seq]
    alice = reader.dm_read("alice", "bob")
    assert alice is not None and (alice.last_id, alice.unread) == (posted.seq, 1)


def test_another_conversation_does_not_wait(pg_url: str, opened: Any) -> None:
    a, b = opened(pg_url), opened(pg_url)
    a.begin_group()
    a.post_dm("alice", "bob", "bob", "held", "", 1, 100)
    other = Racing(pg_url, b, lambda: b.post_dm("carol", "dave", "dave", "free", "", 2, 100))
    assert not other.blocked()
    assert other.outcome().duplicate is False
    a.commit_group()


def test_a_reader_paging_after_misses_no_dm_of_two_writers(pg_url: str,
                                                           opened: Any) -> None:
    """Two stores write one conversation in groups of five (one transaction each, some
    rolled back) while a third pages it with ``after`` as a client's DM_HISTORY would:
    the reader gets every committed DM exactly once, in ascending id order."""
    a, b, reader = opened(pg_url), opened(pg_url), opened(pg_url)
    pair = dm_pair("alice", "bob")
    committed: list[int] = []
    lock = threading.Lock()
    writing = threading.Event()
    writers_done = threading.Barrier(3)

    def writer(store: Store, sender: str, recipient: str) -> Callable[[], None]:
        def write() -> None:
            writing.wait(WAIT_S)
            try:
                for group in range(PER_WRITER // 5):
                    store.begin_group()
                    ids = [store.post_dm(sender, recipient, recipient, f"{sender}{group}.{i}",
                                         "", group, 1000).seq for i in range(5)]
                    if group % 4 == 3:
                        store.abort_group()
                        continue
                    store.commit_group()
                    with lock:
                        committed.extend(ids)
            finally:
                writers_done.wait(WAIT_S * 4)
        return write

    threads = [threading.Thread(target=writer(a, "alice", "bob"), daemon=True),
               threading.Thread(target=writer(b, "bob", "alice"), daemon=True)]
    for thread in threads:
        thread.start()
    seen: list[int] = []
    writing.set()
    deadline = time.monotonic() + WAIT_S * 4
    while writers_done.n_waiting < 2 and time.monotonic() < deadline:
        page = reader.dm_history(pair, None, seen[-1] if seen else 0, 7)
        seen += [m.id for m in page]
    writers_done.wait(WAIT_S)
    for thread in threads:
        thread.join(WAIT_S)
    while page := reader.dm_history(pair, None, seen[-1] if seen else 0, 50):
        seen += [m.id for m in page]
    assert len(committed) == 2 * (PER_WRITER - PER_WRITER // 4)
    assert seen == sorted(committed)


# -- a client message id stored once, whichever broker takes it ------------------------------


def test_one_cmid_posted_through_two_brokers_at_once_is_one_message(pg_url: str,
                                                                    opened: Any) -> None:
    a, b = opened(pg_url), opened(pg_url)
    a.ensure_room("dev", "dev", "dev", 0)
    a.begin_group()
    first = a.post_message("dev", "alice", "text", "hello", "c1", 1)
    retry = Racing(pg_url, b, lambda: b.post_message("dev", "alice", "text", "hello",
                                                     "c1", 2))
    assert retry.blocked()
    a.commit_group()
    assert first == PostedRow(1, 1, False)
    assert retry.outcome() == PostedRow(1, 1, True)
    assert _count(pg_url, "SELECT COUNT(*) FROM messages WHERE cmid = 'c1'") == 1
    room = b.get_room("dev")
    assert room is not None and room.last_seq == 1
    assert b.post_message("dev", "alice", "text", "next", "c2", 3).seq == 2  # no gap


def test_a_cmid_whose_first_try_rolled_back_is_stored_by_the_other_broker(
        pg_url: str, opened: Any) -> None:
    a, b = opened(pg_url), opened(pg_url)
    a.ensure_room("dev", "dev", "dev", 0)
    a.begin_group()
    a.post_message("dev", "alice", "text", "hello", "c1", 1)
    retry = Racing(pg_url, b, lambda: b.post_message("dev", "alice", "text", "hello",
                                                     "c1", 2))
    assert retry.blocked()
    a.abort_group()  # a lost batch: its client was never told OK
    assert retry.outcome() == PostedRow(1, 2, False)
    assert _count(pg_url, "SELECT COUNT(*) FROM messages WHERE cmid = 'c1'") == 1


def test_one_dm_cmid_through_two_brokers_at_once_is_one_dm(pg_url: str,
                                                           opened: Any) -> None:
    a, b = opened(pg_url), opened(pg_url)
    a.begin_group()
    first = a.post_dm("alice", "bob", "bob", "psst", "d1", 1, 100)
    retry = Racing(pg_url, b, lambda: b.post_dm("alice", "bob", "bob", "psst", "d1", 2, 100))
    assert retry.blocked()
    a.commit_group()
    assert retry.outcome() == PostedRow(first.seq, 1, True)
    assert _count(pg_url, "SELECT COUNT(*) FROM direct_messages WHERE cmid = 'd1'") == 1
    bob = b.dm_read("bob", "alice")
    assert bob is not None and bob.unread == 1  # counted once


def test_one_dm_cmid_to_another_recipient_at_once_is_refused_as_reused(
        pg_url: str, opened: Any) -> None:
    """Another conversation, so no conversation lock is shared: the wait is the unique
    index's (``ON CONFLICT DO NOTHING`` waits for the other insert's commit)."""
    a, b = opened(pg_url), opened(pg_url)
    a.begin_group()
    a.post_dm("alice", "bob", "bob", "psst", "d1", 1, 100)
    other = Racing(pg_url, b, lambda: b.post_dm("alice", "carol", "carol", "psst", "d1",
                                                2, 100))
    assert other.blocked()
    a.commit_group()
    with pytest.raises(CmidReused):
        other.outcome()
    assert _count(pg_url, "SELECT COUNT(*) FROM direct_messages WHERE cmid = 'd1'") == 1
    assert b.dm_read("carol", "alice") is None  # nothing of the refused DM was kept


def test_the_upgrade_keeps_duplicates_a_race_stored_and_makes_the_cmid_unique(
        pg_url: str, opened: Any) -> None:
    """A database at version 3 that a race gave two rows of one cmid: version 4 keeps
    both messages and leaves the cmid on the first (what a retry is answered with)."""
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute("DROP INDEX messages_by_cmid")
        raw.execute("CREATE INDEX messages_by_cmid ON messages(room_key, sender, cmid) "
                    "WHERE cmid <> ''")
        raw.execute("DROP INDEX dms_by_cmid")
        raw.execute("CREATE INDEX dms_by_cmid ON direct_messages(sender, cmid) "
                    "WHERE cmid <> ''")
        raw.execute("UPDATE zchat_schema SET version = 3")
        raw.execute("INSERT INTO rooms(key, name, skeleton, created_ms, last_seq) "
                    "VALUES ('dev', 'dev', 'dev', 0, 2)")
        for seq in (1, 2):
            raw.execute("INSERT INTO messages(room_key, seq, time_ms, sender, kind, text, "
                        "cmid) VALUES ('dev', %s, %s, 'alice', 'text', 'hi', 'c1')",
                        (seq, seq))
        for time_ms in (1, 2):
            raw.execute("INSERT INTO direct_messages(time_ms, sender, recipient_key, "
                        "recipient, text, delivered, cmid, pair) VALUES (%s, 'alice', "
                        "'bob', 'bob', 'psst', FALSE, 'd1', 'alice\tbob')", (time_ms,))
    store = opened(pg_url)
    assert store.schema_version >= 4
    assert store.post_message("dev", "alice", "text", "hi", "c1", 9) == PostedRow(1, 1, True)
    assert [m.seq for m in store.history("dev", None, None, 10)] == [1, 2]
    assert store.post_dm("alice", "bob", "bob", "psst", "d1", 9, 100).time_ms == 1
    assert _count(pg_url, "SELECT COUNT(*) FROM direct_messages") == 2
    with psycopg.connect(pg_url, autocommit=True) as raw, \
            pytest.raises(psycopg.errors.UniqueViolation):
        raw.execute("INSERT INTO messages(room_key, seq, time_ms, sender, kind, text, cmid) "
                    "VALUES ('dev', 3, 3, 'alice', 'text', 'hi', 'c1')")


# -- deadlocks and isolation levels ------------------------------------------------------------


def test_a_deadlock_between_a_conversation_and_a_room_refuses_one_write_only(
        pg_url: str, opened: Any) -> None:
    """Broker A's batch holds room #one and then writes a DM of alice and bob; broker
    B's holds that conversation and then posts to #one. PostgreSQL fails one of the two
    writes (503); the rest of both batches commits, with gap-free seqs and ids in
    commit order."""
    a, b = opened(pg_url), opened(pg_url)
    for store in (a, b):
        store._db.execute("SET deadlock_timeout = '50ms'")
    a.ensure_room("one", "one", "one", 0)
    a.begin_group()
    b.begin_group()
    a.post_message("one", "alice", "text", "a-room", "", 1)     # a holds #one
    b_dm = b.post_dm("bob", "alice", "alice", "b-dm", "", 1, 100)  # b holds the pair
    outcome: dict[str, Any] = {}

    def then(name: str, job: Callable[[], Any], store: Store) -> Callable[[], None]:
        def run() -> None:
            try:
                outcome[name] = job()
            except StorageError as exc:
                outcome[name] = exc
            store.commit_group()
        return run

    threads = [
        threading.Thread(target=then("a", lambda: a.post_dm("alice", "bob", "bob", "a-dm",
                                                            "", 2, 100), a), daemon=True),
        threading.Thread(target=then("b", lambda: b.post_message("one", "bob", "text",
                                                                 "b-room", "", 2), b),
                         daemon=True)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S)
    assert not any(thread.is_alive() for thread in threads), "a writer hung"
    refused = sorted(name for name, value in outcome.items()
                     if isinstance(value, StorageError))
    assert len(refused) == 1, outcome
    assert "deadlock" in str(outcome[refused[0]])
    room = [(m.seq, m.text) for m in a.history("one", None, None, 10)]
    dms = [(m.id, m.text) for m in a.dm_history(dm_pair("alice", "bob"), None, None, 10)]
    if refused == ["a"]:
        assert room == [(1, "a-room"), (2, "b-room")]
        assert dms == [(b_dm.seq, "b-dm")]
    else:
        assert room == [(1, "a-room")]
        assert [text for _id, text in dms] == ["b-dm", "a-dm"]
        assert dms[0][0] < dms[1][0]


def test_a_database_defaulting_to_serializable_still_gets_read_committed_writes(
        pg_url: str, opened: Any) -> None:
    """The store's waits on locks read what the other broker committed meanwhile, which
    needs READ COMMITTED; an operator's ``default_transaction_isolation`` of
    serializable would turn every such race into a serialization failure. Two stores
    then posting one room and one conversation at once: no failure, no gap."""
    name = pg_url.rsplit("/", 1)[1]
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute(f"ALTER DATABASE {name} SET default_transaction_isolation = serializable")
    a, b = opened(pg_url), opened(pg_url)
    for store in (a, b):
        assert store._db.execute("SHOW default_transaction_isolation").fetchone() == \
            ("read committed",)
    a.ensure_room("dev", "dev", "dev", 0)
    errors: list[BaseException] = []

    def writer(store: Store, name: str) -> None:
        try:
            for i in range(40):
                store.begin_group()
                store.post_message("dev", name, "text", f"{name}{i}", f"{name}{i}", i)
                store.post_dm(name, "carol", "carol", f"{name}{i}", f"{name}{i}", i, 100)
                store.commit_group()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(s, n), daemon=True)
               for s, n in ((a, "alice"), (b, "bob"))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(WAIT_S * 4)
    assert not errors, errors
    assert [m.seq for m in a.history("dev", None, None, 100)] == list(range(1, 81))


# -- a broker stuck with a batch open ------------------------------------------------------


def test_the_store_bounds_lock_waits_and_idle_transactions(pg_url: str, opened: Any) -> None:
    store = opened(pg_url)
    assert store._db.execute("SHOW lock_timeout").fetchone() == ("2s",)
    assert store._db.execute("SHOW idle_in_transaction_session_timeout").fetchone() == \
        ("5s",)


def test_a_write_waiting_behind_a_stuck_broker_is_503_not_a_hang(
        pg_url: str, opened: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Broker A stopped with a batch open holds #dev's row; broker B's message to #dev
    gives up after LOCK_TIMEOUT_MS (503, only that write: the rest of B's batch commits)
    instead of holding B's loop until A runs again."""
    monkeypatch.setattr(postgres, "LOCK_TIMEOUT_MS", 300)
    monkeypatch.setattr(postgres, "IDLE_IN_TRANSACTION_TIMEOUT_MS", 60_000)
    a, b = opened(pg_url), opened(pg_url)
    for room in ("dev", "ops"):
        a.ensure_room(room, room, room, 0)
    a.begin_group()
    a.post_message("dev", "alice", "text", "held", "", 1)
    b.begin_group()
    started = time.monotonic()
    with pytest.raises(StorageError, match="lock timeout"):
        b.post_message("dev", "bob", "text", "waits", "b1", 2)
    waited = time.monotonic() - started
    assert 0.25 < waited < 2.0, waited
    assert b.post_message("ops", "bob", "text", "elsewhere", "b2", 3).seq == 1
    b.commit_group()
    a.commit_group()
    assert [m.text for m in b.history("dev", None, None, 10)] == ["held"]
    assert [m.text for m in b.history("ops", None, None, 10)] == ["elsewhere"]
    assert b.post_message("dev", "bob", "text", "waits", "b1", 4).seq == 2  # the retry


def test_a_stuck_brokers_open_batch_is_ended_by_the_database(
        pg_url: str, opened: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Past IDLE_IN_TRANSACTION_TIMEOUT_MS PostgreSQL ends the stuck broker's session:
    its locks go, the others' writes go on with the numbers it had taken, and the stuck
    broker, when it runs again, finds its batch lost (503: none of it was acknowledged)
    and carries on with a new connection."""
    monkeypatch.setattr(postgres, "LOCK_TIMEOUT_MS", 20_000)
    monkeypatch.setattr(postgres, "IDLE_IN_TRANSACTION_TIMEOUT_MS", 300)
    a, b = opened(pg_url), opened(pg_url)
    a.ensure_room("dev", "dev", "dev", 0)
    a.begin_group()
    assert a.post_message("dev", "alice", "text", "stuck", "a1", 1).seq == 1
    a.post_dm("alice", "bob", "bob", "stuck too", "", 1, 100)
    assert b.post_message("dev", "bob", "text", "goes on", "", 2).seq == 1
    assert b.post_dm("bob", "alice", "alice", "here", "", 2, 100).duplicate is False
    with pytest.raises(StorageError):
        a.commit_group()
    a.begin_group()
    assert a.post_message("dev", "alice", "text", "stuck", "a1", 3).seq == 2  # its retry
    a.commit_group()
    assert [m.text for m in b.history("dev", None, None, 10)] == ["goes on", "stuck"]
    assert [m.text for m in b.dm_history(dm_pair("alice", "bob"), None, None, 10)] == \
        ["here"]


# -- presence locks and session rows: one order across brokers (docs/cluster.md,
#    "Deadlocks between brokers") -------------------------------------------------------------


def _two_accounts(store: Store) -> None:
    for name in ("amy", "zed"):
        store.create_account(name, name, name, "x", 0)


def test_presence_locks_in_opposite_orders_never_wait_for_each_other(
        pg_url: str, opened: Any) -> None:
    """Two brokers' groups each start sessions of the same two accounts, in opposite
    orders (a mass failover's RESUMEs): before, each held one presence lock and waited
    for the other's (a deadlock, found after PostgreSQL's deadlock_timeout, and a
    presence decided without a count). Now the group whose next key is below one it
    holds does not wait: PresenceBusy at once, nothing changed, and the other group
    goes on and commits."""
    a, b = opened(pg_url), opened(pg_url)
    _two_accounts(a)
    a.begin_group()
    b.begin_group()
    assert a.sessions_held("amy") == 0
    assert b.sessions_held("zed") == 0
    # A waits for zed (above amy, its only lock): in order, so it may
    waiting = Racing(pg_url, a, lambda: a.sessions_held("zed"))
    assert waiting.blocked(), "A did not wait for zed's presence lock"
    started = time.monotonic()
    with pytest.raises(PresenceBusy):  # B may not wait for amy (below zed)
        b.sessions_held("amy")
    assert time.monotonic() - started < 0.5  # no deadlock_timeout
    b.commit_group()  # B's group is intact
    assert waiting.outcome() == 0
    a.commit_group()


def test_a_group_holding_a_session_row_does_not_wait_for_a_presence_lock(
        pg_url: str, opened: Any) -> None:
    """A group that wrote a session's row (a RESUME that needs no presence event) may
    hold what another broker waits for after taking a presence lock: it then only
    takes presence locks that are free."""
    a, b = opened(pg_url), opened(pg_url)
    _two_accounts(a)
    a.holder, b.holder = ("a", 1), ("b", 1)
    a.begin_group()
    a.add_session("t1", "zed", None, "", 1)  # a row, then amy's lock (held by B)
    b.begin_group()
    assert b.sessions_held("amy") == 0
    with pytest.raises(PresenceBusy):
        a.sessions_held("amy")
    b.commit_group()
    a.commit_group()
    assert _count(pg_url, "SELECT count(*) FROM sessions WHERE broker_id = 'a'") == 1


def test_the_reaper_skips_a_row_a_resume_holds_and_lets_it_go_later(
        pg_url: str, opened: Any) -> None:
    """The reaper took the dead broker's rows in one UPDATE and waited for the row a
    RESUME on another broker was taking over, while that RESUME's group waited for a
    row the reaper had taken (a deadlock, or the reaper's lock timeout: "cannot look
    for expired leases"). Now it skips the locked row without waiting; if the RESUME
    rolls back, the row is let go at the next reaping."""
    reaper, resumer = opened(pg_url), opened(pg_url)
    _two_accounts(reaper)
    reaper.presence_grace_ms = resumer.presence_grace_ms = 5_000
    with psycopg.connect(pg_url, autocommit=True) as raw:
        raw.execute("INSERT INTO brokers(id, epoch, lease_until, owner) VALUES "
                    "('dead', 1, clock_timestamp() - interval '1 s', 'x')")
        for token, key in (("t1", "amy"), ("t2", "zed")):
            raw.execute("INSERT INTO sessions(token_sha256, account_key, address, login_ms,"
                        " broker_id, broker_epoch, released_ms) VALUES "
                        "(%s, %s, '', 1, 'dead', 1, 0)", (token, key))
    reaper.holder, resumer.holder = ("r", 1), ("s", 1)
    resumer.begin_group()
    resumer.add_session("t1", "amy", None, "", 1)  # taking t1 over, not committed
    reaper.begin_group()
    started = time.monotonic()
    dead, alone = reaper.reap_brokers(int(time.time() * 1000), 60_000)
    assert time.monotonic() - started < 0.5  # no lock wait
    reaper.commit_group()
    assert (dead, alone) == ([("dead", 1)], [])
    assert _count(pg_url, "SELECT count(*) FROM sessions WHERE broker_id = ''") == 1  # t2
    resumer.abort_group()  # the RESUME failed: t1 is the dead broker's still
    assert _count(pg_url, "SELECT count(*) FROM sessions WHERE broker_id = 'dead'") == 1
    reaper.begin_group()
    assert reaper.reap_brokers(int(time.time() * 1000), 60_000) == ([], [])
    reaper.commit_group()
    assert _count(pg_url, "SELECT count(*) FROM sessions WHERE broker_id = ''") == 2
