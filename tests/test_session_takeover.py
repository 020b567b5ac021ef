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

from core_helpers import World

from zchat import wire as p
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


# -- RESUME has limits of its own (docs/PROTOCOL.md §6.27, §15.1) -------------------------------


def test_resumes_of_one_account_are_limited_and_the_refused_change_nothing() -> None:
    """Two connections taking one session from each other without end (a fresh tester's
    attack): after RESUME_BURST, one a second; a refused RESUME moves nothing."""
    from zchat.core import RESUME_BURST, RESUME_RATE_PER_S

    world = World(read_rate_bytes_per_s=0)
    world.user("alice")
    (session,) = world.core.sessions.values()
    peers = [world.peer(), world.peer()]
    for i in range(RESUME_BURST):
        assert peers[i % 2].call(p.Resume(session=session.token)).ok
    holder = peers[(RESUME_BURST - 1) % 2]
    refused = peers[RESUME_BURST % 2].call(p.Resume(session=session.token))
    assert refused.status == Status.TOO_MANY_REQUESTS, refused.reply
    assert refused.reply.reason.startswith("too many RESUMEs of this account: wait 1.0 s")
    assert refused.pushes == []
    assert holder.call(p.Ping()).reply.session == session.token  # still the holder's
    world.clock.jump(1 / RESUME_RATE_PER_S)
    assert peers[RESUME_BURST % 2].call(p.Resume(session=session.token)).ok


def test_a_resume_reply_is_charged_to_the_accounts_reading_budget() -> None:
    """A RESUME reply carries the pending DMs (up to max_stored_dms): it is charged to the
    account's reading budget, and a RESUME while that budget is spent gets 429."""
    world = World(read_rate_bytes_per_s=1024, read_burst_bytes=65_536)
    alice = world.user("alice")
    bob = world.user("bob")
    alice.must(p.Logout())  # offline: her DMs stay pending, in every LOGIN/RESUME reply
    for i in range(20):
        bob.must(p.SendDirect(to="alice", text=f"{i:04d}" + "x" * 3_996))
    world.user("alice", register=False)
    token = next(s.token for s in world.core.sessions.values() if s.name == "alice")
    budget = world.core.accounts["alice"].read_budget
    assert budget is not None and budget.tokens < 65_536 - 80_000  # the LOGIN's 80 KB
    world.clock.jump(100)  # 100 KiB back: in credit again
    assert world.peer().call(p.Resume(session=token)).ok
    refused = world.peer().call(p.Resume(session=token))
    assert refused.status == Status.TOO_MANY_REQUESTS
    assert refused.reply.reason.startswith("reading too fast")
