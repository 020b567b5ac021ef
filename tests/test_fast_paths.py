"""Fast paths taken for performance (docs/PERFORMANCE.md) must say exactly what the
general code says: the PONG built from cached room JSON, byte for byte."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from zchat import protocol as p

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_states = st.builds(p.RoomState, room=_text, last_seq=st.integers(0, 2**53),
                    topic=_text, slow_mode_s=st.integers(0, 86_400),
                    private=st.booleans(), locked=st.booleans())


@given(time=st.integers(0, 2**53), rooms=st.lists(_states, max_size=5),
       session=st.one_of(st.none(), _text), request_id=st.binary(min_size=1, max_size=16))
def test_pong_from_cached_room_json_equals_the_codecs_pong(
        time: int, rooms: list[p.RoomState], session: str | None, request_id: bytes) -> None:
    fast = p.encode_pong(request_id, time, [p.room_state_json(r) for r in rooms], session)
    general = p.encode_reply(request_id, p.Pong(time=time, rooms=tuple(rooms),
                                                session=session))
    assert fast == general
    assert p.decode_from_broker(fast, {request_id: p.Pong}) == \
        (request_id, p.Pong(time=time, rooms=tuple(rooms), session=session))


def test_tick_scans_for_silent_sessions_only_when_one_may_be_due() -> None:
    """The loop calls tick at every wake-up; with thousands of sessions a scan each time
    made logins quadratic. The earliest possible timeout is kept instead, and eviction is
    still exact."""
    from test_broker_core import World

    world = World()
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
