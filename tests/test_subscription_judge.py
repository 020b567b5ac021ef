"""The judge of what the broker's XPUB reports (zchat.subscriptions, docs/PROTOCOL.md
§16.2): pure, on a fake clock, with a set of existing rooms standing for the core."""

from __future__ import annotations

from zchat.subscriptions import SubscriptionJudge, SubscriptionLimits

LIMITS = SubscriptionLimits(max_topic_bytes=40, per_subscriber=2, max_junk=5,
                            reports_per_s=10.0, report_burst=20)


def judge_with(rooms: set[bytes]) -> SubscriptionJudge:
    return SubscriptionJudge(LIMITS, lambda topic: topic in rooms)


def test_allowed_topics_cost_nothing_and_a_long_one_is_cut_at_once() -> None:
    judge = judge_with({b"room/a/"})
    assert judge.report("k", b"room/a/", True, 0.0) is None
    why = judge.report("k", b"room/" + b"x" * 40 + b"/", True, 0.0)
    assert why is not None and "longer than any room's" in why


def test_topics_of_no_room_are_held_until_their_room_exists() -> None:
    rooms: set[bytes] = set()
    judge = judge_with(rooms)
    assert judge.report("k", b"room/new1/", True, 0.0) is None
    assert judge.report("k", b"room/new2/", True, 0.0) is None
    rooms.add(b"room/new1/")  # the JOIN made it: it counts no more
    assert judge.report("k", b"room/new3/", True, 0.0) is None
    assert judge.junk_total == 2
    why = judge.report("k", b"room/new4/", True, 0.0)
    assert why is not None and "3 topics of no room" in why


def test_a_dropped_topic_counts_no_more() -> None:
    judge = judge_with(set())
    judge.report("k", b"room/x/", True, 0.0)
    judge.report("k", b"room/y/", True, 0.0)
    assert judge.report("", b"room/x/", False, 0.0) is None  # its last subscriber left
    assert judge.junk_total == 1
    assert judge.report("k", b"room/z/", True, 0.0) is None


def test_churn_past_the_rate_is_cut() -> None:
    judge = judge_with({b"room/a/"})
    verdicts = [judge.report("k", b"room/a/", i % 2 == 0, i * 0.001) for i in range(40)]
    cut = [v for v in verdicts if v is not None]
    assert verdicts[:20] == [None] * 20 and cut and "faster than 10" in cut[0]
    # another subscriber at an honest pace is never cut
    assert all(judge.report("j", b"room/a/", True, 1.0 + i) is None for i in range(50))


def test_many_subscribers_each_under_their_bound_lose_the_largest() -> None:
    judge = judge_with(set())
    for who in ("a", "b"):
        for i in range(2):
            assert judge.report(who, b"room/%s%d/" % (who.encode(), i), True, 0.0) is None
    assert judge.most_junk() is None  # 4 held, at most 5
    assert judge.report("c", b"room/c0/", True, 0.0) is None
    assert judge.most_junk() is None  # 5
    assert judge.report("c", b"room/c1/", True, 0.0) is None
    largest = judge.most_junk()
    assert largest in ("a", "b", "c")
    judge.forget(largest)
    assert judge.junk_total == 4 and judge.most_junk() is None
