"""Fast paths taken for performance (docs/PERFORMANCE.md) must say exactly what the
general code says: the PONG built from cached room JSON, byte for byte; the SEND codec's
hand-written MessagePosted, Sent and Send, byte for byte, value for value, error for error."""

from __future__ import annotations

import enum
import json
import random
import re
import string
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from zchat import protocol as p
from zchat.errors import ProtocolError

_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=40)
_states = st.builds(p.RoomState, room=_text, last_seq=st.integers(0, 2**53),
                    topic=_text, slow_mode_s=st.integers(0, 86_400),
                    private=st.booleans(), locked=st.booleans())


@given(time=st.integers(0, 2**53), rooms=st.lists(_states, max_size=5),
       session=st.one_of(st.none(), _text), request_id=st.binary(min_size=1, max_size=16),
       listed=st.booleans())
def test_pong_from_cached_room_json_equals_the_codecs_pong(
        time: int, rooms: list[p.RoomState], session: str | None, request_id: bytes,
        listed: bool) -> None:
    fast = p.encode_pong(request_id, time, [p.room_state_json(r) for r in rooms], session,
                         listed)
    general = p.encode_reply(request_id, p.Pong(time=time, rooms=tuple(rooms),
                                                session=session, listed=listed))
    assert fast == general
    assert p.decode_from_broker(fast, {request_id: p.Pong}) == \
        (request_id, p.Pong(time=time, rooms=tuple(rooms), session=session, listed=listed))


def test_tick_scans_for_silent_sessions_only_when_one_may_be_due() -> None:
    """The loop calls tick at every wake-up; with thousands of sessions a scan each time
    made logins quadratic. The earliest possible timeout is kept instead, and eviction is
    still exact."""
    from core_helpers import World

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


# ---------------------------------------------------------------------------------------
# The SEND codec's fast paths (zchat/protocol.py, "fast paths of SEND"): MessagePosted and
# Sent written by hand, Send read by hand, the body parsed without JSONDecoder.decode's
# whitespace scans. Each is compared with the generic codec over thousands of random and
# adversarial values drawn from a seeded random.Random, so a failure replays exactly.

CASES = 4000

#: Pieces that JSON escapes, that UTF-8 cannot carry (lone surrogates), that are more than
#: one code unit, or that look like JSON syntax.
_PIECES = ['"', "\\", "/", "\b", "\f", "\n", "\r", "\t", "\x00", "\x01", "\x1f", "\x7f",
           "\x80", "\x9f", "\xa0", "é", "ü", "Zoë", "中文", "\u2028", "\u2029", "\ufeff",
           "\ufffd", "\uffff", "🎉", "👩\u200d💻", "\U0010ffff", "e\u0301", "\ud800", "\udfff",
           "\udc80", "\ud83d", "\ude00", "a", "room", " ", "{", "}", ":", ",", '"room":',
           "\\u0000", "\\ud800", "null", "true", "1e9"]


class _Str(str):
    """A str subclass: JSON writes its characters, not its __str__."""

    def __str__(self) -> str:
        return "not this"


class _Int(int):
    def __repr__(self) -> str:
        return "not this"


class _Color(enum.IntEnum):
    RED = 1


def _random_str(rng: random.Random, surrogates: bool = True) -> str:
    """A string from every category above; ``surrogates=False``: valid Unicode only."""
    r = rng.random()
    if r < 0.08:
        out = ""
    elif r < 0.13:
        out = "".join(rng.choices(string.printable, k=rng.randint(500, 5000)))
    elif r < 0.18:
        out = "".join(rng.choices(_PIECES, k=rng.randint(200, 1200)))
    elif r < 0.3:
        out = "".join(rng.choices(string.ascii_letters + string.digits + "-_. ",
                                  k=rng.randint(1, 40)))
    else:
        parts = []
        for _ in range(rng.randint(1, 12)):
            if rng.random() < 0.6:
                parts.append(rng.choice(_PIECES))
            else:
                parts.append(chr(rng.choice((rng.randint(0, 0x7F), rng.randint(0x80, 0xFFFF),
                                             rng.randint(0x10000, 0x10FFFF)))))
        out = "".join(parts)
    if not surrogates:
        out = "".join(c for c in out if not 0xD800 <= ord(c) <= 0xDFFF)
    return out


_INTS = [0, 1, -1, 7, 42, 2**31, 2**53 + 1, p.MIN_WIRE_INT, p.MAX_WIRE_INT,
         p.MIN_WIRE_INT - 1, p.MAX_WIRE_INT + 1, 2**100, -(2**100)]


def _random_int(rng: random.Random) -> int:
    return rng.choice(_INTS) if rng.random() < 0.5 else rng.randint(-(2**64), 2**64)


def _off_type(rng: random.Random) -> Any:
    """A value of some other type than a field's annotation: what the generic codec must
    decide about, not the fast path."""
    return rng.choice([
        True, False, None, 1.0, -0.0, 1.5, float("nan"), float("inf"), [], [1, "a", None],
        {}, {"a": {"b": [{}]}}, (1, 2), b"bytes", _Str("s\u00e9\ud800"), _Str(""), _Int(5),
        _Color.RED, 10**5000, "1", "", "text", object(),
    ])


def _outcome(fn: Callable[..., Any], *args: Any) -> tuple[Any, ...]:
    """What ``fn(*args)`` did: ("ok", result), a ProtocolError's (status, reason), or any
    other exception's type and message (both paths must fail alike even on our own bugs)."""
    try:
        return ("ok", fn(*args))
    except ProtocolError as exc:
        return ("ProtocolError", int(exc.status), exc.reason)
    except Exception as exc:  # noqa: BLE001 - compared, not swallowed
        return (type(exc).__name__, str(exc))


def _random_message_posted(rng: random.Random, well_typed: bool) -> p.MessagePosted:
    fields: dict[str, Any] = {
        "room": _random_str(rng), "seq": _random_int(rng), "time": _random_int(rng),
        "sender": _random_str(rng), "text": _random_str(rng),
        "kind": rng.choice(["text", "action", "text", _random_str(rng)]),
        "deleted_by": rng.choice(["", _random_str(rng)]),
    }
    if not well_typed:
        for name in rng.sample(sorted(fields), rng.randint(1, 3)):
            fields[name] = _off_type(rng)
    return p.MessagePosted(**fields)


def _random_sent(rng: random.Random, well_typed: bool) -> p.Sent:
    fields: dict[str, Any] = {"room": _random_str(rng), "seq": _random_int(rng),
                              "time": _random_int(rng)}
    if not well_typed:
        for name in rng.sample(sorted(fields), rng.randint(1, 2)):
            fields[name] = _off_type(rng)
    return p.Sent(**fields)


def _random_history_page(rng: random.Random, well_typed: bool) -> p.HistoryPage:
    messages: Any = tuple(_random_message_posted(rng, well_typed or rng.random() < 0.7)
                          for _ in range(rng.choice((0, 1, 2, 5, 20))))
    room: Any = _random_str(rng)
    if not well_typed:
        r = rng.random()
        if r < 0.2:
            room = _off_type(rng)
        elif r < 0.3:
            messages = list(messages)
        elif r < 0.4:
            messages = (*messages, _random_sent(rng, True))
    return p.HistoryPage(room=room, messages=messages)


@pytest.mark.parametrize("make", [_random_message_posted, _random_sent,
                                  _random_history_page],
                         ids=["MessagePosted", "Sent", "HistoryPage"])
def test_fast_encoders_write_the_generic_bytes_and_errors(
        make: Callable[[random.Random, bool], p.Message]) -> None:
    rng = random.Random(20260701)
    fast_path = p._FAST_JSON[make(rng, True).__class__]
    served = invalid = fell_back = 0
    for i in range(CASES):
        value = make(rng, well_typed=i % 5 != 0)
        fast = _outcome(p.encode_body, value)
        assert fast == _outcome(p._generic_encode_body, value), value
        if _outcome(fast_path, value) == ("ok", None):
            fell_back += 1
        else:
            served += 1
        if fast[0] == "ProtocolError":
            assert fast[1:] == (400, f"{value.TYPE} holds text that is not valid Unicode")
            invalid += 1
    # Every category was met: bodies written fast, refused for a lone surrogate, and
    # left to the generic path (a bool, float, None... in a field).
    assert served > CASES * 0.6
    assert invalid > CASES * 0.05
    assert fell_back > CASES * 0.1


def test_fast_encoders_take_every_well_typed_value() -> None:
    """A fast path that gave up (None) on ordinary values would be correct and useless."""
    rng = random.Random(7)
    for _ in range(CASES // 4):
        msg = _random_message_posted(rng, well_typed=True)
        sent = _random_sent(rng, well_typed=True)
        assert p._message_posted_json(msg) is not None
        assert p._sent_json(sent) is not None
        page = _random_history_page(rng, well_typed=True)
        assert p._history_page_json(page) is not None


def test_fast_encoded_send_bodies_frame_and_decode_as_before() -> None:
    """encode_event, encode_push and encode_reply carry the fast bodies in the same frames,
    and a client decodes them back to the same values."""
    rng = random.Random(11)
    for _ in range(CASES // 4):
        msg = _random_message_posted(rng, well_typed=True)
        msg = p.MessagePosted(msg.room, msg.seq, msg.time, msg.sender, msg.text,
                              rng.choice(["text", "action"]), msg.deleted_by)
        sent = _random_sent(rng, well_typed=True)
        topic = p.room_topic("dev")
        try:
            body = p._generic_encode_body(msg)
        except ProtocolError:
            with pytest.raises(ProtocolError, match="MESSAGE holds text that is not valid"):
                p.encode_event(topic, msg)
        else:
            assert p.encode_event(topic, msg) == [topic, p.VERSION, b"MESSAGE", body]
            assert p.encode_push(msg) == [p.VERSION, b"", b"MESSAGE", body]
            if p.MIN_WIRE_INT <= msg.seq <= p.MAX_WIRE_INT and \
                    p.MIN_WIRE_INT <= msg.time <= p.MAX_WIRE_INT:
                assert p.decode_event(p.encode_event(topic, msg)) == msg
        try:
            body = p._generic_encode_body(sent)
        except ProtocolError:
            with pytest.raises(ProtocolError, match="OK holds text that is not valid"):
                p.encode_reply(b"r1", sent)
        else:
            assert p.encode_reply(b"r1", sent) == [p.VERSION, b"r1", b"OK", body]


# -- Send read by hand -------------------------------------------------------------------

_SEND_KEYS = ["room", "text", "kind", "cmid"]
_OTHER_KEYS = ["Room", "TEXT", "", " room", "room ", "extra", "to", "seq", "téxt", "\ud800",
               "kind\x00"]


def _random_send_value(rng: random.Random, key: str) -> Any:
    r = rng.random()
    if r < 0.6:
        if key == "kind":
            return rng.choice(["text", "action", "action", "Text", "", "text ", "emote",
                               _Str("text"), _random_str(rng)])
        return _random_str(rng, surrogates=rng.random() < 0.3)
    if r < 0.75:
        return _random_int(rng)
    return _off_type(rng)


def _random_send_dict(rng: random.Random) -> dict[str, Any]:
    """A Send body as decoded JSON: the four fields each present or not, any of them of
    the wrong type, unknown keys anywhere in the order."""
    keys = [k for k in _SEND_KEYS if rng.random() < 0.85]
    if rng.random() < 0.25:
        keys += rng.sample(_OTHER_KEYS, rng.randint(1, 3))
    rng.shuffle(keys)
    good = rng.random() < 0.4  # mostly valid values, so that the later checks are reached
    return {k: (_random_str(rng, surrogates=False) if k in ("room", "text", "cmid") and good
                else rng.choice(["text", "action"]) if k == "kind" and good
                else _random_send_value(rng, k))
            for k in keys}


#: A 400 reason without the field it names: "field messages[3].room must be a string"
#: -> "must be a string", "unknown field x" -> "unknown field".
_REASON = re.compile(r"^(?:field \S+ (?=must|is)|(unknown field|missing field) .*)", re.S)


def test_send_from_dict_gives_the_generic_value_or_error() -> None:
    rng = random.Random(424242)
    outcomes: dict[str, int] = {}
    for i in range(CASES * 2):
        data = _random_send_dict(rng)
        prefix = "" if i % 4 else "messages[3]."
        strict = i % 3 != 0
        fast = _outcome(p.from_dict, p.Send, data, prefix, strict)
        assert fast == _outcome(p._from_dict_generic, p.Send, data, prefix, strict), data
        if fast[0] == "ok":
            assert type(fast[1]) is p.Send
        kind = "ok" if fast[0] == "ok" else _REASON.sub(r"\1", fast[2])
        outcomes[kind] = outcomes.get(kind, 0) + 1
    # Every outcome was met, each many times: accepted, unknown and missing fields, not a
    # string, not valid Unicode, a kind outside the literal.
    assert outcomes.keys() == {"ok", "unknown field", "missing field", "must be a string",
                               "is not valid Unicode", "must be one of 'text', 'action'"}
    assert min(outcomes.values()) > 50, outcomes


def test_send_fast_path_is_the_one_from_dict_takes() -> None:
    """from_dict(Send, ...) goes through the hand-written reader (else the test above
    would compare the generic path with itself)."""
    calls = []
    original = p._FAST_FROM_DICT[p.Send]

    def spy(data: dict[str, Any], prefix: str, strict: bool) -> Any:
        calls.append(data)
        return original(data, prefix, strict)

    p._FAST_FROM_DICT[p.Send] = spy
    try:
        frames = p.encode_request(b"r1", p.Send(room="dev", text="hi", cmid="c1"))
        assert p.decode_request(frames) == (b"r1", p.Send(room="dev", text="hi", cmid="c1"))
    finally:
        p._FAST_FROM_DICT[p.Send] = original
    assert calls == [{"room": "dev", "text": "hi", "cmid": "c1", "kind": "text"}]


# -- the body parsed without JSONDecoder.decode's whitespace scans --------------------------

def _reference_decode_body(cls: type[Any], body: bytes, limit: int = p.MAX_BODY_BYTES,
                           strict: bool = True) -> Any:
    """decode_body as it was before the fast paths: JSONDecoder.decode, then the generic
    from_dict."""
    if len(body) > limit:
        raise ProtocolError(p.Status.TOO_LARGE, f"body of {len(body)} bytes exceeds {limit}")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(p.Status.BAD_REQUEST, "body is not valid UTF-8") from None
    try:
        data = p._DECODER.decode(text) if text else {}
    except (ValueError, RecursionError):
        raise ProtocolError(p.Status.BAD_REQUEST, "body is not valid JSON") from None
    if not isinstance(data, dict):
        raise ProtocolError(p.Status.BAD_REQUEST, "body must be a JSON object")
    return p._from_dict_generic(cls, data, strict=strict)


def _jsonable(value: Any) -> Any:
    """``value`` as json.dumps can write it (the wire never carries Python objects)."""
    if isinstance(value, int) and abs(value) > 10**4000:
        return 0  # json.dumps cannot write it either; the raw bodies have long digits
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value.value if isinstance(value, enum.Enum) else value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    return repr(value)


_JUNK = ["", " ", "\n\t ", "x", "}", "{}", ",", "\x00", "\u00a0", "\ufeff", "/* */", "null"]


def _random_send_body(rng: random.Random) -> bytes:
    """A SEND body as a client or an attacker writes it: mostly one JSON object, sometimes
    with whitespace or junk around it, repeated keys, NaN, cut short, not UTF-8, deep."""
    data = _jsonable(_random_send_dict(rng))
    text = json.dumps(data, ensure_ascii=rng.random() < 0.5,
                      separators=rng.choice([(",", ":"), (", ", ": ")]))
    r = rng.random()
    if r < 0.15:
        text = rng.choice(_JUNK) + text + rng.choice(_JUNK)
    elif r < 0.2 and data:
        key = rng.choice(list(data))
        text = text[:-1] + ("," if len(data) else "") + json.dumps(key) + ":" + \
            json.dumps(data[key]) + "}"
    elif r < 0.25:
        text = text[:rng.randint(0, len(text))]
    elif r < 0.28:
        text = text[:-1] + ',"n":' + rng.choice(["NaN", "Infinity", "-Infinity", "1e999",
                                                 "9" * 5000, "[1,]", "01"]) + "}"
    elif r < 0.3:
        text = rng.choice(["[" * 100_000, "{" * 50_000, '{"a":' * 50_000,
                           json.dumps([data]), json.dumps("room"), "1", "null", "{"])
    body = text.encode("utf-8", "surrogatepass" if rng.random() < 0.3 else "replace")
    if rng.random() < 0.03:
        body = body + b"\xff"
    return body


def test_decode_body_of_send_matches_the_decoder_and_generic_reader() -> None:
    rng = random.Random(5150)
    accepted = refused = 0
    for i in range(CASES):
        body = _random_send_body(rng)
        strict = i % 4 != 0
        fast = _outcome(p.decode_body, p.Send, body, p.MAX_BODY_BYTES, strict)
        assert fast == _outcome(_reference_decode_body, p.Send, body, p.MAX_BODY_BYTES,
                                strict), body[:200]
        if fast[0] == "ok":
            accepted += 1
        else:
            refused += 1
    assert accepted > CASES * 0.1 and refused > CASES * 0.3


@pytest.mark.parametrize("body", [
    b'{"room":"dev","text":"hi"}', b' {"room":"dev","text":"hi"}', b'{"room":"dev","text":"hi"} ',
    b'{"room":"dev","text":"hi"}\n', b'{"room":"dev","text":"hi"}x', b'{"room":"dev","text":"hi"}}',
    b'{"room":"dev","text":"hi"}{}', b'{"room":"dev","text":"hi",}', b'{"room":"dev","text":}',
    b'{"room":"dev","text":"hi","room":"ops"}', b'{"room":"dev","text":NaN}', b"{", b"", b" ",
    b"{}", b'{"room":"\\ud800","text":"hi"}', b'{"room":"dev","text":"\\udc80"}', b"[]",
    b'"{"', b"\xef\xbb\xbf{}", b'{"room":"dev","text":"hi"}\x00',
], ids=repr)
def test_decode_body_edge_cases_match_the_decoder(body: bytes) -> None:
    for cls in (p.Send, p.Join, p.Ping):
        for strict in (True, False):
            assert _outcome(p.decode_body, cls, body, p.MAX_BODY_BYTES, strict) == \
                _outcome(_reference_decode_body, cls, body, p.MAX_BODY_BYTES, strict)


def test_decode_request_of_send_matches_the_reference() -> None:
    """The whole request path, request id echoed on errors included."""
    rng = random.Random(99)
    for _ in range(CASES // 4):
        body = _random_send_body(rng)
        try:
            expected: Any = (b"rid", _reference_decode_body(p.Send, body))
        except ProtocolError as exc:
            expected = (int(exc.status), exc.reason, b"rid")
        try:
            got: Any = p.decode_request([p.VERSION, b"rid", b"SEND", body])
        except ProtocolError as exc:
            got = (int(exc.status), exc.reason, exc.request_id)
        assert got == expected, body[:200]
