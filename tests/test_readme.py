"""README.md must show the exact test command that .ci/run runs, so the two never drift."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from conftest import TcpBroker, cli_env, zchat_command

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


def readme_python_example() -> str:
    """The README's "From Python" code block."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## From Python", 1)[1]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match, "no python block under 'From Python'"
    return match.group(1)


def test_readme_python_example_runs_as_alice_and_ends(tmp_path: Path,
                                                      tcp_broker: TcpBroker) -> None:
    """The example uses the account the quick start registered (alice) and ends by
    itself, logged out (issue 13 §5: it looped on events() for ever)."""
    env = cli_env(tmp_path)
    subprocess.run([*zchat_command(), "register", "--server", tcp_broker.router, "alice"],
                   env=env, check=True, capture_output=True, timeout=30)
    code = readme_python_example()
    assert '"tcp://127.0.0.1:5555"' in code  # the quick start's broker
    code = code.replace('"tcp://127.0.0.1:5555"', repr(tcp_broker.router))
    start = time.monotonic()
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0] == "posted as #1"
    assert "hello from a script" in done.stdout  # its own message, seen as an event
    assert time.monotonic() - start < 30


def test_design_doc_points_only_at_files_in_the_repository() -> None:
    """docs/design.md once sent readers to ``../shared/STYLE.md``, outside the repository
    (issue 13 §5): every file it names must be here."""
    text = (ROOT / "docs" / "design.md").read_text(encoding="utf-8")
    named = set(re.findall(r"[\w./-]*\b(?:zchat|docs|tests|benchmarks|config|examples)/"
                           r"[\w./-]+\.(?:py|md|toml)", text))
    assert named, "no file names found: the pattern is wrong"
    assert not [n for n in named if n.startswith("..")], named
    missing = [n for n in named if not (ROOT / n).exists()]
    assert missing == [], missing
    assert "../" not in text
