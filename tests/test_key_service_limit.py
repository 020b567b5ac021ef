"""The key service's rate limit per peer address (docs/PROTOCOL.md §16.3, §15.1):
``zchat.KeyService`` on a fake clock, the settings' bounds, and a real broker thread
on loopback tcp whose key service stops answering one address after its burst.

No sleeps: the live test counts replies to a known number of requests, waiting for each
with a deadline, and never asserts a duration.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from zchat import keyformat
from zchat.broker.key_service import KeyService
from zchat.broker.loop import BrokerThread
from zchat.client.client import Client
from zchat.config import BrokerConfig, ConfigError, config_from_dict
from zchat.store import Store

PUBLIC = b"rq:rM>}U?@Lns47E1%kR.o@n%FcmmsL/@{H8]yf7"
REPLY = [keyformat.KEY_REPLY, b"curve", PUBLIC]


def ask(service: KeyService, rid: bytes, address: str, now_s: float,
        request: bytes = keyformat.KEY_REQUEST) -> list[bytes] | None:
    return service.reply([rid, request], address, now_s)


def test_burst_then_rate_per_address_and_drops_are_silent() -> None:
    service = KeyService(PUBLIC, rate_per_s=1.0, burst=3)
    answers = [ask(service, b"r%d" % i, "10.0.0.7", 100.0) for i in range(5)]
    assert answers[:3] == [[b"r0", *REPLY], [b"r1", *REPLY], [b"r2", *REPLY]]
    assert answers[3:] == [None, None]  # over the burst: dropped, no answer at all
    assert service.dropped == 2
    # another address has its own full bucket
    assert ask(service, b"x", "10.0.0.8", 100.0) == [b"x", *REPLY]
    # one token a second comes back: at +0.9 s still none, at +1.0 s one request
    assert ask(service, b"a", "10.0.0.7", 100.9) is None
    assert ask(service, b"b", "10.0.0.7", 101.0) == [b"b", *REPLY]
    assert ask(service, b"c", "10.0.0.7", 101.0) is None
    assert service.dropped == 4


def test_junk_takes_a_token_too_and_is_never_answered() -> None:
    service = KeyService(PUBLIC, rate_per_s=1.0, burst=2)
    assert ask(service, b"j", "192.0.2.1", 0.0, request=b"GIMME") is None
    assert service.dropped == 0  # ignored as junk, not as over the limit
    assert ask(service, b"k", "192.0.2.1", 0.0) == [b"k", *REPLY]
    assert ask(service, b"l", "192.0.2.1", 0.0) is None  # the junk used the other token
    assert service.dropped == 1


def test_ipv6_block_shares_a_bucket_and_inproc_is_per_connection() -> None:
    service = KeyService(PUBLIC, rate_per_s=0.5, burst=1)
    assert ask(service, b"a", "2001:db8::1", 0.0) is not None
    assert ask(service, b"b", "2001:db8::ffff", 0.0) is None  # same /64 (RFC 6177)
    assert ask(service, b"c", "2001:db8:0:1::1", 0.0) is not None  # another /64
    assert ask(service, b"d", "", 0.0) is not None  # no address: keyed by routing id
    assert ask(service, b"e", "", 0.0) is not None
    assert ask(service, b"d", "", 0.0) is None


def test_rate_zero_turns_the_limit_off() -> None:
    service = KeyService(PUBLIC, rate_per_s=0.0, burst=1)
    assert all(ask(service, b"r", "10.0.0.1", 0.0) == [b"r", *REPLY] for _ in range(500))
    assert service.dropped == 0


def test_bucket_table_is_bounded() -> None:
    service = KeyService(PUBLIC, rate_per_s=0.001, burst=1, max_entries=4)
    for i in range(100):
        ask(service, b"r", f"10.1.0.{i}", 0.0)
    assert service._buckets is not None and len(service._buckets) == 4


def test_settings_have_defaults_and_bounds() -> None:
    cfg = BrokerConfig()
    assert (cfg.key_rate_per_s, cfg.key_burst) == (1.0, 30)
    toml = (Path(__file__).resolve().parent.parent / "zchat" / "data" / "zchat.toml").read_text()
    assert "key_rate_per_s = 1.0\n" in toml and "key_burst = 30\n" in toml
    assert config_from_dict({"broker": {"key_rate_per_s": 0}}).broker.key_rate_per_s == 0
    for bad in ({"key_rate_per_s": -1.0}, {"key_rate_per_s": 2e6}, {"key_burst": 0}):
        with pytest.raises(ConfigError) as err:
            config_from_dict({"broker": bad})
        assert next(iter(bad)) in str(err.value)


# -- a real broker on loopback tcp ---------------------------------------------------------


@contextlib.contextmanager
def tcp_broker(tmp_path: Path, ctx: zmq.Context[Any], **overrides: Any) -> Iterator[Any]:
    cfg = BrokerConfig(router="tcp://127.0.0.1:0", pub="tcp://127.0.0.1:0",
                       data_dir=str(tmp_path / "data"), argon2_memory_kib=1024, argon2_time_cost=1, **overrides)
    with BrokerThread(cfg, Store(tmp_path / "zchat.db"), ctx) as broker:
        yield broker


def answers(ctx: zmq.Context[Any], endpoint: str, requests: int,
            wait_ms: int = 1000) -> int:
    """Send ``requests`` KEY requests on one DEALER and count the replies; once the
    replies stop, each further wait is ``wait_ms`` (the dropped ones never come)."""
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    try:
        dealer.connect(endpoint)
        for _ in range(requests):
            dealer.send(keyformat.KEY_REQUEST)
        got = 0
        while got < requests and dealer.poll(wait_ms):
            frames = dealer.recv_multipart()
            assert frames[:2] == [keyformat.KEY_REPLY, b"curve"]
            got += 1
        return got
    finally:
        dealer.close(linger=0)


def test_live_key_service_drops_requests_over_the_burst(tmp_path: Path,
                                                        ctx: zmq.Context[Any]) -> None:
    # 0.001 a second: no token comes back while the test runs
    with tcp_broker(tmp_path, ctx, key_rate_per_s=0.001, key_burst=5) as broker:
        assert answers(ctx, broker.key_endpoint, 12) == 5
        # a new connection from the same address (127.0.0.1) gets nothing more either
        assert answers(ctx, broker.key_endpoint, 3, wait_ms=300) == 0
        assert broker.key_service.dropped == 10
        # the broker itself is unaffected: its ROUTER still answers INFO over CURVE
        async def info() -> str:
            async with Client(broker.router_endpoint, context=ctx,
                              server_key=broker.keys.public.decode(),
                              known_brokers=tmp_path / "known.toml") as c:
                assert c.info is not None
                return c.info.pub

        assert asyncio.run(asyncio.wait_for(info(), 10)).startswith("tcp://")


def test_live_key_service_without_limit_answers_all(tmp_path: Path,
                                                    ctx: zmq.Context[Any]) -> None:
    with tcp_broker(tmp_path, ctx, key_rate_per_s=0.0) as broker:
        assert answers(ctx, broker.key_endpoint, 60) == 60
        assert broker.key_service.dropped == 0
