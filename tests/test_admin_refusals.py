"""What the operator tools (``zchat admin``, ``zchat passwd``; docs/admin.md) refuse and
how they say it — linked or foreign database files, unwritable output, passwords never
echoed, admins' own passwords — each once a hole a tester found (issue 6), tested here:
real SQLite files, the real CLI in a subprocess, a real ``zchat broker`` subprocess on
loopback tcp where a broker must run, and the in-process broker (inproc://) for the
wire-level refusals.
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest
from conftest import TcpBroker, cli_env, run, stop_broker, zchat_command

from zchat import admin
from zchat.cli import _lock_data_dir
from zchat.errors import RequestFailed, Status, StorageError
from zchat.names import name_key
from zchat.passwords import verify_password
from zchat.store import SCHEMA_VERSION, Store
from zchat.testing import DEFAULT_PASSWORD, Harness, create_admin_accounts

# -- helpers ---------------------------------------------------------------------------------


def zchat(tmp_path: Path, *args: str, stdout: object = subprocess.PIPE,
          stdin: str | None = None, **env: str) -> subprocess.CompletedProcess[str]:
    environment = cli_env(tmp_path)
    environment.update(env)
    return subprocess.run([*zchat_command(), *args], env=environment, input=stdin,
                          stdin=None if stdin is not None else subprocess.DEVNULL,
                          stdout=stdout, stderr=subprocess.PIPE,  # type: ignore[arg-type]
                          text=True, timeout=60)


def failed(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 1, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    assert "\nzchat: error: " in "\n" + result.stderr, result.stderr  # one error line
    return result.stderr


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, (result.returncode, result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    return result


def database(tmp_path: Path, *names: str, directory: str = "data") -> Path:
    """A zchat database in tmp_path/``directory`` with an account per name (password
    DEFAULT_PASSWORD, cheap hash)."""
    data = tmp_path / directory
    data.mkdir(parents=True, exist_ok=True)
    store = Store(data / "zchat.db")
    try:
        create_admin_accounts(store, names)
    finally:
        store.close()
    return data / "zchat.db"


def account_names(db: Path) -> list[str]:
    store = Store(db)
    try:
        return sorted(a.name for a in store.list_accounts())
    finally:
        store.close()


def disabled(db: Path, name: str) -> bool:
    store = Store(db)
    try:
        return store.is_disabled(name_key(name))
    finally:
        store.close()


# -- 1. a second name for the database does not get past the "broker running" refusal ----


def test_a_symlinked_db_is_refused_while_the_broker_runs(tmp_path: Path,
                                                         broker: TcpBroker) -> None:
    db = broker.data_dir / "zchat.db"
    store = Store(db)
    try:
        create_admin_accounts(store, ["bob"])
    finally:
        store.close()
    link = tmp_path / "link.db"
    link.symlink_to(db)
    error = failed(zchat(tmp_path, "admin", "disable", "bob", "--db", str(link)))
    assert "broker is running" in error
    assert not disabled(db, "bob")
    # a symlink to the data directory is the same: the real path is looked at
    linked_dir = tmp_path / "linked-data"
    linked_dir.symlink_to(broker.data_dir)
    assert "broker is running" in failed(zchat(tmp_path, "admin", "disable", "bob",
                                               "--data-dir", str(linked_dir)))
    assert not disabled(db, "bob")
    assert stop_broker(broker)[0] == 0
    ok(zchat(tmp_path, "admin", "disable", "bob", "--db", str(link)))
    assert disabled(db, "bob")


def test_a_symlinked_directory_under_a_held_lock_is_refused(tmp_path: Path) -> None:
    """The same refusal with the broker's own lock function holding broker.lock (what
    ``zchat broker`` does) and a symlinked directory in the middle of the path."""
    db = database(tmp_path, "bob")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "d").symlink_to(db.parent)
    lock = _lock_data_dir(db.parent)
    try:
        error = failed(zchat(tmp_path, "admin", "create", "--csv", str(tmp_path / "x.csv"),
                             "--db", str(tmp_path / "elsewhere" / "d" / "zchat.db")))
        assert "broker is running" in error
    finally:
        lock.close()


def test_a_hard_linked_db_is_refused_in_every_direct_command(tmp_path: Path) -> None:
    """Another name in another directory hides the data directory's broker.lock, and
    SQLite keeps a WAL file per name (sqlite.org/howtocorrupt.html §2.5)."""
    db = database(tmp_path, "bob")
    (tmp_path / "other").mkdir()
    hard = tmp_path / "other" / "copy.db"
    os.link(db, hard)
    for args in (("disable", "bob"), ("users",)):
        for path in (hard, db):
            error = failed(zchat(tmp_path, "admin", *args, "--db", str(path)))
            assert "2 hard links" in error
    assert not disabled(db, "bob")
    hard.unlink()
    ok(zchat(tmp_path, "admin", "disable", "bob", "--db", str(db)))
    assert disabled(db, "bob")


# -- 2. generated passwords are never lost -------------------------------------------------


def write_csv(tmp_path: Path, text: str, name: str = "class.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_an_unwritable_output_file_creates_nothing_direct(tmp_path: Path) -> None:
    db = database(tmp_path, "root")
    csv_file = write_csv(tmp_path, "name,password\nada,\nbrian,pw-brian-1\n")
    error = failed(zchat(tmp_path, "admin", "create", "--csv", str(csv_file), "--db",
                         str(db), "--output", str(tmp_path / "nonexist" / "p.csv")))
    assert "cannot create" in error and "nothing was created" in error
    assert account_names(db) == ["root"]
    assert not (tmp_path / "nonexist").exists()


def test_an_unwritable_output_file_creates_nothing_over_the_wire(
        tmp_path: Path, broker: TcpBroker) -> None:
    csv_file = write_csv(tmp_path, "name,password\nada,\n")
    wire = ("--server", broker.router, "--as", "root")
    error = failed(zchat(tmp_path, "admin", "create", *wire, "--csv", str(csv_file),
                         "--output", str(tmp_path / "nonexist" / "p.csv")))
    assert "cannot create" in error and "nothing was created" in error
    users = ok(zchat(tmp_path, "admin", "users", *wire, "--json")).stdout
    assert '"ada"' not in users and '"root"' in users
    # a writable file gets the passwords; a refused batch leaves no file behind
    batch = write_csv(tmp_path, "name,password\nada,\n", "again.csv")
    out = tmp_path / "p.csv"
    ok(zchat(tmp_path, "admin", "create", *wire, "--csv", str(batch), "--output", str(out)))
    assert out.read_text(encoding="utf-8").startswith("name,password\nada,")
    out.unlink()
    assert "taken" in failed(zchat(tmp_path, "admin", "create", *wire, "--csv", str(batch),
                                   "--output", str(out)))
    assert not out.exists()


def test_passwords_that_cannot_reach_stdout_are_reported_without_a_traceback(
        tmp_path: Path) -> None:
    db = database(tmp_path, "root")
    csv_file = write_csv(tmp_path, "name,password\nada,\nbrian,pw-brian-1\ncarl,\n")
    with open("/dev/full", "w") as full:
        error = failed(zchat(tmp_path, "admin", "create", "--csv", str(csv_file), "--db",
                             str(db), stdout=full))
    assert "created 3 accounts: ada, brian, carl" in error
    assert "could not be written to standard output" in error
    assert "the passwords of ada, carl are shown nowhere" in error
    assert "reset-password" in error
    assert "Exception ignored" not in error
    assert account_names(db) == ["ada", "brian", "carl", "root"]
    # reset-password --generate: the same, one line
    with open("/dev/full", "w") as full:
        error = failed(zchat(tmp_path, "admin", "reset-password", "ada", "--generate",
                             "--db", str(db), stdout=full))
    assert "the password of ada was reset, but the generated one could not be written" \
        in error


# -- 3. a token session cannot change its account's password ---------------------------------


def test_a_token_session_cannot_change_its_own_password(harness: Harness) -> None:
    """SET_PASSWORD from a session that logged in with a token: 403, as CREATE_TOKEN;
    the password is unchanged (a leaked bot token must not become the password)."""

    async def scenario() -> None:
        async with harness.client("bot7") as owner:
            token = (await owner.create_token("ci")).token
        async with harness.client() as c:
            await c.login("bot7", token=token)
            with pytest.raises(RequestFailed) as refused:
                await c.set_password(DEFAULT_PASSWORD, "taken over by a token")
            assert refused.value.status == Status.FORBIDDEN
            assert refused.value.reason == "log in with the password to change it"
        async with harness.client() as c:  # the old password still works
            assert (await c.login("bot7", DEFAULT_PASSWORD)).name == "bot7"
        async with harness.client() as c:  # and a password session may change it
            await c.login("bot7", DEFAULT_PASSWORD)
            await c.set_password(DEFAULT_PASSWORD, "a new one for bot7")

    run(scenario())


def test_an_admin_token_cannot_reset_the_admins_own_password(tmp_path: Path,
                                                             broker: TcpBroker) -> None:
    wire = ("--server", broker.router, "--as", "root")
    token = ok(zchat(tmp_path, "token", "create", *wire)).stdout.strip()
    error = failed(zchat(tmp_path, "admin", "reset-password", *wire, "root", "--stdin",
                         stdin="owned by the token\n", ZCHAT_TOKEN=token,
                         ZCHAT_PASSWORD=""))
    assert "(403)" in error
    ok(zchat(tmp_path, "admin", "users", *wire))  # the password is unchanged


# -- 4. a database that is not zchat's is left alone -----------------------------------------


def test_a_foreign_sqlite_file_is_refused_and_left_unchanged(tmp_path: Path) -> None:
    other = tmp_path / "other.db"
    with sqlite3.connect(other) as db:
        db.execute("CREATE TABLE recipes (name TEXT)")
        db.execute("INSERT INTO recipes VALUES ('soup')")
    db.close()
    before = other.read_bytes()
    with pytest.raises(StorageError, match="is not a zchat database") as refused:
        Store(other)
    assert str(other) in str(refused.value)
    error = failed(zchat(tmp_path, "admin", "users", "--db", str(other)))
    assert f"{other} is not a zchat database" in error
    assert other.read_bytes() == before
    assert not Path(f"{other}-wal").exists()
    with sqlite3.connect(other) as db:
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master")]
        version = db.execute("PRAGMA user_version").fetchone()[0]
    db.close()
    assert (tables, version) == (["recipes"], 0)


def test_a_new_empty_file_is_still_initialised(tmp_path: Path) -> None:
    empty = tmp_path / "new.db"
    empty.touch()
    store = Store(empty)
    try:
        assert store.schema_version == SCHEMA_VERSION
        assert store.list_accounts() == []
    finally:
        store.close()


# -- 8. the CSV: passwords taken as written, never echoed ------------------------------------


def test_a_password_with_spaces_around_it_is_a_bad_row_not_trimmed() -> None:
    rows, bad = admin.parse_accounts_csv(
        "name,password\n ada , pw-ada-1\nbea,pw-bea-2 \ncid,pw inside ok\n", "c.csv")
    assert [r.line for r in bad] == [2, 3]
    assert all("white space" in b.problem and "pw-" not in b.problem for b in bad)
    assert rows == [admin.NewAccountRow(4, "cid", "pw inside ok", False)]


def test_csv_errors_name_the_line_never_a_password(tmp_path: Path) -> None:
    db = database(tmp_path, "root")
    csv_file = write_csv(tmp_path, "xena;pw-xena-1234\nyuri,pw-yuri-5678,pw-shifted-90\n"
                                   "zed,pw-zed-0000,,\n")
    error = failed(zchat(tmp_path, "admin", "create", "--csv", str(csv_file), "--db",
                         str(db)))
    assert "3 bad rows" in error and "nothing created" in error
    assert f"{csv_file}:1: " in error and "separated by ';'" in error
    assert f"{csv_file}:2: the bot column must be yes or no" in error
    assert f"{csv_file}:3: 4 columns" in error
    assert "pw-" not in error and "xena" not in error
    assert account_names(db) == ["root"]
    header = write_csv(tmp_path, "name,s3cret-header-pw\nada,pw\n", "header.csv")
    error = failed(zchat(tmp_path, "admin", "create", "--csv", str(header), "--db",
                         str(db)))
    assert f"{header}:1: the header must name" in error and "s3cret" not in error


def test_the_first_admin_is_created_before_the_broker_ever_started(tmp_path: Path) -> None:
    """A fresh install: `zchat admin create --data-dir DIR` makes the database (0600, in a
    0700 directory) with the admin's account, whose printed password is the one stored."""
    data = tmp_path / "fresh" / "data"
    csv = tmp_path / "admins.csv"
    csv.write_text("name,password\nboss,\n", encoding="utf-8")
    created = ok(zchat(tmp_path, "admin", "create", "--csv", str(csv), "--data-dir", str(data)))
    db = data / "zchat.db"
    assert (db.stat().st_mode & 0o777, data.stat().st_mode & 0o777) == (0o600, 0o700)
    assert account_names(db) == ["boss"]
    (line,) = [x for x in created.stdout.splitlines() if x.startswith("boss")]
    password = line.split(",")[-1] if "," in line else line.split()[-1]
    store = Store(db)
    try:
        row = store.get_account("boss")
        assert row is not None and verify_password(password, row.password_hash)
        # Argon2id at the shipped (OWASP's minimum) parameters, as the broker hashes
        assert row.password_hash.startswith("$argon2id$v=19$m=19456,t=2,p=1$")
    finally:
        store.close()
    # Nothing else is made from nothing: a reading command still wants a database.
    assert "no zchat database" in failed(zchat(tmp_path, "admin", "users", "--data-dir",
                                               str(tmp_path / "elsewhere")))


# -- 9. no CSV error echoes a name or a password; plurals; an empty $ZCHAT_NEW_PASSWORD;
#       the changed-key refusal's first line ----------------------------------------------


def zchat_no_tty(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``zchat`` in a new session: no controlling terminal, so nothing can be prompted."""
    environment = cli_env(tmp_path)
    environment.update(env)
    return subprocess.run([*zchat_command(), *args], env=environment,
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=60, start_new_session=True)


def test_swapped_columns_never_echo_the_password_as_a_name(tmp_path: Path) -> None:
    """A tester's header-less file with the columns swapped and a shared class password:
    ``swapped.csv:2: 'Winter2024x': the same as …`` printed the password."""
    db = database(tmp_path, "quentin7")
    swapped = write_csv(tmp_path, "Winter2024x,adalovelace\nWinter2024x,brianmay\n",
                        "swapped.csv")
    error = failed(zchat(tmp_path, "admin", "create", "--csv", str(swapped), "--db",
                         str(db)))
    assert f"{swapped}:2: name: the same as or too like the name on line 1" in error
    assert "Winter2024x" not in error and "brian" not in error
    assert account_names(db) == ["quentin7"]


def test_csv_errors_name_line_column_and_rule_but_no_value(tmp_path: Path) -> None:
    """Taken, look-alike and rule-breaking names: the report names the line, the column and
    the rule, and holds no name, no character, code point or length of one."""
    db = database(tmp_path, "quentin7")
    long_name = "Longpassphrase-of-the-class-2024-x"  # 34 characters
    rows = ("name,password\n"
            "Quentin7,pw-q-1-long\n"     # 2 taken (case-folded)
            "paul,pw-paul-1\n"           # 3 good
            "pauI,pw-paul-2\n"           # 4 look-alike of line 3
            "Pa$$w0rd!,pw-x-1-long\n"    # 5 a character outside the rules
            f"{long_name},pw-x-2-long\n"  # 6 too long
            "zero\u200bwidth,pw-x-3-long\n")  # 7 an invisible character
    class_csv = write_csv(tmp_path, rows)
    error = failed(zchat(tmp_path, "admin", "create", "--csv", str(class_csv), "--db",
                         str(db)))
    assert "5 bad rows" in error and "nothing created" in error
    assert f"{class_csv}:2: name: taken by an existing account" in error
    assert f"{class_csv}:4: name: the same as or too like the name on line 3" in error
    assert f"{class_csv}:5: name may hold only letters, digits, '_', '-' and '.'\n" \
        in error + "\n"
    assert f"{class_csv}:6: name is longer than 32 characters" in error
    assert f"{class_csv}:7: name contains an invisible character" in error
    body = error.split("nothing created:", 1)[1].replace(str(class_csv), "FILE")
    for value in ("uentin", "pau", "Pa$$", "$", "!", long_name, "34", "zero", "width",
                  "U+200B", "pw-"):
        assert value not in body, (value, body)
    assert account_names(db) == ["quentin7"]


def test_the_brokers_create_accounts_refusal_echoes_no_name() -> None:
    """Over the wire the broker checks again (a name registered between the operator's
    check and the request): its 409/422 names positions and rules, not the names."""
    from zchat import wire as p
    from zchat.testing import running_broker

    async def scenario(h: Harness) -> None:
        async with h.client("quentin7"):
            pass
        async with h.client("root") as root:
            with pytest.raises(RequestFailed) as taken:
                await root.create_accounts((p.NewAccount("Quentin7", "pw-q-1-long", False),))
            assert taken.value.status == Status.CONFLICT
            assert taken.value.reason == ("1 of 1 accounts refused, none created: "
                                          "accounts[0] name: taken by an existing account "
                                          "(or too like an existing name)")
            with pytest.raises(RequestFailed) as alike:
                await root.create_accounts((p.NewAccount("Winter2024x", "adalovelace", False),
                                            p.NewAccount("Winter2024x", "brianmay", False)))
            assert alike.value.status == Status.INVALID
            assert "accounts[1] name: the same as or too like" in alike.value.reason
            assert "Winter" not in alike.value.reason
        async with h.client("root") as root:
            assert "Winter2024x" not in {u.name for u in (await root.users()).users}

    with running_broker(admins=("root",)) as harness:
        run(scenario(harness))


def test_csv_errors_over_the_wire_echo_no_name(tmp_path: Path, broker: TcpBroker) -> None:
    wire = ("--server", broker.router, "--as", "root")
    swapped = write_csv(tmp_path, "Winter2024x,adalovelace\nWinter2024x,brianmay\n"
                                  "root,pw-root-1\n", "swapped.csv")
    error = failed(zchat(tmp_path, "admin", "create", *wire, "--csv", str(swapped)))
    assert f"{swapped}:2: name: the same as or too like the name on line 1" in error
    assert f"{swapped}:3: name: taken by an existing account" in error
    assert "Winter2024x" not in error and "'root'" not in error


def test_generated_password_messages_agree_in_number(tmp_path: Path) -> None:
    db = database(tmp_path, "quentin7")
    one = ok(zchat(tmp_path, "admin", "create", "--csv",
                   str(write_csv(tmp_path, "name,password\nada,\nbea,pw-bea-1\n", "one.csv")),
                   "--db", str(db)))
    assert "the generated password above is shown only this once\n" in one.stderr
    assert "passwords" not in one.stderr
    two = ok(zchat(tmp_path, "admin", "create", "--csv",
                   str(write_csv(tmp_path, "name,password\ncid,\ndee,\n", "two.csv")),
                   "--db", str(db)))
    assert "the 2 generated passwords above are shown only this once\n" in two.stderr
    out = tmp_path / "p.csv"
    to_file = ok(zchat(tmp_path, "admin", "create", "--csv",
                       str(write_csv(tmp_path, "name,password\neve,\n", "three.csv")),
                       "--db", str(db), "--output", str(out)))
    assert f"the generated password is in {out} (mode 0600); it is shown nowhere else\n" \
        in to_file.stderr
    assert out.read_text(encoding="utf-8").startswith("name,password\neve,")
    assert account_names(db) == ["ada", "bea", "cid", "dee", "eve", "quentin7"]


def test_an_empty_new_password_variable_is_named_as_set_but_empty(tmp_path: Path) -> None:
    db = database(tmp_path, "quentin7")
    error = failed(zchat_no_tty(tmp_path, "admin", "reset-password", "quentin7", "--db",
                                str(db), ZCHAT_NEW_PASSWORD=""))
    assert "no new password: ZCHAT_NEW_PASSWORD is set but empty; put the new password " \
        "in it, or use --stdin or --generate" in error
    store = Store(db)
    try:
        row = store.get_account("quentin7")
        assert row is not None and verify_password(DEFAULT_PASSWORD, row.password_hash)
    finally:
        store.close()
    # unset: the old message; passwd (no --generate) offers only --stdin
    unset = subprocess.run([*zchat_command(), "admin", "reset-password", "quentin7", "--db",
                            str(db)], env={k: v for k, v in cli_env(tmp_path).items()
                                           if k != "ZCHAT_NEW_PASSWORD"},
                           stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=60, start_new_session=True)
    assert "no new password: use --stdin, set ZCHAT_NEW_PASSWORD or run in a terminal" \
        in failed(unset)
    passwd = failed(zchat_no_tty(tmp_path, "passwd", "--as", "quentin7",
                                 ZCHAT_PASSWORD=DEFAULT_PASSWORD, ZCHAT_NEW_PASSWORD=""))
    assert "ZCHAT_NEW_PASSWORD is set but empty; put the new password in it, or use " \
        "--stdin\n" in passwd


def test_a_changed_key_refusal_says_so_on_its_first_line(tmp_path: Path,
                                                         broker: TcpBroker) -> None:
    """A tester saw an empty ``zchat: error: `` line before the ssh-style block: the
    message started with a newline. The console shows the same text after ``session
    ended: `` (zchat.client.trust.changed_message is its one source)."""
    import zmq

    from zchat import keyformat
    from zchat.client import trust

    other = zmq.curve_keypair()[0].decode()
    result = zchat(tmp_path, "admin", "users", "--server", broker.router, "--as", "root",
                   "--server-key", other, "--timeout", "2")
    lines = failed(result).splitlines()
    first = lines.index("zchat: error: the broker's key has changed — refusing to connect")
    assert lines[first + 1] == "@" * 59
    assert lines[first + 2].startswith("@    WARNING: BROKER IDENTIFICATION HAS CHANGED!")
    assert "zchat: error: " not in lines[first + 1:] and "zchat: error: " not in lines
    assert keyformat.fingerprint(other) in result.stderr
    text = str(trust.BrokerKeyChanged(broker.router, other, other, "the test", "remedy"))
    assert text.splitlines()[0] == trust.CHANGED_HEADLINE
    assert not text.startswith("\n")
