#!/usr/bin/env python3
"""Try a zchat cluster on this machine: a PostgreSQL server of its own and three
``zchat broker`` processes on it, on loopback, sharing one CurveZMQ key pair.

    python scripts/cluster.py             # start them, print the endpoints, Ctrl-C stops all
    python scripts/cluster.py --brokers 2
    python scripts/cluster.py --check     # start, check that a message and a DM cross, stop

PostgreSQL comes from the machine (Debian: ``apt install postgresql``); its server runs
in a temporary directory as the ``postgres`` user when this runs as root
(tests/postgres_server.py), with ``fsync`` on. The key pair is made once, by
``zchat broker --print-key`` in the first broker's data directory, and copied into the
others' (docs/cluster.md, "The shared key pair"): a client pins one key, valid on every
broker. Everything is removed at the end. Exit code 0, or 1 with the reason.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
from postgres_server import running_postgres  # noqa: E402 (test-only tooling)

from zchat.broker.keypair import BROKER_PUBLIC_FILE, BROKER_SECRET_FILE  # noqa: E402
from zchat.testing import free_port  # noqa: E402

#: Seconds a broker may take to print its start lines.
START_TIMEOUT_S = 30.0
PASSWORD = "cluster-try-out"


def zchat_command() -> list[str]:
    return [sys.executable, "-m", "zchat"]


def start_broker(index: int, url: str, data_dir: Path, env: dict[str, str]
                 ) -> tuple[subprocess.Popen[str], str]:
    """Start broker ``index`` on ``url``; its process and ROUTER endpoint, once it has
    printed its start lines. Raises RuntimeError when it exits first or is too slow."""
    router = f"tcp://127.0.0.1:{free_port()}"
    pub = f"tcp://127.0.0.1:{free_port()}"
    log = data_dir.parent / f"broker-{index}.log"
    proc = subprocess.Popen(
        [*zchat_command(), "broker", "--store", url, "--data-dir", str(data_dir),
         "--router", router, "--pub", pub, "--id", f"broker-{index}"],
        stdout=open(log, "w"), stderr=subprocess.STDOUT, text=True, env=env)  # noqa: SIM115
    deadline = time.monotonic() + START_TIMEOUT_S
    while "fingerprint" not in log.read_text(encoding="utf-8", errors="replace"):
        if proc.poll() is not None:
            raise RuntimeError(f"broker {index} exited: {log.read_text()[-600:]}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"broker {index} did not start in {START_TIMEOUT_S:g} s")
        time.sleep(0.1)  # a child process's start lines: polled, not a socket
    return proc, router


async def check(routers: list[str]) -> None:
    """A message posted through the first broker reaches a member on the last one, and a
    DM from the last reaches an account on the first. Raises AssertionError."""
    from zchat.client.client import Client

    async with Client(routers[0]) as alice, Client(routers[-1]) as bob:
        await alice.register("alice", PASSWORD)
        await bob.register("bob", PASSWORD)
        await alice.login("alice", PASSWORD)
        await bob.login("bob", PASSWORD)
        await alice.join("dev")
        await bob.join("dev")
        sent = await alice.send("dev", "hello across the cluster")
        async with asyncio.timeout(10):
            async for event in bob.events():
                if getattr(event, "text", None) == "hello across the cluster":
                    assert event.seq == sent.seq
                    break
        await bob.dm("alice", "and back")
        async with asyncio.timeout(10):
            async for event in alice.events():
                if getattr(event, "text", None) == "and back":
                    break
    print(f"checked: #dev seq {sent.seq} from broker 1 reached broker {len(routers)}, "
          "and a DM came back")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--brokers", type=int, default=3, help="how many (default 3)")
    parser.add_argument("--check", action="store_true",
                        help="check that a message and a DM cross the cluster, then stop")
    args = parser.parse_args(argv)
    root = Path(tempfile.mkdtemp(prefix="zchat-cluster-"))
    env = dict(os.environ, HOME=str(root), XDG_CONFIG_HOME=str(root / "config"),
               XDG_DATA_HOME=str(root / "data"), XDG_STATE_HOME=str(root / "state"))
    procs: list[subprocess.Popen[str]] = []
    try:
        with running_postgres(fsync=True) as server:
            url = server.url(server.new_database(empty=True))
            dirs = [root / f"broker-{i}" for i in range(1, args.brokers + 1)]
            first = dirs[0]
            first.mkdir(mode=0o700)
            subprocess.run([*zchat_command(), "broker", "--print-key", "--data-dir",
                            str(first)], check=True, env=env, stdout=subprocess.DEVNULL)
            for other in dirs[1:]:  # the shared key pair, as an operator copies it
                other.mkdir(mode=0o700)
                for name in (BROKER_SECRET_FILE, BROKER_PUBLIC_FILE):
                    shutil.copy2(first / name, other / name)
            routers = []
            for index, data_dir in enumerate(dirs, 1):
                proc, router = start_broker(index, url, data_dir, env)
                procs.append(proc)
                routers.append(router)
            print(f"PostgreSQL: {url}")
            for index, router in enumerate(routers, 1):
                log = (root / f"broker-{index}.log").read_text(encoding="utf-8")
                key = next(line.split()[1] for line in log.splitlines()
                           if line.strip().startswith("fingerprint"))
                print(f"broker {index}: {router}  key {key}  (log: {root}/broker-{index}.log)")
            if args.check:
                os.environ.update(env)  # the pinned key goes to the try-out's home
                asyncio.run(check(routers))
                return 0
            print(f"try: zchat join alice --server {routers[0]}   "
                  f"(and another on {routers[-1]}); Ctrl-C stops everything", flush=True)
            stop = {signal.SIGINT, signal.SIGTERM}
            signal.pthread_sigmask(signal.SIG_BLOCK, stop)  # taken by sigwait, not Python
            signal.sigwait(stop)
            return 0
    except (RuntimeError, AssertionError, TimeoutError, subprocess.CalledProcessError) as exc:
        print(f"cluster: {exc or type(exc).__name__}", file=sys.stderr)
        return 1
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
