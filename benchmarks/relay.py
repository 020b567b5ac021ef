"""The ceiling: the bare Python relay of the performance issue (issue 7).

A ROUTER receives each request with plain ``recv`` calls and a fixed frame count (routing
id, body), publishes the body on a PUB with the room's topic and answers the sender
``ok`` — no parsing, no storage, no logic. It runs in a process of its own (as the broker
does) and is driven by exactly the load of the ingest scenario (benchmarks/loadgen.py:
same senders, window, receivers and counting), with 1 and 4 senders and 1, 10, 50 and 200
subscribers. Its figures go into ``Bench.ceiling`` and the ingest rows are printed as
ratios to them.

Also measured, reported but not used as the ceiling: the same relay written with
``recv_multipart``/``send_multipart`` (pyzmq's per-call ``getsockopt(RCVMORE)`` cost), and
the plain relay publishing zchat's 4-frame event shape (``plain4``: topic, ``ZC1``,
``MESSAGE``, body) instead of 2 frames, which prices the event framing alone.

The relay is always plain TCP: with ``--encryption curve`` the zchat ratios include
CurveZMQ's cost (the issue's ceiling is the bare relay).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import zmq
from harness import MP, Bench, Row, ceiling_key, free_port, spawn
from loadgen import (
    QUICK_SHAPES,
    SHAPES,
    TOPIC,
    Target,
    message_count,
    run_fanout,
)

#: Messages of a full run (fewer with many subscribers: see loadgen.message_count).
MESSAGES = 50_000


def relay_main(router_ep: str, pub_ep: str, variant: str, conn: Any) -> None:
    """The relay process: bind, say ("ready",), relay until terminated (SIGTERM)."""
    ctx = zmq.Context()
    router = ctx.socket(zmq.ROUTER)
    pub = ctx.socket(zmq.PUB)
    for s in (router, pub):
        s.linger = 0
        s.sndhwm = 0
        s.rcvhwm = 0
    router.bind(router_ep)
    pub.bind(pub_ep)
    conn.send(("ready",))
    topic, more = TOPIC, zmq.SNDMORE
    if variant == "plain":
        recv, rsend, psend = router.recv, router.send, pub.send
        while True:
            rid = recv()
            body = recv()
            psend(topic, more)
            psend(body)
            rsend(rid, more)
            rsend(b"ok")
    elif variant == "plain4":  # zchat's event shape: topic, "ZC1", "MESSAGE", body
        recv, rsend, psend = router.recv, router.send, pub.send
        while True:
            rid = recv()
            body = recv()
            psend(topic, more)
            psend(b"ZC1", more)
            psend(b"MESSAGE", more)
            psend(body)
            rsend(rid, more)
            rsend(b"ok")
    else:
        recv_m, rsend_m, psend_m = router.recv_multipart, router.send_multipart, \
            pub.send_multipart
        while True:
            rid, body = recv_m()
            psend_m([topic, body])
            rsend_m([rid, b"ok"])


def measure(bench: Bench, variant: str, senders: int, subscribers: int) -> dict[str, Any]:
    """One relay run: start the relay process, drive it, stop it; the figures of
    loadgen.run_fanout."""
    router, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
    mine, theirs = MP.Pipe()
    proc = spawn(relay_main, router, pub, variant, theirs)
    try:
        if not mine.poll(60):
            raise RuntimeError("the relay did not start")
        mine.recv()
        count = message_count(bench.quick, subscribers, MESSAGES) // senders
        target = Target("relay", router, pub, event_frames=4 if variant == "plain4" else 2)
        result = run_fanout(bench.ctx, target, senders, subscribers, count)
    finally:
        proc.terminate()
        proc.join(10)
        mine.close()
    result["variant"] = variant
    return result


def _check(result: dict[str, Any]) -> str:
    bad = {k: result[k] for k in ("lost", "duplicates", "out_of_range") if result[k]}
    return f"relay lost/duplicated messages: {bad}" if bad else ""


def relay(bench: Bench) -> list[Row]:
    rows: list[Row] = []
    for senders, subs in QUICK_SHAPES if bench.quick else SHAPES:
        r = measure(bench, "plain", senders, subs)
        for figure in ("acked_per_s", "delivered_per_s"):
            bench.ceiling[ceiling_key(senders, subs, figure)] = r[figure]
        shape = f"{senders} sender{'s' if senders > 1 else ''} -> {subs} sub{'s' if subs > 1 else ''}"
        rows.append(Row(f"bare relay {shape} acked", r["acked_per_s"], "msg/s", 1.0,
                        raw=r, error=_check(r)))
        rows.append(Row(f"bare relay {shape} delivered", r["delivered_per_s"], "msg/s", 1.0,
                        raw={}))
    variants = {"multipart": "relay recv/send_multipart",
                "plain4": "relay with zchat's 4-frame events"}
    for variant, label in variants.items():
        for subs in (1,) if bench.quick else (1, 50):
            r = measure(bench, variant, 1, subs)
            plain = bench.ceiling[ceiling_key(1, subs, "delivered_per_s")]
            rows.append(Row(f"{label} 1 sender -> {subs} sub"
                            f"{'s' if subs > 1 else ''} delivered (not the ceiling)",
                            r["delivered_per_s"], "msg/s", r["delivered_per_s"] / plain,
                            raw=r, error=_check(r)))
    bench.note("bare relay: a process of its own, plain TCP, PUB/ROUTER high-water marks "
               "unbounded, answering 'ok' to each request so the sender's window works "
               "as against zchat.")
    return rows


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {"relay": relay}
