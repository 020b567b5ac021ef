"""A private room does not exist for outsiders (docs/PROTOCOL.md §17.2, issue 14 item 9):
every request that names it answers an account that is not a member, not a broker
admin, holds no role in it and has no invitation exactly as it answers for a name no room
has — the same status and the same reason, byte for byte — except JOIN, which cannot
create a second room of that name and answers as for a look-alike of an existing room.

Pure core, fake clock (tests/core_helpers.py's World).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from core_helpers import World

from zchat import wire as p
from zchat.errors import Status

#: Every request type that names a room, built for a room name.
ROOM_REQUESTS: dict[str, Callable[[str], p.Request]] = {
    "PART": lambda r: p.Part(room=r),
    "SEND": lambda r: p.Send(room=r, text="hello"),
    "HISTORY": lambda r: p.FetchHistory(room=r),
    "ROOM_INFO": lambda r: p.FetchRoom(room=r),
    "WHO": lambda r: p.Who(room=r),
    "SET_TOPIC": lambda r: p.SetTopic(room=r, topic="mine now"),
    "SET_SLOW_MODE": lambda r: p.SetSlowMode(room=r, seconds=5),
    "KICK": lambda r: p.Kick(room=r, name="owner"),
    "BAN": lambda r: p.Ban(room=r, name="owner"),
    "UNBAN": lambda r: p.Unban(room=r, name="owner"),
    "MUTE": lambda r: p.Mute(room=r, name="owner"),
    "UNMUTE": lambda r: p.Unmute(room=r, name="owner"),
    "INVITE": lambda r: p.Invite(room=r, name="owner"),
    "SET_ROLE": lambda r: p.SetRole(room=r, name="owner", role="moderator"),
    "SET_ROOM": lambda r: p.SetRoom(room=r, locked=True),
    "DELETE_MESSAGE": lambda r: p.DeleteMessage(room=r, seq=1),
    "DELETE_ROOM": lambda r: p.DeleteRoom(room=r),
    "BANS": lambda r: p.ListBans(room=r),
    "AUDIT": lambda r: p.ReadAudit(room=r),
    "MARK_READ": lambda r: p.MarkRead(room=r, upto=0),
}


def test_the_table_covers_every_request_with_a_room_field() -> None:
    named = {cls.TYPE for cls in p.REQUEST_TYPES.values()
             if "room" in cls.__struct_fields__}
    assert named - {"JOIN"} == set(ROOM_REQUESTS)


def secret_world() -> World:
    world = World(send_rate_per_s=0.0)
    owner = world.user("owner")
    owner.must(p.Join(room="Secret", private=True))
    owner.must(p.Send(room="Secret", text="the plans"))
    world.user("outsider")
    return world


def answer(world: World, name: str, request: p.Request) -> p.Message:
    peer = world.peer()
    assert peer.login(name).ok
    return peer.call(request).reply


@pytest.mark.parametrize("kind", sorted(ROOM_REQUESTS))
def test_an_outsider_gets_the_answer_for_a_room_that_does_not_exist(kind: str) -> None:
    build = ROOM_REQUESTS[kind]
    world = secret_world()
    for raw in ("Secret", "secret", "SECRET"):
        hidden = answer(world, "outsider", build(raw))
        # the same request, naming a room that does not exist, from another account
        # that is as much an outsider (the reply names the room as it was sent)
        missing = answer(world, "outsider", build("Nowhere"))
        assert isinstance(hidden, p.Error) and isinstance(missing, p.Error)
        assert hidden.status == missing.status == Status.NOT_FOUND, (hidden, missing)
        assert p.encode_body(hidden) == p.encode_body(missing).replace(
            b"Nowhere", raw.encode()), (hidden, missing)
    # and nothing was done to the room
    assert world.core.topics[("secret")] == ""
    assert world.core.members["secret"] == {"owner"}


def test_join_answers_as_for_a_look_alike_of_an_existing_room() -> None:
    world = secret_world()
    world.user("bystander").must(p.Join(room="dev1"))      # a public room
    look_alike = answer(world, "outsider", p.Join(room="devl"))
    hidden = answer(world, "outsider", p.Join(room="secret"))
    assert isinstance(hidden, p.Error) and isinstance(look_alike, p.Error)
    assert hidden.status == look_alike.status == Status.CONFLICT
    assert p.encode_body(hidden) == p.encode_body(look_alike).replace(b"devl", b"secret")
    assert world.core.members["secret"] == {"owner"}


def test_those_who_know_the_room_still_get_the_real_answers() -> None:
    world = secret_world()
    owner = world.peer()
    assert owner.login("owner").ok
    owner.must(p.Invite(room="secret", name="outsider"))
    # an invited account sees it (it was told of it), and JOIN lets it in
    info = answer(world, "outsider", p.FetchRoom(room="secret"))
    assert isinstance(info, p.Error) and info.status == Status.FORBIDDEN
    assert isinstance(answer(world, "outsider", p.Join(room="secret")), p.RoomJoined)
    # a moderator who left keeps the role, and knows the room: 403, not 404
    owner.must(p.SetRole(room="secret", name="outsider", role="moderator"))
    assert answer(world, "outsider", p.Part(room="secret")) == p.Ok()
    who = answer(world, "outsider", p.Who(room="secret"))
    assert isinstance(who, p.Error) and who.status == Status.FORBIDDEN
    # a kicked member is an outsider again
    owner.must(p.SetRole(room="secret", name="outsider", role="member"))
    gone = answer(world, "outsider", p.FetchHistory(room="secret"))
    assert isinstance(gone, p.Error) and gone.status == Status.NOT_FOUND


def test_admins_see_every_room() -> None:
    world = World(admins=("root",), send_rate_per_s=0.0)
    world.user("owner").must(p.Join(room="secret", private=True))
    info = answer(world, "root", p.FetchRoom(room="secret"))
    assert isinstance(info, p.RoomDetails) and info.private
