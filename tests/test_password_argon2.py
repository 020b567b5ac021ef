"""Argon2id password hashes (issue 18, zchat.passwords): the stored form and its checks,
and the upgrade at login — an scrypt hash written by older versions (made here with the
old code's own function, ``hash_password_scrypt``), or an Argon2id hash weaker than the
broker's settings, is replaced by an Argon2id hash at the next successful password login,
through a real broker on SQLite and on PostgreSQL; a wrong password and a token login
leave the stored hash exactly as it was."""

from __future__ import annotations

import contextlib
import re
import sqlite3
from collections.abc import Iterator
from typing import Any

import argon2
import psycopg
import pytest
from conftest import ENGINES, need_postgres, run
from postgres_server import PostgresServer

from zchat.core import DEFAULT_ROOM
from zchat.errors import RequestFailed
from zchat.names import name_key, skeleton
from zchat.passwords import (
    ARGON2_MEMORY_KIB,
    ARGON2_PARALLELISM,
    ARGON2_TIME_COST,
    LoginCheck,
    check_login,
    hash_password,
    hash_password_scrypt,
    needs_rehash,
    token_sha256,
    verify_password,
)
from zchat.store import open_store
from zchat.testing import FAST_HASH, fast_hash, running_broker

PASSWORD = "an old pass phrase ünïcode 🔑"
#: The PHC string argon2-cffi writes: 16-byte salt, 32-byte tag, base64 without padding.
PHC = re.compile(r"\$argon2id\$v=19\$m=(\d+),t=(\d+),p=(\d+)\$[A-Za-z0-9+/]{22}\$"
                 r"[A-Za-z0-9+/]{43}")


# -- the hash itself ---------------------------------------------------------------------------


def test_new_hashes_are_argon2id_at_owasps_minimum_by_default() -> None:
    stored = hash_password(PASSWORD)
    match = PHC.fullmatch(stored)
    assert match is not None, stored
    assert tuple(map(int, match.groups())) == (19456, 2, 1)
    assert (ARGON2_MEMORY_KIB, ARGON2_TIME_COST, ARGON2_PARALLELISM) == (19456, 2, 1)
    assert verify_password(PASSWORD, stored) is True
    assert verify_password(PASSWORD[:-1], stored) is False
    assert verify_password("", stored) is False


def test_parameters_and_salt_are_in_the_stored_form() -> None:
    a, b = fast_hash(PASSWORD), fast_hash(PASSWORD)
    assert a != b  # a fresh salt each time
    match = PHC.fullmatch(a)
    assert match is not None and tuple(map(int, match.groups())) == (1024, 1, 1)
    # verification reads the parameters from the hash, whatever the defaults are
    assert verify_password(PASSWORD, a) and verify_password(PASSWORD, b)
    assert not verify_password(PASSWORD, a.replace("m=1024,t=1", "m=1024,t=2"))


@pytest.mark.parametrize("stored", [
    "$argon2id$v=19$m=1024,t=1,p=1$AAAA",
    "$argon2id$v=19$m=1024,t=1,p=1$!!!!!!!!!!!!!!!!!!!!!!$" + "A" * 43,
    "$argon2id$v=19$m=x,t=1,p=1$" + "A" * 22 + "$" + "A" * 43,
    "$argon2id$",
])
def test_malformed_argon2id_never_matches(stored: str) -> None:
    assert verify_password(PASSWORD, stored) is False


@pytest.mark.parametrize("variant", [argon2.Type.I, argon2.Type.D])
def test_other_argon2_variants_never_match(variant: argon2.Type) -> None:
    """Only Argon2id is accepted: a row holding argon2i/argon2d was not written by zchat."""
    other = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1,
                                  type=variant).hash(PASSWORD)
    assert verify_password(PASSWORD, other) is False


def test_scrypt_hashes_of_older_versions_still_verify() -> None:
    old = hash_password_scrypt(PASSWORD, 1024)
    assert old.startswith("scrypt$1024$8$1$")
    assert verify_password(PASSWORD, old) and not verify_password("wrong", old)


def test_needs_rehash_asks_for_scrypt_and_weaker_argon2id_only() -> None:
    current = fast_hash(PASSWORD)  # m=1024, t=1, p=1
    assert not needs_rehash(current, 1024, 1, 1)
    assert needs_rehash(hash_password_scrypt(PASSWORD, 1024), 1024, 1, 1)
    assert needs_rehash(current, 2048, 1, 1)  # less memory than configured
    assert needs_rehash(current, 1024, 2, 1)  # fewer passes
    assert not needs_rehash(current, 1024, 1, 4)  # lanes alone: same work
    # a hash stronger than the settings is kept (settings lowered on a small machine)
    assert not needs_rehash(hash_password(PASSWORD, 2048, 2, 1), 1024, 1, 1)
    shorter = argon2.PasswordHasher(time_cost=1, memory_cost=1024, parallelism=1,
                                    hash_len=16).hash(PASSWORD)
    assert needs_rehash(shorter, 1024, 1, 1)  # a shorter tag than zchat writes


def test_check_login_rehashes_only_on_a_match() -> None:
    old = hash_password_scrypt(PASSWORD, 1024)
    assert check_login("wrong", old, **_fast()) == LoginCheck(False, None)
    upgraded = check_login(PASSWORD, old, **_fast())
    assert upgraded.matched and upgraded.rehashed is not None
    assert PHC.fullmatch(upgraded.rehashed) and verify_password(PASSWORD, upgraded.rehashed)
    assert check_login(PASSWORD, upgraded.rehashed, **_fast()) == LoginCheck(True, None)
    assert check_login("wrong", upgraded.rehashed, **_fast()) == LoginCheck(False, None)


def _fast() -> dict[str, int]:
    return {"memory_kib": FAST_HASH["argon2_memory_kib"],
            "time_cost": FAST_HASH["argon2_time_cost"],
            "parallelism": FAST_HASH["argon2_parallelism"]}


# -- the store's compare-and-set ---------------------------------------------------------------


def test_replace_password_hash_is_a_compare_and_set(store_db: Any) -> None:
    """The upgrade writes only over the hash it checked: a password set meanwhile (or
    another broker's upgrade) is never overwritten."""
    store = store_db.open()
    lobby = name_key(DEFAULT_ROOM)
    store.ensure_room(lobby, DEFAULT_ROOM, skeleton(DEFAULT_ROOM), 1)
    old = hash_password_scrypt(PASSWORD, 1024)
    store.create_account("ada", "ada", skeleton("ada"), old, 1, rooms=(lobby,))
    new, newer = fast_hash(PASSWORD), fast_hash("set meanwhile")
    assert store.replace_password_hash("ada", old, new) is True
    assert store.get_account("ada").password_hash == new
    assert store.replace_password_hash("ada", old, newer) is False  # stale: nothing
    assert store.get_account("ada").password_hash == new
    assert store.replace_password_hash("nobody", old, new) is False
    other = store_db.open()  # committed: another connection sees it
    assert other.get_account("ada").password_hash == new


# -- through a real broker, on both stores -----------------------------------------------------


@pytest.fixture(params=ENGINES)
def location(request: pytest.FixtureRequest, tmp_path: Any,
             postgres_or_reason: PostgresServer | str) -> Iterator[str]:
    """A database file or a fresh PostgreSQL database, on each engine in turn."""
    if request.param == "sqlite":
        yield str(tmp_path / "zchat.db")
        return
    with need_postgres(postgres_or_reason).database() as url:
        yield url


def seed(location: str, password_hash: str, token: str = "") -> None:
    """The account ada with ``password_hash`` (and an account token), written as an
    older zchat (or ``zchat admin create``) left it, before the broker starts."""
    store = open_store(location)
    try:
        lobby = name_key(DEFAULT_ROOM)
        store.ensure_room(lobby, DEFAULT_ROOM, skeleton(DEFAULT_ROOM), 1)
        store.create_account("ada", "ada", skeleton("ada"), password_hash, 1, rooms=(lobby,))
        if token:
            store.create_token("ada", "ci", token_sha256(token), 1)
    finally:
        store.close()


def stored_hash(location: str) -> str:
    """ada's password hash as another connection sees it (committed)."""
    if location.startswith("postgresql"):
        with psycopg.connect(location) as db:
            row = db.execute("SELECT password_hash FROM accounts WHERE key = 'ada'").fetchone()
    else:
        with contextlib.closing(sqlite3.connect(f"file:{location}?mode=ro", uri=True)) as db:
            row = db.execute("SELECT password_hash FROM accounts WHERE key = 'ada'").fetchone()
    assert row is not None
    return str(row[0])


async def log_in(harness: Any, password: str = "", token: str = "") -> None:
    client = harness.new_client()
    await client.connect()
    try:
        assert (await client.login("ada", password, token=token)).name == "ada"
        await client.logout()
    finally:
        await client.close()


async def refused(harness: Any, password: str) -> int:
    client = harness.new_client()
    await client.connect()
    try:
        with pytest.raises(RequestFailed) as info:
            await client.login("ada", password)
        return int(info.value.status)
    finally:
        await client.close()


def test_an_scrypt_hash_logs_in_and_is_upgraded_to_argon2id(location: str) -> None:
    old = hash_password_scrypt(PASSWORD, 1024)  # what older versions stored
    seed(location, old)
    with running_broker(location) as harness:
        assert run(refused(harness, "not the password")) == 401
        assert stored_hash(location) == old  # a wrong password rewrites nothing
        run(log_in(harness, PASSWORD))
        upgraded = stored_hash(location)  # stored before the LOGIN was answered
        match = PHC.fullmatch(upgraded)
        assert match is not None, upgraded
        assert tuple(map(int, match.groups())) == (1024, 1, 1)  # the broker's settings
        assert verify_password(PASSWORD, upgraded)
        run(log_in(harness, PASSWORD))  # the next login checks the Argon2id hash ...
        assert stored_hash(location) == upgraded  # ... and, current, keeps it
        assert run(refused(harness, "scrypt is gone")) == 401
    with running_broker(location) as harness:  # and after a restart
        run(log_in(harness, PASSWORD))
    assert stored_hash(location) == upgraded


def test_an_argon2id_hash_weaker_than_the_settings_is_upgraded(location: str) -> None:
    weak = fast_hash(PASSWORD)  # m=1024, t=1
    seed(location, weak)
    with running_broker(location, argon2_memory_kib=2048, argon2_time_cost=2) as harness:
        assert run(refused(harness, "wrong")) == 401
        assert stored_hash(location) == weak
        run(log_in(harness, PASSWORD))
        stronger = stored_hash(location)
        assert stronger.startswith("$argon2id$v=19$m=2048,t=2,p=1$")
    with running_broker(location) as harness:  # settings lowered: the hash is kept
        run(log_in(harness, PASSWORD))
    assert stored_hash(location) == stronger


def test_a_token_login_leaves_the_password_hash_alone(location: str) -> None:
    old = hash_password_scrypt(PASSWORD, 1024)
    token = "a-token-of-forty-three-characters-0123456789"
    seed(location, old, token)
    with running_broker(location) as harness:
        run(log_in(harness, token=token))
        assert stored_hash(location) == old


# -- a password changed while the login was being checked --------------------------------------


def test_an_upgrade_never_overwrites_a_password_set_while_the_login_was_checked() -> None:
    """The core hands the check off (Offload) with the hash it read; if the hash changes
    before the result comes back (SET_PASSWORD on another connection, an admin, another
    broker of a cluster), the login still completes but the upgrade writes nothing."""
    from core_helpers import World, handle_raw

    from zchat import wire as p
    from zchat.core import Offload, ToPeer

    world = World()
    assert world.peer().register("ada", PASSWORD).ok
    old = hash_password_scrypt(PASSWORD, 1024)
    world.store.set_password_hash("ada", old)
    actions = handle_raw(world, b"\x00late", p.Login(name="ada", password=PASSWORD), "")
    (offload,) = [a for a in actions if isinstance(a, Offload)]
    meanwhile = fast_hash("a new pass phrase")
    world.store.set_password_hash("ada", meanwhile)
    check = offload.work()
    assert check.matched and check.rehashed is not None  # the job did make a new hash ...
    done = world.core.complete(offload.job_id, check, world.clock.s, world.clock.ms)
    replies = [p.decode_from_broker(a.frames, {b"r1": p.LoggedIn})[1] for a in done
               if isinstance(a, ToPeer) and a.routing_id == b"\x00late"]
    assert [type(r) for r in replies] == [p.LoggedIn]
    row = world.store.get_account("ada")
    assert row is not None and row.password_hash == meanwhile  # ... and did not store it
