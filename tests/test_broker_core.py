"""BrokerCore driven directly: real codec, real SQLite store, a fake clock, no sockets.

The ``Peer`` and ``World`` helpers (tests/core_helpers.py) are h11's ConnectionPair idea:
a request goes through the real codec to ``BrokerCore.handle`` at the time the test chose,
any Offload (password hashing) runs inline and the core's answer is decoded, so each test
reads as a conversation between a client and the broker.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from core_helpers import PASSWORD, T0_MS, Outcome, Peer, World, decode_events

from zchat import wire as p
from zchat.core import ToPeer, ToTopic
from zchat.errors import Status, StorageError
from zchat.store import Store


@pytest.fixture
def world() -> World:
    return World()


def presence_of(out: Outcome) -> list[tuple[bytes, str, str]]:
    return [(t, e.name, e.presence) for t, e in out.events_of(p.PresenceChanged)]


# -- register -------------------------------------------------------------------------------


def test_register_ok_and_account_is_in_lobby(world: World) -> None:
    peer = world.peer()
    out = peer.register("Alice")
    assert out.reply == p.Registered(name="Alice")
    # registering is not logging in: no presence, but lobby's members learn of the newcomer
    assert out.events == [(b"room/lobby/", p.UserJoined(room="lobby", name="Alice",
                                                         time=world.clock.ms))]
    assert world.store.get_account("alice") is not None
    login = peer.login("alice")
    assert isinstance(login.reply, p.LoggedIn)
    assert login.reply.name == "Alice"
    assert login.reply.rooms == (p.RoomState(room="lobby", last_seq=0),)


@pytest.mark.parametrize("second", ["alice", "ALICE", "aLiCe", "a1ice", "ａｌｉｃｅ"])
def test_register_name_taken_or_look_alike_is_409(world: World, second: str) -> None:
    assert world.peer().register("Alice").ok
    before = world.counts()
    out = world.peer().register(second)
    assert out.status == Status.CONFLICT
    assert world.counts() == before


def test_register_taken_name_is_refused_before_hashing(world: World) -> None:
    assert world.peer().register("alice").ok
    for name in ("ALICE", "a1ice"):
        frames = p.encode_request(b"r", p.Register(name=name, password=PASSWORD))
        [action] = world.core.handle(b"\x00new", frames, world.clock.s, world.clock.ms)
        assert isinstance(action, ToPeer)  # an ERROR at once, no Offload of hashing work
        _, error = p.decode_from_broker(action.frames, {})
        assert error.status == Status.CONFLICT


def test_register_look_alike_either_way_round(world: World) -> None:
    assert world.peer().register("a1ice").ok
    assert world.peer().register("alice").status == Status.CONFLICT


@pytest.mark.parametrize("name", ["p\u0430ypal", "al ice", "a\u200blice", "", "x" * 33, "a/b"])
def test_register_invalid_name_is_422(world: World, name: str) -> None:
    before = world.counts()
    assert world.peer().register(name).status == Status.INVALID
    assert world.counts() == before


def test_register_empty_password_is_422(world: World) -> None:
    out = world.peer().register("alice", password="")
    assert out.status == Status.INVALID
    assert world.store.get_account("alice") is None


def test_register_overlong_password_is_413(world: World) -> None:
    out = world.peer().register("alice", password="x" * (p.MAX_PASSWORD_CHARS + 1))
    assert out.status == Status.TOO_LARGE
    assert world.store.get_account("alice") is None


# -- login ----------------------------------------------------------------------------------


def test_login_unknown_account_is_404(world: World) -> None:
    assert world.peer().login("nobody").status == Status.NOT_FOUND


def test_login_wrong_password_is_401_and_no_session(world: World) -> None:
    peer = world.peer()
    assert peer.register("alice").ok
    out = peer.login("alice", password="wrong")
    assert out.status == Status.UNAUTHORIZED
    assert out.events == []
    assert world.core.sessions == {}
    # still not logged in
    assert peer.call(p.ListRooms()).status == Status.UNAUTHORIZED


def test_login_ok_returns_rooms_with_last_seq_and_token(world: World) -> None:
    alice = world.user("alice")
    alice.must(p.Join(room="dev"))
    for text in ("one", "two"):
        alice.must(p.Send(room="dev", text=text))
    second = world.peer()
    out = second.login("ALICE")  # login is case-insensitive
    reply = out.reply
    assert isinstance(reply, p.LoggedIn)
    assert reply.name == "alice"
    assert {(r.room, r.last_seq) for r in reply.rooms} == {("lobby", 0), ("dev", 2)}
    assert len(reply.session) >= 16
    first_token = world.core.sessions[alice.routing_id].token
    assert reply.session != first_token


def test_second_login_on_same_routing_id_is_409(world: World) -> None:
    alice = world.user("alice")
    assert world.peer().register("bob").ok
    out = alice.login("bob")
    assert out.status == Status.CONFLICT
    assert world.core.sessions[alice.routing_id].name == "alice"
    assert world.core.accounts["bob"].sessions == set()


@pytest.mark.parametrize("request_", [
    p.Logout(), p.Join(room="dev"), p.Part(room="lobby"), p.ListRooms(),
    p.Send(room="lobby", text="hi"), p.SendDirect(to="alice", text="hi"),
    p.FetchHistory(room="lobby"), p.Who(), p.SetPresence(presence="away"),
    p.ListSessions(), p.SetTopic(room="lobby", topic="hi"), p.AckDirect(ids=(1,)),
    p.CreateToken(label="ci"), p.ListTokens(), p.RevokeToken(id=1),
    p.SetSlowMode(room="lobby", seconds=5), p.Kick(room="lobby", name="alice"),
    p.Ban(name="alice"), p.Unban(name="alice"), p.Mute(name="alice"), p.Unmute(name="alice"),
    p.Invite(room="lobby", name="alice"), p.SetRole(room="lobby", name="alice", role="member"),
    p.SetRoom(room="lobby", locked=True), p.DeleteMessage(room="lobby", seq=1), p.ListBans(),
    p.ReadAudit(), p.ListUsers(),
    p.CreateAccounts(accounts=(p.NewAccount(name="zed", password="pw"),)),
    p.AdminSetPassword(name="alice", password="pw"), p.SetDisabled(name="alice"),
    p.SetPassword(old="correct horse battery staple", new="pw"),
    p.FetchDmHistory(peer="alice"), p.MarkRead(upto=0, room="lobby"), p.Whois(name="alice"),
    p.FetchRoom(room="lobby"), p.DeleteRoom(room="lobby"),
    p.SetQuota(name="alice", quota_bytes=0),
], ids=lambda r: r.TYPE)
def test_requests_before_login_are_401(world: World, request_: p.Request) -> None:
    assert world.peer().register("alice").ok
    before = world.counts()
    out = world.peer().call(request_)
    assert out.status == Status.UNAUTHORIZED
    assert out.events == [] and out.pushes == []
    assert world.counts() == before


def test_every_session_needing_type_is_covered() -> None:
    needing = {t for t, cls in p.REQUEST_TYPES.items() if cls.NEEDS_SESSION}
    assert needing == {"LOGOUT", "JOIN", "PART", "ROOMS", "SEND", "DM", "HISTORY", "WHO",
                       "SET_PRESENCE", "SESSIONS", "SET_TOPIC", "DM_ACK", "TOKEN_CREATE",
                       "TOKEN_LIST", "TOKEN_REVOKE", "SET_SLOW_MODE", "KICK", "BAN",
                       "UNBAN", "MUTE", "UNMUTE", "INVITE", "SET_ROLE", "SET_ROOM",
                       "DELETE_MESSAGE", "BANS", "AUDIT", "USERS", "CREATE_ACCOUNTS",
                       "ADMIN_SET_PASSWORD", "ADMIN_DISABLE", "SET_PASSWORD",
                       "DM_HISTORY", "MARK_READ", "WHOIS", "ROOM_INFO", "DELETE_ROOM",
                       "ADMIN_SET_QUOTA"}


def test_info_and_ping_allowed_before_login(world: World) -> None:
    peer = world.peer()
    info = peer.must(p.Info())
    assert info == p.InfoReply(version=1, pub="tcp://127.0.0.1:5556", time=T0_MS,
                               heartbeat_interval_ms=2000, heartbeat_timeout_ms=6000,
                               max_text_bytes=4000, max_text_lines=50,
                               min_password_chars=8)
    assert peer.must(p.Ping()) == p.Pong(time=T0_MS, rooms=(), session="")


# -- presence -------------------------------------------------------------------------------


def test_presence_online_once_offline_once_across_two_sessions(world: World) -> None:
    a1 = world.peer()
    assert a1.register("Alice").ok
    first = a1.login("alice")
    assert presence_of(first) == [(b"presence/alice/", "Alice", "online")]
    a2 = world.peer()
    second = a2.login("alice")
    assert second.ok and second.events == []
    out = a1.call(p.Logout())
    assert out.reply == p.Ok() and out.events == []
    last = a2.call(p.Logout())
    assert last.reply == p.Ok()
    assert presence_of(last) == [(b"presence/alice/", "Alice", "offline")]
    assert world.core.accounts["alice"].presence == "offline"


def test_set_presence_away_and_back_and_who(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    out = alice.call(p.SetPresence(presence="away", text="lunch"))
    assert out.reply == p.Ok()
    [(topic, event)] = out.events
    assert topic == b"presence/alice/"
    assert event == p.PresenceChanged(name="alice", presence="away", time=T0_MS, text="lunch")
    who = bob.must(p.Who())
    assert who.users == (p.UserPresence(name="alice", presence="away", text="lunch"),
                         p.UserPresence(name="bob", presence="online"))
    again = alice.call(p.SetPresence(presence="away", text="lunch"))
    assert again.ok and again.events == []  # no change, no event
    back = alice.call(p.SetPresence(presence="online", text="ignored"))
    assert [(t, e.presence, e.text) for t, e in back.events] == [
        (b"presence/alice/", "online", "")]
    assert bob.must(p.Who(room="lobby")).users[0] == p.UserPresence(name="alice",
                                                                      presence="online",
                                                                      role="member")


def test_who_omits_offline_accounts_and_room_who_includes_them(world: World) -> None:
    assert world.peer().register("carol").ok
    alice = world.user("alice")
    assert [u.name for u in alice.must(p.Who()).users] == ["alice"]
    room = alice.must(p.Who(room="lobby")).users
    assert [(u.name, u.presence) for u in room] == [("alice", "online"), ("carol", "offline")]


def test_whois_finds_one_account_offline_too_and_404_for_nobody(world: World) -> None:
    """WHOIS (§6.50): what the console asks before opening a conversation (issue 13)."""
    anonymous = world.peer()
    assert anonymous.register("Carol").ok
    assert anonymous.call(p.Whois(name="carol")).status == Status.UNAUTHORIZED
    alice = world.user("alice")
    alice.must(p.SetPresence(presence="away", text="lunch"))
    assert alice.must(p.Whois(name="CAROL")) == p.UserFound(name="Carol",
                                                             presence="offline")
    assert alice.must(p.Whois(name="alice")) == p.UserFound(name="alice", presence="away",
                                                             text="lunch")
    for nobody in ("nobody", "", "no such name!"):
        assert alice.call(p.Whois(name=nobody)).status == Status.NOT_FOUND


def test_presence_topic_terminator(world: World) -> None:
    al = world.peer()
    assert al.register("al").ok
    [(t_al, e_al)] = al.login("al").events
    alice = world.peer()
    assert alice.register("alice").ok
    [(t_alice, e_alice)] = alice.login("alice").events
    assert (t_al, e_al.name) == (b"presence/al/", "al")
    assert (t_alice, e_alice.name) == (b"presence/alice/", "alice")
    assert not t_alice.startswith(t_al) and not t_al.startswith(t_alice)


# -- rooms ----------------------------------------------------------------------------------


def test_join_creates_room_and_notices(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    out = alice.call(p.Join(room="Dev"))
    assert out.reply == p.RoomJoined(room="Dev", last_seq=0, created=True)
    assert out.events == [(b"room/dev/", p.UserJoined(room="Dev", name="alice", time=T0_MS))]
    out = bob.call(p.Join(room="dev"))
    assert out.reply == p.RoomJoined(room="Dev", last_seq=0, created=False)
    assert out.events == [(b"room/dev/", p.UserJoined(room="Dev", name="bob", time=T0_MS))]
    # the same account again (another session): no notice, not created
    again = world.user("alice", register=False).call(p.Join(room="DEV"))
    assert again.reply == p.RoomJoined(room="Dev", last_seq=0, created=False)
    assert again.events == []
    left = bob.call(p.Part(room="dev"))
    assert left.reply == p.Ok()
    assert left.events == [(b"room/dev/", p.UserLeft(room="Dev", name="bob", time=T0_MS))]
    assert bob.call(p.Part(room="dev")).status == Status.FORBIDDEN
    assert bob.call(p.Part(room="nowhere")).status == Status.NOT_FOUND


def test_join_look_alike_room_is_409(world: World) -> None:
    alice = world.user("alice")
    alice.must(p.Join(room="dev1"))
    out = alice.call(p.Join(room="devl"))
    assert out.status == Status.CONFLICT
    assert "devl" not in world.core.rooms


def test_room_topic_terminator(world: World) -> None:
    alice = world.user("alice")
    [(t_dev, _)] = alice.call(p.Join(room="dev")).events
    [(t_devops, _)] = alice.call(p.Join(room="devops")).events
    assert (t_dev, t_devops) == (b"room/dev/", b"room/devops/")
    assert not t_devops.startswith(t_dev) and not t_dev.startswith(t_devops)
    [(t_send, _)] = alice.call(p.Send(room="devops", text="x")).events
    assert t_send == b"room/devops/"


def test_rooms_lists_lobby_and_joined_flag_and_counts(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    alice.must(p.Join(room="dev"))
    alice.must(p.Send(room="dev", text="hello"))
    rooms = bob.must(p.ListRooms()).rooms
    assert rooms == (p.RoomInfo(room="dev", members=1, last_seq=1, joined=False),
                     p.RoomInfo(room="lobby", members=2, last_seq=0, joined=True))
    rooms = alice.must(p.ListRooms()).rooms
    assert [(r.room, r.joined) for r in rooms] == [("dev", True), ("lobby", True)]


# -- send -----------------------------------------------------------------------------------


def test_send_seq_per_room_and_time_from_clock(world: World) -> None:
    alice = world.user("alice")
    alice.must(p.Join(room="dev"))
    alice.must(p.Join(room="ops"))
    got = []
    for room in ("dev", "dev", "ops", "dev", "ops"):
        world.clock.jump(0.25)
        out = alice.call(p.Send(room=room, text=f"to {room}"))
        assert out.reply == p.Sent(room=room, seq=out.reply.seq, time=world.clock.ms)
        [(topic, event)] = out.events
        assert topic == p.room_topic(room)
        assert event == p.MessagePosted(room=room, seq=out.reply.seq, time=world.clock.ms,
                                        sender="alice", text=f"to {room}")
        got.append((room, out.reply.seq))
    assert got == [("dev", 1), ("dev", 2), ("ops", 1), ("dev", 3), ("ops", 2)]


def test_send_action_kind(world: World) -> None:
    alice = world.user("alice")
    out = alice.call(p.Send(room="lobby", text="waves", kind="action"))
    [(_, event)] = out.events
    assert event.kind == "action"
    [row] = world.store.history("lobby", None, None, 10)
    assert row.kind == "action"


def test_message_is_stored_before_actions_are_returned(world: World) -> None:
    alice = world.user("alice")
    frames = p.encode_request(b"req", p.Send(room="lobby", text="durable"))
    actions = world.core.handle(alice.routing_id, frames, world.clock.s, world.clock.ms)
    # nothing carried out yet, and yet the message is committed
    [row] = world.store.history("lobby", None, None, 10)
    assert (row.seq, row.text, row.sender, row.time_ms) == (1, "durable", "alice", T0_MS)
    assert world.store.get_room("lobby").last_seq == 1
    assert len(actions) == 2


def test_send_refusals(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    alice.must(p.Join(room="dev"))
    before = world.counts()
    assert bob.call(p.Send(room="dev", text="hi")).status == Status.FORBIDDEN
    assert bob.call(p.Send(room="nowhere", text="hi")).status == Status.NOT_FOUND
    for text in ("", "   ", "\n\t "):
        assert alice.call(p.Send(room="dev", text=text)).status == Status.INVALID
    assert alice.call(p.Send(room="dev", text="bell\x07")).status == Status.INVALID
    assert alice.call(p.Send(room="dev", text="del\x7f")).status == Status.INVALID
    long_cmid = "c" * (p.MAX_CMID_CHARS + 1)
    assert alice.call(p.Send(room="dev", text="x", cmid=long_cmid)).status == Status.BAD_REQUEST
    assert world.counts() == before
    assert world.core.last_seq["dev"] == 0
    ok = alice.call(p.Send(room="dev", text="x", cmid="c" * p.MAX_CMID_CHARS))
    assert ok.reply.seq == 1


def test_send_tab_and_newline_allowed(world: World) -> None:
    alice = world.user("alice")
    out = alice.call(p.Send(room="lobby", text="col1\tcol2\nline 2"))
    assert out.ok
    assert world.store.history("lobby", None, None, 1)[0].text == "col1\tcol2\nline 2"


def test_send_size_limit_counts_utf8_bytes_and_never_truncates() -> None:
    world = World(max_text_bytes=10)
    alice = world.user("alice")
    exact = "é" * 5  # 10 bytes
    out = alice.call(p.Send(room="lobby", text=exact))
    assert out.ok
    assert out.events[0][1].text == exact
    too_long = "é" * 5 + "a"  # 11 bytes, 6 characters
    refused = alice.call(p.Send(room="lobby", text=too_long))
    assert refused.status == Status.TOO_LARGE
    rows = world.store.history("lobby", None, None, 10)
    assert [r.text for r in rows] == [exact]


def test_send_and_dm_line_limit_refuses_a_wall_of_line_breaks_whole() -> None:
    """Issue 13: one message of 1,999 line breaks (under the byte limit) filled every
    member's pane. Over ``max_text_lines`` a SEND or DM is refused with 413, as an
    over-long text is; U+2028/U+2029 count, since the console draws them as breaks."""
    world = World(max_text_lines=3)
    alice = world.user("alice")
    world.user("bob")
    assert alice.call(p.Send(room="lobby", text="a\nb\nc")).ok
    for text in ("\n" * 1999 + "x", "a\nb\nc\n", "a\u2028b\u2029c\nd"):
        for req in (p.Send(room="lobby", text=text), p.SendDirect(to="bob", text=text)):
            refused = alice.call(req)
            assert refused.status == Status.TOO_LARGE, (req, refused.reply)
            assert isinstance(refused.reply, p.Error)
            assert refused.reply.reason.endswith("lines; the limit is 3")
            assert not refused.events and not refused.pushes
    assert [r.text for r in world.store.history("lobby", None, None, 10)] == ["a\nb\nc"]


# -- history --------------------------------------------------------------------------------


@pytest.fixture
def room_with_10(world: World) -> Peer:
    alice = world.user("alice")
    alice.must(p.Join(room="dev"))
    for i in range(1, 11):
        alice.must(p.Send(room="dev", text=f"m{i}"))
    return alice


def seqs(page: p.HistoryPage) -> list[int]:
    return [m.seq for m in page.messages]


def test_history_bounds(world: World, room_with_10: Peer) -> None:
    alice = room_with_10
    assert seqs(alice.must(p.FetchHistory(room="dev"))) == list(range(1, 11))
    assert seqs(alice.must(p.FetchHistory(room="dev", limit=3))) == [8, 9, 10]
    assert seqs(alice.must(p.FetchHistory(room="dev", before=5, limit=3))) == [2, 3, 4]
    assert seqs(alice.must(p.FetchHistory(room="dev", before=3))) == [1, 2]
    assert seqs(alice.must(p.FetchHistory(room="dev", after=5, limit=3))) == [6, 7, 8]
    assert seqs(alice.must(p.FetchHistory(room="dev", after=8))) == [9, 10]
    assert seqs(alice.must(p.FetchHistory(room="dev", after=10))) == []
    assert seqs(alice.must(p.FetchHistory(room="dev", before=1))) == []
    assert seqs(alice.must(p.FetchHistory(room="dev", after=0, limit=1))) == [1]
    page = alice.must(p.FetchHistory(room="DEV", after=1, limit=1))
    assert page.room == "dev"
    assert page.messages == (p.MessagePosted(room="dev", seq=2, time=T0_MS, sender="alice",
                                             text="m2"),)


@pytest.mark.parametrize("kwargs", [
    {"before": 5, "after": 2}, {"limit": 0}, {"limit": p.MAX_HISTORY_LIMIT + 1},
    {"limit": -1}, {"before": -1}, {"after": -1},
])
def test_history_bad_bounds_are_400(world: World, room_with_10: Peer,
                                    kwargs: dict[str, int]) -> None:
    assert room_with_10.call(p.FetchHistory(room="dev", **kwargs)).status == Status.BAD_REQUEST


def test_history_limit_500_is_allowed_and_unknown_room_404(world: World,
                                                          room_with_10: Peer) -> None:
    page = room_with_10.must(p.FetchHistory(room="dev", limit=p.MAX_HISTORY_LIMIT))
    assert len(page.messages) == 10
    assert room_with_10.call(p.FetchHistory(room="nowhere")).status == Status.NOT_FOUND


# -- direct messages ------------------------------------------------------------------------


def test_dm_to_unknown_is_404(world: World) -> None:
    alice = world.user("alice")
    assert alice.call(p.SendDirect(to="nobody", text="hi")).status == Status.NOT_FOUND
    assert alice.call(p.SendDirect(to="bad name", text="hi")).status == Status.NOT_FOUND
    assert world.counts()[4] == 0


def test_dm_live_goes_to_every_session_but_the_sending_one(world: World) -> None:
    a1 = world.user("alice")
    a2 = world.user("alice", register=False)
    b1 = world.user("bob")
    b2 = world.user("bob", register=False)
    world.clock.jump(1)
    out = a1.call(p.SendDirect(to="BOB", text="psst"))
    assert isinstance(out.reply, p.DmSent)
    assert out.reply.delivered == "live" and out.reply.time == world.clock.ms
    dm = p.DirectMessage(id=out.reply.id, time=world.clock.ms, sender="alice", to="bob",
                         text="psst")
    assert sorted(out.pushes) == sorted([(b2.routing_id, dm), (b1.routing_id, dm),
                                         (a2.routing_id, dm)])
    assert a1.routing_id not in [rid for rid, _ in out.pushes]
    assert out.events == []
    assert not any(isinstance(a, ToTopic) for a in out.actions)
    # pushed live, but kept until a session of bob's acknowledges it (the push may have
    # gone to a session that died): offered again at the next login, then acknowledged
    assert [d.id for d in world.peer().login("bob").reply.pending] == [dm.id]
    b2.must(p.AckDirect(ids=(dm.id,)))
    assert world.peer().login("bob").reply.pending == ()


def test_dm_ack_only_by_the_recipient_and_bounded(world: World) -> None:
    alice = world.user("alice")
    bob = world.user("bob")
    dm_id = alice.call(p.SendDirect(to="bob", text="hi")).reply.id
    alice.must(p.AckDirect(ids=(dm_id,)))          # the sender cannot acknowledge it
    assert [d.id for d in world.peer().login("bob").reply.pending] == [dm_id]
    assert bob.call(p.AckDirect(ids=())).status == Status.BAD_REQUEST
    too_many = tuple(range(1, p.MAX_ACK_IDS + 2))
    assert bob.call(p.AckDirect(ids=too_many)).status == Status.BAD_REQUEST
    bob.must(p.AckDirect(ids=(dm_id, 999_999)))    # unknown ids are ignored
    assert world.peer().login("bob").reply.pending == ()


def test_dm_stored_when_offline_then_pending_exactly_once(world: World) -> None:
    assert world.peer().register("bob").ok
    alice = world.user("alice")
    first = alice.call(p.SendDirect(to="bob", text="one"))
    world.clock.jump(1)
    second = alice.call(p.SendDirect(to="bob", text="two"))
    assert (first.reply.delivered, second.reply.delivered) == ("stored", "stored")
    assert first.pushes == [] and first.events == []
    bob = world.peer()
    login = bob.login("bob")
    assert [(d.id, d.text, d.sender, d.to, d.time) for d in login.reply.pending] == [
        (first.reply.id, "one", "alice", "bob", T0_MS),
        (second.reply.id, "two", "alice", "bob", T0_MS + 1000)]
    assert login.events_of(p.PresenceChanged)  # bob came online
    assert not [e for _, e in login.events if not isinstance(e, p.PresenceChanged)]
    # not acknowledged yet: a crash now would lose nothing, the next login offers them
    assert len(world.peer().login("bob").reply.pending) == 2
    bob.must(p.AckDirect(ids=(first.reply.id, second.reply.id)))
    assert world.peer().login("bob").reply.pending == ()
    bob.must(p.Logout())
    assert world.peer().login("bob").reply.pending == ()


def test_dm_store_bound_drops_oldest() -> None:
    world = World(max_stored_dms=3)
    assert world.peer().register("bob").ok
    alice = world.user("alice")
    for i in range(5):
        assert alice.call(p.SendDirect(to="bob", text=f"dm{i}")).reply.delivered == "stored"
    pending = world.peer().login("bob").reply.pending
    assert [d.text for d in pending] == ["dm2", "dm3", "dm4"]


def test_dm_text_rules(world: World) -> None:
    assert world.peer().register("bob").ok
    alice = world.user("alice")
    assert alice.call(p.SendDirect(to="bob", text=" ")).status == Status.INVALID
    assert alice.call(p.SendDirect(to="bob", text="x" * 4001)).status == Status.TOO_LARGE
    assert world.counts()[4] == 0


# -- heartbeats and ticks -------------------------------------------------------------------


def test_silent_session_is_evicted_with_one_offline(world: World) -> None:
    alice = world.user("alice")
    world.tick()  # first TICK
    world.clock.jump(6.0)  # exactly the timeout: not yet
    assert [e for _, e in world.tick() if isinstance(e, p.PresenceChanged)] == []
    assert alice.routing_id in world.core.sessions
    world.clock.jump(0.5)
    events = world.tick()
    offline = [(t, e.presence) for t, e in events if isinstance(e, p.PresenceChanged)]
    assert offline == [(b"presence/alice/", "offline")]
    assert world.core.sessions == {}
    assert alice.call(p.ListRooms()).status == Status.UNAUTHORIZED
    assert [e for _, e in world.tick() if isinstance(e, p.PresenceChanged)] == []


def test_ping_within_timeout_keeps_session(world: World) -> None:
    alice = world.user("alice")
    for _ in range(5):
        world.clock.jump(5.0)
        alice.must(p.Ping())
        assert not [e for _, e in world.tick() if isinstance(e, p.PresenceChanged)]
    assert alice.routing_id in world.core.sessions
    assert world.core.accounts["alice"].presence == "online"


def test_any_request_counts_as_heartbeat(world: World) -> None:
    alice = world.user("alice")
    world.clock.jump(5.0)
    alice.must(p.ListRooms())
    world.clock.jump(5.0)
    world.tick()
    assert alice.routing_id in world.core.sessions


def test_evicting_one_of_two_sessions_publishes_nothing(world: World) -> None:
    a1 = world.user("alice")
    world.clock.jump(4.0)
    a2 = world.user("alice", register=False)
    world.clock.jump(3.0)  # a1 silent 7 s, a2 silent 3 s
    events = world.tick()
    assert [e for _, e in events if isinstance(e, p.PresenceChanged)] == []
    assert set(world.core.sessions) == {a2.routing_id}
    assert a1.call(p.ListRooms()).status == Status.UNAUTHORIZED
    world.clock.jump(6.5)
    events = world.tick()
    assert [e.presence for _, e in events if isinstance(e, p.PresenceChanged)] == ["offline"]


def test_tick_scans_for_silent_sessions_only_when_one_may_be_due(world: World) -> None:
    """The loop calls tick at every wake-up; with thousands of sessions a scan each time
    made logins quadratic. The earliest possible timeout is kept instead, and eviction is
    still exact."""
    timeout = world.core.config.heartbeat_timeout_s
    alice = world.user("alice")
    start = world.clock.s
    assert world.core._evict_at == start + timeout
    world.clock.jump(2)
    alice.call(p.Ping())  # alice is seen at start + 2
    world.clock.jump(timeout - 1.5)  # past the first bound: a scan, nothing due yet
    world.tick()
    assert [s.name for s in world.core.sessions.values()] == ["alice"]
    assert world.core._evict_at == start + 2 + timeout
    world.clock.jump(2)  # now silent for timeout + 0.5 s
    world.tick()
    assert world.core.sessions == {}
    assert world.core._evict_at == float("inf")


def test_tick_at_most_once_per_interval(world: World) -> None:
    def ticks() -> list[tuple[bytes, p.Message]]:
        return [(t, e) for t, e in world.tick() if isinstance(e, p.Tick)]

    assert ticks() == [(b"tick/", p.Tick(time=T0_MS))]
    assert world.core.next_deadline() == world.clock.s + 2.0
    assert ticks() == []
    world.clock.jump(1.9)
    assert ticks() == []
    world.clock.jump(0.1)
    assert ticks() == [(b"tick/", p.Tick(time=T0_MS + 2000))]
    assert ticks() == []
    world.clock.jump(10.0)  # a late call publishes one TICK, not five
    assert len(ticks()) == 1
    assert ticks() == []


def test_pong_lists_rooms_with_last_seq(world: World) -> None:
    alice = world.peer()
    assert alice.register("alice").ok
    token = alice.must(p.Login(name="alice", password=PASSWORD)).session
    alice.must(p.Join(room="dev"))
    alice.must(p.Send(room="dev", text="a"))
    alice.must(p.Send(room="dev", text="b"))
    world.clock.jump(1)
    pong = alice.must(p.Ping())
    assert pong == p.Pong(time=world.clock.ms, rooms=(p.RoomState(room="dev", last_seq=2),
                                                      p.RoomState(room="lobby", last_seq=0)),
                          session=token)
    alice.must(p.Part(room="dev"))
    assert alice.must(p.Ping()).rooms == (p.RoomState(room="lobby", last_seq=0),)


# -- admin ----------------------------------------------------------------------------------


def test_sessions_admin_only() -> None:
    world = World(admins=("Root",))
    root = world.peer()
    root.address = "tcp://192.0.2.7:5000"
    login_ms = world.clock.ms
    assert root.login("root").ok  # the account "Root", made by the operator (World)
    world.clock.jump(3)
    alice = world.user("alice")
    assert alice.call(p.ListSessions()).status == Status.FORBIDDEN
    world.clock.jump(1)
    rows = root.must(p.ListSessions()).sessions
    assert rows == (
        p.SessionInfo(name="Root", address="tcp://192.0.2.7:5000", login_time=login_ms,
                      last_seen=T0_MS + 4000),
        p.SessionInfo(name="alice", address="tcp://10.0.0.1:40000", login_time=T0_MS + 3000,
                      last_seen=T0_MS + 3000),
    )


# -- malformed requests ---------------------------------------------------------------------


def good_frames(request_id: bytes = b"rid") -> list[bytes]:
    return p.encode_request(request_id, p.Send(room="lobby", text="hi"))


@pytest.mark.parametrize(("frames", "status", "echo"), [
    (good_frames()[:3], Status.BAD_REQUEST, b"rid"),
    ([*good_frames(), b"extra"], Status.BAD_REQUEST, b"rid"),
    ([b"ZC2", b"rid", b"SEND", b"{}"], Status.VERSION_NOT_SUPPORTED, b"rid"),
    ([p.VERSION, b"rid", b"SHOUT", b"{}"], Status.UNKNOWN_COMMAND, b"rid"),
    ([p.VERSION, b"rid", b"SEND", b"{not json"], Status.BAD_REQUEST, b"rid"),
    ([p.VERSION, b"rid", b"SEND", b"[1, 2]"], Status.BAD_REQUEST, b"rid"),
    ([p.VERSION, b"rid", b"SEND", b"\xff\xfe"], Status.BAD_REQUEST, b"rid"),
    ([p.VERSION, b"rid", b"SEND", b"{" + b" " * p.MAX_BODY_BYTES + b"}"],
     Status.TOO_LARGE, b"rid"),
    ([p.VERSION, b"rid", b"SEND", json.dumps({"room": "lobby"}).encode()],
     Status.BAD_REQUEST, b"rid"),
    ([p.VERSION, b"rid", b"SEND", json.dumps({"room": "lobby", "text": 5}).encode()],
     Status.BAD_REQUEST, b"rid"),
    ([p.VERSION, b"rid", b"SEND",
      json.dumps({"room": "lobby", "text": "hi", "colour": "red"}).encode()],
     Status.BAD_REQUEST, b"rid"),
    ([p.VERSION, b"", b"SEND", b"{}"], Status.BAD_REQUEST, b"?"),
    ([p.VERSION, b"r" * 40, b"SEND", b"{}"], Status.BAD_REQUEST, b"r" * 32),
    ([], Status.BAD_REQUEST, b"?"),
    # an unknown field named by a lone surrogate: the reason quotes it, and UTF-8 cannot
    # carry it (the broker answered nothing and logged a traceback per request)
    ([p.VERSION, b"rid", b"SEND", b'{"room": "lobby", "text": "hi", "\\ud800": 1}'],
     Status.BAD_REQUEST, b"rid"),
], ids=["3-frames", "5-frames", "version", "type", "json", "not-object", "not-utf8",
        "oversized", "missing-field", "wrong-type", "unknown-field", "empty-rid",
        "long-rid", "no-frames", "surrogate-field-name"])
def test_malformed_frames_give_error_and_change_nothing(world: World, frames: list[bytes],
                                                       status: Status, echo: bytes) -> None:
    alice = world.user("alice")
    before = world.counts()
    out = alice.frames(frames, request_id=echo)
    assert out.status == status
    assert out.events == [] and out.pushes == []
    assert world.counts() == before
    assert world.core.last_seq["lobby"] == 0
    assert alice.call(p.Send(room="lobby", text="still fine")).reply.seq == 1


def test_internal_error_is_500_and_core_keeps_serving(world: World,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    alice = world.user("alice")

    def broken(*args: Any, **kwargs: Any) -> int:
        raise RuntimeError("bug")

    with monkeypatch.context() as m:
        m.setattr(world.store, "append_message", broken)
        out = alice.call(p.Send(room="lobby", text="hi"))
        assert out.status == Status.INTERNAL
        assert out.events == []
    assert world.core.last_seq["lobby"] == 0
    assert alice.call(p.Send(room="lobby", text="hi")).reply.seq == 1
    assert alice.must(p.Ping()).rooms == (p.RoomState(room="lobby", last_seq=1),)


def test_storage_error_is_503_and_nothing_changes(world: World,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    alice = world.user("alice")
    alice.must(p.Send(room="lobby", text="first"))
    before = world.counts()
    pages = world.store._db.execute("PRAGMA page_count").fetchone()[0]
    world.store._db.execute(f"PRAGMA max_page_count = {pages}")  # the disk is full
    out = alice.call(p.Send(room="lobby", text="x" * 3000))
    assert out.status == Status.UNAVAILABLE
    assert out.events == []
    assert world.counts() == before
    assert world.store.get_room("lobby").last_seq == 1
    assert world.core.last_seq["lobby"] == 1
    world.store._db.execute("PRAGMA max_page_count = 1073741823")
    assert alice.call(p.Send(room="lobby", text="again")).reply.seq == 2


def test_storage_error_while_registering_is_503(world: World,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: Any, **kwargs: Any) -> None:
        raise StorageError("disk full")

    monkeypatch.setattr(world.store, "create_account", full)
    out = world.peer().register("alice")
    assert out.status == Status.UNAVAILABLE
    assert "alice" not in world.core.accounts
    monkeypatch.undo()
    assert world.peer().register("alice").ok


def fail_writes_to(store: Store, table: str, verb: str = "INSERT") -> None:
    """Fault injection: every ``verb`` on ``table`` fails inside SQLite like an I/O error
    (the store sees sqlite3.OperationalError). Undo with ``DROP TRIGGER fail_<table>``."""
    def boom() -> None:
        raise OSError("injected I/O error")

    store._db.create_function("boom", 0, boom)
    store._db.execute(f"CREATE TEMP TRIGGER fail_{table} BEFORE {verb} ON {table} "
                      "BEGIN SELECT boom(); END")


def test_register_is_all_or_nothing(world: World) -> None:
    """An account and its lobby membership are one commit: a 503 leaves no account behind,
    so the retry is not refused as a taken name."""
    fail_writes_to(world.store, "members")
    before = world.counts()
    out = world.peer().register("alice")
    assert out.status == Status.UNAVAILABLE
    assert world.counts() == before
    assert world.store.get_account("alice") is None
    assert "alice" not in world.core.accounts
    world.store._db.execute("DROP TRIGGER fail_members")
    assert world.peer().register("alice").ok
    assert world.peer().login("alice").reply.rooms == (p.RoomState(room="lobby", last_seq=0),)


def test_login_storage_error_leaves_no_session(world: World) -> None:
    """When LOGIN cannot read the store the answer is 503 and the connection is not half
    logged in: no session, no presence, the DMs still pending."""
    assert world.peer().register("bob").ok
    world.user("alice").must(p.SendDirect(to="bob", text="while you were out"))
    world.store._db.execute("ALTER TABLE direct_messages RENAME TO dms_away")
    bob = world.peer()
    out = bob.login("bob")
    assert out.status in (Status.UNAVAILABLE, Status.INTERNAL)
    assert out.events == []
    assert bob.routing_id not in world.core.sessions
    assert world.core.accounts["bob"].presence == "offline"
    world.store._db.execute("ALTER TABLE dms_away RENAME TO direct_messages")
    again = bob.login("bob")
    assert [d.text for d in again.reply.pending] == ["while you were out"]
    assert presence_of(again) == [(b"presence/bob/", "bob", "online")]


def test_shutdown_publishes_one_offline_per_account(world: World) -> None:
    world.user("alice")
    world.user("alice", register=False)
    world.user("bob")
    actions = world.core.shutdown(world.clock.ms)
    assert sorted((t, e.presence) for t, e in decode_events(actions)
                  if isinstance(e, p.PresenceChanged)) == [
        (b"presence/alice/", "offline"), (b"presence/bob/", "offline")]
    assert world.core.sessions == {}


def test_largest_text_fits_the_body_even_when_escaped() -> None:
    """JSON doubles quotes and backslashes; at the largest allowed max_text_bytes such a
    text must still fit MAX_BODY_BYTES (docs/PROTOCOL.md §9)."""
    from zchat.config import MAX_TEXT_BYTES_LIMIT, MAX_TEXT_LINES_LIMIT

    world = World(max_text_bytes=MAX_TEXT_BYTES_LIMIT, max_text_lines=MAX_TEXT_LINES_LIMIT)
    alice = world.user("alice")
    for ch in ('"', "\\", "\n"):
        text = "x" + ch * (MAX_TEXT_BYTES_LIMIT - 1)
        cmid = (f"{ord(ch):02x}" * p.MAX_CMID_CHARS)[:p.MAX_CMID_CHARS]  # one per message
        out = alice.call(p.Send(room="lobby", text=text, cmid=cmid))
        assert out.ok, out.reply
        assert out.events[0][1].text == text


# -- restart --------------------------------------------------------------------------------


def test_restart_keeps_accounts_rooms_memberships_and_seqs(tmp_path: Path) -> None:
    path = tmp_path / "zchat.db"
    world = World(Store(path))
    alice = world.user("alice")
    world.user("bob")
    alice.must(p.Join(room="dev"))
    for i in range(3):
        alice.must(p.Send(room="dev", text=f"m{i}"))
    world.store.close()

    again = World(Store(path))
    assert again.core.sessions == {}
    assert {k: a.presence for k, a in again.core.accounts.items()} == {
        "alice": "offline", "bob": "offline"}
    assert again.core.members["dev"] == {"alice"}
    assert again.core.members["lobby"] == {"alice", "bob"}
    alice2 = again.peer()
    login = alice2.login("alice")
    assert {(r.room, r.last_seq) for r in login.reply.rooms} == {("lobby", 0), ("dev", 3)}
    assert presence_of(login) == [(b"presence/alice/", "alice", "online")]
    assert alice2.call(p.Send(room="dev", text="after")).reply.seq == 4
    assert alice2.call(p.Join(room="dev")).reply == p.RoomJoined(room="dev", last_seq=4,
                                                                 created=False)
    assert again.peer().register("ALICE").status == Status.CONFLICT
    assert [m.text for m in alice2.must(p.FetchHistory(room="dev")).messages] == [
        "m0", "m1", "m2", "after"]


# -- room topics (SET_TOPIC, TOPIC event) ---------------------------------------------------


def test_set_topic_commits_publishes_then_oks(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    alice.must(p.Join(room="Dev"))
    world.clock.jump(1)
    out = alice.call(p.SetTopic(room="dev", topic="release: Friday | see a:b"))
    assert out.reply == p.Ok()
    assert out.events == [(b"room/dev/", p.TopicChanged(
        room="Dev", topic="release: Friday | see a:b", by="alice", time=world.clock.ms))]
    # The event is returned before the OK, and the row is committed before either.
    kinds = [type(a).__name__ for a in out.actions]
    assert kinds == ["ToTopic", "ToPeer"]
    assert world.store.get_room("dev").topic == "release: Friday | see a:b"
    assert world.core.topics["dev"] == "release: Friday | see a:b"
    # JOIN (a new member), ROOMS, LOGIN and PONG all carry it.
    joined = bob.must(p.Join(room="dev"))
    assert joined.topic == "release: Friday | see a:b"
    rooms = {r.room: r.topic for r in bob.must(p.ListRooms()).rooms}
    assert rooms["Dev"] == "release: Friday | see a:b"
    again = world.peer().login("alice").reply
    assert {r.room: r.topic for r in again.rooms}["Dev"] == "release: Friday | see a:b"
    pong = alice.must(p.Ping())
    assert {r.room: r.topic for r in pong.rooms}["Dev"] == "release: Friday | see a:b"


def test_set_topic_empty_clears_and_unchanged_publishes_nothing(world: World) -> None:
    alice = world.user("alice")
    alice.must(p.SetTopic(room="lobby", topic="welcome"))
    same = alice.call(p.SetTopic(room="lobby", topic="welcome"))
    assert same.reply == p.Ok() and same.events == []
    cleared = alice.call(p.SetTopic(room="lobby", topic=""))
    assert [(t, e.topic, e.by) for t, e in cleared.events] == [(b"room/lobby/", "", "alice")]
    assert world.store.get_room("lobby").topic == ""
    assert alice.must(p.Ping()).rooms == (p.RoomState(room="lobby", last_seq=0, topic=""),)


def test_set_topic_members_only_and_unknown_room(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    alice.must(p.Join(room="dev"))
    out = bob.call(p.SetTopic(room="dev", topic="mine now"))
    assert out.status == Status.FORBIDDEN and out.events == []
    assert world.store.get_room("dev").topic == ""
    assert bob.call(p.SetTopic(room="nowhere", topic="x")).status == Status.NOT_FOUND
    assert bob.call(p.SetTopic(room="bad name", topic="x")).status == Status.INVALID
    alice.must(p.Part(room="dev"))
    assert alice.call(p.SetTopic(room="dev", topic="x")).status == Status.FORBIDDEN


def test_set_topic_length_counts_characters(world: World) -> None:
    alice = world.user("alice")
    longest = "é" * p.MAX_TOPIC_CHARS  # 300 characters, 600 UTF-8 bytes
    assert alice.call(p.SetTopic(room="lobby", topic=longest)).ok
    out = alice.call(p.SetTopic(room="lobby", topic=longest + "!"))
    assert out.status == Status.TOO_LARGE and out.events == []
    assert world.store.get_room("lobby").topic == longest


@pytest.mark.parametrize("topic", ["two\nlines", "cr\rhere", "tab\there", "esc \x1b[31m",
                                   "bell\x07", "nel\x85", "ls\u2028here", "ps\u2029here"],
                         ids=["newline", "cr", "tab", "escape", "bell", "nel", "u2028",
                              "u2029"])
def test_set_topic_refuses_control_characters_and_line_breaks(world: World,
                                                              topic: str) -> None:
    alice = world.user("alice")
    out = alice.call(p.SetTopic(room="lobby", topic=topic))
    assert out.status == Status.INVALID and out.events == []
    assert world.store.get_room("lobby").topic == ""


def test_set_topic_keeps_text_exactly(world: World) -> None:
    alice = world.user("alice")
    for topic in ("  padded  ", "   ", "ünïcödé 🎉 日本語", "a\u200db"):
        out = alice.call(p.SetTopic(room="lobby", topic=topic))
        assert out.ok, (topic, out.reply)
        assert out.events[0][1].topic == topic
        assert world.store.get_room("lobby").topic == topic


def test_set_topic_storage_error_is_503_and_changes_nothing(world: World) -> None:
    alice = world.user("alice")
    alice.must(p.SetTopic(room="lobby", topic="old"))
    fail_writes_to(world.store, "rooms", "UPDATE")
    out = alice.call(p.SetTopic(room="lobby", topic="new"))
    assert out.status == Status.UNAVAILABLE and out.events == []
    world.store._db.execute("DROP TRIGGER fail_rooms")
    assert world.core.topics["lobby"] == "old"
    assert world.store.get_room("lobby").topic == "old"


def test_topic_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "zchat.db"
    world = World(Store(path))
    world.user("alice").must(p.SetTopic(room="lobby", topic="kept"))
    world.store.close()
    again = World(Store(path))
    assert again.core.topics["lobby"] == "kept"
    login = again.peer().login("alice").reply
    assert login.rooms == (p.RoomState(room="lobby", last_seq=0, topic="kept"),)


# -- quit message (LOGOUT text) -------------------------------------------------------------


def test_logout_text_is_carried_by_the_last_offline_event(world: World) -> None:
    a1 = world.user("alice")
    a2 = world.user("alice", register=False)
    first = a1.call(p.Logout(text="not the last"))
    assert first.reply == p.Ok() and first.events == []
    last = a2.call(p.Logout(text="bye — back tomorrow"))
    assert last.events == [(b"presence/alice/", p.PresenceChanged(
        name="alice", presence="offline", time=T0_MS, text="bye — back tomorrow"))]


def test_logout_after_away_without_text_clears_the_away_message(world: World) -> None:
    alice = world.user("alice")
    alice.must(p.SetPresence(presence="away", text="lunch"))
    out = alice.call(p.Logout())
    assert [(e.presence, e.text) for _t, e in out.events] == [("offline", "")]


@pytest.mark.parametrize(("text", "status"), [
    ("x" * (p.MAX_AWAY_TEXT_CHARS + 1), Status.TOO_LARGE),
    ("esc \x1b[2J", Status.INVALID),
    ("   ", Status.INVALID),
], ids=["too-long", "control", "blank"])
def test_refused_logout_text_ends_nothing(world: World, text: str, status: Status) -> None:
    alice = world.user("alice")
    out = alice.call(p.Logout(text=text))
    assert out.status == status and out.events == []
    assert world.core.accounts["alice"].presence == "online"
    assert alice.call(p.Who()).ok  # still logged in
    longest = alice.call(p.Logout(text="é" * p.MAX_AWAY_TEXT_CHARS))
    assert longest.ok and longest.events[0][1].text == "é" * p.MAX_AWAY_TEXT_CHARS


def test_eviction_offline_event_has_no_text(world: World) -> None:
    alice = world.user("alice")
    alice.must(p.SetPresence(presence="away", text="lunch"))
    world.clock.jump(7)
    events = [e for _t, e in world.tick() if isinstance(e, p.PresenceChanged)]
    assert [(e.presence, e.text) for e in events] == [("offline", "")]


def test_pong_session_tells_a_connection_whether_the_broker_knows_it(world: World) -> None:
    peer = world.peer()
    assert peer.register("alice").ok
    assert peer.must(p.Ping()).session == ""
    token = peer.must(p.Login(name="alice", password=PASSWORD)).session
    assert token and peer.must(p.Ping()).session == token
    world.clock.jump(7)
    world.tick()  # evicted
    assert peer.must(p.Ping()).session == ""


# -- tester's findings: integers, look-alikes, leading '-', bidi controls ----------------------


def test_history_bound_beyond_64_bits_is_400_not_500(world: World, room_with_10: Peer) -> None:
    out = room_with_10.call(p.FetchHistory(room="dev", before=99999999999999999999999))
    assert (out.status, out.reply.reason) == (Status.BAD_REQUEST, "field before is out of range")
    page = room_with_10.must(p.FetchHistory(room="dev", before=2**63 - 1, limit=2))
    assert seqs(page) == [9, 10]


@pytest.mark.parametrize("second", ["al\u00edce", "Alíce", "a\u0308lice", "ali\u0301ce"])
def test_register_accented_look_alike_is_409(world: World, second: str) -> None:
    assert world.peer().register("alice").ok
    before = world.counts()
    assert world.peer().register(second).status == Status.CONFLICT
    assert world.counts() == before


@pytest.mark.parametrize("name", ["\u0430\u04cf\u0456\u0441\u0435", "-x", "--help"])
def test_register_whole_script_look_alike_or_dash_name_is_422(world: World, name: str) -> None:
    before = world.counts()
    out = world.peer().register(name)
    assert out.status == Status.INVALID
    assert world.counts() == before


def test_join_room_starting_with_dash_is_422(world: World) -> None:
    alice = world.user("alice")
    out = alice.call(p.Join(room="-rf"))
    assert out.status == Status.INVALID
    assert "must not start with '-'" in out.reply.reason


def test_bidi_override_is_refused_in_text_topic_and_away(world: World) -> None:
    alice = world.user("alice")
    rlo = "access \u202egranted"
    out = alice.call(p.Send(room="lobby", text=rlo))
    assert out.status == Status.INVALID
    assert "bidirectional control character (U+202E" in out.reply.reason
    assert alice.call(p.SetTopic(room="lobby", topic=rlo)).status == Status.INVALID
    assert alice.call(p.SetPresence(presence="away", text=rlo)).status == Status.INVALID
    assert world.store.get_room("lobby").topic == ""
    assert alice.call(p.Send(room="lobby", text="ok \u200d\u200c")).ok


@pytest.mark.parametrize("text", ["gone\nfake line", "tab\there", "sep\u2028x"])
def test_away_and_quit_messages_are_one_line(world: World, text: str) -> None:
    alice = world.user("alice")
    assert alice.call(p.SetPresence(presence="away", text=text)).status == Status.INVALID
    assert alice.call(p.Logout(text=text)).status == Status.INVALID
    assert world.core.accounts["alice"].presence == "online"
    assert alice.routing_id in world.core.sessions


def test_dm_to_oneself_with_no_other_session_is_stored_not_live(world: World) -> None:
    alice = world.user("alice")
    out = alice.call(p.SendDirect(to="alice", text="note to self"))
    assert out.reply.delivered == "stored" and out.pushes == []
    other = world.user("alice", register=False)
    assert other.call(p.SendDirect(to="alice", text="again")).reply.delivered == "live"


def test_the_request_table_has_every_request_and_agrees_with_the_wire() -> None:
    """zchat.core.requests declares every request type of the codec once, and its
    ``session`` precondition is the wire's NEEDS_SESSION (what the client assumes)."""
    from zchat.core.requests import REQUESTS

    assert set(REQUESTS) == set(p.REQUEST_TYPES.values())
    assert {t.TYPE for t, spec in REQUESTS.items() if spec.session != t.NEEDS_SESSION} == set()
    admin_only = {t.TYPE for t, spec in REQUESTS.items() if spec.admin}
    assert admin_only == {"SESSIONS", "USERS", "CREATE_ACCOUNTS", "ADMIN_SET_PASSWORD",
                          "ADMIN_DISABLE", "ADMIN_SET_QUOTA"}
