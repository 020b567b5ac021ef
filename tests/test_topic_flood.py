"""SET_TOPIC is limited like SEND (docs/PROTOCOL.md §6.22, §15.1): a fresh tester flooded a
room with 650 topic changes in seconds, past the send limit and slow mode, and a member's
changes left no audit entry."""

from __future__ import annotations

from core_helpers import World

from zchat import wire as p
from zchat.errors import Status


def test_topic_changes_take_send_tokens_and_a_refused_one_changes_nothing() -> None:
    world = World(send_rate_per_s=1.0, send_burst=3)
    carl = world.user("carl")
    carl.must(p.Join(room="dev"))  # joining a new room takes a token too
    for i in range(2):
        carl.must(p.SetTopic(room="dev", topic=f"t{i}"))
    refused = carl.call(p.SetTopic(room="dev", topic="flood"))
    assert refused.status == Status.TOO_MANY_REQUESTS
    assert refused.reply.retry_after_ms > 0
    assert refused.events == [] and world.core.topics["dev"] == "t1"
    # setting the topic the room already has publishes nothing and costs nothing
    assert carl.call(p.SetTopic(room="dev", topic="t1")).ok
    world.clock.jump(1)
    assert carl.call(p.SetTopic(room="dev", topic="later")).ok


def test_slow_mode_counts_a_topic_change_as_a_post_and_moderators_are_exempt() -> None:
    world = World()
    olga, carl = world.user("olga"), world.user("carl")
    olga.must(p.Join(room="dev"))
    carl.must(p.Join(room="dev"))
    olga.must(p.SetSlowMode(room="dev", seconds=30))
    carl.must(p.SetTopic(room="dev", topic="carl's"))
    again = carl.call(p.SetTopic(room="dev", topic="carl's again"))
    assert again.status == Status.TOO_MANY_REQUESTS
    assert carl.call(p.Send(room="dev", text="hi")).status == Status.TOO_MANY_REQUESTS
    olga.must(p.SetTopic(room="dev", topic="owner's"))  # the room's owner: exempt
    olga.must(p.SetTopic(room="dev", topic="owner's again"))
    world.clock.jump(30)
    carl.must(p.SetTopic(room="dev", topic="carl's later"))


def test_every_topic_change_is_audited_with_its_setter() -> None:
    world = World()
    olga, carl = world.user("olga"), world.user("carl")
    olga.must(p.Join(room="dev"))
    carl.must(p.Join(room="dev"))
    carl.must(p.SetTopic(room="dev", topic="member's topic"))
    olga.must(p.SetTopic(room="dev", topic="owner's topic"))
    rows = world.store.audit_log(room="dev", action="topic")
    assert [(r.actor, r.detail) for r in rows] == [("olga", "owner's topic"),
                                                   ("carl", "member's topic")]
