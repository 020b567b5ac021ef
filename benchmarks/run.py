"""zchat benchmarks: print a table of figures and write them as JSON.

Run: ``python benchmarks/run.py [--messages N] [--json FILE]`` (or ``just bench``).

Everything runs on loopback against a real ``zchat broker`` subprocess with a real SQLite
file, and the bare relay ceiling (ROUTER recv -> PUB send, no logic) is measured in the
same run and harness, so zchat's figures are printed as ratios to it:

- ingest: one sender keeps ``WINDOW`` SEND requests in flight to one room with one
  subscriber; messages acknowledged (stored and OK'd) and delivered per second, with loss
  and duplicates counted by sequence number (both must be 0);
- encryption: ``--encryption curve`` (the default, as shipped) or ``none``; with curve
  the zchat sockets are CurveZMQ (the bare relay stays plain, so the ratio includes
  CURVE's cost);
- login: the time of one fresh password login (scrypt at the broker's settings) seen by the
  client, median of several.

The fuller suite of the performance issue (fan-out to 200 members, latency percentiles,
10,000 sessions, history in a 1,000,000-message room) builds on this harness.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import zmq
from harness import PAYLOAD, WINDOW, RawClient, free_port, secure, start_broker  # noqa: E402

from zchat import protocol as p


def bench_ingest(ctx: zmq.Context[Any], server: str, count: int) -> dict[str, Any]:
    sender = RawClient(ctx, server)
    sender.call(p.Register(name="sender", password="pw"))
    sender.call(p.Login(name="sender", password="pw"))
    sender.call(p.Join(room="bench"))
    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = 0
    secure(sub)
    sub.connect(sender.info.pub)
    sub.subscribe(p.room_topic("bench"))
    # Wait until the subscription is live: post probes until one is seen.
    while True:
        sender.call(p.Send(room="bench", text="probe"))
        if sub.poll(200):
            break
    while sub.poll(100):
        first = p.decode_event(sub.recv_multipart())
    start_seq = first.seq  # type: ignore[attr-defined]

    seqs: list[int] = []

    def receive() -> None:
        while len(seqs) < count and sub.poll(5000):
            event = p.decode_event(sub.recv_multipart())
            if isinstance(event, p.MessagePosted) and event.text == PAYLOAD:
                seqs.append(event.seq)

    receiver = threading.Thread(target=receive)
    receiver.start()
    acked = 0
    sent = 0
    t0 = time.perf_counter()
    while acked < count:
        while sent < count and sent - acked < WINDOW:
            sender.send(p.Send(room="bench", text=PAYLOAD))
            sent += 1
        sender.dealer.recv_multipart()
        acked += 1
    t_ack = time.perf_counter() - t0
    receiver.join()
    t_all = time.perf_counter() - t0
    expected = list(range(start_seq + 1, start_seq + 1 + count))
    sub.close()
    sender.dealer.close()
    return {"messages": count, "acked_per_s": count / t_ack, "delivered_per_s": len(seqs) / t_all,
            "lost": len(set(expected) - set(seqs)), "duplicates": len(seqs) - len(set(seqs)),
            "in_order": seqs == sorted(seqs)}


def bench_relay(ctx: zmq.Context[Any], count: int) -> dict[str, Any]:
    """The ceiling: a bare Python relay, ROUTER recv -> PUB send, plain recv/send with a
    fixed frame count, no logic; same sender window and subscriber shape."""
    router_port, pub_port = free_port(), free_port()
    router = ctx.socket(zmq.ROUTER)
    pub = ctx.socket(zmq.PUB)
    for s in (router, pub):
        s.linger = 0
    router.bind(f"tcp://127.0.0.1:{router_port}")
    pub.bind(f"tcp://127.0.0.1:{pub_port}")
    pub.sndhwm = 0

    def relay() -> None:
        for _ in range(count):  # the probe plus count - 1 messages
            rid = router.recv()
            body = router.recv()
            pub.send(b"room/bench/", zmq.SNDMORE)
            pub.send(body)
            router.send(rid, zmq.SNDMORE)
            router.send(b"ok")

    sub = ctx.socket(zmq.SUB)
    sub.linger = 0
    sub.rcvhwm = 0
    sub.connect(f"tcp://127.0.0.1:{pub_port}")
    sub.subscribe(b"room/bench/")
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    dealer.connect(f"tcp://127.0.0.1:{router_port}")
    thread = threading.Thread(target=relay)
    thread.start()
    while True:  # subscription live?
        dealer.send(b"probe")
        dealer.recv()
        if sub.poll(200):
            sub.recv_multipart()
            break
    received = 0

    def receive() -> None:
        nonlocal received
        while received < count - 1 and sub.poll(5000):
            sub.recv_multipart()
            received += 1

    receiver = threading.Thread(target=receive)
    receiver.start()
    payload = PAYLOAD.encode()
    sent = acked = 0
    t0 = time.perf_counter()
    while acked < count - 1:
        while sent < count - 1 and sent - acked < WINDOW:
            dealer.send(payload)
            sent += 1
        dealer.recv()
        acked += 1
    t_ack = time.perf_counter() - t0
    receiver.join()
    t_all = time.perf_counter() - t0
    thread.join(5)
    for s in (router, pub, sub, dealer):
        s.close()
    return {"messages": count, "acked_per_s": acked / t_ack, "delivered_per_s": received / t_all}


def bench_login(ctx: zmq.Context[Any], server: str, rounds: int = 7) -> dict[str, Any]:
    client = RawClient(ctx, server)
    client.call(p.Register(name="login-bench", password="pw"))
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        client.call(p.Login(name="login-bench", password="pw"))
        times.append(time.perf_counter() - t0)
        client.call(p.Logout())
    client.dealer.close()
    return {"median_ms": statistics.median(times) * 1000, "rounds": rounds}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--json", type=Path, default=Path("benchmarks/results.json"))
    parser.add_argument("--scrypt-n", type=int, default=16384)
    parser.add_argument("--encryption", choices=["curve", "none"], default="curve",
                        help="the broker's transport (default curve, as shipped)")
    args = parser.parse_args()
    ctx = zmq.Context()
    results: dict[str, Any] = {"machine": {"cpus": os.cpu_count(), "python": sys.version.split()[0],
                                           "zmq": zmq.zmq_version(), "pyzmq": zmq.__version__},
                               "encryption": args.encryption}
    with tempfile.TemporaryDirectory() as tmp:
        proc, server = start_broker(Path(tmp), args.scrypt_n, args.encryption)
        try:
            results["relay"] = bench_relay(ctx, args.messages)
            results["ingest_1x1"] = bench_ingest(ctx, server, args.messages)
            results["login"] = bench_login(ctx, server)
        finally:
            proc.terminate()
            proc.wait(5)
    ctx.term()
    ceiling = results["relay"]
    ing = results["ingest_1x1"]
    print(f"{'benchmark':<34}{'figure':>14}{'ratio to relay':>16}")
    print(f"{'relay ceiling acked/s':<34}{ceiling['acked_per_s']:>14,.0f}{1:>16.2f}")
    print(f"{'relay ceiling delivered/s':<34}{ceiling['delivered_per_s']:>14,.0f}{1:>16.2f}")
    print(f"{'zchat 1 sender->1 sub acked/s':<34}{ing['acked_per_s']:>14,.0f}"
          f"{ing['acked_per_s'] / ceiling['acked_per_s']:>16.3f}")
    print(f"{'zchat 1 sender->1 sub delivered/s':<34}{ing['delivered_per_s']:>14,.0f}"
          f"{ing['delivered_per_s'] / ceiling['delivered_per_s']:>16.3f}")
    print(f"{'zchat lost / duplicated / in order':<34}"
          f"{ing['lost']:>6} / {ing['duplicates']} / {ing['in_order']}")
    print(f"{'fresh password login (median)':<34}{results['login']['median_ms']:>11.1f} ms"
          f"   scrypt N={args.scrypt_n}, r=8, p=1")
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"raw figures: {args.json}")
    return 0 if ing["lost"] == 0 and ing["duplicates"] == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
