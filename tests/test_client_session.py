"""zchat.client.session's decisions besides the feed and the read state (those are
tests/test_room_feed.py and tests/test_dm_read_state.py): when catch-up PINGs are due,
what a room's repair does next, what a reconnect's LOGIN/RESUME reply means for a room,
when a PONG speaks for a room, liveness and back-off. Pure: plain values, no sockets, no
clock — the time is an argument."""

from __future__ import annotations

import pytest

from zchat import wire as p
from zchat.client import session
from zchat.client.session import (
    MAX_HELD,
    MembershipChanges,
    RoomFeed,
    after_failed_ping,
    after_relogin,
    backoff_delay,
    catch_up_times,
    heartbeat_verdict,
    joined_elsewhere,
    next_repair,
    pong_verdict,
    rate_limit_wait_s,
    reconnect_endpoint,
    repair_due,
    rooms_left,
)


def msg(seq: int, room: str = "dev") -> p.MessagePosted:
    return p.MessagePosted(room=room, seq=seq, time=seq, sender="alice", text=f"m{seq}")


# -- catch-up PINGs ---------------------------------------------------------------------------


def test_catch_up_pings_are_due_at_each_delay_from_the_time_the_room_was_followed() -> None:
    assert catch_up_times(100.0) == (100.5, 103.0)
    assert catch_up_times(0.0) == session.CATCH_UP_PINGS_S


def test_the_catch_up_delays_are_read_at_each_use(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests shorten CATCH_UP_PINGS_S on the module; the Client sees it at once."""
    monkeypatch.setattr(session, "CATCH_UP_PINGS_S", (0.05, 0.3))
    assert catch_up_times(10.0) == (10.05, 10.3)
    monkeypatch.setattr(session, "CATCH_UP_PINGS_S", (3600.0,))
    assert catch_up_times(10.0) == (3610.0,)


# -- a room's repair ----------------------------------------------------------------------------


def test_a_room_not_followed_needs_no_repair() -> None:
    assert next_repair(None, has_room=True, wait=True) == "stop"
    feed = RoomFeed(5)
    feed.known(9)
    feed.following = False
    assert next_repair(feed, has_room=True, wait=True) == "stop"


def test_a_gap_is_fetched_from_the_message_after_the_last_delivered() -> None:
    feed = RoomFeed(5)          # following from #5
    feed.live(msg(9))           # #6-#8 missing, #9 held
    assert repair_due(feed)
    assert next_repair(feed, has_room=True, wait=False) == (5, 3)
    feed.page([msg(6), msg(7), msg(8)], 5)
    assert [m.seq for m in feed.take(10)] == [6, 7, 8, 9]
    assert not repair_due(feed)
    assert next_repair(feed, has_room=True, wait=True) == "stop"


def test_a_full_event_queue_makes_the_background_repair_wait_and_a_heartbeat_stop() -> None:
    feed = RoomFeed(0)
    feed.known(3)               # behind: #1-#3 to fetch
    assert next_repair(feed, has_room=False, wait=True) == "wait"
    assert next_repair(feed, has_room=False, wait=False) == "stop"
    assert next_repair(feed, has_room=True, wait=False) == (0, 3)


def test_a_feed_holding_max_held_ready_messages_fetches_no_more() -> None:
    feed = RoomFeed(0)
    for seq in range(1, MAX_HELD + 1):
        feed.live(msg(seq))
    feed.known(MAX_HELD + 50)
    assert repair_due(feed)
    assert next_repair(feed, has_room=True, wait=True) == "stop"


# -- a reconnect's LOGIN/RESUME reply ----------------------------------------------------------


def test_after_a_relogin_a_room_not_followed_is_followed_anew() -> None:
    assert after_relogin(None, 7) == "follow"
    left = RoomFeed(3)
    left.following = False
    assert after_relogin(left, 7) == "follow"


def test_after_a_relogin_a_broker_behind_what_was_delivered_is_verified() -> None:
    feed = RoomFeed(10)
    assert after_relogin(feed, 9) == "verify"
    assert after_relogin(feed, 10) == "catch up"
    assert after_relogin(feed, 25) == "catch up"


# -- the account's rooms as a PONG lists them ---------------------------------------------------


def test_a_room_is_settled_only_with_no_change_since_the_ping_and_none_in_flight() -> None:
    changes = MembershipChanges()
    before = changes.snapshot()
    assert changes.settled("dev", before)
    changes.begin("dev")                       # a JOIN goes out
    assert not changes.settled("dev", before)
    assert not changes.settled("dev", changes.snapshot())  # in flight
    changes.end("dev")                         # answered
    assert not changes.settled("dev", before)  # changed since the PING
    assert changes.settled("dev", changes.snapshot())
    assert changes.settled("ops", before)      # other rooms are not touched


def test_two_membership_requests_of_one_room_are_in_flight_until_both_end() -> None:
    changes = MembershipChanges()
    changes.begin("dev")
    changes.begin("dev")
    changes.end("dev")
    assert not changes.settled("dev", changes.snapshot())
    changes.end("dev")
    assert changes.settled("dev", changes.snapshot())


def test_following_a_room_or_no_longer_is_a_change() -> None:
    changes = MembershipChanges()
    before = changes.snapshot()
    changes.changed("dev")
    assert not changes.settled("dev", before)
    assert changes.snapshot() == {"dev": 1}


def test_a_pong_naming_another_session_than_the_current_one_says_the_session_is_lost() -> None:
    assert pong_verdict("s1", "s1", "s2", listed=True) == "session lost"
    assert pong_verdict("s1", "s1", "s2", listed=False) == "session lost"


def test_a_pong_without_rooms_brings_no_news() -> None:
    assert pong_verdict("s1", "s1", "s1", listed=False) == "no news"


def test_a_pong_speaks_for_the_membership_only_within_one_session() -> None:
    assert pong_verdict("s1", "s1", "s1", listed=True) == "rooms and membership"
    assert pong_verdict("s1", "s1", None, listed=True) == "rooms and membership"  # older broker
    # a re-login happened while the PING travelled: rooms' seqs only
    assert pong_verdict("s1", "s2", "s1", listed=True) == "rooms"
    assert pong_verdict(None, "s1", "s1", listed=True) == "rooms"


def test_rooms_no_longer_listed_are_left_unless_this_client_was_changing_them() -> None:
    feeds = {"dev": RoomFeed(1), "ops": RoomFeed(2), "lobby": RoomFeed(3)}
    feeds["lobby"].following = False
    changes = MembershipChanges()
    since = changes.snapshot()
    changes.begin("ops")                          # this client's own PART of ops in flight
    assert rooms_left(feeds, set(), changes, since) == ["dev"]
    assert rooms_left(feeds, {"dev"}, changes, since) == []
    assert rooms_left(feeds, set()) == ["dev", "ops"]  # a reconnect's reply: every one


def test_a_listed_room_not_followed_was_joined_elsewhere_when_settled() -> None:
    feeds = {"dev": RoomFeed(1)}
    changes = MembershipChanges()
    since = changes.snapshot()
    assert joined_elsewhere(feeds, "ops", changes, since)
    assert not joined_elsewhere(feeds, "dev", changes, since)   # followed here already
    changes.begin("ops")                                         # this client joins it
    assert not joined_elsewhere(feeds, "ops", changes, since)


# -- liveness and back-off -------------------------------------------------------------------


def test_silence_past_the_timeout_reconnects_a_client_that_can() -> None:
    kw = dict(session_gone=False, going_away=False, lost=False)
    assert heartbeat_verdict(20.0, 10.0, 9.0, can_reconnect=True, **kw) == "reconnect"
    assert heartbeat_verdict(20.0, 12.0, 9.0, can_reconnect=True, **kw) == "ping"
    assert heartbeat_verdict(20.0, 10.0, 9.0, can_reconnect=False, **kw) == "lost"
    assert heartbeat_verdict(20.0, 10.0, 9.0, can_reconnect=False, session_gone=False,
                             going_away=False, lost=True) == "ping"  # told once


def test_a_forgotten_session_or_going_away_reconnects_at_once() -> None:
    for gone, away in ((True, False), (False, True)):
        assert heartbeat_verdict(20.0, 19.9, 9.0, can_reconnect=True, session_gone=gone,
                                 going_away=away, lost=False) == "reconnect"
        assert heartbeat_verdict(20.0, 19.9, 9.0, can_reconnect=False, session_gone=gone,
                                 going_away=away, lost=False) == "ping"


def test_a_failed_ping_with_nothing_heard_since_it_went_means_the_broker_is_gone() -> None:
    assert after_failed_ping(13.0, 9.0, 10.0, 30.0, can_reconnect=True) == "reconnect"
    # a reply (to another request) heard on the DEALER after the PING went: it is there
    assert after_failed_ping(13.0, 11.0, 10.0, 30.0, can_reconnect=True) == "wait"
    assert after_failed_ping(13.0, 9.0, 10.0, 30.0, can_reconnect=False) == "wait"
    assert after_failed_ping(50.0, 11.0, 10.0, 30.0, can_reconnect=False) == "check now"


def test_reconnect_back_off_doubles_from_half_a_second_up_to_the_ceiling() -> None:
    assert [backoff_delay(n, 30.0) for n in range(1, 9)] == [0.5, 1, 2, 4, 8, 16, 30, 30]
    assert backoff_delay(0, 30.0) == 0.5          # attempt numbers start at 1
    assert backoff_delay(10_000, 30.0) == 30.0    # no overflow
    assert backoff_delay(1, 30.0, 0.1) == pytest.approx(0.55)
    assert backoff_delay(1, 30.0, -0.1) == pytest.approx(0.45)
    assert backoff_delay(9, 30.0, session.RECONNECT_JITTER) == 30.0  # never above


def test_a_rate_limited_request_waits_what_the_broker_asks_within_bounds() -> None:
    assert rate_limit_wait_s(200, 1.0) == pytest.approx(0.2)
    assert rate_limit_wait_s(200, 1.5) == pytest.approx(0.3)
    assert rate_limit_wait_s(0, 1.0) == session.RATE_LIMIT_MIN_WAIT_S
    assert rate_limit_wait_s(10_000_000, 1.0) == session.RATE_LIMIT_MAX_WAIT_S


def test_a_reconnect_moves_round_robin_starting_with_the_next_endpoint() -> None:
    """docs/cluster.md, "How clients move": the lost broker is tried last in each round;
    one endpoint is always itself."""
    assert [reconnect_endpoint(0, n, 3) for n in range(1, 7)] == [1, 2, 0, 1, 2, 0]
    assert [reconnect_endpoint(2, n, 3) for n in range(1, 4)] == [0, 1, 2]
    assert [reconnect_endpoint(0, n, 1) for n in range(1, 4)] == [0, 0, 0]
    # spread: each client starts at its own place among the others, the lost one last
    assert [reconnect_endpoint(0, n, 3, spread=1) for n in range(1, 7)] == [2, 1, 0, 2, 1, 0]
    assert [reconnect_endpoint(1, n, 4, spread=2) for n in range(1, 5)] == [0, 2, 3, 1]
    firsts = {reconnect_endpoint(0, 1, 4, spread) for spread in range(30)}
    assert firsts == {1, 2, 3}  # a dead broker's clients spread over all the others
    with pytest.raises(ValueError):
        reconnect_endpoint(3, 1, 3)


def test_an_event_connection_silent_past_the_timeout_means_reconnect() -> None:
    """A sixth tester's: a broker at max_connections_per_address took a client's DEALER
    and refused its SUB for good; the session worked and heard no event (no presence,
    room messages only through the heartbeat's gap repair)."""
    assert heartbeat_verdict(20.0, 19.9, 9.0, can_reconnect=True, session_gone=False,
                             going_away=False, lost=False, events_silent_s=9.5) == \
        "reconnect"
    assert heartbeat_verdict(20.0, 19.9, 9.0, can_reconnect=True, session_gone=False,
                             going_away=False, lost=False, events_silent_s=8.0) == "ping"
    assert heartbeat_verdict(20.0, 19.9, 9.0, can_reconnect=False, session_gone=False,
                             going_away=False, lost=False, events_silent_s=9.5) == "ping"
