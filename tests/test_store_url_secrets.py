"""A database password never reaches the terminal (docs/cluster.md): ``zchat broker
--store URL``, ``zchat admin … --db URL`` and ``zchat admin migrate --to URL`` print a
store URL that cannot be used as one line with its password as ``***`` — in the URL
they name and in the driver's own message, which quotes pieces of a malformed URL
(``unexpected spaces found in "host=127.0.0.1 password=…"``). The real CLI in a
subprocess, no database needed: each URL fails before any connection is made, or on
a refused port (127.0.0.1:1)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import cli_env, zchat_command

SECRET = "S3cr3tPW"

#: (URL, the forms of the secret that must not be printed): the userinfo's, the query's,
#: a key=value conninfo's, percent-encoded or not, malformed (libpq quotes the bad part)
#: and well formed (a refused connection).
URLS = [
    f"postgresql://host=127.0.0.1 password={SECRET}",
    f"postgresql://zchat:{SECRET}@127.0.0.1:1/db?options=-c%20x password={SECRET}",
    f"postgresql://zchat@127.0.0.1:1/db?options=-c%20x&password={SECRET} y",
    f"postgresql://zchat@127.0.0.1:1/db?pass%77ord={SECRET}&bogus=1",
    f"postgresql://zchat@127.0.0.1:1/db?password%3D{SECRET}",
    "postgresql://zchat:S3cr%33tPW@127.0.0.1:1/db",
    f"postgresql://zchat:{SECRET}@127.0.0.1:1/db",
    f"postgresql://zchat@127.0.0.1:1/db?password={SECRET}",
    f"postgresql://zchat@[::1/db?password={SECRET}",
    f"postgresql://zchat:{SECRET}@127.0.0.1:99999/db",
    f"postgresql://zchat:{SECRET}@127.0.0.1:1/db?sslmode=bogus",
    f"postgresql://host=127.0.0.1 port=1 password='{SECRET} x'",
]
#: A mistyped ``://`` (a second tester's: the userinfo pattern wanted ``SCHEME://``).
MISTYPED = [f"postgresql:/u:{SECRET}@h/db", f"postgres:/u:{SECRET}@h/db",
            f"postgresql//u:{SECRET}@h/db", f"postgresql:u:{SECRET}@h/db"]


def _run(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*zchat_command(), *args], env=cli_env(tmp_path),
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60)


def _assert_hidden(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 1, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    out = result.stdout + result.stderr
    for form in (SECRET, "S3cr%33tPW"):
        assert form not in out, out
    assert "***" in out, out  # the password was there, and is shown hidden


@pytest.mark.parametrize("url", URLS)
def test_broker_store_url_password_is_never_printed(tmp_path: Path, url: str) -> None:
    result = _run(tmp_path, "broker", "--data-dir", str(tmp_path / "data"),
                  "--router", "tcp://127.0.0.1:0", "--pub", "tcp://127.0.0.1:0",
                  "--store", url)
    _assert_hidden(result)
    assert result.stderr.startswith("zchat: error: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_the_driver_s_message_keeps_its_shape(tmp_path: Path) -> None:
    """Only the password goes: the line reads as it did, the URL, a colon, the reason."""
    result = _run(tmp_path, "broker", "--data-dir", str(tmp_path / "data"), "--store",
                  f"postgresql://host=127.0.0.1 password={SECRET}")
    assert result.stderr == (
        "zchat: error: cannot connect to the database postgresql://host=127.0.0.1 "
        'password=***: unexpected spaces found in "host=127.0.0.1 password=***", use '
        "percent-encoded spaces (%20) instead\n")


@pytest.mark.parametrize("url", URLS[:4])
def test_admin_db_url_password_is_never_printed(tmp_path: Path, url: str) -> None:
    _assert_hidden(_run(tmp_path, "admin", "users", "--db", url))


@pytest.mark.parametrize("url", URLS[:4])
def test_admin_migrate_target_password_is_never_printed(tmp_path: Path, url: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    from zchat.store import Store

    Store(data / "zchat.db").close()
    _assert_hidden(_run(tmp_path, "admin", "migrate", "--data-dir", str(data), "--to", url))


@pytest.mark.parametrize("url", MISTYPED)
def test_a_mistyped_url_s_password_is_never_printed(tmp_path: Path, url: str) -> None:
    _assert_hidden(_run(tmp_path, "broker", "--data-dir", str(tmp_path / "data"),
                        "--store", url))
    _assert_hidden(_run(tmp_path, "admin", "users", "--db", url))
    data = tmp_path / "data"
    data.mkdir(exist_ok=True)
    from zchat.store import Store

    Store(data / "zchat.db").close()
    _assert_hidden(_run(tmp_path, "admin", "migrate", "--data-dir", str(data), "--to", url))


@pytest.mark.parametrize("url", [f"postgresql://zchat:Wr@ng{SECRET}@127.0.0.1:1/zchat",
                                 f"postgresql://zchat:p@{SECRET}:w0rd@127.0.0.1:1/zchat"])
def test_an_unencoded_at_in_the_password_is_refused_before_the_driver_quotes_it(
        tmp_path: Path, url: str) -> None:
    """A third tester's: libpq read the part of the password after its '@' as the host
    and quoted it back ("failed to resolve host 'ngPW5@…'")."""
    data = tmp_path / "data"
    for result in (_run(tmp_path, "broker", "--data-dir", str(data), "--store", url),
                   _run(tmp_path, "admin", "users", "--db", url)):
        _assert_hidden(result)
        assert "an '@' in the password must be written %40" in result.stderr
    data.mkdir(exist_ok=True)
    from zchat.store import Store

    Store(data / "zchat.db").close()
    result = _run(tmp_path, "admin", "migrate", "--data-dir", str(data), "--to", url)
    _assert_hidden(result)
    assert "an '@' in the password must be written %40" in result.stderr


@pytest.mark.parametrize("url", [f"postgresql://zchat:ab/cd{SECRET}@127.0.0.1:1/zchat",
                                 f"postgresql://zchat:ab#cd{SECRET}@127.0.0.1:1/zchat",
                                 f"postgresql://zchat:ab?cd{SECRET}@127.0.0.1:1/zchat",
                                 f"postgresql://zchat:p@ss:w/rd#{SECRET}@127.0.0.1:1/zchat"])
def test_an_unencoded_slash_query_or_hash_in_the_password_is_refused_hidden(
        tmp_path: Path, url: str) -> None:
    """A fourth tester's HIGH: the userinfo pattern stopped at '/', '?' and '#', so the
    refusal ("the port must be a number … in '…'") printed such a password in clear."""
    data = tmp_path / "data"
    for result in (_run(tmp_path, "broker", "--data-dir", str(data), "--store", url),
                   _run(tmp_path, "admin", "users", "--db", url)):
        _assert_hidden(result)
        assert "in the password must be written %" in result.stderr, result.stderr
        for piece in ("ab/cd", "ab#cd", "ab?cd", "ss:w", "rd#"):
            assert piece not in result.stderr, result.stderr
    data.mkdir(exist_ok=True)
    from zchat.store import Store

    Store(data / "zchat.db").close()
    result = _run(tmp_path, "admin", "migrate", "--data-dir", str(data), "--to", url)
    _assert_hidden(result)
    assert "in the password must be written %" in result.stderr, result.stderr


@pytest.mark.parametrize("url", ["postgresql://zchat:a@127.0.0.1:1/zchat",
                                 "postgresql://zchat:p%40ss%3Aw%2Frd%231@127.0.0.1:1/zchat"])
def test_a_short_or_encoded_password_is_hidden_without_garbling_the_line(
        tmp_path: Path, url: str) -> None:
    """A fourth tester's: every 'a' of the message became *** for the password 'a', and
    every 'p' for 'p%40ss…' (its decoded piece before the '@'), telling the password."""
    result = _run(tmp_path, "admin", "users", "--db", url)
    assert result.returncode == 1, result.stderr
    line = result.stderr.strip()
    assert line.startswith("zchat: error: cannot connect to the database "
                           "postgresql://zchat:***@127.0.0.1:1/zchat: "), line
    assert line.count("***") == 1, line


@pytest.mark.parametrize("args", [
    ("broker", "--stroe", f"postgresql://bob:{SECRET}@127.0.0.1:1/bobdb"),
    ("admin", "--db", f"postgresql://bob:{SECRET}@127.0.0.1:1/bobdb", "sessions"),
    ("admin", "users", f"postgresql://bob:{SECRET}@127.0.0.1:1/bobdb"),
])
def test_a_command_line_error_quoting_the_url_hides_its_password(
        tmp_path: Path, args: tuple[str, ...]) -> None:
    """A sixth tester's: argparse's own errors (an option mistyped, the URL where ACTION
    goes) quoted the URL with its password."""
    result = _run(tmp_path, *args)
    assert result.returncode == 2, result.stderr
    assert SECRET not in result.stderr and "***" in result.stderr, result.stderr
    assert result.stderr.startswith("zchat: error: ")


@pytest.mark.parametrize("args", [
    ("join", f"postgresql://u:{SECRET}@127.0.0.1:1/db"),
    ("tail", "--server", "tcp://127.0.0.1:1", "--as", f"postgres://u:{SECRET}@h/db"),
    ("join", f"host=127.0.0.1 password={SECRET}"),
])
def test_a_url_given_where_a_name_goes_is_refused_hidden(
        tmp_path: Path, args: tuple[str, ...]) -> None:
    """A seventh tester's: the name check echoed a URL typed as an account name, password
    and all."""
    result = _run(tmp_path, *args)
    assert result.returncode != 0, result.stderr
    assert SECRET not in result.stderr + result.stdout and "***" in result.stderr, \
        result.stderr
