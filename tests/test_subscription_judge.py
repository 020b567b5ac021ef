"""The judge of what the broker's XPUB reports (zchat.broker.subscriptions, docs/PROTOCOL.md
§16.2): pure, on a fake clock, with a set of existing rooms standing for the core."""

from __future__ import annotations

from zchat.broker.subscriptions import SubscriptionJudge, SubscriptionLimits

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
    assert judge.culprit() is None  # 4 held, at most 5
    assert judge.report("c", b"room/c0/", True, 0.0) is None
    assert judge.culprit() is None  # 5
    assert judge.report("c", b"room/c1/", True, 0.0) is None
    culprit = judge.culprit()
    assert culprit is not None
    largest, why = culprit
    assert largest in ("a", "b", "c") and "over 5 topics of no room" in why
    judge.forget(largest)
    assert judge.junk_total == 4 and judge.culprit() is None


def test_many_subscribers_each_under_their_rate_lose_the_busiest() -> None:
    """All together past 100 reports a second after 200: those that reported the most
    lately are named first, one a report; an honest client that subscribes to a dozen
    rooms at once while it happens is not (a tester's run had it cut, when the busiest
    was counted over the last second only), nor one that made many reports long ago."""
    limits = SubscriptionLimits(max_topic_bytes=40, reports_per_s=10.0, report_burst=20,
                                total_reports_per_s=100.0, total_report_burst=200)
    judge = SubscriptionJudge(limits, lambda topic: topic == b"room/a/")
    for i in range(150):  # long ago, one a second: under every limit
        assert judge.report("old", b"room/a/", i % 2 == 0, float(i)) is None
    now = 3_600.0  # then all in one instant: nothing refills
    for i in range(200):  # 40 churners, 5 reports each: the burst of all
        assert judge.report(f"s{i % 40}", b"room/a/", i % 80 < 40, now) is None
        assert judge.culprit() is None
    for _ in range(12):  # an honest login: a dozen first subscriptions at once
        assert judge.report("honest", b"room/a/", True, now) is None
        culprit = judge.culprit()
        assert culprit is not None and culprit[0] not in ("honest", "old")
        assert "faster than 100 topics a second after 200" in culprit[1]
        assert "the most lately (5 reports, halved every 60 s)" in culprit[1]
        judge.forget(culprit[0])
    named = []
    for i in range(28):  # the churners go on: each report names one more of them
        assert judge.report(f"s{39 - i}", b"room/a/", True, now) is None
        culprit = judge.culprit()
        assert culprit is not None
        named.append(culprit[0])
        judge.forget(culprit[0])
    assert "honest" not in named and "old" not in named
    # a second later the bucket has refilled by 100: a report names nobody
    assert judge.report("honest", b"room/a/", True, now + 1.0) is None
    assert judge.culprit() is None
