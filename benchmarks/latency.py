"""Latency (issue 7): one paced sender at 1,000 messages/s for a few seconds (4 s; quick:
1 s) to a room of 10 and of 100 members; send-to-delivery time on every member.

Each message's text starts with its send time, ``time.monotonic_ns()`` as 20 digits
(CLOCK_MONOTONIC is one system-wide clock on Linux, so the sender's and the receivers'
processes compare); each receiver subtracts it from its own clock right after the last
frame of the event arrives. Percentiles (nearest rank) are over every delivery to every
member. The sender is paced by an absolute schedule (message i is due at t0 + i ms): a
message sent more than ``LATE_MS`` after its due time counts as "sender behind pace"
(the load generator, not the broker, fell behind; its latency is still measured from the
moment it was really sent).

The same paced load against the bare relay (benchmarks/relay.py) is reported as the
harness's floor: what the load generator and its Python receivers cost on this machine
(2 cores shared by the broker, the sender and up to 4 receiver processes).
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from typing import Any

import zmq
from harness import MP, Bench, Row, free_port, percentile, spawn
from ingest import correctness, stored_rows
from loadgen import RELAY_BASE, ROOM, Target, _login_member, relay_body, run_fanout
from relay import relay_main

from zchat import wire as p

RATE_PER_S = 1_000
SECONDS = 4.0
QUICK_SECONDS = 1.0
MEMBERS = (10, 100)
#: A message sent this long after its due time counts as "sender behind pace".
LATE_MS = 1.0
#: Fill the 100-byte text after the 20-digit send time.
PAD = "x" * 80
PLACEHOLDER = "0" * 20


def paced_sender_main(rate: int, seconds: float, target: Target, name: str,
                      conn: Any) -> None:
    """The paced sender process (loadgen's pipe protocol: "ready", "go", "done", "exit").

    Sends ``rate * seconds`` messages, message i due at t0 + i / rate, each text its send
    time (20 digits) plus 80 bytes; reads acknowledgements while it waits for the next due
    time. Reports acked count, error replies, and how many messages left more than
    LATE_MS behind schedule (with the largest lag).
    """
    ctx = zmq.Context()
    zchat = target.kind == "zchat"
    if zchat:
        dealer = _login_member(ctx, target, name)
        template = p.encode_body(p.Send(room=ROOM, text=PLACEHOLDER + PAD))
        head, tail = template.split(PLACEHOLDER.encode(), 1)
    else:
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(target.router)
    count = int(rate * seconds)
    period_ns = 1_000_000_000 // rate
    late_ns = int(LATE_MS * 1_000_000)
    conn.send(("ready",))
    conn.recv()  # ("go",)
    acked = errors = late = 0
    max_lag_ns = 0
    first_error = ""

    def drain() -> None:
        nonlocal acked, errors, first_error
        while True:
            try:
                frame = dealer.recv(zmq.NOBLOCK)
            except zmq.Again:
                return
            acked += 1
            if zchat:
                dealer.recv()
                kind = dealer.recv()
                body = dealer.recv()
                if kind != b"OK":
                    errors += 1
                    first_error = first_error or body.decode("utf-8", "replace")
            del frame

    t0 = time.monotonic_ns()
    for i in range(count):
        due = t0 + i * period_ns
        while True:
            wait_ns = due - time.monotonic_ns()
            if wait_ns <= 0:
                break
            if wait_ns >= 1_000_000:
                if dealer.poll(wait_ns // 1_000_000):
                    drain()
            else:
                time.sleep(wait_ns / 1e9)  # pacing the load generator to its schedule
        now = time.monotonic_ns()
        lag = now - due
        if lag > late_ns:
            late += 1
        max_lag_ns = max(max_lag_ns, lag)
        stamp = b"%020d" % now
        if zchat:
            dealer.send(p.VERSION, zmq.SNDMORE)
            dealer.send(b"%d" % (i + 100), zmq.SNDMORE)
            dealer.send(b"SEND", zmq.SNDMORE)
            dealer.send(head + stamp + tail)
        else:
            dealer.send(relay_body(RELAY_BASE + i, stamp.decode() + PAD))
        drain()
    deadline = time.monotonic() + 30
    while acked < count and time.monotonic() < deadline:
        if dealer.poll(1000):
            drain()
    t1 = time.monotonic_ns()
    conn.send(("done", {"t0_ns": t0, "t1_ns": t1, "acked": acked, "errors": errors,
                        "first_error": first_error, "behind_pace": late,
                        "max_lag_ms": max_lag_ns / 1e6, "sent": count}))
    conn.recv()  # ("exit",)
    dealer.close()
    ctx.term()


def summarize(r: dict[str, Any]) -> dict[str, Any]:
    """Percentiles in ms from ``latencies_ns`` (removed from ``r``, kept as a count)."""
    lat = sorted(r.pop("latencies_ns"))
    r["samples"] = len(lat)
    for label, q in (("p50", 50), ("p99", 99), ("p99.9", 99.9), ("max", 100)):
        r[f"{label}_ms"] = percentile(lat, q) / 1e6  # type: ignore[arg-type]
    r["behind_pace"] = r["sender"]["behind_pace"]
    r["max_sender_lag_ms"] = r["sender"]["max_lag_ms"]
    r["errors"] = r["sender"]["errors"]
    r["first_error"] = r["sender"]["first_error"]
    return r


def relay_floor(bench: Bench, members: int, sender: Any) -> dict[str, Any]:
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    mine, theirs = MP.Pipe()
    proc = spawn(relay_main, router, pub, "plain", theirs)
    try:
        if not mine.poll(60):
            raise RuntimeError("the relay did not start")
        mine.recv()
        r = run_fanout(bench.ctx, Target("relay", router, pub), 1, members, _count(bench),
                       latency_sender=sender)
    finally:
        proc.terminate()
        proc.join(10)
        mine.close()
    return summarize(r)


def _count(bench: Bench) -> int:
    return int(RATE_PER_S * (QUICK_SECONDS if bench.quick else SECONDS))


def latency(bench: Bench) -> list[Row]:
    rows: list[Row] = []
    seconds = QUICK_SECONDS if bench.quick else SECONDS
    sender = functools.partial(paced_sender_main, RATE_PER_S, seconds)
    count = _count(bench)
    for members in MEMBERS:
        with bench.broker(f"latency-{members}") as broker:
            r = run_fanout(bench.ctx, Target.of_broker(broker), 1, members, count,
                           latency_sender=sender)
        r = summarize(r)
        r["stored"], r["last_seq"] = stored_rows(broker.db, r["base_seq"], r["messages"])
        floor = relay_floor(bench, members, sender)
        r["relay_floor"] = floor
        who = f"{RATE_PER_S:,} msg/s to {members} members"
        for label in ("p50", "p99", "p99.9", "max"):
            row = Row(f"{who} {label}", r[f"{label}_ms"], "ms")
            if members == 100 and label in ("p99", "p99.9"):
                limit = 2.0 if label == "p99" else 10.0
                row.target = f"< {limit:g} ms"
                row.met = r[f"{label}_ms"] < limit
            rows.append(row)
        rows.append(Row(f"{who} harness floor p99 (bare relay, same load)", floor["p99_ms"],
                        "ms", raw={k: v for k, v in floor.items() if k != "sender"}))
        error = correctness(r)
        rows.append(Row(f"{who} sender behind pace > {LATE_MS:g} ms "
                        f"(max lag {r['max_sender_lag_ms']:.1f} ms)", r["behind_pace"], "msgs",
                        raw=r, error=error))
    bench.note("latency: send time to delivery on every member; the receivers are Python "
               "processes sharing the 2 cores with the broker and the sender, so each "
               "figure includes the harness's own cost: see the bare relay's floor under "
               "the same load.")
    return rows


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {"latency": latency}
