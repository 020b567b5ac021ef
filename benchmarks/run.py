"""zchat benchmarks (issue 7): run the scenarios, print one table, write the raw figures.

Run: ``python benchmarks/run.py [--quick] [--only NAME[,NAME]] [--json FILE]
[--encryption curve|none] [--replay-log FILE]`` (or ``just bench ...``).

Everything runs on loopback against a real ``zchat broker`` subprocess with a real SQLite
file. The bare relay (benchmarks/relay.py: ROUTER recv -> PUB send, no logic) is measured
in the same run with the same load generator and receivers, and zchat's throughput is
printed as a ratio to it. Scenarios (``--only`` takes their names):

- relay: the ceiling, 1 and 4 senders x 1, 10, 50, 200 subscribers;
- ingest: the same shapes against zchat: messages stored, acknowledged and delivered per
  second, loss and duplicates per subscriber (both must be 0, else the exit code is 1);
- latency: a paced sender at 1,000 msg/s to 10 and 100 members, p50/p99/p99.9/max;
- history: HISTORY of the last 100 and of a page deep inside a 1,000,000-message room;
- and any scenario module of benchmarks/ listed in MODULES that exists (sessions, startup,
  replay, core, irc: the IRC gateway beside ngIRCd, its rows' ratios to ngIRCd's; also
  run alone as ``python benchmarks/irc.py``).

A scenario module exposes ``SCENARIOS: dict[str, Callable[[Bench], list[Row]]]`` (Bench
and Row: benchmarks/harness.py). The exit code is 0 when every row is free of correctness
errors (loss, duplicates, error replies), 1 otherwise, 2 on bad arguments.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import zmq
from harness import Bench, Row, machine_info, stop_children
from replay import LOG as DEFAULT_REPLAY_LOG

#: Scenario modules, in running order (the relay first: the others' ratios need it).
MODULES = ["relay", "ingest", "latency", "history", "sessions", "startup", "replay", "core",
           "irc"]
#: Where the raw figures go unless --json says otherwise. (With ``--only`` naming ingest or
#: latency but not ``relay`` the ceiling is not measured: their rows have no ratio, and a
#: target that needs one is left unjudged.)
DEFAULT_JSON = Path(__file__).resolve().parent / "results.json"


def load_scenarios() -> dict[str, Callable[[Bench], list[Row]]]:
    """Every scenario of every module in MODULES that exists, in order."""
    scenarios: dict[str, Callable[[Bench], list[Row]]] = {}
    for name in MODULES:
        if not (Path(__file__).resolve().parent / f"{name}.py").exists():
            continue
        module = importlib.import_module(name)
        scenarios.update(module.SCENARIOS)
    return scenarios


def fmt_value(value: float, unit: str) -> str:
    if isinstance(value, float) and math.isnan(value):
        return "-"
    if abs(value) >= 100 or float(value).is_integer():
        return f"{value:,.0f}"
    return f"{value:,.2f}" if abs(value) >= 1 else f"{value:.3f}"


def print_table(results: list[tuple[str, Row]], notes: list[str], header: str) -> None:
    """One table: scenario, figure, value, unit, ratio to the relay, target, met."""
    lines = [("scenario", "figure", "value", "unit", "ratio", "target", "met")]
    for scenario, row in results:
        met = "" if row.met is None else ("met" if row.met else "MISSED")
        if row.error:
            met = (met + " " if met else "") + "ERROR"
        lines.append((scenario, row.name, fmt_value(row.value, row.unit), row.unit,
                      "" if row.ratio is None else f"{row.ratio:.3f}", row.target, met))
    widths = [max(len(line[i]) for line in lines) for i in range(len(lines[0]))]
    print(header)
    for n, line in enumerate(lines):
        cells = [line[0].ljust(widths[0]), line[1].ljust(widths[1]),
                 line[2].rjust(widths[2]), line[3].ljust(widths[3]),
                 line[4].rjust(widths[4]), line[5].ljust(widths[5]), line[6]]
        print("  ".join(cells).rstrip())
        if n == 0:
            print("  ".join("-" * w for w in widths))
    for scenario, row in results:
        if row.error:
            print(f"ERROR in {scenario}: {row.name}: {row.error}")
    for note in notes:
        print(f"note: {note}")


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return repr(value)


def _terminated(signum: int, _frame: Any) -> None:
    """SIGTERM unwinds like Ctrl-C: every ``with`` on the way stops its broker and worker
    processes and the scratch directory is removed; exit status 128 + the signal. A second
    SIGTERM is ignored: it would cut that clean-up short and leave processes behind."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise SystemExit(128 + signum)


def main(argv: list[str] | None = None) -> int:
    signal.signal(signal.SIGTERM, _terminated)
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="small sizes, for a smoke run (about 2 minutes)")
    parser.add_argument("--only", default="",
                        help="comma-separated scenario names (default: all)")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON,
                        help=f"where to write the raw figures (default {DEFAULT_JSON})")
    parser.add_argument("--encryption", choices=["curve", "none"], default="curve",
                        help="the zchat broker's transport (default curve, as shipped)")
    parser.add_argument("--replay-log", type=Path, default=None, metavar="FILE",
                        help="the JSON-lines chat log the replay scenario plays (default "
                             f"{DEFAULT_REPLAY_LOG}; the scenario is skipped when that "
                             "is absent)")
    args = parser.parse_args(argv)
    if args.replay_log is not None and not args.replay_log.is_file():
        # Given on purpose, so its absence is an error, before any broker starts (the
        # default log only skips the scenario: a checkout without ../shared/data).
        parser.error(f"--replay-log: no such file: {args.replay_log}")
    scenarios = load_scenarios()
    selected = [s.strip() for s in args.only.split(",") if s.strip()] or list(scenarios)
    unknown = [s for s in selected if s not in scenarios]
    if unknown:
        parser.error(f"unknown scenario(s) {', '.join(unknown)}; "
                     f"known: {', '.join(scenarios)}")
    selected = [s for s in scenarios if s in selected]  # running order of MODULES
    ctx: zmq.Context[Any] = zmq.Context()
    results: list[tuple[str, Row]] = []
    failures: list[str] = []
    started = time.monotonic()
    info = machine_info()  # the load average before the run; the one after is added below
    with tempfile.TemporaryDirectory(prefix="zchat-bench-") as tmp:
        bench = Bench(ctx=ctx, args=args, quick=args.quick, tmp=Path(tmp),
                      encryption=args.encryption)
        try:
            for name in selected:
                print(f"[{time.monotonic() - started:6.1f} s] {name} ...", file=sys.stderr,
                      flush=True)
                try:
                    rows = scenarios[name](bench)
                except Exception as exc:  # one broken scenario must not hide the rest
                    traceback.print_exc()
                    failures.append(f"{name}: {type(exc).__name__}: {exc}")
                    rows = [Row("scenario failed", float("nan"), "", error=f"{exc}")]
                results.extend((name, row) for row in rows)
        finally:  # finished, failed or terminated: no process of the run outlives it
            for line in stop_children():
                print(f"stopped a process the run left running: {line}", file=sys.stderr,
                      flush=True)
    ctx.term()
    info["load_avg_1_5_15_after"] = machine_info()["load_avg_1_5_15"]
    header = (f"zchat benchmarks ({'quick' if args.quick else 'full'}, encryption "
              f"{args.encryption}) on {info['cpu_model'] or '?'} x{info['cores']}, Python "
              f"{info['python']}, libzmq {info['libzmq']}, pyzmq {info['pyzmq']}, SQLite "
              f"{info['sqlite']}, {info['date_utc']}; {time.monotonic() - started:.0f} s; "
              f"load average {info['load_avg_1_5_15'][0]:.1f} before, "
              f"{info['load_avg_1_5_15_after'][0]:.1f} after")
    print_table(results, bench.notes, header)
    document = {
        "machine": info, "quick": args.quick, "encryption": args.encryption,
        "scenarios": selected, "seconds": time.monotonic() - started,
        "ceiling": bench.ceiling, "notes": bench.notes, "failures": failures,
        "rows": [{"scenario": s, "name": r.name, "value": r.value, "unit": r.unit,
                  "ratio": r.ratio, "target": r.target, "met": r.met, "error": r.error,
                  "raw": r.raw} for s, r in results],
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(_jsonable(document), indent=2) + "\n")
    print(f"raw figures: {args.json}")
    return 1 if failures or any(r.error for _, r in results) else 0


if __name__ == "__main__":
    raise SystemExit(main())
