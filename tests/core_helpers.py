"""BrokerCore driven directly, for the tests of the pure core: real codec, real SQLite
store, a fake clock, no sockets.

The ``Peer`` helper is h11's ConnectionPair idea: it encodes a request with the real codec,
hands the frames to ``BrokerCore.handle`` with the time the test chose, runs any Offload
(password hashing) inline and decodes what the core answered, so each test reads as a
conversation between a client and the broker. ``World`` is a core on a store with its
fake clock (``Clock``), making peers; ``room_with`` fills a room with peers;
``handle_raw`` hands the core one request without running its Offloads.
"""

from __future__ import annotations

import dataclasses
import itertools
from dataclasses import dataclass, field
from typing import Any

from zchat import wire as p
from zchat.config import BrokerConfig
from zchat.core import BrokerCore, Offload, ToPeer, ToTopic
from zchat.names import name_key
from zchat.store import Store
from zchat.testing import create_admin_accounts

PASSWORD = "correct horse"
T0_MS = 1_700_000_000_000


def config(**overrides: Any) -> BrokerConfig:
    base = BrokerConfig(argon2_memory_kib=1024, argon2_time_cost=1,
                        argon2_parallelism=1, heartbeat_interval_s=2.0,
                        heartbeat_timeout_s=6.0, max_text_bytes=4000, max_stored_dms=1000)
    return dataclasses.replace(base, **overrides)


class Clock:
    """A fake clock: monotonic seconds and UTC milliseconds that move only on ``jump``."""

    def __init__(self) -> None:
        self.s = 100.0
        self.ms = T0_MS

    def jump(self, seconds: float) -> None:
        self.s += seconds
        self.ms += int(seconds * 1000)


@dataclass
class Outcome:
    """What the core answered one request with, decoded."""

    reply: p.Message                                     # the OK body or the Error
    pushes: list[tuple[bytes, p.Message]] = field(default_factory=list)  # (routing id, push)
    events: list[tuple[bytes, p.Message]] = field(default_factory=list)  # (topic, event)
    actions: list[Any] = field(default_factory=list)     # every action, Offloads run

    @property
    def ok(self) -> bool:
        return not isinstance(self.reply, p.Error)

    @property
    def status(self) -> int:
        assert isinstance(self.reply, p.Error), f"expected an ERROR, got {self.reply!r}"
        return self.reply.status

    def events_of(self, kind: type[p.Message]) -> list[tuple[bytes, Any]]:
        return [(t, e) for t, e in self.events if isinstance(e, kind)]


_request_ids = itertools.count(1)


def run(core: BrokerCore, actions: list[Any], clock: Clock) -> list[Any]:
    """Run every Offload inline (result or exception back through ``complete``) and return
    all the non-Offload actions, in order."""
    out: list[Any] = []
    queue = list(actions)
    while queue:
        action = queue.pop(0)
        if isinstance(action, Offload):
            try:
                result: Any = action.work()
            except Exception as exc:  # handed back to the core like the real loop does
                result = exc
            queue = core.complete(action.job_id, result, clock.s, clock.ms) + queue
        else:
            out.append(action)
    return out


def decode_events(actions: list[Any]) -> list[tuple[bytes, p.Message]]:
    return [(a.frames[0], p.decode_event(a.frames)) for a in actions if isinstance(a, ToTopic)]


class Peer:
    """One DEALER connection (a routing id) talking to ``core`` through the real codec."""

    def __init__(self, core: BrokerCore, routing_id: bytes, clock: Clock,
                 address: str = "tcp://10.0.0.1:40000") -> None:
        self.core = core
        self.routing_id = routing_id
        self.clock = clock
        self.address = address

    def frames(self, frames: list[bytes], reply_type: type[p.Reply] = p.Ok,
               request_id: bytes | None = None) -> Outcome:
        """Hand raw frames to the core; ``request_id`` is the id the reply must echo."""
        actions = run(self.core, self.core.handle(self.routing_id, frames, self.clock.s,
                                                  self.clock.ms, self.address), self.clock)
        if request_id is None:
            request_id = frames[1] if len(frames) > 1 else b"?"
        replies, pushes = [], []
        for action in actions:
            if not isinstance(action, ToPeer):
                continue
            rid, value = p.decode_from_broker(action.frames, {request_id: reply_type})
            if rid == b"":
                pushes.append((action.routing_id, value))
            else:
                assert action.routing_id == self.routing_id, "a reply went to another peer"
                assert rid == request_id, f"reply echoes {rid!r}, not {request_id!r}"
                replies.append(value)
        assert len(replies) == 1, f"expected exactly one reply, got {replies!r}"
        return Outcome(replies[0], pushes, decode_events(actions), actions)

    def call(self, request: p.Request) -> Outcome:
        request_id = f"r{next(_request_ids)}".encode()
        return self.frames(p.encode_request(request_id, request), type(request).REPLY,
                           request_id)

    # -- conveniences -------------------------------------------------------------------

    def register(self, name: str, password: str = PASSWORD) -> Outcome:
        return self.call(p.Register(name=name, password=password))

    def login(self, name: str, password: str = PASSWORD) -> Outcome:
        return self.call(p.Login(name=name, password=password))

    def must(self, request: p.Request) -> Any:
        out = self.call(request)
        assert out.ok, f"{request.TYPE} failed: {out.reply!r}"
        return out.reply


class World:
    """A core on a store plus a fake clock; makes peers with fresh routing ids."""

    def __init__(self, store: Store | None = None, **overrides: Any) -> None:
        self.store = store if store is not None else Store(":memory:")
        self.clock = Clock()
        # admins' accounts come from the operator: the broker refuses to REGISTER them
        create_admin_accounts(self.store, overrides.get("admins", ()), PASSWORD,
                              self.clock.ms)
        self.core = BrokerCore(self.store, config(**overrides), "tcp://127.0.0.1:5556",
                               now_ms=self.clock.ms)
        self._rids = itertools.count(1)

    def peer(self) -> Peer:
        return Peer(self.core, b"\x00peer%d" % next(self._rids), self.clock)

    def user(self, name: str, register: bool = True) -> Peer:
        """A peer logged in as ``name`` (registered first unless ``register`` is False or
        ``name`` is an admin's, whose account World created)."""
        peer = self.peer()
        if register and name_key(name) not in self.core.admins:
            assert peer.register(name).ok
        out = peer.login(name)
        assert out.ok, out.reply
        return peer

    def tick(self) -> list[tuple[bytes, p.Message]]:
        return decode_events(run(self.core, self.core.tick(self.clock.s, self.clock.ms),
                                 self.clock))

    def counts(self) -> tuple[int, ...]:
        db = self.store._db
        return tuple(db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0]
                     for t in ("accounts", "rooms", "members", "messages", "direct_messages"))


def room_with(world: World, owner: str, *members: str, private: bool = False,
              room: str = "dev") -> dict[str, Peer]:
    """``owner`` creates ``room`` (private: inviting each member), the members join."""
    peers = {owner: world.user(owner)}
    peers[owner].must(p.Join(room=room, private=private))
    for name in members:
        peers[name] = world.user(name)
        if private:
            peers[owner].must(p.Invite(room=room, name=name))
        peers[name].must(p.Join(room=room))
    return peers


def handle_raw(world: World, peer_rid: bytes, request: p.Request,
               address: str) -> list[object]:
    """The core's actions for one request, Offloads NOT run (to see whether it hashed)."""
    frames = p.encode_request(b"r1", request)
    return list(world.core.handle(peer_rid, frames, world.clock.s, world.clock.ms, address))
