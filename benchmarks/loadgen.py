"""Load generation shared by the relay (ceiling), ingest and latency scenarios.

One shape for both targets, so that ratios compare like with like:

- ``target = "relay"``: the bare relay of benchmarks/relay.py (a process of its own, as the
  broker is); ``target = "zchat"``: a real ``zchat broker`` subprocess.
- Members (subscribers) live in ``receiver_main`` processes, several SUB sockets each. For
  zchat each is a real account that REGISTERed, LOGged IN and JOINed the room on its own
  DEALER (kept open for the run), with a SUB subscribed to the room's topic.
- Senders are ``sender_main`` processes (one per sender): a DEALER keeping ``WINDOW``
  requests in flight, frames encoded once before the clock starts (fixed frame count,
  plain ``send``), so the sender costs the same per message against both targets.
- Every receiver runs the same code against both: ``recv_multipart`` on each ready SUB,
  the sequence number read from the last frame's JSON ``"seq":`` (the room's sequence
  number for zchat, the sender's running number for the relay), and a bitmap per
  subscriber that counts loss, duplicates and out-of-order arrivals.

Coordination is over multiprocessing pipes, never a sleep: every worker reports "ready";
the coordinator then posts probe messages until every subscriber has seen one (its
subscription is live), tells the receivers the sequence range to expect, starts the
senders and collects their figures. Times are ``time.monotonic_ns()``, which is one
system-wide clock on Linux (CLOCK_MONOTONIC), so times taken in different processes
compare.
"""

from __future__ import annotations

import time
from array import array
from dataclasses import dataclass
from typing import Any

import zmq
from harness import MP, PAYLOAD, WINDOW, BrokerHandle, secure_with, spawn

from zchat import wire as p

ROOM = "bench"
TOPIC = p.room_topic(ROOM)
PASSWORD = "bench-password"
#: A receiver gives up this long after the last message once the senders are done.
DRAIN_IDLE_S = 5.0
#: A sender gives up when no reply has come for this long (a lost reply, a stuck broker).
REPLY_TIMEOUT_S = 60.0
#: Receiver processes (at most; one per subscriber below that), the subscribers dealt out
#: among them: 2 cores, so past a few processes they would only take turns.
RECEIVER_PROCESSES = 4
SEQ_MARK = b'"seq":'
TEXT_MARK = b'"text":"'


@dataclass(frozen=True)
class Target:
    """Where the load goes: ``kind`` "relay" or "zchat", the ROUTER and PUB endpoints,
    the CURVE server key (None = plain) and the frames of one event on the PUB (zchat's:
    4, docs/PROTOCOL.md §3.4; the bare relay's: 2, or 4 in its ``plain4`` variant)."""

    kind: str
    router: str
    pub: str
    key: bytes | None = None
    event_frames: int = 2

    @classmethod
    def of_broker(cls, broker: BrokerHandle) -> Target:
        return cls("zchat", broker.router, broker.pub, broker.public_key, event_frames=4)


def read_seq(body: bytes) -> int:
    """The integer after the first ``"seq":`` in a JSON body (both targets' bodies have
    one, followed by a comma); -1 when there is none (a notice that is not a message)."""
    i = body.find(SEQ_MARK)
    if i < 0:
        return -1
    i += len(SEQ_MARK)
    return int(body[i:body.find(b",", i)])


def read_sent_ns(body: bytes) -> int:
    """The send time a latency message carries: the first 20 digits of its text."""
    i = body.find(TEXT_MARK) + len(TEXT_MARK)
    return int(body[i:i + 20])


def relay_body(seq: int, text: str = PAYLOAD) -> bytes:
    """What a relay sender posts: the same JSON shape as zchat's message event body."""
    return b'{"seq":%d,"text":"%s"}' % (seq, text.encode())


def _login_member(ctx: zmq.Context[Any], target: Target, name: str,
                  keypair: tuple[bytes, bytes] | None = None) -> zmq.Socket[Any]:
    """REGISTER, LOGIN and JOIN ``name`` on a new DEALER (kept open: the session lives),
    with CURVE key pair ``keypair`` (else a fresh one)."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.linger = 0
    secure_with(dealer, target.key, keypair)
    dealer.connect(target.router)
    for n, req in enumerate((p.Register(name=name, password=PASSWORD),
                             p.Login(name=name, password=PASSWORD), p.Join(room=ROOM))):
        rid = str(n + 1).encode()
        dealer.send_multipart(p.encode_request(rid, req))
        while True:
            if not dealer.poll(30_000):
                raise RuntimeError(f"{name}: no reply to {req.TYPE} in 30 s")
            got, value = p.decode_from_broker(dealer.recv_multipart(), {rid: req.REPLY})
            if got == rid:
                if isinstance(value, p.Error):
                    raise RuntimeError(f"{name}: {req.TYPE}: {value.status} {value.reason}")
                break
    return dealer


def receiver_main(target: Target, names: list[str], latency: bool, conn: Any) -> None:
    """A receiver process: one SUB per name (and, for zchat, that member's session).

    Pipe protocol: sends ("ready",) once set up and ("live",) once every SUB has seen a
    probe; receives ("go", base, total), answered ("going",): message sequence numbers are base..base+total-1
    and each SUB expects all of them; receives ("stop",) when the senders are done, then
    drains until DRAIN_IDLE_S of silence. Sends ("done", result) with per-subscriber
    counts, first and last delivery times, and with ``latency`` every send-to-delivery
    time in nanoseconds.
    """
    ctx = zmq.Context()
    # Each SUB takes its member's DEALER key pair, after that member's LOGIN: the PUB
    # admits only the key of a live session (docs/PROTOCOL.md §16.2).
    pairs = [zmq.curve_keypair() if target.key is not None else None for _ in names]
    dealers = [] if target.kind == "relay" else [_login_member(ctx, target, n, pair)
                                                 for n, pair in zip(names, pairs, strict=True)]
    subs = []
    for pair in pairs:
        sub = ctx.socket(zmq.SUB)
        sub.linger = 0
        sub.rcvhwm = 0
        secure_with(sub, target.key, pair)
        sub.connect(target.pub)
        sub.subscribe(TOPIC)
        subs.append(sub)
    index = {s: i for i, s in enumerate(subs)}
    # Fixed frame counts (plain recv, no RCVMORE per frame): zchat's events are 4 frames
    # (topic, version, type, body: docs/PROTOCOL.md §3.4), the relay's 2 (topic, body).
    tail = target.event_frames - 1
    poller = zmq.Poller()
    for s in subs:
        poller.register(s, zmq.POLLIN)
    poller.register(conn.fileno(), zmq.POLLIN)
    conn.send(("ready",))
    seen_probe = [False] * len(subs)
    live_sent = False
    base = total = -1
    bitmaps: list[bytearray] = []
    received = [0] * len(subs)
    dups = [0] * len(subs)
    disorder = [0] * len(subs)
    outside = [0] * len(subs)
    last = [-1] * len(subs)
    done_subs = 0
    first_ns = last_ns = 0
    lat = array("q")
    stopping = False
    idle_ms = int(DRAIN_IDLE_S * 1000)
    while True:
        events = dict(poller.poll(idle_ms if stopping else None))
        if not events and stopping:
            break
        if conn.fileno() in events:
            msg = conn.recv()
            if msg[0] == "go":
                base, total = msg[1], msg[2]
                bitmaps = [bytearray(total) for _ in subs]
                conn.send(("going",))
            elif msg[0] == "stop":
                stopping = True
        for sock in events:
            if sock is conn.fileno() or isinstance(sock, int):
                continue
            i = index[sock]
            for _ in range(1000):
                try:
                    body = sock.recv(zmq.NOBLOCK)
                except zmq.Again:
                    break
                for _ in range(tail):
                    body = sock.recv()
                now = time.monotonic_ns()
                seq = read_seq(body)
                if seq < 0:
                    continue
                if base < 0 or seq < base:  # a probe, before the run
                    if not seen_probe[i]:
                        seen_probe[i] = True
                        if not live_sent and all(seen_probe):
                            conn.send(("live",))
                            live_sent = True
                    continue
                k = seq - base
                if k >= total:
                    outside[i] += 1
                    continue
                if not first_ns:
                    first_ns = now
                last_ns = now
                if latency:
                    lat.append(now - read_sent_ns(body))
                bm = bitmaps[i]
                received[i] += 1
                if bm[k]:
                    dups[i] += 1
                    continue
                bm[k] = 1
                if seq < last[i]:
                    disorder[i] += 1
                last[i] = seq
                if received[i] - dups[i] == total:
                    done_subs += 1
        if total > 0 and done_subs == len(subs) and stopping:
            break
    unique = [total - bm.count(0) for bm in bitmaps] if bitmaps else [0] * len(subs)
    conn.send(("done", {"subscribers": len(subs), "received": received, "unique": unique,
                        "duplicates": dups, "out_of_order": disorder, "out_of_range": outside,
                        "first_ns": first_ns, "last_ns": last_ns,
                        "latencies_ns": lat.tobytes() if latency else b""}))
    conn.recv()  # ("exit",): keep the sessions until the coordinator has every result
    for s in subs + dealers:
        s.close()
    ctx.term()


def sender_main(target: Target, name: str, index: int, count: int, conn: Any) -> None:
    """A sender process: ``count`` 100-byte messages with ``WINDOW`` in flight.

    zchat: logged in as ``name``, joined, SEND frames encoded once (only the request id
    changes). relay: the body carries the sequence number ``index * count + i``. Pipe
    protocol: ("ready",), then waits for ("go",), then sends ("done", result) with start
    and end times (ns), acknowledged count and error replies.
    """
    ctx = zmq.Context()
    if target.kind == "zchat":
        dealer = _login_member(ctx, target, name)
        body = p.encode_body(p.Send(room=ROOM, text=PAYLOAD))
        frames = [[p.VERSION, str(i + 100).encode(), b"SEND", body] for i in range(count)]
    else:
        dealer = ctx.socket(zmq.DEALER)
        dealer.linger = 0
        dealer.connect(target.router)
        frames = [[relay_body(RELAY_BASE + index * count + i)] for i in range(count)]
    conn.send(("ready",))
    conn.recv()  # ("go",)
    sent = acked = errors = 0
    first_error = ""
    # Replies by fixed frame count too: zchat's are 4 frames (version, request id, OK or
    # ERROR, body: §3.2), the relay's one ("ok").
    send, recv, more = dealer.send, dealer.recv, zmq.SNDMORE
    zchat = target.kind == "zchat"
    # A lost reply must not hang the run: after REPLY_TIMEOUT_S without any, the sender
    # stops and reports the messages it has no answer for as errors.
    dealer.rcvtimeo = int(REPLY_TIMEOUT_S * 1000)
    t0 = time.monotonic_ns()
    while acked < count:
        while sent < count and sent - acked < WINDOW:
            msg = frames[sent]
            for f in msg[:-1]:
                send(f, more)
            send(msg[-1])
            sent += 1
        try:
            reply = recv()
        except zmq.Again:
            errors += count - acked
            first_error = first_error or (f"no reply for {REPLY_TIMEOUT_S:g} s; "
                                          f"{count - acked} messages unanswered")
            break
        acked += 1
        if zchat:
            recv()
            kind = recv()
            reply = recv()
            if kind != b"OK":
                errors += 1
                first_error = first_error or reply.decode("utf-8", "replace")
    t1 = time.monotonic_ns()
    conn.send(("done", {"t0_ns": t0, "t1_ns": t1, "acked": acked, "errors": errors,
                        "first_error": first_error}))
    conn.recv()  # ("exit",)
    dealer.close()
    ctx.term()


def _expect(conn: Any, what: str, timeout_s: float, proc: Any) -> Any:
    if not conn.poll(timeout_s):
        raise RuntimeError(f"a {proc.name} gave no {what!r} within {timeout_s:g} s "
                           f"(alive: {proc.is_alive()})")
    msg = conn.recv()
    if msg[0] != what:
        raise RuntimeError(f"expected {what!r}, got {msg!r}")
    return msg


class Probe:
    """The coordinator's own client that posts probes until every subscription is live
    (zchat: a logged-in member; relay: a plain DEALER), and says where the run's sequence
    numbers start."""

    def __init__(self, ctx: zmq.Context[Any], target: Target, name: str = "prober") -> None:
        self.target = target
        if target.kind == "zchat":
            self.dealer = _login_member(ctx, target, name)
        else:
            self.dealer = ctx.socket(zmq.DEALER)
            self.dealer.linger = 0
            self.dealer.connect(target.router)
        self.last_seq = -1
        self.n = 0

    def post(self) -> None:
        self.n += 1
        if self.target.kind == "zchat":
            rid = b"p%d" % self.n
            self.dealer.send_multipart(p.encode_request(rid, p.Send(room=ROOM, text="probe")))
            while True:
                got, value = p.decode_from_broker(self.dealer.recv_multipart(),
                                                  {rid: p.Sent})
                if got == rid:
                    if isinstance(value, p.Error):
                        raise RuntimeError(f"probe: {value.status} {value.reason}")
                    self.last_seq = value.seq  # type: ignore[attr-defined]
                    return
        else:
            # Relay probes are numbered 1, 2, ...: below the run's RELAY_BASE.
            self.dealer.send(relay_body(self.n, "probe"))
            self.dealer.recv()

    @property
    def base(self) -> int:
        """First sequence number of the run: after the probes for zchat; relay senders
        number from RELAY_BASE."""
        return self.last_seq + 1 if self.target.kind == "zchat" else RELAY_BASE

    def close(self) -> None:
        self.dealer.close()


#: Relay sequence numbers of the run start here (probes are numbered 1, 2, ...).
RELAY_BASE = 10**12


def run_fanout(ctx: zmq.Context[Any], target: Target, senders: int, subscribers: int,
               count: int, *, latency_sender: Any = None,
               member_targets: list[Target] | None = None, prefix: str = "",
               receiver_processes: int = RECEIVER_PROCESSES) -> dict[str, Any]:
    """Run one load: ``senders`` x ``count`` messages to ``subscribers`` members.

    The senders and the prober go to ``target``; the members to ``member_targets`` when
    given (several brokers of a cluster, benchmarks/cluster.py: receiver process j and its
    members on ``member_targets[j % len]``, as many receiver processes per target), else
    to ``target`` too. ``prefix`` starts every account name, so that several loads can run
    one after the other against the same database. ``receiver_processes`` caps the
    receiver processes (at least one per target).

    Returns the figures: ``acked_per_s`` (all senders' acknowledgements over the span from
    the first send to the last acknowledgement), ``delivered_per_s`` (every subscriber's
    deliveries over the span from the first send to the last delivery), and per-subscriber
    loss/duplicates/out-of-order totals. ``latency_sender`` replaces the windowed senders
    with a paced one (benchmarks/latency.py): a callable (target, name, conn) run in its
    own process with the same pipe protocol; latencies are then returned too.
    """
    procs: list[Any] = []
    conns: list[Any] = []
    try:
        names = [f"{prefix}m{i:04d}" for i in range(subscribers)]
        homes = member_targets or [target]
        n_receivers = min(len(homes) * max(1, receiver_processes // len(homes)), subscribers)
        groups = [names[i::n_receivers] for i in range(n_receivers)]
        receivers = []
        for j, group in enumerate(groups):
            mine, theirs = MP.Pipe()
            proc = spawn(receiver_main, homes[j % len(homes)], group,
                         latency_sender is not None, theirs)
            receivers.append((proc, mine))
        sender_pipes = []
        for k in range(1 if latency_sender is not None else senders):
            mine, theirs = MP.Pipe()
            name = f"{prefix}sender{k}"
            if latency_sender is not None:
                proc = spawn(latency_sender, target, name, theirs)
            else:
                proc = spawn(sender_main, target, name, k, count, theirs)
            sender_pipes.append((proc, mine))
        procs = [pr for pr, _ in receivers + sender_pipes]
        conns = [c for _, c in receivers + sender_pipes]
        for proc, conn in receivers + sender_pipes:
            _expect(conn, "ready", 300, proc)
        probe = Probe(ctx, target, f"{prefix}prober")
        live = [False] * len(receivers)
        while not all(live):
            probe.post()
            for i, (_proc, conn) in enumerate(receivers):
                if not live[i] and conn.poll(0.2 / len(receivers)):
                    _expect(conn, "live", 0, _proc)
                    live[i] = True
        base = probe.base
        total = senders * count
        for _proc, conn in receivers:
            conn.send(("go", base, total))
        for proc, conn in receivers:  # every receiver knows the range before a send
            _expect(conn, "going", 60, proc)
        for _proc, conn in sender_pipes:
            conn.send(("go",))
        sent = [_expect(conn, "done", 600, proc)[1] for proc, conn in sender_pipes]
        for _proc, conn in receivers:
            conn.send(("stop",))
        got = [_expect(conn, "done", 600, proc)[1] for proc, conn in receivers]
        for conn in conns:
            conn.send(("exit",))
        probe.close()
    finally:
        for proc in procs:
            proc.join(10)
            if proc.is_alive():
                proc.kill()
                proc.join()
        for conn in conns:
            conn.close()
    t0 = min(s["t0_ns"] for s in sent)
    t_ack = max(s["t1_ns"] for s in sent)
    t_last = max(g["last_ns"] for g in got) or t_ack
    per_sub = {k: [v for g in got for v in g[k]]
               for k in ("received", "unique", "duplicates", "out_of_order", "out_of_range")}
    acked = sum(s["acked"] for s in sent)
    delivered = sum(per_sub["received"])
    result: dict[str, Any] = {
        "target": target.kind, "senders": senders, "subscribers": subscribers,
        "messages": total, "receiver_processes": len(receivers),
        "acked": acked, "errors": sum(s["errors"] for s in sent),
        "first_error": next((s["first_error"] for s in sent if s["first_error"]), ""),
        "acked_per_s": acked / ((t_ack - t0) / 1e9),
        "delivered": delivered, "delivered_per_s": delivered / ((t_last - t0) / 1e9),
        "seconds_to_last_ack": (t_ack - t0) / 1e9,
        "seconds_to_last_delivery": (t_last - t0) / 1e9,
        "lost": sum(total - u for u in per_sub["unique"]),
        "duplicates": sum(per_sub["duplicates"]),
        "out_of_order": sum(per_sub["out_of_order"]),
        "out_of_range": sum(per_sub["out_of_range"]),
        "subscribers_complete": sum(1 for u in per_sub["unique"] if u == total),
        "base_seq": base,
        "members_per_target": [sum(len(g) for j, g in enumerate(groups) if j % len(homes) == h)
                               for h in range(len(homes))],
    }
    if latency_sender is not None:
        lat = array("q")
        for g in got:
            lat.frombytes(g["latencies_ns"])
        result["latencies_ns"] = lat
        result["sender"] = sent[0]
    return result


#: (senders, subscribers) shapes of the ingest and relay runs, as in the performance issue.
SHAPES = [(1, 1), (1, 10), (1, 50), (1, 200), (4, 1), (4, 10), (4, 50), (4, 200)]
#: --quick: two small shapes, enough to exercise every code path (one and several
#: senders, one and several subscribers and receiver processes).
QUICK_SHAPES = [(1, 1), (4, 10)]


def message_count(quick: bool, subscribers: int, base: int) -> int:
    """Messages of one run: ``base`` (quick: 1/20 of it), capped so that the deliveries
    (messages x subscribers) stay within what the receivers take in ~10 s (2,000,000;
    quick 50,000)."""
    if quick:
        return max(200, min(base // 20, 50_000 // subscribers))
    return max(1_000, min(base, 2_000_000 // subscribers))
