#!/usr/bin/env python3
"""Record the golden frames of the ZCHAT/1 codec into tests/data/golden_frames.json.

The golden frames are the wire as today's codec (zchat/wire/) writes and reads it; the file
in the repository was recorded from zchat/protocol.py, the hand-written codec before issue 15,
and the codec on msgspec records the same file (``--check``):

- ``cases``: for every request, reply, push and event type of the codec's own registries,
  values with every optional field at its default and with every one set, every Literal
  value, integers at the signed 64-bit bounds, empty and non-empty lists, non-ASCII text
  and every character JSON escapes; each with the frames the public encoder writes;
- ``accepted``: frames no encoder writes that the decoders take, with the value they give
  (defaults left out, keys reordered, whitespace and ``\\u`` escapes, an empty body, fields
  a newer broker may add, fields the codec lets through for the broker core to bound);
- ``refused``: bad frames, each with the exception class, status and echoed request id
  today's decoder gives;
- ``refused_values``: values the encoder refuses (text that is not valid Unicode).

tests/test_wire_golden_frames.py holds the codec to this file. Run this script again only
when the wire is meant to change: a new protocol version, or an additive change that
docs/PROTOCOL.md §13 allows without one (docs/design.md, "Golden frames"); ``--check``
says whether the file is what the codec records now, without writing.
"""

from __future__ import annotations

import argparse
import inspect
import itertools
import json
import subprocess
import sys
import types
import typing
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

from zchat import wire as p
from zchat.errors import ProtocolError

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "golden_frames.json"

RID = b"0f3c5e1a9b2d4c6e8f0a1b2c3d4e5f60"  # 32 bytes, a UUID in hex: the usual request id
T0 = 1_717_171_717_123  # UTC ms

#: Every character JSON escapes or that is easy to get wrong: quote, backslash, slash, the
#: control characters, DEL and C1 (not escaped), line and paragraph separators (not
#: escaped), BOM, non-characters, the last code point, a combining accent, a ZWJ sequence.
ESCAPES = ('"\\/\b\f\n\r\t\x00\x01\x1f\x7f\x80\x9f\xa0\u2028\u2029\ufeff\ufffd\uffff'
           "\U0010ffff e\u0301 👩\u200d💻 中文 🎉 {\"room\":1}")

#: Realistic strings by field name: ASCII ones for the minimal values, non-ASCII (CJK,
#: accents, emoji) for the full ones. A field not listed gets its own name.
STR_MINIMAL = {
    "room": "dev", "name": "alice", "sender": "alice", "to": "bob", "peer": "bob",
    "by": "root", "text": "hi", "topic": "release on friday", "reason": "spam",
    "password": "correct horse", "token": "Zm9vYmFyYmF6cXV4LXRva2VuLTQzLWNoYXJhY3RlcnM",
    "session": "s-5f1e", "pub": "tcp://127.0.0.1:5556", "label": "ci", "cmid": "c-0001",
    "address": "192.0.2.7", "actor": "root", "target": "eve", "action": "kick",
    "detail": "#7", "old": "old pass", "new": "new pass", "deleted_by": "root",
}
STR_FULL = {
    "room": "café", "name": "Zoë", "sender": "李雷", "to": "Zoë", "peer": "李雷",
    "by": "Ólafur", "text": "晚上好 🌙 — “quoted” | a:b", "topic": "☕ only | https://example.org/a:b",
    "reason": "спам 🚫", "password": "pässwörd ✓", "session": "s-5f1e-ü",
    "label": "deploy bot on ci-3 ✓", "cmid": "c-0001-é", "address": "2001:db8::7",
    "actor": "Zoë", "target": "李雷", "action": "kick", "detail": "#7: a rude one 😠",
    "old": "old ✓", "new": "new pässwörd", "deleted_by": "Zoë", "token": "tök-🎟",
}
#: Realistic integers by field name, minimal and full; any other int field gets 7 and 8.
INT_MINIMAL = {"time": T0, "created": T0, "login_time": T0 - 60_000, "last_seen": T0,
               "status": 404, "version": 1, "heartbeat_interval_ms": 10_000,
               "heartbeat_timeout_ms": 30_000, "max_text_bytes": 4000, "seq": 7,
               "last_seq": 7, "id": 41, "seconds": 30, "quota_bytes": 0, "upto": 7}
INT_FULL = {"retry_after_ms": 1500, "max_text_lines": 50, "min_password_chars": 8,
            "slow_mode_s": p.MAX_SLOW_MODE_S, "first_seq": 101, "unread": 3, "mentions": 2,
            "last": 9, "sessions": 2, "stored_bytes": 12_345_678,
            "quota_bytes": p.MAX_STORAGE_QUOTA_BYTES, "until": T0 + 3_600_000,
            "limit": p.MAX_HISTORY_LIMIT, "before": 120, "after": 0,
            "duration_s": p.MAX_BAN_S, "members": 3, "read_seq": 5, "read_id": 40,
            "last_id": 41, "seconds": p.MAX_SLOW_MODE_S}

Mode = Literal["minimal", "full", "int-max", "int-min"]


# -- the registries ---------------------------------------------------------------------


def registered() -> dict[str, list[type]]:
    """The codec's message classes by channel, from its own registries: requests
    (REQUEST_TYPES), replies (every request's REPLY, every exported Reply and Error),
    pushes (PUSH_TYPES) and events (EVENT_TYPES)."""
    requests = list(p.REQUEST_TYPES.values())
    replies = {cls.REPLY for cls in requests} | {p.Error} | {
        c for c in p.Reply.__subclasses__() if getattr(p, c.__name__, None) is c}
    return {
        "request": requests,
        "reply": sorted(replies, key=lambda c: c.__name__),
        "push": list(p.PUSH_TYPES.values()),
        "event": list(p.EVENT_TYPES.values()),
    }


# Message values are read through their constructors' signatures and attributes only, so
# that this script runs on any shape of message class (dataclass or otherwise).

#: A field without a default.
REQUIRED: Any = inspect.Parameter.empty


def _fields(cls: type) -> dict[str, tuple[Any, Any]]:
    """``cls``'s fields in order: name -> (annotated type, default or REQUIRED)."""
    hints = typing.get_type_hints(cls)
    return {name: (hints[name], param.default)
            for name, param in inspect.signature(cls).parameters.items()}


def _is_value_class(tp: Any) -> bool:
    """A message value class (nested ones such as RoomState included)."""
    return isinstance(tp, type) and tp.__module__.split(".")[0] == "zchat"


def _as_json(value: Any) -> Any:
    """A value as JSON data: message values as objects of their fields in order, tuples
    as lists."""
    if _is_value_class(type(value)):  # a field left UNSET (``p.Added``) is not written
        return {name: _as_json(getattr(value, name)) for name in _fields(type(value))
                if getattr(value, name) is not p.UNSET}
    if isinstance(value, tuple):
        return [_as_json(v) for v in value]
    return value


def _replace(value: Any, **changes: Any) -> Any:
    """``value`` with some fields changed (as dataclasses.replace)."""
    fields = {name: getattr(value, name) for name in _fields(type(value))}
    return type(value)(**{**fields, **changes})


def _has_int(cls: type, seen: frozenset[type] = frozenset()) -> bool:
    for tp, _default in _fields(cls).values():
        for arg in (tp, *typing.get_args(tp)):
            if arg is int or (_is_value_class(arg) and arg not in seen
                              and _has_int(arg, seen | {cls})):
                return True
    return False


# -- values -----------------------------------------------------------------------------


def sample(cls: type, mode: Mode, override: dict[str, Any] | None = None) -> Any:
    """A value of ``cls``: ``minimal`` leaves every optional field at its default; ``full``
    sets every one to something else; ``int-max``/``int-min`` set every integer, nested
    ones too, to the signed 64-bit bound."""
    kwargs: dict[str, Any] = {}
    for name, (tp, default) in _fields(cls).items():
        if default is not REQUIRED and mode == "minimal":
            continue
        kwargs[name] = _sample_field(tp, mode, name, default)
    kwargs.update(override or {})
    return cls(**kwargs)


def _sample_field(tp: Any, mode: Mode, name: str, default: Any) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is typing.Union or origin is types.UnionType:
        inner = [a for a in args if a is not type(None)]
        if mode == "minimal":
            return None
        return _sample_field(inner[0], mode, name, default)
    if origin is Literal:
        choices = [a for a in args if a != default]
        return choices[0] if mode == "minimal" else choices[-1]
    if origin is tuple:
        item = args[0]
        if mode == "minimal":
            return ()
        if _is_value_class(item):
            if mode == "full":
                return (sample(item, "full"), sample(item, "minimal"))
            return (sample(item, mode),)
        if mode == "full":
            return (_sample_field(item, "minimal", name, REQUIRED),
                    _sample_field(item, "full", name, REQUIRED))
        return (_sample_field(item, mode, name, REQUIRED),)
    if _is_value_class(tp):
        return sample(tp, mode)
    if tp is bool:  # an optional one is never at its default here
        return mode == "full" if default is REQUIRED else not default
    if tp is int:
        if mode == "int-max":
            return p.MAX_WIRE_INT
        if mode == "int-min":
            return p.MIN_WIRE_INT
        value = INT_FULL.get(name, 8) if mode == "full" else INT_MINIMAL.get(name, 7)
        if value == default:
            value = INT_MINIMAL.get(name, 7) if mode == "full" else value
        return value
    if tp is str:
        if mode == "full":
            return STR_FULL.get(name, f"{name} ✓ 中文 🎉")
        return STR_MINIMAL.get(name, name)
    raise TypeError(f"no sample for {tp!r} (field {name}): teach this script the type")


def _literal_fields(cls: type) -> Iterator[tuple[str, tuple[Any, ...]]]:
    """(field, allowed values) of the Literal fields of ``cls``."""
    for name, (tp, _default) in _fields(cls).items():
        if typing.get_origin(tp) is Literal:
            yield name, typing.get_args(tp)


def _nested_with_literals(cls: type) -> Iterator[tuple[str, type]]:
    """(field, class) of the tuple fields of ``cls`` whose items have Literal fields."""
    for name, (tp, _default) in _fields(cls).items():
        args = typing.get_args(tp)
        if typing.get_origin(tp) is tuple and _is_value_class(args[0]) \
                and any(_literal_fields(args[0])):
            yield name, args[0]


#: Extra values beyond what ``sample`` makes: every character JSON escapes in each text a
#: person types, pages of several messages, one of them deleted.
def extra_values() -> dict[str, list[tuple[str, Any]]]:
    msg = p.MessagePosted(room="café", seq=7, time=T0, sender="Zoë", text="naïve — a:b")
    dm = p.DirectMessage(id=41, time=T0, sender="Zoë", to="李雷", text="你好, 世界 🌙")
    return {
        "request": [
            ("escapes", p.Send(room="café", text=ESCAPES, cmid=ESCAPES[:8])),
            ("escapes", p.SendDirect(to="李雷", text=ESCAPES)),
            ("escapes", p.SetTopic(room="café", topic=ESCAPES)),
            ("escapes", p.Logout(text=ESCAPES)),
            ("escapes", p.Register(name="Zoë", password=ESCAPES)),
            ("history-limits", p.FetchHistory(room="dev", before=None, after=0, limit=1)),
            ("ack-many", p.AckDirect(ids=tuple(range(1, 21)))),
            ("one-byte-request-id", p.Ping()),
            ("binary-request-id", p.Ping()),
        ],
        "reply": [
            ("escapes", p.Error(status=400, reason=ESCAPES)),
            ("escapes", p.Sent(room=ESCAPES, seq=1, time=0)),
            ("three-messages", p.HistoryPage(room="café", messages=(
                msg, _replace(msg, seq=8, kind="action", text="dances 💃"),
                _replace(msg, seq=9, text="", deleted_by="root")))),
            ("escapes", p.HistoryPage(room="café", messages=(
                _replace(msg, text=ESCAPES, sender=ESCAPES),))),
            ("dm-page", p.DmHistoryPage(peer="李雷", messages=(
                dm, _replace(dm, id=42, sender="李雷", to="Zoë", text=ESCAPES)))),
            ("no-session-three-rooms", p.Pong(time=T0, rooms=(
                p.RoomState(room="café", last_seq=8, topic=ESCAPES),
                p.RoomState(room="dev", last_seq=0),
                p.RoomState(room="news", last_seq=p.MAX_WIRE_INT, slow_mode_s=30,
                            private=True, locked=True)), session="")),
            ("not-listed", p.Pong(time=T0, rooms=(), session="s-5f1e", listed=False)),
            ("domain-bounds", p.QuotaSet(name="ada", quota_bytes=p.MAX_STORAGE_QUOTA_BYTES,
                                         default=True, stored_bytes=0)),
        ],
        "push": [
            ("escapes", _replace(dm, text=ESCAPES)),
            ("escapes", p.SessionClosed(reason=ESCAPES, by="root", time=T0)),
        ],
        "event": [
            ("escapes", _replace(msg, text=ESCAPES, sender="Zoë")),
            ("deleted", _replace(msg, text="", deleted_by="Zoë")),
            ("escapes", p.GoingAway(text=ESCAPES, time=T0)),
            ("escapes", p.TopicChanged(room="café", topic=ESCAPES, by="Zoë", time=T0)),
        ],
    }


def request_id_of(label: str) -> bytes:
    return {"one-byte-request-id": b"r",
            "binary-request-id": b"\x00\xff" + bytes(range(0x80, 0x9e))}.get(label, RID)


def topic_of(value: Any) -> bytes:
    """The topic the broker publishes ``value`` on (docs/PROTOCOL.md §5)."""
    if isinstance(value, p.Tick):
        return p.TOPIC_TICK
    if isinstance(value, p.GoingAway):
        return p.TOPIC_BROKER
    if isinstance(value, p.PresenceChanged):
        return p.presence_topic(value.name.casefold())
    return p.room_topic(value.room.casefold())


# -- encoding ---------------------------------------------------------------------------


def encode(channel: str, value: Any, rid: bytes) -> tuple[list[bytes], list[str]]:
    """The frames of ``value`` on ``channel``, and the encoder paths that wrote them (the
    file recorded from zchat/protocol.py before issue 15 also names its fast paths, which
    wrote the same bytes). A body that is not its fields stops the recording."""
    if channel == "request":
        frames, paths = p.encode_request(rid, value), ["encode_request"]
    elif channel == "reply":
        frames, paths = p.encode_reply(rid, value), ["encode_reply"]
    elif channel == "push":
        frames, paths = p.encode_push(value), ["encode_push"]
    else:
        frames, paths = p.encode_event(topic_of(value), value), ["encode_event"]
    if json.loads(frames[-1]) != _as_json(value):
        raise SystemExit(f"the body of {value!r} is not its fields: {frames[-1]!r}")
    return frames, paths


def decode(decoder: str, frames: list[bytes], pending: dict[bytes, type]) -> tuple[bytes, Any]:
    if decoder == "decode_request":
        return p.decode_request(frames)
    if decoder == "decode_from_broker":
        return p.decode_from_broker(frames, pending)
    return b"", p.decode_event(frames)


DECODER_OF = {"request": "decode_request", "reply": "decode_from_broker",
              "push": "decode_from_broker", "event": "decode_event"}


# -- the JSON file's shapes -------------------------------------------------------------


class Big(NamedTuple):
    """A frame too large to write out: ``prefix``, ``unit`` repeated ``times``, ``suffix``."""

    prefix: bytes
    unit: bytes
    times: int
    suffix: bytes = b""

    def bytes(self) -> bytes:
        return self.prefix + self.unit * self.times + self.suffix


Frame = bytes | Big


#: Frames and strings longer than this are written as a repeated unit when they hold one.
LONG = 1000


def frame_json(frame: Frame) -> Any:
    """A frame as hex; a long one as {prefix, repeat, times, suffix} (all hex but times)
    when it is mostly one byte repeated."""
    if isinstance(frame, bytes) and len(frame) > LONG:
        run, start, byte, pos = 0, 0, 0, 0
        for b, group in itertools.groupby(frame):
            n = sum(1 for _ in group)
            if n > run:
                run, start, byte = n, pos, b
            pos += n
        if run > LONG // 2:
            frame = Big(frame[:start], bytes([byte]), run, frame[start + run:])
    if isinstance(frame, Big):
        return {"prefix": frame.prefix.hex(), "repeat": frame.unit.hex(),
                "times": frame.times, "suffix": frame.suffix.hex()}
    return frame.hex()


def fields_json(value: Any) -> dict[str, Any]:
    """A value's fields as JSON; a long string of one character repeated written as
    {"repeat": character, "times": count}."""
    return _shorten(_as_json(value))


def _shorten(data: Any) -> Any:
    if isinstance(data, dict):
        return {k: _shorten(v) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [_shorten(v) for v in data]
    if isinstance(data, str) and len(data) > LONG and data == data[0] * len(data):
        return {"repeat": data[0], "times": len(data)}
    return data


def _strip_defaults(cls: type, data: dict[str, Any]) -> dict[str, Any]:
    """``data`` (a value's fields as JSON) without the fields at their default, nested
    too."""
    out = {}
    for name, (tp, default) in _fields(cls).items():
        if name not in data:  # left UNSET (``p.Added``): not written
            continue
        v = data[name]
        if default is not REQUIRED and v == _as_json(default):
            continue
        if typing.get_origin(tp) is tuple and _is_value_class(typing.get_args(tp)[0]):
            v = [_strip_defaults(typing.get_args(tp)[0], x) for x in v]
        out[name] = v
    return out


def _reversed_keys(cls: type, data: dict[str, Any], extra: Any = None) -> dict[str, Any]:
    """``data`` with its keys in reverse order, nested objects too; with ``extra`` an
    unknown field ``added_later`` in every object (a newer broker's field, §13)."""
    types_ = {name: tp for name, (tp, _default) in _fields(cls).items()}
    out: dict[str, Any] = {}
    if extra is not None:
        out["added_later"] = extra
    for name in reversed(list(data)):
        v = data[name]
        tp = types_[name]
        if typing.get_origin(tp) is tuple and _is_value_class(typing.get_args(tp)[0]):
            v = [_reversed_keys(typing.get_args(tp)[0], x, extra) for x in v]
        out[name] = v
    return out


# -- recording --------------------------------------------------------------------------


def golden_cases() -> list[tuple[dict[str, Any], Any]]:
    """The golden cases, each with the value it was recorded from."""
    cases: list[tuple[dict[str, Any], Any]] = []
    names: set[str] = set()

    def add(channel: str, label: str, value: Any) -> None:
        name = f"{channel}/{type(value).__name__}/{label}"
        if name in names:
            raise SystemExit(f"two golden cases named {name}")
        names.add(name)
        rid = request_id_of(label)
        frames, paths = encode(channel, value, rid)
        pending = {rid: type(value)} if channel == "reply" else {}
        got_rid, back = decode(DECODER_OF[channel], frames, pending)
        if back != value or type(back) is not type(value):
            raise SystemExit(f"{name} does not decode to its value: {back!r}")
        case: dict[str, Any] = {
            "name": name, "channel": channel, "class": type(value).__name__,
            "type": value.TYPE, "fields": fields_json(value),
            "frames": [f.hex() for f in frames], "body": frames[-1].decode(),
            "paths": paths,
        }
        if channel in ("request", "reply"):
            case["request_id"] = rid.hex()
        if channel == "event":
            case["topic"] = frames[0].hex()
        cases.append((case, value))

    for channel, classes in registered().items():
        for cls in classes:
            seen: list[Any] = []
            modes: list[Mode] = ["minimal", "full"]
            if _has_int(cls):
                modes += ["int-max", "int-min"]
            for mode in modes:
                value = sample(cls, mode)
                if value not in seen:
                    seen.append(value)
                    add(channel, mode, value)
            for field_name, choices in _literal_fields(cls):
                for choice in choices:
                    if not any(getattr(v, field_name) == choice for v in seen):
                        value = sample(cls, "minimal", {field_name: choice})
                        seen.append(value)
                        add(channel, f"{field_name}-{choice}", value)
            for field_name, inner in _nested_with_literals(cls):
                add(channel, f"{field_name}-every-literal", sample(cls, "minimal", {
                    field_name: tuple(sample(inner, "minimal", {lf: choice})
                                      for lf, choices in _literal_fields(inner)
                                      for choice in choices)}))
        for label, value in extra_values()[channel]:
            add(channel, label, value)
    return cases


def accepted_cases(cases: list[tuple[dict[str, Any], Any]]) -> list[dict[str, Any]]:
    """Frames the decoders take that no encoder writes, with the value they give."""
    out: list[dict[str, Any]] = []

    def add(name: str, decoder: str, frames: Sequence[Frame], value: Any,
            pending: str | None = None,
            note: str = "") -> None:
        raw = [f.bytes() if isinstance(f, Big) else f for f in frames]
        pend = {raw[1]: getattr(p, pending)} if pending else {}
        rid, back = decode(decoder, raw, pend)
        if back != value or type(back) is not type(value):
            raise SystemExit(f"accepted case {name} decodes to {back!r}, not {value!r}")
        case = {"name": name, "decoder": decoder, "frames": [frame_json(f) for f in frames],
                "class": type(value).__name__, "fields": fields_json(value)}
        if pending:
            case["pending"] = pending
        if note:
            case["note"] = note
        out.append(case)

    for case, value in cases:
        cls = type(value)
        frames = [bytes.fromhex(f) for f in case["frames"]]
        decoder = DECODER_OF[case["channel"]]
        pending = case["class"] if case["channel"] == "reply" else None
        label = case["name"].rsplit("/", 1)[1]
        if label == "minimal":
            sparse = _strip_defaults(cls, case["fields"])
            if sparse != case["fields"]:
                body = json.dumps(sparse, ensure_ascii=False, separators=(",", ":")).encode()
                add(f"accept/{case['name']}/defaults-left-out", decoder, [*frames[:-1], body], value,
                    pending)
            if not sparse:
                add(f"accept/{case['name']}/empty-body", decoder, [*frames[:-1], b""], value,
                    pending, "an empty body frame is read as {} (docs/PROTOCOL.md §3)")
        if label == "full":
            spaced = json.dumps(_reversed_keys(cls, case["fields"]), ensure_ascii=True,
                                indent=1).encode()
            add(f"accept/{case['name']}/keys-reversed-spaced-ascii-escaped", decoder,
                [*frames[:-1], b" \r\n\t" + spaced + b"\r\n\t "], value, pending)
            if case["channel"] != "request":
                newer = json.dumps(_reversed_keys(cls, case["fields"], {"x": [1, 2.5, None, "ü"]}),
                                   ensure_ascii=False, separators=(",", ":")).encode()
                add(f"accept/{case['name']}/unknown-fields-ignored", decoder, [*frames[:-1], newer],
                    value, pending, "clients ignore fields they do not know (§13), nested too")

    def req(type_: bytes, body: bytes | Big, rid: bytes = RID) -> list[Frame]:
        return [p.VERSION, rid, type_, body]

    ok = "the codec takes it; the broker core bounds it (and answers"
    hand: list[tuple[str, str, list[Frame], Any, str | None, str]] = [
        ("request/valid-surrogate-pair-escape", "decode_request",
         req(b"SEND", b'{"room":"x","text":"\\ud83d\\ude00 \\u00E9\\u00e9 \\/"}'),
         p.Send(room="x", text="😀 éé /"), None, "a \\u pair is one code point; upper or lower hex"),
        ("request/nul-escape", "decode_request", req(b"SEND", b'{"room":"x","text":"a\\u0000b"}'),
         p.Send(room="x", text="a\x00b"), None,
         "the codec lets control characters through; the broker's text rule answers 422 (§12)"),
        ("request/minus-zero", "decode_request", req(b"HISTORY", b'{"room":"x","limit":-0}'),
         p.FetchHistory(room="x", limit=0), None, f"{ok} 400 for limit 0)"),
        ("request/null-for-nullable-required", "decode_request",
         req(b"ADMIN_SET_QUOTA", b'{"name":"eve","quota_bytes":null}'),
         p.SetQuota(name="eve", quota_bytes=None), None, ""),
        ("request/nulls-for-optionals", "decode_request",
         req(b"SET_ROOM", b'{"room":"x","private":null,"locked":null}'),
         p.SetRoom(room="x"), None, ""),
        ("request/null-room-who", "decode_request", req(b"WHO", b'{"room":null}'), p.Who(), None, ""),
        ("request/one-byte-request-id", "decode_request", req(b"PING", b"{}", b"\x00"), p.Ping(),
         None, ""),
        ("request/body-exactly-at-limit", "decode_request",
         req(b"SEND", Big(b'{"room":"x","text":"', b"a",
                          p.MAX_BODY_BYTES - len(b'{"room":"x","text":""}'), b'"}')),
         p.Send(room="x", text="a" * (p.MAX_BODY_BYTES - len(b'{"room":"x","text":""}'))), None,
         "MAX_BODY_BYTES itself is accepted"),
        ("request/cmid-over-64-chars", "decode_request",
         req(b"SEND", b'{"room":"x","text":"hi","cmid":"' + b"c" * 65 + b'"}'),
         p.Send(room="x", text="hi", cmid="c" * 65), None, f"{ok} 400)"),
        ("request/text-over-max-text-bytes", "decode_request",
         req(b"SEND", Big(b'{"room":"x","text":"', "é".encode(), 5000, b'"}')),
         p.Send(room="x", text="é" * 5000), None, f"{ok} 413)"),
        ("request/topic-over-300-chars", "decode_request",
         req(b"SET_TOPIC", b'{"room":"x","topic":"' + b"t" * 301 + b'"}'),
         p.SetTopic(room="x", topic="t" * 301), None, f"{ok} 413)"),
        ("request/name-over-32-chars", "decode_request",
         req(b"JOIN", b'{"room":"' + b"r" * 33 + b'"}'), p.Join(room="r" * 33), None,
         f"{ok} 422)"),
        ("request/password-over-1024-chars", "decode_request",
         req(b"REGISTER", b'{"name":"a","password":"' + b"p" * 1025 + b'"}'),
         p.Register(name="a", password="p" * 1025), None, f"{ok} 413)"),
        ("request/history-limit-over-500", "decode_request",
         req(b"HISTORY", b'{"room":"x","limit":501}'), p.FetchHistory(room="x", limit=501),
         None, f"{ok} 400)"),
        ("request/history-limit-negative", "decode_request",
         req(b"HISTORY", b'{"room":"x","limit":-1}'), p.FetchHistory(room="x", limit=-1),
         None, f"{ok} 400)"),
        ("request/ack-no-ids", "decode_request", req(b"DM_ACK", b'{"ids":[]}'), p.AckDirect(ids=()),
         None, f"{ok} 400)"),
        ("request/ack-1001-ids", "decode_request",
         req(b"DM_ACK", ('{"ids":[' + ",".join(map(str, range(1, 1002))) + "]}").encode()),
         p.AckDirect(ids=tuple(range(1, 1002))), None, f"{ok} 400)"),
        ("request/slow-mode-over-a-day", "decode_request",
         req(b"SET_SLOW_MODE", b'{"room":"x","seconds":86401}'),
         p.SetSlowMode(room="x", seconds=86_401), None, f"{ok} 400)"),
        ("request/ban-over-ten-years", "decode_request",
         req(b"BAN", f'{{"name":"eve","duration_s":{p.MAX_BAN_S + 1}}}'.encode()),
         p.Ban(name="eve", duration_s=p.MAX_BAN_S + 1), None, f"{ok} 400)"),
        ("request/quota-over-1-pib", "decode_request",
         req(b"ADMIN_SET_QUOTA", b'{"name":"eve","quota_bytes":%d}' % (p.MAX_STORAGE_QUOTA_BYTES + 1)),
         p.SetQuota(name="eve", quota_bytes=p.MAX_STORAGE_QUOTA_BYTES + 1), None, f"{ok} 400)"),
        ("request/create-no-accounts", "decode_request",
         req(b"CREATE_ACCOUNTS", b'{"accounts":[]}'), p.CreateAccounts(accounts=()), None,
         f"{ok} 400)"),
        ("reply/unknown-request-id-reads-as-ok", "decode_from_broker",
         [p.VERSION, b"nobody-asked", b"OK", b'{"time":1,"anything":[1,{"a":null}]}'], p.Ok(),
         None, "a reply to no pending request is read as an empty OK; its fields are ignored"),
        ("reply/error-whatever-is-pending", "decode_from_broker",
         [p.VERSION, RID, b"ERROR", b'{"status":999,"reason":"","retry_after_ms":-5}'],
         p.Error(status=999, reason="", retry_after_ms=-5), "Sent",
         "an ERROR is read as Error whatever reply was pending; any int64 status"),
        ("reply/nested-unknown-deep", "decode_from_broker",
         [p.VERSION, RID, b"OK", b'{"time":1,"x":' + b"[" * 100 + b"]" * 100 + b"}"],
         p.Pong(time=1), "Pong", "100 levels of nesting in an unknown field are skipped"),
        ("reply/body-over-event-limit", "decode_from_broker",
         [p.VERSION, RID, b"OK", Big(b'{"name":"', b"a", p.MAX_TRANSPORT_FRAME_BYTES, b'"}')],
         p.Registered(name="a" * p.MAX_TRANSPORT_FRAME_BYTES), "Registered",
         "reply bodies may reach MAX_REPLY_BYTES (64 MiB)"),
        ("event/any-topic", "decode_event", [b"", p.VERSION, b"TICK", b'{"time":1}'],
         p.Tick(time=1), None, "decode_event does not look at the topic frame"),
        ("event/topic-of-another-room", "decode_event",
         [b"room/other/", p.VERSION, b"MESSAGE",
          b'{"room":"dev","seq":1,"time":2,"sender":"a","text":"b"}'],
         p.MessagePosted(room="dev", seq=1, time=2, sender="a", text="b"), None, ""),
        ("event/body-exactly-at-limit", "decode_event",
         [b"broker/", p.VERSION, b"GOING_AWAY",
          Big(b'{"time":1,"text":"', b"a", p.MAX_TRANSPORT_FRAME_BYTES - len(b'{"time":1,"text":""}'),
              b'"}')],
         p.GoingAway(text="a" * (p.MAX_TRANSPORT_FRAME_BYTES - len(b'{"time":1,"text":""}')),
                     time=1), None, "events may reach MAX_TRANSPORT_FRAME_BYTES"),
        ("push/unknown-field-ignored", "decode_from_broker",
         [p.VERSION, b"", b"DM", b'{"id":1,"time":2,"sender":"a","to":"b","text":"c","d":{}}'],
         p.DirectMessage(id=1, time=2, sender="a", to="b", text="c"), None, ""),
        ("reply/lone-surrogate-in-ignored-field", "decode_from_broker",
         [p.VERSION, RID, b"OK", b'{"name":"a","x":"\\udfff","y":{"\\ud800":1}}'],
         p.Registered(name="a"), "Registered",
         "Unicode is checked field by field: an ignored field is not looked at"),
        ("reply/trailing-json-whitespace", "decode_from_broker",
         [p.VERSION, RID, b"OK", b'{"room":"x","seq":1,"time":2} \t\r\n'],
         p.Sent(room="x", seq=1, time=2), "Sent", "JSON whitespace may follow the object"),
    ]
    for name, decoder, hand_frames, value, pending, note in hand:
        add(f"accept/{name}", decoder, hand_frames, value, pending, note)
    return out


def _readable(reason: str) -> str:
    """A reason for reading: a lone surrogate in it (from a peer's field name) escaped."""
    return reason.encode("utf-8", "backslashreplace").decode()


def refused_cases() -> list[dict[str, Any]]:
    """Bad frames, with the decoder's exception, status and echoed request id today."""
    out: list[dict[str, Any]] = []
    names: set[str] = set()

    def refused(name: str, decoder: str, frames: list[Frame], pending: str | None = None) -> None:
        assert name not in names, name
        names.add(name)
        raw = [f.bytes() if isinstance(f, Big) else f for f in frames]
        pend = {raw[1]: getattr(p, pending)} if pending else {}
        try:
            got = decode(decoder, raw, pend)
        except ProtocolError as exc:
            error = {"class": type(exc).__name__, "status": int(exc.status)}
            if decoder == "decode_request":  # echoed in the ERROR reply (§3.2)
                error["request_id"] = exc.request_id.hex()
            error["reason_today"] = _readable(exc.reason)
        else:
            raise SystemExit(f"refused case {name} is accepted today: {got!r}")
        case: dict[str, Any] = {"name": f"refuse/{name}", "decoder": decoder,
                                "frames": [frame_json(f) for f in frames], "error": error}
        if pending:
            case["pending"] = pending
        if raw and len(raw[-1]) <= LONG:
            case["body_shown"] = raw[-1].decode("utf-8", "backslashreplace") if raw else ""
        out.append(case)

    def req(name: str, type_: bytes, body: Frame, rid: bytes = RID) -> None:
        refused(name, "decode_request", [p.VERSION, rid, type_, body])

    def reply(name: str, body: Frame, pending: str, kind: bytes = b"OK") -> None:
        refused(name, "decode_from_broker", [p.VERSION, RID, kind, body], pending)

    def push(name: str, type_: bytes, body: Frame) -> None:
        refused(name, "decode_from_broker", [p.VERSION, b"", type_, body])

    def event(name: str, type_: bytes, body: Frame) -> None:
        refused(name, "decode_event", [b"room/dev/", p.VERSION, type_, body])

    d = "decode_request"
    # -- request frames (§3.1): the checks run frame count, request id, version, type, body
    refused("request/frames-0", d, [])
    refused("request/frames-1", d, [p.VERSION])
    refused("request/frames-2", d, [p.VERSION, RID])
    refused("request/frames-3", d, [p.VERSION, RID, b"PING"])
    refused("request/frames-5", d, [p.VERSION, RID, b"PING", b"{}", b""])
    refused("request/frames-5-long-id-cut", d, [p.VERSION, b"i" * 40, b"PING", b"{}", b"{}"])
    refused("request/frames-req-delimiter", d, [b"", p.VERSION, RID, b"PING", b"{}"])
    req("request/id-empty", b"PING", b"{}", b"")
    req("request/id-33-bytes", b"PING", b"{}", b"i" * 33)
    refused("request/id-empty-and-bad-version-and-type", d, [b"ZC2", b"", b"NOPE", b"{"])
    refused("request/version-ZC2", d, [b"ZC2", RID, b"PING", b"{}"])
    refused("request/version-lower-case", d, [b"zc1", RID, b"PING", b"{}"])
    refused("request/version-empty", d, [b"", RID, b"PING", b"{}"])
    refused("request/version-trailing-nul", d, [b"ZC1\x00", RID, b"PING", b"{}"])
    refused("request/version-bad-and-type-unknown", d, [b"ZC2", RID, b"NOPE", b"{"])
    for label, type_ in [("unknown", b"NOPE"), ("lower-case", b"ping"), ("OK", b"OK"),
                         ("ERROR", b"ERROR"), ("event-MESSAGE", b"MESSAGE"),
                         ("push-INVITED", b"INVITED"), ("event-TICK", b"TICK"), ("empty", b""),
                         ("trailing-space", b"LOGIN "), ("trailing-nul", b"SEND\x00"),
                         ("not-ascii", b"\xff\xfe"), ("not-ascii-utf8", "SÉND".encode())]:
        req(f"request/type-{label}", type_, b"{}")
    req("request/type-unknown-and-body-too-large", b"NOPE", Big(b"", b" ", p.MAX_BODY_BYTES + 1))
    # -- body size and encoding
    req("request/body-over-limit", b"PING", Big(b"", b" ", p.MAX_BODY_BYTES + 1))
    req("request/body-over-limit-not-utf8", b"PING", Big(b"", b"\xff", p.MAX_BODY_BYTES + 1))
    for label, body in [("lead-byte", b"\xff{}"), ("latin-1", b'{"room":"caf\xe9"}'),
                        ("overlong-slash", b'{"room":"\xc0\xaf"}'),
                        ("utf8-encoded-surrogate", b'{"room":"\xed\xa0\x80"}'),
                        ("truncated-sequence", b'{"room":"\xe4\xb8"}'),
                        ("beyond-u10ffff", b'{"room":"\xf4\x90\x80\x80"}')]:
        req(f"request/not-utf8-{label}", b"JOIN", body)
    # -- not JSON, or not one object
    for label, body in [
            ("open-brace", b"{"), ("single-quotes", b"{'room': 'x'}"),
            ("trailing-comma", b'{"room":"x",}'), ("bom", b"\xef\xbb\xbf{}"),
            ("deep-open", b"[" * 10_000), ("deep-closed-in-field",
                                            b'{"room":' + b"[" * 3000 + b"]" * 3000 + b"}"),
            ("two-objects", b"{}{}"), ("garbage-after", b'{"room":"x"} x'),
            ("form-feed-after", b'{"room":"x"}\x0c'), ("form-feed-before", b'\x0c{"room":"x"}'),
            ("nbsp-before", '\u00a0{"room":"x"}'.encode()), ("whitespace-only", b" \r\n\t"),
            ("nan", b'{"room":NaN}'), ("infinity", b'{"room":Infinity}'),
            ("minus-infinity", b'{"room":-Infinity}'),
            ("raw-newline-in-string", b'{"room":"a\nb"}'),
            ("raw-nul-in-string", b'{"room":"a\x00b"}'),
            ("bad-escape", b'{"room":"a\\xb"}'), ("short-u-escape", b'{"room":"\\u12"}'),
            ("comment", b'{"room":"x"/* c */}'), ("hex-int", b'{"room":"x","private":0x1}'),
            ("leading-zero", b'{"room":"x","limit":01}'), ("plus-sign", b'{"room":"x","limit":+1}'),
            ("bare-fraction", b'{"room":"x","limit":.5}'), ("unquoted-key", b'{room:"x"}'),
            ("array", b"[]"), ("string", b'"{}"'), ("number", b"1"), ("null", b"null"),
            ("true", b"true")]:
        req(f"request/not-an-object-{label}" if label in ("array", "string", "number", "null",
                                                          "true")
            else f"request/not-json-{label}", b"JOIN", body)
    # -- repeated keys (§3: refused whatever the values)
    req("request/dup-key-same-value", b"JOIN", b'{"room":"x","room":"x"}')
    req("request/dup-key-other-value", b"JOIN", b'{"room":"x","room":"y"}')
    req("request/dup-key-send-fast-path", b"SEND", b'{"room":"x","text":"a","text":"b"}')
    req("request/dup-key-after-whitespace", b"JOIN", b' {"room":"x","room":"y"}')
    req("request/dup-key-nested", b"CREATE_ACCOUNTS",
        b'{"accounts":[{"name":"a","password":"p","name":"b"}]}')
    req("request/dup-key-unknown-field", b"JOIN", b'{"room":"x","x":1,"x":2}')
    req("request/dup-key-escaped-spelling", b"JOIN", b'{"room":"x","\\u0072oom":"y"}')
    req("request/dup-key-deep-in-unknown-field", b"JOIN", b'{"room":"x","x":{"a":1,"a":2}}')
    reply("reply/dup-key", b'{"room":"x","seq":1,"time":2,"seq":3}', "Sent")
    reply("reply/dup-key-in-ignored-unknown-field", b'{"time":1,"x":{"a":1,"a":2}}', "Pong")
    push("push/dup-key", b"DM", b'{"id":1,"id":1,"time":2,"sender":"a","to":"b","text":"c"}')
    event("event/dup-key", b"TICK", b'{"time":1,"time":2}')
    # -- integers: signed 64-bit only (§9), JSON integers only (§3)
    for label, number in [("2^63", str(2**63)), ("-2^63-1", str(-(2**63) - 1)),
                          ("2^64-1", str(2**64 - 1)), ("2^64", str(2**64)), ("10^30", "1" + "0" * 30),
                          ("5000-digits", "9" * 5000), ("float", "50.0"), ("exponent", "5e1"),
                          ("huge-exponent", "1e400"), ("minus-zero-float", "-0.0"),
                          ("fraction", "1.5"), ("true", "true"), ("string", '"50"'),
                          ("null", "null"), ("list", "[50]"), ("object", '{"n":50}')]:
        req(f"request/int-field-{label}", b"HISTORY", f'{{"room":"x","limit":{number}}}'.encode())
    req("request/optional-int-field-2^63", b"HISTORY", b'{"room":"x","before":%d}' % 2**63)
    req("request/optional-int-field-string", b"HISTORY", b'{"room":"x","before":"7"}')
    req("request/optional-int-field-bool", b"HISTORY", b'{"room":"x","after":false}')
    req("request/nullable-required-int-2^63", b"ADMIN_SET_QUOTA",
        b'{"name":"eve","quota_bytes":%d}' % 2**63)
    req("request/int-list-item-2^63", b"DM_ACK", b'{"ids":[1,%d]}' % 2**63)
    req("request/int-list-item-true", b"DM_ACK", b'{"ids":[true]}')
    req("request/int-list-item-float", b"DM_ACK", b'{"ids":[1.0]}')
    req("request/int-list-item-null", b"DM_ACK", b'{"ids":[null]}')
    reply("reply/int-2^63", b'{"room":"x","seq":%d,"time":2}' % 2**63, "Sent")
    reply("reply/nested-int-2^63", b'{"name":"a","session":"s","rooms":[{"room":"r","last_seq":%d}]}'
          % 2**63, "LoggedIn")
    reply("reply/nested-int-string", b'{"name":"a","session":"s","rooms":[{"room":"r","last_seq":"1"}]}',
          "LoggedIn")
    event("event/int--2^63-1", b"TICK", b'{"time":%d}' % (-(2**63) - 1))
    event("event/int-float", b"TICK", b'{"time":1.0}')
    push("push/int-bool", b"INVITED", b'{"room":"a","by":"b","time":true}')
    # -- other wrong types
    for label, body in [("int", b'{"room":5}'), ("null", b'{"room":null}'),
                        ("list", b'{"room":["x"]}'), ("object", b'{"room":{"name":"x"}}'),
                        ("bool", b'{"room":true}')]:
        req(f"request/str-field-{label}", b"JOIN", body)
    req("request/str-field-int-send-fast-path", b"SEND", b'{"room":"x","text":1}')
    req("request/cmid-int-send-fast-path", b"SEND", b'{"room":"x","text":"a","cmid":7}')
    req("request/cmid-null-send-fast-path", b"SEND", b'{"room":"x","text":"a","cmid":null}')
    req("request/optional-str-field-int", b"WHO", b'{"room":1}')
    for label, value in [("int", b"1"), ("zero", b"0"), ("string", b'"true"'), ("null", b"null")]:
        req(f"request/bool-field-{label}", b"JOIN", b'{"room":"x","private":%s}' % value)
    req("request/optional-bool-field-int", b"SET_ROOM", b'{"room":"x","locked":1}')
    req("request/list-field-int", b"DM_ACK", b'{"ids":1}')
    req("request/list-field-object", b"DM_ACK", b'{"ids":{"0":1}}')
    req("request/list-field-null", b"DM_ACK", b'{"ids":null}')
    req("request/nested-object-int", b"CREATE_ACCOUNTS", b'{"accounts":[1]}')
    req("request/nested-object-list", b"CREATE_ACCOUNTS", b'{"accounts":[["a","p"]]}')
    reply("reply/list-of-objects-null", b'{"rooms":null}', "RoomList")
    reply("reply/error-status-string", b'{"status":"404","reason":"x"}', "Ok", b"ERROR")
    reply("reply/error-status-bool", b'{"status":true,"reason":"x"}', "Ok", b"ERROR")
    reply("reply/error-status-2^63", b'{"status":%d,"reason":"x"}' % 2**63, "Ok", b"ERROR")
    reply("reply/error-no-reason", b'{"status":404}', "Ok", b"ERROR")
    reply("reply/session-int", b'{"time":1,"session":5}', "Pong")
    # -- strings that are not Unicode (§3)
    for label, escape in [("high", "\\ud800"), ("low", "\\udfff"), ("reversed-pair", "\\ude00\\ud83d"),
                          ("high-then-ascii", "\\ud83dx"), ("high-at-end", "ab\\ud83d")]:
        req(f"request/lone-surrogate-{label}", b"JOIN", f'{{"room":"{escape}"}}'.encode())
    req("request/lone-surrogate-send-fast-path", b"SEND", b'{"room":"x","text":"\\ud800"}')
    req("request/lone-surrogate-in-key", b"JOIN", b'{"room":"x","\\ud800":1}')
    reply("reply/lone-surrogate", b'{"name":"\\udfff"}', "Registered")
    event("event/lone-surrogate", b"TOPIC", b'{"room":"a","topic":"\\ud800","by":"b","time":1}')
    # -- Literal fields
    for label, value in [("offline", b'"offline"'), ("capitalised", b'"Away"'), ("int", b"1"),
                         ("null", b"null")]:
        req(f"request/literal-presence-{label}", b"SET_PRESENCE", b'{"presence":%s}' % value)
    req("request/literal-kind-send-fast-path", b"SEND", b'{"room":"x","text":"a","kind":"shout"}')
    req("request/literal-kind-null-send-fast-path", b"SEND", b'{"room":"x","text":"a","kind":null}')
    req("request/literal-role-owner", b"SET_ROLE", b'{"room":"x","name":"a","role":"owner"}')
    reply("reply/literal-delivered", b'{"id":1,"time":2,"delivered":"maybe"}', "DmSent")
    push("push/literal-role", b"ROLE", b'{"room":"a","name":"b","role":"admin","by":"c","time":1}')
    # -- missing fields
    req("request/missing-room", b"JOIN", b"{}")
    req("request/missing-room-empty-body", b"JOIN", b"")
    req("request/missing-name", b"LOGIN", b'{"password":"x"}')
    req("request/missing-id", b"TOKEN_REVOKE", b"{}")
    req("request/missing-nullable-required", b"ADMIN_SET_QUOTA", b'{"name":"eve"}')
    req("request/missing-text-send-fast-path", b"SEND", b'{"room":"x"}')
    req("request/missing-room-send-fast-path", b"SEND", b'{"text":"x"}')
    req("request/missing-nested-password", b"CREATE_ACCOUNTS", b'{"accounts":[{"name":"a"}]}')
    reply("reply/missing-field", b'{"room":"x","seq":1}', "Sent")
    reply("reply/missing-nested-field", b'{"rooms":[{"room":"x","members":1,"last_seq":1}]}',
          "RoomList")
    event("event/missing-field", b"TICK", b"{}")
    event("event/missing-field-empty-body", b"TICK", b"")
    push("push/missing-field", b"READ", b'{"room":"a","peer":"","upto":1}')
    # -- unknown fields: requests refuse them (strict), nested ones too (§13)
    req("request/unknown-field", b"PING", b'{"x":1}')
    req("request/unknown-field-null", b"PING", b'{"x":null}')
    req("request/unknown-field-case", b"JOIN", b'{"room":"x","Room":"x"}')
    req("request/unknown-field-send-fast-path", b"SEND", b'{"room":"x","text":"a","seq":3}')
    req("request/unknown-field-info", b"INFO", b'{"version":1}')
    req("request/unknown-nested-field", b"CREATE_ACCOUNTS",
        b'{"accounts":[{"name":"a","password":"p","admin":true}]}')
    req("request/unknown-and-missing", b"JOIN", b'{"rom":"x"}')
    # -- replies and pushes (client side): frames, version, type
    fb = "decode_from_broker"
    refused("reply/frames-3", fb, [p.VERSION, RID, b"OK"])
    refused("reply/frames-5", fb, [p.VERSION, RID, b"OK", b"{}", b""])
    refused("reply/version-ZC2", fb, [b"ZC2", RID, b"OK", b"{}"])
    refused("reply/type-lower-case", fb, [p.VERSION, RID, b"ok", b"{}"], "Ok")
    refused("reply/type-unknown", fb, [p.VERSION, RID, b"MAYBE", b"{}"], "Ok")
    refused("reply/type-request-name", fb, [p.VERSION, RID, b"SEND", b"{}"], "Ok")
    reply("reply/body-over-64-mib", Big(b"", b" ", p.MAX_REPLY_BYTES + 1), "Ok")
    reply("reply/not-json", b"{", "Ok")
    reply("reply/not-an-object", b"[]", "Ok")
    reply("reply/not-utf8", b'{"name":"\xff"}', "Registered")
    push("push/type-unknown", b"BUZZ", b"{}")
    push("push/type-OK", b"OK", b"{}")
    push("push/type-ERROR", b"ERROR", b'{"status":500,"reason":"x"}')
    push("push/type-event-only-TICK", b"TICK", b'{"time":1}')
    push("push/type-event-only-PRESENCE", b"PRESENCE",
         b'{"name":"a","presence":"online","time":1}')
    push("push/type-request-only", b"SEND", b'{"room":"x","text":"a"}')
    push("push/body-over-64-mib", b"DM", Big(b"", b" ", p.MAX_REPLY_BYTES + 1))
    # -- events (SUB side)
    de = "decode_event"
    refused("event/frames-3", de, [b"tick/", p.VERSION, b"TICK"])
    refused("event/frames-5", de, [b"tick/", p.VERSION, b"TICK", b'{"time":1}', b""])
    refused("event/version-ZC2", de, [b"tick/", b"ZC2", b"TICK", b'{"time":1}'])
    refused("event/version-first-as-in-a-push", de, [p.VERSION, b"", b"TICK", b'{"time":1}'])
    event("event/type-unknown", b"TOCK", b'{"time":1}')
    event("event/type-push-only-DM", b"DM", b'{"id":1,"time":2,"sender":"a","to":"b","text":"c"}')
    event("event/type-push-only-INVITED", b"INVITED", b'{"room":"a","by":"b","time":1}')
    event("event/type-request-name", b"PING", b"{}")
    event("event/type-lower-case", b"tick", b'{"time":1}')
    event("event/body-over-limit", b"TICK", Big(b"", b" ", p.MAX_TRANSPORT_FRAME_BYTES + 1))
    event("event/not-json", b"TICK", b'{"time":1')
    event("event/wrong-type", b"TICK", b'{"time":"1"}')
    return out


def refused_values() -> list[dict[str, Any]]:
    """Values the encoders refuse: text that is not valid Unicode (a command-line argument
    that was not UTF-8, read with surrogateescape). ``fields_json`` is JSON in ASCII, so
    that it can carry the lone surrogate."""
    bad = "a \udcff b"
    dm = p.DirectMessage(id=1, time=T0, sender="a", to="b", text=bad)
    values: list[tuple[str, str, Any]] = [
        ("request/Send", "request", p.Send(room="dev", text=bad)),
        ("request/CreateAccounts-nested", "request",
         p.CreateAccounts(accounts=(p.NewAccount(name="a", password=bad),))),
        ("reply/Sent-fast-path", "reply", p.Sent(room=bad, seq=1, time=T0)),
        ("reply/HistoryPage-fast-path", "reply", p.HistoryPage(room="dev", messages=(
            p.MessagePosted(room="dev", seq=1, time=T0, sender="a", text=bad),))),
        ("reply/Pong-session", "reply", p.Pong(time=T0, session=bad)),
        ("reply/LoggedIn-nested-room", "reply", p.LoggedIn(
            name="a", session="s", rooms=(p.RoomState(room="dev", last_seq=1, topic=bad),))),
        ("reply/Error-reason", "reply", p.Error(status=400, reason=bad)),
        ("push/DirectMessage", "push", dm),
        ("event/MessagePosted-fast-path", "event",
         p.MessagePosted(room="dev", seq=1, time=T0, sender=bad, text="hi")),
        ("event/PresenceChanged", "event",
         p.PresenceChanged(name="a", presence="away", time=T0, text=bad)),
    ]
    out = []
    for name, channel, value in values:
        try:
            encode(channel, value, RID)
        except ProtocolError as exc:
            error = {"class": type(exc).__name__, "status": int(exc.status),
                     "reason_today": _readable(exc.reason)}
        else:
            raise SystemExit(f"{name} is encoded today")
        out.append({"name": f"refuse-value/{name}", "channel": channel,
                    "class": type(value).__name__,
                    "fields_json": json.dumps(_as_json(value), ensure_ascii=True),
                    "error": error})
    return out


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=False).stdout.strip()


def record() -> dict[str, Any]:
    cases = golden_cases()
    # the last commit of the code recorded (zchat/), plus "+changes" when it is not clean
    commit = _git("log", "-1", "--format=%H", "--", "zchat")
    if _git("status", "--porcelain", "--", "zchat"):
        commit += "+changes"
    return {
        "about": ("Golden frames of ZCHAT/1: what the codec writes and reads, held by "
                  "tests/test_wire_golden_frames.py. Frames are hex (a large one as prefix, a "
                  "repeated unit and suffix); a long string of one character in 'fields' is "
                  "{repeat, times}; 'body', 'body_shown', 'note', 'paths' and 'reason_today' "
                  "are for reading only. Re-record with scripts/record_golden_frames.py only "
                  "when the wire is meant to change (docs/design.md, 'Golden frames')."),
        "recorded_from_commit": commit,
        "version": p.VERSION.decode(),
        "limits": {name: getattr(p, name) for name in (
            "MAX_REQUEST_ID_BYTES", "MAX_BODY_BYTES", "MAX_TRANSPORT_FRAME_BYTES",
            "MAX_REPLY_BYTES", "MIN_WIRE_INT", "MAX_WIRE_INT")},
        "registries": {channel: sorted(c.__name__ for c in classes)
                       for channel, classes in registered().items()},
        "topics": {"room_topic('café')": p.room_topic("café").hex(),
                   "presence_topic('李雷')": p.presence_topic("李雷").hex(),
                   "TOPIC_TICK": p.TOPIC_TICK.hex(), "TOPIC_BROKER": p.TOPIC_BROKER.hex()},
        "cases": [case for case, _value in cases],
        "accepted": accepted_cases(cases),
        "refused": refused_cases(),
        "refused_values": refused_values(),
    }


#: What --check leaves out: what and through which code paths the file was recorded from, and
#: the wording of reasons, none of which the test holds.
NOT_HELD = ("recorded_from_commit", "paths", "reason_today")


def _held(data: Any) -> Any:
    """The file's data without NOT_HELD, its entries keyed by name (the rest as "/...")."""
    def strip(v: Any) -> Any:
        if isinstance(v, dict):
            return {k: strip(x) for k, x in v.items() if k not in NOT_HELD}
        if isinstance(v, list):
            return [strip(x) for x in v]
        return v
    data = strip(data)
    entries = {e["name"]: e for part in ("cases", "accepted", "refused", "refused_values")
               for e in data.pop(part)}
    return {**entries, **{f"/{k}": v for k, v in data.items()}}


def render(data: dict[str, Any]) -> str:
    return json.dumps(data, ensure_ascii=False, indent=1) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="compare with the recorded file instead of writing it, leaving "
                             "out what the test does not hold: " + ", ".join(NOT_HELD))
    parser.add_argument("--out", type=Path, default=OUT, help=f"default: {OUT}")
    args = parser.parse_args(argv)
    data = record()
    if args.check:
        old = _held(json.loads(args.out.read_text(encoding="utf-8")))
        new = _held(json.loads(render(data)))
        differ = sorted(old.keys() ^ new.keys()) + sorted(
            name for name in old.keys() & new.keys() if old[name] != new[name])
        if differ:
            print(f"{args.out} differs from what the codec records now in "
                  f"{len(differ)} entries: {', '.join(differ[:20])}", file=sys.stderr)
            return 1
        print(f"{args.out} is what the codec records now")
        return 0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(data), encoding="utf-8")
    print(f"{args.out}: {len(data['cases'])} golden cases, {len(data['accepted'])} accepted "
          f"inputs, {len(data['refused'])} refused inputs, {len(data['refused_values'])} "
          f"refused values")
    return 0


if __name__ == "__main__":
    sys.exit(main())
