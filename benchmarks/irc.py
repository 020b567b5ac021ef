"""The IRC gateway beside ngIRCd (issue 17): IRC client -> ``zchat irc`` -> broker -> IRC
client, against the same load through ngIRCd (Debian's ``ngircd``) as the reference.

Run: ``python benchmarks/irc.py [--quick] [--json FILE] [--ports LO-HI] [--profile DIR]
[--ngircd BINARY]``
(also ``benchmarks/run.py --only irc``, where each zchat figure is a row with its ratio
to ngIRCd's). Prints one table: each figure for zchat, for ngIRCd, and zchat / ngIRCd,
measured in one run on one machine, with the machine's line (cores, load before and
after). Nothing is installed: without ``ngircd`` on PATH a line says how to get it
(``apt-get install ngircd``) and only the zchat half runs (no ratios).

The two servers, each started for the run and stopped after it, even on error:

- zchat: a real ``zchat broker`` subprocess (tcp on loopback, CurveZMQ as shipped,
  SQLite in a scratch directory; benchmarks/harness.py's BROKER_DEFAULTS plus the
  per-account limits below turned off) and ``zchat irc`` as a subprocess with
  ``[irc] guests = true`` (each IRC client's nick becomes a guest account, no password),
  ``autojoin = false`` and ``playback = 0``.
- ngIRCd: ``ngircd -n -f CONF`` (not daemonised) with a generated configuration in a
  scratch directory: no DNS, IDENT or PAM look-ups, no connection limits,
  ``MaxPenaltyTime = 0`` (its per-command penalty off), and each sender becomes an IRC
  operator and sets user mode ``+F`` (ngIRCd's "relaxed flood protection": no command
  throttling), so neither server throttles the load.

The load (the same for both): N sender and M receiver IRC connections, plain asyncio
sockets speaking raw IRC (NICK/USER, JOIN, PRIVMSG), all in one channel of its own per
run. Each message's text is ``<sender> <seq> <time.monotonic_ns()> <padding>`` (100
bytes); every receiver checks each sender's sequence numbers (lost, doubled, out of
order) and takes the latency from the send time to the moment its bytes were read.

- max rate: each sender keeps at most WINDOW messages in flight (sent and not yet read
  by its slowest receiver), so it goes as fast as the server delivers, with no unbounded
  queue in either server; figures: messages/s (each delivered to every receiver) and
  deliveries/s, latency p50/p99/p99.9 (under that load: mostly queueing in the window).
- fixed rate: RATE_PER_S messages a second in all, on an absolute schedule, the
  latency p50/p99/p99.9 of an unloaded server.
- memory: resident memory (VmRSS) of ``zchat irc``, of the broker and of ngIRCd with 0
  and K registered idle IRC connections (each joined to a channel of GROUP members: one
  channel of K members would cost K^2 JOIN lines and say little about idle memory),
  and the KiB per connection.

The harness (one Python process) shares the 2 cores with the servers: against ngIRCd
it is the harness that is measured at max rate, so the ratio is a bound, said in a note.
Exit code: 0 when zchat (and ngIRCd) lost, doubled and reordered nothing, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import (  # noqa: E402
    Bench,
    BrokerHandle,
    Row,
    machine_info,
    percentile,
    rss_kib,
    sigterm_held,
    stop_children,
)

#: Shapes (senders, receivers) of the max-rate and fixed-rate runs.
SHAPES = ((1, 1), (1, 10), (5, 20))
QUICK_SHAPES = ((1, 2),)
#: Messages per sender of a max-rate run (quick: QUICK_MESSAGES), fewer where there are
#: many receivers: at most DELIVERIES deliveries in all.
MESSAGES = 4_000
QUICK_MESSAGES = 300
DELIVERIES = 40_000
#: Messages in flight per sender at max rate (sent, not yet read by its slowest receiver).
WINDOW = 100
#: Offered rate of the fixed-rate run (messages a second in all) and its length.
RATE_PER_S = 100
SECONDS = 10.0
QUICK_SECONDS = 1.0
#: Idle connections of the memory figures, and members per channel there.
IDLE = (100, 500, 1000)
QUICK_IDLE = (20,)
GROUP = 10
#: A run in which no receiver reads anything for this long is over (the rest is lost).
STALL_S = 10.0
#: Text after the stamp: the message is 100 bytes long.
TEXT_BYTES = 100
#: What the zchat broker runs with beyond harness.BROKER_DEFAULTS (which already turn
#: off the per-session SEND limit and the per-address LOGIN limit): every load connection
#: is an account of its own on one gateway, so the per-account and per-room limits would
#: throttle the load instead of measuring the path.
ZCHAT_BROKER = {
    "account_send_rate_per_s": 0, "presence_rate_per_s": 0,
    "room_create_rate_per_s": 0, "max_rooms_created": 0,
}
NGIRCD_HINT = "ngircd not found: apt-get install ngircd"


# -- ports -------------------------------------------------------------------------------

class Ports:
    """Free loopback ports: any (the kernel's choice) or the next free one of a range."""

    def __init__(self, spec: str = "") -> None:
        self.range: tuple[int, int] | None = None
        if spec:
            lo, _, hi = spec.partition("-")
            self.range = (int(lo), int(hi or lo))
            self.next = self.range[0]

    def __call__(self) -> int:
        if self.range is None:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                return int(s.getsockname()[1])
        while self.next <= self.range[1]:
            port, self.next = self.next, self.next + 1
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
        raise RuntimeError(f"no free port left in {self.range[0]}-{self.range[1]}")


def _stop(proc: subprocess.Popen[Any], timeout_s: float = 10.0) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout_s)


def _wait_port(port: int, proc: subprocess.Popen[Any], log: Path, what: str,
               timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{log.read_text(errors='replace')}")
        time.sleep(0.02)  # polling a port with a deadline


# -- the servers -------------------------------------------------------------------------

@dataclass
class Server:
    """One server under test: where IRC clients connect, the pids whose memory counts,
    and what the senders must send after registering (ngIRCd: OPER and MODE +F)."""

    name: str
    port: int
    pids: dict[str, int]
    sender_setup: Callable[[str], bytes] = lambda nick: b""
    settings: list[str] = field(default_factory=list)


NGIRCD_CONF = """\
[Global]
Name = bench.ngircd
Info = zchat benchmark reference
AdminInfo1 = zchat benchmarks
AdminInfo2 = loopback
AdminEMail = bench@localhost
Listen = 127.0.0.1
Ports = {port}
MotdPhrase = ngIRCd for zchat's benchmark
HelpFile = {dir}/help.txt
[Limits]
MaxConnections = 0
MaxConnectionsIP = 0
MaxJoins = 0
MaxNickLength = 31
MaxPenaltyTime = 0
PingTimeout = 3600
PongTimeout = 3600
[Options]
DNS = no
Ident = no
PAM = no
OperCanUseMode = yes
IncludeDir = {dir}/conf.d
[Operator]
Name = bench
Password = bench
"""


@contextlib.contextmanager
def ngircd(binary: str, ports: Ports) -> Iterator[Server]:
    """ngIRCd in the foreground on a free port, with a generated configuration in a
    scratch directory; stopped (SIGTERM) and the directory removed on the way out."""
    scratch = Path(tempfile.mkdtemp(prefix="zchat-bench-ngircd-"))
    proc: subprocess.Popen[bytes] | None = None
    try:
        port = ports()
        (scratch / "conf.d").mkdir()
        (scratch / "help.txt").write_text("")
        conf = scratch / "ngircd.conf"
        conf.write_text(NGIRCD_CONF.format(port=port, dir=scratch))
        log = scratch / "ngircd.log"
        with sigterm_held(), open(log, "wb") as out:
            proc = subprocess.Popen([binary, "-n", "-f", str(conf)], stdout=out,
                                    stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        _wait_port(port, proc, log, "ngircd")
        yield Server("ngIRCd", port, {"ngircd": proc.pid},
                     lambda nick: f"OPER bench bench\r\nMODE {nick} +F\r\n".encode(),
                     ["MaxPenaltyTime = 0 (no command penalty)", "senders OPER + user mode "
                      "+F (no flood throttling)", "DNS, Ident, PAM off",
                      "MaxConnectionsIP = 0, MaxJoins = 0"])
    finally:
        if proc is not None:
            _stop(proc)
        shutil.rmtree(scratch, ignore_errors=True)


GATEWAY_CONF = """\
[client]
server = "{router}"
{server_key}
[irc]
listen = "127.0.0.1:{port}"
guests = true
autojoin = false
playback = 0
max_connections_per_address = 0
connections_per_minute_per_address = 0
"""


@contextlib.contextmanager
def zchat(bench: Bench, ports: Ports, profile: Path | None = None,
          name: str = "irc") -> Iterator[Server]:
    """A zchat broker (harness.Bench.broker, with ZCHAT_BROKER) and ``zchat irc`` in
    front of it, on free ports; both stopped on the way out. ``profile``: the gateway
    runs under cProfile and writes its profile there when it stops."""
    settings: dict[str, Any] = {**ZCHAT_BROKER}
    if ports.range is not None:  # every port of the run in the range asked for
        settings.update(router=f"tcp://127.0.0.1:{ports()}", pub=f"tcp://127.0.0.1:{ports()}",
                        key_endpoint=f"tcp://127.0.0.1:{ports()}")
    with contextlib.ExitStack() as stack:
        broker = stack.enter_context(bench.broker(name, **settings))
        proc, port = stack.enter_context(gateway(broker, ports, profile))
        yield Server("zchat", port, {"zchat irc": proc.pid, "broker": broker.proc.pid},
                     settings=[f"broker {k} = {v}" for k, v in ZCHAT_BROKER.items()]
                     + ["broker send_rate_per_s = 0, login_rate_per_s = 0 "
                        "(harness defaults)", "irc guests = true, autojoin = false, "
                        "playback = 0, max_connections_per_address = 0, "
                        "connections_per_minute_per_address = 0 (every "
                        "connection comes from 127.0.0.1)"])


@contextlib.contextmanager
def gateway(broker: BrokerHandle, ports: Ports,
            profile: Path | None) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    home = broker.data_dir / "gateway"
    home.mkdir(exist_ok=True)
    port = ports()
    key = (f'server_key = "{broker.public_key.decode()}"' if broker.public_key
           else 'encryption = "none"')
    conf = home / "zchat.toml"
    conf.write_text(GATEWAY_CONF.format(router=broker.router, server_key=key, port=port))
    env = {**os.environ, "HOME": str(home), "XDG_CONFIG_HOME": str(home / "config"),
           "XDG_DATA_HOME": str(home / "data"), "XDG_STATE_HOME": str(home / "state"),
           "PYTHONUNBUFFERED": "1"}
    runner = [sys.executable]
    if profile is not None:
        profile.mkdir(parents=True, exist_ok=True)
        runner += ["-m", "cProfile", "-o", str(profile / f"gateway-{time.time_ns()}.prof")]
    log = home / "gateway.log"
    proc: subprocess.Popen[bytes] | None = None
    try:
        with sigterm_held(), open(log, "wb") as out:
            proc = subprocess.Popen([*runner, "-m", "zchat", "irc", "--config", str(conf)],
                                    stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env)
        _wait_port(port, proc, log, "zchat irc")
        yield proc, port
    finally:
        if proc is not None:
            _stop(proc)


# -- the IRC load ------------------------------------------------------------------------

class Link(asyncio.Protocol):
    """One raw IRC connection: lines in, PONG to PING, PRIVMSGs to ``on_message``
    (text, arrival time in ns), other lines kept for ``expect``."""

    def __init__(self, on_message: Callable[[bytes, int], None] | None = None) -> None:
        self.on_message = on_message
        self.transport: asyncio.Transport | None = None
        self.buffer = b""
        self.lines: list[bytes] = []
        self.changed = asyncio.Event()
        self.closed = False
        self.writable = asyncio.Event()
        self.writable.set()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        *lines, self.buffer = (self.buffer + data).split(b"\r\n")
        for line in lines:
            at = line.find(b" PRIVMSG ")
            if at >= 0 and self.on_message is not None:
                self.on_message(line[line.index(b" :", at) + 2:], now)
            elif line.startswith(b"PING "):
                self.write(b"PONG " + line[5:] + b"\r\n")
            else:
                self.lines.append(line)
        self.changed.set()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.changed.set()
        self.writable.set()

    def pause_writing(self) -> None:
        self.writable.clear()

    def resume_writing(self) -> None:
        self.writable.set()

    def write(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)

    async def expect(self, needle: bytes, timeout_s: float = 60.0) -> bytes:
        """The first kept line containing ``needle`` (consumed with those before it);
        RuntimeError on timeout, on close, or on an ERROR / 4xx numeric before it."""
        deadline = time.monotonic() + timeout_s
        while True:
            for n, line in enumerate(self.lines):
                if needle in line:
                    del self.lines[:n + 1]
                    return line
                parts = line.split(b" ", 2)
                if line.startswith(b"ERROR") or (len(parts) > 1 and parts[1][:1] in b"45"
                                                  and parts[1] != b"422"):  # 422: no MOTD
                    raise RuntimeError(f"waiting for {needle!r}: {line!r}")
            if self.closed:
                raise RuntimeError(f"closed while waiting for {needle!r}: {self.lines[-3:]}")
            self.changed.clear()
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"no {needle!r} in {timeout_s} s: {self.lines[-3:]}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.changed.wait(), left)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


async def connect(server: Server, nick: str, channel: str, setup: bytes = b"",
                  on_message: Callable[[bytes, int], None] | None = None) -> Link:
    """Register ``nick`` on ``server`` and JOIN ``channel``; returns once the NAMES
    list ended (366)."""
    loop = asyncio.get_running_loop()
    _transport, link = await loop.create_connection(lambda: Link(on_message), "127.0.0.1",
                                                    server.port)
    link.write(f"NICK {nick}\r\nUSER {nick} 0 * :{nick}\r\n".encode())
    await link.expect(b" 001 ")
    if setup:
        link.write(setup)
        await link.expect(b" MODE " + nick.encode())  # ngIRCd: +F set (after 381)
        await link.expect(b"+F")
    link.write(f"JOIN {channel}\r\n".encode())
    await link.expect(b" 366 ")
    return link


class Receiver:
    """What one receiver read: per sender, the sequence numbers seen (duplicates and
    order checked), and every latency (ns)."""

    def __init__(self, senders: int, count: int) -> None:
        self.seen = [bytearray(count) for _ in range(senders)]
        self.got = [0] * senders
        self.highest = [-1] * senders
        self.duplicates = self.out_of_order = self.foreign = 0
        self.latencies: list[int] = []
        self.last_ns = 0
        self.progress: asyncio.Event | None = None

    def on_message(self, text: bytes, now_ns: int) -> None:
        try:
            sender_b, seq_b, stamp_b, _pad = text.split(b" ", 3)
            sender, seq, stamp = int(sender_b), int(seq_b), int(stamp_b)
            seen = self.seen[sender]
            seen[seq]  # noqa: B018 - an IndexError for a number never sent
        except (ValueError, IndexError):
            self.foreign += 1
            return
        if seen[seq]:
            self.duplicates += 1
            return
        seen[seq] = 1
        self.got[sender] += 1
        if seq < self.highest[sender]:
            self.out_of_order += 1
        else:
            self.highest[sender] = seq
        self.latencies.append(now_ns - stamp)
        self.last_ns = now_ns
        if self.progress is not None:
            self.progress.set()


def message(sender: int, seq: int) -> bytes:
    head = f"{sender} {seq} {time.monotonic_ns()} "
    return head.encode() + b"x" * (TEXT_BYTES - len(head))


async def run_load(server: Server, tag: str, senders: int, receivers: int, count: int,
                   rate_per_s: float | None) -> dict[str, Any]:
    """N senders -> M receivers in channel ``#b<tag>``: ``count`` messages per sender,
    windowed (``rate_per_s`` None) or paced at ``rate_per_s`` in all. Returns the
    figures: messages, deliveries, rates, latency percentiles (ms), lost, duplicates,
    out of order."""
    channel = f"#b{tag}"
    progress = asyncio.Event()
    readers = [Receiver(senders, count) for _ in range(receivers)]
    for r in readers:
        r.progress = progress
    links: list[Link] = []
    try:
        links += await asyncio.gather(*(
            connect(server, f"r{tag}x{j}", channel, on_message=r.on_message)
            for j, r in enumerate(readers)))
        sending = await asyncio.gather(*(
            connect(server, f"s{tag}x{i}", channel, server.sender_setup(f"s{tag}x{i}"))
            for i in range(senders)))
        links += sending

        async def windowed(i: int, link: Link) -> None:
            seq = 0
            while seq < count and not link.closed:
                inflight = seq - min(r.got[i] for r in readers)
                if inflight >= WINDOW:
                    progress.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(progress.wait(), STALL_S)
                    if seq - min(r.got[i] for r in readers) >= WINDOW and \
                            time.monotonic_ns() - max(r.last_ns for r in readers) \
                            > STALL_S * 1e9:
                        return  # stalled: what is missing counts as lost
                    continue
                batch = min(WINDOW - inflight, count - seq)
                link.write(b"".join(b"PRIVMSG " + channel.encode() + b" :" +
                                    message(i, seq + k) + b"\r\n" for k in range(batch)))
                seq += batch
                await link.writable.wait()

        async def paced(i: int, link: Link) -> None:
            period_ns = int(1e9 * senders / rate_per_s)  # type: ignore[operator]
            start = t0 + i * int(1e9 / rate_per_s)  # type: ignore[operator]
            for seq in range(count):
                wait_ns = start + seq * period_ns - time.monotonic_ns()
                if wait_ns > 0:
                    await asyncio.sleep(wait_ns / 1e9)  # pacing to the schedule
                link.write(b"PRIVMSG " + channel.encode() + b" :" + message(i, seq) +
                           b"\r\n")

        t0 = time.monotonic_ns()
        await asyncio.gather(*((windowed if rate_per_s is None else paced)(i, link)
                               for i, link in enumerate(sending)))
        total = senders * count
        while any(sum(r.got) < total for r in readers):
            progress.clear()
            try:
                await asyncio.wait_for(progress.wait(), STALL_S)
            except TimeoutError:
                break  # nothing more comes: the rest is lost
        t1 = max(r.last_ns for r in readers) or time.monotonic_ns()
    finally:
        for link in links:
            link.close()
    delivered = sum(sum(r.got) for r in readers)
    seconds = max(t1 - t0, 1) / 1e9
    lat = sorted(x for r in readers for x in r.latencies)
    figures: dict[str, Any] = {
        "senders": senders, "receivers": receivers, "messages": total,
        "delivered": delivered, "seconds": seconds,
        "messages_per_s": delivered / receivers / seconds,
        "deliveries_per_s": delivered / seconds,
        "lost": total * receivers - delivered,
        "duplicates": sum(r.duplicates for r in readers),
        "out_of_order": sum(r.out_of_order for r in readers),
        "foreign": sum(r.foreign for r in readers),
        "offered_per_s": rate_per_s, "window": None if rate_per_s else WINDOW,
    }
    for label, q in (("p50", 50), ("p99", 99), ("p99.9", 99.9), ("max", 100)):
        figures[f"{label}_ms"] = percentile(lat, q) / 1e6  # type: ignore[arg-type]
    return figures


async def idle_memory(server: Server, tag: str, counts: tuple[int, ...]) -> dict[str, Any]:
    """RSS (KiB) of each of the server's processes with 0 and each of ``counts`` idle
    registered connections (each in a channel of GROUP members), opened 50 at a time.
    When a connection fails (the server closed it, or refused it), the counts from there
    on are not measured: ``failed`` says at which connection and why."""
    def sample() -> dict[str, int]:
        return {name: rss_kib(pid) for name, pid in server.pids.items()}

    figures: dict[str, Any] = {"0": sample(), "connect_s": {}, "failed": None}
    links: list[Link] = []
    try:
        for target in counts:
            start = time.monotonic()
            while len(links) < target:
                batch = range(len(links), min(target, len(links) + 50))
                opened = await asyncio.gather(*(
                    connect(server, f"m{tag}x{n}", f"#i{tag}x{n // GROUP}") for n in batch),
                    return_exceptions=True)
                links += [link for link in opened if isinstance(link, Link)]
                failures = [e for e in opened if isinstance(e, BaseException)]
                if failures:
                    figures["failed"] = {"target": target, "connected": len(links),
                                         "error": str(failures[0])}
                    return figures
            figures["connect_s"][str(target)] = time.monotonic() - start
            await asyncio.sleep(1.0)  # let the joins' last events settle before sampling
            figures[str(target)] = sample()
    finally:
        for link in links:
            link.close()
    return figures


# -- the scenario ------------------------------------------------------------------------

def measure(server: Server, quick: bool, run: str, max_rate_only: bool = False
            ) -> dict[str, Any]:
    """Every figure of one server: max rate and fixed rate per shape, then memory
    (``max_rate_only``: the max-rate runs alone, for a profile of that load)."""
    shapes = QUICK_SHAPES if quick else SHAPES
    result: dict[str, Any] = {"max_rate": {}, "fixed_rate": {}, "settings": server.settings,
                              "memory": {"0": {}, "connect_s": {}, "failed": None}}

    async def main() -> None:
        for n, (senders, receivers) in enumerate(shapes):
            shape = f"{senders}x{receivers}"
            result["max_rate"][shape] = await run_load(
                server, f"{run}m{n}", senders, receivers,
                QUICK_MESSAGES if quick else
                min(MESSAGES, DELIVERIES // (senders * receivers)), None)
            if max_rate_only:
                continue
            seconds = QUICK_SECONDS if quick else SECONDS
            result["fixed_rate"][shape] = await run_load(
                server, f"{run}f{n}", senders, receivers,
                max(1, int(RATE_PER_S * seconds / senders)), RATE_PER_S)
        if not max_rate_only:
            result["memory"] = await idle_memory(server, run, QUICK_IDLE if quick else IDLE)

    asyncio.run(main())
    return result


def correctness(figures: dict[str, Any]) -> str:
    bad = {k: figures[k] for k in ("lost", "duplicates", "out_of_order", "foreign")
           if figures[k]}
    return f"{bad}" if bad else ""


def table(results: dict[str, dict[str, Any]]) -> list[tuple[str, str, float, float]]:
    """Rows (figure, unit, zchat, ngIRCd or nan) from both servers' results."""
    z, g = results["zchat"], results.get("ngIRCd")
    nan = float("nan")
    rows: list[tuple[str, str, float, float]] = []
    for run, label in (("max_rate", "max rate"), ("fixed_rate", f"{RATE_PER_S} msg/s")):
        for shape, zf in z[run].items():
            gf = g[run].get(shape) if g else None
            senders, receivers = shape.split("x")
            who = f"{label} {senders} -> {receivers}"
            figures = (("messages_per_s", "msg/s"), ("deliveries_per_s", "deliveries/s")) \
                if run == "max_rate" else ()
            for key, unit in (*figures, ("p50_ms", "ms"), ("p99_ms", "ms"),
                              ("p99.9_ms", "ms")):
                name = key.removesuffix("_ms").removesuffix("_per_s").replace("_", " ")
                rows.append((f"{who} {name}", unit, zf[key], gf[key] if gf else nan))
            rows.append((f"{who} lost+doubled+reordered", "msgs",
                         zf["lost"] + zf["duplicates"] + zf["out_of_order"],
                         gf["lost"] + gf["duplicates"] + gf["out_of_order"] if gf else nan))
    zm, gm = z["memory"], g["memory"] if g else {}
    counts = sorted({int(k) for m in (zm, gm) for k in m if k.isdigit() and k != "0"})
    for proc in zm["0"]:
        ng = proc == "zchat irc" and bool(gm)  # ngIRCd's figures beside the gateway's

        def mib(memory: dict[str, Any], k: int, who: str) -> float:
            return memory[str(k)][who] / 1024 if str(k) in memory else nan

        def per(memory: dict[str, Any], k: int, who: str) -> float:
            return ((memory[str(k)][who] - memory["0"][who]) / k if str(k) in memory
                    else nan)

        rows.append((f"idle RSS {proc}, 0 connections", "MiB", mib(zm, 0, proc),
                     mib(gm, 0, "ngircd") if ng else nan))
        for k in counts:
            rows.append((f"idle RSS {proc}, {k} connections", "MiB", mib(zm, k, proc),
                         mib(gm, k, "ngircd") if ng else nan))
            rows.append((f"idle RSS {proc} per connection ({k})", "KiB", per(zm, k, proc),
                         per(gm, k, "ngircd") if ng else nan))
    return [row for row in rows if row[2] == row[2] or row[3] == row[3]]  # not both nan


def fmt(value: float) -> str:
    if value != value:  # nan
        return "-"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3f}"


def print_table(rows: list[tuple[str, str, float, float]], header: str,
                notes: list[str]) -> None:
    lines = [("figure", "unit", "zchat", "ngIRCd", "zchat/ngIRCd")]
    for name, unit, z, g in rows:
        ratio = "-" if g != g or z != z or g == 0 else f"{z / g:.2f}"
        lines.append((name, unit, fmt(z), fmt(g), ratio))
    widths = [max(len(line[i]) for line in lines) for i in range(5)]
    print(header)
    for n, line in enumerate(lines):
        print("  ".join([line[0].ljust(widths[0]), line[1].ljust(widths[1]),
                         *(cell.rjust(w) for cell, w in zip(line[2:], widths[2:], strict=True)),
                         ]).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for note in notes:
        print(f"note: {note}")


def run_both(bench: Bench, ports: Ports, profile: Path | None = None,
             ngircd_binary: str | None = "ngircd"
             ) -> tuple[dict[str, dict[str, Any]], list[str]]:
    """zchat's figures, then ngIRCd's when ``ngircd_binary`` (a name looked up on PATH
    or a path) is there; and the notes to print."""
    notes: list[str] = []
    results: dict[str, dict[str, Any]] = {}
    run = f"{os.getpid() % 1000}"
    with zchat(bench, ports, profile) as server:
        results["zchat"] = measure(server, bench.quick, run, profile is not None)
    notes.append("zchat settings: " + "; ".join(results["zchat"]["settings"]))
    binary = shutil.which(ngircd_binary) if ngircd_binary else None
    if binary is None:
        notes.append(NGIRCD_HINT + " (only the zchat half was measured)")
    elif profile is not None:
        notes.append("--profile: zchat irc ran under cProfile, which slows it, and only "
                     "the max-rate runs were made: ngIRCd was not measured (no ratios)")
    else:
        with ngircd(binary, ports) as server:
            results["ngIRCd"] = measure(server, bench.quick, run)
        notes.append("ngIRCd settings: " + "; ".join(results["ngIRCd"]["settings"]))
        notes.append("at max rate ngIRCd outruns this one-process Python harness: its "
                     "figures there are the harness's ceiling, so the ratio is a bound")
    notes.append(f"max rate: each sender keeps {WINDOW} messages in flight (not yet read "
                 "by its slowest receiver), latency there is mostly that queue; fixed rate: "
                 f"{RATE_PER_S} msg/s in all on a schedule")
    for name, result in results.items():
        if failed := result["memory"]["failed"]:
            notes.append(f"memory: {name} did not take {failed['target']} idle connections: "
                         f"after {failed['connected']}, {failed['error']}")
    notes.append(f"memory: VmRSS with idle registered connections, {GROUP} per channel; "
                 "per connection = (RSS with K - RSS with 0) / K; the broker holds one "
                 "zchat session per IRC connection")
    return results, notes


def errors(results: dict[str, dict[str, Any]]) -> list[str]:
    found = []
    for name, result in results.items():
        for run in ("max_rate", "fixed_rate"):
            for shape, figures in result[run].items():
                if wrong := correctness(figures):
                    found.append(f"{name} {run} {shape}: {wrong}")
    return found


def scenario(bench: Bench) -> list[Row]:
    """benchmarks/run.py's entry: each zchat figure a row, its ratio to ngIRCd's."""
    results, notes = run_both(bench, Ports())  # ngircd as found on PATH
    for note in notes:
        bench.note(f"irc: {note}")
    wrong = errors(results)
    rows = []
    for name, unit, z, g in table(results):
        rows.append(Row(f"{name} (ngIRCd {fmt(g)})", z, unit,
                        None if g != g or g == 0 else z / g))
    rows[0].raw = results
    if wrong:
        rows[0].error = "; ".join(wrong)
    return rows


SCENARIOS: dict[str, Callable[[Bench], list[Row]]] = {"irc": scenario}


def _terminated(signum: int, _frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    parser.add_argument("--json", type=Path, default=None,
                        help="also write the raw figures to FILE")
    parser.add_argument("--ports", default="", metavar="LO-HI",
                        help="take every port of the run from this range (default: any "
                             "free port)")
    parser.add_argument("--profile", type=Path, default=None, metavar="DIR",
                        help="run zchat irc under cProfile (its profile written to DIR "
                             "when it stops) for the max-rate runs only, without ngIRCd")
    parser.add_argument("--ngircd", default="ngircd", metavar="BINARY",
                        help="the ngIRCd to compare with (default: ngircd on PATH; when "
                             "absent, only the zchat half runs)")
    args = parser.parse_args(argv)
    try:
        ports = Ports(args.ports)
    except ValueError:
        parser.error(f"--ports: not LO-HI: {args.ports!r}")
    import zmq

    info = machine_info()
    started = time.monotonic()
    ctx: zmq.Context[Any] = zmq.Context()
    with tempfile.TemporaryDirectory(prefix="zchat-bench-irc-") as tmp:
        bench = Bench(ctx=ctx, args=args, quick=args.quick, tmp=Path(tmp))
        try:
            results, notes = run_both(bench, ports, args.profile, args.ngircd)
        finally:
            for line in stop_children():
                print(f"stopped a process the run left running: {line}", file=sys.stderr)
    ctx.term()
    after = machine_info()["load_avg_1_5_15"][0]
    header = (f"zchat IRC gateway beside ngIRCd ({'quick' if args.quick else 'full'}) on "
              f"{info['cpu_model'] or '?'} x{info['cores']}, Python {info['python']}, "
              f"{info['date_utc']}; {time.monotonic() - started:.0f} s; load average "
              f"{info['load_avg_1_5_15'][0]:.1f} before, {after:.1f} after")
    print_table(table(results), header, notes)
    wrong = errors(results)
    for line in wrong:
        print(f"ERROR: {line}")
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"machine": info, "quick": args.quick,
                                         "results": results, "notes": notes,
                                         "errors": wrong}, indent=2) + "\n")
    return 1 if wrong else 0


if __name__ == "__main__":
    raise SystemExit(main())
