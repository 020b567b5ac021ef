"""What moderation refuses (each once a hole a tester found, issue 6), one test at least
each:

1. a kicked moderator (or owner) acting on the room from outside (self-invitation,
   lock, delete, mode change); KICK now takes the moderator role; SET_ROLE demotes a
   moderator who is out;
2. an invitation used on a public room surviving, to reopen the room once private;
3. a broker admin's name claimable by REGISTER, and one admin resetting another's
   password over the wire;
4. a muted member setting the topic;
5. DELETE_MESSAGE telling an outsider which sequence numbers a private room has;
6. `zchat mod --duration` out of bounds exiting 1 with the broker's 400 instead of 2;
7. the console taking a bare number as a duration in seconds.

Core tests: real codec, real SQLite (":memory:"), the fake clock of
tests/core_helpers.py (World/Peer). Live tests: a real broker on inproc://. CLI
tests: the real `zchat` in a subprocess. No sleeping.
"""

from __future__ import annotations

import logging
import subprocess
from pathlib import Path
from typing import Any

import pytest
from conftest import cli_env, run, zchat_command
from core_helpers import PASSWORD, World, config

from zchat import wire as p
from zchat.console import commands as c
from zchat.core import BrokerCore
from zchat.errors import RequestFailed, Status
from zchat.store import Store
from zchat.testing import DEFAULT_PASSWORD, create_admin_accounts, free_port, running_broker


@pytest.fixture
def world() -> World:
    return World(admins=("root",))


def reason(out: Any) -> str:
    assert isinstance(out.reply, p.Error), f"expected an ERROR, got {out.reply!r}"
    return out.reply.reason


def audit(world: World) -> list[tuple[str, str, str]]:
    return [(r.actor, r.action, r.target) for r in reversed(world.store.audit_log())]


def private_room_with_moderator(world: World) -> dict[str, Any]:
    """#secret, private: olga owns it, mo moderates it, mem is a member; one message."""
    u = {name: world.user(name) for name in ("olga", "mo", "mem")}
    u["olga"].must(p.Join(room="secret", private=True))
    for name in ("mo", "mem"):
        u["olga"].must(p.Invite(room="secret", name=name))
        u[name].must(p.Join(room="secret"))
    u["olga"].must(p.SetRole(room="secret", name="mo", role="moderator"))
    u["mem"].must(p.Send(room="secret", text="members only"))
    return u


# -- 1. acting on a room needs membership; KICK takes the moderator role ---------------


def test_kicked_moderator_loses_the_role_and_cannot_act_from_outside(world: World) -> None:
    u = private_room_with_moderator(world)
    kicked = u["olga"].call(p.Kick(room="secret", name="mo", reason="enough"))
    assert kicked.ok
    assert world.store.room_role("secret", "mo") == ""
    assert "mo" not in world.core.roles.get("secret", {})
    before, log_before = world.counts(), audit(world)
    for request in (p.Invite(room="secret", name="mo"), p.SetRoom(room="secret", locked=True),
                    p.SetRoom(room="secret", private=False),
                    p.DeleteMessage(room="secret", seq=1), p.Kick(room="secret", name="mem"),
                    p.Ban(room="secret", name="mem"), p.Mute(room="secret", name="mem"),
                    p.Unban(room="secret", name="mem"), p.Unmute(room="secret", name="mem"),
                    p.SetRole(room="secret", name="mem", role="moderator"),
                    p.SetTopic(room="secret", topic="mine now"),
                    p.SetSlowMode(room="secret", seconds=30),
                    p.FetchHistory(room="secret")):
        out = u["mo"].call(request)  # an outsider now: no such room for them (§17.2)
        assert out.status == Status.NOT_FOUND, request
        assert out.events == [] and out.pushes == [], request
    assert world.counts() == before and audit(world) == log_before
    assert not world.store.has_invite("secret", "mo")
    assert "secret" in world.core.private and "secret" not in world.core.locked
    assert u["mo"].call(p.Join(room="secret")).status == Status.CONFLICT  # name taken


def test_moderator_who_left_acts_again_only_from_inside(world: World) -> None:
    """PART keeps a moderator's role (as Matrix keeps power levels), but the room is
    moderated from inside it: back in, the role works again."""
    u = {name: world.user(name) for name in ("olga", "mo", "mem")}
    u["olga"].must(p.Join(room="dev"))
    for name in ("mo", "mem"):
        u[name].must(p.Join(room="dev"))
    u["olga"].must(p.SetRole(room="dev", name="mo", role="moderator"))
    u["mo"].must(p.Part(room="dev"))
    out = u["mo"].call(p.Kick(room="dev", name="mem"))
    assert out.status == Status.FORBIDDEN and "not in #dev" in reason(out)
    assert "mem" in world.core.members["dev"]
    u["mo"].must(p.Join(room="dev"))
    assert u["mo"].call(p.Kick(room="dev", name="mem")).ok


def test_set_role_demotes_a_moderator_who_is_out(world: World) -> None:
    u = {name: world.user(name) for name in ("olga", "mo", "eve")}
    u["olga"].must(p.Join(room="dev"))
    u["mo"].must(p.Join(room="dev"))
    u["olga"].must(p.SetRole(room="dev", name="mo", role="moderator"))
    u["mo"].must(p.Part(room="dev"))
    out = u["olga"].call(p.SetRole(room="dev", name="mo", role="member"))
    assert out.ok
    assert [e.role for _t, e in out.events_of(p.RoleChanged)] == ["member"]
    assert world.store.room_role("dev", "mo") == "" and "mo" not in world.core.roles["dev"]
    assert ("olga", "role", "mo") in audit(world)
    # appointing someone who is out, or "demoting" an outsider with no role: still 404
    assert u["olga"].call(p.SetRole(room="dev", name="mo", role="moderator")).status == 404
    assert u["olga"].call(p.SetRole(room="dev", name="eve", role="member")).status == 404


def test_owner_kicked_by_an_admin_keeps_ownership_acts_only_once_back(world: World) -> None:
    u = private_room_with_moderator(world)
    root = world.user("root")
    assert root.call(p.Kick(room="secret", name="olga")).ok  # admins need no membership
    assert world.store.room_role("secret", "olga") == "owner"
    for request in (p.Invite(room="secret", name="olga"),
                    p.SetRoom(room="secret", private=False),
                    p.SetRole(room="secret", name="mo", role="member"),
                    p.DeleteMessage(room="secret", seq=1)):
        assert u["olga"].call(request).status == Status.FORBIDDEN, request
    assert world.store.room_role("secret", "mo") == "moderator"
    # the owner comes back without an invitation (a kick is not a ban), then acts
    back = u["olga"].call(p.Join(room="secret"))
    assert back.ok and back.reply.private  # type: ignore[attr-defined]
    assert u["olga"].call(p.SetRole(room="secret", name="mo", role="member")).ok
    # a ban does keep the owner out
    root.must(p.Ban(room="secret", name="olga"))
    assert u["olga"].call(p.Join(room="secret")).status == Status.FORBIDDEN


def test_nobody_invites_themselves(world: World) -> None:
    u = private_room_with_moderator(world)
    root = world.user("root")  # not a member; an admin may JOIN without invitation anyway
    out = root.call(p.Invite(room="secret", name="root"))
    assert out.status == Status.FORBIDDEN and "yourself" in reason(out)
    assert not world.store.has_invite("secret", "root")
    assert u["mo"].call(p.Invite(room="secret", name="mo")).status == Status.CONFLICT  # in


# -- 2. JOIN uses up any invitation; KICK and PART drop one -----------------------------


def test_invitation_used_on_a_public_room_cannot_reopen_it_once_private(
        world: World) -> None:
    olga, eve = world.user("olga"), world.user("eve")
    olga.must(p.Join(room="dev"))
    olga.must(p.Invite(room="dev", name="eve"))
    eve.must(p.Join(room="dev"))
    assert not world.store.has_invite("dev", "eve")
    olga.must(p.SetRoom(room="dev", private=True))
    olga.must(p.Kick(room="dev", name="eve"))
    out = eve.call(p.Join(room="dev"))  # §17.2: as for a look-alike of an existing room
    assert out.status == Status.CONFLICT and "exists already" in reason(out)


def test_kick_and_part_drop_a_leftover_invitation(world: World) -> None:
    """Invitations stored before JOIN used them up on public rooms (an older broker)."""
    olga, eve, max_ = world.user("olga"), world.user("eve"), world.user("max")
    olga.must(p.Join(room="dev", private=True))
    for peer, name in ((eve, "eve"), (max_, "max")):
        olga.must(p.Invite(room="dev", name=name))
        peer.must(p.Join(room="dev"))
        world.store.add_invite("dev", name, "olga", world.clock.ms)  # the leftover
    olga.must(p.Kick(room="dev", name="eve"))
    max_.must(p.Part(room="dev"))
    assert not world.store.has_invite("dev", "eve")
    assert not world.store.has_invite("dev", "max")
    assert eve.call(p.Join(room="dev")).status == Status.CONFLICT
    assert max_.call(p.Join(room="dev")).status == Status.CONFLICT


# -- 3. admin names: no REGISTER, no reset or disable by another admin -------------------


def core_with_admins(claimed: tuple[str, ...], listed: tuple[str, ...]) -> World:
    """A World whose config lists ``listed`` as admins but only ``claimed`` have
    accounts (created as the operator would)."""
    world = World()
    create_admin_accounts(world.store, claimed, PASSWORD)
    world.core = BrokerCore(world.store, config(admins=listed), "tcp://127.0.0.1:5556",
                            now_ms=world.clock.ms)
    return world


def test_register_of_an_admin_name_or_a_look_alike_is_403(
        caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="zchat.broker"):
        world = core_with_admins(("root",), ("root", "boss"))
    warned = [r.getMessage() for r in caplog.records if "has no account" in r.getMessage()]
    assert len(warned) == 1 and "'boss'" in warned[0] and "zchat admin create" in warned[0]
    # a core built again on the same store (after a failed commit) does not say it again
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zchat.broker"):
        BrokerCore(world.store, config(admins=("root", "boss")), "tcp://127.0.0.1:5556",
                   now_ms=world.clock.ms)
    assert not [r for r in caplog.records if "has no account" in r.getMessage()]
    before = world.counts()
    for name in ("boss", "BOSS", "b0ss", "ｂｏｓｓ", "root", "r00t"):
        out = world.peer().register(name)
        assert out.status == Status.FORBIDDEN, name
        assert "reserved for a broker admin" in reason(out), name
    assert world.counts() == before
    assert world.store.get_account("boss") is None
    assert world.peer().register("bossa").ok  # only the names and their look-alikes


def test_admin_cannot_create_another_admins_account_over_the_wire() -> None:
    world = core_with_admins(("root",), ("root", "boss"))
    root = world.user("root", register=False)
    before = world.counts()
    out = root.call(p.CreateAccounts(accounts=(
        p.NewAccount(name="ada", password=PASSWORD),
        p.NewAccount(name="Boss", password=PASSWORD))))
    assert out.status == Status.FORBIDDEN and "'Boss'" in reason(out)
    assert world.counts() == before  # all or none


def test_admin_cannot_reset_or_disable_another_admin_over_the_wire() -> None:
    world = World(admins=("root", "boss"))
    root, boss, nick = world.user("root"), world.user("boss"), world.user("nick")
    out = root.call(p.AdminSetPassword(name="boss", password="taken over"))
    assert out.status == Status.FORBIDDEN and "only the operator" in reason(out)
    out = root.call(p.AdminSetPassword(name="root", password="no old password needed"))
    assert out.status == Status.FORBIDDEN and "zchat passwd" in reason(out)
    assert root.call(p.SetDisabled(name="boss", disabled=True)).status == Status.FORBIDDEN
    world.store.set_disabled("boss", True)  # the operator, on the database
    assert root.call(p.SetDisabled(name="boss", disabled=False)).status == Status.FORBIDDEN
    assert world.store.is_disabled("boss")
    assert boss.must(p.Ping()).session  # boss's session went on; nothing was audited
    assert audit(world) == []
    assert world.peer().login("boss").status == Status.FORBIDDEN  # still disabled
    assert root.must(p.AdminSetPassword(name="nick", password="reset by root")) == p.Ok()
    assert nick.call(p.ListRooms()).status == Status.UNAUTHORIZED  # its session ended


def test_register_of_an_admin_name_is_refused_by_a_live_broker() -> None:
    async def scenario(h: Any) -> None:
        async with h.client() as anyone:
            with pytest.raises(RequestFailed) as refused:
                await anyone.register("boss", DEFAULT_PASSWORD)
            assert refused.value.status == Status.FORBIDDEN
            assert "reserved for a broker admin" in refused.value.reason
        async with h.client("root") as root:  # created by the operator (the harness)
            users = {u.name for u in (await root.users()).users}
            assert "boss" not in users and "root" in users

    with running_broker(admins=("root",)) as h:
        # "boss" is listed but has no account: take it out of the harness's creation
        h.broker.core.admins.add("boss")
        h.broker.core._admin_skeletons.add("boss")
        run(scenario(h))


def test_operator_creates_an_admin_account_on_the_database(tmp_path: Path) -> None:
    """`zchat admin create` on the database (broker stopped) still makes admin accounts,
    and the admin then logs in to a broker that lists them. The first start creates the
    database (and warns that the admin has no account), as in docs/admin.md."""
    data = tmp_path / "data"
    data.mkdir()
    with running_broker(data / "zchat.db"):
        pass
    csv_file = tmp_path / "admins.csv"
    csv_file.write_text("name,password\nboss,boss-pass-123\n", encoding="utf-8")
    done = subprocess.run([*zchat_command(), "admin", "create", "--csv", str(csv_file),
                           "--data-dir", str(data)], env=cli_env(tmp_path),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, (done.stdout, done.stderr)
    with running_broker(data / "zchat.db", admins=("boss",)) as h:
        async def scenario() -> None:
            async with h.client("boss", "boss-pass-123", register=False) as boss:
                assert {u.name for u in (await boss.users()).users} == {"boss"}

        run(scenario())


# -- 4. a muted member cannot set the topic ----------------------------------------------


@pytest.mark.parametrize("place", ["dev", ""])
def test_muted_member_setting_the_topic_is_403_like_send(world: World, place: str) -> None:
    olga, nick, root = world.user("olga"), world.user("nick"), world.user("root")
    olga.must(p.Join(room="dev"))
    nick.must(p.Join(room="dev"))
    olga.must(p.SetTopic(room="dev", topic="rules: be kind"))
    (root if place == "" else olga).must(p.Mute(room=place, name="nick", duration_s=600))
    send = nick.call(p.Send(room="dev", text="hi"))
    topic = nick.call(p.SetTopic(room="dev", topic="nick was here"))
    assert topic.status == send.status == Status.FORBIDDEN
    assert reason(topic) == reason(send)
    assert reason(topic).startswith("you are muted " + ("in #dev" if place else
                                                         "on this server"))
    assert topic.events == [] and world.core.topics["dev"] == "rules: be kind"
    assert world.store.get_room("dev").topic == "rules: be kind"  # type: ignore[union-attr]
    world.clock.jump(601)  # the mute lapses: the topic is theirs to set again
    assert nick.call(p.SetTopic(room="dev", topic="nick was here")).ok


# -- 5. DELETE_MESSAGE checks the right to act before the message ------------------------


def test_outsider_cannot_count_a_private_rooms_messages(world: World) -> None:
    private_room_with_moderator(world)  # #secret holds message 1
    eve = world.user("eve")
    there, missing = (eve.call(p.DeleteMessage(room="secret", seq=seq)) for seq in (1, 99))
    assert there.status == missing.status == Status.NOT_FOUND  # no such room, to eve
    assert reason(there) == reason(missing)
    assert world.store.message("secret", 1).deleted_by == ""  # type: ignore[union-attr]


def test_member_still_gets_404_and_403_for_messages(world: World) -> None:
    u = private_room_with_moderator(world)
    assert u["mo"].call(p.DeleteMessage(room="secret", seq=99)).status == Status.NOT_FOUND
    u["olga"].must(p.Send(room="secret", text="owner's"))
    assert u["mem"].call(p.DeleteMessage(room="secret", seq=2)).status == Status.FORBIDDEN
    assert u["mem"].call(p.DeleteMessage(room="secret", seq=1)).ok  # her own


# -- 6. the CLI checks --duration before sending ----------------------------------------


@pytest.mark.parametrize(("duration", "says"), [
    ("99999w", "at most ten years"), ("90", "a number and a unit"),
    ("0s", "more than 0"), ("5min", "a number and a unit"), ("soon", "a number and a unit")])
def test_cli_bad_duration_exits_2_before_connecting(tmp_path: Path, duration: str,
                                                    says: str) -> None:
    nobody = f"tcp://127.0.0.1:{free_port()}"  # nothing listens: only a local check answers
    done = subprocess.run([*zchat_command(), "mod", "--server", nobody, "--as", "olga",
                           "mute", "dev", "nick", "--duration", duration],
                          env=cli_env(tmp_path), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2, (done.stdout, done.stderr)
    assert done.stderr.startswith("zchat: error: --duration ") and says in done.stderr
    assert "Traceback" not in done.stderr


# -- 7. the console: a duration needs a unit; a bare number starts the reason ------------


def test_console_bare_number_starts_the_reason() -> None:
    assert c.parse_input("/mute mem 3 strikes and you are out") == c.Moderate(
        "mute", "mem", "3 strikes and you are out", 0)
    assert c.parse_input("/mute mem 0 tolerance") == c.Moderate("mute", "mem",
                                                                "0 tolerance", 0)
    assert c.parse_input("/ban mem 3") == c.Moderate("ban", "mem", "3", 0)
    assert c.parse_input("/mute mem 30s flood") == c.Moderate("mute", "mem", "flood", 30)
    assert c.parse_input("/ban mem 1W") == c.Moderate("ban", "mem", "", 604_800)
    assert c.parse_input("/ban mem 3660d") == c.Moderate("ban", "mem", "", p.MAX_BAN_S)


@pytest.mark.parametrize(("line", "says"), [
    ("/mute mem 99999w", "at most ten years"), ("/ban mem 3661d", "at most ten years"),
    ("/mute mem 0s spam", "more than 0"), ("/mute mem 3x", "a number and a unit"),
    ("/ban mem -5m", "a number and a unit"), ("/ban mem 2h30m", "a number and a unit")])
def test_console_mistyped_duration_is_an_error(line: str, says: str) -> None:
    got = c.parse_input(line)
    assert isinstance(got, c.ParseError) and says in got.message, got


def test_parse_duration_and_the_broker_share_one_bound() -> None:
    assert c.parse_duration("3660d") == p.MAX_BAN_S
    with pytest.raises(ValueError, match="at most ten years"):
        c.parse_duration(f"{p.MAX_BAN_S + 1}s")
    assert c.parse_duration("90") is None and c.parse_duration("tolerance") is None


# -- live: the tester's attack over a real broker -----------------------------------------


def test_kicked_moderator_cannot_invite_themselves_back_live() -> None:
    async def scenario(h: Any) -> None:
        async with h.client("olga") as olga, h.client("mo") as mo:
            await olga.join("secret", private=True)
            await olga.invite("secret", "mo")
            await mo.join("secret")
            await olga.set_role("secret", "mo", "moderator")
            await olga.send("secret", "the plan")
            await olga.kick("secret", "mo")
            for attempt in (mo.invite("secret", "mo"), mo.set_room("secret", private=False),
                            mo.delete_message("secret", 1), mo.history("secret"),
                            mo.join("secret")):
                with pytest.raises(RequestFailed) as refused:
                    await attempt
                # an outsider now: the room does not exist for them (§17.2)
                assert refused.value.status in (Status.NOT_FOUND, Status.CONFLICT)
            history = await olga.history("secret")
            assert [(m.text, m.deleted_by) for m in history.messages] == [("the plan", "")]

    with running_broker(admins=("root",)) as h:
        run(scenario(h))


def test_store_left_as_it_was_after_refusals(tmp_path: Path) -> None:
    """The refusals above change nothing durable: a broker restarted on the same file
    still has #secret private, its roles and no invitation for the kicked moderator."""
    db = tmp_path / "zchat.db"
    with running_broker(db, admins=("root",)) as h:
        async def scenario() -> None:
            async with h.client("olga") as olga, h.client("mo") as mo:
                await olga.join("secret", private=True)
                await olga.invite("secret", "mo")
                await mo.join("secret")
                await olga.set_role("secret", "mo", "moderator")
                await olga.kick("secret", "mo")
                with pytest.raises(RequestFailed):
                    await mo.invite("secret", "mo")

        run(scenario())
    store = Store(db)
    try:
        assert store.room_flags()["secret"] == (True, False)
        assert store.roles()["secret"] == {"olga": "owner"}
        assert store.invites_of("mo") == []
    finally:
        store.close()
