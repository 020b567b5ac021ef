"""``zchat broker`` that cannot start (issue 13 §5): the error names the endpoint that
could not be bound, and the failed start leaves nothing new behind in the data directory
(no key pair, no database, no lock file, no directory) — never removing what was there."""

from __future__ import annotations

import subprocess
from pathlib import Path

from conftest import cli_env, free_port, start_broker, stop_broker, zchat_command


def broker(tmp_path: Path, data: Path, *endpoints: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*zchat_command(), "broker", "--data-dir", str(data), *endpoints],
                          env=cli_env(tmp_path), stdin=subprocess.DEVNULL,
                          capture_output=True, text=True, timeout=30)


def one_line(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines()
             if line.strip() and " INFO " not in line and " WARNING " not in line]
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("zchat: error: ")
    return lines[0]


def test_router_and_pub_on_one_port_name_the_pub(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "new" / "data"
    line = one_line(broker(tmp_path, data, "--router", f"tcp://127.0.0.1:{port}",
                           "--pub", f"tcp://127.0.0.1:{port}"))
    assert f"cannot bind the PUB endpoint tcp://127.0.0.1:{port}" in line
    assert "in use" in line
    assert "the ROUTER endpoint uses it too" in line
    assert not (tmp_path / "new").exists()  # nothing created: not even the directories


def test_a_bind_error_names_the_endpoint_once(tmp_path: Path) -> None:
    """pyzmq's reason ends in "(addr='tcp://…')", repeating the endpoint the line already
    names; the line gives libzmq's reason alone."""
    port = free_port()
    line = one_line(broker(tmp_path, tmp_path / "data", "--router",
                           f"tcp://127.0.0.1:{port}", "--pub", f"tcp://127.0.0.1:{port}"))
    assert line == (f"zchat: error: cannot bind the PUB endpoint tcp://127.0.0.1:{port} "
                    "(--pub, [broker] pub): Address already in use; the ROUTER endpoint "
                    "uses it too")


def test_key_service_port_taken_by_the_pub_names_the_key_service(tmp_path: Path) -> None:
    port = free_port()
    data = tmp_path / "data"
    data.mkdir()
    line = one_line(broker(tmp_path, data, "--router", f"tcp://127.0.0.1:{port}",
                           "--pub", f"tcp://127.0.0.1:{port + 2}"))
    assert f"cannot bind the key service tcp://127.0.0.1:{port + 2}" in line
    assert "key_endpoint" in line  # the setting that moves it
    assert list(data.iterdir()) == []  # no key pair, no database, no lock file


def test_a_key_endpoint_set_in_the_config_is_named_as_the_setting(tmp_path: Path) -> None:
    """A fourth tester's: the line said "the ROUTER's port + 2 unless [broker]
    key_endpoint sets it" when the config file did set it."""
    port, pub = free_port(), free_port()
    config = tmp_path / "broker.toml"
    config.write_text(f'[broker]\nkey_endpoint = "tcp://127.0.0.1:{pub}"\n',
                      encoding="utf-8")
    line = one_line(broker(tmp_path, tmp_path / "data", "--config", str(config), "--router",
                           f"tcp://127.0.0.1:{port}", "--pub", f"tcp://127.0.0.1:{pub}"))
    assert line == (f"zchat: error: cannot bind the key service tcp://127.0.0.1:{pub} "
                    "([broker] key_endpoint): Address already in use; the PUB endpoint "
                    "uses it too"), line


def test_failed_start_keeps_what_was_there(tmp_path: Path) -> None:
    """A data directory a broker ran on before: its key pair and database stay as they
    were when a later start fails to bind."""
    started, _lines = start_broker(tmp_path)
    assert stop_broker(started)[0] == 0
    data = started.data_dir
    before = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    assert {"zchat.db", "curve.key", "curve.key_secret"} <= set(before)
    port = free_port()
    one_line(broker(tmp_path, data, "--router", f"tcp://127.0.0.1:{port}",
                    "--pub", f"tcp://127.0.0.1:{port}"))
    after = {p.name: p.read_bytes() for p in data.iterdir() if p.is_file()}
    assert after == before
