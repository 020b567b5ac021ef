"""DELETE_ROOM (issue 13 §5, docs/PROTOCOL.md §6.52): a room's owner (from inside) or a
broker admin deletes a room — its history, memberships, roles, invitations and bans go,
the audit log keeps a ``delete_room`` entry, its members are told with ROOM_DELETED and
their clients stop following it; ``lobby`` cannot be deleted; the name is free again.

The core is driven directly (real codec, real SQLite, fake clock); then the client library
and ``zchat mod delete-room`` / ``zchat tail`` against real brokers."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import Proc, TcpBroker, cli_env, run, start_broker, stop_broker, zchat_command
from core_helpers import Peer, World, room_with

from zchat import wire as p
from zchat.client.sync import SyncClient
from zchat.errors import RequestFailed, Status
from zchat.testing import DEFAULT_PASSWORD, Harness, next_message


@pytest.fixture
def world() -> World:
    return World(admins=("root",))


def table_counts(world: World, key: str) -> dict[str, int]:
    db = world.store._db
    counts = {t: db.execute(f"SELECT COUNT(*) FROM {t} WHERE room_key = ?",
                            (key,)).fetchone()[0]
              for t in ("members", "messages", "room_roles", "invites", "bans")}
    counts["rooms"] = db.execute("SELECT COUNT(*) FROM rooms WHERE key = ?",
                                 (key,)).fetchone()[0]
    return counts


def test_owner_deletes_a_room_with_its_history_and_members_are_told(world: World) -> None:
    u = room_with(world, "olga", "mia", "nick")
    u["mia"].must(p.Send(room="dev", text="one"))
    u["nick"].must(p.Send(room="dev", text="two"))
    u["olga"].must(p.SetRole(room="dev", name="mia", role="moderator"))
    u["olga"].must(p.Ban(room="dev", name="nick", reason="spam"))
    eve = world.user("eve")
    u["olga"].must(p.Invite(room="dev", name="eve"))
    assert table_counts(world, "dev") == {"members": 2, "messages": 2, "room_roles": 2,
                                          "invites": 1, "bans": 1, "rooms": 1}
    out = u["olga"].call(p.DeleteRoom(room="DEV", reason="moving to #ops"))
    assert out.ok, out.reply
    assert out.events == [(b"room/dev/", p.RoomDeleted(room="dev", by="olga",
                                                        time=world.clock.ms,
                                                        reason="moving to #ops"))]
    assert table_counts(world, "dev") == {"members": 0, "messages": 0, "room_roles": 0,
                                          "invites": 0, "bans": 0, "rooms": 0}
    (entry,) = world.store.audit_log(action="delete_room")
    assert (entry.actor, entry.room, entry.target, entry.detail) == \
        ("olga", "dev", "", "2 messages, 2 members; moving to #ops")
    assert "dev" not in world.core.rooms
    # it is gone for everyone: no membership in PONG or LOGIN, nothing to read or post to
    assert u["mia"].must(p.Ping()).rooms == (p.RoomState(room="lobby", last_seq=0),)
    assert [r.room for r in world.peer().login("mia").reply.rooms] == ["lobby"]
    for request in (p.FetchHistory(room="dev"), p.Who(room="dev"), p.FetchRoom(room="dev"),
                    p.Send(room="dev", text="hello?")):
        assert u["mia"].call(request).status == Status.NOT_FOUND
    # the name is free: a JOIN makes a new, empty room, owned by whoever made it, with no
    # trace of the old one's bans or invitations; it goes on numbering after the old one,
    # so that a client that missed ROOM_DELETED takes no new message for an old repeat
    again = u["nick"].must(p.Join(room="dev"))
    assert (again.created, again.last_seq) == (True, 2)
    assert world.core.roles["dev"] == {"nick": "owner"}
    assert eve.call(p.Join(room="dev")).ok
    assert u["nick"].must(p.Send(room="dev", text="fresh")).seq == 3
    assert [m.seq for m in eve.must(p.FetchHistory(room="dev")).messages] == [3]
    # its new owner reads its audit log, not the deleted namesake's (kick, ban, delete...)
    assert [e.action for e in u["nick"].must(p.ReadAudit(room="dev")).entries] == []
    u["nick"].must(p.Kick(room="dev", name="eve", reason="test"))
    assert [(e.actor, e.action) for e in u["nick"].must(p.ReadAudit(room="dev")).entries] \
        == [("nick", "kick")]


@pytest.mark.parametrize("who", ["mia", "nick", "eve"])
def test_members_moderators_and_others_may_not(world: World, who: str) -> None:
    u = room_with(world, "olga", "mia", "nick")
    u["olga"].must(p.SetRole(room="dev", name="mia", role="moderator"))
    peer = u.get(who) or world.user(who)
    out = peer.call(p.DeleteRoom(room="dev"))
    assert out.status == Status.FORBIDDEN
    assert out.reply.reason == "only the owner of #dev or a broker admin may delete it"
    assert out.events == [] and "dev" in world.core.rooms
    assert world.store.audit_log(action="delete_room") == []


def test_the_owner_acts_from_inside_an_admin_from_anywhere(world: World) -> None:
    u = room_with(world, "olga", "mia")
    u["olga"].must(p.Part(room="dev"))
    out = u["olga"].call(p.DeleteRoom(room="dev"))
    assert out.status == Status.FORBIDDEN and "JOIN it to delete it" in out.reply.reason
    root = world.user("root")
    assert root.call(p.DeleteRoom(room="dev")).ok
    assert "dev" not in world.core.rooms


def test_lobby_cannot_be_deleted_nor_an_unknown_room(world: World) -> None:
    root = world.user("root")
    out = root.call(p.DeleteRoom(room="lobby"))
    assert out.status == Status.FORBIDDEN
    assert out.reply.reason == "#lobby cannot be deleted: every account is in it"
    assert root.call(p.DeleteRoom(room="nosuch")).status == Status.NOT_FOUND
    assert root.call(p.DeleteRoom(room="bad name")).status == Status.INVALID


def test_a_private_rooms_deletion_is_pushed_to_its_members_only(world: World) -> None:
    u = room_with(world, "olga", "mia", private=True)
    out = u["olga"].call(p.DeleteRoom(room="dev"))
    assert out.ok and out.events == []
    told = {rid for rid, m in out.pushes if isinstance(m, p.RoomDeleted)}
    assert told == {u["olga"].routing_id, u["mia"].routing_id}


def test_admins_read_a_deleted_rooms_audit_entries_by_name(world: World) -> None:
    u = room_with(world, "olga", "mia")
    u["olga"].must(p.Kick(room="dev", name="mia"))
    u["olga"].must(p.DeleteRoom(room="dev"))
    root: Peer = world.user("root")
    entries = root.must(p.ReadAudit(room="dev")).entries
    assert [e.action for e in entries] == ["delete_room", "kick"]
    assert u["olga"].call(p.ReadAudit(room="dev")).status == Status.NOT_FOUND


def test_the_text_of_deleted_messages_goes_from_the_audit_with_the_room(world: World) -> None:
    """A moderator's ``delete`` entry quotes the message; deleting the room removes that
    text (its history is gone, §6.52) but keeps the entry. Entries of another room, and of
    an earlier room of the same name already deleted, are left as they are."""
    u = room_with(world, "olga", "mia")
    u["mia"].must(p.Send(room="dev", text="old secret"))
    u["olga"].must(p.DeleteMessage(room="dev", seq=1))
    u["olga"].must(p.Join(room="ops"))
    u["olga"].must(p.Send(room="ops", text="ops text"))
    u["olga"].must(p.DeleteMessage(room="ops", seq=1))
    u["olga"].must(p.DeleteRoom(room="dev"))
    details = {(e.room, e.detail) for e in world.store.audit_log(action="delete")}
    assert details == {("dev", "#1 (text deleted with the room)"), ("ops", "#1: ops text")}
    u["olga"].must(p.Join(room="dev"))  # a new #dev, numbered on from the old one
    u["olga"].must(p.Send(room="dev", text="new text"))
    u["olga"].must(p.DeleteMessage(room="dev", seq=2))
    u["olga"].must(p.DeleteRoom(room="dev"))
    details = [e.detail for e in world.store.audit_log(action="delete", room="dev")]
    assert details == ["#2 (text deleted with the room)", "#1 (text deleted with the room)"]


# -- the client library, the command line ------------------------------------------------------


def test_followers_get_room_deleted_and_stop_following(harness: Harness) -> None:
    async def scenario() -> None:
        async with harness.client("olga") as olga, harness.client("mia") as mia:
            await olga.join("dev")
            await mia.join("dev")
            await olga.send("dev", "hi")
            await next_message(mia, "dev")
            await olga.delete_room("dev", "done here")
            while not isinstance(event := await mia.next_event(5), p.RoomDeleted):
                assert event is not None, "no ROOM_DELETED"
            assert (event.room, event.by, event.reason) == ("dev", "olga", "done here")
            assert "dev" not in mia.rooms and "dev" not in olga.rooms
            with pytest.raises(RequestFailed) as gone:
                await mia.send("dev", "anyone?")
            assert gone.value.status == Status.NOT_FOUND

    run(scenario())


def test_tail_of_a_deleted_room_ends_and_mod_delete_room_says_so(
        tmp_path: Path, tcp_broker: TcpBroker) -> None:
    server = ("--server", tcp_broker.router)

    def zchat(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*zchat_command(), *args], env=cli_env(tmp_path),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=30)

    for name in ("olga", "mia"):
        assert zchat("register", *server, name).returncode == 0
    assert zchat("say", *server, "--as", "olga", "--room", "dev", "hi").returncode == 0
    tail = Proc([*zchat_command(), "tail", *server, "--as", "mia", "--room", "dev"],
                cli_env(tmp_path))
    try:
        tail.wait_line("stderr", "following #dev as mia")
        refused = zchat("mod", *server, "--as", "mia", "delete-room", "#dev")
        assert refused.returncode == 1
        assert refused.stderr == ("zchat: error: only the owner of #dev or a broker admin "
                                  "may delete it (403)\n")
        done = zchat("mod", *server, "--as", "olga", "delete-room", "#dev", "--reason",
                     "wrong room")
        assert (done.returncode, done.stdout) == (0, "deleted #dev\n"), done.stderr
        assert tail.wait(10) == 1
    finally:
        tail.kill()
    assert tail.stderr[-1] == "zchat: error: #dev was deleted by olga: wrong room"
    lobby = zchat("mod", *server, "--as", "olga", "delete-room", "lobby")
    assert lobby.stderr == ("zchat: error: #lobby cannot be deleted: every account is in "
                            "it (403)\n")
    star = zchat("mod", *server, "--as", "olga", "delete-room", "*")
    assert (star.returncode, star.stderr) == \
        (2, "zchat: error: mod delete-room needs a ROOM, not '*'\n")


def test_a_deleted_rooms_unread_mentions_go_with_it(world: World) -> None:
    """Its members' mentions are deleted with the room: a member of a new room of that
    name has none of the old room's (its seqs go on from the old one's, so old mention
    rows would count there)."""
    u = room_with(world, "olga", "mia")
    for text in ("mia: one", "mia: two"):
        u["olga"].must(p.Send(room="dev", text=text))
    assert {r.room: r.mentions for r in world.peer().login("mia").reply.room_reads}["dev"] \
        == 2
    u["olga"].must(p.DeleteRoom(room="dev"))
    assert world.store._db.execute("SELECT COUNT(*) FROM mentions").fetchone()[0] == 0
    u["olga"].must(p.Join(room="dev"))
    u["mia"].must(p.Join(room="dev"))
    assert {r.room: (r.unread, r.mentions) for r in
            world.peer().login("mia").reply.room_reads}["dev"] == (0, 0)


def test_tail_ends_when_its_room_is_left_on_another_device(tmp_path: Path) -> None:
    """No LEFT reaches the tail when mia leaves #dev from another device (its event names
    no remover); the next heartbeat shows the room gone from her rooms, and the tail ends
    as for a kick rather than going silent (and the same holds for a deletion whose
    ROOM_DELETED it missed)."""
    broker, _ = start_broker(tmp_path, settings="heartbeat_interval_s = 0.5\n"
                                                "heartbeat_timeout_s = 2.0\n")
    server = ("--server", broker.router)
    env = cli_env(tmp_path)
    tail: Proc | None = None
    try:
        for name in ("olga", "mia"):
            subprocess.run([*zchat_command(), "register", *server, name], env=env,
                           check=True, capture_output=True, timeout=30)
        tail = Proc([*zchat_command(), "tail", *server, "--as", "mia", "--room", "dev"], env)
        tail.wait_line("stderr", "following #dev as mia")
        with SyncClient(broker.router) as phone:
            phone.login("mia", DEFAULT_PASSWORD)
            phone.part("dev")
            phone.logout()
        assert tail.wait(15) == 1
        assert tail.stderr[-1] == ("zchat: error: you are no longer in #dev (left on another "
                                   "device, removed, or the room was deleted); nothing "
                                   "left to follow")
    finally:
        if tail is not None:
            tail.kill()
        stop_broker(broker)
