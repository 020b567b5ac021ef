"""``scripts/cluster.py`` (``just cluster``): PostgreSQL and three real ``zchat broker``
processes sharing one database and one CurveZMQ key pair, as docs/cluster.md tells an
operator to set them up; ``--check`` posts through the first and reads on the last, and a
DM goes back. Needs PostgreSQL (skipped without it, a failure where it is required)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from postgres_server import find_bindir

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "cluster.py"


def test_three_brokers_sharing_a_database_and_a_key_carry_a_message_and_a_dm(
        tmp_path: Path) -> None:
    bindir, why = find_bindir()
    if bindir is None:
        if os.environ.get("CI") == "true" or os.environ.get("ZCHAT_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"PostgreSQL is required here: {why}")
        pytest.skip(why)
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines[:4]] == \
        ["PostgreSQL", "broker 1", "broker 2", "broker 3"]
    assert lines[-1] == "checked: #dev seq 1 from broker 1 reached broker 3, and a DM came back"
    # one key pair, copied: every broker shows the same fingerprint, so a client's pin
    # holds on each
    keys = {line.split(" key ")[1].split()[0] for line in lines[1:4]}
    assert len(keys) == 1 and next(iter(keys)).startswith("SHA256:"), lines
