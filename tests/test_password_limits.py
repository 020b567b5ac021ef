"""Password work per address and per account in the pure core (docs/PROTOCOL.md §15, issue
14 item 3): SET_PASSWORD is counted like a LOGIN by address and also by account, so that a
stolen session token RESUMEd on fresh connections gets no fresh bucket; and one address or
one account may have only MAX_JOBS_PER_PEER password jobs in flight, so that it cannot keep
the hash pool full while honest logins from elsewhere wait.

Fake clock, Offloads held back where the test needs to see them (``handle_raw``).
"""

from __future__ import annotations

import logging

import pytest
from core_helpers import PASSWORD, World, handle_raw

from zchat import wire as p
from zchat.core import MAX_JOBS_PER_PEER, Offload
from zchat.errors import Status

NEW = "a brand new passphrase"


def stolen_token(world: World) -> str:
    """alice logs in; returns her session token (what a thief would have stolen)."""
    world.user("alice")
    (session,) = world.core.sessions.values()
    return session.token


def test_a_stolen_token_resumed_on_fresh_connections_gets_no_fresh_bucket() -> None:
    """A tester guessed 120 old passwords in 8 s: each RESUME on a new connection
    brought a fresh login bucket. Here each thief even has an address of its own, so
    that only the account's bucket can stop them."""
    world = World(login_rate_per_s=0.5, login_burst=3)
    token = stolen_token(world)
    answers = []
    for i in range(6):
        thief = world.peer()
        thief.address = f"tcp://10.7.0.{i}:1"
        assert thief.call(p.Resume(session=token)).ok
        answers.append(thief.call(p.SetPassword(old=f"guess{i}", new=NEW)))
    assert [a.status for a in answers[:3]] == [Status.UNAUTHORIZED] * 3
    for refused in answers[3:]:
        assert refused.status == Status.TOO_MANY_REQUESTS
        assert isinstance(refused.reply, p.Error)
        assert refused.reply.reason.startswith(
            "too many password changes for this account: wait 2.0 s (at most 3 at once, "
            "then 0.5 a second)"), refused.reply.reason
    # the account's real owner logging in elsewhere is not held back by it
    other = world.peer()
    other.address = "tcp://10.9.9.9:1"
    assert other.login("alice").ok


def test_set_password_is_counted_in_the_sessions_address_bucket() -> None:
    """The adapter passes the peer address for SET_PASSWORD; when it is missing, the
    core falls back to the address the session logged in from, not the routing id."""
    world = World(login_rate_per_s=0.5, login_burst=3)
    alice = world.user("alice")                  # register + login: 2 tokens of 10.0.0.1
    alice.address = ""
    assert alice.call(p.SetPassword(old="wrong", new=NEW)).status == Status.UNAUTHORIZED
    out = alice.call(p.SetPassword(old="wrong", new=NEW))
    assert out.status == Status.TOO_MANY_REQUESTS
    assert isinstance(out.reply, p.Error)
    assert "too many password changes from your address" in out.reply.reason


def test_a_failed_password_change_logs_the_real_address(
        caplog: pytest.LogCaptureFixture) -> None:
    """Without an address from the adapter (the request type was not among those it
    looked the address up for) the log said "from ?"; now the session's address."""
    world = World()
    alice = world.user("alice")                  # logged in from tcp://10.0.0.1:40000
    alice.address = ""
    with caplog.at_level(logging.INFO, logger="zchat.broker"):
        assert alice.call(p.SetPassword(old="wrong", new=NEW)).status == \
            Status.UNAUTHORIZED
    assert "failed password change for alice from tcp://10.0.0.1:40000" in caplog.text


def test_one_address_has_at_most_max_jobs_per_peer_password_jobs_in_flight() -> None:
    world = World(login_rate_per_s=100.0, login_burst=1000)
    names = [f"user{i}" for i in range(MAX_JOBS_PER_PEER + 2)]
    for name in names:
        assert world.peer().register(name).ok
    attacker = world.peer()
    jobs = []
    for name in names[:MAX_JOBS_PER_PEER]:
        actions = handle_raw(world, attacker.routing_id, p.Login(name=name, password="x"),
                             attacker.address)
        jobs += [a for a in actions if isinstance(a, Offload)]
    assert len(jobs) == MAX_JOBS_PER_PEER
    # the next one is refused before any hashing, with a short wait
    out = attacker.login(names[-1], "x")
    assert out.status == Status.TOO_MANY_REQUESTS
    assert isinstance(out.reply, p.Error) and 0 < out.reply.retry_after_ms <= 1000
    assert out.reply.reason == ("too many password checks in progress from your address: "
                                f"wait 0.5 s (at most {MAX_JOBS_PER_PEER} at once)")
    # another address is served at once
    honest = world.peer()
    honest.address = "tcp://10.0.0.2:4000"
    assert honest.login(names[-1]).ok
    # a finished job frees a place
    world.core.complete(jobs[0].job_id, False, world.clock.s, world.clock.ms)
    actions = handle_raw(world, attacker.routing_id, p.Login(name=names[-2], password="x"),
                         attacker.address)
    assert any(isinstance(a, Offload) for a in actions)


def test_one_account_has_at_most_max_jobs_per_peer_password_jobs_in_flight() -> None:
    world = World(login_rate_per_s=100.0, login_burst=1000)
    assert world.peer().register("alice").ok
    for i in range(MAX_JOBS_PER_PEER):
        peer = world.peer()
        peer.address = f"tcp://10.0.1.{i}:1"
        actions = handle_raw(world, peer.routing_id, p.Login(name="alice", password="x"),
                             peer.address)
        assert any(isinstance(a, Offload) for a in actions)
    late = world.peer()
    late.address = "tcp://10.0.2.1:1"
    out = late.login("alice")
    assert out.status == Status.TOO_MANY_REQUESTS
    assert isinstance(out.reply, p.Error)
    assert out.reply.reason.startswith("too many password checks in progress for this "
                                       "account: wait 0.5 s")
    assert world.peer().register("bob").ok       # other accounts are not held back


def test_a_refused_job_costs_no_login_token_and_abandoned_jobs_free_their_places() -> None:
    world = World(login_rate_per_s=0.5, login_burst=MAX_JOBS_PER_PEER + 1)
    names = [f"user{i}" for i in range(MAX_JOBS_PER_PEER)]
    registrar = world.peer()
    registrar.address = "tcp://10.0.3.1:1"
    for name in names:
        assert registrar.register(name).ok
    peer = world.peer()
    for name in names:
        handle_raw(world, peer.routing_id, p.Login(name=name, password="x"), peer.address)
    for _ in range(3):  # refused for the jobs in flight: no token of the bucket taken
        assert peer.login("user0").status == Status.TOO_MANY_REQUESTS
    world.core.abandon_jobs("restarting")
    assert peer.login("user0", PASSWORD).ok     # the (MAX_JOBS_PER_PEER + 1)th token


def test_a_zero_login_rate_turns_the_jobs_cap_off_too() -> None:
    """``login_rate_per_s = 0`` means no login limit (the benchmarks register accounts
    by the dozen from one address); the in-flight cap is a login limit too."""
    world = World(login_rate_per_s=0.0)
    peer = world.peer()
    jobs = [a for i in range(MAX_JOBS_PER_PEER + 3)
            for a in handle_raw(world, peer.routing_id,
                                p.Register(name=f"user{i}", password=PASSWORD), peer.address)
            if isinstance(a, Offload)]
    assert len(jobs) == MAX_JOBS_PER_PEER + 3
