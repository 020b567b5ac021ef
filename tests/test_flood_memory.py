"""A junk flood from many short-lived CURVE connections gives its memory back (a tester's
MEDIUM: docs/security.md "Junk from short-lived connections").

A real ``zchat broker`` on loopback TCP with CURVE, as shipped; FLOODERS processes each
run the tester's fuzzer (tests/floods.py ``junk_flood``: random frames, a new connection
1 % of the time) for FLOOD_S, while an honest CURVE client PINGs throughout. The flood
grew the broker (libzmq queued the junk faster than the loop read it, most of it from
connections already gone, each request served and its reply refused); once read, the
memory was free but glibc kept it: the broker stayed at its peak for ever (45 MB -> 565
MB in the tester's 30 s run, all of it kept). Now requests of peers known to be gone are
dropped unread and the guard's thread trims what was freed, so the broker's resident size
must come back near where it started.

Nothing sleeps to wait for a socket: the honest PINGs are awaited with deadlines, the
resident size is read at a pace until a deadline.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import zmq
from conftest import Proc, running_tcp_broker
from floods import Pinger, junk_command, memory_kib

from zchat.broker import connections
from zchat.broker.conntrack import RETAINED_TRIM_BYTES, RETAINED_TRIM_EVERY_S

#: Fuzzer processes and how long they run (the tester ran 3-4 for 30 s).
FLOODERS = 4
FLOOD_S = 6.0
#: How far above its size before the flood the broker may stay once it is over (MiB):
#: what the guard leaves untrimmed above its floor (RETAINED_TRIM_BYTES; the floor is at
#: most the size before the flood), and a little. Unfixed, it stayed at its peak: 23-32
#: MiB above here after 5 s, 300-450 MB after 30 s.
BOUND_MIB = RETAINED_TRIM_BYTES // 2**20 + 4
#: How long the broker has to come back under the bound after the flood ends: it reads
#: what libzmq queued (a few seconds at most here), then trims within
#: RETAINED_TRIM_EVERY_S (2 s).
SETTLE_S = 8.0


def test_a_junk_flood_from_short_lived_connections_gives_its_memory_back(
        tmp_path: Path, ctx: zmq.Context[Any]) -> None:
    with running_tcp_broker(tmp_path, 'log_level = "info"\n') as broker:
        key = next(line for line in broker.process.stdout if "public key:" in line) \
            .split()[-1].encode()
        pid = broker.process.popen.pid
        with Pinger(ctx, broker.router, key, every_s=0.05, timeout_s=10.0) as honest:
            before = memory_kib(pid)["VmRSS"]
            flooders = [Proc(junk_command(broker.router, key, FLOOD_S, seed), {})
                        for seed in range(FLOODERS)]
            peak = before
            pace = threading.Event()
            try:
                while any(f.popen.poll() is None for f in flooders):
                    peak = max(peak, memory_kib(pid)["VmRSS"])
                    pace.wait(0.05)
                figures = [json.loads(f.wait_line("stdout", "sent", timeout_s=10))
                           for f in flooders]
            finally:
                for f in flooders:
                    f.kill()
            sent = sum(f["sent"] for f in figures)
            assert sent > 10_000, figures  # the flood ran
            deadline = time.monotonic() + SETTLE_S
            while (now := memory_kib(pid)["VmRSS"]) > before + BOUND_MIB * 1024 \
                    and time.monotonic() < deadline:
                peak = max(peak, now)
                pace.wait(0.1)
            grown, kept = (peak - before) // 1024, (now - before) // 1024
            assert now <= before + BOUND_MIB * 1024, (
                f"the broker kept {kept} MiB of the {grown} MiB the flood grew it by "
                f"{SETTLE_S} s after it ended ({sent:,} messages sent)")
            # the honest client was served throughout and still is
            assert honest.error is None, honest.error
            assert honest.ping_once(timeout_s=5.0) < 5.0
            assert len(honest.rtts) > 10
        print(f"flood: {sent:,} messages; broker {before // 1024} MiB -> peak "
              f"{peak // 1024} MiB -> {now // 1024} MiB; honest PING worst "
              f"{max(honest.rtts):.2f} s")


def test_memory_kept_after_a_flood_is_trimmed_while_the_broker_stays_above_its_floor(
        monkeypatch: pytest.MonkeyPatch, ctx: zmq.Context[Any]) -> None:
    # The policy alone (the guard's thread is not started; the clock is an argument):
    # freed memory the loop never reported (no cut) is trimmed every
    # RETAINED_TRIM_EVERY_S while the resident size stands RETAINED_TRIM_BYTES above the
    # lowest it has been after a trim. Without it, the flood above kept its peak for ever
    # whenever the loop fell behind (the tester's 565 MB).
    trims: list[int] = []

    def malloc_trim() -> bool:
        trims.append(1)
        return True

    monkeypatch.setattr(connections, "malloc_trim", malloc_trim)
    guard = connections.ConnectionGuard(ctx, connections.Limits.from_settings(100, 10))
    floor = 10 * 2**30  # above this process's size, which the first trim reads
    guard._floor = floor
    guard._trim_retained(floor + RETAINED_TRIM_BYTES, 100.0)
    assert trims == []  # not above it
    guard._trim_retained(floor + RETAINED_TRIM_BYTES + 1, 100.0)
    assert len(trims) == 1
    guard._trim_retained(floor + 2 * RETAINED_TRIM_BYTES, 100.0 + RETAINED_TRIM_EVERY_S / 2)
    assert len(trims) == 1  # at most every RETAINED_TRIM_EVERY_S
    guard._trim_retained(floor + 2 * RETAINED_TRIM_BYTES, 100.0 + RETAINED_TRIM_EVERY_S)
    assert len(trims) == 2  # and again for as long as it stays up
    assert guard._floor < floor  # the resident size after a trim lowers the floor
    guard._trim_retained(guard._floor + RETAINED_TRIM_BYTES, 200.0)
    assert len(trims) == 2
