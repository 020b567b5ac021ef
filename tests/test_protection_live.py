"""Protection against a real broker (docs/PROTOCOL.md §6.28, §15): real zmq sockets on
inproc:// with the broker thread, and one ``zchat broker`` subprocess on loopback TCP where
the peer address is real, driven by raw DEALER sockets and by the ``zchat`` CLI.

Nothing here sleeps to wait for a socket: replies are awaited with deadlines, and the
CLI's output is awaited line by line.
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import zmq
from conftest import Proc, cli_env, free_port, run, zchat_command
from raw_helpers import RawPeer

from zchat import wire as p
from zchat.client.client import Client
from zchat.errors import RequestFailed, Status
from zchat.testing import DEFAULT_PASSWORD, next_message, running_broker

# -- inproc: a flooding client and its neighbours -----------------------------------------------


def test_a_flooder_gets_429s_while_another_client_sends_normally() -> None:
    # Deliberately low limits so that the flood is refused within a few requests.
    with running_broker(send_rate_per_s=1.0, send_burst=5) as h:
        async def scenario() -> None:
            async with h.client("flood") as flood, h.client("calm") as calm, \
                    h.client("watch") as watch:
                ok: dict[int, str] = {}
                refused: list[RequestFailed] = []
                for i in range(30):
                    try:
                        ok[(await flood.send("lobby", f"flood {i}", patient=False)).seq] = \
                            f"flood {i}"
                    except RequestFailed as exc:
                        refused.append(exc)
                assert len(ok) >= 5 and refused, (len(ok), len(refused))
                assert len(ok) + len(refused) == 30
                for exc in refused:
                    assert exc.status == Status.TOO_MANY_REQUESTS
                    assert 0 < exc.retry_after_ms <= 1000
                    assert exc.reason.startswith("sending too fast: wait ")
                # calm has a bucket of its own: every one of its messages goes at once
                for i in range(5):
                    ok[(await calm.send("lobby", f"calm {i}", patient=False)).seq] = \
                        f"calm {i}"
                # the flooder is not cut off: a patient send waits retry_after and passes
                sent = await flood.send("lobby", "flood, patiently")
                ok[sent.seq] = "flood, patiently"
                assert sorted(ok) == list(range(1, len(ok) + 1))  # no seq used by a 429
                seen = []
                while len(seen) < len(ok):
                    seen.append(await next_message(watch, "lobby"))
                assert [(m.seq, m.text) for m in seen] == sorted(ok.items())
                page = await watch.history("lobby", limit=p.MAX_HISTORY_LIMIT)
                assert [(m.seq, m.text) for m in page.messages] == sorted(ok.items())
            # and the broker serves a newcomer as usual
            async with h.client("late") as late:
                assert (await late.send("lobby", "hello")).seq == len(ok) + 1

        run(scenario())


def test_slow_mode_over_real_sockets() -> None:
    with running_broker(send_rate_per_s=0.0) as h:
        async def scenario() -> None:
            async with h.client("owner") as owner, h.client("bob") as bob:
                await owner.join("dev")
                assert (await bob.join("dev")).slow_mode_s == 0
                with pytest.raises(RequestFailed) as info:
                    await bob.set_slow_mode("dev", 30)
                assert info.value.status == Status.FORBIDDEN
                await owner.set_slow_mode("dev", 30)
                event = None
                while not isinstance(event, p.SlowModeChanged):
                    event = await bob.next_event(5.0)
                    assert event is not None, "no SLOW_MODE event"
                assert (event.room, event.seconds, event.by) == ("dev", 30, "owner")
                first = await bob.send("dev", "one", patient=False)
                with pytest.raises(RequestFailed) as info:
                    await bob.send("dev", "two", patient=False)
                assert info.value.status == Status.TOO_MANY_REQUESTS
                assert info.value.reason.startswith("slow mode in #dev: wait ")
                assert 29_000 < info.value.retry_after_ms <= 30_000
                assert (await owner.send("dev", "exempt")).seq == first.seq + 1
                rooms = {r.room: r.slow_mode_s for r in (await bob.list_rooms()).rooms}
                assert rooms["dev"] == 30

        run(scenario())


# -- TCP: a password brute force from one address -----------------------------------------------


class TcpBroker:
    def __init__(self, proc: Proc, router: str, port: int) -> None:
        self.proc, self.router, self.port = proc, router, port


@pytest.fixture
def limited_broker(tmp_path: Path) -> Iterator[TcpBroker]:
    """``zchat broker`` on loopback TCP allowing 3 login attempts per address, then one
    every 5 s."""
    config = tmp_path / "broker.toml"
    # Plain transport: the raw DEALERs below speak the codec without CURVE (encryption
    # is proved in tests/test_curve.py).
    config.write_text("[broker]\nargon2_memory_kib = 1024\nargon2_time_cost = 1\nlogin_rate_per_s = 0.2\nlogin_burst = 3\n"
                      "encryption = \"none\"\n", encoding="utf-8")
    client_config = tmp_path / "xdg-config" / "zchat" / "zchat.toml"  # cli_env's default
    client_config.parent.mkdir(parents=True, exist_ok=True)
    client_config.write_text("[client]\nencryption = \"none\"\n", encoding="utf-8")
    for _ in range(5):
        port, pub = free_port(), free_port()
        if port == pub:
            continue
        router = f"tcp://127.0.0.1:{port}"
        proc = Proc([*zchat_command(), "broker", "--config", str(config), "--data-dir",
                     str(tmp_path / "data"), "--router", router, "--pub",
                     f"tcp://127.0.0.1:{pub}"], cli_env(tmp_path))
        try:
            proc.wait_line("stdout", "database", timeout_s=15)
        except AssertionError:
            rc = proc.popen.poll()
            proc.kill()
            if rc == 1 and any("cannot bind" in line for line in proc.stderr):
                continue
            raise
        break
    else:
        raise AssertionError("could not bind a broker")
    try:
        yield TcpBroker(proc, router, port)
    finally:
        proc.popen.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()


def test_brute_force_from_one_address_is_throttled_another_address_logs_in(
        limited_broker: TcpBroker, tmp_path: Path) -> None:
    ctx = zmq.Context.instance()
    attacker = RawPeer(ctx, f"tcp://127.0.0.1:{limited_broker.port}", "127.0.0.1")
    friend = RawPeer(ctx, f"tcp://127.0.0.1:{limited_broker.port}", "127.0.0.2")
    try:
        assert isinstance(attacker.call(p.Register(name="alice", password=DEFAULT_PASSWORD)),
                          p.Registered)                                   # attempt 1
        for _ in range(2):                                                # attempts 2, 3
            err = attacker.call(p.Login(name="alice", password="guess"))
            assert isinstance(err, p.Error) and err.status == Status.UNAUTHORIZED
        for guess in ("guess", "hunter2", DEFAULT_PASSWORD):
            err = attacker.call(p.Login(name="alice", password=guess))
            assert isinstance(err, p.Error), err
            assert err.status == Status.TOO_MANY_REQUESTS
            assert 0 < err.retry_after_ms <= 5000
            assert "too many login attempts from your address" in err.reason
        # another address is not affected, and the broker answers the attacker as usual
        logged = friend.call(p.Login(name="alice", password=DEFAULT_PASSWORD))
        assert isinstance(logged, p.LoggedIn) and logged.name == "alice"
        assert isinstance(attacker.call(p.Ping()), p.Pong)
        assert limited_broker.proc.popen.poll() is None
    finally:
        attacker.close()
        friend.close()

    # The CLI (from a third address): the room's creator sets slow mode with `zchat slow`.
    env = cli_env(tmp_path)
    server = f"tcp://127.0.0.3:0;127.0.0.1:{limited_broker.port}"

    def cli(*argv: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*zchat_command(), *argv, "--server", server], env=env,
                              capture_output=True, text=True, timeout=30)

    done = cli("say", "--as", "alice", "--room", "news", "first")
    assert done.returncode == 0, done.stderr
    done = cli("slow", "--as", "alice", "news", "30")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "slow mode of #news: one message per 30 s"
    done = cli("slow", "--as", "alice", "news", "86401")
    assert done.returncode == 2 and "must be a whole number from 0 to 86400" in done.stderr

    # A member posting twice in slow mode: `zchat say -` waits, and says why on stderr (a
    # tester's `say` sat silent for minutes). From a fourth address: a fresh login bucket.
    assert cli("slow", "--as", "alice", "news", "2").returncode == 0
    server = f"tcp://127.0.0.4:0;127.0.0.1:{limited_broker.port}"
    assert cli("register", "bob").returncode == 0
    done = subprocess.run([*zchat_command(), "say", "--as", "bob", "--room", "news", "-",
                           "--server", server], env=env, capture_output=True, text=True,
                          timeout=60, input="one\ntwo\n")
    assert done.returncode == 0, done.stderr
    assert re.search(r"^zchat: slow mode in #news: wait \d\.\d s \(one message per 2 s\); "
                     r"trying again in \d s$", done.stderr, re.MULTILINE), done.stderr
    history = cli("history", "--as", "alice", "--room", "news", "--json")
    assert [json.loads(line)["text"] for line in history.stdout.splitlines()][-2:] == [
        "one", "two"]


def test_client_login_waits_out_a_429() -> None:
    # One attempt per connection, then one a second: Client.login waits and retries.
    with running_broker(login_rate_per_s=1.0, login_burst=1) as h:
        async def scenario() -> None:
            client = Client(h.server, context=h.context, timeout_s=5.0)
            await client.connect()
            try:
                await client.register("alice", DEFAULT_PASSWORD)    # the one token
                reply = await client.login("alice", DEFAULT_PASSWORD)  # waits ~1 s
                assert reply.name == "alice"
            finally:
                await client.close()

        run(scenario())


def test_a_burst_of_joins_waits_its_turn_instead_of_failing() -> None:
    """A tester's rapid ``/join jN`` (50 ms apart) met the JOIN rate limit (a JOIN of a
    room not joined takes a sending token, docs/PROTOCOL.md §15.1): some were refused
    with 429 and lost. ``Client.join`` now waits and retries as ``send`` does: every
    join gets there, a little later."""
    # 12 new rooms: over the room-creation burst (10), which is not what this is about
    with running_broker(send_rate_per_s=20.0, send_burst=2, room_create_rate_per_s=0.0) as h:
        async def scenario() -> None:
            async with h.client("hopper") as hopper:
                rooms = [f"j{i}" for i in range(12)]
                replies = await asyncio.gather(*(hopper.join(r) for r in rooms))
                assert [r.room for r in replies] == rooms
                assert set(rooms) <= set(hopper.rooms)
                listed = {r.room for r in (await hopper.list_rooms()).rooms if r.joined}
                assert set(rooms) <= listed

        run(scenario())
