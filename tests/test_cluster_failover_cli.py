"""``zchat tail --server A,B`` across a SIGKILLed broker (issue 16, docs/cluster.md "How
clients move"): two real ``zchat broker`` processes on one real PostgreSQL database,
sharing one key pair as an operator sets them up; the tail follows a room on broker A,
A is SIGKILLed, messages are posted through B meanwhile, and the tail prints every seq
once, in order, having moved to B (whose key it pins on the way)."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

from conftest import Proc, cli_env, spawn_on_free_ports, zchat_command

from zchat.broker import keypair
from zchat.client import Client, trust
from zchat.testing import DEFAULT_PASSWORD, run

SETTINGS = "[broker]\nargon2_memory_kib = 1024\nargon2_time_cost = 1\nheartbeat_interval_s = 0.5\n" \
           "heartbeat_timeout_s = 1.5\nlogin_rate_per_s = 0\n"


def start(tmp_path: Path, index: int, url: str, data: Path) -> tuple[Proc, str]:
    """``zchat broker`` number ``index`` on ``url``; its process and ROUTER endpoint once it
    printed its key. New ports when a bind fails (taken meanwhile)."""
    config = tmp_path / "broker.toml"
    config.write_text(SETTINGS, encoding="utf-8")
    proc, router, _pub = spawn_on_free_ports(
        [*zchat_command(), "broker", "--config", str(config), "--data-dir", str(data),
         "--store", url, "--id", f"broker-{index}"], cli_env(tmp_path), "public key:",
        timeout_s=20)
    return proc, router


def seq_of(line: str) -> int:
    return int(json.loads(line)["seq"])


def test_tail_follows_a_room_across_a_sigkilled_broker_every_seq_once_in_order(
        tmp_path: Path, pg_url: str) -> None:
    dirs = [tmp_path / "broker-a", tmp_path / "broker-b"]
    for data in dirs:
        data.mkdir(mode=0o700)
    keys, _ = keypair.load_or_create_broker_keys(dirs[0])  # the shared key pair
    for name in (keypair.BROKER_SECRET_FILE, keypair.BROKER_PUBLIC_FILE):
        shutil.copy2(dirs[0] / name, dirs[1] / name)
    key = keys.public.decode("ascii")
    known = tmp_path / "xdg-config" / "zchat" / "known_brokers.toml"
    procs: list[Proc] = []
    try:
        a, router_a = start(tmp_path, 1, pg_url, dirs[0])
        procs.append(a)
        b, router_b = start(tmp_path, 2, pg_url, dirs[1])
        procs.append(b)
        trust.pin_broker_key(known, router_a, key)  # as a user who checked the key

        async def prepare() -> None:
            async with Client(router_a, server_key=key) as c:
                for name in ("alice", "bob"):
                    await c.register(name, DEFAULT_PASSWORD)

        run(prepare())
        tail = Proc([*zchat_command(), "tail", "--as", "alice", "--room", "dev", "--json",
                     "--server", f"{router_a},{router_b}"], cli_env(tmp_path))
        procs.append(tail)
        tail.wait_line("stderr", "following #dev", timeout_s=20)

        async def post(router: str, texts: list[str]) -> list[int]:
            async with Client(router, server_key=key) as bob:
                await bob.login("bob", DEFAULT_PASSWORD)
                await bob.join("dev")
                return [(await bob.send("dev", text)).seq for text in texts]

        before = run(post(router_a, [f"before {i}" for i in range(3)]))
        tail.wait_line("stdout", "before 2", timeout_s=20)
        a.popen.send_signal(signal.SIGKILL)
        assert a.wait(10) == -signal.SIGKILL
        meanwhile = run(post(router_b, [f"meanwhile {i}" for i in range(5)]))
        tail.wait_line("stdout", "meanwhile 4", timeout_s=30)
        # and what follows the move arrives live
        after = run(post(router_b, ["after the move"]))
        tail.wait_line("stdout", "after the move", timeout_s=20)
        printed = [seq_of(line) for line in tail.stdout if line.startswith("{")]
        sent = [*before, *meanwhile, *after]
        assert printed == sent, (printed, tail.stderr)
        assert sent == list(range(sent[0], sent[0] + len(sent)))
        # resumed on B (the same session, no new LOGIN): B's log says so
        assert any("resumed alice from the store" in line for line in b.stderr), b.stderr
        # the second endpoint was pinned on the way, with the cluster's key
        pins = trust.load_known_brokers(known)
        assert pins[router_a] == pins[router_b] == key
        tail.popen.send_signal(signal.SIGTERM)
        assert tail.wait(10) == 128 + signal.SIGTERM, tail.stderr  # docs/cli.md
    finally:
        for proc in procs:
            proc.kill()
