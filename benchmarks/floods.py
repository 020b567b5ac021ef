"""One-off measurements of issue 14's floods against a real ``zchat broker`` (CurveZMQ on):
how long an honest client's PING waits, and the broker's peak memory, while one peer

- ``keys``: sends the key service one message of N empty frames (raw ZMTP, 2 bytes a frame);
- ``router``: sends the ROUTER one message of N empty frames over CURVE;
- ``history``: logs in and pipelines N HISTORY requests of 500 messages of ~4 KB without
  ever reading its socket;
- ``rooms``: pipelines N ROOMS after joining ``--rooms`` rooms, never reading (one
  account joins at most MAX_ROOMS_PER_ACCOUNT, 1,000: more rooms need more accounts,
  which this script does not make).

    python benchmarks/floods.py keys --frames 6000000
    python benchmarks/floods.py router --frames 2000000
    python benchmarks/floods.py history --requests 4000
    python benchmarks/floods.py rooms --requests 60 --rooms 1000

Prints the honest client's worst PING round trip during the flood, the broker's VmHWM and
VmRSS before and after, and how long the flood took to send. Timing only; nothing is
asserted (tests/test_key_service_frames.py and tests/test_reply_backlog.py assert
bounds; the ROUTER's many-frame message has no test, PROTOCOL §9). Figures: docs/PERFORMANCE.md, item 15.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import zmq

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from floods import Pinger, flood_curve, flood_plain, memory_kib  # noqa: E402
from harness import FAST_HASH_SETTINGS, run_broker  # noqa: E402

from zchat import wire as p  # noqa: E402


def port_of(endpoint: str) -> int:
    return int(endpoint.rpartition(":")[2])


def login(ctx: zmq.Context[Any], endpoint: str, key: bytes, name: str) -> zmq.Socket[Any]:
    sock = ctx.socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 1)
    sock.setsockopt(zmq.SNDHWM, 0)
    public, secret = zmq.curve_keypair()
    sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = key, public, secret
    sock.connect(endpoint)
    sock.send_multipart(p.encode_request(b"r", p.Register(name=name, password="password1")))
    assert sock.poll(20_000), "no reply to REGISTER"
    sock.recv_multipart()
    sock.send_multipart(p.encode_request(b"l", p.Login(name=name, password="password1")))
    assert sock.poll(20_000), "no reply to LOGIN"
    assert sock.recv_multipart()[2] == b"OK"
    return sock


def fill_room(sock: zmq.Socket[Any], messages: int, text_bytes: int) -> None:
    """Post ``messages`` messages of ``text_bytes`` to #lobby from ``sock`` (logged in)."""
    sock.send_multipart(p.encode_request(b"j", p.Join(room="lobby")))
    assert sock.poll(20_000)
    sock.recv_multipart()
    for i in range(messages):
        sock.send_multipart(p.encode_request(b"s%d" % i, p.Send(room="lobby",
                                                                 text="x" * text_bytes)))
        assert sock.poll(20_000)
        sock.recv_multipart()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("scenario", choices=["keys", "router", "history", "rooms"])
    ap.add_argument("--frames", type=int, default=2_000_000)
    ap.add_argument("--requests", type=int, default=4000)
    ap.add_argument("--rooms", type=int, default=1000)
    ap.add_argument("--settings", default="", help="more [broker] settings, k=v,k=v")
    args = ap.parse_args()
    settings: dict[str, Any] = {**FAST_HASH_SETTINGS, "send_rate_per_s": 0.0,
                                "login_rate_per_s": 0.0}
    for pair in filter(None, args.settings.split(",")):
        k, _, v = pair.partition("=")
        settings[k] = float(v) if "." in v else int(v)
    ctx = zmq.Context.instance()
    with tempfile.TemporaryDirectory(prefix="zchat-floods-") as tmp:
        broker = run_broker(Path(tmp) / "data", settings)
        assert broker.public_key is not None
        try:
            pid = broker.proc.pid
            setup: list[zmq.Socket[Any]] = []
            if args.scenario == "history":
                setup.append(login(ctx, broker.router, broker.public_key, "flood"))
                fill_room(setup[-1], 500, 4000)
            if args.scenario == "rooms":
                setup.append(login(ctx, broker.router, broker.public_key, "flood"))
                sock = setup[-1]
                for i in range(args.rooms):
                    sock.send_multipart(p.encode_request(b"j%d" % i, p.Join(room=f"r{i}")))
                    assert sock.poll(20_000)
                    sock.recv_multipart()
            before = memory_kib(pid)
            with Pinger(ctx, broker.router, broker.public_key) as pinger:
                start = time.monotonic()
                if args.scenario == "keys":
                    held = flood_plain("127.0.0.1", port_of(broker.key_endpoint), args.frames)
                elif args.scenario == "router":
                    held = flood_curve(ctx, broker.router, broker.public_key, args.frames)
                else:
                    sock = setup[-1]
                    req: p.Request = p.FetchHistory(room="lobby", limit=500) \
                        if args.scenario == "history" else p.ListRooms()
                    frames = p.encode_request(b"h", req)
                    for _ in range(args.requests):
                        sock.send_multipart(frames)
                    held = None
                sent = time.monotonic() - start
                # watch until the broker answered a PING promptly again for 3 s
                quiet_since = time.monotonic()
                while time.monotonic() - quiet_since < 3.0:
                    n = len(pinger.rtts)
                    pinger._stop.wait(0.1)
                    if len(pinger.rtts) == n or pinger.rtts[-1] > 0.2:
                        quiet_since = time.monotonic()
                    if time.monotonic() - start > 120:
                        break
                elapsed = time.monotonic() - start
            after = memory_kib(pid)
            if held is not None:
                held.close()
            for s in setup:
                s.close(linger=0)
            rtts = sorted(pinger.rtts)
            print(f"{args.scenario}: sent in {sent:.2f} s; honest PING worst {pinger.worst:.3f} s, "
                  f"p50 {rtts[len(rtts) // 2] * 1000:.1f} ms over {len(rtts)} pings, "
                  f"{elapsed:.1f} s watched")
            print(f"broker memory KiB: before {before}, after {after}")
        finally:
            broker.stop()
            log = broker.log.read_text(errors="replace").splitlines()
            print("\n".join(line for line in log if "stall" in line or "refused" in line
                            or "dropped" in line or "ended" in line)[-2000:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
