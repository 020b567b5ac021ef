"""Protection in the pure core (docs/PROTOCOL.md §6.28, §15): token buckets, the per-session
SEND/DM limit, the per-address LOGIN/REGISTER limit, max_sessions and per-room slow mode.

Real codec, real SQLite, a fake clock that moves only on ``jump``: the World/Peer helpers of
tests/core_helpers.py. No sockets, no sleeping.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from core_helpers import PASSWORD, World, handle_raw

from zchat import wire as p
from zchat.config import BrokerConfig, Config, ConfigError, validate
from zchat.core import Offload, ToTopic
from zchat.errors import Status
from zchat.ratelimit import BucketTable, TokenBucket, address_key
from zchat.store import Store

# -- the token bucket ---------------------------------------------------------------------


def test_bucket_lets_the_burst_through_then_says_when_the_next_token_comes() -> None:
    bucket = TokenBucket(rate_per_s=2.0, burst=3, now_s=10.0)
    assert [bucket.take(10.0) for _ in range(3)] == [0, 0, 0]
    assert bucket.take(10.0) == 500          # one token every 0.5 s
    assert bucket.take(10.2) == 300          # refused takes cost nothing
    assert bucket.take(10.5) == 0
    assert bucket.take(10.5) == 500


def test_bucket_refills_up_to_the_burst_only() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=2, now_s=0.0)
    assert bucket.take(0.0) == 0 and bucket.take(0.0) == 0
    assert not bucket.full(1.0)
    assert bucket.full(2.0)
    # an hour idle still buys only ``burst`` requests
    assert [bucket.take(3600.0) for _ in range(3)] == [0, 0, 1000]


def test_bucket_rounds_the_wait_up_and_never_answers_zero_when_refusing() -> None:
    bucket = TokenBucket(rate_per_s=3.0, burst=1, now_s=0.0)
    assert bucket.take(0.0) == 0
    assert bucket.take(0.0) == 334           # 333.3… ms rounded up
    assert bucket.take(0.3333333) == 1       # a hair short: at least 1 ms, never 0


def test_bucket_cost_and_a_clock_going_backwards() -> None:
    bucket = TokenBucket(rate_per_s=1.0, burst=4, now_s=5.0)
    assert bucket.take(5.0, cost=3) == 0
    assert bucket.take(4.0, cost=2) == 1000  # earlier time adds no tokens, takes none
    assert bucket.take(6.0, cost=2) == 0
    with pytest.raises(ValueError):
        bucket.take(6.0, cost=5)             # more than the burst could never be served
    with pytest.raises(ValueError):
        bucket.take(6.0, cost=0)


@pytest.mark.parametrize("rate, burst", [(0.0, 1), (-1.0, 1), (float("inf"), 1), (1.0, 0)])
def test_bucket_refuses_nonsense_parameters(rate: float, burst: int) -> None:
    with pytest.raises(ValueError):
        TokenBucket(rate, burst, 0.0)


def test_table_keeps_one_bucket_per_key() -> None:
    table = BucketTable(rate_per_s=1.0, burst=2)
    assert table.take("a", 0.0) == 0 and table.take("a", 0.0) == 0
    assert table.take("a", 0.0) == 1000
    assert table.take("b", 0.0) == 0         # another key is untouched
    assert len(table) == 2


def test_table_drops_refilled_buckets_and_stays_under_its_cap() -> None:
    table = BucketTable(rate_per_s=1.0, burst=1, max_entries=3)
    for key in "abc":
        assert table.take(key, 0.0) == 0
    assert table.take("d", 0.5) == 0         # full: the least recently used ("a") goes
    assert len(table) == 3 and "a" not in table and "d" in table
    assert table.take("b", 0.5) == 500       # b is still limited: not forgotten by mistake
    assert table.prune(0.9) == 0             # nothing refilled yet
    assert table.prune(10.0) == 3
    assert len(table) == 0
    for i in range(1000):                    # a flood of distinct keys
        table.take(f"k{i}", 20.0)
    assert len(table) == 3


@pytest.mark.parametrize("address, key", [
    ("192.0.2.7", "192.0.2.7"),
    ("2001:db8:1:2:aaaa::1", "2001:db8:1:2::/64"),
    ("2001:db8:1:2:bbbb::9", "2001:db8:1:2::/64"),   # same /64: same bucket
    ("::ffff:192.0.2.7", "192.0.2.7"),
    ("[2001:db8::1]", "2001:db8::/64"),
    ("tcp://10.0.0.1:40000", "tcp://10.0.0.1:40000"),
])
def test_address_key(address: str, key: str) -> None:
    assert address_key(address, b"\x00rid") == key


def test_address_key_without_an_address_is_the_routing_id() -> None:
    assert address_key("", b"\x00\x01") == "rid:0001"
    assert address_key("", b"\x00\x01") != address_key("", b"\x00\x02")


# -- config ---------------------------------------------------------------------------------


def test_defaults_and_validation() -> None:
    b = BrokerConfig()
    assert (b.send_rate_per_s, b.send_burst, b.login_rate_per_s, b.login_burst,
            b.max_sessions) == (5.0, 20, 0.5, 30, 10_000)
    validate(Config(broker=BrokerConfig(send_rate_per_s=0.0, login_rate_per_s=0.0)))
    # A tester's 1e-300 made retry_after_ms a 300-digit integer no client could read.
    for key, bad in (("send_rate_per_s", -1.0), ("login_rate_per_s", -0.5),
                     ("send_rate_per_s", 1e-300), ("login_rate_per_s", 1e7),
                     ("send_burst", 0), ("login_burst", 0), ("max_sessions", 0),
                     ("send_burst", 10**20), ("heartbeat_timeout_s", 1e300),
                     ("heartbeat_interval_s", 1e-300), ("resume_grace_s", 1e300)):
        with pytest.raises(ConfigError) as info:
            validate(Config(broker=BrokerConfig(**{key: bad})))  # type: ignore[arg-type]
        assert info.value.key == key


# -- SEND and DM per session ------------------------------------------------------------------


def test_send_over_the_limit_is_429_with_retry_after_and_changes_nothing() -> None:
    world = World(send_rate_per_s=1.0, send_burst=3)
    alice = world.user("alice")
    seqs = [alice.must(p.Send(room="lobby", text=f"m{i}")).seq for i in range(3)]
    assert seqs == [1, 2, 3]
    before = world.counts()
    out = alice.call(p.Send(room="lobby", text="too fast"))
    assert out.status == Status.TOO_MANY_REQUESTS
    assert isinstance(out.reply, p.Error) and out.reply.retry_after_ms == 1000
    assert "sending too fast: wait 1.0 s" in out.reply.reason
    assert out.events == [] and out.pushes == []
    assert world.counts() == before
    assert world.core.last_seq["lobby"] == 3
    world.clock.jump(0.4)
    assert alice.call(p.Send(room="lobby", text="still")).reply.retry_after_ms == 600  # type: ignore[attr-defined]
    world.clock.jump(0.6)
    assert alice.must(p.Send(room="lobby", text="now")).seq == 4   # no gap in seq


def test_dm_shares_the_session_bucket_and_a_refused_dm_is_not_stored() -> None:
    world = World(send_rate_per_s=1.0, send_burst=2)
    alice, bob = world.user("alice"), world.user("bob")
    alice.must(p.Send(room="lobby", text="hi"))
    alice.must(p.SendDirect(to="bob", text="psst"))
    before = world.counts()
    out = alice.call(p.SendDirect(to="bob", text="again"))
    assert out.status == Status.TOO_MANY_REQUESTS and out.pushes == []
    assert world.counts() == before
    # bob was not touched by alice's limit
    assert bob.must(p.SendDirect(to="alice", text="answer")).delivered == "live"


def test_one_flooder_does_not_slow_the_others() -> None:
    world = World(send_rate_per_s=1.0, send_burst=2)
    alice, bob = world.user("alice"), world.user("bob")
    refused = 0
    for i in range(50):
        refused += not alice.call(p.Send(room="lobby", text=f"flood {i}")).ok
    assert refused == 48
    assert [bob.must(p.Send(room="lobby", text=f"b{i}")).seq for i in range(2)] == [3, 4]
    # a second session of the same account has its own bucket
    alice2 = world.peer()
    assert alice2.login("alice").ok
    assert alice2.must(p.Send(room="lobby", text="from the laptop")).seq == 5


def test_the_bucket_goes_with_the_session() -> None:
    world = World(send_rate_per_s=0.1, send_burst=1)
    alice = world.user("alice")
    alice.must(p.Send(room="lobby", text="one"))
    assert alice.call(p.Send(room="lobby", text="two")).status == Status.TOO_MANY_REQUESTS
    alice.must(p.Logout())
    assert alice.login("alice").ok
    assert alice.must(p.Send(room="lobby", text="two")).seq == 2


def test_zero_rate_turns_the_send_limit_off() -> None:
    world = World(send_rate_per_s=0.0, send_burst=1)
    alice = world.user("alice")
    assert [alice.must(p.Send(room="lobby", text=str(i))).seq
            for i in range(100)] == list(range(1, 101))


def test_other_requests_are_not_counted() -> None:
    world = World(send_rate_per_s=1.0, send_burst=1)
    alice = world.user("alice")
    for _ in range(20):
        alice.must(p.Ping())
        alice.must(p.FetchHistory(room="lobby"))
    assert alice.must(p.Send(room="lobby", text="fine")).seq == 1


# -- LOGIN and REGISTER per address -------------------------------------------------------------


def test_login_attempts_are_limited_per_address_before_any_hashing() -> None:
    world = World(login_rate_per_s=0.5, login_burst=3)
    attacker = world.peer()
    assert attacker.register("alice").ok                     # token 1
    for _ in range(2):                                       # tokens 2 and 3
        assert attacker.login("alice", "guess").status == Status.UNAUTHORIZED
    actions = handle_raw(world, attacker.routing_id,
                         p.Login(name="alice", password="guess"), attacker.address)
    assert not any(isinstance(a, Offload) for a in actions), "hashed a refused attempt"
    out = attacker.login("alice", "guess")
    assert out.status == Status.TOO_MANY_REQUESTS
    assert isinstance(out.reply, p.Error) and out.reply.retry_after_ms == 2000
    assert "too many login attempts from your address" in out.reply.reason
    assert attacker.login("alice", PASSWORD).status == Status.TOO_MANY_REQUESTS
    assert world.core.sessions == {}
    # another address is not affected
    friend = world.peer()
    friend.address = "tcp://10.0.0.2:50000"
    assert friend.login("alice").ok
    # and the attacker's address gets a try every 2 s
    world.clock.jump(2.0)
    assert attacker.login("alice", PASSWORD).ok


def test_register_is_counted_and_refused_register_creates_nothing() -> None:
    world = World(login_rate_per_s=1.0, login_burst=2)
    peer = world.peer()
    assert peer.register("alice").ok and peer.register("bob").ok
    before = world.counts()
    actions = handle_raw(world, peer.routing_id, p.Register(name="carol", password="pw"),
                         peer.address)
    assert not any(isinstance(a, Offload | ToTopic) for a in actions)
    assert world.counts() == before and "carol" not in world.core.accounts


def test_token_logins_are_counted_too() -> None:
    world = World(login_rate_per_s=1.0, login_burst=2)
    peer = world.peer()
    assert peer.register("alice").ok
    assert peer.call(p.Login(name="alice", token="x" * 43)).status == Status.UNAUTHORIZED
    assert peer.call(p.Login(name="alice", token="y" * 43)).status == \
        Status.TOO_MANY_REQUESTS


def test_peers_without_an_address_are_limited_per_connection() -> None:
    world = World(login_rate_per_s=1.0, login_burst=1)
    first, second = world.peer(), world.peer()
    first.address = second.address = ""          # inproc/ipc: no Peer-Address
    assert first.register("alice").ok
    assert first.login("alice").status == Status.TOO_MANY_REQUESTS
    assert second.login("alice").ok


def test_resume_is_not_counted_as_a_login() -> None:
    world = World(login_rate_per_s=1.0, login_burst=1)
    first = world.peer()
    assert first.register("alice").ok                        # the address's only token
    world.clock.jump(1.0)
    logged = first.login("alice")
    assert logged.ok and isinstance(logged.reply, p.LoggedIn)
    assert first.login("alice").status == Status.TOO_MANY_REQUESTS
    again = world.peer()                                     # same address, new connection
    out = again.call(p.Resume(session=logged.reply.session))
    assert out.ok, out.reply


def test_zero_rate_turns_the_login_limit_off() -> None:
    world = World(login_rate_per_s=0.0, login_burst=1)
    peer = world.peer()
    assert peer.register("alice").ok
    for _ in range(40):
        assert peer.login("alice", "wrong").status == Status.UNAUTHORIZED


# -- max_sessions -------------------------------------------------------------------------------


def test_login_beyond_max_sessions_is_503_without_hashing() -> None:
    world = World(max_sessions=2)
    a, b = world.user("alice"), world.user("bob")
    third = world.peer()
    assert third.register("carol").ok                        # REGISTER needs no session
    actions = handle_raw(world, third.routing_id, p.Login(name="carol", password=PASSWORD),
                         third.address)
    assert not any(isinstance(a_, Offload) for a_ in actions)
    out = third.login("carol")
    assert out.status == Status.UNAVAILABLE
    assert isinstance(out.reply, p.Error) and "max_sessions" in out.reply.reason
    assert len(world.core.sessions) == 2
    a.must(p.Logout())
    assert third.login("carol").ok
    assert b.must(p.Send(room="lobby", text="still here")).seq == 1


def test_max_sessions_is_checked_again_when_the_hash_is_done() -> None:
    world = World(max_sessions=1)
    world.user("alice")
    late = world.peer()
    assert late.register("bob").ok
    world.core.sessions.clear()              # room at LOGIN time…
    actions = handle_raw(world, late.routing_id, p.Login(name="bob", password=PASSWORD),
                         late.address)
    (job,) = [a for a in actions if isinstance(a, Offload)]
    other = world.user("carol")              # …taken while bob's password was hashing
    assert other.routing_id in world.core.sessions
    done = world.core.complete(job.job_id, job.work(), world.clock.s, world.clock.ms)
    (reply,) = done
    _rid, err = p.decode_from_broker(reply.frames, {})  # type: ignore[attr-defined]
    assert isinstance(err, p.Error) and err.status == Status.UNAVAILABLE
    assert late.routing_id not in world.core.sessions


# -- slow mode ------------------------------------------------------------------------------------


def slow_world(tmp: Path | None = None, **overrides: object) -> World:
    store = Store(tmp / "zchat.db") if tmp is not None else None
    return World(store=store, admins=("root",), send_rate_per_s=0.0, **overrides)


def test_creator_sets_slow_mode_members_learn_it() -> None:
    world = slow_world()
    owner, bob = world.user("owner"), world.user("bob")
    assert owner.must(p.Join(room="dev")).created
    assert bob.must(p.Join(room="dev")).slow_mode_s == 0
    out = owner.call(p.SetSlowMode(room="dev", seconds=30))
    assert out.ok and out.reply == p.Ok()
    assert [(t, e) for t, e in out.events] == [
        (p.room_topic("dev"), p.SlowModeChanged(room="dev", seconds=30, by="owner",
                                                time=world.clock.ms))]
    assert owner.call(p.SetSlowMode(room="dev", seconds=30)).events == []  # unchanged
    assert bob.must(p.Join(room="dev")).slow_mode_s == 30
    pong = bob.must(p.Ping())
    assert {r.room: r.slow_mode_s for r in pong.rooms} == {"lobby": 0, "dev": 30}
    rooms = bob.must(p.ListRooms()).rooms
    assert {r.room: r.slow_mode_s for r in rooms} == {"lobby": 0, "dev": 30}
    again = world.peer()
    logged = again.login("bob")
    assert isinstance(logged.reply, p.LoggedIn)
    assert {r.room: r.slow_mode_s for r in logged.reply.rooms} == {"lobby": 0, "dev": 30}


def test_who_may_set_slow_mode() -> None:
    world = slow_world()
    owner, bob, root, carol = (world.user(n) for n in ("owner", "bob", "root", "carol"))
    owner.must(p.Join(room="dev"))
    bob.must(p.Join(room="dev"))
    root.must(p.Join(room="dev"))
    out = bob.call(p.SetSlowMode(room="dev", seconds=10))
    assert out.status == Status.FORBIDDEN and "creator or a broker admin" in out.reply.reason  # type: ignore[attr-defined]
    assert carol.call(p.SetSlowMode(room="dev", seconds=10)).status == Status.FORBIDDEN
    assert root.call(p.SetSlowMode(room="dev", seconds=10)).ok          # admin
    assert bob.call(p.SetSlowMode(room="nowhere", seconds=10)).status == Status.NOT_FOUND
    for bad in (-1, p.MAX_SLOW_MODE_S + 1):
        out = owner.call(p.SetSlowMode(room="dev", seconds=bad))
        assert out.status == Status.BAD_REQUEST and out.events == []
    assert owner.call(p.SetSlowMode(room="dev", seconds=p.MAX_SLOW_MODE_S)).ok
    # lobby is the broker's: no creator, admins only
    assert owner.call(p.SetSlowMode(room="lobby", seconds=5)).status == Status.FORBIDDEN
    assert root.call(p.SetSlowMode(room="lobby", seconds=5)).ok
    assert world.core.slow_mode == {"lobby": 5, "dev": p.MAX_SLOW_MODE_S}


def test_slow_mode_holds_each_member_to_one_message_per_interval() -> None:
    world = slow_world()
    owner, bob, dan = world.user("owner"), world.user("bob"), world.user("dan")
    for peer in (owner, bob, dan):
        peer.must(p.Join(room="dev"))
    owner.must(p.SetSlowMode(room="dev", seconds=30))
    assert bob.must(p.Send(room="dev", text="first")).seq == 1
    world.clock.jump(18.0)
    before = world.counts()
    out = bob.call(p.Send(room="dev", text="second"))
    assert out.status == Status.TOO_MANY_REQUESTS
    assert isinstance(out.reply, p.Error) and out.reply.retry_after_ms == 12_000
    assert out.reply.reason == "slow mode in #dev: wait 12 s (one message per 30 s)"
    assert out.events == [] and world.counts() == before
    assert dan.must(p.Send(room="dev", text="dan's turn")).seq == 2   # per member
    assert bob.must(p.Send(room="lobby", text="other rooms are free")).seq == 1
    bob.must(p.SendDirect(to="dan", text="so are DMs"))
    assert [owner.must(p.Send(room="dev", text=f"o{i}")).seq for i in range(3)] == [3, 4, 5]
    world.clock.jump(12.0)
    assert bob.must(p.Send(room="dev", text="second")).seq == 6
    # a second session of bob's shares the wait: slow mode is per account
    bob2 = world.peer()
    assert bob2.login("bob").ok
    assert bob2.call(p.Send(room="dev", text="sneaky")).status == Status.TOO_MANY_REQUESTS


def test_admins_are_exempt_and_turning_it_off_frees_everyone() -> None:
    world = slow_world()
    owner, root, bob = world.user("owner"), world.user("root"), world.user("bob")
    for peer in (owner, root, bob):
        peer.must(p.Join(room="dev"))
    owner.must(p.SetSlowMode(room="dev", seconds=60))
    assert [root.must(p.Send(room="dev", text=str(i))).seq for i in range(3)] == [1, 2, 3]
    bob.must(p.Send(room="dev", text="once"))
    assert bob.call(p.Send(room="dev", text="twice")).status == Status.TOO_MANY_REQUESTS
    out = owner.call(p.SetSlowMode(room="dev", seconds=0))
    assert [e for _t, e in out.events] == [
        p.SlowModeChanged(room="dev", seconds=0, by="owner", time=world.clock.ms)]
    assert [bob.must(p.Send(room="dev", text=f"free {i}")).seq for i in range(2)] == [5, 6]


def test_slow_mode_survives_a_store_reopen(tmp_path: Path) -> None:
    world = slow_world(tmp_path)
    owner, bob = world.user("owner"), world.user("bob")
    owner.must(p.Join(room="dev"))
    bob.must(p.Join(room="dev"))
    owner.must(p.SetSlowMode(room="dev", seconds=45))
    world.store.close()

    reopened = slow_world(tmp_path)          # a broker restart on the same database
    owner, bob = reopened.user("owner", register=False), reopened.user("bob", register=False)
    assert owner.must(p.Join(room="dev")).slow_mode_s == 45
    assert bob.must(p.Send(room="dev", text="one")).seq == 1
    assert bob.call(p.Send(room="dev", text="two")).status == Status.TOO_MANY_REQUESTS
    # the creator is remembered too: still exempt, still allowed to change it
    assert [owner.must(p.Send(room="dev", text=str(i))).seq for i in range(2)] == [2, 3]
    assert bob.call(p.SetSlowMode(room="dev", seconds=1)).status == Status.FORBIDDEN
    assert owner.call(p.SetSlowMode(room="dev", seconds=1)).ok
    reopened.store.close()
