"""The wire held byte for byte: golden frames recorded from the codec of main before its
rewrite on msgspec (issue 15: zchat/protocol.py then, zchat/wire/ now), in
tests/data/golden_frames.json (scripts/record_golden_frames.py;
docs/design.md, "Golden frames").

For every golden case the encoder writes exactly the recorded frames and the decoder gives
back the value; every accepted input decodes to its recorded value; every refused input is
refused with the recorded exception class and status (and, for a request, the request id
its ERROR reply echoes); the reason's wording is not held. Every message type of the
codec's registries must have golden cases, with its optional fields set and at their
defaults, and every Literal value. Values are rebuilt from the file's JSON through the
classes' constructors only, never through the codec under test.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Literal

import pytest

from zchat import wire as p
from zchat.errors import ProtocolError

DATA = Path(__file__).resolve().parent / "data" / "golden_frames.json"
GOLDEN: dict[str, Any] = json.loads(DATA.read_text(encoding="utf-8"))
CASES: list[dict[str, Any]] = GOLDEN["cases"]
ACCEPTED: list[dict[str, Any]] = GOLDEN["accepted"]
REFUSED: list[dict[str, Any]] = GOLDEN["refused"]
REFUSED_VALUES: list[dict[str, Any]] = GOLDEN["refused_values"]


# -- the file's shapes --------------------------------------------------------------------


def frame(spec: Any) -> bytes:
    """A frame of the file: hex, or {prefix, repeat, times, suffix} for a large one."""
    if isinstance(spec, str):
        return bytes.fromhex(spec)
    return (bytes.fromhex(spec["prefix"]) + bytes.fromhex(spec["repeat"]) * spec["times"]
            + bytes.fromhex(spec["suffix"]))


def frames_of(case: dict[str, Any]) -> list[bytes]:
    return [frame(f) for f in case["frames"]]


def message_class(name: str) -> type:
    cls = getattr(p, name, None)
    assert isinstance(cls, type), f"zchat.wire has no message class {name}"
    return cls


def build(cls: type, fields: dict[str, Any]) -> Any:
    """The value of ``cls`` with these JSON fields, through its constructor only: nested
    objects become their annotated classes, lists tuples, and {"repeat": c, "times": n} in
    a str field the string of n c's."""
    hints = typing.get_type_hints(cls)
    return cls(**{name: _build(hints[name], v) for name, v in fields.items()})


def _build(tp: Any, v: Any) -> Any:
    if v is None:
        return None
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        return _build(next(a for a in args if a is not type(None)), v)
    if origin is tuple:
        return tuple(_build(args[0], x) for x in v)
    if tp is str and isinstance(v, dict):
        return v["repeat"] * v["times"]
    if isinstance(v, dict):
        return build(tp, v)
    return v


def decode(decoder: str, frames: list[bytes], pending_class: str | None) -> tuple[bytes, Any]:
    """``frames`` through the named decoder; for decode_from_broker, ``pending_class`` is
    the reply type pending under the frames' request id."""
    if decoder == "decode_request":
        return p.decode_request(frames)
    if decoder == "decode_from_broker":
        pending = {frames[1]: message_class(pending_class)} if pending_class else {}
        return p.decode_from_broker(frames, pending)
    assert decoder == "decode_event", decoder
    return b"", p.decode_event(frames)


def encode(case: dict[str, Any], value: Any) -> list[bytes]:
    """``value`` through the public encoder of the case's channel."""
    channel = case["channel"]
    if channel == "request":
        return p.encode_request(bytes.fromhex(case["request_id"]), value)
    if channel == "reply":
        return p.encode_reply(bytes.fromhex(case["request_id"]), value)
    if channel == "push":
        return p.encode_push(value)
    assert channel == "event", channel
    return p.encode_event(bytes.fromhex(case["topic"]), value)


DECODER_OF = {"request": "decode_request", "reply": "decode_from_broker",
              "push": "decode_from_broker", "event": "decode_event"}


CHANNELS = ("request", "reply", "push", "event")


def _of(cases: list[dict[str, Any]], channel: str) -> list[dict[str, Any]]:
    """The cases of one channel: named "<channel>/...", "accept/<channel>/..." or
    "refuse/<channel>/..."."""
    picked = [c for c in cases if channel in c["name"].split("/")[:2]]
    assert picked, channel
    return picked


def _check_each(cases: list[dict[str, Any]], check: Any) -> None:
    """Run ``check(case)`` on every case and fail once, naming every case that failed
    and why (a codec rewrite that breaks one rule usually breaks many cases)."""
    failures = []
    for case in cases:
        try:
            check(case)
        except Exception as exc:  # an assertion, or the codec raising where it must not
            first_line = (str(exc).splitlines() or [""])[0]
            failures.append(f"{case['name']}: {type(exc).__name__}: {first_line[:900]}")
    assert not failures, f"{len(failures)} of {len(cases)} cases:\n" + "\n".join(failures)


def _short(v: Any) -> str:
    text = repr(v)
    return text if len(text) <= 400 else text[:400] + "..."


# -- the file matches today's protocol ----------------------------------------------------


def test_the_golden_frames_are_of_this_protocol_version_and_limits() -> None:
    """New golden frames go with a new protocol version (docs/PROTOCOL.md §13); the
    refused inputs at a limit are recorded against these limits."""
    assert GOLDEN["version"] == p.VERSION.decode()
    assert GOLDEN["limits"] == {name: getattr(p, name) for name in GOLDEN["limits"]}


def test_topics_are_the_recorded_bytes() -> None:
    topics = GOLDEN["topics"]
    assert p.room_topic("café").hex() == topics["room_topic('café')"]
    assert p.presence_topic("李雷").hex() == topics["presence_topic('李雷')"]
    assert p.TOPIC_TICK.hex() == topics["TOPIC_TICK"]
    assert p.TOPIC_BROKER.hex() == topics["TOPIC_BROKER"]


def test_names_are_unique() -> None:
    names = [c["name"] for c in CASES + ACCEPTED + REFUSED + REFUSED_VALUES]
    assert len(names) == len(set(names))


# -- golden cases: encoder and decoder ----------------------------------------------------


def _check_golden(case: dict[str, Any]) -> None:
    cls = message_class(case["class"])
    value = build(cls, case["fields"])
    frames = frames_of(case)
    assert frames[-1].decode() == case["body"], "the readable body is not the frame's"
    assert case["type"] == value.TYPE, value.TYPE
    written = encode(case, value)
    assert written == frames, f"written {_short(written)}, recorded {_short(frames)}"
    pending = case["class"] if case["channel"] == "reply" else None
    request_id, back = decode(DECODER_OF[case["channel"]], frames, pending)
    assert back == value and type(back) is cls, f"read back {_short(back)}"
    assert request_id == (frames[1] if case["channel"] in ("request", "reply") else b"")


@pytest.mark.parametrize("channel", CHANNELS)
def test_golden_cases_are_written_as_recorded_and_read_back(channel: str) -> None:
    _check_each(_of(CASES, channel), _check_golden)


# -- accepted and refused inputs ----------------------------------------------------------


def _check_accepted(case: dict[str, Any]) -> None:
    cls = message_class(case["class"])
    _request_id, back = decode(case["decoder"], frames_of(case), case.get("pending"))
    assert back == build(cls, case["fields"]) and type(back) is cls, f"read {_short(back)}"


@pytest.mark.parametrize("channel", CHANNELS)
def test_accepted_inputs_decode_to_their_values(channel: str) -> None:
    _check_each(_of(ACCEPTED, channel), _check_accepted)


def _check_refused_error(exc: BaseException, error: dict[str, Any]) -> None:
    assert type(exc).__name__ == error["class"], f"raised {exc!r}, recorded {error['class']}"
    assert isinstance(exc, ProtocolError)
    assert int(exc.status) == error["status"], f"status {int(exc.status)} {exc.reason!r}, " \
        f"recorded {error['status']}"
    if "request_id" in error:  # echoed by the ERROR reply (docs/PROTOCOL.md §3.2)
        assert exc.request_id == bytes.fromhex(error["request_id"]), exc.request_id
    assert exc.reason, "no reason"  # one a person can read; its wording is not held


def _check_refused(case: dict[str, Any]) -> None:
    try:
        got = decode(case["decoder"], frames_of(case), case.get("pending"))
    except Exception as exc:
        _check_refused_error(exc, case["error"])
    else:
        raise AssertionError(f"accepted as {_short(got)}")


@pytest.mark.parametrize("channel", CHANNELS)
def test_refused_inputs_get_their_status(channel: str) -> None:
    _check_each(_of(REFUSED, channel), _check_refused)


def _check_refused_value(case: dict[str, Any]) -> None:
    value = build(message_class(case["class"]), json.loads(case["fields_json"]))
    try:
        got = encode({"request_id": "72", "topic": "", **case}, value)
    except Exception as exc:
        _check_refused_error(exc, case["error"])
    else:
        raise AssertionError(f"written as {_short(got)}")


def test_values_holding_text_that_is_not_unicode_are_not_encoded() -> None:
    """A lone surrogate (a command-line argument that was not UTF-8) is refused by the
    encoder with 400 on every channel, nested and in the fast paths too."""
    _check_each(REFUSED_VALUES, _check_refused_value)


# -- coverage: every type, every optional field, every Literal value -----------------------


def registered() -> dict[str, set[type]]:
    """The codec's message classes by channel, from its registries."""
    requests = set(p.REQUEST_TYPES.values())
    replies = {cls.REPLY for cls in requests} | {p.Error} | {
        c for c in p.Reply.__subclasses__() if getattr(p, c.__name__, None) is c}
    return {"request": requests, "reply": replies, "push": set(p.PUSH_TYPES.values()),
            "event": set(p.EVENT_TYPES.values())}


def test_every_registered_type_has_golden_cases() -> None:
    """A type added to the registries fails here until golden cases are recorded for it."""
    for channel, classes in registered().items():
        covered = {message_class(c["class"]) for c in CASES if c["channel"] == channel}
        missing = sorted(c.__name__ for c in classes - covered)
        assert not missing, f"{channel} types without a golden case: {missing}"


def test_every_golden_case_is_of_a_registered_type() -> None:
    """A type dropped from a registry (or moved to another channel) fails here."""
    for channel, classes in registered().items():
        recorded = {message_class(c["class"]) for c in CASES if c["channel"] == channel}
        extra = sorted(c.__name__ for c in recorded - classes)
        assert not extra, f"golden {channel} cases of unregistered types: {extra}"


def _fields(cls: type) -> dict[str, Any]:
    """The annotated type of each field of ``cls`` (its constructor's parameters)."""
    hints = typing.get_type_hints(cls)
    return {name: hints[name] for name in inspect.signature(cls).parameters}


def _nested(cls: type) -> Iterator[tuple[str, type]]:
    """(field, class) of the message values nested in ``cls``'s fields (RoomState, ...)."""
    for name, tp in _fields(cls).items():
        for arg in (tp, *typing.get_args(tp)):
            if isinstance(arg, type) and arg.__module__.split(".")[0] == "zchat":
                yield name, arg


def _instances(value: Any) -> Iterator[Any]:
    """``value`` and every message value nested in it."""
    yield value
    for name, _cls in _nested(type(value)):
        inner = getattr(value, name)
        for item in inner if isinstance(inner, tuple) else (inner,):
            if item is not None:
                yield from _instances(item)


def _all_classes() -> set[type]:
    found: set[type] = set()
    todo = [cls for classes in registered().values() for cls in classes]
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.add(cls)
            todo.extend(inner for _name, inner in _nested(cls))
    return found


def _golden_instances() -> dict[type, list[Any]]:
    by_class: dict[type, list[Any]] = {}
    for case in CASES:
        for value in _instances(build(message_class(case["class"]), case["fields"])):
            by_class.setdefault(type(value), []).append(value)
    return by_class


def test_every_type_has_golden_cases_with_optional_fields_set_and_at_defaults() -> None:
    """Nested values (RoomState, BanInfo, ...) included."""
    instances = _golden_instances()
    for cls in _all_classes():
        optional = {name: param.default
                    for name, param in inspect.signature(cls).parameters.items()
                    if param.default is not inspect.Parameter.empty}
        values = instances.get(cls, [])
        assert values, f"{cls.__name__} appears in no golden case"
        assert any(all(getattr(v, n) == d for n, d in optional.items()) for v in values), \
            f"{cls.__name__}: no golden case with every optional field at its default"
        assert any(all(getattr(v, n) != d for n, d in optional.items()) for v in values), \
            f"{cls.__name__}: no golden case with every optional field set"


def test_every_literal_value_has_a_golden_case() -> None:
    instances = _golden_instances()
    for cls in _all_classes():
        for name, tp in _fields(cls).items():
            if typing.get_origin(tp) is not Literal:
                continue
            seen = {getattr(v, name) for v in instances.get(cls, [])}
            missing = set(typing.get_args(tp)) - seen
            assert not missing, f"{cls.__name__}.{name}: no golden case with {sorted(missing)}"


def _at(value: Any, bound: int) -> bool:
    if isinstance(value, tuple):
        return bool(value) and all(x == bound for x in value)
    return bool(value == bound)


def test_every_type_has_golden_cases_at_the_64_bit_bounds() -> None:
    """Every class with integer fields has a golden case with all of them at 2**63 - 1,
    and one with all at -2**63 (§9)."""
    instances = _golden_instances()
    for cls in _all_classes():
        ints = [name for name, tp in _fields(cls).items()
                if tp is int or int in typing.get_args(tp)]
        if not ints:
            continue
        for bound in (p.MAX_WIRE_INT, p.MIN_WIRE_INT):
            assert any(all(_at(getattr(v, n), bound) for n in ints)
                       for v in instances.get(cls, [])), f"{cls.__name__}: none at {bound}"
