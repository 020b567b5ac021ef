"""A new password has at least ``[broker] min_password_chars`` characters (default 8;
issue 13 §5): REGISTER, SET_PASSWORD, ADMIN_SET_PASSWORD and CREATE_ACCOUNTS are refused
with 422 below it, and so are `zchat admin` on the database and the command line's early
checks, all in the same words; an account whose password is older and shorter still logs
in; INFO tells clients the minimum."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run
from core_helpers import World

from zchat import admin, cli
from zchat import wire as p
from zchat.config import ConfigError, config_from_dict
from zchat.errors import RequestFailed, Status
from zchat.names import name_key, skeleton
from zchat.store import Store
from zchat.testing import DEFAULT_PASSWORD, Harness, fast_hash, running_broker

TOO_SHORT = "seven77"  # 7 characters
WORDING = "password must be at least 8 characters long"


def test_register_below_the_minimum_is_422_and_creates_nothing() -> None:
    world = World()
    before = world.counts()
    out = world.peer().register("alice", TOO_SHORT)
    assert out.status == Status.INVALID and out.reply.reason == WORDING
    assert world.counts() == before
    assert world.peer().register("alice", "eight888").ok  # exactly the minimum


def test_the_minimum_is_a_setting() -> None:
    world = World(min_password_chars=12)
    out = world.peer().register("alice", "elevenchars")
    assert out.reply.reason == "password must be at least 12 characters long"
    info = world.peer().must(p.Info())
    assert info.min_password_chars == 12


@pytest.mark.parametrize("value", [0, -1, p.MAX_PASSWORD_CHARS + 1])
def test_the_setting_is_bounded(value: int) -> None:
    with pytest.raises(ConfigError, match="min_password_chars"):
        config_from_dict({"broker": {"min_password_chars": value}})


def test_an_older_shorter_password_still_logs_in(tmp_path: Path) -> None:
    """An account made before the rule (or before the minimum was raised) keeps its
    password: LOGIN checks no minimum."""
    store = Store(tmp_path / "z.db")
    store.ensure_room("lobby", "lobby", skeleton("lobby"), 0)
    old_hash = fast_hash("pw")
    store.create_account("old", "old", skeleton("old"), old_hash, 0, rooms=("lobby",))
    store.close()

    async def scenario(h: Harness) -> None:
        async with h.client("old", "pw", register=False) as old:
            assert old.name == "old"
            error = await refused(old.set_password("pw", TOO_SHORT))
            assert (error.status, error.reason) == (Status.INVALID, WORDING)

    with running_broker(tmp_path / "z.db") as h:
        run(scenario(h))


async def refused(coro: object) -> RequestFailed:
    with pytest.raises(RequestFailed) as info:
        await coro  # type: ignore[misc]
    return info.value


def test_admin_requests_below_the_minimum_are_422() -> None:
    async def scenario(h: Harness) -> None:
        async with h.client("root") as root, h.client("bob"):
            assert root.info is not None and root.info.min_password_chars == 8
            error = await refused(root.admin_set_password("bob", TOO_SHORT))
            assert (error.status, error.reason) == (Status.INVALID, WORDING)
            error = await refused(root.create_accounts((
                p.NewAccount(name="ada", password="long enough"),
                p.NewAccount(name="ben", password=TOO_SHORT))))
            assert error.status == Status.INVALID
            assert f"accounts[1] {WORDING}" in error.reason and "accounts[0]" not in \
                error.reason
            assert "ada" not in {u.name for u in (await root.users()).users}

    with running_broker(admins=("root",)) as h:
        run(scenario(h))


# -- zchat admin on the database, and the command line's early checks ------------------------


def test_direct_create_and_reset_refuse_short_passwords(tmp_path: Path) -> None:
    db = tmp_path / "zchat.db"
    Store(db).close()
    csv = tmp_path / "class.csv"
    csv.write_text(f"name,password\nada,long enough\nben,{TOO_SHORT}\n", encoding="utf-8")
    with pytest.raises(admin.BadRows) as bad:
        admin._checked_csv(csv, lambda k, s: False, None, None, 8)
    assert [(r.line, r.problem) for r in bad.value.rows] == [(3, WORDING)]
    assert TOO_SHORT not in str(bad.value)  # never the password itself


def test_cli_register_and_passwd_check_early_in_the_brokers_words(
        harness: Harness, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    server = ("--server", harness.server)
    monkeypatch.setenv("ZCHAT_PASSWORD", TOO_SHORT)
    assert cli.main(["register", *server, "alice"]) == 1
    assert capsys.readouterr().err == f"zchat: error: {WORDING} (422)\n"
    assert harness.broker.core is not None
    assert name_key("alice") not in harness.broker.core.accounts
    monkeypatch.setenv("ZCHAT_PASSWORD", DEFAULT_PASSWORD)
    assert cli.main(["register", *server, "alice"]) == 0
    monkeypatch.setenv("ZCHAT_NEW_PASSWORD", TOO_SHORT)
    capsys.readouterr()
    assert cli.main(["passwd", *server, "--as", "alice"]) == 1
    assert capsys.readouterr().err == f"zchat: error: {WORDING} (422)\n"


def test_direct_reset_password_refuses_a_short_one(tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    db = tmp_path / "zchat.db"
    store = Store(db)
    store.ensure_room("lobby", "lobby", skeleton("lobby"), 0)
    store.create_account("bob", "bob", skeleton("bob"), "x", 0, rooms=("lobby",))
    store.close()
    monkeypatch.setenv("ZCHAT_NEW_PASSWORD", TOO_SHORT)
    assert cli.main(["admin", "reset-password", "--db", str(db), "bob"]) == 1
    assert capsys.readouterr().err == f"zchat: error: {WORDING} (422)\n"
