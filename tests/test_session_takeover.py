"""How sessions end when someone else takes or cancels them (docs/PROTOCOL.md §6.26,
§6.27, §6.47; issue 14 item 11), and who may delete whose message (§6.38, §17.1).

- Two connections RESUMEing one token: the last one wins (a reconnecting client's old
  connection may look alive to the broker), and the connection it displaces is told with
  SESSION_CLOSED instead of both believing they hold the session.
- Revoking an account token ends the sessions that logged in with it with SESSION_CLOSED,
  as every other session ended on someone's order does.
- Deleting someone else's message is an action on a person: it needs a rank above the
  sender's in the room, as KICK, BAN and MUTE do.

Pure core, fake clock.
"""

from __future__ import annotations

from test_broker_core import World

from zchat import protocol as p
from zchat.errors import Status


def test_a_second_resume_of_one_token_closes_the_first_connection() -> None:
    world = World()
    alice = world.user("alice")
    (session,) = world.core.sessions.values()
    first, second = world.peer(), world.peer()
    taken = first.call(p.Resume(session=session.token))
    assert taken.ok
    assert taken.pushes == [(alice.routing_id, p.SessionClosed(
        reason="your session was resumed on another connection", by="alice",
        time=world.clock.ms))]
    again = second.call(p.Resume(session=session.token))
    assert again.ok
    assert again.pushes == [(first.routing_id, p.SessionClosed(
        reason="your session was resumed on another connection", by="alice",
        time=world.clock.ms))]
    # exactly one connection holds the session
    assert first.call(p.Ping()).reply == p.Pong(time=world.clock.ms, session="")
    assert second.must(p.Send(room="lobby", text="still me")).seq == 1
    assert first.call(p.Send(room="lobby", text="x")).status == Status.UNAUTHORIZED


def test_resume_on_the_same_connection_closes_nothing() -> None:
    world = World()
    alice = world.user("alice")
    (session,) = world.core.sessions.values()
    assert alice.must(p.Logout()) == p.Ok()
    restored = world.user("alice", register=False)
    token = world.core.sessions[restored.routing_id].token
    out = restored.call(p.Resume(session=token))
    assert out.status == Status.CONFLICT and out.pushes == []  # logged in already


def test_revoking_a_token_closes_its_sessions_with_session_closed() -> None:
    world = World()
    alice = world.user("alice")
    token = alice.must(p.CreateToken(label="bot"))
    bots = []
    for _ in range(2):
        bot = world.peer()
        assert bot.call(p.Login(name="alice", token=token.token)).ok
        bots.append(bot)
    out = alice.call(p.RevokeToken(id=token.id))
    assert out.ok
    closed = p.SessionClosed(reason="the account token this session logged in with was "
                             "revoked", by="alice", time=world.clock.ms)
    assert sorted(out.pushes) == sorted((bot.routing_id, closed) for bot in bots)
    for bot in bots:
        assert bot.call(p.Send(room="lobby", text="x")).status == Status.UNAUTHORIZED
    assert alice.must(p.Send(room="lobby", text="the password session goes on")).seq == 1


def moderated_room(world: World) -> dict[str, object]:
    """#dev: olga owns it, mo and mo2 moderate it, mem is a member; root is an admin
    inside it. Each posts one message: olga 1, mo 2, mo2 3, mem 4, root 5."""
    u = {name: world.user(name) for name in ("olga", "mo", "mo2", "mem", "root")}
    for name in u:
        u[name].must(p.Join(room="dev"))
    for name in ("mo", "mo2"):
        u["olga"].must(p.SetRole(room="dev", name=name, role="moderator"))
    for name in u:
        u[name].must(p.Send(room="dev", text=f"from {name}"))
    return u  # type: ignore[return-value]


def test_deleting_anothers_message_needs_a_rank_above_the_senders() -> None:
    world = World(admins=("root",), send_rate_per_s=0.0)
    u: dict = moderated_room(world)  # type: ignore[type-arg]
    for seq, name in ((1, "olga"), (3, "mo2"), (5, "root")):
        out = u["mo"].call(p.DeleteMessage(room="dev", seq=seq))
        assert out.status == Status.FORBIDDEN, name
        assert out.reply.reason.startswith(f"you cannot delete the messages of {name}: "
                                           "they are "), out.reply.reason
        assert out.events == [] and out.pushes == []
    assert u["mo"].call(p.DeleteMessage(room="dev", seq=4)).ok        # a member's
    assert u["mo"].call(p.DeleteMessage(room="dev", seq=2)).ok        # one's own
    assert u["olga"].call(p.DeleteMessage(room="dev", seq=3)).ok      # owner > moderator
    assert u["olga"].call(p.DeleteMessage(room="dev", seq=5)).status == Status.FORBIDDEN
    assert u["root"].call(p.DeleteMessage(room="dev", seq=1)).ok      # admin > owner
    assert [m.deleted_by for m in u["mem"].must(p.FetchHistory(room="dev")).messages] == \
        ["root", "mo", "olga", "mo", ""]
