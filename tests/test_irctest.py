"""irctest (../shared/irctest, progval/irctest: the IRC servers' conformance suite)
against the gateway, through the controller in tests/irctest/zchat_controller.py: a real
``zchat broker`` and ``zchat irc`` per irctest test.

The selection is the required groups of issue 17 (docs/irc.md, "irctest"); each test known
to fail is deselected here with its reason, and docs/irc.md lists the same ones (checked
below). Skips when ../shared/irctest or its requirements are missing, saying which."""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
IRCTEST = Path(os.environ.get("ZCHAT_IRCTEST", ROOT.parent / "shared" / "irctest"))
CONTROLLER_DIR = ROOT / "tests" / "irctest"
MARKERS = "not Ergo and not deprecated and not strict"
#: The groups run in CI (irctest's server_tests/<group>.py).
GROUPS = ("connection_registration", "cap", "sasl", "messages", "join", "part", "names",
          "topic", "pingpong", "quit", "utf8", "who", "whois", "away", "away_notify",
          "echo_message", "message_tags", "time", "account_tag", "extended_join", "list",
          "kick", "invite", "multi_prefix")
#: Tests of those groups that fail, each with why (docs/irc.md lists them too).
KNOWN_FAILURES: dict[str, str] = {}
#: Bound of the whole irctest run.
RUN_TIMEOUT_S = 600


def _missing() -> str | None:
    if not (IRCTEST / "irctest" / "server_tests").is_dir():
        return f"irctest is not at {IRCTEST} (set ZCHAT_IRCTEST)"
    for module in ("filelock", "ecdsa"):
        if importlib.util.find_spec(module) is None:
            return (f"irctest needs {module}: pip install -r "
                    f"{IRCTEST / 'requirements.txt'}")
    return None


def irctest_command(groups: tuple[str, ...] = GROUPS) -> list[str]:
    files = [f"irctest/server_tests/{g}.py" for g in groups]
    deselect = [arg for node in KNOWN_FAILURES for arg in ("--deselect", node)]
    return [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p",
            "no:randomly", "--controller", "zchat_controller", "-m", MARKERS, *files,
            *deselect]


def test_irctest_selection_passes(tmp_path: Path) -> None:
    missing = _missing()
    if missing:
        pytest.skip(missing)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(CONTROLLER_DIR), os.environ.get("PYTHONPATH", "")]), "TMPDIR": str(tmp_path)}
    done = subprocess.run(irctest_command(), cwd=IRCTEST, env=env, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT_S)
    summary = [line for line in done.stdout.splitlines()
               if re.match(r"^(FAILED|ERROR) |^=* ?\d+ (passed|failed)", line)]
    assert done.returncode == 0, "irctest failed:\n" + "\n".join(summary[-60:]) \
        + "\n" + done.stdout[-3000:]


def test_every_known_failure_is_in_the_docs() -> None:
    docs = (ROOT / "docs" / "irc.md").read_text(encoding="utf-8")
    for node in KNOWN_FAILURES:
        name = node.split("::")[-1]
        assert name in docs, f"{node} is deselected but docs/irc.md does not list it"
