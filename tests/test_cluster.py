"""Several brokers on one PostgreSQL database (issue 16, docs/cluster.md): real broker
threads on inproc:// endpoints of their own (zchat.testing.running_cluster), one real
database of the session's server, real clients on different brokers.

What each broker publishes is also read by a raw SUB socket on its PUB, so that "once,
in order" is checked on the wire, not only after the client's own repair (which would
hide a message published twice or filled in from HISTORY)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
import zmq
from client_helpers import collect, is_, msgs
from conftest import start_broker, stop_broker
from postgres_server import PostgresServer

from zchat import wire as p
from zchat.client import Client
from zchat.client.events import SessionEnded
from zchat.errors import RequestFailed
from zchat.testing import DEFAULT_PASSWORD, Harness, next_dm, running_cluster


class RawSub:
    """A plain SUB on one broker's PUB, subscribed to one room's topic."""

    def __init__(self, harness: Harness, room_key: str) -> None:
        self.sock = harness.context.socket(zmq.SUB)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.setsockopt(zmq.RCVHWM, 100_000)
        self.sock.connect(harness.broker.pub_endpoint)
        self.sock.setsockopt(zmq.SUBSCRIBE, p.room_topic(room_key))
        self.messages: list[p.MessagePosted] = []

    def read(self, count: int, timeout_s: float = 5.0) -> list[p.MessagePosted]:
        """Read room messages until ``count`` were heard; then anything more that
        arrives within 0.2 s (a message published twice would be there)."""
        deadline = time.monotonic() + timeout_s
        extra_until = None
        while True:
            now = time.monotonic()
            if len(self.messages) >= count and extra_until is None:
                extra_until = now + 0.2
            end = extra_until if extra_until is not None else deadline
            if now >= end:
                break
            if self.sock.poll(int((end - now) * 1000) + 1):
                event = p.decode_event(self.sock.recv_multipart())
                if isinstance(event, p.MessagePosted):
                    self.messages.append(event)
        return self.messages

    def close(self) -> None:
        self.sock.close(0)


@contextlib.contextmanager
def raw_subs(harnesses: list[Harness], room_key: str) -> Iterator[list[RawSub]]:
    subs = [RawSub(h, room_key) for h in harnesses]
    try:
        yield subs
    finally:
        for sub in subs:
            sub.close()


async def logged_in(harness: Harness, name: str) -> Client:
    client = harness.new_client()
    await client.connect()
    with contextlib.suppress(RequestFailed):
        await client.register(name, "correct horse battery staple")
    await client.login(name, "correct horse battery staple")
    return client


def run(coro: Any, timeout_s: float = 60.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout_s))


async def until_subscribed(client: Client, others: list[Client], room: str) -> None:
    """Wait until ``client`` hears a message posted now (its SUB is in place)."""
    probe = await others[0].send(room, "probe")
    await collect(client, is_(p.MessagePosted, room=room, seq=probe.seq))


def test_messages_posted_through_every_broker_reach_everyone_once_in_order(
        pg_url: str) -> None:
    per_client = 25
    with running_cluster(pg_url, 3) as brokers:
        async def scenario() -> None:
            names = ("alice", "bob", "carol")
            clients = [await logged_in(h, n) for h, n in zip(brokers, names, strict=True)]
            try:
                for client in clients:
                    await client.join("dev")
                with raw_subs(brokers, "dev") as subs:
                    for client in clients:  # every SUB, raw and the clients', in place
                        await until_subscribed(client, clients, "dev")
                    for sub in subs:
                        sub.read(3)
                        sub.messages.clear()
                    first = 4

                    async def post(client: Client) -> list[int]:
                        return [(await client.send("dev", f"{client.name} {i}")).seq
                                for i in range(per_client)]

                    sent = await asyncio.gather(*(post(c) for c in clients))
                    total = 3 * per_client
                    last = first + total - 1
                    # gap-free and unique: the seqs handed out are exactly first..last
                    assert sorted(s for seqs in sent for s in seqs) == \
                        list(range(first, last + 1))
                    stored = {}
                    for seqs, name in zip(sent, names, strict=True):
                        for i, seq in enumerate(seqs):
                            stored[seq] = f"{name} {i}"
                    for client in clients:
                        heard = [m for m in msgs(await collect(
                            client, is_(p.MessagePosted, seq=last)), "dev")
                            if m.seq >= first]  # the probes before are not counted
                        assert [m.seq for m in heard] == list(range(first, last + 1))
                        assert [m.text for m in heard] == [stored[s] for s in
                                                           range(first, last + 1)]
                    for sub in subs:  # on the wire: each broker published each once
                        heard = sub.read(total)
                        assert [m.seq for m in heard] == list(range(first, last + 1))
                        assert [m.text for m in heard] == [stored[s] for s in
                                                           range(first, last + 1)]
            finally:
                for client in clients:
                    await client.close()

        run(scenario())


def test_a_change_made_through_one_broker_takes_effect_on_another(pg_url: str) -> None:
    with running_cluster(pg_url, 2, admins=("root",)) as (one, two):
        async def scenario() -> dict[str, float]:
            alice = await logged_in(one, "alice")
            bob = await logged_in(two, "bob")
            admin = one.new_client()
            await admin.connect()
            await admin.login("root", "correct horse battery staple")
            waited: dict[str, float] = {}
            try:
                await alice.join("dev")
                await bob.join("dev")

                async def until(what: str, check: Any) -> None:
                    started = time.monotonic()
                    while not await check():
                        assert time.monotonic() - started < 5, f"{what} never took effect"
                        await asyncio.sleep(0.002)  # polling a condition
                    waited[what] = time.monotonic() - started

                def refused(word: str) -> Any:
                    async def check() -> bool:
                        try:
                            await bob.send("dev", "still here?")
                        except RequestFailed as exc:
                            assert exc.status == 403 and word in exc.reason, exc
                            return True
                        return False
                    return check

                async def topic_seen() -> bool:  # broker 2 answers from its memory
                    return (await bob.room_info("dev")).topic == "release at 5"

                await alice.set_topic("dev", "release at 5")
                await until("topic", topic_seen)
                await alice.mute("bob", room="dev", reason="calm down")
                await until("mute", refused("muted"))
                await alice.unmute("bob", room="dev")

                async def unmuted() -> bool:
                    return not await refused("muted")()

                await until("unmute", unmuted)
                await alice.kick("dev", "bob")
                await until("kick", refused("JOIN"))
                await admin.request(p.SetDisabled(name="bob", disabled=True))
                started = time.monotonic()
                ended = await collect(bob, is_(SessionEnded), timeout_s=5)
                waited["disable"] = time.monotonic() - started
                assert isinstance(ended[-1], SessionEnded)
                assert "disabled" in ended[-1].reason
                again = two.new_client()
                await again.connect()
                with pytest.raises(RequestFailed) as refused_login:
                    await again.login("bob", "correct horse battery staple")
                await again.close()
                assert refused_login.value.status == 403
                return waited
            finally:
                for client in (alice, bob, admin):
                    await client.close()

        waited = run(scenario())
        print("time until a change through broker 1 took effect on broker 2:",
              {k: f"{v * 1000:.1f} ms" for k, v in waited.items()})
        assert max(waited.values()) < 1.0  # a notification, not the 10 s refresh


def test_a_dm_through_one_broker_reaches_the_sessions_on_others_once(pg_url: str) -> None:
    with running_cluster(pg_url, 3) as (one, two, three):
        async def scenario() -> None:
            alice = await logged_in(one, "alice")
            alice_two = await logged_in(two, "alice")  # her other device
            bob_two = await logged_in(two, "bob")
            bob_three = await logged_in(three, "bob")
            try:
                first = await alice.dm("bob", "psst")
                second = await alice.dm("bob", "still there?")
                # each of bob's sessions gets both, whichever acknowledges first (a DM
                # acknowledged is no longer pending: pushes are read by id), and alice's
                # other session gets their echo
                for bob in (bob_two, bob_three, alice_two):
                    got = [await next_dm(bob, sender="alice"),
                           await next_dm(bob, sender="alice")]
                    assert [(d.id, d.text, d.to) for d in got] == \
                        [(first.id, "psst", "bob"), (second.id, "still there?", "bob")]
                # a third DM: only it is pushed, the first two are not pushed again
                third = await alice.dm("bob", "ok bye")
                for bob in (bob_two, bob_three):
                    dm = await next_dm(bob, sender="alice")
                    assert (dm.id, dm.text) == (third.id, "ok bye")
                    rest = []
                    while (event := await bob.next_event(0.3)) is not None:
                        rest.append(event)
                    assert not [e for e in rest if isinstance(e, p.DirectMessage)]
            finally:
                for client in (alice, alice_two, bob_two, bob_three):
                    await client.close()

        run(scenario())


def test_a_dm_stays_pending_across_brokers_until_acknowledged(pg_url: str) -> None:
    with running_cluster(pg_url, 2) as (one, two):
        async def scenario() -> None:
            alice = await logged_in(one, "alice")
            bob = two.new_client()
            await bob.connect()
            await bob.register("bob", "correct horse battery staple")
            try:
                sent = await alice.dm("bob", "for later")
                assert sent.delivered == "stored"  # bob has no session anywhere
                # bob logs in on broker 2: the DM stored through broker 1 is pending
                reply = await bob.login("bob", "correct horse battery staple")
                assert [(d.id, d.text) for d in reply.pending] == [(sent.id, "for later")]
                # the client hands the reply's pending DM on; broker 2 does not push it
                # again when the next DM's notification makes it read bob's pending ones
                later = await alice.dm("bob", "and now")
                events = await collect(bob, is_(p.DirectMessage, id=later.id))
                assert [(e.id, e.text) for e in events if isinstance(e, p.DirectMessage)] \
                    == [(sent.id, "for later"), (later.id, "and now")]
            finally:
                await alice.close()
                await bob.close()

        run(scenario())


def test_delivery_completes_when_every_notification_is_lost(pg_url: str) -> None:
    check_s, refresh_s = 0.2, 0.5
    with running_cluster(pg_url, 2, cluster_check_s=check_s,
                         cluster_refresh_s=refresh_s) as (one, two):
        async def scenario() -> dict[str, float]:
            alice = await logged_in(one, "alice")
            bob = await logged_in(two, "bob")
            waited: dict[str, float] = {}
            try:
                await alice.join("dev")
                await bob.join("dev")
                for harness in (one, two):
                    assert harness.broker.cluster is not None
                    harness.broker.cluster.drop_notifications = True
                heard_before = two.broker.cluster.heard
                with raw_subs([two], "dev") as (sub,):
                    await until_subscribed(bob, [alice], "dev")
                    sub.read(1)
                    sub.messages.clear()
                    started = time.monotonic()
                    sent = [(await alice.send("dev", f"m{i}")).seq for i in range(10)]
                    heard = await asyncio.to_thread(sub.read, 10)
                    waited["messages"] = time.monotonic() - started
                    assert [m.seq for m in heard] == sent
                    assert [m.text for m in heard] == [f"m{i}" for i in range(10)]
                started = time.monotonic()
                dm = await alice.dm("bob", "lost wake-up")
                got = await next_dm(bob, sender="alice")
                waited["dm"] = time.monotonic() - started
                assert (got.id, got.text) == (dm.id, "lost wake-up")
                await alice.set_topic("dev", "quiet")
                started = time.monotonic()
                while (await bob.room_info("dev")).topic != "quiet":
                    assert time.monotonic() - started < 5
                    await asyncio.sleep(0.01)  # polling a condition
                waited["topic"] = time.monotonic() - started
                assert two.broker.cluster is not None and two.broker.cluster.dropped > 0
                assert two.broker.cluster.heard == heard_before  # none got through
                return waited
            finally:
                await alice.close()
                await bob.close()

        waited = run(scenario())
        print("with every notification dropped:",
              {k: f"{v * 1000:.0f} ms" for k, v in waited.items()})
        assert waited["messages"] < check_s + 1.0
        assert waited["dm"] < refresh_s + 1.0


def test_a_lost_listening_connection_is_made_again_and_nothing_is_missed(
        pg_url: str, postgres_server: PostgresServer) -> None:
    with running_cluster(pg_url, 2, cluster_check_s=0.2) as (one, two):
        async def scenario() -> None:
            alice = await logged_in(one, "alice")
            bob = await logged_in(two, "bob")
            try:
                await alice.join("dev")
                await bob.join("dev")
                cluster = two.broker.cluster
                assert cluster is not None and cluster.listener.connects == 1
                with raw_subs([two], "dev") as (sub,):
                    await until_subscribed(bob, [alice], "dev")
                    sub.read(1)
                    sub.messages.clear()
                    # the server ends broker 2's LISTEN connection (a restart, a cut)
                    with psycopg.connect(postgres_server.url("postgres"),
                                         autocommit=True) as admin:
                        ended = admin.execute(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = %s",
                            (f"zchat-broker {cluster.id}",)).fetchall()
                    assert ended == [(True,)]
                    sent = [(await alice.send("dev", f"m{i}")).seq for i in range(5)]
                    heard = await asyncio.to_thread(sub.read, 5)
                    assert [m.seq for m in heard] == sent
                    assert cluster.listener.connects == 2  # listening again
            finally:
                await alice.close()
                await bob.close()

        run(scenario())


def test_room_events_and_pushes_made_through_one_broker_reach_clients_on_another(
        pg_url: str) -> None:
    with running_cluster(pg_url, 2) as (one, two):
        async def scenario() -> None:
            alice = await logged_in(one, "alice")
            bob = await logged_in(two, "bob")
            try:
                await alice.join("dev")
                await bob.join("dev")
                with raw_subs([two], "dev") as (sub,):
                    await until_subscribed(bob, [alice], "dev")
                    await alice.set_topic("dev", "release at 5")
                    topic = await collect(bob, is_(p.TopicChanged, topic="release at 5"))
                    assert topic[-1].by == "alice"  # type: ignore[union-attr]
                    # on broker 2's PUB once: relayed, not published twice
                    frames = []
                    while sub.sock.poll(300):
                        frames.append(p.decode_event(sub.sock.recv_multipart()))
                    assert [e.topic for e in frames if isinstance(e, p.TopicChanged)] \
                        == ["release at 5"]
                # a push to an account (MUTE) and a kick's LEFT, both through broker 1
                await alice.mute("bob", room="dev", reason="calm down")
                await collect(bob, is_(p.MuteChanged, room="dev"))
                await alice.kick("dev", "bob", reason="bye")
                left = await collect(bob, is_(p.UserLeft, name="bob"))
                assert (left[-1].by, left[-1].reason) == ("alice", "bye")  # type: ignore[union-attr]
                # and the other way: carol registers and joins through broker 2, alice
                # hears it on 1, whose copy of the members has her, added one by one
                # (no reload of the whole state for a REGISTER or a JOIN)
                assert one.broker.cluster is not None
                syncs = one.broker.cluster.syncs
                carol = await logged_in(two, "carol")
                try:
                    await carol.join("dev")
                    await collect(alice, is_(p.UserJoined, room="dev", name="carol"))
                    assert [u.name for u in (await alice.who("dev")).users] == \
                        ["alice", "carol"]
                    assert one.broker.cluster.syncs == syncs
                finally:
                    await carol.close()
            finally:
                await alice.close()
                await bob.close()

        run(scenario())


def test_two_zchat_broker_processes_on_one_database_are_a_cluster(
        tmp_path: Path, pg_url: str) -> None:
    """The real thing: two ``zchat broker`` processes on tcp, one database, each with its
    ``[broker] id``; a message and a DM cross from one to the other."""
    brokers = []
    try:
        for name in ("chat-a", "chat-b"):
            (tmp_path / name).mkdir()
            broker, _lines = start_broker(
                tmp_path / name, settings=f'store = "{pg_url}"\nid = "{name}"\n'
                                          'encryption = "none"\nlog_level = "info"\n')
            brokers.append(broker)

        async def scenario() -> None:
            alice = Client(brokers[0].router, encryption="none")
            bob = Client(brokers[1].router, encryption="none")
            for client, name in ((alice, "alice"), (bob, "bob")):
                await client.connect()
                await client.register(name, DEFAULT_PASSWORD)
                await client.login(name, DEFAULT_PASSWORD)
                await client.join("ops")
            try:
                sent = await alice.send("ops", "across processes")
                heard = await collect(bob, is_(p.MessagePosted, seq=sent.seq))
                assert heard[-1].text == "across processes"  # type: ignore[union-attr]
                dm = await alice.dm("bob", "and a DM")
                assert (await next_dm(bob, sender="alice")).id == dm.id
            finally:
                await alice.close()
                await bob.close()

        run(scenario())
    finally:
        for broker in brokers:
            rc, _elapsed = stop_broker(broker)
            assert rc == 0, broker.process.stderr
    for broker, name in zip(brokers, ("chat-a", "chat-b"), strict=True):
        assert any(f"broker {name}: listening for the other brokers" in line
                   for line in broker.process.stderr), broker.process.stderr
