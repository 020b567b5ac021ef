"""How soon a broker of a cluster delivers what another broker stored (docs/cluster.md,
"Bounds"): one run, on this machine, with a real PostgreSQL server started for it
(tests/postgres_server.py, fsync off) and two broker threads on inproc endpoints.

Run: ``python benchmarks/cluster_fanout.py [--messages N] [--rooms N]``. Prints:

- a room message from its SENT on broker 1 to a raw SUB on broker 2's PUB (notified), and
  to a raw SUB on broker 1's own PUB, p50/p99/max;
- the same with every notification dropped (the periodic check alone, ``cluster_check_s``
  1 s, the default);
- a topic set through broker 1 until broker 2 answers ROOM_INFO with it;
- what one periodic check (every room's last_seq) and one state reload cost a broker with
  ``--rooms`` rooms.

Standalone (not one of benchmarks/run.py's scenarios: it needs PostgreSQL).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from postgres_server import running_postgres  # noqa: E402

from zchat import wire as p  # noqa: E402
from zchat.client.client import Client  # noqa: E402
from zchat.core import BrokerCore  # noqa: E402
from zchat.core.cluster import Fanout  # noqa: E402
from zchat.names import name_key, skeleton  # noqa: E402
from zchat.store import open_store  # noqa: E402
from zchat.testing import Harness, harness_config, running_cluster  # noqa: E402

PASSWORD = "correct horse battery staple"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def show(what: str, values_s: list[float]) -> None:
    ms = [v * 1000 for v in values_s]
    print(f"{what:58} p50 {statistics.median(ms):7.2f} ms  p99 {pct(ms, 0.99):7.2f} ms  "
          f"max {max(ms):7.2f} ms  (n={len(ms)})")


def sub(harness: Harness, key: str) -> zmq.Socket:  # type: ignore[type-arg]
    sock = harness.context.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(harness.broker.pub_endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, p.room_topic(key))
    return sock


async def client(harness: Harness, name: str) -> Client:
    c = harness.new_client()
    await c.connect()
    await c.register(name, PASSWORD)
    await c.login(name, PASSWORD)
    return c


async def one_way(one: Harness, two: Harness, count: int, drop: bool
                  ) -> tuple[list[float], list[float]]:
    """Latency SENT (broker 1) -> heard on broker 2's PUB and on broker 1's PUB."""
    alice = await client(one, "alice" if not drop else "alice2")
    room = "dev" if not drop else "quiet"
    await alice.join(room)
    for harness in (one, two):
        assert harness.broker.cluster is not None
        harness.broker.cluster.drop_notifications = False
    while room not in two.broker.core.rooms:  # type: ignore[union-attr]
        await asyncio.sleep(0.01)  # broker 2 learns of the room (its subscription judge)
    remote, local = sub(two, room), sub(one, room)
    try:
        for sock in (local, remote):  # probes until each SUB's subscription is in place
            while True:
                await alice.send(room, "probe")
                if await asyncio.to_thread(sock.poll, 100):
                    break
        for harness in (one, two):
            harness.broker.cluster.drop_notifications = drop  # type: ignore[union-attr]
        for sock in (local, remote):
            while await asyncio.to_thread(sock.poll, 1500 if drop else 200):
                sock.recv_multipart()
        far, near = [], []
        for i in range(count):
            sent = await alice.send(room, f"m{i}")
            done = time.monotonic()
            for sock, into in ((local, near), (remote, far)):
                while True:
                    if not await asyncio.to_thread(sock.poll, 5000):
                        raise AssertionError(f"message {sent.seq} not heard")
                    event = p.decode_event(sock.recv_multipart())
                    if isinstance(event, p.MessagePosted) and event.seq == sent.seq:
                        into.append(time.monotonic() - done)
                        break
            if drop:
                await asyncio.sleep(0.05)  # spread the sends over the check interval
        return far, near
    finally:
        remote.close(0)
        local.close(0)
        await alice.close()


async def topic_change(one: Harness, two: Harness, count: int) -> list[float]:
    alice = await client(one, "tom")
    bob = await client(two, "bea")
    await alice.join("topics")
    await bob.join("topics")
    waited = []
    for i in range(count):
        await alice.set_topic("topics", f"t{i}")
        started = time.monotonic()
        while (await bob.room_info("topics")).topic != f"t{i}":
            pass
        waited.append(time.monotonic() - started)
    await alice.close()
    await bob.close()
    return waited


def costs(url: str, rooms: int) -> None:
    store = open_store(url)
    for i in range(rooms):
        name = f"r{i}"
        store.ensure_room(name_key(name), name, skeleton(name), 0)
    core = BrokerCore(store, harness_config(), "inproc://unused", 0)
    fanout = Fanout(core)  # the broker core's part, without the loop
    started = time.perf_counter()
    for _ in range(20):
        fanout.check()
    check = (time.perf_counter() - started) / 20
    started = time.perf_counter()
    for _ in range(5):
        fanout.sync(0)
    sync = (time.perf_counter() - started) / 5
    store.close()
    print(f"with {rooms:,} rooms: one periodic check {check * 1000:.2f} ms, one state "
          f"reload {sync * 1000:.1f} ms")


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=300)
    parser.add_argument("--rooms", type=int, default=10_000)
    args = parser.parse_args()
    with running_postgres() as server:
        with server.database() as url, running_cluster(url, 2, send_rate_per_s=0.0) as (one, two):
            far, near = asyncio.run(one_way(one, two, args.messages, drop=False))
            show("SENT on 1 -> broker 1's own PUB", near)
            show("SENT on 1 -> broker 2's PUB (notified)", far)
            far, _ = asyncio.run(one_way(one, two, 40, drop=True))
            show("SENT on 1 -> broker 2's PUB, notifications dropped", far)
            for harness in (one, two):
                assert harness.broker.cluster is not None
                harness.broker.cluster.drop_notifications = False
            show("topic set on 1 -> broker 2's ROOM_INFO shows it",
                 asyncio.run(topic_change(one, two, 100)))
        with server.database() as url:
            costs(url, args.rooms)
    return 0


if __name__ == "__main__":
    sys.exit(main())
