"""The operator actions exist once (zchat.core.operator_actions): the same actions done
over the wire (an admin's requests to a real broker) and by ``zchat admin`` in direct
mode (the real command line, in a subprocess, on a second database seeded alike) leave
the same audit rows — action, target, room and detail — differing only in the actor,
which is the admin's name on the wire and ``local:<OS user>`` on the database by design
(docs/admin.md, "Two ways in").
"""

from __future__ import annotations

import getpass
import subprocess
from pathlib import Path

from conftest import cli_env, run, zchat_command

from zchat import wire as p
from zchat.names import name_key, skeleton
from zchat.passwords import verify_password
from zchat.store import Store
from zchat.testing import create_admin_accounts, fast_hash, running_broker

NEW_PASSWORD = "a brand new pass phrase"
#: The broker's default storage quota, alike for both: it is worded into the audit
#: detail of a quota set back to the default ("default (5,000,000 bytes)").
DEFAULT_QUOTA = 5_000_000


def seed(store: Store) -> None:
    """The same starting point in both databases, with no audit entry: the admin root,
    Pat, Troll and Quinn in #Dev, Troll banned from #Dev and muted server-wide, Quinn
    banned server-wide and muted in #Dev. Display names differ from the keys, which
    the actions below use, so that the audit rows show which form each path writes."""
    create_admin_accounts(store, ("root",))
    digest = fast_hash("an old pass phrase")
    for name in ("Pat", "Troll", "Quinn"):
        store.create_account(name_key(name), name, skeleton(name), digest, 1)
        store.join_room("dev", "Dev", skeleton("Dev"), name_key(name), 1)
    for kind, room, who in (("ban", "dev", "troll"), ("mute", "", "troll"),
                            ("ban", "", "quinn"), ("mute", "dev", "quinn")):
        store.add_ban(kind, room, who, "root", "seeded", 1, None)


def audit_rows(db: Path) -> list[tuple[str, str, str, str, str]]:
    """Every audit row, oldest first, as (actor, action, room, target, detail)."""
    store = Store(db)
    try:
        return [(r.actor, r.action, r.room, r.target, r.detail)
                for r in reversed(store.audit_log(limit=1000))]
    finally:
        store.close()


def outcome(db: Path) -> tuple[object, ...]:
    """What the actions left besides the audit log: accounts (bot, disabled), quotas,
    memberships, the bans in force, and whether Pat's new password is the one stored."""
    store = Store(db)
    try:
        pat = store.get_account("pat")
        assert pat is not None
        return ([(a.name, a.bot, a.disabled) for a in store.list_accounts()],
                store.storage_quotas(), store.memberships(),
                [(b.kind, b.room_key, b.account_key) for b in store.list_bans(0)],
                verify_password(NEW_PASSWORD, pat.password_hash))
    finally:
        store.close()


def by_wire(tmp_path: Path) -> Path:
    db = tmp_path / "wire" / "zchat.db"
    db.parent.mkdir()
    store = Store(db)
    seed(store)
    store.close()
    with running_broker(db, admins=("root",), storage_quota_bytes=DEFAULT_QUOTA) as h:
        async def operate() -> None:
            async with h.client("root", register=False) as root:
                await root.create_accounts((
                    p.NewAccount(name="Ada", password="ada's pass phrase"),
                    p.NewAccount(name="botty", password="botty's pass phrase", bot=True)))
                await root.admin_set_password("pat", NEW_PASSWORD)
                await root.set_disabled("pat", True)
                await root.set_disabled("pat", True)  # so already: nothing written
                await root.set_disabled("pat", False)
                await root.set_disabled("ada", False)  # enabled already
                await root.set_quota("pat", 1_000_000)
                await root.set_quota("pat", 1_000_000)  # unchanged: nothing written
                await root.set_quota("ada", 0)
                await root.set_quota("pat", None)
                await root.unban("troll", "DEV")
                await root.unmute("troll")
                await root.unban("quinn")
                await root.unmute("quinn", "dev")

        run(operate())
    return db


def by_command_line(tmp_path: Path) -> Path:
    db = tmp_path / "direct" / "zchat.db"
    db.parent.mkdir()
    store = Store(db)
    seed(store)
    store.close()
    config = tmp_path / "xdg-config" / "zchat" / "zchat.toml"
    config.parent.mkdir(parents=True)
    config.write_text(f"[broker]\nstorage_quota_bytes = {DEFAULT_QUOTA}\nargon2_memory_kib = 1024\nargon2_time_cost = 1\n",
                      encoding="utf-8")
    accounts = tmp_path / "accounts.csv"
    accounts.write_text("name,bot,password\nAda,no,ada's pass phrase\n"
                        "botty,yes,botty's pass phrase\n", encoding="utf-8")
    env = cli_env(tmp_path)
    for args, stdin in ((("create", "--csv", str(accounts)), None),
                        (("reset-password", "pat", "--stdin"), NEW_PASSWORD + "\n"),
                        (("disable", "pat"), None),
                        (("disable", "pat"), None),
                        (("enable", "pat"), None),
                        (("enable", "ada"), None),
                        (("quota", "pat", "1000000"), None),
                        (("quota", "pat", "1000000"), None),
                        (("quota", "ada", "none"), None),
                        (("quota", "pat", "default"), None),
                        (("unban", "troll", "--room", "DEV"), None),
                        (("unban", "troll", "--mute"), None),
                        (("unban", "quinn"), None),
                        (("unban", "quinn", "--room", "dev", "--mute"), None)):
        command = [*zchat_command(), "admin", args[0], "--db", str(db), *args[1:]]
        result = subprocess.run(command, env=env, input=stdin, capture_output=True,
                                text=True, timeout=60,
                                stdin=None if stdin is not None else subprocess.DEVNULL)
        assert result.returncode == 0, (args, result.stdout, result.stderr)
    return db


def test_the_wire_and_zchat_admin_on_the_database_write_the_same_audit_rows(
        tmp_path: Path) -> None:
    wire_db, direct_db = by_wire(tmp_path), by_command_line(tmp_path)
    wire, direct = audit_rows(wire_db), audit_rows(direct_db)
    assert {actor for actor, *_rest in wire} == {"root"}
    assert {actor for actor, *_rest in direct} == {f"local:{getpass.getuser()}"}
    assert [row[1:] for row in direct] == [row[1:] for row in wire]
    assert [row[1:] for row in wire] == [
        ("create_account", "", "Ada", ""),
        ("create_account", "", "botty", "bot"),
        ("reset_password", "", "Pat", ""),
        ("disable", "", "Pat", ""),
        ("enable", "", "Pat", ""),
        ("quota", "", "Pat", "1,000,000 bytes"),
        ("quota", "", "Ada", "none"),
        ("quota", "", "Pat", "default (5,000,000 bytes)"),
        ("unban", "Dev", "Troll", ""),
        ("unmute", "", "Troll", ""),
        ("unban", "", "Quinn", ""),
        ("unmute", "Dev", "Quinn", ""),
    ]
    assert outcome(direct_db) == outcome(wire_db)
    accounts, quotas, _members, bans, new_password = outcome(wire_db)
    assert (quotas, bans, new_password) == ({"ada": 0}, [], True)
    assert ("botty", True, False) in accounts  # type: ignore[operator]
