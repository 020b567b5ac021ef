"""README.md must show the exact test command that .ci/run runs, so the two never drift."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def ci_test_cmd() -> str:
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    match = re.search(r"^TEST_CMD=(.+)$", script, re.MULTILINE)
    assert match, ".ci/run has no TEST_CMD= line"
    (value,) = shlex.split(match.group(1))  # undo the shell quoting
    return value


def test_readme_contains_the_ci_test_command_verbatim() -> None:
    cmd = ci_test_cmd()
    assert "pytest" in cmd
    readme_lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert cmd in (line.strip() for line in readme_lines)


def test_ci_script_is_executable_and_strict() -> None:
    run = ROOT / ".ci" / "run"
    assert run.stat().st_mode & 0o111
    text = run.read_text(encoding="utf-8")
    assert text.startswith("#!/usr/bin/env bash\n")
    assert "set -euo pipefail" in text
