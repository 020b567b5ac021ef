"""Client-side files are the user's alone (issue 14, item 10): whatever the umask, the
directories zchat creates on the client side are 0700 and its files 0600 — the console's
log ($XDG_STATE_HOME/zchat/console.log) and the pinned broker keys
($XDG_CONFIG_HOME/zchat/known_brokers.toml with its .lock). Each case runs in a subprocess
with umask 022, the usual default that made them 0755/0644 before.

zchat writes no other file on the client side: tokens and passwords are printed, never
stored, the console's input history lives in memory, and the settings file is the
user's own (zchat reads it, never writes it).
"""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import zmq

from tests.conftest import cli_env


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def run_with_umask_022(tmp_path: Path, code: str, *args: str) -> None:
    subprocess.run([sys.executable, "-c", "import os; os.umask(0o022)\n" + code, *args],
                   env=cli_env(tmp_path), check=True, timeout=60)


LOG_A_LINE = ("import logging; from zchat.cli import _log_to_file; _log_to_file(); "
              "logging.getLogger('zchat.console').warning('hello')")
PIN_A_KEY = ("import sys; from zchat.client.trust import pin_broker_key, default_known_brokers_path; "
             "pin_broker_key(default_known_brokers_path(), sys.argv[1], sys.argv[2])")


def test_the_console_log_and_its_directories_are_private(tmp_path: Path) -> None:
    state = Path(cli_env(tmp_path)["XDG_STATE_HOME"])
    assert not state.exists()
    run_with_umask_022(tmp_path, LOG_A_LINE)
    log = state / "zchat" / "console.log"
    assert "hello" in log.read_text()
    assert (mode(state), mode(state / "zchat"), mode(log)) == (0o700, 0o700, 0o600)


def test_an_existing_console_log_made_under_umask_022_is_narrowed(tmp_path: Path) -> None:
    """Made by an older zchat: the zchat directory 0755 and console.log 0644 become
    0700/0600 (they are this user's and zchat's alone); the XDG directory above, shared
    with other programs, is left as it is."""
    state = Path(cli_env(tmp_path)["XDG_STATE_HOME"])
    (state / "zchat").mkdir(parents=True)
    log = state / "zchat" / "console.log"
    log.write_text("an old line\n")
    for path, old in ((state, 0o755), (state / "zchat", 0o755), (log, 0o644)):
        os.chmod(path, old)
    run_with_umask_022(tmp_path, LOG_A_LINE)
    assert log.read_text().startswith("an old line\n")
    assert (mode(state), mode(state / "zchat"), mode(log)) == (0o755, 0o700, 0o600)


def test_pinned_keys_and_their_directories_are_private(tmp_path: Path) -> None:
    config = Path(cli_env(tmp_path)["XDG_CONFIG_HOME"])
    key = zmq.curve_keypair()[0].decode()
    run_with_umask_022(tmp_path, PIN_A_KEY, "tcp://chat.example.org:5555", key)
    pins = config / "zchat" / "known_brokers.toml"
    assert key in pins.read_text()
    lock = pins.with_name(pins.name + ".lock")
    assert (mode(config), mode(config / "zchat"), mode(pins), mode(lock)) == (
        0o700, 0o700, 0o600, 0o600)


def test_an_existing_config_directory_made_under_umask_022_is_narrowed(tmp_path: Path
                                                                        ) -> None:
    """~/.config/zchat made 0755 by an older zchat (or by the user, holding zchat.toml)
    becomes 0700 at the next pin; its settings file keeps its mode (it is the user's)."""
    config = Path(cli_env(tmp_path)["XDG_CONFIG_HOME"])
    (config / "zchat").mkdir(parents=True)
    settings = config / "zchat" / "zchat.toml"
    settings.write_text("[client]\n")
    for path, old in ((config, 0o755), (config / "zchat", 0o755), (settings, 0o644)):
        os.chmod(path, old)
    run_with_umask_022(tmp_path, PIN_A_KEY, "tcp://chat.example.org:5555",
                       zmq.curve_keypair()[0].decode())
    pins = config / "zchat" / "known_brokers.toml"
    assert (mode(config), mode(config / "zchat"), mode(pins), mode(settings)) == (
        0o755, 0o700, 0o600, 0o644)
