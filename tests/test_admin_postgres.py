"""``zchat admin`` direct mode on PostgreSQL (issue 16, docs/admin.md "Two ways in"): the
real command line (a subprocess) on a database of the session's real server, with
``--db URL`` or ``[broker] store``, through the same operator code as over the wire. While
a real broker runs on the database (it holds the broker lock shared), the writes it keeps
in memory are refused; reads and unban are allowed, and an unban takes effect in it."""

from __future__ import annotations

from pathlib import Path

import psycopg
import pytest
from admin_cli_helpers import failed, zchat
from cli_helpers import json_lines, ok
from conftest import run

from zchat.errors import RequestFailed, StorageError
from zchat.store import pg_schema
from zchat.testing import DEFAULT_PASSWORD, Harness, running_broker


async def _accounts(harness: Harness) -> None:
    async with harness.client("ada") as ada, harness.client("eve"):
        await ada.join("dev")
        await ada.ban("eve", "dev", reason="spam")


def test_direct_mode_on_postgresql_refuses_memory_writes_while_a_broker_runs(
        tmp_path: Path, pg_url: str) -> None:
    with running_broker(pg_url, admins=["root"]) as harness:
        run(_accounts(harness))
        listed = json_lines(ok(zchat(tmp_path, "admin", "users", "--db", pg_url,
                                     "--json")).stdout)
        assert sorted(u["name"] for u in listed) == ["ada", "eve", "root"]
        for args in (("disable", "ada"), ("quota", "ada", "5MB"), ("enable", "ada")):
            err = failed(zchat(tmp_path, "admin", *args, "--db", pg_url))
            assert f"a zchat broker is running on {pg_url}: it holds accounts and " \
                   "sessions in memory" in err
            assert "stop every broker on it first" in err
        # unban is allowed while it runs, and the broker sees it at once
        ok(zchat(tmp_path, "admin", "unban", "eve", "--room", "dev", "--db", pg_url))

        async def eve_joins() -> str:
            async with harness.client("eve", register=False) as eve:
                return (await eve.join("dev")).room
        assert run(eve_joins()) == "dev"
    # the broker stopped: the writes go through the operator code, audited locally
    ok(zchat(tmp_path, "admin", "disable", "ada", "--db", pg_url))
    audit = json_lines(ok(zchat(tmp_path, "admin", "audit", "--db", pg_url,
                                "--json")).stdout)
    assert [(e["action"], e["target"], e["actor"].startswith("local:"))
            for e in audit[:2]] == [("disable", "ada", True), ("unban", "eve", True)]
    with running_broker(pg_url) as harness:
        async def ada_refused() -> int:
            client = harness.new_client()
            await client.connect()
            try:
                with pytest.raises(RequestFailed) as refused:
                    await client.login("ada", DEFAULT_PASSWORD)
                return refused.value.status
            finally:
                await client.close()
        assert run(ada_refused()) == 403


def test_a_broker_does_not_start_while_an_admin_write_holds_the_database(
        pg_url: str) -> None:
    with psycopg.connect(pg_url, autocommit=True) as admin:
        admin.execute("SELECT pg_advisory_lock(%s)", (pg_schema.BROKER_LOCK,))
        with pytest.raises(StorageError, match="a zchat admin command is writing the "
                                            "database"), running_broker(pg_url):
            pass


def test_direct_mode_takes_the_configured_store_and_creates_accounts(
        tmp_path: Path, postgres_server: object) -> None:
    from postgres_server import PostgresServer

    assert isinstance(postgres_server, PostgresServer)
    with postgres_server.database(empty=True) as url:
        config = tmp_path / "zchat.toml"
        config.write_text(f'[broker]\nstore = "{url}"\nargon2_memory_kib = 1024\nargon2_time_cost = 1\n', encoding="utf-8")
        err = failed(zchat(tmp_path, "admin", "users", "--config", str(config)))
        assert f"no zchat database at {url}" in err
        (tmp_path / "class.csv").write_text("name,password\nada,correct-horse-7\n",
                                            encoding="utf-8")
        made = ok(zchat(tmp_path, "admin", "create", "--csv", str(tmp_path / "class.csv"),
                        "--config", str(config)))
        assert "created 1 account: ada" in made.stderr
        listed = json_lines(ok(zchat(tmp_path, "admin", "users", "--config",
                                     str(config), "--json")).stdout)
        assert [(u["name"], u["sessions"]) for u in listed] == [("ada", 0)]
        with running_broker(url) as harness:
            async def login() -> str:
                async with harness.client("ada", "correct-horse-7", register=False) as ada:
                    return ada.name or ""
            assert run(login()) == "ada"


def test_direct_mode_lists_the_sessions_every_broker_holds(tmp_path: Path,
                                                            pg_url: str) -> None:
    """A second tester's: with sessions live on the brokers, ``admin users`` said every
    account was offline and ``admin sessions`` listed nothing (it read only the rows no
    broker holds, as a broker's own start does)."""
    import asyncio

    with running_broker(pg_url) as harness:
        async def scenario() -> tuple[list[dict[str, object]], list[dict[str, object]]]:
            async with harness.client("ada"), harness.client("eve"):
                users = await asyncio.to_thread(
                    zchat, tmp_path, "admin", "users", "--db", pg_url, "--json")
                sessions = await asyncio.to_thread(
                    zchat, tmp_path, "admin", "sessions", "--db", pg_url, "--json")
                return json_lines(ok(users).stdout), json_lines(ok(sessions).stdout)
        users, sessions = run(scenario())
    assert {u["name"]: (u["online"], u["sessions"]) for u in users} == {
        "ada": (True, 1), "eve": (True, 1)}
    assert sorted(s["name"] for s in sessions) == ["ada", "eve"]
