"""Round trips and malformed input for the ZCHAT/1 codec (zchat/wire/, docs/PROTOCOL.md §3).

``ROUND_TRIPPED`` (tests/codec_examples.py) maps every wire TYPE name to example values;
each is round-tripped here, and a test fails when a wire type has none.
"""

from __future__ import annotations

import json
import typing
from typing import Any, Literal, Union

import msgspec
import pytest
from codec_examples import ALL_CLASSES, ROUND_TRIPPED
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zchat import wire as p
from zchat.errors import ProtocolError, Status

RID = b"0f3c5e1a9b2d4c6e8f0a1b2c3d4e5f60"  # 32 bytes, a UUID in hex

WIRE_NAMES = set(p.REQUEST_TYPES) | set(p.EVENT_TYPES) | set(p.PUSH_TYPES) | {"OK", "ERROR"}


def round_trip(value: p.Message) -> p.Message:
    """Encode ``value`` on the channel its class travels on and decode it back."""
    if isinstance(value, p.Request):
        frames = p.encode_request(RID, value)
        assert frames[:3] == [p.VERSION, RID, value.TYPE.encode()]
        rid, request = p.decode_request(frames)
        assert rid == RID
        return request
    if isinstance(value, (p.Reply, p.Error)):
        frames = p.encode_reply(RID, value)
        assert frames[2] == (b"ERROR" if isinstance(value, p.Error) else b"OK")
        pending: dict[bytes, type[p.Reply]] = (
            {} if isinstance(value, p.Error) else {RID: type(value)})
        rid, reply = p.decode_from_broker(frames, pending)
        assert rid == RID
        return reply
    if type(value) in p.PUSH_TYPES.values():
        frames = p.encode_push(value)
        assert frames[:3] == [p.VERSION, b"", value.TYPE.encode()]
        rid, push = p.decode_from_broker(frames, {})
        assert rid == b""
        return push
    if type(value) in p.EVENT_TYPES.values():
        topic = p.room_topic("café")
        frames = p.encode_event(topic, value)
        assert frames[:3] == [topic, p.VERSION, value.TYPE.encode()]
        return p.decode_event(frames)
    raise AssertionError(f"no channel for {type(value).__name__}")


CASES = [(name, value) for name, values in ROUND_TRIPPED.items() for value in values]


@pytest.mark.parametrize(("name", "value"), CASES,
                         ids=[f"{n}-{type(v).__name__}-{i}" for i, (n, v) in enumerate(CASES)])
def test_round_trip(name: str, value: p.Message) -> None:
    assert name == value.TYPE
    back = round_trip(value)
    assert back == value
    assert type(back) is type(value)


def test_every_type_has_a_round_trip_case() -> None:
    assert set(ROUND_TRIPPED) == WIRE_NAMES
    covered = {type(v) for values in ROUND_TRIPPED.values() for v in values}
    assert covered >= ALL_CLASSES, ALL_CLASSES - covered


def test_every_request_reply_class_is_a_reply() -> None:
    for cls in p.REQUEST_TYPES.values():
        assert cls.REPLY in ALL_CLASSES


def test_body_is_compact_utf8_json() -> None:
    body = p.encode_body(p.Send(room="café", text="ü"))
    assert body == '{"room":"café","text":"ü","kind":"text","cmid":""}'.encode()


def test_defaults_may_be_omitted_and_empty_body_is_empty_object() -> None:
    assert p.decode_request([p.VERSION, b"r", b"HISTORY", b'{"room":"x"}'])[1] == \
        p.FetchHistory(room="x", before=None, after=None, limit=p.DEFAULT_HISTORY_LIMIT)
    assert p.decode_request([p.VERSION, b"r", b"PING", b""])[1] == p.Ping()


def test_topics_terminate_with_slash() -> None:
    assert p.room_topic("dev") == b"room/dev/"
    assert not p.room_topic("devops").startswith(p.room_topic("dev"))
    assert not p.presence_topic("alice").startswith(p.presence_topic("al"))
    assert p.room_topic("café") == "room/café/".encode()


# ---------------------------------------------------------------------------
# Malformed requests: decode_request raises ProtocolError with the status of §11 and the
# request id echoed where it could be read.


def _refused(frames: list[bytes]) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        p.decode_request(frames)
    return info.value


def _req(type_: bytes, body: bytes, rid: bytes = RID) -> list[bytes]:
    return [p.VERSION, rid, type_, body]


@pytest.mark.parametrize("frames", [
    [],
    [p.VERSION],
    [p.VERSION, RID, b"PING"],
    [p.VERSION, RID, b"PING", b"{}", b"extra"],
    [b"", p.VERSION, RID, b"PING", b"{}"],  # an empty delimiter, as a REQ socket adds
])
def test_wrong_frame_count(frames: list[bytes]) -> None:
    err = _refused(frames)
    assert err.status == Status.BAD_REQUEST
    assert err.request_id == (frames[1] if len(frames) > 1 else b"")


@pytest.mark.parametrize("version", [b"ZC2", b"ZC0", b"", b"zc1", b"ZC1\x00", b"MDPC01"])
def test_bad_version_is_426(version: bytes) -> None:
    err = _refused([version, RID, b"PING", b"{}"])
    assert err.status == Status.VERSION_NOT_SUPPORTED
    assert err.request_id == RID


def test_request_id_bounds() -> None:
    err = _refused(_req(b"PING", b"{}", rid=b""))
    assert (err.status, err.request_id) == (Status.BAD_REQUEST, b"")
    err = _refused(_req(b"PING", b"{}", rid=b"x" * (p.MAX_REQUEST_ID_BYTES + 1)))
    assert err.status == Status.BAD_REQUEST
    assert err.request_id == b"x" * p.MAX_REQUEST_ID_BYTES
    assert p.decode_request(_req(b"PING", b"{}", rid=b"x" * p.MAX_REQUEST_ID_BYTES))[1] == p.Ping()
    assert p.decode_request(_req(b"PING", b"{}", rid=b"\x00"))[0] == b"\x00"


@pytest.mark.parametrize("type_", [b"NOPE", b"ping", b"OK", b"ERROR", b"MESSAGE", b"",
                                   b"\xff\xfe", b"LOGIN "])
def test_unknown_type_is_405(type_: bytes) -> None:
    err = _refused(_req(type_, b"{}"))
    assert err.status == Status.UNKNOWN_COMMAND
    assert err.request_id == RID


@pytest.mark.parametrize(("type_", "body"), [
    # invalid UTF-8
    (b"PING", b"\xff{}"),
    (b"JOIN", b'{"room":"caf\xe9"}'),
    # not JSON
    (b"PING", b"{"),
    (b"PING", b"{'a': 1}"),
    (b"JOIN", b'{"room":"x",}'),
    (b"PING", b"\xef\xbb\xbf{}"),  # a byte-order mark
    (b"PING", b"[" * 10_000),  # too deep to parse; under the size limit
    # JSON, but not an object
    (b"PING", b"[]"),
    (b"PING", b'"{}"'),
    (b"PING", b"1"),
    (b"PING", b"null"),
    (b"PING", b"true"),
    # missing field
    (b"JOIN", b"{}"),
    (b"LOGIN", b'{"password":"x"}'),  # no name (neither password nor token: the broker's 400)
    (b"TOKEN_REVOKE", b'{}'),
    (b"TOKEN_CREATE", b'{"label":null}'),
    (b"DM", b'{"text":"hi"}'),
    (b"SET_PRESENCE", b'{"text":"brb"}'),
    # unknown field
    (b"PING", b'{"x":1}'),
    (b"JOIN", '{"room":"café","Room":"café"}'.encode()),
    (b"SEND", b'{"room":"x","text":"hi","seq":3}'),
    # mistyped field
    (b"HISTORY", b'{"room":"x","limit":true}'),      # bool where int
    (b"HISTORY", b'{"room":"x","limit":"50"}'),      # string where int
    (b"HISTORY", b'{"room":"x","limit":50.0}'),      # float where int
    (b"HISTORY", b'{"room":"x","limit":5e1}'),
    (b"HISTORY", b'{"room":"x","limit":null}'),      # null where int (not optional)
    (b"HISTORY", b'{"room":"x","before":"7"}'),      # string where int|None
    (b"HISTORY", b'{"room":"x","after":false}'),     # bool where int|None
    (b"JOIN", b'{"room":5}'),                        # int where string
    (b"JOIN", b'{"room":null}'),
    (b"JOIN", b'{"room":["cafe"]}'),
    (b"JOIN", b'{"room":{"name":"cafe"}}'),
    (b"WHO", b'{"room":1}'),                         # int where str|None
    (b"SEND", b'{"room":"x","text":"hi","cmid":7}'),
    (b"HISTORY", b'{"room":"x","limit":' + b"9" * 5000 + b"}"),  # int too long to parse
    # strings that are not Unicode (lone surrogate escapes)
    (b"SEND", b'{"room":"x","text":"\\ud800"}'),
    (b"SET_PRESENCE", b'{"presence":"away","text":"\\udfff x"}'),
    # Literal out of range
    (b"SET_PRESENCE", b'{"presence":"offline"}'),
    (b"SET_PRESENCE", b'{"presence":"Away"}'),
    (b"SET_PRESENCE", b'{"presence":1}'),
    (b"SEND", b'{"room":"x","text":"hi","kind":"shout"}'),
    (b"SEND", b'{"room":"x","text":"hi","kind":null}'),
])
def test_malformed_body_is_400(type_: bytes, body: bytes) -> None:
    err = _refused(_req(type_, body))
    assert err.status == Status.BAD_REQUEST, err
    assert err.request_id == RID


def test_missing_and_unknown_fields_are_named() -> None:
    assert "room" in _refused(_req(b"JOIN", b"{}")).reason
    assert "colour" in _refused(_req(b"PING", b'{"colour":"red"}')).reason
    assert "limit" in _refused(_req(b"HISTORY", b'{"room":"x","limit":"9"}')).reason


@pytest.mark.parametrize(("field", "value"), [
    ("before", 2**63), ("before", 99999999999999999999999), ("after", -(2**63) - 1),
    ("limit", 2**64),
])
def test_integers_outside_signed_64_bits_are_400(field: str, value: int) -> None:
    body = json.dumps({"room": "x", field: value}).encode()
    err = _refused(_req(b"HISTORY", body))
    assert (err.status, err.reason) == (Status.BAD_REQUEST, f"field {field} is out of range")
    assert err.request_id == RID


def test_integers_at_the_signed_64_bit_bounds_are_accepted() -> None:
    for value in (2**63 - 1, -(2**63)):
        _rid, req = p.decode_request(_req(b"HISTORY", json.dumps(
            {"room": "x", "before": value}).encode()))
        assert req == p.FetchHistory(room="x", before=value)


def test_encoding_a_lone_surrogate_is_a_protocol_error() -> None:
    # what a command-line argument that is not UTF-8 looks like after surrogateescape
    with pytest.raises(ProtocolError) as info:
        p.encode_request(RID, p.Send(room="dev", text="a \udcff b"))
    assert info.value.status == Status.BAD_REQUEST
    assert "not valid Unicode" in info.value.reason


def test_oversized_body_is_413() -> None:
    err = _refused(_req(b"PING", b" " * (p.MAX_BODY_BYTES + 1)))
    assert (err.status, err.request_id) == (Status.TOO_LARGE, RID)
    # exactly at the limit: accepted (the text rule itself is the broker's, §12)
    prefix, suffix = b'{"room":"x","text":"', b'"}'
    body = prefix + b"a" * (p.MAX_BODY_BYTES - len(prefix) - len(suffix)) + suffix
    assert len(body) == p.MAX_BODY_BYTES
    assert isinstance(p.decode_request(_req(b"SEND", body))[1], p.Send)


# -- malformed frames from the broker, on the client side ------------------------------


@pytest.mark.parametrize("frames", [
    [p.VERSION, RID, b"OK"],
    [b"ZC2", RID, b"OK", b"{}"],
    [p.VERSION, RID, b"MAYBE", b"{}"],
    [p.VERSION, RID, b"ERROR", b'{"status":"404","reason":"x"}'],
    [p.VERSION, b"", b"MESSAGE", b"{}"],                # not a push type
])
def test_malformed_from_broker(frames: list[bytes]) -> None:
    with pytest.raises(ProtocolError):
        p.decode_from_broker(frames, {})


def test_unknown_push_is_405_and_clients_ignore_unknown_fields() -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_from_broker([p.VERSION, b"", b"BUZZ", b"{}"], {})
    assert info.value.status == Status.UNKNOWN_COMMAND
    # §13: a newer broker may add fields to replies, pushes and events; clients ignore them
    body = (b'{"name":"z","session":"s","rooms":[{"room":"a","last_seq":1,"x":2}],'
            b'"pending":[],"added_later":true}')
    _rid, value = p.decode_from_broker([p.VERSION, RID, b"OK", body], {RID: p.LoggedIn})
    assert value == p.LoggedIn(name="z", session="s", rooms=(p.RoomState("a", 1),))
    event = p.decode_event([b"tick/", p.VERSION, b"TICK", b'{"time":5,"load":0.1}'])
    assert event == p.Tick(time=5)
    # ...but a wrong type is still refused
    with pytest.raises(ProtocolError):
        p.decode_event([b"tick/", p.VERSION, b"TICK", b'{"time":"5"}'])


@pytest.mark.parametrize(("frames", "status"), [
    ([b"tick/", p.VERSION, b"TICK"], Status.BAD_REQUEST),
    ([b"tick/", b"ZC2", b"TICK", b'{"time":1}'], Status.BAD_REQUEST),
    ([b"tick/", p.VERSION, b"TOCK", b'{"time":1}'], Status.UNKNOWN_COMMAND),
    ([b"tick/", p.VERSION, b"TICK", b'{"time":"1"}'], Status.BAD_REQUEST),
    ([b"tick/", p.VERSION, b"TICK", b"{}"], Status.BAD_REQUEST),
])
def test_malformed_events(frames: list[bytes], status: Status) -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_event(frames)
    assert info.value.status == status


# ---------------------------------------------------------------------------
# Property tests.

_INT = st.integers(min_value=-(2**63), max_value=2**63 - 1)


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy of values of annotation ``tp``, following the codec's own type rules."""
    origin = typing.get_origin(tp)
    if origin is Union or origin is getattr(__import__("types"), "UnionType", None):
        return st.one_of(*[st.none() if a is type(None) else strategy_for(a)
                           for a in typing.get_args(tp)])
    if tp is msgspec.UnsetType:  # an ``Added`` request field left out (§13)
        return st.just(msgspec.UNSET)
    if origin is Literal:
        return st.sampled_from(typing.get_args(tp))
    if origin is tuple:
        return st.lists(strategy_for(typing.get_args(tp)[0]), max_size=3).map(tuple)
    if tp is bool:
        return st.booleans()
    if tp is int:
        return _INT
    if tp is str:
        return st.text(max_size=40)  # hypothesis never generates lone surrogates here
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        hints = typing.get_type_hints(tp)
        return st.builds(tp, **{f.name: strategy_for(hints[f.name])
                                for f in msgspec.structs.fields(tp)})
    raise TypeError(f"no strategy for {tp!r}")


_ANY_MESSAGE = st.sampled_from(sorted(ALL_CLASSES, key=lambda c: c.__name__)).flatmap(
    strategy_for)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(_ANY_MESSAGE)
def test_random_values_round_trip(value: p.Message) -> None:
    assert round_trip(value) == value


@given(st.lists(st.binary(max_size=40), max_size=6))
def test_random_frames_raise_only_protocol_error(frames: list[bytes]) -> None:
    try:
        rid, request = p.decode_request(frames)
    except ProtocolError as err:
        assert err.status in set(Status)
        return
    assert isinstance(request, p.Request)


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner,
                                                                 max_size=3),
    max_leaves=8,
)


@st.composite
def _near_miss_requests(draw: st.DrawFn) -> list[bytes]:
    """Well-framed requests whose bodies mix real field names with random JSON values."""
    type_ = draw(st.sampled_from(sorted(p.REQUEST_TYPES)))
    names = [f.name for f in msgspec.structs.fields(p.REQUEST_TYPES[type_])] + ["extra"]
    body = draw(st.dictionaries(st.sampled_from(names), _JSON, max_size=4))
    raw = json.dumps(body).encode()
    if draw(st.booleans()):
        cut = draw(st.integers(min_value=0, max_value=len(raw)))
        raw = raw[:cut] + draw(st.binary(max_size=4))
    return [p.VERSION, RID, type_.encode(), raw]


@settings(max_examples=400)
@given(_near_miss_requests())
def test_near_miss_requests_raise_only_protocol_error(frames: list[bytes]) -> None:
    try:
        rid, request = p.decode_request(frames)
    except ProtocolError as err:
        assert err.status == Status.BAD_REQUEST
        assert err.request_id == RID
        return
    # whatever the codec accepts, it can encode again unchanged
    assert p.decode_request(p.encode_request(rid, request)) == (rid, request)


@pytest.mark.parametrize("body", [
    b'{"name":"dup","name":"dup2","password":"pw"}',   # repeated key: which one wins?
    b'{"name":"x","password":"pw","extra":NaN}',
    b'{"name":"x","password":Infinity}',
])
def test_repeated_keys_and_non_json_constants_are_400(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        p.decode_request([p.VERSION, RID, b"REGISTER", body])
    assert (info.value.status, info.value.request_id) == (Status.BAD_REQUEST, RID)
    assert "not valid JSON" in info.value.reason
