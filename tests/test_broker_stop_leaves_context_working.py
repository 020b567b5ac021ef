"""A stopped broker leaves its ZeroMQ context working (zchat.broker.connections.close_monitored).

The broker watches its tcp sockets with libzmq socket monitors, whose events libzmq sends
from the context's I/O thread with a blocking send. The broker used to close its ROUTER,
PUB and key service first and the monitors' receiving ends next; a connection accepted or
ended while libzmq wound those sockets down made one more event with nobody to take it,
which blocked the I/O thread for ever, and every tcp connection of that context with it.
In the test suite (one context for the process) every later test that talked to a broker
over tcp then failed with "no answer": the CI flake of 2026-12 (docs/testing.md).

- The lingering-socket test makes such an event certain and shows the rule holds it off;
  with a plain ``close()`` in place of ``close_monitored`` it fails every time.
- The lifecycle test checks that the broker closes every watched socket by the rule (the
  guard logs an error otherwise): it failed on the old order every time.
- The stress test is the symptom end to end: clients connecting while the broker stops,
  many times; on the old order about one stop in 25 blocked the context.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zmq

from zchat.broker.connections import ConnectionGuard, close_monitored, effective_limits
from zchat.broker.loop import BindError
from zchat.testing import running_broker

HAMMERS = 3
STOPS = 8
BEFORE_S = AFTER_S = 0.03


def free_ports(count: int) -> list[int]:
    """``count`` different TCP ports on 127.0.0.1 free a moment ago (all bound at once,
    then closed: ``free_port()`` twice may give the same port)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(count)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in socks]


def round_trip(ctx: zmq.Context[Any], timeout_ms: int = 3000) -> bool:
    """True when a DEALER's message reaches a ROUTER over tcp in ``ctx`` in time."""
    router, dealer = ctx.socket(zmq.ROUTER), ctx.socket(zmq.DEALER)
    try:
        port = router.bind_to_random_port("tcp://127.0.0.1")
        dealer.connect(f"tcp://127.0.0.1:{port}")
        dealer.send(b"ping")
        return bool(router.poll(timeout_ms))
    finally:
        router.close(linger=0)
        dealer.close(linger=0)


def connect_and_drop(ctx: zmq.Context[Any], endpoints: list[str], done: threading.Event,
                     connected: list[int]) -> None:
    """DEALERs to ``endpoints[0]`` and SUBs to ``endpoints[1]`` connecting and closing at
    once, until ``done``; ``connected[0]`` counts them."""
    while not done.is_set():
        for kind, endpoint in ((zmq.DEALER, endpoints[0]), (zmq.SUB, endpoints[1])):
            sock = ctx.socket(kind)
            sock.setsockopt(zmq.LINGER, 0)
            sock.connect(endpoint)
            done.wait(0.002)  # a moment for the connection to be made
            sock.close()
            connected[0] += 1


@pytest.fixture
def contexts() -> Iterator[tuple[zmq.Context[Any], zmq.Context[Any]]]:
    broker_ctx, client_ctx = zmq.Context(), zmq.Context()
    yield broker_ctx, client_ctx
    client_ctx.destroy(linger=0)
    broker_ctx.destroy(linger=0)


@pytest.mark.parametrize("encryption", ["none", "curve"])
def test_clients_connecting_while_the_broker_stops_leave_its_context_working(
        contexts: tuple[zmq.Context[Any], zmq.Context[Any]], encryption: str,
        tmp_path: Path) -> None:
    broker_ctx, client_ctx = contexts
    assert round_trip(broker_ctx)
    for stop_number in range(1, STOPS + 1):
        router_port, pub_port, key_port = free_ports(3)
        endpoints = [f"tcp://127.0.0.1:{router_port}", f"tcp://127.0.0.1:{pub_port}"]
        overrides: dict[str, Any] = {"encryption": encryption}
        if encryption == "curve":  # the key pair in data_dir, the key service on a free port
            overrides.update(data_dir=str(tmp_path / "data"),
                             key_endpoint=f"tcp://127.0.0.1:{key_port}")
        done = threading.Event()
        connected = [0]

        hammers = [threading.Thread(target=connect_and_drop,
                                    args=(client_ctx, endpoints, done, connected))
                   for _ in range(HAMMERS)]
        try:
            with running_broker(context=broker_ctx, router=endpoints[0], pub=endpoints[1],
                                **overrides):
                for hammer in hammers:
                    hammer.start()
                # the broker stops (leaving this block) with connections being made
                done.wait(BEFORE_S)
            # and they go on while libzmq winds the broker's sockets down
            done.wait(AFTER_S)
        finally:
            done.set()
            for hammer in hammers:
                if hammer.ident is not None:  # started: the broker did start
                    hammer.join()
        assert round_trip(broker_ctx), (
            f"after stop {stop_number}, a tcp round trip in the broker's context got "
            "nothing: its I/O thread is blocked")


def test_a_socket_closed_by_the_rule_cannot_block_the_context_when_its_peer_leaves_late(
        contexts: tuple[zmq.Context[Any], zmq.Context[Any]]) -> None:
    """A ROUTER with messages its peer does not take lingers after it is closed; its peer
    leaving then is an event (DISCONNECTED) after the guard has stopped."""
    ctx, peer_ctx = contexts
    guard = ConnectionGuard(ctx, effective_limits(100, 10))
    router = ctx.socket(zmq.ROUTER)
    router.setsockopt(zmq.ROUTER_MANDATORY, 1)
    router.setsockopt(zmq.SNDHWM, 4)
    port = router.bind_to_random_port("tcp://127.0.0.1")
    guard.watch(router)
    guard.start()
    peer = peer_ctx.socket(zmq.DEALER)
    peer.setsockopt(zmq.RCVHWM, 1)
    peer.setsockopt(zmq.RCVBUF, 4096)
    peer.connect(f"tcp://127.0.0.1:{port}")
    peer.send(b"hello")
    routing_id, hello = router.recv_multipart()
    assert hello == b"hello"
    queued = 0
    while router.poll(2000, zmq.POLLOUT):  # until the peer's pipe and buffers are full
        try:
            router.send_multipart([routing_id, b"x" * 1_000_000], zmq.NOBLOCK)
        except zmq.Again:
            break
        queued += 1
    assert 4 <= queued < 200
    close_monitored(router, linger_ms=10_000)  # lingers: the peer holds messages back
    guard.stop()
    peer.close(linger=0)  # the lingering connection ends: one more event
    assert round_trip(ctx), "the context's I/O thread is blocked"


def test_the_broker_closes_each_watched_socket_by_the_rule(
        contexts: tuple[zmq.Context[Any], zmq.Context[Any]], tmp_path: Path,
        caplog: pytest.LogCaptureFixture) -> None:
    broker_ctx, _ = contexts
    endpoints = {name: f"tcp://127.0.0.1:{port}"
                 for name, port in zip(("router", "pub", "key"), free_ports(3), strict=True)}
    caplog.set_level(logging.ERROR, logger="zchat.broker")
    with running_broker(context=broker_ctx, router=endpoints["router"], pub=endpoints["pub"],
                        key_endpoint=endpoints["key"], data_dir=str(tmp_path / "data")) as h:
        watched = len(h.broker.connections._watched)  # ROUTER, PUB, key service
    assert watched == 3
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR] == []
    assert round_trip(broker_ctx)


def test_a_broker_that_cannot_bind_leaves_no_thread_behind(
        contexts: tuple[zmq.Context[Any], zmq.Context[Any]], tmp_path: Path) -> None:
    """BrokerThread (zchat.testing's brokers): a failed bind used to leave the ZAP
    handler's and the connection guard's threads running (``__exit__`` does not run
    after a failed ``__enter__``), polling sockets the test's context then closed."""
    broker_ctx, _ = contexts
    router_port, key_port = free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        pub = f"tcp://127.0.0.1:{taken.getsockname()[1]}"
        with pytest.raises(BindError, match="PUB"), \
                running_broker(context=broker_ctx, router=f"tcp://127.0.0.1:{router_port}",
                               pub=pub, key_endpoint=f"tcp://127.0.0.1:{key_port}",
                               data_dir=str(tmp_path / "data")):
            pass
    left = [t.name for t in threading.enumerate()
            if t.name in ("zchat-zap", "zchat-connections", "zchat-publisher")]
    assert left == []
    assert round_trip(broker_ctx)
