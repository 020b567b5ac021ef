"""Limits per account, whatever its number of sessions (docs/PROTOCOL.md §15, issue 14
items 4 and 5): presence changes and away texts (mutes apply to them), sending, room
creation and the rooms an account may have created.

Pure core, fake clock (tests/core_helpers.py's World).
"""

from __future__ import annotations

from core_helpers import World

from zchat import wire as p
from zchat.errors import Status

# -- item 4: presence -----------------------------------------------------------------------


def test_a_server_wide_mute_silences_the_away_text() -> None:
    world = World(admins=("root",))
    root, spam = world.user("root"), world.user("spam")
    spam.must(p.SetPresence(presence="away", text="BUY CHEAP WATCHES"))
    muted = root.call(p.Mute(room="", name="spam"))
    assert muted.ok
    # the away text already set is cleared, for everyone
    assert [(e.name, e.presence, e.text) for _t, e in muted.events_of(p.PresenceChanged)] \
        == [("spam", "away", "")]
    assert root.must(p.Whois(name="spam")).text == ""
    out = spam.call(p.SetPresence(presence="away", text="STILL HERE"))
    assert out.status == Status.FORBIDDEN and out.events == []
    assert isinstance(out.reply, p.Error)
    assert out.reply.reason == "you are muted on this server until lifted: no away text"
    assert spam.call(p.SetPresence(presence="online")).ok   # presence without words is fine
    assert spam.call(p.SetPresence(presence="away")).ok
    # a quit message is speech too: dropped, the LOGOUT itself goes through
    out = spam.call(p.Logout(text="LAST CHANCE"))
    assert out.ok
    assert [(e.presence, e.text) for _t, e in out.events_of(p.PresenceChanged)] == \
        [("offline", "")]


def test_a_room_mute_does_not_touch_the_away_text() -> None:
    world = World(admins=("root",))
    root, bob = world.user("root"), world.user("bob")
    root.must(p.Join(room="dev"))
    bob.must(p.Join(room="dev"))
    root.must(p.Mute(room="dev", name="bob"))
    assert bob.call(p.SetPresence(presence="away", text="lunch")).ok


def test_presence_changes_are_limited_per_account_across_sessions() -> None:
    world = World(presence_rate_per_s=0.5, presence_burst=3)
    alice = world.user("alice")
    laptop = world.peer()
    assert laptop.login("alice").ok
    assert alice.call(p.SetPresence(presence="away", text="1")).ok
    assert laptop.call(p.SetPresence(presence="away", text="2")).ok
    assert alice.call(p.SetPresence(presence="online")).ok
    again = alice.call(p.SetPresence(presence="online"))    # no change: free, no event
    assert again.ok and again.events == []
    out = laptop.call(p.SetPresence(presence="away", text="4"))
    assert out.status == Status.TOO_MANY_REQUESTS and out.events == []
    assert isinstance(out.reply, p.Error) and out.reply.retry_after_ms == 2000
    assert out.reply.reason == ("changing presence too fast: wait 2.0 s (at most 3 at "
                                "once, then 0.5 a second)")
    assert world.core.accounts["alice"].presence == "online"
    world.clock.jump(2.0)
    assert laptop.call(p.SetPresence(presence="away", text="4")).ok


# -- item 5: sending per account ------------------------------------------------------------


def test_sending_is_limited_per_account_as_well_as_per_session() -> None:
    world = World(send_rate_per_s=1.0, send_burst=5, account_send_rate_per_s=2.0,
                  account_send_burst=8)
    phone = world.user("alice")
    laptop = world.peer()
    assert laptop.login("alice").ok
    assert [phone.must(p.Send(room="lobby", text=f"p{i}")).seq for i in range(5)] == \
        [1, 2, 3, 4, 5]
    assert phone.call(p.Send(room="lobby", text="p6")).status == Status.TOO_MANY_REQUESTS
    assert [laptop.must(p.Send(room="lobby", text=f"l{i}")).seq for i in range(3)] == \
        [6, 7, 8]
    out = laptop.call(p.SendDirect(to="alice", text="note to self"))
    assert out.status == Status.TOO_MANY_REQUESTS and out.pushes == []
    assert isinstance(out.reply, p.Error) and out.reply.retry_after_ms == 500
    assert out.reply.reason == ("sending too fast: wait 0.5 s (at most 8 at once, then "
                                "2 a second, for all your sessions together)")
    # the refusal took nothing from the laptop's own bucket (2 tokens left there)
    world.clock.jump(1.0)                      # the account's bucket: 2 tokens again
    assert [laptop.must(p.Send(room="lobby", text=f"m{i}")).seq for i in range(2)] == \
        [9, 10]
    # others are not touched
    assert world.user("bob").must(p.Send(room="lobby", text="hi")).seq == 11


def test_a_hundred_logins_bring_no_hundred_bursts() -> None:
    """A tester's account stored 519 × 4 KB messages in 0.2 s with a LOGIN each."""
    world = World(account_send_burst=40, login_rate_per_s=0.0)
    world.user("flood")
    stored = 0
    for _ in range(100):
        peer = world.peer()
        assert peer.login("flood").ok
        stored += peer.call(p.Send(room="lobby", text="x" * 4000)).ok
    assert stored == 40


# -- item 5: rooms --------------------------------------------------------------------------


def test_room_creation_is_limited_per_account() -> None:
    world = World(send_rate_per_s=0.0, room_create_rate_per_s=0.05, room_create_burst=3)
    alice = world.user("alice")
    laptop = world.peer()
    assert laptop.login("alice").ok
    for room in ("r1", "r2", "r3"):
        assert alice.must(p.Join(room=room)).created
    out = laptop.call(p.Join(room="r4"))
    assert out.status == Status.TOO_MANY_REQUESTS
    assert isinstance(out.reply, p.Error) and out.reply.retry_after_ms == 20_000
    assert out.reply.reason == ("creating rooms too fast: wait 20 s (at most 3 at once, "
                                "then one every 20 s)")
    assert "r4" not in world.core.rooms
    # joining rooms that exist is not creating them
    bob = world.user("bob")
    bob.must(p.Join(room="b1"))
    assert laptop.must(p.Join(room="b1")).created is False
    world.clock.jump(20)
    assert laptop.must(p.Join(room="r4")).created


def test_rooms_an_account_may_have_created_are_bounded() -> None:
    world = World(send_rate_per_s=0.0, room_create_rate_per_s=0.0, max_rooms_created=2,
                  admins=("root",))
    alice = world.user("alice")
    alice.must(p.Join(room="a1"))
    alice.must(p.Join(room="a2"))
    out = alice.call(p.Join(room="a3"))
    assert out.status == Status.FORBIDDEN
    assert isinstance(out.reply, p.Error)
    assert out.reply.reason == ("you have created 2 rooms, the most an account may; "
                                "DELETE_ROOM one of them first")
    assert "a3" not in world.core.rooms
    alice.must(p.DeleteRoom(room="a1"))
    assert alice.must(p.Join(room="a3")).created
    root = world.user("root")                  # admins are exempt
    for room in ("x1", "x2", "x3"):
        assert root.must(p.Join(room=room)).created


def test_rooms_created_are_counted_from_the_store_at_start() -> None:
    world = World(send_rate_per_s=0.0, room_create_rate_per_s=0.0, max_rooms_created=2)
    alice = world.user("alice")
    alice.must(p.Join(room="a1"))
    alice.must(p.Join(room="a2"))
    again = World(store=world.store, send_rate_per_s=0.0, room_create_rate_per_s=0.0,
                  max_rooms_created=2)
    alice = again.user("alice", register=False)
    assert alice.call(p.Join(room="a3")).status == Status.FORBIDDEN



def test_a_zero_send_rate_turns_the_account_limit_off_too() -> None:
    """``send_rate_per_s = 0`` means no sending limit (tests, benchmarks and the chaos
    harness rely on it); the account's bucket is a second limit, not a separate one."""
    world = World(send_rate_per_s=0.0, account_send_burst=3, account_send_rate_per_s=1.0)
    alice = world.user("alice")
    assert all(alice.call(p.Send(room="lobby", text=str(i))).ok for i in range(10))
