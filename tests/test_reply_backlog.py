"""Replies cannot pile up for a peer that never reads (docs/PROTOCOL.md §15, issue 14 item 2):
the reading budget on a fake clock, a real ``zchat broker`` subprocess (CurveZMQ, loopback
tcp) sent 600 pipelined HISTORY requests of 500 messages of 4,000 bytes (~2 MB a reply) by
a client that never reads while an honest client PINGs, and the "SendQ exceeded" rule on
an in-process broker.

Bounds asserted, and why: the honest client's worst PING round trip stays under 1.5 s (the
unbounded broker answered 256 requests per wake-up before sending anything: ~7 s here,
70 s of full CPU for 4,000 requests), and the broker's peak resident memory grows by less
than 256 MiB (16 MiB of budget, then 1 MiB a second; it grew by ~1.2 GB here, 6.5-8 GB
for 4,000). Nothing sleeps: every wait is a poll with a deadline.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from conftest import TcpBroker, run, start_broker, stop_broker, wait_until
from floods import Pinger, memory_kib
from raw_helpers import call

from zchat import wire as p
from zchat.config import BrokerConfig, ConfigError, config_from_dict
from zchat.core import Account, BrokerCore, Session, ToPeer
from zchat.errors import Status
from zchat.ratelimit import ByteBudget
from zchat.store import Store
from zchat.testing import DEFAULT_PASSWORD, running_broker

FLOOD_REQUESTS = 600
WORST_RTT_S = 1.5
GROWTH_KIB = 256 * 1024


def test_byte_budget_goes_into_debt_and_pays_it_back() -> None:
    budget = ByteBudget(rate_per_s=1000.0, burst=5000, now_s=0.0)
    assert budget.wait_ms(0.0) == 0
    budget.charge(12_000, 0.0)  # one reply bigger than the burst still went out
    assert budget.wait_ms(0.0) == 7001  # 7,000 bytes of debt and one more byte, at 1 kB/s
    assert budget.wait_ms(7.0) == 1
    assert budget.wait_ms(7.002) == 0
    budget.charge(10, 100.0)
    assert budget.tokens == 4990  # refilled to the burst, not beyond


def test_reading_requests_get_429_once_the_account_budget_is_spent() -> None:
    cfg = BrokerConfig(read_rate_bytes_per_s=1024.0, read_burst_bytes=65_536,
                       argon2_memory_kib=1024, argon2_time_cost=1, login_rate_per_s=0)
    core = BrokerCore(Store(":memory:"), cfg, "inproc://pub", 0)
    key = "ann"
    core.accounts[key] = Account("ann", False)
    core.sessions[b"s1"] = Session(b"s1", "t1", key, "ann", "", 0, 0.0, 0)
    core.sessions[b"s2"] = Session(b"s2", "t2", key, "ann", "", 0, 0.0, 0)

    def ask(rid: bytes, now_s: float) -> p.Reply | p.Error:
        [reply] = core.handle(rid, p.encode_request(b"q", p.ListRooms()), now_s, 0)
        assert isinstance(reply, ToPeer)
        value: p.Reply | p.Error = p.decode_from_broker(reply.frames, {b"q": p.RoomList})[1]
        return value

    spent = 0
    while isinstance(ask(b"s1", 0.0), p.RoomList):
        spent += 1
        assert spent < 10_000
    err = ask(b"s1", 0.0)
    assert isinstance(err, p.Error) and err.status == Status.TOO_MANY_REQUESTS
    assert err.reason.startswith("reading too fast: wait ") and err.retry_after_ms >= 1
    # the account's other session shares the budget: a second LOGIN brings no new one
    assert isinstance(ask(b"s2", 0.0), p.Error)
    # PING is not charged
    [pong] = core.handle(b"s1", p.encode_request(b"q", p.Ping()), 0.0, 0)
    assert isinstance(pong, ToPeer) and pong.frames[2] == b"OK"
    assert isinstance(ask(b"s1", err.retry_after_ms / 1000), p.RoomList)


def test_settings_have_defaults_and_bounds() -> None:
    cfg = BrokerConfig()
    assert (cfg.read_rate_bytes_per_s, cfg.read_burst_bytes) == (1_048_576.0, 16_777_216)
    assert config_from_dict({"broker": {"read_rate_bytes_per_s": 0}}) \
        .broker.read_rate_bytes_per_s == 0
    for bad in ({"read_rate_bytes_per_s": 10.0}, {"read_burst_bytes": 1000}):
        with pytest.raises(ConfigError) as err:
            config_from_dict({"broker": bad})
        assert next(iter(bad)) in str(err.value)


# -- a real broker -----------------------------------------------------------------------------


@pytest.fixture
def curve_broker(tmp_path: Path) -> Iterator[tuple[TcpBroker, bytes]]:
    broker, lines = start_broker(tmp_path, settings="send_rate_per_s = 0\n")
    try:
        yield broker, next(ln for ln in lines if "public key:" in ln).split()[-1].encode()
    finally:
        if broker.process.popen.poll() is None:
            rc, _ = stop_broker(broker)
            assert rc == 0, broker.process.stderr


def test_a_client_that_never_reads_cannot_stall_or_swell_the_broker(
        curve_broker: tuple[TcpBroker, bytes]) -> None:
    broker, key = curve_broker
    ctx = zmq.Context.instance()
    flood = ctx.socket(zmq.DEALER)
    flood.setsockopt(zmq.LINGER, 0)
    flood.setsockopt(zmq.SNDHWM, 0)
    flood.setsockopt(zmq.RCVHWM, 1)
    public, secret = zmq.curve_keypair()
    flood.curve_serverkey, flood.curve_publickey, flood.curve_secretkey = key, public, secret
    flood.connect(broker.router)
    try:
        call(flood, b"r", p.Register(name="flood", password=DEFAULT_PASSWORD))
        assert call(flood, b"l", p.Login(name="flood", password=DEFAULT_PASSWORD))[2] == b"OK"
        assert call(flood, b"j", p.Join(room="lobby"))[2] == b"OK"
        text = "x" * 4000
        for i in range(p.MAX_HISTORY_LIMIT):
            flood.send_multipart(p.encode_request(b"s%d" % i, p.Send(room="lobby", text=text)))
        for _ in range(p.MAX_HISTORY_LIMIT):
            assert flood.poll(20_000)
            assert flood.recv_multipart()[2] == b"OK"
        pid = broker.process.popen.pid
        before = memory_kib(pid)
        with Pinger(ctx, broker.router, key) as pinger:
            page = p.encode_request(b"h", p.FetchHistory(room="lobby",
                                                        limit=p.MAX_HISTORY_LIMIT))
            for _ in range(FLOOD_REQUESTS):  # ~2 MB a reply, never read
                flood.send_multipart(page)
            wait_until(lambda: len(pinger.rtts) >= 120 or pinger.worst > WORST_RTT_S
                       or pinger.error, timeout_s=30, what="120 honest PINGs")
        after = memory_kib(pid)
    finally:
        flood.close(linger=0)
    assert pinger.error is None, pinger.error
    assert pinger.worst < WORST_RTT_S, f"an honest PING waited {pinger.worst:.1f} s"
    assert after["VmHWM"] - before["VmHWM"] < GROWTH_KIB, (before, after)


def test_a_session_whose_queue_is_full_is_ended() -> None:
    """SendQ exceeded (§15.2): a logged-in peer that never reads has its session ended
    at the first reply its full queue drops; the broker serves everyone else."""

    async def main() -> None:
        with running_broker(sndhwm=20, read_rate_bytes_per_s=0) as h:
            async with h.client("ann") as ann, h.client("bob") as bob:
                sock = h.context.socket(zmq.DEALER)
                sock.setsockopt(zmq.LINGER, 0)
                sock.setsockopt(zmq.RCVHWM, 1)
                sock.connect(h.server)
                try:
                    assert call(sock, b"l", p.Login(name="ann", password=DEFAULT_PASSWORD)
                                )[2] == b"OK"
                    assert len(h.broker.core.accounts["ann"].sessions) == 2
                    for i in range(200):
                        sock.send_multipart(p.encode_request(b"w%d" % i, p.Who()))
                    wait_until(lambda: len(h.broker.core.accounts["ann"].sessions) == 1,
                               timeout_s=10, what="the unread session ended")
                    assert (await bob.ping()) is not None
                    assert (await ann.ping()) is not None  # ann's other session is kept
                finally:
                    sock.close(linger=0)

    run(main(), timeout_s=30)
