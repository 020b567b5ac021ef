"""Bans and mutes in the broker core's in-memory state (zchat.core.state): loaded by
``refresh``, changed where the core bans, lifts and purges, judged against the ``now``
each check is given, and caught up when another connection wrote the database.

Real codec, real SQLite, a fake clock (tests/core_helpers.py); no sockets, no sleeping.
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import pytest
from core_helpers import Outcome, World, room_with

from zchat import admin
from zchat import wire as p
from zchat.core import operator_actions
from zchat.errors import Status
from zchat.store import Store

MINUTE_MS = 60_000


def reason_of(out: Outcome) -> str:
    assert isinstance(out.reply, p.Error), f"expected an ERROR, got {out.reply!r}"
    return out.reply.reason


@pytest.fixture
def file_world(tmp_path: Path) -> Iterator[World]:
    """A core on a database file, which another connection can open as `zchat admin`."""
    world = World(Store(tmp_path / "zchat.db"), admins=("root",))
    yield world
    world.store.close()


@pytest.fixture(params=["memory", "file"])
def world_file_or_memory(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param == "memory":
        yield World(admins=("root",))
        return
    world = World(Store(tmp_path / "zchat.db"), admins=("root",))
    yield world
    world.store.close()


def test_a_ban_written_to_the_store_is_honoured_after_refresh_and_so_is_its_lifting(
        file_world: World) -> None:
    """Written through the store port behind the core's back, on the core's own
    connection (so nothing tells the core): the core goes by its memory until
    ``refresh``, which loads it; lifting it the way `zchat admin unban` does
    (zchat.admin.unban_direct, the operator action on the store) is the same."""
    world = file_world
    u = room_with(world, "olga", "nick", "root")
    u["nick"].must(p.Part(room="dev"))
    assert world.peer().register("ivan").ok
    now = world.clock.ms
    world.store.add_ban("ban", "dev", "nick", "olga", "spam", now, None)
    world.store.add_ban("ban", "", "ivan", "root", "abuse", now, now + 10 * MINUTE_MS)
    world.store.add_ban("mute", "dev", "olga", "root", "", now, None)

    # memory, not the store, answers the checks
    assert world.core.active_ban("ban", "dev", "nick", now) is None
    assert u["olga"].call(p.Send(room="dev", text="not muted yet")).ok

    world.core.state.refresh(world.store, world.clock.ms)
    out = u["nick"].call(p.Join(room="dev"))
    assert out.status == Status.FORBIDDEN
    assert "banned from #dev until lifted: spam" in reason_of(out)
    assert "nick" not in world.core.members["dev"]
    login = world.peer().login("ivan")
    assert login.status == Status.FORBIDDEN
    assert "banned from this server until" in reason_of(login)
    assert reason_of(login).endswith(": abuse")
    send = u["olga"].call(p.Send(room="dev", text="muted now"))
    assert send.status == Status.FORBIDDEN and "muted in #dev" in reason_of(send)
    assert [(b.kind, b.room, b.name, b.by, b.reason)
            for b in u["root"].must(p.ListBans()).bans] == [
        ("ban", "dev", "nick", "olga", "spam"), ("ban", "", "ivan", "root", "abuse"),
        ("mute", "dev", "olga", "root", "")]

    # lifted as `zchat admin unban` lifts them: the operator action on the store
    assert admin.unban_direct(world.store, "nick", "dev", "ban", "local:t", now) == "nick"
    assert admin.unban_direct(world.store, "ivan", "", "ban", "local:t", now) == "ivan"
    assert operator_actions.lift(world.store, "mute", "dev", "dev", "olga", "olga",
                                 "local:t", now)
    assert u["nick"].call(p.Join(room="dev")).status == Status.FORBIDDEN  # memory still
    world.core.state.refresh(world.store, world.clock.ms)
    assert u["nick"].must(p.Join(room="dev")).room == "dev"
    assert world.peer().login("ivan").ok
    assert u["olga"].call(p.Send(room="dev", text="heard again")).ok
    assert u["root"].must(p.ListBans()).bans == ()
    assert world.core.state.bans == {} and world.core.state.mutes == {}


def test_another_connections_bans_reach_the_core_at_its_next_group(
        file_world: World, tmp_path: Path) -> None:
    """A second connection on the file (as `zchat admin` and another broker open it)
    places and lifts bans and mutes; the core, run in groups as the broker's loop runs
    it, honours each change in the next group without being told to refresh."""
    world = file_world
    u = room_with(world, "olga", "nick", "mia")
    side = Store(tmp_path / "zchat.db")
    try:
        now = world.clock.ms

        def group(peer_name: str, request: p.Request) -> Outcome:
            world.store.begin_group()
            try:
                return u[peer_name].call(request)
            finally:
                world.store.commit_group()

        side.add_ban("mute", "", "nick", "olga", "", now, None)
        side.add_ban("ban", "dev", "mia", "olga", "", now, None)
        out = group("nick", p.Send(room="lobby", text="x"))
        assert "muted on this server until lifted" in reason_of(out)
        assert "muted on this server" in reason_of(group("nick", p.SendDirect(
            to="olga", text="x")))
        assert group("mia", p.Part(room="dev")).ok
        assert "banned from #dev" in reason_of(group("mia", p.Join(room="dev")))

        assert admin.unban_direct(side, "nick", "", "mute", "local:t", now) == "nick"
        assert admin.unban_direct(side, "mia", "dev", "ban", "local:t", now) == "mia"
        assert group("nick", p.Send(room="lobby", text="back")).ok
        assert group("mia", p.Join(room="dev")).ok
    finally:
        side.close()


def test_timed_bans_lapse_at_their_until_in_memory_refreshed_or_not(
        world_file_or_memory: World) -> None:
    """Expiry is judged against the ``now`` each check is given: a timed mute stops at
    its ``until_ms`` to the millisecond, reloaded by ``refresh`` or not, and the purge
    takes lapsed ones out of memory as out of the store."""
    world = world_file_or_memory
    u = room_with(world, "olga", "nick", "mia", "root")
    u["olga"].must(p.Mute(room="dev", name="nick", duration_s=60))
    u["root"].must(p.Mute(name="mia", duration_s=120))
    world.clock.jump(59.999)
    assert u["nick"].call(p.Send(room="dev", text="x")).status == Status.FORBIDDEN
    world.core.state.refresh(world.store, world.clock.ms)  # reloaded with its until
    assert u["nick"].call(p.Send(room="dev", text="x")).status == Status.FORBIDDEN
    world.clock.jump(0.001)
    assert u["nick"].call(p.Send(room="dev", text="lapsed")).ok
    assert u["mia"].call(p.Send(room="dev", text="x")).status == Status.FORBIDDEN
    assert [b.name for b in u["root"].must(p.ListBans()).bans] == ["mia"]
    world.tick()  # the purge takes the lapsed one out of the store and of memory
    assert [b.account_key for b in world.store.list_bans(0)] == ["mia"]
    assert list(world.core.state.mutes) == [""]
    world.clock.jump(60)
    assert u["mia"].call(p.Send(room="dev", text="lapsed too")).ok
    world.clock.jump(60)  # past the purge interval
    world.tick()
    assert world.store.list_bans(0) == [] and world.core.state.mutes == {}


def test_a_purge_keeps_a_ban_placed_again_since(world_file_or_memory: World) -> None:
    """The purge forgets the rows it deleted, not a newer one of the same place."""
    world = world_file_or_memory
    u = room_with(world, "olga", "nick")
    u["nick"].must(p.Part(room="dev"))
    u["olga"].must(p.Ban(room="dev", name="nick", duration_s=60))
    old = world.store.list_bans(0)
    world.clock.jump(60)
    u["olga"].must(p.Ban(room="dev", name="nick"))  # again, for good
    world.core.state.forget_lapsed(old)
    assert "banned from #dev until lifted" in reason_of(u["nick"].call(p.Join(room="dev")))


def test_deleting_a_room_forgets_its_bans_and_a_new_room_of_the_name_has_none(
        world_file_or_memory: World) -> None:
    world = world_file_or_memory
    u = room_with(world, "olga", "nick", "mia", "root")
    u["olga"].must(p.Ban(room="dev", name="nick"))
    u["olga"].must(p.Mute(room="dev", name="mia"))
    u["root"].must(p.Mute(name="mia", duration_s=600))
    u["olga"].must(p.DeleteRoom(room="dev"))
    assert "dev" not in world.core.state.bans and "dev" not in world.core.state.mutes
    assert world.core.bans_in_force(world.clock.ms, None) == world.store.list_bans(
        world.clock.ms)
    assert u["nick"].must(p.Join(room="dev")).room == "dev"  # a new room, no bans
    u["olga"].must(p.Join(room="dev"))
    assert u["olga"].call(p.Send(room="dev", text="x")).ok


def test_memory_answers_as_the_store_did_through_any_sequence_of_moderation(
        tmp_path: Path) -> None:
    """The old behaviour asked the store at each check (Store.active_ban, list_bans):
    through a random run of bans, mutes, lifts, time, purges and refreshes, the core's
    answer for every account and place is the store's, and SEND, DM, JOIN and LOGIN
    are refused exactly when the store says a mute or ban is in force."""
    world = World(Store(tmp_path / "zchat.db"), admins=("root",), send_rate_per_s=0,
                  login_rate_per_s=0)
    rng = random.Random(15)
    names = ("nick", "mia", "ivan")
    u = room_with(world, "olga", *names, "root")
    u["olga"].must(p.Join(room="ops"))
    for name in names:
        u[name].must(p.Join(room="ops"))
    places = ("dev", "ops", "")
    refused = {"ban": 0, "mute": 0}  # the checks below must see both kinds bite
    for step in range(150):
        name, place = rng.choice(names), rng.choice(places)
        actor = u["root"] if not place or rng.random() < 0.3 else u["olga"]
        duration = rng.choice((0, 30, 90))
        request = rng.choice((p.Ban(room=place, name=name, duration_s=duration),
                              p.Mute(room=place, name=name, duration_s=duration),
                              p.Unban(room=place, name=name), p.Unmute(room=place, name=name),
                              None, None))
        if request is not None:
            actor.call(request)
        elif rng.random() < 0.5:
            world.clock.jump(rng.choice((1, 20, 45, 61)))
            world.tick()
        else:
            world.core.state.refresh(world.store, world.clock.ms)
        now = world.clock.ms
        for kind in ("ban", "mute"):
            for where in places:
                for who in names:
                    assert world.core.active_ban(kind, where, who, now) == \
                        world.store.active_ban(kind, where, who, now), (step, kind, where)
        assert world.core.bans_in_force(now, None) == world.store.list_bans(now), step
        for who in names:
            banned = world.store.active_ban("ban", "", who, now) is not None
            if u[who].routing_id not in world.core.sessions:
                fresh = world.peer()
                login = fresh.login(who)
                assert login.ok != banned, (step, who, login.reply)
                if banned:
                    refused["ban"] += 1
                    continue
                u[who] = fresh
            muted_here = {where: world.store.active_ban("mute", where, who, now) is not None
                          for where in places}
            for where in ("dev", "ops"):
                if who not in world.core.members[where]:
                    room_ban = world.store.active_ban("ban", where, who, now)
                    join = u[who].call(p.Join(room=where))
                    assert join.ok == (room_ban is None), (step, who, where, join.reply)
                    refused["ban"] += not join.ok
                    if not join.ok:
                        continue
                send = u[who].call(p.Send(room=where, text=f"s{step}"))
                muted = muted_here[where] or muted_here[""]
                assert send.ok != muted, (step, who, where, send.reply)
                refused["mute"] += muted
            dm = u[who].call(p.SendDirect(to="olga", text=f"d{step}"))
            assert dm.ok != muted_here[""], (step, who, dm.reply)
    assert refused["ban"] > 20 and refused["mute"] > 20, refused
