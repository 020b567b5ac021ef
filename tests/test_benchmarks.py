"""Smoke test of the benchmark suite (benchmarks/run.py): correctness only, no timing.

Runs ``benchmarks/run.py --quick --only ingest`` in a subprocess against a real broker
(its own subprocess, real SQLite, CurveZMQ as shipped) and checks the JSON it writes:
every message of every run stored once, acknowledged once and delivered exactly once to
every subscriber, by sequence number.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_quick_ingest_run_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "ingest",
         "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)  # a hang guard only
    assert proc.returncode == 0, proc.stdout + proc.stderr
    document = json.loads(out.read_text())
    assert document["scenarios"] == ["ingest"]
    assert document["failures"] == []
    assert document["machine"]["cores"] >= 1
    runs = [row["raw"] for row in document["rows"] if row["raw"]]
    shapes = {(r["senders"], r["subscribers"]) for r in runs}
    assert shapes == {(1, 1), (4, 10)}
    for r in runs:
        assert r["target"] == "zchat"
        assert r["messages"] > 0
        assert r["acked"] == r["messages"]
        assert r["errors"] == 0
        assert r["stored"] == r["messages"]
        assert r["last_seq"] == r["base_seq"] + r["messages"] - 1
        assert r["lost"] == 0
        assert r["duplicates"] == 0
        assert r["out_of_order"] == 0
        assert r["out_of_range"] == 0
        assert r["subscribers_complete"] == r["subscribers"]
        assert r["delivered"] == r["messages"] * r["subscribers"]
    assert all(row["error"] == "" for row in document["rows"])


def _broker_started(scratch: Path) -> bool:
    return bool(list(scratch.glob("*/*/bench.toml")))  # written just before the spawn


def _broker_serving(scratch: Path) -> bool:
    return any("fingerprint" in log.read_text(errors="replace")
               for log in scratch.glob("*/*/broker.log"))


@pytest.mark.parametrize("moment", [_broker_started, _broker_serving],
                         ids=["while the broker starts", "while it serves"])
def test_a_terminated_run_leaves_no_broker_and_no_scratch_files(
        tmp_path: Path, moment: Callable[[Path], bool]) -> None:
    """SIGTERM while a scenario's broker starts or runs: the run exits 143 and takes its
    broker subprocess and its scratch directory (here under TMPDIR = tmp_path) with it."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "history",
         "--json", str(tmp_path / "results.json")],
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not moment(scratch):
            assert proc.poll() is None and time.monotonic() < deadline, moment.__name__
            time.sleep(0.05)  # polling the file system for a file, not waiting on a socket
        assert _processes_mentioning(str(scratch)), "the broker is not running"
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 143
    finally:
        if proc.poll() is None:
            proc.kill()
    assert _processes_mentioning(str(scratch)) == []
    assert list(scratch.iterdir()) == []


def _processes_mentioning(text: str) -> list[int]:
    """Pids of the processes whose command line contains ``text``."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                    "utf-8", "replace")
            except OSError:
                continue
            if text in cmdline:
                pids.append(int(entry.name))
    return pids


def test_the_storm_rooms_counts_are_per_member() -> None:
    """A duplicate on one member cannot hide a loss on another (login_storm's check)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from sessions import _PacedRoom

    room = _PacedRoom.__new__(_PacedRoom)  # the counting alone: no broker, no sockets
    room.sent = 3
    room.got = [{1: 2, 2: 1, 3: 1}, {2: 1, 3: 1}]  # A has 1 twice, B never got it
    room.disorder = [0, 1]
    assert room.counts() == (1, 1, 1)
    room.got = [{1: 1, 2: 1, 3: 1}, {1: 1, 2: 1, 3: 1}]
    room.disorder = [0, 0]
    assert room.counts() == (0, 0, 0)


def test_replay_log_option_missing_file_is_one_clear_line(tmp_path: Path) -> None:
    """``--replay-log FILE`` replaces the log under ../shared/data (issue 13 §5); a file
    that is not there stops the run before any broker starts, saying which file."""
    missing = tmp_path / "nowhere.jsonl"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--only", "replay",
         "--replay-log", str(missing), "--json", str(tmp_path / "results.json")],
        cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"--replay-log: no such file: {missing}" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results.json").exists()


def test_replay_log_option_is_the_log_replayed(tmp_path: Path) -> None:
    log = tmp_path / "tiny.jsonl"
    log.write_text("".join(json.dumps(event) + "\n" for event in (
        {"ts": "2019-10-01T10:00:00", "event": "join", "user": "u001"},
        {"ts": "2019-10-01T10:00:01", "event": "message", "user": "u001", "text": "hi"},
        {"ts": "2019-10-01T10:00:02", "event": "join", "user": "u002"},
        {"ts": "2019-10-01T10:00:03", "event": "message", "user": "u002", "text": "hey"},
    )), encoding="utf-8")
    out = tmp_path / "results.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "run.py"), "--quick", "--only", "replay",
         "--replay-log", str(log), "--json", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=240)  # a hang guard only
    assert proc.returncode == 0, proc.stdout + proc.stderr
    (row, *_rest) = [r for r in json.loads(out.read_text())["rows"] if r["raw"]]
    assert row["raw"]["log"].endswith("tiny.jsonl")
    assert (row["raw"]["sent"], row["raw"]["messages"]) == (2, 2)
