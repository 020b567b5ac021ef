"""A PONG is charged to the account's reading budget and, while that is spent, leaves out
the room list instead of being refused (docs/PROTOCOL.md §6.13 ``listed``, §15.1). A
fresh attacker's PINGs got 1.3 MB PONGs (1,000 rooms with long topics) for free: 12
sessions took 333 MB/s of replies and a whole core. Pure core on a fake clock; then the
client library against a real in-process broker: a PONG without the list is not read as
"in no room"."""

from __future__ import annotations

from conftest import run
from core_helpers import World

from zchat import wire as p
from zchat.client.events import LeftElsewhere
from zchat.testing import Harness, running_broker

TOPIC = "t" * 300


def test_pongs_are_charged_and_list_no_rooms_while_the_budget_is_spent() -> None:
    world = World(read_rate_bytes_per_s=1024, read_burst_bytes=65_536,
                  send_rate_per_s=0, room_create_rate_per_s=0)
    alice = world.user("alice")
    for i in range(40):
        alice.must(p.Join(room=f"r{i}"))
        alice.must(p.SetTopic(room=f"r{i}", topic=TOPIC))
    full = alice.must(p.Ping())
    assert full.listed and len(full.rooms) == 41  # with lobby
    budget = world.core.accounts["alice"].read_budget
    assert budget is not None and budget.tokens < 65_536 - 12_000  # ~13 KB a PONG
    pongs = [alice.must(p.Ping()) for _ in range(10)]
    short = [pong for pong in pongs if not pong.listed]
    assert short and all(pong.rooms == () and pong.session for pong in short)
    assert budget.tokens > -20_000  # once spent, no more is charged
    world.clock.jump(60)  # 60 KiB back
    assert alice.must(p.Ping()).listed


def test_a_pong_without_the_list_is_not_read_as_in_no_room() -> None:
    async def scenario(h: Harness) -> None:
        async with h.client("alice") as alice:
            for room in ("dev", "ops"):
                await alice.join(room)
            budget = h.broker.core.accounts["alice"].read_budget  # type: ignore[union-attr]
            assert budget is not None
            budget.charge(10**9, budget.stamp_s)  # spent for a long while
            pong = await alice.ping()
            assert not pong.listed and pong.rooms == ()
            assert sorted(alice.rooms) == ["dev", "lobby", "ops"]
            while (event := await alice.next_event(0.3)) is not None:
                assert not isinstance(event, LeftElsewhere), event

    with running_broker(read_rate_bytes_per_s=1024, heartbeat_interval_s=30.0,
                        heartbeat_timeout_s=90.0) as h:
        run(scenario(h))
