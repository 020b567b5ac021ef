"""Fuzzing: the codec, the broker's state machine and a live broker get random and mutated
input, and must answer it without ever breaking (docs/PROTOCOL.md §14, docs/testing.md).

1. The codec (decode_request / decode_from_broker / decode_event) gets real encoded frames
   mutated by hypothesis: bytes flipped, inserted, cut, frames added or dropped, JSON
   values of the wrong type, huge integers, NaN, junk Unicode. It either decodes (and the
   value then round-trips) or raises ProtocolError — nothing else.
2. BrokerCore, on a real in-memory Store with a fake clock, gets random sequences of valid
   and malformed requests from several routing ids and clock jumps (evictions). After each
   step: handle() did not raise, the sender got exactly one reply (OK or ERROR, never
   500) echoing its request id, every published MESSAGE matches its stored row, presence
   changes alternate per account; at the end room seqs are gap-free in the store.
3. A live ``zchat broker`` subprocess on loopback TCP gets tens of thousands of random and
   malformed multipart messages from raw DEALER sockets, then still serves a normal
   register, login, send and receive, with the same pid and no internal error logged.
"""

from __future__ import annotations

import dataclasses
import json
import random
from pathlib import Path
from typing import Any

import pytest
import zmq
from chaos_harness import PASSWORD, BrokerProcess, wait_until
from codec_examples import ROUND_TRIPPED
from conftest import run
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from zchat import wire as p
from zchat.client.client import Client
from zchat.config import BrokerConfig
from zchat.core import BrokerCore, Offload, ToPeer, ToTopic
from zchat.errors import ProtocolError, RequestFailed
from zchat.passwords import hash_password
from zchat.store import Store
from zchat.testing import next_message

T0_MS = 1_700_000_000_000
RID = b"0123456789abcdef"

# -- 1. the codec ------------------------------------------------------------------------

_REQUESTS = [v for vs in ROUND_TRIPPED.values() for v in vs if isinstance(v, p.Request)]
_REPLIES = [v for vs in ROUND_TRIPPED.values() for v in vs
            if isinstance(v, p.Reply | p.Error)]
_EVENTS = [v for vs in ROUND_TRIPPED.values() for v in vs if type(v) in p.EVENT_TYPES.values()]
_PUSHES = [v for vs in ROUND_TRIPPED.values() for v in vs if isinstance(v, p.DirectMessage)]

VALID_REQUEST_FRAMES = [p.encode_request(RID, v) for v in _REQUESTS]
VALID_BROKER_FRAMES = ([p.encode_reply(RID, v) for v in _REPLIES]
                       + [p.encode_push(v) for v in _PUSHES])
VALID_EVENT_FRAMES = [p.encode_event(p.room_topic("dev"), v) for v in _EVENTS]

#: JSON values that confuse a typed field: wrong types, out-of-range and edge integers,
#: NaN/Infinity (not JSON), lone surrogates, nesting, long strings.
JSON_JUNK = ["null", "true", "false", "1.5", "-0", "1e999", "NaN", "Infinity", "-Infinity",
             str(2**63), str(-(2**63) - 1), str(2**64 + 7), "9" * 5000, '"\\ud800"',
             '"\\udfff x"', '"\\u0000"', '"\\u202e evil"', "[]", "{}", "[[[[[[[[[[]]]]]]]]]]",
             "[" * 2000 + "]" * 2000, '"' + "é" * 3000 + '"', '{"a":1,"a":2}', '"\\x"']


def test_the_codec_samples_cover_every_kind() -> None:
    """The mutation sources are real frames of every request, reply, push and event."""
    assert {v.TYPE for v in _REQUESTS} == set(p.REQUEST_TYPES)
    assert {v.TYPE for v in _EVENTS} == set(p.EVENT_TYPES)
    assert len(VALID_BROKER_FRAMES) >= 10 and _PUSHES


def _junk_body(body: bytes, key_index: int, junk: str) -> bytes:
    """``body`` with one field's value (or the whole body) replaced by raw JSON ``junk``."""
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return junk.encode()
    keys = list(data) if isinstance(data, dict) else []
    if not keys:
        return ("{\"x\":" + junk + "}").encode()
    key = keys[key_index % len(keys)]
    parts = [f"{json.dumps(k)}:{json.dumps(v)}" for k, v in data.items() if k != key]
    return ("{" + ",".join([*parts, f"{json.dumps(key)}:{junk}"]) + "}").encode("utf-8",
                                                                               "surrogatepass")


@st.composite
def mutated(draw: st.DrawFn, sources: list[list[bytes]]) -> list[bytes]:
    """Real frames of ``sources`` with 1..4 random mutations."""
    frames = list(draw(st.sampled_from(sources)))
    for _ in range(draw(st.integers(1, 4))):
        op = draw(st.sampled_from(["flip", "insert", "truncate", "drop", "dup", "add",
                                   "json", "type", "empty", "unicode"]))
        i = draw(st.integers(0, max(len(frames) - 1, 0)))
        if op == "add" or not frames:
            frames.insert(i, draw(st.binary(max_size=40)))
            continue
        f = frames[i]
        if op == "flip" and f:
            j = draw(st.integers(0, len(f) - 1))
            frames[i] = f[:j] + bytes([f[j] ^ draw(st.integers(1, 255))]) + f[j + 1:]
        elif op == "insert":
            j = draw(st.integers(0, len(f)))
            frames[i] = f[:j] + draw(st.binary(min_size=1, max_size=16)) + f[j:]
        elif op == "truncate":
            frames[i] = f[:draw(st.integers(0, len(f)))]
        elif op == "drop":
            del frames[i]
        elif op == "dup":
            frames.insert(i, f)
        elif op == "json" and len(frames) >= 4:
            frames[3] = _junk_body(frames[3], draw(st.integers(0, 9)),
                                   draw(st.sampled_from(JSON_JUNK)))
        elif op == "type" and len(frames) >= 3:
            frames[2] = draw(st.sampled_from(
                [t.encode() for t in [*p.REQUEST_TYPES, *p.EVENT_TYPES]]
                + [b"OK", b"ERROR", b"", b"\xff\xfe", b"send", b"X" * 100]))
        elif op == "empty":
            frames[i] = b""
        elif op == "unicode":
            frames[i] = draw(st.text(max_size=30)).encode("utf-8", "surrogatepass")
    return frames


_any_frames = st.lists(st.binary(max_size=64), min_size=0, max_size=10)
_FUZZ = settings(max_examples=400, deadline=None,
                 suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@_FUZZ
@given(st.one_of(mutated(VALID_REQUEST_FRAMES), _any_frames))
def test_decode_request_decodes_or_raises_protocol_error(frames: list[bytes]) -> None:
    try:
        request_id, request = p.decode_request(frames)
    except ProtocolError as exc:
        assert 400 <= exc.status < 500, exc
        assert len(exc.request_id) <= p.MAX_REQUEST_ID_BYTES
        return
    assert 1 <= len(request_id) <= p.MAX_REQUEST_ID_BYTES
    again = p.decode_request(p.encode_request(request_id, request))
    assert again == (request_id, request)


@_FUZZ
@given(st.one_of(mutated(VALID_BROKER_FRAMES), _any_frames),
       st.sampled_from([type(v) for v in _REPLIES if isinstance(v, p.Reply)]))
def test_decode_from_broker_decodes_or_raises_protocol_error(
        frames: list[bytes], reply_type: type[p.Reply]) -> None:
    try:
        request_id, value = p.decode_from_broker(frames, {RID: reply_type})
    except ProtocolError as exc:
        assert 400 <= exc.status < 500, exc
        return
    if request_id == b"":
        assert isinstance(value, p.DirectMessage)
    else:
        assert isinstance(value, p.Reply | p.Error)
        assert p.decode_from_broker(p.encode_reply(request_id, value),
                                    {request_id: type(value)})[1] == value


@_FUZZ
@given(st.one_of(mutated(VALID_EVENT_FRAMES), _any_frames))
def test_decode_event_decodes_or_raises_protocol_error(frames: list[bytes]) -> None:
    try:
        event = p.decode_event(frames)
    except ProtocolError as exc:
        assert 400 <= exc.status < 500, exc
        return
    assert type(event) in p.EVENT_TYPES.values()
    assert p.decode_event(p.encode_event(frames[0], event)) == event


# -- 2. the broker's state machine ---------------------------------------------------------

NAMES = ["ann", "bob", "cy"]
ROOMS = ["lobby", "dev", "ops"]
PEERS = [b"\x00peer%d" % i for i in range(5)]
_HASH = hash_password(PASSWORD, 1024, 8, 1)


def _config() -> BrokerConfig:
    """Small limits so that the fuzz reaches them; rate limits off (getattr-safe)."""
    known = {f.name for f in dataclasses.fields(BrokerConfig)}
    extra = {k: v for k, v in {"send_rate_per_s": 0, "login_rate_per_s": 0}.items()
             if k in known}
    return BrokerConfig(argon2_memory_kib=1024, argon2_time_cost=1, heartbeat_interval_s=2.0, heartbeat_timeout_s=6.0,
                        max_text_bytes=200, max_stored_dms=3, **extra)


_text = st.one_of(st.text(max_size=30), st.sampled_from(["hi", "", " ", "x" * 300,
                                                          "bell \x07", "rtl \u202e", "a\nb"]))
_room = st.one_of(st.sampled_from(ROOMS), st.sampled_from(["", "no/slash", "x" * 80, "Dev"]))
_name = st.one_of(st.sampled_from(NAMES), st.sampled_from(["nobody", "", "ANN"]))
_int = st.one_of(st.integers(-5, 50), st.sampled_from([p.MAX_WIRE_INT, p.MIN_WIRE_INT]))

_requests = st.one_of(
    st.builds(p.Login, name=_name, password=st.sampled_from([PASSWORD, "wrong", ""])),
    st.builds(p.Logout, text=st.sampled_from(["", "bye", "x\ny"])),
    st.builds(p.Join, room=_room), st.builds(p.Part, room=_room),
    st.builds(p.Send, room=_room, text=_text, kind=st.sampled_from(["text", "action"]),
              cmid=st.sampled_from(["", "c1", "c2", "c" * 70])),
    st.builds(p.SendDirect, to=_name, text=_text, cmid=st.sampled_from(["", "d1", "d2"])),
    st.builds(p.FetchHistory, room=_room, before=st.none() | _int, after=st.none() | _int,
              limit=_int),
    st.builds(p.Who, room=st.none() | _room), st.builds(p.Ping), st.builds(p.Info),
    st.builds(p.ListRooms), st.builds(p.ListSessions),
    st.builds(p.SetPresence, presence=st.sampled_from(["online", "away"]), text=_text),
    st.builds(p.SetTopic, room=_room, topic=_text),
    st.builds(p.AckDirect, ids=st.lists(_int, max_size=3).map(tuple)),
    st.builds(p.Resume, session=st.sampled_from(["", "nope", "@last"])),
    st.builds(p.SetSlowMode, room=_room, seconds=_int),
    st.builds(p.Register, name=st.sampled_from(["dee", "ann", "x/y", ""]),
              password=st.sampled_from([PASSWORD, ""])),
)

_steps = st.lists(st.one_of(
    st.tuples(st.just("req"), st.sampled_from(PEERS), _requests),
    st.tuples(st.just("raw"), st.sampled_from(PEERS), mutated(VALID_REQUEST_FRAMES)),
    st.tuples(st.just("raw"), st.sampled_from(PEERS), _any_frames),
    st.tuples(st.just("tick"), st.sampled_from(PEERS), st.floats(0, 8)),
), min_size=1, max_size=40)


class CoreFuzz:
    """A BrokerCore on an in-memory Store with three accounts, a fake clock, and checks
    of every step's actions."""

    def __init__(self) -> None:
        self.store = Store(":memory:")
        for name in NAMES:
            self.store.create_account(name, name, name, _HASH, T0_MS, rooms=())
        self.s, self.ms = 100.0, T0_MS
        self.core = BrokerCore(self.store, _config(), "tcp://127.0.0.1:1", T0_MS)
        self.presence: dict[str, str] = {}
        self.sessions: list[str] = []   # session tokens seen in LOGIN replies
        self.n = 0

    def _run(self, actions: list[Any]) -> list[Any]:
        """Offloads (password jobs) run inline, as the real loop's pool would."""
        out, queue = [], list(actions)
        while queue:
            action = queue.pop(0)
            if isinstance(action, Offload):
                try:
                    result: Any = action.work()
                except Exception as exc:
                    result = exc
                queue = self.core.complete(action.job_id, result, self.s, self.ms) + queue
            else:
                out.append(action)
        return out

    def step(self, kind: str, peer: bytes, arg: Any) -> None:
        if kind == "tick":
            self.s += arg
            self.ms += int(arg * 1000)
            self._check_events(self.core.tick(self.s, self.ms))
            return
        if kind == "req":
            if isinstance(arg, p.Resume) and arg.session == "@last":
                arg = p.Resume(session=self.sessions[-1] if self.sessions else "none")
            self.n += 1
            request_id = b"r%d" % self.n
            frames = p.encode_request(request_id, arg)
            reply_type: type[p.Reply] = arg.REPLY
        else:
            frames = arg
            request_id = frames[1][:p.MAX_REQUEST_ID_BYTES] if len(frames) > 1 else b""
            reply_type = p.Ok
        actions = self._run(self.core.handle(peer, frames, self.s, self.ms, "10.0.0.1"))
        replies = []
        for action in actions:
            if isinstance(action, ToPeer) and action.frames[1] != b"":
                assert action.routing_id == peer, "a reply went to another peer"
                replies.append(action.frames)
        assert len(replies) == 1, f"{len(replies)} replies to {frames!r}"
        (reply,) = replies
        assert reply[1] == (request_id or b"?"), (reply, request_id)
        rid, value = p.decode_from_broker(reply, {reply[1]: reply_type})
        if isinstance(value, p.Error):
            assert value.status != 500, f"internal error on {frames!r}: {value.reason}"
            assert 400 <= value.status < 600
        elif isinstance(value, p.LoggedIn):
            self.sessions.append(value.session)
        self._check_events(actions)

    def _check_events(self, actions: list[Any]) -> None:
        for action in actions:
            if not isinstance(action, ToTopic):
                continue
            event = p.decode_event(action.frames)
            if isinstance(event, p.MessagePosted):
                room_key = action.frames[0][len(p.TOPIC_ROOM_PREFIX):-1].decode()
                (row,) = self.store.history(room_key, None, event.seq - 1, 1)
                assert (row.seq, row.sender, row.text, row.kind) == \
                    (event.seq, event.sender, event.text, event.kind)
            elif isinstance(event, p.PresenceChanged):
                before = self.presence.get(event.name, "offline")
                if event.presence in ("online", "offline"):
                    assert before != event.presence, \
                        f"{event.name} went {event.presence} twice in a row"
                self.presence[event.name] = event.presence

    def check_end(self) -> None:
        for room in self.store.list_rooms():
            seqs = [r.seq for r in self.store.history(room.key, None, 0,
                                                      p.MAX_HISTORY_LIMIT)]
            assert seqs == list(range(1, room.last_seq + 1)), room
            assert self.core.last_seq[room.key] == room.last_seq
        for key, account in self.core.accounts.items():
            live = {rid for rid, s in self.core.sessions.items() if s.account_key == key}
            assert account.sessions == live
            assert (account.presence == "offline") == (not live), (key, account.presence)
            assert self.presence.get(account.name, "offline") == account.presence


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(_steps)
def test_broker_core_survives_random_requests(steps: list[tuple[str, bytes, Any]]) -> None:
    fuzz = CoreFuzz()
    for kind, peer, arg in steps:
        fuzz.step(kind, peer, arg)
    fuzz.check_end()


def test_broker_core_fuzz_reaches_the_interesting_paths() -> None:
    """The fuzz checker is not vacuous: a scripted run logs in, posts, evicts, and the
    checks see the published messages and the presence changes."""
    fuzz = CoreFuzz()
    fuzz.step("req", PEERS[0], p.Login(name="ann", password=PASSWORD))
    fuzz.step("req", PEERS[0], p.Join(room="dev"))
    fuzz.step("req", PEERS[0], p.Send(room="dev", text="hello"))
    fuzz.step("req", PEERS[1], p.Send(room="dev", text="refused: not logged in"))
    fuzz.step("raw", PEERS[1], [b"ZC1", b"x"])
    fuzz.step("tick", PEERS[0], 7.0)
    fuzz.check_end()
    assert fuzz.presence == {"ann": "offline"}
    assert [r.text for r in fuzz.store.history("dev", None, 0, 10)] == ["hello"]
    with pytest.raises(AssertionError, match="twice in a row"):
        fuzz.presence["bob"] = "online"
        fuzz._check_events([ToTopic(p.encode_event(p.presence_topic("bob"), p.PresenceChanged(
            name="bob", presence="online", time=T0_MS)))])


# -- 3. a live broker ---------------------------------------------------------------------------


def _random_message(rng: random.Random) -> list[bytes]:
    """One random or malformed multipart request (never over the transport limit)."""
    kind = rng.randrange(8)
    rid = rng.randbytes(rng.randint(0, 40))
    if kind == 0:
        return [rng.randbytes(rng.randint(0, 60)) for _ in range(rng.randint(1, 10))]
    if kind == 1:  # a real request's frames with a garbage body
        frames = list(rng.choice(VALID_REQUEST_FRAMES))
        frames[1] = rid or b"r"
        frames[3] = rng.randbytes(rng.randint(0, 200))
        return frames
    if kind == 2:  # wrong version
        return [rng.choice([b"ZC2", b"", b"zc1", b"ZC1\x00"]), b"r", b"PING", b"{}"]
    if kind == 3:  # unknown type
        return [p.VERSION, b"r", rng.randbytes(rng.randint(0, 20)), b"{}"]
    if kind == 4:  # a valid request before login (401), or a valid session-less one
        frames = list(rng.choice(VALID_REQUEST_FRAMES))
        frames[1] = rid or b"r"
        return frames
    if kind == 5:  # JSON type confusion in a real request
        frames = list(rng.choice(VALID_REQUEST_FRAMES))
        frames[3] = _junk_body(frames[3], rng.randrange(10), rng.choice(JSON_JUNK))
        return frames
    if kind == 6:  # wrong frame count around a real request
        frames = list(rng.choice(VALID_REQUEST_FRAMES))
        return frames[:rng.randint(1, 3)] if rng.random() < 0.5 else \
            frames + [rng.randbytes(8) for _ in range(rng.randint(1, 6))]
    return [p.VERSION, rid, b"LOGIN",  # an unknown account, a bad name, a bad token
            json.dumps({"name": rng.choice(["nobody", "", "a/b", "x" * 100]),
                        "token": "t" * rng.randint(0, 50)}).encode()]


def test_live_broker_survives_a_flood_of_malformed_frames(tmp_path: Path) -> None:
    """20,000 random/malformed messages from four raw DEALERs, each answered with exactly
    one reply (OK or ERROR), plus a few frames over MAX_TRANSPORT_FRAME_BYTES from a fifth,
    which libzmq answers by dropping that connection; then a normal client registers,
    logs in, sends and receives on the same broker process."""
    broker = BrokerProcess(tmp_path / "broker")
    broker.start()
    pid = broker.pid
    rng = random.Random(20240505)
    context = zmq.Context()
    sent = replies = oversize = 0
    dealers: list[zmq.Socket[Any]] = []
    big: zmq.Socket[Any] | None = None
    try:
        for _ in range(4):
            d = context.socket(zmq.DEALER)
            d.setsockopt(zmq.LINGER, 0)
            d.setsockopt(zmq.SNDHWM, 100_000)
            d.connect(broker.router)
            dealers.append(d)
        # Its own socket: libzmq drops the connection with everything still queued on it.
        big = context.socket(zmq.DEALER)
        big.setsockopt(zmq.LINGER, 0)
        big.connect(broker.router)

        def drain() -> int:
            got = 0
            for d in dealers:
                while True:
                    try:
                        frames = d.recv_multipart(zmq.NOBLOCK)
                    except zmq.Again:
                        break
                    assert frames[0] == p.VERSION, frames
                    if frames[1] == b"":  # a push (a DM, a private room's event): no reply
                        assert frames[2].decode() in p.PUSH_TYPES, frames
                        continue
                    assert frames[2] in (b"OK", b"ERROR"), frames
                    got += 1
            return got

        for i in range(20_000):
            d = dealers[i % len(dealers)]
            if i % 2_000 == 1_999:  # over the transport limit: libzmq drops this peer
                big.send_multipart([p.VERSION, b"big", b"SEND",
                                    b"x" * (p.MAX_TRANSPORT_FRAME_BYTES + 1)])
                oversize += 1
                continue
            d.send_multipart(_random_message(rng))
            sent += 1
            if i % 200 == 199:
                replies += drain()
        counted = [replies]

        def most_replied() -> bool:
            counted[0] += drain()
            return counted[0] >= sent

        wait_until(most_replied, 30, f"a reply to each of {sent} requests")
        assert counted[0] == sent
        with pytest.raises(zmq.Again):  # the oversized ones were never answered
            big.recv_multipart(zmq.NOBLOCK)

        async def normal_use() -> tuple[str, list[int]]:
            # The chaos broker is plain (chaos_harness.broker_settings): so are its clients.
            async with Client(broker.router, timeout_s=10, encryption="none") as alice, \
                    Client(broker.router, timeout_s=10, encryption="none") as bob:
                for c, name in ((alice, "alice"), (bob, "bob")):
                    try:
                        await c.register(name, PASSWORD)
                    except RequestFailed as exc:  # pragma: no cover - a fresh broker
                        pytest.fail(f"register {name}: {exc}")
                    await c.login(name, PASSWORD)
                    await c.join("dev")
                sent_reply = await alice.send("dev", "still here after the flood")
                got = await next_message(bob, "dev", sender="alice", timeout_s=10)
                page = await bob.history("dev")
                return got.text, [sent_reply.seq, got.seq, *(m.seq for m in page.messages)]

        text, seqs = run(normal_use(), timeout_s=30)
        assert text == "still here after the flood"
        assert seqs == [1, 1, 1]
        assert broker.alive and broker.pid == pid
    finally:
        for d in dealers:
            d.close(0)
        if big is not None:
            big.close(0)
        context.term()
        code = broker.terminate() if broker.alive else None
    log = broker.stderr_text()
    assert "internal error" not in log and "Traceback" not in log, log[-3000:]
    assert oversize == 10 and sent == 19_990
    assert code == 0
