#!/usr/bin/env python3
"""Run zchat's chaos scenarios in their long versions and print a summary table.

    python scripts/chaos.py                       # every scenario once, default sizes
    python scripts/chaos.py --minutes 10          # repeat them for ten minutes
    python scripts/chaos.py --clients 40 --messages 20000 --only kill-clients,stop-client

Each scenario (tests/chaos_harness.py) runs a real ``zchat broker`` subprocess on loopback TCP and
client worker processes, injects its fault (SIGKILL half the clients, SIGSTOP one, SIGKILL
the broker, rapid login/logout cycles) and audits what every client saw against the store.
The table has, per run: messages sent (OK'd), stored, delivered to surviving members,
lost, duplicated, out of order, stored twice (must all be 0) and seconds. Exit code 1 on
any loss, duplicate, disorder or other problem (printed below the table), else 0.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import chaos_harness as chaos  # noqa: E402 (test-only tooling, kept under tests/)


def scenarios(args: argparse.Namespace) -> dict[str, Callable[[Path], chaos.Summary]]:
    """Scenario name -> a run of it with the sizes the arguments ask for."""
    return {
        "kill-clients": lambda d: chaos.scenario_kill_clients(
            d, clients=args.clients, killed=args.clients // 2,
            messages=max(1, args.messages // args.clients), rate=20.0,
            timeout_s=args.timeout),
        "stop-client": lambda d: chaos.scenario_stop_client(
            d, messages=args.messages, pad=args.pad, timeout_s=args.timeout),
        "kill-broker": lambda d: chaos.scenario_kill_broker(
            d, clients=max(2, args.clients // 4), messages=max(1, args.messages // 10),
            rate=100.0, timeout_s=args.timeout),
        "login-cycles": lambda d: chaos.scenario_login_cycles(
            d, cycles=args.cycles, clients=3, messages=max(1, args.messages // 20),
            rate=50.0, timeout_s=args.timeout),
        # three brokers on a PostgreSQL server of their own (needs PostgreSQL installed)
        "cluster-kill": lambda d: chaos.scenario_cluster_kill_broker(
            d, clients=max(3, args.clients // 2), messages=max(1, args.messages // 50),
            rate=20.0, timeout_s=args.timeout),
        "cluster-stop": lambda d: chaos.scenario_cluster_stop_broker(
            d, clients=max(3, args.clients // 2), messages=max(1, args.messages // 50),
            rate=20.0, timeout_s=args.timeout),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=0.0,
                        help="repeat the scenarios until this many minutes have passed "
                             "(default: run each once)")
    parser.add_argument("--clients", type=int, default=20,
                        help="clients in kill-clients (half are killed); default 20")
    parser.add_argument("--messages", type=int, default=10_000,
                        help="messages in stop-client (others scale from it); default 10000")
    parser.add_argument("--cycles", type=int, default=1000,
                        help="login/logout cycles in login-cycles; default 1000")
    parser.add_argument("--pad", type=int, default=200,
                        help="bytes of padding per stop-client message; default 200")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds any one wait in a scenario may take; default 600")
    parser.add_argument("--only", default="",
                        help="comma-separated scenario names (default: all)")
    parser.add_argument("--disk", action="store_true",
                        help="keep the broker's database on disk, not on /dev/shm")
    parser.add_argument("--workdir", type=Path,
                        help="keep logs here (default: a temporary directory)")
    args = parser.parse_args(argv)
    if args.clients < 2 or args.messages < 1 or args.cycles < 1:
        parser.error("--clients must be >= 2, --messages and --cycles >= 1")
    chaos.USE_TMPFS = not args.disk
    table = scenarios(args)
    names = [n for n in args.only.split(",") if n] or list(table)
    unknown = [n for n in names if n not in table]
    if unknown:
        parser.error(f"unknown scenario {unknown[0]!r}; choose from {', '.join(table)}")
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="zchat-chaos-"))
    deadline = time.monotonic() + args.minutes * 60
    results: list[chaos.Summary] = []
    print(f"logs in {workdir}", flush=True)
    print(chaos.SUMMARY_HEADER, flush=True)
    round_no = 0
    while True:
        round_no += 1
        for name in names:
            try:
                summary = table[name](workdir / f"{round_no:03d}-{name}")
            except AssertionError as exc:  # a wait ran out: the scenario itself failed
                summary = chaos.Summary(name, problems=[str(exc)])
            results.append(summary)
            print(summary.row(), summary.notes or "", flush=True)
        if time.monotonic() >= deadline:
            break
    print("-" * len(chaos.SUMMARY_HEADER))
    total = chaos.Summary("total")
    for s in results:
        for key in ("sent", "stored", "delivered", "lost", "duplicated", "out_of_order",
                    "stored_twice", "mismatched", "seconds"):
            setattr(total, key, getattr(total, key) + getattr(s, key))
        total.problems += [f"{s.scenario}: {p}" for p in s.problems]
    print(total.row())
    print(f"\nmessages sent {total.sent}, delivered {total.delivered}, lost {total.lost}, "
          f"duplicated {total.duplicated}, out of order {total.out_of_order}, "
          f"stored twice {total.stored_twice}")
    for problem in total.problems[:50]:
        print(f"PROBLEM {problem}")
    return 0 if total.ok else 1


if __name__ == "__main__":
    sys.exit(main())
