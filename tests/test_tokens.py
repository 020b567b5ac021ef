"""Bot accounts and account tokens in the broker core (docs/PROTOCOL.md §6.2, §6.3,
§6.24-§6.26): the Peer/World helpers of tests/core_helpers.py, real codec and SQLite, no sockets.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
from core_helpers import PASSWORD, Peer, World

from zchat import wire as p
from zchat.errors import Status
from zchat.store import Store


@pytest.fixture
def world() -> World:
    return World()


def _token(world: World, name: str, label: str = "ci") -> tuple[p.TokenCreated, Peer]:
    owner = world.user(name)
    created = owner.must(p.CreateToken(label=label))
    assert isinstance(created, p.TokenCreated)
    return created, owner


def test_register_bot_shows_in_who_and_accounts(world: World) -> None:
    peer = world.peer()
    assert peer.call(p.Register(name="Helper", password=PASSWORD, bot=True)).ok
    assert world.core.accounts["helper"].bot is True
    assert world.store.get_account("helper").bot is True  # type: ignore[union-attr]
    assert peer.login("helper").ok
    alice = world.user("alice")
    assert world.core.accounts["alice"].bot is False
    who = alice.must(p.Who())
    assert [(u.name, u.bot) for u in who.users] == [("alice", False), ("Helper", True)]
    members = alice.must(p.Who(room="lobby"))
    assert {u.name: u.bot for u in members.users} == {"alice": False, "Helper": True}


def test_bot_flag_survives_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "z.db")
    world = World(store)
    assert world.peer().call(p.Register(name="helper", password=PASSWORD, bot=True)).ok
    store.close()
    again = World(Store(tmp_path / "z.db"))
    assert again.core.accounts["helper"].bot is True


def test_token_create_list_revoke(world: World) -> None:
    created, owner = _token(world, "alice", "deploy bot")
    assert created.label == "deploy bot" and created.id >= 1
    assert len(created.token) >= 43  # token_urlsafe(32): 256 random bits
    assert created.token not in repr(created)
    second = owner.must(p.CreateToken(label=""))
    listed = owner.must(p.ListTokens())
    assert listed == p.TokenList(tokens=(
        p.TokenInfo(id=created.id, label="deploy bot", created=world.clock.ms),
        p.TokenInfo(id=second.id, label="", created=world.clock.ms)))
    assert owner.must(p.RevokeToken(id=created.id)) == p.Ok()
    listed = owner.must(p.ListTokens())
    assert [t.id for t in listed.tokens] == [second.id]
    again = owner.call(p.RevokeToken(id=created.id))
    assert again.status == Status.NOT_FOUND


def test_only_the_hash_is_stored(world: World) -> None:
    created, _owner = _token(world, "alice")
    rows = world.store._db.execute("SELECT * FROM account_tokens").fetchall()
    flat = " ".join(str(v) for row in rows for v in row)
    assert created.token not in flat
    assert hashlib.sha256(created.token.encode()).hexdigest() in flat


def test_login_by_token(world: World) -> None:
    created, _owner = _token(world, "alice")
    bot = world.peer()
    out = bot.call(p.Login(name="ALICE", token=created.token))
    assert isinstance(out.reply, p.LoggedIn) and out.reply.name == "alice"
    assert bot.must(p.Send(room="lobby", text="deployed")).seq == 1


def test_login_by_wrong_or_revoked_token_is_401(world: World) -> None:
    created, owner = _token(world, "alice")
    assert world.peer().call(p.Login(name="alice", token=created.token + "x")).status == 401
    assert world.peer().call(p.Login(name="alice", token="nope")).status == 401
    assert owner.must(p.RevokeToken(id=created.id)) == p.Ok()
    assert world.peer().call(p.Login(name="alice", token=created.token)).status == 401
    assert world.peer().call(p.Login(name="ghost", token=created.token)).status == 404


def test_login_needs_exactly_one_credential(world: World) -> None:
    created, _owner = _token(world, "alice")
    both = world.peer().call(p.Login(name="alice", password=PASSWORD, token=created.token))
    assert both.status == Status.BAD_REQUEST
    assert world.peer().call(p.Login(name="alice")).status == Status.BAD_REQUEST


def test_token_of_another_account_cannot_be_revoked_or_used(world: World) -> None:
    created, alice = _token(world, "alice")
    bob = world.user("bob")
    assert bob.call(p.RevokeToken(id=created.id)).status == Status.NOT_FOUND
    assert bob.must(p.ListTokens()).tokens == ()
    assert world.peer().call(p.Login(name="bob", token=created.token)).status == 401
    assert [t.id for t in alice.must(p.ListTokens()).tokens] == [created.id]


def test_token_requests_need_a_session(world: World) -> None:
    peer = world.peer()
    assert peer.call(p.CreateToken(label="x")).status == Status.UNAUTHORIZED
    assert peer.call(p.ListTokens()).status == Status.UNAUTHORIZED
    assert peer.call(p.RevokeToken(id=1)).status == Status.UNAUTHORIZED


def test_token_session_cannot_mint_tokens_but_may_list(world: World) -> None:
    created, _owner = _token(world, "alice")
    bot = world.peer()
    assert bot.call(p.Login(name="alice", token=created.token)).ok
    assert bot.call(p.CreateToken(label="more")).status == Status.FORBIDDEN
    assert [t.id for t in bot.must(p.ListTokens()).tokens] == [created.id]


def test_revoking_ends_sessions_logged_in_with_the_token(world: World) -> None:
    created, owner = _token(world, "alice")
    bot = world.peer()
    assert bot.call(p.Login(name="alice", token=created.token)).ok
    out = owner.call(p.RevokeToken(id=created.id))
    assert out.ok
    assert out.events == []  # the owner's own session keeps the account online
    assert bot.call(p.Who()).status == Status.UNAUTHORIZED
    assert owner.must(p.Who()).users[0].presence == "online"


def test_token_label_rules(world: World) -> None:
    owner = world.user("alice")
    long = owner.call(p.CreateToken(label="x" * (p.MAX_TOKEN_LABEL_CHARS + 1)))
    assert long.status == Status.TOO_LARGE
    assert owner.call(p.CreateToken(label="a\nb")).status == Status.INVALID
    assert owner.call(p.CreateToken(label="\u202eevil")).status == Status.INVALID


def test_tokens_per_account_are_bounded(world: World) -> None:
    owner = world.user("alice")
    for _ in range(p.MAX_TOKENS_PER_ACCOUNT):
        owner.must(p.CreateToken(label=""))
    assert owner.call(p.CreateToken(label="")).status == Status.INVALID


def test_tokens_survive_restart(tmp_path: Path) -> None:
    store = Store(tmp_path / "z.db")
    world = World(store)
    created, _owner = _token(world, "alice", "kept")
    store.close()
    again = World(Store(tmp_path / "z.db"))
    bot = again.peer()
    assert bot.call(p.Login(name="alice", token=created.token)).ok
    assert [(t.id, t.label) for t in bot.must(p.ListTokens()).tokens] == [(created.id, "kept")]
