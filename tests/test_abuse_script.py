"""scripts/abuse.py, the abuse scenario set (issue 14, "Proof"), in its cheapest form: the
baseline and the key-service frame flood for 2 s each against a real broker subprocess.
Checks the shape of what it prints and that the figures are measured, not placeholders.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINE = re.compile(
    r"^ ?(?P<id>\w+)  (?P<title>.+?): PING p50 (?P<p50>[\d,.]+) ms p99 (?P<p99>[\d,.]+) ms"
    r"(?: \((?P<lost>\d+)/(?P<pings>\d+) unanswered\))?; LOGIN p50 (?P<login>[\d,.]+) ms "
    r"max [\d,.]+ ms[^;]*; broker peak RSS (?P<rss>[\d,]+) MB; attacker: (?P<got>.+)$")


def number(text: str) -> float:
    return float(text.replace(",", ""))


@pytest.mark.timeout(60)
def test_abuse_script_prints_real_figures_per_attack() -> None:
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "abuse.py"), "--only", "0,1", "--seconds",
         "2", "--base-port", "0", "--markdown"],
        capture_output=True, text=True, timeout=50, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    rows = {m["id"]: m for m in map(LINE.match, lines) if m}
    assert set(rows) == {"0", "1"}, done.stdout
    for row in rows.values():
        assert number(row["p50"]) > 0 and number(row["p99"]) >= number(row["p50"])
        assert number(row["login"]) > 0
        assert number(row["rss"]) > 10  # a Python broker is tens of MB at least
    assert "HARNESS ERROR" not in done.stdout
    assert "nothing (no attack)" in rows["0"]["got"]
    sent = re.search(r"one message of ([\d,]+) empty frames", rows["1"]["got"])
    assert sent and number(sent[1]) == 400_000  # 200,000 frames per second of attack
    # the markdown table: header, rule, one row per attack
    table = [line for line in lines if line.startswith("|")]
    assert table[0].startswith("| # | Attack | Honest PING p50 / p99 (ms)")
    assert table[1].startswith("|---|")
    assert [row.split("|")[1].strip() for row in table[2:]] == ["0", "1"]


def test_abuse_script_refuses_an_unknown_attack() -> None:
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "abuse.py"), "--only", "99"],
                          capture_output=True, text=True, timeout=30, cwd=ROOT)
    assert done.returncode != 0
    assert "unknown attack 99" in done.stderr
