"""Round trips and malformed input for the ZCHAT/1 codec (zchat/protocol.py, docs/PROTOCOL.md §3).

``ROUND_TRIPPED`` maps every wire TYPE name to example values; tests/test_protocol_doc.py
imports it to check that every type in the code is round-trip-tested here.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from typing import Any, Literal, Union

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zchat import protocol as p
from zchat.errors import ProtocolError, Status

RID = b"0f3c5e1a9b2d4c6e8f0a1b2c3d4e5f60"  # 32 bytes, a UUID in hex
T0 = 1_717_171_717_123  # UTC ms

_DM = p.DirectMessage(id=41, time=T0, sender="Zoë", to="李雷", text="晚上好 🌙\nsee you")
_MSG = p.MessagePosted(room="café", seq=7, time=T0, sender="Zoë", text="naïve — “quoted” | a:b")

#: Wire TYPE name -> example values of every message class sent under that name.
ROUND_TRIPPED: dict[str, list[p.Message]] = {
    "INFO": [p.Info()],
    "REGISTER": [p.Register(name="Zoë", password="correct horse battery staple ✓"),
                 p.Register(name="helper-bot", password="s3cret", bot=True)],
    "LOGIN": [p.Login(name="zoë", password="pässwörd"),
              p.Login(name="helper-bot", token="Zm9vYmFyYmF6cXV4LXRva2VuLTQzLWNoYXJhY3RlcnM")],
    "TOKEN_CREATE": [p.CreateToken(label="deploy bot on ci-3 ✓"), p.CreateToken(label="")],
    "TOKEN_LIST": [p.ListTokens()],
    "TOKEN_REVOKE": [p.RevokeToken(id=7)],
    "RESUME": [p.Resume(session="Qk3x-9_tokenPart")],
    "SET_SLOW_MODE": [p.SetSlowMode(room="announcements", seconds=30),
                      p.SetSlowMode(room="dev", seconds=0)],
    "GOING_AWAY": [p.GoingAway(text="broker restarting", time=T0)],
    "SLOW_MODE": [p.SlowModeChanged(room="announcements", seconds=30, by="Zoë", time=T0),
                  p.SlowModeChanged(room="dev", seconds=0, by="ops", time=T0)],
    "LOGOUT": [p.Logout(), p.Logout(text="bye — à demain 👋")],
    "JOIN": [p.Join(room="café"), p.Join(room="secret", private=True)],
    "PART": [p.Part(room="日本語")],
    "ROOMS": [p.ListRooms()],
    "DM": [p.SendDirect(to="李雷", text="你好, 世界"),
           p.SendDirect(to="bob", text="again?", cmid="d-0001"), _DM],
    "SEND": [
        p.Send(room="café", text="héllo\twörld\n🎉"),
        p.Send(room="café", text="waves 👋", kind="action", cmid="c-0001"),
    ],
    "HISTORY": [
        p.FetchHistory(room="café"),
        p.FetchHistory(room="café", before=120, limit=500),
        p.FetchHistory(room="café", after=0, limit=1),
    ],
    "WHO": [p.Who(), p.Who(room="café")],
    "WHOIS": [p.Whois(name="Zoë")],
    "SET_PRESENCE": [p.SetPresence(presence="away"),
                     p.SetPresence(presence="online", text="zurück gleich ☕")],
    "PING": [p.Ping()],
    "SESSIONS": [p.ListSessions()],
    "DM_ACK": [p.AckDirect(ids=(1,)), p.AckDirect(ids=(7, 8, 2**40))],
    "SET_TOPIC": [p.SetTopic(room="café", topic="☕ only | see https://example.org/a:b"),
                  p.SetTopic(room="dev", topic="")],
    "OK": [
        p.Ok(),
        p.InfoReply(version=1, pub="tcp://127.0.0.1:5556", time=T0,
                    heartbeat_interval_ms=2000, heartbeat_timeout_ms=6000,
                    max_text_bytes=4000),
        p.InfoReply(version=1, pub="tcp://127.0.0.1:5556", time=T0,
                    heartbeat_interval_ms=2000, heartbeat_timeout_ms=6000,
                    max_text_bytes=4000, max_text_lines=50, min_password_chars=8),
        p.Registered(name="Zoë"),
        p.LoggedIn(name="Zoë", session="s-5f1e", rooms=(), pending=()),
        p.LoggedIn(name="Zoë", session="s-5f1e",
                   rooms=(p.RoomState(room="café", last_seq=7, topic="☕ only"),
                          p.RoomState(room="dev", last_seq=0)),
                   pending=(_DM,)),
        p.LoggedIn(name="Zoë", session="s-5f1e",
                   rooms=(p.RoomState(room="café", last_seq=7, topic="☕ only"),),
                   pending=(_DM,),
                   room_reads=(p.RoomRead(room="café", read_seq=5, unread=2, mentions=1),),
                   dm_reads=(p.DmRead(peer="李雷", last_id=41, read_id=40, unread=1),)),
        p.DmHistoryPage(peer="李雷", messages=(_DM,)),
        p.DmHistoryPage(peer="bob", messages=()),
        p.ReadState(room="café", peer="", upto=7, unread=0, mentions=0, last=7),
        p.ReadState(room="", peer="李雷", upto=41, unread=3),
        p.RoomJoined(room="café", last_seq=7, created=False, topic="☕ only"),
        p.RoomJoined(room="новая", last_seq=0, created=True),
        p.RoomJoined(room="news", last_seq=3, created=False, slow_mode_s=30),
        p.RoomList(rooms=(p.RoomInfo(room="café", members=3, last_seq=7, joined=True,
                                     topic="☕"),
                          p.RoomInfo(room="dev", members=0, last_seq=0, joined=False))),
        p.Sent(room="café", seq=8, time=T0),
        p.DmSent(id=42, time=T0, delivered="live"),
        p.DmSent(id=43, time=T0, delivered="stored"),
        p.DmSent(id=44, time=T0, delivered="live", to="alice"),
        p.HistoryPage(room="café", messages=(_MSG, dataclasses.replace(
            _MSG, seq=8, kind="action", text="dances"))),
        p.HistoryPage(room="café", messages=()),
        p.WhoList(users=(p.UserPresence(name="Zoë", presence="away", text="lunch 🍜"),
                         p.UserPresence(name="helper-bot", presence="online", bot=True),
                         p.UserPresence(name="李雷", presence="offline"))),
        p.UserFound(name="Zoë", presence="away", text="lunch 🍜"),
        p.UserFound(name="helper-bot", presence="offline", bot=True),
        p.Pong(time=T0),
        p.Pong(time=T0, rooms=(p.RoomState(room="café", last_seq=8, topic="☕"),)),
        p.Pong(time=T0, rooms=(), session=""),
        p.Pong(time=T0, rooms=(p.RoomState(room="dev", last_seq=1),), session="s-5f1e"),
        p.SessionList(sessions=(p.SessionInfo(name="Zoë", address="192.0.2.7",
                                              login_time=T0 - 60_000, last_seen=T0),)),
        p.TokenCreated(token="Zm9vYmFyYmF6cXV4LXRva2VuLTQzLWNoYXJhY3RlcnM", id=7,
                       label="deploy bot on ci-3 ✓"),
        p.TokenList(tokens=()),
        p.BanList(bans=()),
        p.BanList(bans=(p.BanInfo(kind="ban", room="café", name="eve", by="Zoë",
                                  reason="spam", created=T0, until=T0 + 3_600_000),
                        p.BanInfo(kind="mute", room="", name="eve", by="root", reason="",
                                  created=T0))),
        p.AuditList(entries=(p.AuditEntry(id=3, time=T0, actor="Zoë", action="delete",
                                          room="café", target="eve",
                                          detail="#7: a rude one"),)),
        p.RoomJoined(room="secret", last_seq=0, created=True, private=True, locked=True),
        p.RoomList(rooms=(p.RoomInfo(room="secret", members=2, last_seq=1, joined=True,
                                     private=True, locked=False),)),
        p.HistoryPage(room="café", messages=(dataclasses.replace(
            _MSG, text="", deleted_by="Zoë"),)),
        p.TokenList(tokens=(p.TokenInfo(id=7, label="deploy bot", created=T0),
                            p.TokenInfo(id=9, label="", created=T0 + 1))),
        p.UserList(users=()),
        p.UserList(users=(p.AccountInfo(name="Zoë", bot=False, disabled=False, created=T0,
                                        online=True, sessions=2),
                          p.AccountInfo(name="quiz-bot", bot=True, disabled=True,
                                        created=T0 - 1, online=False),
                          p.AccountInfo(name="ada", bot=False, disabled=False, created=T0,
                                        online=False, stored_bytes=1234,
                                        quota_bytes=5_000_000))),
        p.QuotaSet(name="Zoë", quota_bytes=0, default=False, stored_bytes=0),
        p.QuotaSet(name="ada", quota_bytes=p.MAX_STORAGE_QUOTA_BYTES, default=True,
                   stored_bytes=12_345_678),
        p.AccountsCreated(names=("Zoë", "quiz-bot")),
        p.RoomDetails(room="café", members=3, last_seq=7, joined=False, topic="☕ only"),
        p.RoomDetails(room="secret", members=1, last_seq=0, joined=True, slow_mode_s=30,
                      private=True, locked=True),
    ],
    "ERROR": [p.Error(status=404, reason="no such room «cafe»"),
              p.Error(status=429, reason="slow down", retry_after_ms=1500)],
    "MESSAGE": [_MSG, dataclasses.replace(_MSG, kind="action")],
    "JOINED": [p.UserJoined(room="café", name="Zoë", time=T0)],
    "LEFT": [p.UserLeft(room="café", name="李雷", time=T0),
             p.UserLeft(room="café", name="eve", time=T0, by="Zoë", reason="spam", ban=True),
             p.UserLeft(room="café", name="eve", time=T0, by="Zoë", ban=True,
                        until=T0 + 90_000)],
    "KICK": [p.Kick(room="café", name="eve"), p.Kick(room="café", name="eve", reason="be nice")],
    "BAN": [p.Ban(name="eve"), p.Ban(name="eve", room="café", reason="spam", duration_s=3600)],
    "UNBAN": [p.Unban(name="eve"), p.Unban(name="eve", room="café")],
    "MUTE": [p.Mute(name="eve", room="café", duration_s=600),
             p.Mute(name="eve", reason="flooding")],
    "UNMUTE": [p.Unmute(name="eve", room="café")],
    "INVITE": [p.Invite(room="café", name="李雷")],
    "INVITED": [p.Invited(room="café", by="Zoë", time=T0)],
    "MUTED": [p.MuteChanged(room="café", muted=True, by="Zoë", time=T0, reason="flood",
                            until=T0 + 90_000),
              p.MuteChanged(room="", muted=False, by="Zoë", time=T0)],
    "SESSION_CLOSED": [p.SessionClosed(reason="your password was reset; log in with the "
                                              "new one", by="root", time=T0)],
    "SET_ROLE": [p.SetRole(room="café", name="李雷", role="moderator"),
                 p.SetRole(room="café", name="李雷", role="member")],
    "ROLE": [p.RoleChanged(room="café", name="李雷", role="moderator", by="Zoë", time=T0)],
    "SET_ROOM": [p.SetRoom(room="café", private=True), p.SetRoom(room="café", locked=False),
                 p.SetRoom(room="café", private=False, locked=True)],
    "ROOM_MODE": [p.RoomModeChanged(room="café", private=True, locked=False, by="Zoë",
                                    time=T0)],
    "DELETE_MESSAGE": [p.DeleteMessage(room="café", seq=7)],
    "MESSAGE_DELETED": [p.MessageDeleted(room="café", seq=7, by="Zoë", time=T0)],
    "DELETE_ROOM": [p.DeleteRoom(room="café"), p.DeleteRoom(room="dev", reason="moved ☕")],
    "ROOM_DELETED": [p.RoomDeleted(room="café", by="Zoë", time=T0),
                     p.RoomDeleted(room="dev", by="root", time=T0, reason="moved ☕")],
    "BANS": [p.ListBans(), p.ListBans(room=""), p.ListBans(room="café")],
    "USERS": [p.ListUsers()],
    "CREATE_ACCOUNTS": [p.CreateAccounts(accounts=(
        p.NewAccount(name="Zoë", password="pässwörd ✓"),
        p.NewAccount(name="quiz-bot", password="s3cret", bot=True)))],
    "ADMIN_SET_PASSWORD": [p.AdminSetPassword(name="李雷", password="new pass ✓")],
    "ADMIN_DISABLE": [p.SetDisabled(name="eve"), p.SetDisabled(name="eve", disabled=False)],
    "ADMIN_SET_QUOTA": [p.SetQuota(name="李雷", quota_bytes=1_000_000),
                        p.SetQuota(name="eve", quota_bytes=0),
                        p.SetQuota(name="eve", quota_bytes=None)],
    "ROOM_INFO": [p.FetchRoom(room="café")],
    "SET_PASSWORD": [p.SetPassword(old="old ✓", new="new pässwörd")],
    "DM_HISTORY": [p.FetchDmHistory(peer="李雷"),
                   p.FetchDmHistory(peer="bob", before=120, limit=500),
                   p.FetchDmHistory(peer="bob", after=0, limit=1)],
    "MARK_READ": [p.MarkRead(upto=7, room="café"), p.MarkRead(upto=41, peer="李雷")],
    "READ": [p.ReadMarked(room="café", peer="", upto=7, unread=2, mentions=1, last=9),
             p.ReadMarked(room="", peer="李雷", upto=41, unread=0)],
    "AUDIT": [p.ReadAudit(), p.ReadAudit(room="café", actor="Zoë", target="eve",
                                         action="kick", before=99, limit=500)],
    "PRESENCE": [p.PresenceChanged(name="Zoë", presence="away", time=T0, text="brb"),
                 p.PresenceChanged(name="Zoë", presence="offline", time=T0),
                 p.PresenceChanged(name="Zoë", presence="offline", time=T0, text="bye")],
    "TICK": [p.Tick(time=T0)],
    "TOPIC": [p.TopicChanged(room="café", topic="☕ only", by="Zoë", time=T0),
              p.TopicChanged(room="dev", topic="", by="李雷", time=T0)],
}

#: Every message class the codec handles, so that a new one must be added above.
#: (``slots=True`` replaces each class, so ``__subclasses__`` may also list the discarded
#: originals; keep only the classes the module actually exports.)
REPLY_CLASSES: set[type] = {
    c for c in p.Reply.__subclasses__() if getattr(p, c.__name__, None) is c}
ALL_CLASSES: set[type] = (
    set(p.REQUEST_TYPES.values()) | set(p.EVENT_TYPES.values()) | set(p.PUSH_TYPES.values())
    | REPLY_CLASSES | {p.Error}
)
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
    if isinstance(tp, type) and dataclasses.is_dataclass(tp):
        hints = typing.get_type_hints(tp)
        return st.builds(tp, **{f.name: strategy_for(hints[f.name])
                                for f in dataclasses.fields(tp)})
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
    names = [f.name for f in dataclasses.fields(p.REQUEST_TYPES[type_])] + ["extra"]
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
