"""A new password that no one could use is refused (docs/PROTOCOL.md §6.2): blank (eight
spaces registered), or holding a control character (``ZCHAT_PASSWORD=$'pass\\nword12'``
registered, and no password prompt can take a newline). 422 in the broker's words in every
place ``zchat.admin.check_new_password`` applies — REGISTER, SET_PASSWORD,
ADMIN_SET_PASSWORD, CREATE_ACCOUNTS, the CSV of ``zchat admin create``, ``zchat passwd``,
``zchat admin reset-password`` and the console's account creation — while a password set
before the rule still logs in."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import TcpBroker, cli_env, run, zchat_command
from console_helpers import Script
from core_helpers import World

from zchat import admin, cli
from zchat import wire as p
from zchat.console.app import login_flow
from zchat.errors import ProtocolError, RequestFailed, Status
from zchat.names import skeleton
from zchat.store import Store
from zchat.testing import DEFAULT_PASSWORD, Harness, fast_hash, running_broker

BLANK = "password must not be blank (only white space)"
NEWLINE = ("password contains a control character (U+000A), which no one could type at "
           "a password prompt")


@pytest.mark.parametrize(("password", "why"), [
    (" " * 8, BLANK), ("\t" * 9, BLANK), ("\u3000" * 8, BLANK), ("   ", BLANK),
    ("pass\nword12", NEWLINE),
    ("password\t1", "password contains a control character (U+0009)"),
    ("\x1b[31mpassword", "password contains a control character (U+001B)"),
    ("password\x7f", "password contains a control character (U+007F)"),
])
def test_check_new_password_refuses_what_no_one_could_type(password: str, why: str) -> None:
    with pytest.raises(ProtocolError) as info:
        admin.check_new_password(password, 8)
    assert info.value.status == Status.INVALID
    assert info.value.reason.startswith(why)


@pytest.mark.parametrize("password", ["  spaces around  ", "pass word 12", "pässwörd",
                                      "密码密码密码密码"])
def test_spaces_inside_and_any_script_are_fine(password: str) -> None:
    assert admin.check_new_password(password, 8) == password


def test_register_of_a_blank_or_newline_password_is_422_and_creates_nothing() -> None:
    world = World()
    before = world.counts()
    for password, why in ((" " * 8, BLANK), ("pass\nword12", NEWLINE)):
        out = world.peer().register("alice", password)
        assert (out.status, out.reply.reason) == (Status.INVALID, why)
    assert world.counts() == before


async def refused(coro: object) -> RequestFailed:
    with pytest.raises(RequestFailed) as info:
        await coro  # type: ignore[misc]
    return info.value


def test_password_changes_and_bulk_creation_refuse_them(tmp_path: Path) -> None:
    db = tmp_path / "zchat.db"
    store = Store(db)  # an account whose password, set before the rule, has a newline
    store.ensure_room("lobby", "lobby", skeleton("lobby"), 0)
    store.create_account("old", "old", skeleton("old"),
                         fast_hash("old\npass"),
                         0, rooms=("lobby",))
    store.close()

    async def scenario(h: Harness) -> None:
        async with h.client("root") as root, h.client("bob"), \
                h.client("old", "old\npass", register=False) as old:
            assert old.name == "old"  # it still logs in
            for password, why in ((" " * 8, BLANK), ("pass\nword12", NEWLINE)):
                error = await refused(old.set_password("old\npass", password))
                assert (error.status, error.reason) == (Status.INVALID, why)
                error = await refused(root.admin_set_password("bob", password))
                assert (error.status, error.reason) == (Status.INVALID, why)
            error = await refused(root.create_accounts((
                p.NewAccount(name="ada", password="long enough"),
                p.NewAccount(name="ben", password=" " * 10),
                p.NewAccount(name="cy", password="cy\npassword"))))
            assert error.status == Status.INVALID
            assert f"accounts[1] {BLANK}" in error.reason
            assert "accounts[2] password contains a control character, which no one " \
                "could type" in error.reason  # a bulk error never shows the character
            assert "ada" not in {u.name for u in (await root.users()).users}
        async with h.client("old", "old\npass", register=False):
            pass  # nothing changed

    with running_broker(db, admins=("root",)) as h:
        run(scenario(h))


def test_a_csv_row_with_a_newline_in_its_password_is_refused(tmp_path: Path) -> None:
    csv = tmp_path / "class.csv"  # a quoted field may hold a line break
    csv.write_text('name,password\nada,long enough\nben,"pass\nword12"\n', encoding="utf-8")
    with pytest.raises(admin.BadRows) as bad:
        admin._checked_csv(csv, lambda k, s: False, None, None, 8)
    assert [r.problem for r in bad.value.rows] == [
        "password contains a control character, which no one could type at a password "
        "prompt"]


def test_zchat_register_with_a_newline_in_zchat_password_is_refused(
        tmp_path: Path, tcp_broker: TcpBroker) -> None:
    def register(password: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([*zchat_command(), "register", "--server", tcp_broker.router,
                               "alice"], env=cli_env(tmp_path, password),
                              stdin=subprocess.DEVNULL, capture_output=True, text=True,
                              timeout=30)

    for password, why in (("pass\nword12", NEWLINE), (" " * 8, BLANK)):
        result = register(password)
        assert (result.returncode, result.stdout, result.stderr) == \
            (1, "", f"zchat: error: {why} (422)\n")
    assert register(DEFAULT_PASSWORD).returncode == 0


def test_zchat_passwd_and_reset_password_refuse_them(
        harness: Harness, tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = ("--server", harness.server)
    monkeypatch.setenv("ZCHAT_PASSWORD", DEFAULT_PASSWORD)
    assert cli.main(["register", *server, "alice"]) == 0
    monkeypatch.setenv("ZCHAT_NEW_PASSWORD", " " * 8)
    capsys.readouterr()
    assert cli.main(["passwd", *server, "--as", "alice"]) == 1
    assert capsys.readouterr().err == f"zchat: error: {BLANK} (422)\n"
    db = tmp_path / "zchat.db"
    store = Store(db)
    store.ensure_room("lobby", "lobby", skeleton("lobby"), 0)
    store.create_account("bob", "bob", skeleton("bob"), "x", 0, rooms=("lobby",))
    store.close()
    monkeypatch.setenv("ZCHAT_NEW_PASSWORD", "pass\nword12")
    assert cli.main(["admin", "reset-password", "--db", str(db), "bob"]) == 1
    assert capsys.readouterr().err == f"zchat: error: {NEWLINE} (422)\n"


def test_the_console_asks_again_for_a_blank_new_password(harness: Harness) -> None:
    async def main() -> None:
        script = Script("x", "y", " " * 8, "long enough", "long enough")
        async with harness.client() as client:
            logged_in = await login_flow(client, "gina", script.ask, None, script.say)
            assert logged_in.name == "gina"
        assert script.said == ["Password must not be blank (only white space).",
                               "Created the account gina."]

    run(main())
