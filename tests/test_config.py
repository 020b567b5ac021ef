"""Config: defaults in code, the TOML file, validation errors and XDG paths."""

from __future__ import annotations

import dataclasses
import logging
import tomllib
from pathlib import Path

import pytest

from zchat.client import session
from zchat.config import (
    CLIENT_FIRST_BACKOFF_S,
    DEPRECATED_KEYS,
    BrokerConfig,
    ClientConfig,
    Config,
    ConfigError,
    IrcConfig,
    config_from_dict,
    data_dir,
    default_config_path,
    endpoint_problem,
    lease_warning,
    load_config,
    server_endpoints,
    validate,
)
from zchat.errors import ZchatError

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "zchat" / "data" / "zchat.toml"


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "zchat.toml"
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def xdg(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty home with no XDG variables set."""
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("XDG_DATA_HOME", raising=False)
    return home


# --- defaults and the sample file ---------------------------------------------------------


def test_defaults() -> None:
    cfg = Config()
    assert cfg.broker.router == "tcp://127.0.0.1:5555"
    assert cfg.broker.pub == "tcp://127.0.0.1:5556"
    assert cfg.broker.pub_advertised == ""
    assert cfg.broker.data_dir == ""
    assert cfg.broker.log_level == "info"
    assert cfg.broker.admins == ()
    assert cfg.broker.max_text_bytes == 4000
    assert cfg.broker.max_text_lines == 50
    assert cfg.broker.heartbeat_interval_s == 10.0
    assert cfg.broker.heartbeat_timeout_s == 30.0
    assert cfg.broker.max_stored_dms == 1000
    assert (cfg.broker.sndhwm, cfg.broker.rcvhwm) == (10_000, 10_000)
    # OWASP's minimum Argon2id configuration (zchat.passwords)
    assert (cfg.broker.argon2_memory_kib, cfg.broker.argon2_time_cost,
            cfg.broker.argon2_parallelism) == (19456, 2, 1)
    assert cfg.broker.hash_workers == 2
    assert cfg.client == ClientConfig("tcp://127.0.0.1:5555", 5.0, 30.0)
    validate(cfg)


def test_config_is_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        Config().broker.max_text_bytes = 1  # type: ignore[misc]


def test_sample_file_equals_defaults() -> None:
    assert load_config(SAMPLE) == Config()


def test_sample_file_lists_every_setting() -> None:
    document = tomllib.loads(SAMPLE.read_text(encoding="utf-8"))
    assert set(document) == {"broker", "client", "irc"}
    assert list(document["broker"]) == [f.name for f in dataclasses.fields(BrokerConfig)]
    assert list(document["client"]) == [f.name for f in dataclasses.fields(ClientConfig)]
    assert list(document["irc"]) == [f.name for f in dataclasses.fields(IrcConfig)]


@pytest.mark.parametrize(("irc", "words"), [
    ({"listen": "0.0.0.0:6667"}, "not a loopback address"),
    ({"listen": "192.168.1.5:6667"}, "allow_plaintext = true"),
    ({"listen": "6667"}, "HOST:PORT"),
    ({"listen": "", "tls_listen": ""}, "needs a listener"),
    ({"tls_listen": "0.0.0.0:6697"}, "tls_cert and tls_key"),
    ({"guests": "yes"}, "true or false"),
])
def test_irc_settings_are_checked(irc: dict[str, object], words: str) -> None:
    with pytest.raises(ConfigError, match=words):
        config_from_dict({"irc": irc})


def test_irc_plaintext_off_loopback_needs_saying_so() -> None:
    config = config_from_dict({"irc": {"listen": "0.0.0.0:6667", "allow_plaintext": True}})
    assert config.irc.listen == "0.0.0.0:6667"
    assert config_from_dict({"irc": {"listen": "[::1]:6667"}}).irc.listen == "[::1]:6667"


def test_sample_file_comments_every_setting() -> None:
    lines = SAMPLE.read_text(encoding="utf-8").splitlines()
    for i, line in enumerate(lines):
        if "=" in line and not line.startswith("#"):
            assert lines[i - 1].startswith("# "), f"no comment above {line!r}"


# --- loading files ------------------------------------------------------------------------


def test_file_overrides_some_values(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        """
        [broker]
        router = "tcp://*:7000"
        admins = ["alice", "bob"]
        max_text_bytes = 100
        heartbeat_interval_s = 1      # an int is fine for a float
        log_level = "debug"

        [client]
        timeout_s = 2.5
        """,
    )
    cfg = load_config(path)
    assert cfg.broker == BrokerConfig(
        router="tcp://*:7000",
        admins=("alice", "bob"),
        max_text_bytes=100,
        heartbeat_interval_s=1.0,
        log_level="debug",
    )
    assert isinstance(cfg.broker.heartbeat_interval_s, float)
    assert cfg.client == ClientConfig(timeout_s=2.5)


def test_empty_file_and_empty_tables_are_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "")) == Config()
    assert load_config(write(tmp_path, "[broker]\n[client]\n")) == Config()


def test_missing_default_file_means_defaults(xdg: Path) -> None:
    assert not default_config_path().exists()
    assert load_config(None) == Config()
    assert load_config() == Config()


def test_default_file_is_read_when_present(xdg: Path) -> None:
    path = default_config_path()
    path.parent.mkdir(parents=True)
    path.write_text("[client]\nserver = 'tcp://example.org:5555'\n", encoding="utf-8")
    assert load_config(None).client.server == "tcp://example.org:5555"


def test_explicit_missing_file_is_an_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError, match="cannot read config file") as info:
        load_config(missing)
    assert str(missing) in str(info.value)
    assert info.value.path == missing


def test_unreadable_file(tmp_path: Path) -> None:
    # A directory cannot be read as a file, even by root (unlike a chmod 000 file).
    with pytest.raises(ConfigError, match="cannot read config file"):
        load_config(tmp_path)


def test_bad_toml_reports_tomllib_message(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nrouter = \n")
    with pytest.raises(ConfigError, match=r"invalid TOML: .*line 2") as info:
        load_config(path)
    assert str(info.value).startswith(f"{path}: ")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "zchat.toml"
    path.write_bytes(b"[broker]\nrouter = '\xff'\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(path)


def test_config_error_is_a_zchat_error(tmp_path: Path) -> None:
    with pytest.raises(ZchatError):
        load_config(write(tmp_path, "[nope]\n"))


# --- validation errors name the file, table and key ----------------------------------------


@pytest.mark.parametrize(
    ("text", "table", "key", "message"),
    [
        # unknown tables and keys
        ("[server]\n", None, None, r"unknown table 'server'"),
        ("[brokr]\n", None, None, r"did you mean 'broker'"),
        ("router = 'tcp://x:1'\n", None, None, r"unknown top-level key 'router'"),
        ("broker = 5\n", "broker", None, r"must be a table, got integer"),
        ("[broker]\nrouter_endpoint = 'x'\n", "broker", "router_endpoint", r"unknown key"),
        ("[broker]\nmax_text_byte = 1\n", "broker", "max_text_byte", r"'max_text_bytes'"),
        ("[client]\nrouter = 'tcp://x:1'\n", "client", "router", r"unknown key"),
        # wrong types
        ("[broker]\nmax_text_bytes = '4000'\n", "broker", "max_text_bytes", r"an integer"),
        ("[broker]\nmax_text_bytes = 4000.0\n", "broker", "max_text_bytes", r"an integer"),
        ("[broker]\nrouter = 5555\n", "broker", "router", r"a string, got integer"),
        ("[broker]\nadmins = 'alice'\n", "broker", "admins", r"an array of strings"),
        ("[broker]\nadmins = ['alice', 1]\n", "broker", "admins", r"an array of strings"),
        ("[client]\ntimeout_s = '5'\n", "client", "timeout_s", r"a number"),
        ("[client]\ntimeout_s = inf\n", "client", "timeout_s", r"a finite number"),
        ("[client]\ntimeout_s = nan\n", "client", "timeout_s", r"a finite number"),
        # a bool is not an int (nor a float), though Python says isinstance(True, int)
        ("[broker]\nhash_workers = true\n", "broker", "hash_workers", r"an integer, got boolean"),
        ("[broker]\nsndhwm = false\n", "broker", "sndhwm", r"an integer, got boolean"),
        ("[client]\ntimeout_s = true\n", "client", "timeout_s", r"a number, got boolean"),
        # out of range
        ("[broker]\nmax_text_bytes = 0\n", "broker", "max_text_bytes", r"between 1 and 30000"),
        ("[broker]\nmax_text_bytes = 60001\n", "broker", "max_text_bytes", r"got 60001"),
        ("[broker]\nmax_text_lines = 0\n", "broker", "max_text_lines", r"between 1 and 30000"),
        ("[broker]\nmax_text_lines = 30001\n", "broker", "max_text_lines", r"got 30001"),
        ("[broker]\nheartbeat_interval_s = 0\n", "broker", "heartbeat_interval_s", r"must be 0.01 to 2,592,000 s"),
        ("[broker]\nheartbeat_interval_s = -1.5\n", "broker", "heartbeat_interval_s", r"must be 0.01 to 2,592,000 s"),
        ("[broker]\nargon2_memory_kib = 1023\n", "broker", "argon2_memory_kib",
         r"between 1,024 and 4,194,304 KiB, got 1023"),
        ("[broker]\nargon2_memory_kib = 4194305\n", "broker", "argon2_memory_kib",
         r"between 1,024 and 4,194,304 KiB"),
        ("[broker]\nargon2_memory_kib = 19.5\n", "broker", "argon2_memory_kib", r"an integer"),
        ("[broker]\nargon2_time_cost = 0\n", "broker", "argon2_time_cost",
         r"between 1 and 100, got 0"),
        ("[broker]\nargon2_time_cost = 101\n", "broker", "argon2_time_cost", r"between 1 and 100"),
        ("[broker]\nargon2_parallelism = 0\n", "broker", "argon2_parallelism",
         r"between 1 and 64, got 0"),
        ("[broker]\nargon2_parallelism = 65\n", "broker", "argon2_parallelism",
         r"between 1 and 64"),
        ("[broker]\nsndhwm = 0\n", "broker", "sndhwm", r">= 1"),
        ("[broker]\nrcvhwm = -1\n", "broker", "rcvhwm", r">= 1"),
        ("[broker]\nmax_stored_dms = 0\n", "broker", "max_stored_dms", r">= 1"),
        ("[broker]\nhash_workers = 0\n", "broker", "hash_workers", r"between 1 and 64"),
        ("[broker]\nhash_workers = 65\n", "broker", "hash_workers", r"between 1 and 64"),
        ("[broker]\nlog_level = 'verbose'\n", "broker", "log_level", r"debug, info, warning"),
        ("[broker]\nlog_level = 'INFO'\n", "broker", "log_level", r"one of"),
        ("[broker]\nrouter = 'localhost:5555'\n", "broker", "router", r"not a ZeroMQ endpoint"),
        ("[broker]\npub_advertised = 'h:1'\n", "broker", "pub_advertised", r"ZeroMQ endpoint"),
        ("[broker]\nadmins = ['']\n", "broker", "admins", r"empty name"),
        ("[broker]\nid = 'chat a'\n", "broker", "id", r"printable ASCII"),
        ("[broker]\nid = '" + "x" * 64 + "'\n", "broker", "id", r"at most 63"),
        ("[broker]\ncluster_check_s = 0\n", "broker", "cluster_check_s", r"0.01 to 3,600"),
        ("[broker]\ncluster_refresh_s = 7200\n", "broker", "cluster_refresh_s",
         r"got 7200"),
        ("[broker]\nlease_s = 3.0\n", "broker", "lease_s", r"at least twice lease_renew_s"),
        ("[broker]\nlease_renew_s = 0\n", "broker", "lease_renew_s", r"0.01 to 3,600"),
        ("[client]\nserver = ''\n", "client", "server", r"not a ZeroMQ endpoint"),
        ("[client]\nserver = 'tcp://127.0.0.1:99999'\n", "client", "server",
         r"port 99999 is out of range \(1-65535\)"),
        ("[client]\nserver = 'tcp://127.0.0.1:0'\n", "client", "server", r"out of range"),
        ("[client]\nserver = 'tcp://127.0.0.1'\n", "client", "server", r"port is missing"),
        ("[client]\nserver = 'tcp://:5555'\n", "client", "server", r"host or the port"),
        ("[client]\nserver = 'tcp://h:http'\n", "client", "server", r"must be a number"),
        ("[client]\nserver = 'tcp://h:*'\n", "client", "server", r"must be a number"),
        ("[broker]\nrouter = 'tcp://*:65536'\n", "broker", "router", r"out of range"),
        ("[broker]\npub = 'tcp://[::1:5556'\n", "broker", "pub", r"unbalanced brackets"),
        ("[client]\ntimeout_s = 0\n", "client", "timeout_s", r"> 0"),
        ("[client]\nserver = 'tcp://a:1,'\n", "client", "server",
         r"endpoint 2 of 2 is empty .* separate endpoints with single commas"),
        ("[client]\nserver = 'tcp://a:1,tcp://a:1'\n", "client", "server",
         r"tcp://a:1 is listed twice"),
        ("[client]\nserver = ['tcp://a:1', 'tcp://b']\n", "client", "server",
         r"endpoint 2: .* host or the port is missing"),
        ("[client]\nserver = []\n", "client", "server", r"non-empty list of strings"),
        ("[client]\nserver = ['tcp://a:1', 5]\n", "client", "server",
         r"non-empty list of strings"),
        ("[client]\nreconnect_max_s = -1\n", "client", "reconnect_max_s", r"> 0"),
    ],
)
def test_validation_errors(
    tmp_path: Path, text: str, table: str | None, key: str | None, message: str
) -> None:
    path = write(tmp_path, text)
    with pytest.raises(ConfigError, match=message) as info:
        load_config(path)
    err = info.value
    assert (err.path, err.table, err.key) == (path, table, key)
    text_of_error = str(err)
    assert text_of_error.startswith(f"{path}: ")
    if table is not None:
        assert f"[{table}]" in text_of_error
    if key is not None:
        assert f"[{table}] {key}: " in text_of_error


@pytest.mark.parametrize(
    ("interval", "timeout"),
    [(2.0, 2.0), (2.0, 1.0), (5, 4)],
)
def test_heartbeat_timeout_must_exceed_interval(
    tmp_path: Path, interval: float, timeout: float
) -> None:
    path = write(
        tmp_path,
        f"[broker]\nheartbeat_interval_s = {interval}\nheartbeat_timeout_s = {timeout}\n",
    )
    with pytest.raises(ConfigError, match="greater than heartbeat_interval_s") as info:
        load_config(path)
    assert info.value.key == "heartbeat_timeout_s"


def test_heartbeat_timeout_just_above_interval_is_fine(tmp_path: Path) -> None:
    path = write(tmp_path, "[broker]\nheartbeat_interval_s = 2\nheartbeat_timeout_s = 2.001\n")
    assert load_config(path).broker.heartbeat_timeout_s == 2.001


def test_range_edges_are_accepted(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "[broker]\nmax_text_bytes = 30000\nargon2_memory_kib = 1024\nhash_workers = 64\n"
        "sndhwm = 1\nrcvhwm = 1\nlog_level = 'error'\nargon2_time_cost = 100\n"
        "argon2_parallelism = 64\n",
    )
    cfg = load_config(path).broker
    assert (cfg.max_text_bytes, cfg.argon2_memory_kib, cfg.hash_workers) == (30000, 1024, 64)
    assert (cfg.argon2_time_cost, cfg.argon2_parallelism) == (100, 64)
    path = write(tmp_path, "[broker]\nargon2_memory_kib = 4194304\nargon2_time_cost = 1\n")
    assert load_config(path).broker.argon2_memory_kib == 4194304


def test_scrypt_settings_of_older_files_load_with_a_warning_and_are_ignored(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    """Config files written before Argon2id set scrypt's cost; they still load (users
    have such files), each scrypt key named in a warning that says what replaced it, and
    the new hashes follow the argon2_* settings."""
    path = write(tmp_path, "[broker]\nscrypt_n = 16384\nscrypt_r = 8\nscrypt_p = 1\n"
                           "argon2_memory_kib = 65536\n")
    with caplog.at_level(logging.WARNING, logger="zchat.config"):
        cfg = load_config(path).broker
    assert cfg.argon2_memory_kib == 65536
    assert not hasattr(cfg, "scrypt_n")
    warned = [r.getMessage() for r in caplog.records if r.name == "zchat.config"]
    assert len(warned) == 3
    for key, message in zip(("scrypt_n", "scrypt_r", "scrypt_p"), warned, strict=True):
        assert message.startswith(f"{path}: [broker] {key} is deprecated and ignored")
        assert "argon2_memory_kib" in message and "next login" in message
    # even a value scrypt itself would refuse is only warned about, never an error
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="zchat.config"):
        config_from_dict({"broker": {"scrypt_n": 1000}})
    assert [r.getMessage() for r in caplog.records] == [
        f"[broker] scrypt_n {DEPRECATED_KEYS['broker', 'scrypt_n']}"]


# --- validate() after command-line flags ----------------------------------------------------


def test_validate_after_flags_applied() -> None:
    cfg = Config()
    good = dataclasses.replace(cfg, broker=dataclasses.replace(cfg.broker, max_text_bytes=10))
    validate(good)
    bad = dataclasses.replace(cfg, broker=dataclasses.replace(cfg.broker, heartbeat_timeout_s=1))
    with pytest.raises(ConfigError, match=r"^\[broker\] heartbeat_timeout_s: "):
        validate(bad)
    wrong_type = dataclasses.replace(cfg, client=dataclasses.replace(cfg.client, server=5))  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match=r"^\[client\] server: expected a string"):
        validate(wrong_type)


def test_validate_labels_with_path() -> None:
    bad = Config(client=ClientConfig(timeout_s=-1))
    with pytest.raises(ConfigError, match=r"^command line: \[client\] timeout_s: must be > 0"):
        validate(bad, path="command line")


# --- XDG paths ---------------------------------------------------------------------------


def test_default_config_path_without_xdg(xdg: Path) -> None:
    assert default_config_path() == xdg / ".config" / "zchat" / "zchat.toml"


def test_default_config_path_with_xdg(xdg: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "cfg"))
    assert default_config_path() == tmp_path / "cfg" / "zchat" / "zchat.toml"


def test_relative_xdg_is_ignored(xdg: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The XDG Base Directory Specification: relative paths are invalid and ignored.
    monkeypatch.setenv("XDG_CONFIG_HOME", "relative/cfg")
    monkeypatch.setenv("XDG_DATA_HOME", "")
    assert default_config_path() == xdg / ".config" / "zchat" / "zchat.toml"
    assert data_dir(BrokerConfig()) == xdg / ".local" / "share" / "zchat"


def test_data_dir_default_without_xdg(xdg: Path) -> None:
    assert data_dir(BrokerConfig()) == xdg / ".local" / "share" / "zchat"


def test_data_dir_default_with_xdg(xdg: Path, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert data_dir(BrokerConfig()) == tmp_path / "data" / "zchat"


def test_data_dir_explicit(xdg: Path, tmp_path: Path) -> None:
    assert data_dir(BrokerConfig(data_dir=str(tmp_path / "db"))) == tmp_path / "db"
    assert data_dir(BrokerConfig(data_dir="~/chat")) == xdg / "chat"


@pytest.mark.parametrize(("endpoint", "bind"), [
    ("tcp://127.0.0.1:5555", False), ("tcp://localhost:1", False), ("tcp://[::1]:65535", False),
    ("tcp://eth0;10.0.0.2:5555", False), ("ipc:///tmp/zchat.sock", False),
    ("inproc://broker", False), ("tcp://*:7000", True), ("tcp://127.0.0.1:*", True),
    ("tcp://127.0.0.1:0", True),
])
def test_good_endpoints_pass(endpoint: str, bind: bool) -> None:
    assert endpoint_problem(endpoint, bind=bind) is None


def test_console_logs_go_to_a_file_never_the_terminal(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    import logging

    from zchat.cli import _log_to_file

    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    try:
        _log_to_file()
        assert [type(h) for h in root.handlers] == [logging.FileHandler]
        logging.getLogger("zchat.client").warning("lost the broker")
        root.handlers[0].flush()
        assert "lost the broker" in (tmp_path / "zchat" / "console.log").read_text()
    finally:
        for h in root.handlers:
            h.close()
        root.handlers[:], level = saved
        root.setLevel(level)


@pytest.mark.parametrize("endpoint", ["http://x", "tcp:// 127.0.0.1:5555", "", "udp://h:1",
                                      "tcp://127.0.0.1:5555 "])
def test_bad_transports_and_white_space_are_refused(endpoint: str) -> None:
    problem = endpoint_problem(endpoint, bind=False)
    assert problem is not None and "endpoint" in problem


def test_a_database_password_is_hidden_wherever_the_url_carries_it() -> None:
    """libpq takes a password before the host and as ``password=`` in the query: both are
    shown as *** (the start line, errors, logs)."""
    from zchat.config import redact_url

    assert redact_url("postgresql://zchat:pw@db:5432/zchat?password=topsecret&sslmode=require") \
        == "postgresql://zchat:***@db:5432/zchat?password=***&sslmode=require"
    assert redact_url("postgresql://zchat@db/zchat?PASSWORD=x") == \
        "postgresql://zchat@db/zchat?PASSWORD=***"
    assert redact_url("postgresql://zchat@db/zchat?options=-csearch_path%3Dzchat") == \
        "postgresql://zchat@db/zchat?options=-csearch_path%3Dzchat"


def test_an_empty_store_flag_means_the_sqlite_file_whatever_the_config_says(
        tmp_path: Path) -> None:
    """``zchat broker --store ""`` takes the broker back to its SQLite file when the
    config file names a PostgreSQL database (it once kept the URL)."""
    from zchat import cli

    config = tmp_path / "broker.toml"
    config.write_text('[broker]\nstore = "postgresql://zchat@db/zchat"\n', encoding="utf-8")
    parser = cli.build_parser()
    assert cli._config(parser.parse_args(["broker", "--config", str(config)])).broker.store \
        == "postgresql://zchat@db/zchat"
    assert cli._config(parser.parse_args(
        ["broker", "--config", str(config), "--store", ""])).broker.store == ""


def test_broker_id_defaults_to_the_host_and_the_data_directory(tmp_path: Path) -> None:
    from zchat.config import BrokerConfig, broker_id

    one = broker_id(BrokerConfig(data_dir=str(tmp_path / "a")))
    assert one == broker_id(BrokerConfig(data_dir=str(tmp_path / "a")))  # stable
    assert one != broker_id(BrokerConfig(data_dir=str(tmp_path / "b")))
    assert len(one) <= 63 and " " not in one
    assert broker_id(BrokerConfig(id="chat-a", data_dir=str(tmp_path))) == "chat-a"


def test_a_cluster_is_a_list_or_a_comma_separated_string(tmp_path: Path) -> None:
    """[client] server names a cluster's brokers (docs/cluster.md): a TOML list is kept
    as the comma-separated string --server takes, and both split the same way."""
    listed = load_config(write(tmp_path, "[client]\nserver = ['tcp://a:5555', "
                                         "'tcp://b:5555']\n")).client.server
    assert listed == "tcp://a:5555,tcp://b:5555"
    spaced = load_config(write(tmp_path, "[client]\nserver = 'tcp://a:5555, "
                                         "tcp://b:5555'\n")).client.server
    assert server_endpoints(listed) == server_endpoints(spaced) == \
        ("tcp://a:5555", "tcp://b:5555")
    assert server_endpoints("inproc://one") == ("inproc://one",)
    assert server_endpoints(["tcp://a:1", "tcp://b:2"]) == ("tcp://a:1", "tcp://b:2")


def test_a_lease_shorter_than_a_client_takes_to_move_is_warned_about() -> None:
    """docs/cluster.md, "Leases and fencing": with the defaults (10 s heartbeats, 30 s
    lease) clients move before the dead broker is reaped; a lease under two heartbeat
    intervals plus the first back-off would make every moving account flap."""
    assert CLIENT_FIRST_BACKOFF_S == session.RECONNECT_FIRST_S
    assert lease_warning(BrokerConfig()) is None
    assert lease_warning(BrokerConfig(lease_s=20.5)) is None  # 2 × 10 + 0.5
    warning = lease_warning(BrokerConfig(lease_s=10.0))
    assert warning is not None and "20.5 s" in warning and "offline and online" in warning
    assert lease_warning(BrokerConfig(lease_s=3.0, lease_renew_s=0.5,
                                      heartbeat_interval_s=0.5)) is None  # the tests'


def test_a_driver_message_quoting_a_malformed_url_is_shown_without_its_password() -> None:
    """libpq quotes the bad piece of a malformed URL (without its key, at times): every
    password the store URL holds is hidden wherever a message quotes it, percent-encoded
    or not, and ``password=`` and ``USER:PASSWORD@`` are hidden in any text."""
    from zchat.config import redact_text, redact_url

    url = "postgresql://host=127.0.0.1 password=S3cr3tPW"
    assert redact_url(url) == "postgresql://host=127.0.0.1 password=***"
    assert redact_text('unexpected spaces found in "host=127.0.0.1 password=S3cr3tPW"',
                       url) == 'unexpected spaces found in "host=127.0.0.1 password=***"'
    encoded = "postgresql://zchat@db/zchat?pass%77ord=S3cr%33tPW&x=1"
    assert redact_url(encoded) == "postgresql://zchat@db/zchat?pass%77ord=***&x=1"
    assert redact_text('bad value "S3cr3tPW y" and "S3cr%33tPW"', encoded) == \
        'bad value "*** y" and "***"'
    assert redact_url("postgresql://zchat:p@ss@db:99999/zchat") == \
        "postgresql://zchat:***@db:99999/zchat"
    assert redact_text("host=h password = 'a b' port=1") == "host=h password = *** port=1"
    assert redact_text("password authentication failed for user \"zchat\"") == \
        "password authentication failed for user \"zchat\""


def test_a_password_that_is_also_the_user_or_the_database_is_hidden_only_as_a_password(
        ) -> None:
    """A fifth tester's: with `zchat:zchat@…/zchat` every "zchat" of a line became ***
    (`postgresql://***:***@…/***`, `no *** database at bt/***.db`), telling that the
    password is the user's name; a password equal to the port hid the port."""
    from zchat.config import redact_text

    url = "postgresql://zchat:zchat@127.0.0.1:48000/zchat"
    assert redact_text(f"cannot connect to the database {url}: password authentication "
                       "failed for user \"zchat\"", url) == (
        "cannot connect to the database postgresql://zchat:***@127.0.0.1:48000/zchat: "
        "password authentication failed for user \"zchat\"")
    assert redact_text("no zchat database at bt/zchat.db", url) == \
        "no zchat database at bt/zchat.db"
    port = "postgresql://zchat:48000@127.0.0.1:48000/zchat"
    assert redact_text(f"{port}: port 48000 failed", port) == \
        "postgresql://zchat:***@127.0.0.1:48000/zchat: port 48000 failed"
    # a password of its own is still hidden wherever a message quotes it
    own = "postgresql://zchat:S3cr3tPW@127.0.0.1:1/zchat"
    assert redact_text('bad "S3cr3tPW" in zchat', own) == 'bad "***" in zchat'


def test_a_list_of_hosts_is_a_store_url_as_libpq_takes_it() -> None:
    """libpq's failover form, a primary and its standbys (a fifth tester's was refused as
    a bad port); each host's port is still checked."""
    from zchat.config import store_problem

    assert store_problem("postgresql://zchat@db1:5432,db2:5433/zchat") is None
    assert store_problem("postgresql://zchat@[::1]:5432,[::2]/zchat") is None
    assert store_problem("postgresql://zchat@db1,db2/zchat") is None
    assert "the port must be a number" in (store_problem(
        "postgresql://zchat@db1:5432,db2:99999/zchat") or "")
    assert "cannot read the host and port" in (store_problem(
        "postgresql://zchat@[::1/zchat") or "")
