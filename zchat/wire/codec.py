"""The codec: message values <-> frames (docs/PROTOCOL.md §3), on msgspec.

Pure: it never touches a socket, a clock or a database. Every message has a fixed frame
count (§3):

- request, DEALER -> ROUTER:  [VERSION, request_id, TYPE, body]
- reply,   ROUTER -> DEALER:  [VERSION, request_id, b"OK" | b"ERROR", body]
- push,    ROUTER -> DEALER:  [VERSION, b"", TYPE, body]        (direct messages)
- event,   PUB -> SUB:        [topic, VERSION, TYPE, body]

``body`` is one JSON object in UTF-8, written compact, keys in the class's field order,
every field present, non-ASCII characters as they are. The TYPE frame says which class
a body is, so the body carries no tag: each class has its own compiled msgspec decoder,
chosen by the TYPE frame (a tagged union would put the tag inside the body and change
the bytes on the wire).

msgspec checks each field against its annotation as it parses (types, Literal values,
signed 64-bit integers, valid UTF-8, no lone surrogate, required and, for requests,
unknown fields). What msgspec does not do, this module adds (docs/design.md, "The wire
codec"): a repeated key is refused, as JSON's ``NaN`` and a body nested too deep are,
and refusals are worded as before ("field limit must be an integer").
"""

from __future__ import annotations

import collections
import json
import re
import typing
from typing import Any, Literal, TypeVar

import msgspec

from zchat.errors import ProtocolError, Status
from zchat.wire.events import EVENT_TYPES, PUSH_TYPES
from zchat.wire.limits import (
    MAX_BODY_BYTES,
    MAX_REPLY_BYTES,
    MAX_REQUEST_ID_BYTES,
    MAX_TRANSPORT_FRAME_BYTES,
    VERSION,
)
from zchat.wire.replies import Error, Ok, Reply
from zchat.wire.requests import REQUEST_TYPES, Request
from zchat.wire.values import Message, Value

M = TypeVar("M", bound=Value)

#: One encoder for every body: compact JSON, fields in declaration order, all of them.
_ENCODER = msgspec.json.Encoder()
_encode = _ENCODER.encode

#: Class -> its compiled decoder; every registered class's is built at import.
_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {}

#: TYPE frames (bytes) -> class, so that a frame is looked up without decoding it; a
#: frame that is not ASCII names no type.
_REQUESTS_BY_FRAME: dict[bytes, type[Request]] = {
    name.encode(): cls for name, cls in REQUEST_TYPES.items()}
_PUSHES_BY_FRAME: dict[bytes, type[Message]] = {
    name.encode(): cls for name, cls in PUSH_TYPES.items()}
_EVENTS_BY_FRAME: dict[bytes, type[Message]] = {
    name.encode(): cls for name, cls in EVENT_TYPES.items()}


def _decoder(cls: type) -> msgspec.json.Decoder[Any]:
    decoder = _DECODERS.get(cls)
    if decoder is None:
        decoder = _DECODERS[cls] = msgspec.json.Decoder(cls)
    return decoder


_REGISTERED: tuple[type, ...] = (
    *REQUEST_TYPES.values(), *(r.REPLY for r in REQUEST_TYPES.values()), Ok, Error,
    *PUSH_TYPES.values(), *EVENT_TYPES.values())
for _cls in _REGISTERED:
    _decoder(_cls)


# -- bodies -------------------------------------------------------------------------------


def encode_body(value: Message) -> bytes:
    """The JSON body of a message value: UTF-8, no insignificant whitespace, every field
    in declaration order (§3).

    Raises ProtocolError(400) when a string in it is not valid Unicode (a lone surrogate,
    e.g. a command-line argument that was not UTF-8, decoded with ``surrogateescape``).
    """
    try:
        return _encode(value)
    except UnicodeEncodeError:
        raise ProtocolError(Status.BAD_REQUEST,
                            f"{value.TYPE} holds text that is not valid Unicode") from None


def decode_body(cls: type[M], body: bytes, limit: int = MAX_BODY_BYTES) -> M:
    """Parse a JSON body into ``cls``; an empty body reads as ``{}`` (§3).

    A key ``cls`` does not know is refused when ``cls`` is a request (or a value nested
    in one), and ignored otherwise: the broker refuses typos, clients ignore fields a
    newer broker added (§13).

    Raises ProtocolError 413 when ``body`` exceeds ``limit`` bytes; 400 when it is not
    UTF-8, not JSON (a repeated key, ``NaN``, nested too deep included), not a JSON
    object, or its fields do not match ``cls`` (missing, unknown, of the wrong type, an
    integer beyond signed 64 bits, a string holding a lone surrogate).
    """
    if len(body) > limit:
        raise ProtocolError(Status.TOO_LARGE, f"body of {len(body)} bytes exceeds {limit}")
    decoder = _DECODERS.get(cls) or _decoder(cls)
    try:
        value: M = decoder.decode(body or b"{}")
    except msgspec.ValidationError as exc:
        _check_json(body)  # a body that is not even JSON says so first, as it always did
        raise ProtocolError(Status.BAD_REQUEST, _field_reason(cls, str(exc))) from None
    except (msgspec.DecodeError, RecursionError):
        return _decode_slowly(cls, body)
    if _encode(value) != body:
        # Not the bytes we write for this value (keys left out or reordered, whitespace,
        # escapes, fields we ignore): only such a body can repeat a key, or hide what
        # msgspec skips unchecked inside an ignored field (bytes that are not UTF-8).
        _check_json(body)
    return value


def _decode_slowly(cls: type[M], body: bytes) -> M:
    """``decode_body`` of a body msgspec found malformed, by Python's parser, which is
    the judge of what JSON is here: most such bodies are refused as not JSON (400); one
    holding a lone surrogate escape (which msgspec refuses anywhere) is refused only when
    the surrogate is in a field ``cls`` reads, or a key a request does not know, and is
    read as any other body when it is in a field a client ignores (§13)."""
    data = _check_json(body)
    if not isinstance(data, dict):
        raise ProtocolError(Status.BAD_REQUEST, "body must be a JSON object")
    try:
        value: M = msgspec.convert(_read_keys(cls, data), cls)
        _encode(value)  # UnicodeEncodeError: a field read holds the surrogate
    except msgspec.ValidationError as exc:
        raise ProtocolError(Status.BAD_REQUEST, _field_reason(cls, str(exc))) from None
    except UnicodeEncodeError:  # in a field read, or a key unknown to a request
        raise ProtocolError(Status.BAD_REQUEST, "body holds a string that is not valid "
                            "Unicode (a lone surrogate escape)") from None
    return value


def _read_keys(tp: Any, data: Any) -> Any:
    """``data`` (parsed JSON of type ``tp``) without the keys that a class which ignores
    unknown keys would ignore, at every depth: what msgspec.convert can be given even
    when such a key holds a lone surrogate."""
    tp = _optional_of(tp)
    if typing.get_origin(tp) is tuple and isinstance(data, list):
        return [_read_keys(typing.get_args(tp)[0], item) for item in data]
    if isinstance(tp, type) and issubclass(tp, Value) and isinstance(data, dict):
        hints = typing.get_type_hints(tp)
        fields = tp.__struct_fields__
        keep_all = tp.__struct_config__.forbid_unknown_fields
        return {key: _read_keys(hints[key], item) if key in fields else item
                for key, item in data.items() if keep_all or key in fields}
    return data


def _check_utf8(body: bytes) -> str:
    """``body`` as text; ProtocolError(400) when it is not UTF-8."""
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        raise ProtocolError(Status.BAD_REQUEST, "body is not valid UTF-8") from None


def _no_repeated_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """JSON objects with a repeated key are refused (§3: senders MUST NOT repeat keys):
    which value wins would otherwise depend on the parser."""
    out = dict(pairs)
    if len(out) != len(pairs):
        counts = collections.Counter(key for key, _value in pairs)
        repeated = next(key for key, n in counts.items() if n > 1)
        raise ValueError(f"the key {repeated!r} is repeated")
    return out


def _no_constant(name: str) -> Any:
    """NaN, Infinity and -Infinity are not JSON (RFC 8259); Python's parser accepts them."""
    raise ValueError(f"{name} is not JSON")


#: The reference parse of the bodies msgspec's cannot judge alone (a repeated key is
#: legal to it): Python's, with every object's keys checked.
_STRICT_JSON = json.JSONDecoder(object_pairs_hook=_no_repeated_keys,
                                parse_constant=_no_constant)


def _check_json(body: bytes) -> Any:
    """``body`` parsed; ProtocolError(400) unless it is UTF-8 JSON without a repeated key,
    NaN or Infinity, or nesting too deep to parse (an empty body is ``{}``). Slow
    (Python's parser): taken only for bodies that are not as this codec writes them, and
    for refused ones."""
    text = _check_utf8(body)
    if not text:
        return {}
    try:
        return _STRICT_JSON.decode(text)
    except RecursionError:
        raise ProtocolError(Status.BAD_REQUEST,
                            "body is not valid JSON (nested too deep)") from None
    except json.JSONDecodeError as exc:
        detail = exc.msg[:1].lower() + exc.msg[1:]
        where = "" if detail.endswith(" at") else " at"  # "unterminated string starting at"
        raise ProtocolError(Status.BAD_REQUEST,
                            f"body is not valid JSON ({detail}{where} character {exc.pos})"
                            ) from None
    except ValueError as exc:  # a repeated key, NaN, an integer of 4,300 digits or more
        detail = "an integer too long to read" if "integer string" in str(exc) else str(exc)
        raise ProtocolError(Status.BAD_REQUEST, f"body is not valid JSON ({detail})") from None


#: msgspec's validation messages: "<what> - at `$.rooms[0].last_seq`" (no " - at" for the
#: body itself).
_AT = " - at `$"
_PATH_STEP = re.compile(r"\.([^.\[]+)|\[(\d+)\]")
_QUOTED = re.compile(r"`(.*)`")


def _field_reason(cls: type, text: str) -> str:
    """The reason for a body that is JSON but does not fit ``cls``, from msgspec's
    message ``text``, worded as the hand-written codec worded it: "missing field room",
    "unknown field accounts[0].admin", "field limit must be an integer", "field
    rooms[0].last_seq is out of range", "field presence must be one of 'online', 'away'"."""
    text = text.encode("utf-8", "backslashreplace").decode()  # a key may be a surrogate
    what, at, path = text.rpartition(_AT) if _AT in text else (text, "", "")
    steps = path[:-1] if at else ""  # ".accounts[0].name", "" for the body itself
    path = steps.lstrip(".")
    if what.startswith(("Object missing required field", "Object contains unknown field")):
        key = _QUOTED.search(what)
        kind = "missing" if what.startswith("Object missing") else "unknown"
        if key is not None:
            return f"{kind} field {path + '.' if path else ''}{key.group(1)}"
    elif not path:
        if what.startswith("Expected `object`"):
            return "body must be a JSON object"
    elif what.startswith(("Expected `int` <=", "Expected `int` >=", "Integer value out")):
        return f"field {path} is out of range"
    elif what.startswith(("Expected ", "Invalid enum value")):
        expected = _described(_type_at(cls, steps))
        if expected:
            return f"field {path} must be {expected}"
    return f"body does not fit {getattr(cls, 'TYPE', '') or cls.__name__}: {text}"


def _type_at(cls: type, path: str) -> Any:
    """The annotated type at ``path`` (".accounts[0].name") inside ``cls``; None when
    the path leads nowhere."""
    tp: Any = cls
    try:
        for name, _index in _PATH_STEP.findall(path):
            tp = _optional_of(tp)
            tp = typing.get_type_hints(tp)[name] if name else typing.get_args(tp)[0]
    except (KeyError, IndexError, TypeError):
        return None
    return tp


def _optional_of(tp: Any) -> Any:
    """``T`` of ``T | None``; ``tp`` itself otherwise."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    return args[0] if type(None) in typing.get_args(tp) and len(args) == 1 else tp


def _described(tp: Any) -> str:
    """What a value of annotated type ``tp`` must be, for a reason ("an integer", "null
    or a string", "one of 'text', 'action'"); "" for a type not named here."""
    if type(None) in typing.get_args(tp):
        inner = _described(_optional_of(tp))
        return f"null or {inner}" if inner else ""
    if typing.get_origin(tp) is Literal:
        return "one of " + ", ".join(repr(a) for a in typing.get_args(tp))
    if typing.get_origin(tp) is tuple:
        return "a list"
    if isinstance(tp, type) and issubclass(tp, Value):
        return "an object"
    return {bool: "a boolean", int: "an integer", str: "a string"}.get(tp, "")


# -- frames -------------------------------------------------------------------------------


def encode_request(request_id: bytes, request: Request) -> list[bytes]:
    """Frames a client sends on its DEALER (§3.1). Raises ProtocolError(400) as
    ``encode_body``."""
    return [VERSION, request_id, request.TYPE.encode(), encode_body(request)]


def decode_request(frames: list[bytes]) -> tuple[bytes, Request]:
    """Parse the frames after the routing id into (request_id, request).

    Raises ProtocolError with the request id when it could be read (``.request_id``), so
    that the ERROR reply can still echo it: 400 wrong frame count, bad request id or body;
    426 wrong version; 405 unknown type; 413 oversized body.
    """
    if len(frames) != 4:
        raise ProtocolError(Status.BAD_REQUEST,
                            f"a request has 4 frames, got {len(frames)}",
                            request_id=frames[1][:MAX_REQUEST_ID_BYTES] if len(frames) > 1 else b"")
    version, request_id, type_frame, body = frames
    if not 1 <= len(request_id) <= MAX_REQUEST_ID_BYTES:
        raise ProtocolError(Status.BAD_REQUEST,
                            f"request id must be 1 to {MAX_REQUEST_ID_BYTES} bytes",
                            request_id=request_id[:MAX_REQUEST_ID_BYTES])
    if version != VERSION:
        raise ProtocolError(Status.VERSION_NOT_SUPPORTED,
                            f"protocol version {version[:16]!r} not supported; "
                            f"this broker speaks {VERSION.decode()}",
                            request_id=request_id)
    cls = _REQUESTS_BY_FRAME.get(type_frame)
    if cls is None:
        raise ProtocolError(Status.UNKNOWN_COMMAND,
                            f"unknown request type {type_frame[:32]!r}", request_id=request_id)
    try:
        return request_id, decode_body(cls, body)
    except ProtocolError as exc:
        exc.request_id = request_id
        raise


def encode_reply(request_id: bytes, reply: Reply | Error) -> list[bytes]:
    """Frames of an OK or ERROR reply (§3.2), routing id not included. Raises
    ProtocolError(400) as ``encode_body``."""
    kind = b"ERROR" if isinstance(reply, Error) else b"OK"
    return [VERSION, request_id, kind, encode_body(reply)]


def encode_push(push: Message) -> list[bytes]:
    """Frames of an unsolicited message to one session over the ROUTER (§3.3). Raises
    ProtocolError(400) as ``encode_body``."""
    return [VERSION, b"", push.TYPE.encode(), encode_body(push)]


def decode_from_broker(frames: list[bytes], pending: dict[bytes, type[Reply]]
                       ) -> tuple[bytes, Message]:
    """Parse frames a client's DEALER received: a reply or a push.

    ``pending`` maps request ids to the reply type expected (Ok when absent). Returns
    (request_id, value) where request_id is b"" for pushes. Raises ProtocolError 400 on
    anything malformed (a misbehaving broker is the peer's fault), 405 for a push of a
    type this client does not know, 413 for a body over MAX_REPLY_BYTES.
    """
    if len(frames) != 4 or frames[0] != VERSION:
        raise ProtocolError(Status.BAD_REQUEST, "malformed frames from broker")
    _v, request_id, type_frame, body = frames
    if request_id == b"":
        cls_push = _PUSHES_BY_FRAME.get(type_frame)
        if cls_push is None:
            raise ProtocolError(Status.UNKNOWN_COMMAND, f"unknown push {type_frame!r}")
        return b"", decode_body(cls_push, body, MAX_REPLY_BYTES)
    if type_frame == b"ERROR":
        return request_id, decode_body(Error, body, MAX_REPLY_BYTES)
    if type_frame != b"OK":
        raise ProtocolError(Status.BAD_REQUEST, f"unknown reply type {type_frame!r}")
    reply_cls = pending.get(request_id, Ok)
    return request_id, decode_body(reply_cls, body, MAX_REPLY_BYTES)


def encode_event(topic: bytes, event: Message) -> list[bytes]:
    """Frames of a PUB event (§3.4). Raises ProtocolError(400) as ``encode_body``."""
    return [topic, VERSION, event.TYPE.encode(), encode_body(event)]


def decode_event(frames: list[bytes]) -> Message:
    """Parse frames received on a SUB socket. Raises ProtocolError 400 (malformed), 405
    (an event type this client does not know), 413 (a body over
    MAX_TRANSPORT_FRAME_BYTES)."""
    if len(frames) != 4 or frames[1] != VERSION:
        raise ProtocolError(Status.BAD_REQUEST, "malformed event frames")
    cls = _EVENTS_BY_FRAME.get(frames[2])
    if cls is None:
        raise ProtocolError(Status.UNKNOWN_COMMAND, f"unknown event {frames[2]!r}")
    return decode_body(cls, frames[3], MAX_TRANSPORT_FRAME_BYTES)
