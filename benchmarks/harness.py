"""Shared pieces of the zchat benchmarks: a real ``zchat broker`` subprocess on loopback,
free ports, CurveZMQ client set-up, and a blocking raw client over the codec.

Every scenario module (benchmarks/*.py) imports from here; benchmarks/run.py runs them.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import zmq

from zchat import protocol as p

WINDOW = 200          # SEND requests in flight at once
PAYLOAD = "x" * 100   # 100-byte message text, as in the performance issue


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: The broker's public key (Z85) when it runs with CURVE; None for a plain broker.
BROKER_KEY: bytes | None = None


def secure(sock: zmq.Socket[Any]) -> None:
    """Make ``sock`` a CurveZMQ client of the broker, when it encrypts (before connect)."""
    if BROKER_KEY is not None:
        public, secret = zmq.curve_keypair()
        sock.curve_serverkey, sock.curve_publickey, sock.curve_secretkey = (
            BROKER_KEY, public, secret)


def start_broker(data_dir: Path, scrypt_n: int,
                 encryption: str = "curve") -> tuple[subprocess.Popen[str], str]:
    global BROKER_KEY
    router, pub = free_port(), free_port()
    config = data_dir / "bench.toml"
    # The SEND rate limit is off: one sender keeping a window of requests in flight
    # measures the broker's ceiling, not its protection (docs/PROTOCOL.md §15).
    config.write_text(f"[broker]\nscrypt_n = {scrypt_n}\nlog_level = \"warning\"\n"
                      f"send_rate_per_s = 0\nencryption = \"{encryption}\"\n")
    proc = subprocess.Popen(
        [sys.executable, "-m", "zchat", "broker", "--config", str(config), "--data-dir",
         str(data_dir), "--router", f"tcp://127.0.0.1:{router}",
         "--pub", f"tcp://127.0.0.1:{pub}"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert proc.stdout is not None
    BROKER_KEY = None
    for line in proc.stdout:
        if "public key:" in line:
            BROKER_KEY = line.split()[-1].encode()
        if "fingerprint" in line or "encryption none" in line:
            break
    return proc, f"tcp://127.0.0.1:{router}"


class RawClient:
    """A blocking client over the codec, for load generation without asyncio overhead."""

    def __init__(self, ctx: zmq.Context[Any], server: str) -> None:
        self.dealer = ctx.socket(zmq.DEALER)
        self.dealer.linger = 0
        secure(self.dealer)
        self.dealer.connect(server)
        self.n = 0
        self.info: p.InfoReply = self.call(p.Info())

    def send(self, req: p.Request) -> bytes:
        self.n += 1
        rid = str(self.n).encode()
        self.dealer.send_multipart(p.encode_request(rid, req))
        return rid

    def call(self, req: p.Request) -> Any:
        rid = self.send(req)
        while True:
            got, value = p.decode_from_broker(self.dealer.recv_multipart(), {rid: req.REPLY})
            if got == rid:
                if isinstance(value, p.Error):
                    raise RuntimeError(f"{req.TYPE}: {value.status} {value.reason}")
                return value


