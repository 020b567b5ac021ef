"""History (issue 7): HISTORY of the last 100 messages and of a page of 100 deep inside a
room of 1,000,000 messages (quick: 100,000), over a real broker.

The room is written straight into a fresh SQLite file before the broker starts: the
schema comes from zchat.store.Store (its migrations, unchanged), then one transaction
with ``synchronous = OFF`` inserts the room, its writer and the messages (100-byte texts,
sequence numbers 1..N, one second apart). The broker is then started on that data
directory; a reader registers, logs in and JOINs, and times each HISTORY from the send of
the request to the arrival of its reply (decoding and checking the page happen after the
clock stops: the 100 sequence numbers must be exactly the ones asked for). Deep page:
``before = N / 2`` (500,000), i.e. messages 499,900..499,999.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import zmq
from harness import Bench, Row, percentile, secure_with

from zchat import wire as p
from zchat.names import name_key, skeleton
from zchat.store import Store

ROOM = "history"
MESSAGES = 1_000_000
QUICK_MESSAGES = 100_000
PAGE = 100
REPEATS = 500
QUICK_REPEATS = 100
WARMUP = 10
#: The first message's time (UTC ms): 2024-01-01.
T0_MS = 1_704_067_200_000


def build_room(db: Path, messages: int) -> dict[str, Any]:
    """Create ``db`` with zchat's schema and a room ``ROOM`` of ``messages`` messages
    from the account "writer"; returns the build time (s) and the file size (bytes)."""
    t0 = time.perf_counter()
    Store(db).close()  # the schema, by zchat's own migrations
    room, writer = name_key(ROOM), name_key("writer")
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA synchronous = OFF")
        conn.execute("BEGIN")
        conn.execute("INSERT INTO accounts(key, name, skeleton, password_hash, created_ms) "
                      "VALUES (?, ?, ?, '!', ?)", (writer, "writer", skeleton("writer"), T0_MS))
        conn.execute("INSERT INTO rooms(key, name, skeleton, last_seq, creator, created_ms) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     (room, ROOM, skeleton(ROOM), messages, writer, T0_MS))
        conn.execute("INSERT INTO members(room_key, account_key, joined_ms) VALUES (?, ?, ?)",
                     (room, writer, T0_MS))
        conn.execute("INSERT INTO room_roles(room_key, account_key, role) "
                     "VALUES (?, ?, 'owner')", (room, writer))

        def rows() -> Iterator[tuple[Any, ...]]:
            pad = "x" * 100
            for seq in range(1, messages + 1):
                text = f"message {seq} "
                yield (room, seq, T0_MS + seq * 1000, "writer", "text",
                       text + pad[len(text):])

        conn.executemany("INSERT INTO messages(room_key, seq, time_ms, sender, kind, text) "
                         "VALUES (?, ?, ?, ?, ?, ?)", rows())
        conn.execute("COMMIT")
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    finally:
        conn.close()
    return {"messages": messages, "build_s": time.perf_counter() - t0,
            "db_bytes": db.stat().st_size}


class Reader:
    """A logged-in member on a DEALER that times request -> reply round trips."""

    def __init__(self, ctx: zmq.Context[Any], router: str, key: bytes | None) -> None:
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        secure_with(self.dealer, key)
        self.dealer.connect(router)
        self.n = 0
        self.call(p.Register(name="reader", password="reader-password"))
        self.call(p.Login(name="reader", password="reader-password"))
        self.call(p.Join(room=ROOM))

    def timed(self, req: p.Request) -> tuple[float, Any]:
        """(seconds from send to reply, decoded reply). Raises RuntimeError on ERROR."""
        self.n += 1
        rid = b"%d" % self.n
        frames = p.encode_request(rid, req)
        t0 = time.perf_counter()
        self.dealer.send_multipart(frames)
        while True:
            if not self.dealer.poll(30_000):
                raise RuntimeError(f"no reply to {req.TYPE} in 30 s")
            reply = self.dealer.recv_multipart()
            if reply[1] == rid:
                break
        elapsed = time.perf_counter() - t0
        _rid, value = p.decode_from_broker(reply, {rid: req.REPLY})
        if isinstance(value, p.Error):
            raise RuntimeError(f"{req.TYPE}: {value.status} {value.reason}")
        return elapsed, value

    def call(self, req: p.Request) -> Any:
        return self.timed(req)[1]

    def close(self) -> None:
        self.dealer.close()


def fetch_times(reader: Reader, req: p.FetchHistory, expected: list[int],
                repeats: int) -> list[float]:
    """``repeats`` timed HISTORY requests (after WARMUP untimed ones), each page checked
    against ``expected`` sequence numbers; the times in ms, ascending."""
    times = []
    for n in range(WARMUP + repeats):
        elapsed, page = reader.timed(req)
        seqs = [m.seq for m in page.messages]
        if seqs != expected:
            raise RuntimeError(f"HISTORY {req}: got seqs {seqs[:3]}..{seqs[-3:]} "
                               f"({len(seqs)}), expected {expected[0]}..{expected[-1]}")
        if n >= WARMUP:
            times.append(elapsed * 1000)
    return sorted(times)


def history(bench: Bench) -> list[Row]:
    messages = QUICK_MESSAGES if bench.quick else MESSAGES
    repeats = QUICK_REPEATS if bench.quick else REPEATS
    data_dir = bench.scratch("history")
    built = build_room(data_dir / "zchat.db", messages)
    deep = messages // 2
    with bench.broker(data_dir=data_dir) as broker:
        reader = Reader(bench.ctx, broker.router, broker.public_key)
        try:
            last = fetch_times(reader, p.FetchHistory(room=ROOM, limit=PAGE),
                               list(range(messages - PAGE + 1, messages + 1)), repeats)
            inside = fetch_times(reader, p.FetchHistory(room=ROOM, before=deep, limit=PAGE),
                                 list(range(deep - PAGE, deep)), repeats)
        finally:
            reader.close()
    raw = {**built, "repeats": repeats, "page": PAGE, "deep_before": deep,
           "last_ms": last, "deep_ms": inside}
    room = f"{messages:,}-message room"
    rows = []
    for label, times, where in (("last 100", last, ""),
                                ("100 before", inside, f" {deep:,}")):
        for q in (50, 99):
            row = Row(f"{room}: {label}{where} p{q}", percentile(times, q), "ms")
            if label == "last 100" and q == 99 and messages >= MESSAGES:
                row.target, row.met = "< 5 ms", row.value < 5.0
            rows.append(row)
    rows.append(Row(f"{room}: built in (direct SQLite, not timed by the issue)",
                    built["build_s"], "s", raw=raw))
    return rows


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {"history": history}
