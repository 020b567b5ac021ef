"""Failures a cluster must survive, end to end (issue 16, "Failures it must survive";
docs/cluster.md "What each failure looks like to a user"): a real PostgreSQL server, two
real ``zchat broker`` processes on loopback tcp with CurveZMQ sharing one key pair as an
operator sets them up, and real library clients in this process.

- A broker is SIGKILLed: alice (endpoints [A, B]) moves to B and RESUMEs her session,
  missing nothing; bob (on A only) goes offline once when B reaps A's lease; alice never
  goes offline; every acknowledged message is in the database with its seq.
- The link between broker A and PostgreSQL is cut (tests/tcp_proxy.py holds the bytes, as
  a cut network does): A acknowledges nothing it did not commit, fences itself once its
  lease lapsed, its clients move to B and RESUME there, B reaps A once; when the link
  heals A takes a fresh lease and serves again.

Short leases (3 s, renewed every 0.5 s) and heartbeats (0.5 s, timeout 1 s); every wait
is on a condition with a deadline. The times each test measured are printed (``-s``) and
quoted in docs/cluster.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from client_helpers import collect, is_, msgs
from conftest import Proc, cli_env, spawn_on_free_ports, zchat_command
from tcp_proxy import TcpProxy

from zchat import wire as p
from zchat.broker import keypair
from zchat.client import Client
from zchat.client.events import ConnectionLost, ConnectionRestored
from zchat.errors import ConnectionFailed, RequestFailed
from zchat.passwords import token_sha256
from zchat.testing import DEFAULT_PASSWORD, run

#: The brokers' settings: short leases and heartbeats, cheap password hashes. A client
#: notices a dead broker after ``heartbeat_timeout_s`` and moves after the first back-off
#: (0.5 s): within ~1.5 s here, before the lease of 3 s lapses, so that its account is
#: held by the broker it moved to when the reaper counts (docs/cluster.md "How clients
#: move"; with the defaults, 30 s against 10 s, it is not: see the docs' table).
SETTINGS = ("[broker]\nargon2_memory_kib = 1024\nargon2_time_cost = 1\nlogin_rate_per_s = 0\n"
            "heartbeat_interval_s = 0.5\nheartbeat_timeout_s = 1.0\n"
            "lease_s = 3.0\nlease_renew_s = 0.5\ncluster_check_s = 0.5\n")
#: Seconds any one wait of these tests may take before it fails.
WAIT_S = 20.0


class Cluster:
    """Broker processes on one database sharing one key pair (made in the first one's
    data directory and copied, as docs/cluster.md "The shared key pair" says)."""

    def __init__(self, tmp_path: Path, settings: str = SETTINGS) -> None:
        self.tmp_path = tmp_path
        self.settings = settings
        self.procs: list[Proc] = []
        first = tmp_path / "broker-a"
        first.mkdir(mode=0o700)
        keys, _ = keypair.load_or_create_broker_keys(first)
        self.key = keys.public.decode("ascii")
        self.known = tmp_path / "known_brokers.toml"

    def start(self, name: str, url: str) -> tuple[Proc, str]:
        """``zchat broker --id broker-NAME`` on ``url``; its process and ROUTER endpoint,
        once it took its lease. Other ports when a bind fails (taken meanwhile)."""
        data = self.tmp_path / f"broker-{name}"
        if not data.exists():
            data.mkdir(mode=0o700)
            for file in (keypair.BROKER_SECRET_FILE, keypair.BROKER_PUBLIC_FILE):
                shutil.copy2(self.tmp_path / "broker-a" / file, data / file)
        config = self.tmp_path / "broker.toml"
        config.write_text(self.settings, encoding="utf-8")
        proc, router, _pub = spawn_on_free_ports(
            [*zchat_command(), "broker", "--config", str(config), "--data-dir", str(data),
             "--store", url, "--id", f"broker-{name}"], cli_env(self.tmp_path),
            "public key:", timeout_s=WAIT_S)
        self.procs.append(proc)
        return proc, router

    def client(self, servers: str | list[str], **kwargs: object) -> Client:
        return Client(servers, server_key=self.key, known_brokers=self.known,
                      timeout_s=2.0, **kwargs)  # type: ignore[arg-type]

    def close(self) -> None:
        for proc in self.procs:
            proc.kill()


@contextlib.contextmanager
def cluster(tmp_path: Path, settings: str = SETTINGS) -> Iterator[Cluster]:
    made = Cluster(tmp_path, settings)
    try:
        yield made
    finally:
        made.close()


async def logged_in(client: Client, name: str) -> Client:
    await client.connect()
    await client.login(name, DEFAULT_PASSWORD)
    return client


async def until(what: str, check: Callable[[], bool], timeout_s: float = WAIT_S) -> float:
    """Wait until ``check()`` holds (polled, without blocking the clients' loop); the
    monotonic time it did. AssertionError naming ``what`` after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"{what}: not within {timeout_s} s"
        await asyncio.sleep(0.01)  # one polling step of a condition
    return time.monotonic()


def logged(proc: Proc, text: str) -> int:
    """How many lines of ``proc``'s log (stderr) hold ``text``."""
    return sum(text in line for line in list(proc.stderr))


def stored(url: str, room: str) -> list[tuple[int, str]]:
    with psycopg.connect(url, autocommit=True) as db:
        return [(int(seq), str(text)) for seq, text in db.execute(
            "SELECT seq, text FROM messages WHERE room_key = %s ORDER BY seq", (room,))]


def session_holder(url: str, token: str) -> str:
    with psycopg.connect(url, autocommit=True) as db:
        row = db.execute("SELECT broker_id FROM sessions WHERE token_sha256 = %s",
                         (token_sha256(token),)).fetchone()
    assert row is not None, "no session row"
    return str(row[0])


async def close_all(*clients: Client) -> None:
    for client in clients:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(client.close(), 5)


def presence_of(events: list[object], name: str) -> list[str]:
    return [e.presence for e in events
            if isinstance(e, p.PresenceChanged) and e.name == name]


# -- a broker is SIGKILLed -------------------------------------------------------------------


def test_a_sigkilled_broker_its_clients_move_and_its_accounts_go_offline_once(
        tmp_path: Path, pg_url: str) -> None:
    with cluster(tmp_path) as c:
        a, router_a = c.start("a", pg_url)
        b, router_b = c.start("b", pg_url)

        async def scenario() -> None:
            async with c.client(router_b) as admin:
                for name in ("alice", "bob", "carol", "dave", "mark"):
                    await admin.register(name, DEFAULT_PASSWORD)
            alice = await logged_in(c.client([router_a, router_b], reconnect=True), "alice")
            bob = await logged_in(c.client(router_a), "bob")  # does not move
            carol = await logged_in(c.client(router_b), "carol")  # watches presence
            dave = await logged_in(c.client(router_b), "dave")  # posts during the move
            clients = [alice, bob, carol, dave]
            try:
                acked: list[tuple[int, str]] = []  # every OK a client got: (seq, text)
                for client in (alice, bob, dave):
                    await client.join("dev")
                before = await alice.send("dev", "before the kill")
                acked.append((before.seq, "before the kill"))
                await collect(alice, is_(p.MessagePosted, room="dev", seq=before.seq))
                assert alice.server == router_a
                token = alice._state.session
                assert token and session_holder(pg_url, token) == "broker-a"
                carol_events = await _drain(carol)  # what came before the kill

                killed = time.monotonic()
                a.popen.send_signal(signal.SIGKILL)
                assert a.wait(10) == -signal.SIGKILL
                meanwhile = []
                for i in range(5):  # through B while alice is moving
                    sent = await dave.send("dev", f"meanwhile {i}")
                    meanwhile.append(sent.seq)
                    acked.append((sent.seq, f"meanwhile {i}"))
                events = await collect(alice, is_(ConnectionRestored), timeout_s=WAIT_S)
                moved = time.monotonic()
                if not any(is_(p.MessagePosted, room="dev", seq=meanwhile[-1])(e)
                           for e in events):
                    events += await collect(alice, is_(p.MessagePosted, room="dev",
                                                       seq=meanwhile[-1]))
                kinds = [type(e) for e in events]
                assert kinds.count(ConnectionLost) == 1, kinds
                assert kinds.count(ConnectionRestored) == 1, kinds
                assert alice.server == router_b
                assert alice._state.session == token  # RESUMEd: the same session
                heard = [m for m in msgs(events, "dev") if m.seq > before.seq]
                assert [m.seq for m in heard] == meanwhile  # each once, in order
                assert [m.text for m in heard] == [f"meanwhile {i}" for i in range(5)]
                assert any("resumed alice from the store" in line
                           for line in list(b.stderr)), b.stderr

                # B reaps A once its lease expired: bob (no session anywhere) offline,
                # once; alice (her session now on B) neither offline nor online again
                carol_events += await collect(carol, is_(p.PresenceChanged, name="bob",
                                                         presence="offline"),
                                              timeout_s=WAIT_S)
                offline = time.monotonic()
                reaped = await until("B logged the reaping", lambda: logged(
                    b, "took over the sessions of broker broker-a") > 0)
                mark = await logged_in(c.client(router_b), "mark")  # a marker on B's PUB
                clients.append(mark)
                carol_events += await collect(carol, is_(p.PresenceChanged, name="mark",
                                                         presence="online"))
                assert presence_of(carol_events, "bob") == ["offline"], carol_events
                assert presence_of(carol_events, "alice") == [], carol_events
                assert logged(b, "took over the sessions of broker broker-a") == 1, b.stderr
                assert session_holder(pg_url, token) == "broker-b"

                after = await alice.send("dev", "after the move")
                acked.append((after.seq, "after the move"))
                await collect(dave, is_(p.MessagePosted, room="dev", seq=after.seq))
                # nothing acknowledged is lost, nothing is doubled, no seq is skipped
                assert stored(pg_url, "dev") == sorted(acked)
                assert [seq for seq, _ in sorted(acked)] == \
                    list(range(before.seq, before.seq + len(acked)))
                print(f"\nSIGKILL: alice moved to B and resumed {moved - killed:.2f} s "
                      f"after the kill; bob offline on B's PUB {offline - killed:.2f} s "
                      f"after (reaping logged at {reaped - killed:.2f} s)")
            finally:
                await close_all(*clients)

        run(scenario(), timeout_s=60)


async def _drain(client: Client) -> list[object]:
    """The events ``client`` has queued now, without waiting for more."""
    out: list[object] = []
    while (event := await client.next_event(0.05)) is not None:
        out.append(event)
    return out


# -- the link between one broker and PostgreSQL is cut ---------------------------------------


def via(url: str, port: int) -> str:
    """``url`` with its port replaced by ``port`` (the proxy's)."""
    parts = urlsplit(url)
    netloc = parts.netloc.rsplit(":", 1)[0] + f":{port}"
    return urlunsplit(parts._replace(netloc=netloc))


def test_a_broker_cut_from_postgresql_fences_itself_its_clients_move_then_it_serves_again(
        tmp_path: Path, pg_url: str) -> None:
    pg_port = urlsplit(pg_url).port
    assert pg_port is not None
    with TcpProxy("127.0.0.1", pg_port) as proxy, cluster(tmp_path) as c:
        a, router_a = c.start("a", via(pg_url, proxy.port))
        b, router_b = c.start("b", pg_url)

        async def scenario() -> None:
            async with c.client(router_b) as admin:
                for name in ("alice", "pat", "quinn"):
                    await admin.register(name, DEFAULT_PASSWORD)
            alice = await logged_in(c.client([router_a, router_b], reconnect=True), "alice")
            pat = await logged_in(c.client(router_a), "pat")  # posts through A only
            clients = [alice, pat]
            try:
                await alice.join("dev")
                await pat.join("dev")
                token = alice._state.session
                assert token
                poster = Poster(pat)
                posting = asyncio.create_task(poster.run())
                await until("pat's first OK", lambda: len(poster.acked) >= 3)

                cut = time.monotonic()
                proxy.blackhole()
                # each awaited at once, so that each time is its own
                fencing = asyncio.create_task(until("A logged its fencing", lambda: logged(
                    a, "fenced out of the cluster") > 0))
                reaping = asyncio.create_task(until("B reaped A", lambda: logged(
                    b, "took over the sessions of broker broker-a") > 0))
                events = await collect(alice, is_(ConnectionRestored), timeout_s=WAIT_S)
                moved = time.monotonic()
                try:
                    fenced, reaped = await asyncio.gather(fencing, reaping)
                except AssertionError:
                    _show_activity(pg_url)
                    raise
                assert fenced - cut >= 3.0  # not before its lease (lease_s 3) lapsed
                assert alice.server == router_b
                assert alice._state.session == token  # RESUMEd on B
                assert [type(e) for e in events].count(ConnectionLost) == 1
                assert session_holder(pg_url, token) == "broker-b"
                # A stopped acknowledging: no OK after the cut (a commit in flight at
                # the cut would be answered within milliseconds)
                await until("pat refused or unanswered", lambda: bool(poster.failed))
                poster.stop = True
                await asyncio.wait_for(posting, WAIT_S)
                late = [t - cut for _s, _t, t in poster.acked if t > cut + 0.5]
                assert late == [], late

                healed = time.monotonic()
                proxy.forward()
                await until("A took a fresh lease", lambda: logged(a, "epoch 2") > 0)
                leased = time.monotonic()
                # A serves again: a client on A alone logs in and posts
                quinn = c.client(router_a)
                clients.append(quinn)
                sent = await _post_until_ok(quinn)
                serves = time.monotonic()
                assert logged(b, "took over the sessions of broker broker-a") == 1, b.stderr
                rows = dict(stored(pg_url, "dev"))
                # every OK was committed, with its seq (the ambiguous COMMIT cut midway
                # may have stored one more that got no OK: not asserted either way)
                for seq, text, _t in poster.acked:
                    assert rows.get(seq) == text, (seq, text, rows)
                assert rows.get(sent.seq) == "A serves again"
                assert sorted(rows) == list(range(1, len(rows) + 1))  # no gap
                print(f"\nlink cut: A fenced {fenced - cut:.2f} s after the cut; alice "
                      f"moved {moved - cut:.2f} s after; B reaped A {reaped - cut:.2f} s "
                      f"after; pat's failures {sorted(poster.failed)}; A leased again "
                      f"{leased - healed:.2f} s after the link healed and served "
                      f"{serves - healed:.2f} s after")
            finally:
                await close_all(*clients)

        run(scenario(), timeout_s=90)


def _show_activity(url: str) -> None:
    """Print what the database's sessions are doing (a failed wait's report)."""
    with psycopg.connect(url, autocommit=True) as db:
        for row in db.execute(
                "SELECT pid, application_name, state, wait_event, now() - state_change, "
                "left(query, 80) FROM pg_stat_activity WHERE datname = current_database()"):
            print("pg_stat_activity:", row)
        for row in db.execute(
                "SELECT l.pid, l.locktype, l.relation::regclass::text, l.mode, l.granted, "
                "a.state, a.backend_type, a.application_name, a.client_port, left(a.query, 60) "
                "FROM pg_locks l LEFT JOIN pg_stat_activity a ON a.pid = l.pid "
                "WHERE l.pid <> pg_backend_pid()"):
            print("pg_locks:", row)
        for row in db.execute("SELECT id, epoch, lease_until, clock_timestamp(), reaped "
                              "FROM brokers"):
            print("brokers:", row)


class Poster:
    """Posts ``pat <i>`` (cmid ``pat-<i>``) through one client without pause until
    ``stop``; every OK (seq, text, monotonic time) and every refusal or missing answer
    (counted by kind: the status, or "no answer")."""

    def __init__(self, client: Client) -> None:
        self.client = client
        self.acked: list[tuple[int, str, float]] = []
        self.failed: dict[str, int] = {}
        self.stop = False

    async def run(self) -> None:
        i = 0
        while not self.stop:
            text = f"pat {i}"
            try:
                sent = await asyncio.wait_for(
                    self.client.send("dev", text, cmid=f"pat-{i}",
                                     retry_unavailable=False), 10)
            except RequestFailed as exc:
                self._fail(str(exc.status))
                await self._pause()
            except (ConnectionFailed, TimeoutError):
                self._fail("no answer")
                await self._pause()
            else:
                self.acked.append((sent.seq, text, time.monotonic()))
                i += 1

    def _fail(self, kind: str) -> None:
        self.failed[kind] = self.failed.get(kind, 0) + 1

    async def _pause(self) -> None:
        await asyncio.sleep(0.1)  # the client's own retry pause after a failure


async def _post_until_ok(client: Client) -> p.Sent:
    """Log ``client`` in (as quinn) and post one message, each tried again on 503 while
    A finishes coming back (its loop reconnects its store at its next request)."""
    deadline = time.monotonic() + WAIT_S
    while True:
        try:
            if client.name is None:
                await logged_in(client, "quinn")
                await client.join("dev")
            return await client.send("dev", "A serves again", cmid="quinn-1")
        except (RequestFailed, ConnectionFailed) as exc:
            assert time.monotonic() < deadline, f"A does not serve again: {exc}"
            await asyncio.sleep(0.1)  # the client's own retry pause after a 503
