"""The broker's hot paths without sockets: BrokerCore on a real SQLite file, in process.

What one request costs the broker's loop in CPU, apart from ZeroMQ and the clients:

- SEND of a 100-byte message with a client message id (as every zchat client sends), in a
  room already holding ``ROOM_MESSAGES`` messages, committed in groups of ``GROUP`` as the
  loop does (docs/PROTOCOL.md §14, group commit);
- PING of a session in 2 rooms (every session sends one per heartbeat interval);
- HISTORY of the last 100 messages.

Each figure is the median of ``ROUNDS`` timed rounds, in microseconds per request. With
ZCHAT_BENCH_PROFILE=DIR in the environment a cProfile of each path is written there
(``python -m pstats DIR/core-send.prof``); docs/PERFORMANCE.md shows their top lines.
"""

from __future__ import annotations

import cProfile
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from harness import Bench, Row

from zchat import wire as p
from zchat.config import BrokerConfig
from zchat.core import BrokerCore, Offload
from zchat.store import Store

ROOM_MESSAGES = 100_000
GROUP = 200
ROUNDS = 5


class _Core:
    """A BrokerCore with one logged-in session ``alice`` in rooms lobby and bench."""

    def __init__(self, path: Path, messages: int) -> None:
        self.store = Store(path)
        self.core = BrokerCore(self.store, BrokerConfig(send_rate_per_s=0, read_rate_bytes_per_s=0,
                                                       argon2_memory_kib=1024,
                                                       argon2_time_cost=1),
                               "inproc://bench", 0)
        self.rid = b"\x00bench"
        self.n = 0
        self.call(p.Register(name="alice", password="password1"))
        self.call(p.Login(name="alice", password="password1"))
        self.call(p.Join(room="bench"))
        self.store.begin_group()
        for i in range(messages):
            self.store.post_message("bench", "alice", "text", "y" * 100, f"seed-{i}", 0)
        self.store.commit_group()
        self.core.last_seq["bench"] = messages

    def call(self, request: p.Request) -> list[Any]:
        self.n += 1
        now = time.monotonic()
        out: list[Any] = []
        for action in self.core.handle(self.rid, p.encode_request(str(self.n).encode(),
                                                                  request), now, 0):
            if isinstance(action, Offload):
                out += self.core.complete(action.job_id, action.work(), now, 0)
            else:
                out.append(action)
        return out

    def grouped(self, frames: list[list[bytes]]) -> None:
        """Handle ``frames`` in groups of GROUP, as the loop does."""
        handle, rid, store = self.core.handle, self.rid, self.store
        for start in range(0, len(frames), GROUP):
            store.begin_group()
            for f in frames[start:start + GROUP]:
                handle(rid, f, time.monotonic(), 0)
            store.commit_group()


def _time(prepare: Callable[[], list[list[bytes]]],
          work: Callable[[list[list[bytes]]], None]) -> float:
    """Median over ROUNDS of microseconds per request; each round's requests are
    encoded by ``prepare`` before its clock starts."""
    rounds = []
    for _ in range(ROUNDS):
        batch = prepare()
        t0 = time.perf_counter()
        work(batch)
        rounds.append((time.perf_counter() - t0) / len(batch) * 1e6)
    return statistics.median(rounds)


def core_paths(bench: Bench) -> list[Row]:
    messages = 10_000 if bench.quick else ROOM_MESSAGES
    count = 1_000 if bench.quick else 5_000
    core = _Core(bench.scratch("core") / "zchat.db", messages)
    sends = iter(range(10**9))

    def sends_() -> list[list[bytes]]:  # a new cmid each: none is a retry
        return [p.encode_request(b"1", p.Send(room="bench", text="x" * 100,
                                              cmid=f"c{next(sends)}")) for _ in range(count)]

    ping = p.encode_request(b"1", p.Ping())
    history = p.encode_request(b"1", p.FetchHistory(room="bench", limit=100))
    paths: dict[str, Callable[[], list[list[bytes]]]] = {
        "send": sends_, "ping": lambda: [ping] * count,
        "history": lambda: [history] * (count // 10)}
    profile_dir = os.environ.get(
        "ZCHAT_BENCH_PROFILE")
    rows = []
    for name, prepare in paths.items():
        us = _time(prepare, core.grouped)
        n = len(prepare())
        if profile_dir:
            Path(profile_dir).mkdir(parents=True, exist_ok=True)
            cProfile.runctx("work(batch)", {}, {"work": core.grouped, "batch": prepare()},
                            str(Path(profile_dir) / f"core-{name}.prof"))
        rows.append(Row(f"broker core CPU per {name.upper()}"
                        + (" (100-byte text, cmid)" if name == "send" else "")
                        + (" (last 100)" if name == "history" else ""),
                        round(us, 1), "us",
                        raw={"us_per_request": us, "requests": n, "rounds": ROUNDS,
                             "room_messages": messages, "group": GROUP}))
    core.store.close()
    bench.note(f"core: BrokerCore in process on a real SQLite file, room of {messages:,} "
               f"messages, groups of {GROUP}; no sockets (what the loop spends per request)")
    return rows


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {"core": core_paths}
