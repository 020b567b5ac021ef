"""The cost of one password hash and check (issue 18): Argon2id at the shipped parameters
(OWASP's minimum, zchat.passwords) beside scrypt N=16384, r=8, p=1 (what zchat stored
before), and the one-time upgrade at login (an scrypt check, then an Argon2id hash).

Run: ``python benchmarks/password_cost.py [--rounds N]``. Each figure is the median
wall time of ``rounds`` calls on one thread of an otherwise idle process, with the CPU
time beside it (time.process_time, this process's threads); no broker, no network: what
one LOGIN costs a hash thread (``hash_workers``), which the broker's loop does not wait
for (the ``login_storm`` scenario of benchmarks/sessions.py measures that).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

from zchat.config import BrokerConfig
from zchat.passwords import check_login, hash_password, hash_password_scrypt, verify_password

PASSWORD = "correct horse battery staple"


def measure(fn: Callable[[], object], rounds: int) -> tuple[float, float]:
    """Median wall ms and mean CPU ms of ``fn()`` over ``rounds`` calls (after one warm-up)."""
    fn()
    walls = []
    cpu0 = time.process_time()
    for _ in range(rounds):
        t0 = time.perf_counter()
        fn()
        walls.append((time.perf_counter() - t0) * 1000)
    cpu_ms = (time.process_time() - cpu0) * 1000 / rounds
    return statistics.median(walls), cpu_ms


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=30)
    args = ap.parse_args()
    cfg = BrokerConfig()
    m, t, p = cfg.argon2_memory_kib, cfg.argon2_time_cost, cfg.argon2_parallelism
    argon = hash_password(PASSWORD, m, t, p)
    scrypt = hash_password_scrypt(PASSWORD)
    cases: list[tuple[str, Callable[[], object]]] = [
        (f"Argon2id m={m} KiB t={t} p={p}: hash", lambda: hash_password(PASSWORD, m, t, p)),
        (f"Argon2id m={m} KiB t={t} p={p}: verify (a LOGIN)",
         lambda: verify_password(PASSWORD, argon)),
        ("scrypt N=16384 r=8 p=1: hash", lambda: hash_password_scrypt(PASSWORD)),
        ("scrypt N=16384 r=8 p=1: verify (a LOGIN before)",
         lambda: verify_password(PASSWORD, scrypt)),
        ("upgrade at login: scrypt verify + Argon2id hash",
         lambda: check_login(PASSWORD, scrypt, m, t, p)),
    ]
    print(f"{'case':<52} {'wall ms (median)':>17} {'CPU ms (mean)':>14}")
    for label, fn in cases:
        wall, cpu = measure(fn, args.rounds)
        print(f"{label:<52} {wall:>17.1f} {cpu:>14.1f}")


if __name__ == "__main__":
    main()
