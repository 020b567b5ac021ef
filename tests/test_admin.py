"""Operator tools (docs/admin.md, docs/PROTOCOL.md §6.42-§6.46): the bulk-creation CSV
checks, and USERS, CREATE_ACCOUNTS, ADMIN_SET_PASSWORD, ADMIN_DISABLE and SET_PASSWORD
against a real broker thread on inproc:// with real SQLite, plus the direct (database
file) mode of zchat.admin.

Nothing sleeps: a session ended by the broker is seen by the Client's next request (401),
and events are awaited with deadlines.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import pytest
from conftest import run

from zchat import admin
from zchat import wire as p
from zchat.client.client import Client
from zchat.errors import ConnectionFailed, RequestFailed, Status
from zchat.store import Store
from zchat.testing import DEFAULT_PASSWORD, Harness, fast_hash, running_broker

NEW_PASSWORD = "a brand new pass phrase"


@pytest.fixture
def h() -> Any:
    with running_broker(admins=("root",)) as harness:
        yield harness


async def refused(coro: Any) -> RequestFailed:
    with pytest.raises(RequestFailed) as info:
        await coro
    return info.value


async def ended(client: Client) -> None:
    """``client``'s session was ended by the broker: its next request is refused."""
    with pytest.raises((RequestFailed, ConnectionFailed)) as info:
        await client.who()
    if isinstance(info.value, RequestFailed):
        assert info.value.status == Status.UNAUTHORIZED


async def login_fails(h: Harness, name: str, password: str) -> RequestFailed:
    async with h.client() as c:
        return await refused(c.login(name, password))


# -- the CSV and its checks (pure) ---------------------------------------------------------


def test_csv_with_header_generated_passwords_and_bot_column() -> None:
    text = "name,bot,password\n# the class of 2024\nada,no,\nbrian,1,s3cret pass\n\n"
    rows, bad = admin.parse_accounts_csv(text)
    assert bad == []
    assert rows == [admin.NewAccountRow(3, "ada", "", False),
                    admin.NewAccountRow(4, "brian", "s3cret pass", True)]
    filled, generated = admin.fill_passwords(rows)
    assert generated == {3}
    assert len(filled[0].password) == 16 and filled[1].password == "s3cret pass"
    good, bad = admin.check_batch(filled, lambda key, skel: False, 8)
    assert bad == [] and [(a.name, a.key, a.bot) for a in good] == \
        [("ada", "ada", False), ("brian", "brian", True)]


def test_a_header_in_any_order_is_a_header() -> None:
    """A tester's "password,name" header was read as an account named "password", and
    the next row's password became a public account name."""
    for header, line in (("password,name", "pw-1,ada"), ("bot,name,password", "0,ada,pw-1"),
                         ("password,bot,name", "pw-1,no,ada")):
        rows, bad = admin.parse_accounts_csv(f"{header}\n{line}\n")
        assert bad == [] and rows == [admin.NewAccountRow(2, "ada", "pw-1", False)], header
    with pytest.raises(admin.AdminError, match="the header must name"):
        admin.parse_accounts_csv("name,pasword\nada,pw\n")


def test_an_existing_output_file_is_refused_before_anything_is_created(
        tmp_path: Path) -> None:
    """A tester's accounts were created, then their generated passwords lost because the
    --output file existed."""
    csv_file = tmp_path / "class.csv"
    csv_file.write_text("name,password\nada,\n", encoding="utf-8")
    out = tmp_path / "passwords.csv"
    out.write_text("old\n", encoding="utf-8")
    created: list[str] = []
    with pytest.raises(admin.AdminError, match="nothing was created"):
        admin._checked_csv(csv_file, lambda k, s: created.append(k) is not None, None,
                           str(out))
    assert created == [] and out.read_text(encoding="utf-8") == "old\n"


def test_a_huge_csv_is_refused_unread(tmp_path: Path) -> None:
    big = tmp_path / "big.csv"
    with big.open("wb") as f:
        f.truncate(admin.MAX_CSV_BYTES + 1)
    with pytest.raises(admin.AdminError, match="at most 10,485,760 are read"):
        admin._checked_csv(big, lambda k, s: False, None)


def test_every_bad_row_is_reported_with_its_line() -> None:
    text = ("ada,pw1-long\n"     # 1 good
            "bad name!,pw\n"     # 2 invalid name
            "Ada,pw2-long\n"     # 3 same as line 1 (case-folded)
            "taken,pw4-long\n"   # 4 exists already
            "carl,pw,maybe\n"    # 5 bad bot value
            "dora,pw,0,extra\n"  # 6 too many columns
            "erin," + "x" * (p.MAX_PASSWORD_CHARS + 1) + "\n"  # 7 password too long
            "fay,pw8\n")         # 8 password too short
    rows, bad = admin.parse_accounts_csv(text, "class.csv")
    rows, _ = admin.fill_passwords(rows)
    good, bad_accounts = admin.check_batch(rows, lambda key, skel: key == "taken", 8)
    lines = sorted(b.line for b in bad + bad_accounts)
    assert lines == [2, 3, 4, 5, 6, 7, 8]
    problems = {b.line: b.problem for b in bad + bad_accounts}
    assert "line 1" in problems[3]
    assert "taken" in problems[4]
    assert "longer than" in problems[7]
    assert problems[8] == "password must be at least 8 characters long"
    assert [a.name for a in good] == ["ada"]
    message = str(admin.BadRows("class.csv", sorted(bad + bad_accounts,
                                                    key=lambda b: b.line)))
    assert message.startswith("7 bad rows in class.csv, nothing created:")
    assert "class.csv:2:" in message and "class.csv:7:" in message


def test_look_alike_names_in_one_file_conflict() -> None:
    rows = [admin.NewAccountRow(1, "paul", "pw-paul-1", False),
            admin.NewAccountRow(2, "pauI", "pw-paul-2", False)]  # capital i looks like l
    good, bad = admin.check_batch(rows, lambda key, skel: False, 8)
    assert [a.name for a in good] == ["paul"]
    assert [b.line for b in bad] == [2]


def test_passwords_file_is_private_and_never_overwritten(tmp_path: Path) -> None:
    out = tmp_path / "passwords.csv"
    accounts = [admin.CheckedAccount(1, "ada", "ada", "ada", "pw-ada", False, True)]
    admin.write_passwords_csv(out, accounts)
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    assert out.read_text().splitlines() == ["name,password", "ada,pw-ada"]
    with pytest.raises(admin.AdminError, match="exists"):
        admin.write_passwords_csv(out, accounts)
    assert out.read_text().splitlines() == ["name,password", "ada,pw-ada"]


# -- over the wire (inproc broker) -----------------------------------------------------------


def test_admin_creates_accounts_in_bulk_and_they_log_in(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("root") as root:
            created = await root.create_accounts((
                p.NewAccount(name="Ada", password="pw-ada-1"),
                p.NewAccount(name="brian", password="pw-brian", bot=True)))
            assert created.names == ("Ada", "brian")
            users = {u.name: u for u in (await root.users()).users}
            assert (users["Ada"].bot, users["brian"].bot) == (False, True)
            assert not users["Ada"].online and users["root"].online
            assert users["root"].sessions == 1 and users["Ada"].created > 0
            async with h.client("brian", "pw-brian", register=False) as brian:
                assert [m.name for m in (await brian.who("lobby")).users] == \
                    ["Ada", "brian", "root"]
            audit = (await root.audit(action="create_account")).entries
            assert [(e.actor, e.target, e.detail) for e in audit] == \
                [("root", "brian", "bot"), ("root", "Ada", "")]

    run(scenario())


def test_bulk_create_with_a_bad_account_creates_none(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("root") as root, h.client("taken"):
            before = [u.name for u in (await root.users()).users]
            error = await refused(root.create_accounts((
                p.NewAccount(name="good", password="pw-good-1"),
                p.NewAccount(name="no way!", password="pw-bad-1"),
                p.NewAccount(name="TAKEN", password="pw-taken-1"),
                p.NewAccount(name="empty", password=""))))
            assert error.status == Status.INVALID
            assert "3 of 4 accounts refused, none created" in error.reason
            for index in ("accounts[1]", "accounts[2]", "accounts[3]"):
                assert index in error.reason
            assert "accounts[0]" not in error.reason
            assert [u.name for u in (await root.users()).users] == before
            assert (await root.audit(action="create_account")).entries == ()
            taken = await refused(root.create_accounts((p.NewAccount(name="taken",
                                                                     password="pw-taken-2"),)))
            assert taken.status == Status.CONFLICT
            empty = await refused(root.create_accounts(()))
            assert empty.status == Status.BAD_REQUEST

    run(scenario())


def test_non_admins_get_403_for_every_operator_request(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("mallory") as mallory, h.client("victim"):
            for request in (mallory.users(), mallory.sessions(),
                            mallory.create_accounts((p.NewAccount(name="x", password="y"),)),
                            mallory.admin_set_password("victim", "owned"),
                            mallory.set_disabled("victim"),
                            mallory.bans(), mallory.audit()):
                assert (await refused(request)).status == Status.FORBIDDEN
        async with h.client("victim") as victim:  # still enabled, same password
            assert (await victim.who()).users

    run(scenario())


def test_reset_password_ends_sessions_old_password_401_new_works(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("root") as root, h.client("bob") as bob1, \
                h.client("bob") as bob2:
            await root.admin_set_password("bob", NEW_PASSWORD)
            await ended(bob1)
            await ended(bob2)
            assert (await login_fails(h, "bob", DEFAULT_PASSWORD)).status == \
                Status.UNAUTHORIZED
            async with h.client("bob", NEW_PASSWORD, register=False) as bob:
                assert bob.name == "bob"
            (entry,) = (await root.audit(action="reset_password")).entries
            assert (entry.actor, entry.target) == ("root", "bob")
            assert (await refused(root.admin_set_password("nobody", "x"))).status == \
                Status.NOT_FOUND
            assert (await refused(root.admin_set_password("bob", ""))).status == \
                Status.INVALID

    run(scenario())


def test_disable_ends_live_session_login_403_enable_restores(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("root") as root, h.client("carl") as carl:
            await root.set_disabled("carl")
            await ended(carl)
            assert (await login_fails(h, "carl", DEFAULT_PASSWORD)).status == \
                Status.FORBIDDEN
            users = {u.name: u for u in (await root.users()).users}
            assert users["carl"].disabled and not users["carl"].online
            await root.set_disabled("carl")  # again: OK, nothing changes
            await root.set_disabled("carl", False)
            async with h.client("carl", register=False) as back:
                assert back.name == "carl"
            actions = [(e.action, e.target) for e in (await root.audit(target="carl")).entries]
            assert actions == [("enable", "carl"), ("disable", "carl")]
            assert (await refused(root.set_disabled("root"))).status == Status.FORBIDDEN

    run(scenario())


def test_admin_cannot_disable_another_admin() -> None:
    async def scenario(h: Harness) -> None:
        async with h.client("root") as root, h.client("ops") as ops:
            error = await refused(root.set_disabled("ops"))
            assert error.status == Status.FORBIDDEN and "admins" in error.reason
            assert (await ops.who()).users  # still logged in

    with running_broker(admins=("root", "ops")) as h:
        run(scenario(h))


def test_bans_listed_and_lifted_over_the_wire(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("root") as root, h.client("troll"):
            await root.ban("troll", "", "spam", 3600)
            (ban,) = (await root.bans()).bans
            assert (ban.kind, ban.room, ban.name, ban.by, ban.reason) == \
                ("ban", "", "troll", "root", "spam")
            assert (await login_fails(h, "troll", DEFAULT_PASSWORD)).status == \
                Status.FORBIDDEN
            await root.unban("troll")
            assert (await root.bans()).bans == ()
            async with h.client("troll", register=False) as troll:
                assert troll.name == "troll"

    run(scenario())


def test_passwd_changes_password_keeps_this_session_ends_others(h: Harness) -> None:
    async def scenario() -> None:
        async with h.client("dora") as dora, h.client("dora") as other:
            await dora.set_password(DEFAULT_PASSWORD, NEW_PASSWORD)
            assert [u.name for u in (await dora.who()).users] == ["dora"]  # still on
            await ended(other)
            assert (await login_fails(h, "dora", DEFAULT_PASSWORD)).status == \
                Status.UNAUTHORIZED
            async with h.client("dora", NEW_PASSWORD, register=False) as again:
                assert again.name == "dora"
        async with h.client("root") as root:
            (entry,) = (await root.audit(action="passwd")).entries
            assert (entry.actor, entry.target) == ("dora", "dora")

    run(scenario())


def test_passwd_wrong_old_password_401_and_rate_limited() -> None:
    async def scenario(h: Harness) -> None:
        async with h.client() as c:
            await c.register("erin", DEFAULT_PASSWORD)
            await c.login("erin", DEFAULT_PASSWORD)  # 2 of the burst of 4 used
            for _ in range(2):
                error = await refused(c.set_password("wrong guess", NEW_PASSWORD))
                assert error.status == Status.UNAUTHORIZED
            limited = await refused(c.request(p.SetPassword(old=DEFAULT_PASSWORD,
                                                            new=NEW_PASSWORD)))
            assert limited.status == Status.TOO_MANY_REQUESTS
            assert limited.retry_after_ms > 0
        async with h.client() as c2:  # the password did not change
            with pytest.raises(RequestFailed) as info:
                await c2.request(p.Login(name="erin", password=NEW_PASSWORD))
            assert info.value.status in (Status.UNAUTHORIZED, Status.TOO_MANY_REQUESTS)

    with running_broker(login_rate_per_s=0.001, login_burst=4) as h:
        run(scenario(h))


# -- direct mode (the database file) ---------------------------------------------------------


def _hasher(password: str) -> str:
    return fast_hash(password)


def test_direct_mode_creates_resets_disables_then_broker_sees_it(tmp_path: Path) -> None:
    db = tmp_path / "zchat.db"
    with running_broker(db, admins=("root",)) as h:
        async def register() -> None:
            async with h.client("root"), h.client("fred"):
                pass

        run(register())
    store = Store(db)
    try:
        rows, _ = admin.parse_accounts_csv("name,password\ngina,pw-gina-1\nhal,pw-hal-12\n")
        good, bad = admin.check_batch(rows, lambda k, s: store.get_account(k) is not None
                                      or store.account_skeleton_taken(s), 8)
        assert bad == []
        admin.create_accounts_direct(store, good, _hasher, "local:tester", 1_000)
        admin.reset_password_direct(store, "fred", _hasher(NEW_PASSWORD), "local:tester",
                                    2_000)
        assert admin.set_disabled_direct(store, "hal", True, "local:tester", 3_000) == \
            ("hal", True)
        assert admin.set_disabled_direct(store, "hal", True, "local:tester", 4_000) == \
            ("hal", False)
        users = {u.name: u for u in admin.users_direct(store)}
        assert set(users) == {"root", "fred", "gina", "hal"}
        assert users["hal"].disabled and not users["gina"].disabled
        assert [(r.actor, r.action, r.target) for r in store.audit_log()] == [
            ("local:tester", "disable", "hal"), ("local:tester", "reset_password", "fred"),
            ("local:tester", "create_account", "hal"),
            ("local:tester", "create_account", "gina")]
        with pytest.raises(admin.AdminError, match="no account"):
            admin.set_disabled_direct(store, "nobody", True, "local:tester", 5_000)
    finally:
        store.close()
    with running_broker(db, admins=("root",)) as h:
        async def check() -> None:
            async with h.client("gina", "pw-gina-1", register=False) as gina:
                assert "gina" in [u.name for u in (await gina.who("lobby")).users]
            assert (await login_fails(h, "hal", "pw-hal-12")).status == Status.FORBIDDEN
            assert (await login_fails(h, "fred", DEFAULT_PASSWORD)).status == \
                Status.UNAUTHORIZED
            async with h.client("fred", NEW_PASSWORD, register=False):
                pass

        run(check())


def test_direct_writes_refused_while_a_broker_holds_the_data_dir(tmp_path: Path) -> None:
    from zchat.cli import _lock_data_dir

    Store(tmp_path / "zchat.db").close()
    lock = _lock_data_dir(tmp_path)  # what a running `zchat broker` holds
    try:
        assert admin.broker_running(tmp_path)
        with pytest.raises(admin.AdminError, match="broker is running"), \
                admin.broker_stopped(tmp_path):
            pass
    finally:
        lock.close()
    assert not admin.broker_running(tmp_path)


def test_direct_unban_applies_to_a_running_broker_at_once(tmp_path: Path) -> None:
    db = tmp_path / "zchat.db"
    with running_broker(db, admins=("root",)) as h:
        async def scenario() -> None:
            async with h.client("root") as root, h.client("ivan") as ivan:
                await root.join("dev")
                await ivan.join("dev")
                await root.ban("ivan", "dev", "flood")
                assert (await refused(ivan.join("dev"))).status == Status.FORBIDDEN
                side = Store(db)  # a second connection, as `zchat admin unban --db` opens
                try:
                    assert [(b.name, b.room) for b in admin.bans_direct(side, 0, None)] == \
                        [("ivan", "dev")]
                    assert admin.unban_direct(side, "ivan", "dev", "ban", "local:t", 1) == \
                        "ivan"
                    with pytest.raises(admin.AdminError, match="not banned"):
                        admin.unban_direct(side, "ivan", "dev", "ban", "local:t", 2)
                finally:
                    side.close()
                assert (await ivan.join("dev")).room == "dev"
                (entry,) = (await root.audit(action="unban")).entries
                assert (entry.actor, entry.room, entry.target) == ("local:t", "dev", "ivan")

        run(scenario())
