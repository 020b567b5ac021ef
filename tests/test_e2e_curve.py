"""Transport security end to end (docs/security.md): ``zchat broker`` and client commands
as subprocesses on loopback tcp, with CURVE on by default.

The shared ``tcp_broker`` fixture pins the broker's key up front (as a user who copied it
would); these tests remove that pin where they test trust on first use.
"""

from __future__ import annotations

import stat
import subprocess
from pathlib import Path

import pytest
from cli_helpers import ok, restart_on_same_ports, zchat
from conftest import TcpBroker, cli_env, start_broker, stop_broker, zchat_command

from zchat import files, keyformat
from zchat.broker import keypair
from zchat.client import trust


def known_file(tmp_path: Path) -> Path:
    """The pinned-keys file of the CLI subprocesses (``cli_env``'s XDG_CONFIG_HOME)."""
    return tmp_path / "xdg-config" / "zchat" / trust.KNOWN_BROKERS_FILE


def printed_key(lines: list[str]) -> str:
    return next(line.split()[-1] for line in lines if "public key:" in line)


def test_broker_prints_its_key_keeps_it_private_and_reuses_it(tmp_path: Path) -> None:
    broker, lines = start_broker(tmp_path)
    try:
        key = printed_key(lines)
        assert keyformat.check_key(key) == key
        secret = broker.data_dir / keypair.BROKER_SECRET_FILE
        assert stat.S_IMODE(secret.stat().st_mode) == 0o600
        # the database too: hashes, DMs, private rooms, the audit log (a tester: 0644)
        db = broker.data_dir / "zchat.db"
        assert stat.S_IMODE(db.stat().st_mode) == 0o600
        pair, _ = keypair.load_or_create_broker_keys(broker.data_dir)
        assert pair.public.decode() == key
        assert not any(pair.secret.decode() in line
                       for line in broker.process.stdout + broker.process.stderr)
    finally:
        assert stop_broker(broker)[0] == 0
    assert any(line.strip().startswith("key ") for line in lines)
    printed = ok(zchat(tmp_path, "broker", "--data-dir", str(broker.data_dir),
                       "--print-key"))
    assert printed.stdout.strip() == key  # the same pair after a restart


def test_first_use_pins_the_key_and_says_so(tmp_path: Path, tcp_broker: TcpBroker) -> None:
    known = known_file(tmp_path)
    known.unlink()  # undo the fixture's pin: this is the first use
    key = keypair.load_or_create_broker_keys(tcp_broker.data_dir)[0].public.decode()
    first = ok(zchat(tmp_path, "register", "--server", tcp_broker.router, "alice"))
    assert f"first connection to {tcp_broker.router}" in first.stderr
    assert keyformat.fingerprint(key) in first.stderr and str(known) in first.stderr
    assert trust.load_known_brokers(known) == {tcp_broker.router: key}
    assert stat.S_IMODE(known.stat().st_mode) == 0o600
    again = ok(zchat(tmp_path, "say", "--server", tcp_broker.router, "--as", "alice",
                     "--room", "lobby", "hi"))
    assert again.stderr == ""  # pinned now: no notice


def test_changed_broker_key_is_refused_loudly_without_logging_in(tmp_path: Path) -> None:
    broker, lines = start_broker(tmp_path)
    pub = next(line.split()[1] for line in lines if line.strip().startswith("pub "))
    try:
        ok(zchat(tmp_path, "register", "--server", broker.router, "alice"))
    finally:
        assert stop_broker(broker)[0] == 0
    impostor = restart_on_same_ports(tmp_path, broker, pub, tmp_path / "new-data")
    try:
        result = zchat(tmp_path, "say", "--server", broker.router, "--timeout", "1",
                       "--as", "alice", "--room", "lobby", "secret plans")
        assert result.returncode == 1, result
        assert "Traceback" not in result.stderr
        assert "WARNING: BROKER IDENTIFICATION HAS CHANGED!" in result.stderr
        assert f"{known_file(tmp_path)}, line " in result.stderr
        assert keyformat.fingerprint(printed_key(lines)) in result.stderr
        assert keyformat.fingerprint(printed_key(impostor.stdout)) in result.stderr
        assert "Nothing was sent" in result.stderr
    finally:
        impostor.popen.terminate()
        assert impostor.wait(5) == 0
    assert not any("login" in line for line in impostor.stderr), impostor.stderr


def test_plaintext_client_is_refused_by_an_encrypting_broker(
        tmp_path: Path, tcp_broker: TcpBroker) -> None:
    config = tmp_path / "plain-client.toml"
    config.write_text('[client]\nencryption = "none"\n', encoding="utf-8")
    result = zchat(tmp_path, "register", "--config", str(config), "--server",
                   tcp_broker.router, "--timeout", "1", "mallory")
    assert result.returncode == 1
    assert "no answer from the broker" in result.stderr
    assert "the broker may require encryption" in result.stderr


def test_server_key_flag_is_used_and_not_pinned(tmp_path: Path,
                                                tcp_broker: TcpBroker) -> None:
    known = known_file(tmp_path)
    known.unlink()
    key = keypair.load_or_create_broker_keys(tcp_broker.data_dir)[0].public.decode()
    done = ok(zchat(tmp_path, "register", "--server", tcp_broker.router, "--server-key",
                    key, "dora"))
    assert done.stderr == "" and not known.exists()


def test_a_server_key_that_starts_with_a_dash_is_taken_as_the_value(tmp_path: Path) -> None:
    """Z85 keys may start with "-", which argparse took for an option ("expected one
    argument"): the broker below has such a key, given as ``--server-key KEY``."""
    import zmq
    while True:  # about one key in 85 starts with "-"
        public, secret = zmq.curve_keypair()
        if public.startswith(b"-"):
            break
    data = tmp_path / "data"
    data.mkdir(mode=0o700)
    files.write_private(data / keypair.BROKER_SECRET_FILE, keypair.certificate(public, secret))
    broker = start_broker(tmp_path)[0]
    try:
        known = known_file(tmp_path)
        known.unlink()
        done = ok(zchat(tmp_path, "register", "--server", broker.router, "--server-key",
                        public.decode(), "dora"))
        assert done.stderr == "" and not known.exists()
    finally:
        assert stop_broker(broker)[0] == 0


@pytest.mark.parametrize("bad", ["tooshort", "~" * 40])
def test_a_malformed_server_key_is_one_clear_line(tmp_path: Path, bad: str) -> None:
    result = subprocess.run([*zchat_command(), "say", "--server", "tcp://127.0.0.1:9",
                             "--server-key", bad, "--as", "a", "--room", "r", "x"],
                            env=cli_env(tmp_path), capture_output=True, text=True,
                            timeout=15, stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.startswith("zchat: error: command line: [client] server_key: ")
