"""Raw CURVE subscribers of the broker's PUB, for the tests of who may subscribe and of
what subscribers that never read cost (a ``zchat broker`` subprocess on loopback tcp):
``broker_key`` is the broker's public key as the test pinned it, ``Subscriber`` a SUB that
subscribes to everything and never reads, with a monitor that tells how its handshake
ended, and ``settle`` waits, with a deadline, until every handshake has.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import zmq
from conftest import TcpBroker, wait_until
from zmq.utils.monitor import parse_monitor_message


def broker_key(tmp_path: Path, broker: TcpBroker) -> bytes:
    from zchat.client import trust
    pins = trust.load_known_brokers(tmp_path / "xdg-config" / "zchat" /
                                   trust.KNOWN_BROKERS_FILE)
    return pins[broker.router].encode()


class Subscriber:
    """A raw CURVE SUB that subscribes to everything and never reads, with a monitor that
    says how its handshake ended: "ok", "refused" (ZAP said no) or None (not yet)."""

    def __init__(self, ctx: zmq.Context[Any], endpoint: str, server_key: bytes,
                 keypair: tuple[bytes, bytes] | None = None) -> None:
        public, secret = keypair or zmq.curve_keypair()
        self.sub = ctx.socket(zmq.SUB)
        self.sub.setsockopt(zmq.LINGER, 0)
        self.sub.setsockopt(zmq.RCVHWM, 1)
        self.sub.setsockopt(zmq.CURVE_SERVERKEY, server_key)
        self.sub.setsockopt(zmq.CURVE_PUBLICKEY, public)
        self.sub.setsockopt(zmq.CURVE_SECRETKEY, secret)
        self.monitor = self.sub.get_monitor_socket(
            zmq.EVENT_HANDSHAKE_SUCCEEDED | zmq.EVENT_HANDSHAKE_FAILED_AUTH)
        self.sub.setsockopt(zmq.SUBSCRIBE, b"")
        self.sub.connect(endpoint)
        self.outcome: str | None = None

    def poll(self) -> str | None:
        while self.outcome is None and self.monitor.poll(0):
            event = parse_monitor_message(self.monitor.recv_multipart())
            if event["event"] == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self.outcome = "ok"
            elif event["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self.outcome = f"refused {event['value']}"
        return self.outcome

    def close(self) -> None:
        self.sub.disable_monitor()
        self.monitor.close(linger=0)
        self.sub.close(linger=0)


def settle(subs: list[Subscriber], timeout_s: float = 10) -> list[str]:
    wait_until(lambda: all(s.poll() for s in subs), timeout_s=timeout_s,
               what="every subscriber's handshake to end")
    return [s.poll() or "" for s in subs]
