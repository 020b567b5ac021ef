"""zchat.client.session.RoomFeed, the client's per-room delivery decisions (pure): whatever arrives
live or from HISTORY, in whatever order and with whatever losses, the application is
handed each message once and in sequence order (docs/PROTOCOL.md §14, G2)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from zchat import wire as p
from zchat.client.session import MAX_HELD, RoomFeed


def msg(seq: int) -> p.MessagePosted:
    return p.MessagePosted(room="dev", seq=seq, time=seq, sender="bob", text=f"m{seq}")


def history(stored: list[int], after: int, limit: int) -> list[p.MessagePosted]:
    """What the broker's HISTORY answers: the oldest ``limit`` stored above ``after``."""
    return [msg(s) for s in sorted(stored) if s > after][:limit]


def drain(feed: RoomFeed, stored: list[int]) -> list[int]:
    """Repair to the end as the client does: hand on, fetch each wanted page, repeat."""
    out = [m.seq for m in feed.take(10**9)]
    while (ask := feed.wanted()) is not None:
        after, limit = ask
        feed.page(history(stored, after, limit), after)
        out += [m.seq for m in feed.take(10**9)]
    return out


def test_the_next_message_is_handed_on_at_once_and_a_repeat_never() -> None:
    feed = RoomFeed(delivered=4)
    feed.live(msg(5))
    assert [m.seq for m in feed.take(10)] == [5]
    feed.live(msg(5))
    feed.live(msg(3))
    assert feed.take(10) == [] and not feed.behind


def test_a_live_message_past_a_gap_waits_for_the_gap_and_then_comes_after_it() -> None:
    """The reported defect's shape: newer live messages must not be handed on before the
    backfilled ones that precede them."""
    feed = RoomFeed(delivered=0)
    for seq in range(1916, 1923):
        feed.live(msg(seq))
    assert feed.take(100) == []
    assert feed.wanted() == (0, 500)  # up to the first held message, a page at most
    feed.page(history(list(range(1, 2001)), 0, 500), 0)
    assert [m.seq for m in feed.take(10_000)] == list(range(1, 501))
    assert drain(feed, list(range(1, 1923))) == list(range(501, 1923))


def test_the_start_of_a_new_room_is_fetched_when_the_first_messages_were_missed() -> None:
    feed = RoomFeed(delivered=0)
    feed.live(msg(8))
    assert feed.wanted() == (0, 7)
    assert drain(feed, list(range(1, 9))) == list(range(1, 9))


def test_a_pong_alone_reveals_a_trailing_loss() -> None:
    feed = RoomFeed(delivered=10)
    feed.known(13)
    assert feed.behind and feed.wanted() == (10, 3)
    assert drain(feed, list(range(1, 14))) == [11, 12, 13]


def test_a_page_that_crossed_live_traffic_hands_nothing_on_twice() -> None:
    feed = RoomFeed(delivered=0)
    feed.known(5)
    after, limit = feed.wanted() or (0, 0)
    for seq in (1, 2, 3):  # heard live while the page travelled
        feed.live(msg(seq))
    assert [m.seq for m in feed.take(10)] == [1, 2, 3]
    feed.page(history([1, 2, 3, 4, 5], after, limit), after)
    assert [m.seq for m in feed.take(10)] == [4, 5]


def test_take_respects_the_room_left_in_the_event_queue() -> None:
    feed = RoomFeed(delivered=0)
    for seq in range(1, 11):
        feed.live(msg(seq))
    assert [m.seq for m in feed.take(3)] == [1, 2, 3]
    assert feed.ready and feed.wanted() is None  # nothing missing, only not yet taken
    assert [m.seq for m in feed.take(0)] == []
    assert [m.seq for m in feed.take(100)] == list(range(4, 11))


def test_what_the_broker_no_longer_has_is_skipped_once_history_shows_it() -> None:
    """A broker restored from an older copy lacks 3..5: the feed goes past them only on
    HISTORY's word, counts them, and keeps the order."""
    stored = [1, 2, 6, 7]
    feed = RoomFeed(delivered=0)
    feed.live(msg(7))
    assert drain(feed, stored) == [1, 2, 6, 7]
    assert feed.skipped == 3


def test_an_empty_page_while_later_messages_are_known_skips_the_hole() -> None:
    feed = RoomFeed(delivered=2)
    feed.known(5)
    feed.page([], 2)
    assert feed.take(10) == [] and feed.skipped == 3 and not feed.behind


def test_held_messages_are_bounded_and_the_dropped_ones_come_back_from_history() -> None:
    feed = RoomFeed(delivered=0)
    for seq in range(2, 2 + 3 * MAX_HELD):
        feed.live(msg(seq))
    assert len(feed.held) <= MAX_HELD
    assert drain(feed, list(range(1, 2 + 3 * MAX_HELD))) == list(range(1, 2 + 3 * MAX_HELD))


@st.composite
def schedules(draw: st.DrawFn) -> tuple[int, int, list[tuple[str, int]]]:
    start = draw(st.integers(0, 30))
    total = start + draw(st.integers(0, 120))
    steps = draw(st.lists(st.tuples(
        st.sampled_from(["publish", "live", "pong", "ask", "answer", "take"]),
        st.integers(0, 40)), max_size=300))
    return start, total, steps


@settings(max_examples=400, deadline=None)
@given(schedules(), st.randoms(use_true_random=False))
def test_any_arrival_order_hands_on_every_message_once_in_order(
        schedule: tuple[int, int, list[tuple[str, int]]], rnd: object) -> None:
    """Messages are published one by one; the feed hears any of them live, in any order
    (two paths: PUB and pushes; losses at high-water marks), learns last_seq from PONGs,
    and gets HISTORY pages that answer the broker's state when asked but arrive later,
    after other traffic. At every moment what was handed on is exactly start+1..k in
    order; at the end, after a repair, everything is."""
    import random

    assert isinstance(rnd, random.Random)
    start, total, steps = schedule
    published = start
    feed = RoomFeed(delivered=start)
    handed: list[int] = []
    in_flight: list[tuple[int, list[p.MessagePosted]]] = []
    for action, arg in steps:
        if action == "publish" and published < total:
            published += 1
        elif action == "live" and published > start:
            feed.live(msg(rnd.randint(max(1, start - 2), published)))
        elif action == "pong":
            feed.known(published)
        elif action == "ask" and (ask := feed.wanted()) is not None:
            after, limit = ask
            in_flight.append((after, history(list(range(1, published + 1)), after, limit)))
        elif action == "answer" and in_flight:
            after, page = in_flight.pop(rnd.randrange(len(in_flight)))
            feed.page(page, after)
        elif action == "take":
            handed += [m.seq for m in feed.take(arg)]
        assert handed == list(range(start + 1, start + 1 + len(handed)))
    for after, page in in_flight:
        feed.page(page, after)
    feed.known(published)
    handed += drain(feed, list(range(1, published + 1)))
    assert handed == list(range(start + 1, published + 1))
    assert feed.skipped == 0
