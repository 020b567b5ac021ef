"""The cluster's pure part (zchat.core.cluster) driven directly: two broker cores on one
database file (two connections, as two brokers on one PostgreSQL database), a fake clock,
no sockets and no notifications — the test says when a broker reads the database again,
as the loop does on a notification or a periodic check."""

from __future__ import annotations

from pathlib import Path

from core_helpers import World, decode_events, room_with

from zchat import wire as p
from zchat.core import ToPeer
from zchat.core.cluster import Fanout
from zchat.store import Store


def two_brokers(tmp_path: Path) -> tuple[World, World, Fanout]:
    """Broker A (a plain core) and broker B (a core with its Fanout) on one file."""
    path = tmp_path / "zchat.db"
    a = World(Store(path))
    b = World(Store(path))
    return a, b, Fanout(b.core)


def published(actions: list[object]) -> list[tuple[int, str]]:
    return [(e.seq, e.text) for _, e in decode_events(actions)
            if isinstance(e, p.MessagePosted)]


def test_room_messages_stored_elsewhere_are_published_once_in_seq_order(
        tmp_path: Path) -> None:
    a, b, fanout = two_brokers(tmp_path)
    peers = room_with(a, "alice", "bob")
    b.core.state.refresh(b.store, b.clock.ms)  # B learns of the room (a sync)
    fanout.note_rooms()
    for i in range(3):
        peers["alice"].must(p.Send(room="dev", text=f"a{i}"))
    assert published(fanout.rooms(["dev"])) == [(1, "a0"), (2, "a1"), (3, "a2")]
    assert fanout.rooms(["dev"]) == []  # a second notification publishes nothing again
    assert b.core.last_seq["dev"] == 3  # PONG and MARK_READ see the new messages
    # B's own SEND: its event is held back, then published from the database after the
    # commit, after A's message that took the seq before it
    peers["alice"].must(p.Send(room="dev", text="a3"))
    carol = b.user("carol")
    carol.must(p.Join(room="dev"))
    out = carol.call(p.Send(room="dev", text="c0"))
    assert out.ok and out.events == [] and out.reply.seq == 5
    own = fanout.deliver.take_posted()
    assert [(e.seq, e.text) for e in own["dev"]] == [(5, "c0")]
    assert published(fanout.rooms(own, own=own)) == [(4, "a3"), (5, "c0")]
    # with no other broker's message before it, B's own goes out as it is
    out = carol.call(p.Send(room="dev", text="c1"))
    own = fanout.deliver.take_posted()
    assert published(fanout.rooms(own, own=own)) == [(6, "c1")]
    caught, unknown = fanout.check()
    assert caught == [] and not unknown


def test_the_periodic_check_catches_up_a_room_whose_notification_was_lost(
        tmp_path: Path) -> None:
    a, b, fanout = two_brokers(tmp_path)
    peers = room_with(a, "alice")
    caught, unknown = fanout.check()
    assert caught == [] and unknown  # a room B does not know: a sync is due
    fanout.sync(b.clock.ms)
    peers["alice"].must(p.Send(room="dev", text="one"))
    peers["alice"].must(p.Send(room="dev", text="two"))
    caught, unknown = fanout.check()
    assert published(caught) == [(1, "one"), (2, "two")] and not unknown
    assert fanout.check() == ([], False)


def test_a_private_rooms_messages_are_pushed_to_this_brokers_member_sessions(
        tmp_path: Path) -> None:
    a, b, fanout = two_brokers(tmp_path)
    peers = room_with(a, "alice", "bob", private=True)
    fanout.sync(b.clock.ms)  # B learns of bob's account (registered through A)
    bob_on_b = b.user("bob", register=False)
    peers["alice"].must(p.Send(room="dev", text="secret"))
    actions = fanout.rooms(["dev"])
    assert all(isinstance(x, ToPeer) and x.routing_id == bob_on_b.routing_id
               for x in actions) and len(actions) == 1


def test_pending_dms_are_pushed_to_each_session_once(tmp_path: Path) -> None:
    a, b, fanout = two_brokers(tmp_path)
    alice = a.user("alice")
    a.user("bob")
    first = alice.must(p.SendDirect(to="bob", text="one"))
    b.core.state.refresh(b.store, b.clock.ms)
    b.user("bob", register=False)  # its LOGIN reply lists "one"
    second = alice.must(p.SendDirect(to="bob", text="two"))
    pushed = fanout.dms(["bob"])
    targets = {x.routing_id for x in pushed if isinstance(x, ToPeer)}
    assert targets <= set(b.core.accounts["bob"].sessions)
    by_session: dict[bytes, list[int]] = {}
    for action in pushed:
        assert isinstance(action, ToPeer)
        value = p.decode_from_broker(action.frames, {})[1]
        assert isinstance(value, p.DirectMessage)
        by_session.setdefault(action.routing_id, []).append(value.id)
    # each session of bob on B: "two" once; "one" was in its LOGIN reply
    assert by_session and all(ids == [second.id] for ids in by_session.values())
    assert first.id not in {i for ids in by_session.values() for i in ids}
    assert fanout.dms(["bob"]) == []  # heard again: nothing new


def test_a_sync_ends_sessions_disabled_elsewhere(tmp_path: Path) -> None:
    a, b, fanout = two_brokers(tmp_path)
    a.user("bob")
    b.core.state.refresh(b.store, b.clock.ms)
    bob_on_b = b.user("bob", register=False)
    a.store.set_disabled("bob", True)
    actions = fanout.sync(b.clock.ms)
    closed = [p.decode_from_broker(x.frames, {})[1] for x in actions
              if isinstance(x, ToPeer) and x.routing_id == bob_on_b.routing_id]
    assert any(isinstance(c, p.SessionClosed) and "disabled" in c.reason for c in closed)
    assert bob_on_b.routing_id not in b.core.sessions


def test_a_private_rooms_events_are_relayed_as_pushes_never_published(
        tmp_path: Path) -> None:
    a, b, fanout_b = two_brokers(tmp_path)
    fanout_a = Fanout(a.core)
    peers = room_with(a, "alice", "bob", private=True)
    carol = room_with(a, "carol", room="open")["carol"]
    fanout_b.sync(b.clock.ms)
    bob_on_b = b.user("bob", register=False)
    fanout_a.deliver.take_relay()  # the joins above
    peers["alice"].must(p.SetTopic(room="dev", topic="secret plans"))
    carol.must(p.SetTopic(room="open", topic="all welcome"))
    relay = fanout_a.deliver.take_relay()
    assert [r[0] for r in relay] == ["f", "e"]
    actions = fanout_b.relayed(relay)
    pushed = [(x.routing_id, p.decode_from_broker(x.frames, {})[1]) for x in actions
              if isinstance(x, ToPeer)]
    assert [(rid, e.topic) for rid, e in pushed] == [(bob_on_b.routing_id, "secret plans")]
    assert [(t, e.topic) for t, e in decode_events(actions)] == \
        [(p.room_topic("open"), "all welcome")]


def test_a_dm_another_session_acknowledged_is_still_pushed_here_once(
        tmp_path: Path) -> None:
    a, b, fanout = two_brokers(tmp_path)
    alice = a.user("alice")
    bob_on_a = a.user("bob")
    b.core.state.refresh(b.store, b.clock.ms)
    bob_on_b = b.user("bob", register=False)
    sent = alice.must(p.SendDirect(to="bob", text="quick"))
    bob_on_a.must(p.AckDirect(ids=(sent.id,)))  # before broker B read it
    pushed = fanout.dm_stored("bob", "alice", sent.id)
    assert [(x.routing_id, p.decode_from_broker(x.frames, {})[1].text) for x in pushed
            if isinstance(x, ToPeer)] == [(bob_on_b.routing_id, "quick")]
    assert fanout.dm_stored("bob", "alice", sent.id) == []  # heard twice: pushed once
    assert fanout.dms(["bob"]) == []  # and the catch-up does not push it again


def test_an_account_made_elsewhere_is_found_before_its_notification(
        tmp_path: Path) -> None:
    a, b, _ = two_brokers(tmp_path)
    a.user("dora")
    # B heard nothing yet: LOGIN and a DM to dora look her up in the store
    dora_on_b = b.user("dora", register=False)
    assert dora_on_b.routing_id in b.core.sessions
    carol = b.user("carol")
    assert carol.call(p.SendDirect(to="dora", text="hi")).ok
    assert not carol.call(p.SendDirect(to="nobody", text="hi")).ok
