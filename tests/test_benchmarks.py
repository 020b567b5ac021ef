"""Smoke test of the benchmark suite (benchmarks/run.py): correctness only, no timing.

Runs ``benchmarks/run.py --quick --only ingest`` in a subprocess against a real broker
(its own subprocess, real SQLite, CurveZMQ as shipped) and checks the JSON it writes:
every message of every run stored once, acknowledged once and delivered exactly once to
every subscriber, by sequence number.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

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
