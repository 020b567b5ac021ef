"""Session resume (RESUME, docs/PROTOCOL.md §6.27): a live session taken over by a new
connection without presence events, sessions kept in the store across a broker restart for
``resume_grace_s``, and 401 for everything else. The core runs on the fake clock; the
network cut runs a real broker on loopback TCP behind a small TCP relay the test cuts.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

import pytest
from client_helpers import collect, is_
from conftest import run
from core_helpers import Peer, World, decode_events

from zchat import wire as p
from zchat.client.client import Client
from zchat.client.events import ConnectionLost, ConnectionRestored, Event
from zchat.core import BrokerCore
from zchat.errors import Status
from zchat.passwords import token_sha256
from zchat.store import Store
from zchat.testing import DEFAULT_PASSWORD, running_broker


@pytest.fixture
def world() -> World:
    return World()


def _stored(world: World) -> list[str]:
    return [h for (h,) in world.store._db.execute("SELECT token_sha256 FROM sessions")]


def _login(peer: Peer, name: str) -> p.LoggedIn:
    out = peer.login(name)
    assert isinstance(out.reply, p.LoggedIn), out.reply
    return out.reply


# -- the core, live sessions ----------------------------------------------------------------


def test_login_stores_only_the_hash_of_the_session_token(world: World) -> None:
    alice = world.peer()
    assert alice.register("alice").ok
    token = _login(alice, "alice").session
    assert _stored(world) == [token_sha256(token)]
    assert token not in str(list(world.store._db.execute("SELECT * FROM sessions")))


def test_resume_rebinds_a_live_session_without_presence(world: World) -> None:
    alice = world.user("alice")
    alice.must(p.Join(room="dev"))
    alice.must(p.Send(room="dev", text="one"))
    token = alice.must(p.Ping()).session
    world.clock.jump(3)  # within heartbeat_timeout_s (6 s)
    new = world.peer()
    out = new.call(p.Resume(session=token))
    assert isinstance(out.reply, p.LoggedIn)
    assert (out.reply.name, out.reply.session, out.reply.pending) == ("alice", token, ())
    assert {(r.room, r.last_seq) for r in out.reply.rooms} == {("lobby", 0), ("dev", 1)}
    assert out.events == []  # no offline/online flap
    assert world.core.accounts["alice"].presence == "online"
    assert set(world.core.sessions) == {new.routing_id}
    # the old routing id is forgotten: it has no session any more
    assert alice.call(p.Send(room="dev", text="old")).status == Status.UNAUTHORIZED
    assert new.must(p.Send(room="dev", text="new")).seq == 2
    assert new.must(p.Ping()).session == token
    assert _stored(world) == [token_sha256(token)]


def test_resume_lists_pending_dms(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    token = bob.must(p.Ping()).session
    dm = alice.must(p.SendDirect(to="bob", text="hold"))
    out = world.peer().call(p.Resume(session=token))
    assert [d.id for d in out.reply.pending] == [dm.id]


def test_resume_after_eviction_is_401(world: World) -> None:
    alice = world.user("alice")
    token = alice.must(p.Ping()).session
    world.clock.jump(7)  # silent longer than heartbeat_timeout_s
    events = world.tick()
    assert [(t, e.presence) for t, e in events if isinstance(e, p.PresenceChanged)] == [
        (b"presence/alice/", "offline")]
    assert _stored(world) == []
    out = world.peer().call(p.Resume(session=token))
    assert out.status == Status.UNAUTHORIZED and out.events == []


def test_logout_deletes_the_stored_session(world: World) -> None:
    alice = world.user("alice")
    token = alice.must(p.Ping()).session
    alice.must(p.Logout())
    assert _stored(world) == []
    assert world.peer().call(p.Resume(session=token)).status == Status.UNAUTHORIZED


@pytest.mark.parametrize(("token", "status"), [("", Status.BAD_REQUEST),
                                               ("not-a-session", Status.UNAUTHORIZED),
                                               ("x" * 5000, Status.UNAUTHORIZED)])
def test_bad_tokens_are_refused(world: World, token: str, status: int) -> None:
    world.user("alice")
    before = dict(world.core.sessions)
    out = world.peer().call(p.Resume(session=token))
    assert out.status == status and out.events == []
    assert world.core.sessions == before


def test_resume_on_a_logged_in_connection_is_409(world: World) -> None:
    alice, bob = world.user("alice"), world.user("bob")
    token = alice.must(p.Ping()).session
    out = bob.call(p.Resume(session=token))
    assert out.status == Status.CONFLICT
    assert world.core.sessions[alice.routing_id].name == "alice"  # untouched


def test_revoking_a_token_ends_its_sessions_for_resume_too(world: World) -> None:
    alice = world.user("alice")
    created = alice.must(p.CreateToken(label="bot"))
    bot = world.peer()
    out = bot.call(p.Login(name="alice", token=created.token))
    session = out.reply.session
    alice.must(p.RevokeToken(id=created.id))
    assert world.peer().call(p.Resume(session=session)).status == Status.UNAUTHORIZED
    assert token_sha256(session) not in _stored(world)


def test_second_login_opens_another_session(world: World) -> None:
    """The second-login policy (§6.27): both sessions live, one presence event."""
    first = world.user("alice")
    second = world.peer()
    out = second.login("alice")
    assert out.ok and out.events == []
    assert out.reply.session != first.must(p.Ping()).session
    assert len(world.core.accounts["alice"].sessions) == 2


# -- the core, across a restart ---------------------------------------------------------------


def _restart(path: Path, world: World, **overrides: Any) -> World:
    """Stop ``world``'s core as the broker does (shutdown), then a new core on the file."""
    world.core.shutdown(world.clock.ms)
    world.store.close()
    again = World(Store(path), **overrides)
    again.clock = world.clock
    again.core.expire_restored(world.clock.s)  # the loop's first tick starts the grace
    return again


def test_sessions_are_resumable_after_a_restart_within_the_grace(tmp_path: Path) -> None:
    path = tmp_path / "zchat.db"
    world = World(Store(path))
    alice = world.user("alice")
    world.user("bob")
    token = alice.must(p.Ping()).session
    world = _restart(path, world, resume_grace_s=60)
    world.clock.jump(30)
    out = world.peer().call(p.Resume(session=token))
    assert isinstance(out.reply, p.LoggedIn) and out.reply.session == token
    # offline since the restart: resuming brings the account online, once
    assert [(t, e.presence) for t, e in out.events_of(p.PresenceChanged)] == [
        (b"presence/alice/", "online")]
    # resumed once; the same token again on yet another connection is a live takeover
    again = world.peer().call(p.Resume(session=token))
    assert again.ok and again.events == []


def test_sessions_expire_after_the_grace_and_are_purged(tmp_path: Path) -> None:
    path = tmp_path / "zchat.db"
    world = World(Store(path))
    token = world.user("alice").must(p.Ping()).session
    world = _restart(path, world, resume_grace_s=60)
    assert _stored(world) == [token_sha256(token)]
    world.clock.jump(61)
    world.tick()
    assert _stored(world) == []
    assert world.peer().call(p.Resume(session=token)).status == Status.UNAUTHORIZED


def test_shutdown_keeps_sessions_and_says_going_away_last(world: World) -> None:
    world.user("alice")
    actions = world.core.shutdown(world.clock.ms, "maintenance")
    events = decode_events(actions)
    # Offline presence first: a client closes its sockets when it hears GOING_AWAY.
    assert [e.presence for _t, e in events[:-1]] == ["offline"]
    assert events[-1] == (p.TOPIC_BROKER, p.GoingAway(text="maintenance", time=world.clock.ms))
    assert len(_stored(world)) == 1
    assert isinstance(world.core, BrokerCore) and world.core.sessions == {}


# -- real sockets: a short network cut ---------------------------------------------------------


class Relay:
    """A TCP relay in front of the broker's ROUTER: ``cut()`` closes every connection
    through it (the client's DEALER reconnects by itself and the ROUTER sees a new routing
    id), new connections are relayed as before."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.writers: set[asyncio.StreamWriter] = set()
        self.server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self.server.sockets[0].getsockname()[1]

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        self.writers |= {writer, up_writer}

        async def pump(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(ConnectionError, OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def cut(self) -> None:
        for writer in list(self.writers):
            writer.transport.abort()
        self.writers.clear()

    async def close(self) -> None:
        self.cut()
        if self.server is not None:
            self.server.close()


def test_short_network_cut_resumes_without_presence_flapping() -> None:
    async def main() -> None:
        with running_broker(router="tcp://127.0.0.1:0", pub="tcp://127.0.0.1:0",
                            heartbeat_interval_s=0.25, heartbeat_timeout_s=4.0) as harness:
            relay = Relay(int(harness.server.rsplit(":", 1)[1]))
            await relay.start()
            alice = Client(f"tcp://127.0.0.1:{relay.port}", context=harness.context,
                           timeout_s=1.0, reconnect=True, reconnect_max_s=1.0,
                           key_server=harness.broker.key_endpoint)
            try:
                async with harness.client("bob") as bob:
                    await bob.join("dev")
                    await alice.connect()
                    await alice.register("alice", DEFAULT_PASSWORD)
                    await alice.login("alice", DEFAULT_PASSWORD)
                    await alice.join("dev")
                    token = alice._state.session
                    await collect(bob, is_(p.UserJoined, name="alice", room="dev"))
                    # away is set again after every reconnect; on a resumed live session
                    # it is unchanged, and nobody sees an event for it
                    await alice.set_presence("away", "brb")
                    await collect(bob, is_(p.PresenceChanged, name="alice", presence="away"))
                    relay.cut()
                    seen: list[Event] = await collect(alice, is_(ConnectionRestored),
                                                      timeout_s=8)
                    assert any(isinstance(e, ConnectionLost) for e in seen)
                    assert alice._state.session == token  # resumed, not logged in anew
                    await bob.send("dev", "welcome back")
                    await collect(alice, is_(p.MessagePosted, text="welcome back"))
                    await alice.send("dev", "thanks")
                    observed = await collect(bob, is_(p.MessagePosted, text="thanks"))
                    # the observer saw no offline/online for alice: no flapping
                    assert [e for e in observed if isinstance(e, p.PresenceChanged)
                            and e.name == "alice"] == []
                    assert len(harness.broker.core.accounts["alice"].sessions) == 1
                    found = await bob.whois("alice")
                    assert (found.presence, found.text) == ("away", "brb")
            finally:
                await alice.close()
                await relay.close()

    run(main(), timeout_s=30)
